//! Leases as workers hold them: the holder check (fencing), heartbeats, completions,
//! failures, interrupting an attempt, and revoking an undeliverable grant.

use super::{Cluster, Timing};
use crate::command::{Reject, Stop, TaskReport};
use crate::model::*;
use surgery_core::ids::TaskRef;

impl Cluster {
    /// The active lease of (job, task) at `attempt` held by `worker`, or why not.
    pub(super) fn check_holder(
        &self,
        worker_id: &str,
        job_id: &str,
        task_id: &str,
        attempt: u32,
    ) -> Result<&TaskRecord, Reject> {
        let task = self
            .task(job_id, task_id)
            .ok_or_else(|| Reject::NotFound(format!("task {task_id} of job {job_id} does not exist")))?;
        let holds = task.state.is_active()
            && task
                .lease
                .as_ref()
                .is_some_and(|l| l.attempt == attempt && l.member(worker_id).is_some());
        if holds {
            Ok(task)
        } else {
            Err(Reject::Stale(stale_reason(task, worker_id, attempt)))
        }
    }

    /// Renews the reporting worker's leases, records progress, logs and metrics, and says
    /// which reported tasks must stop.
    pub(super) fn heartbeat(
        &mut self,
        now: UnixMs,
        timing: Timing,
        worker_id: &str,
        reports: Vec<TaskReport>,
    ) -> Result<Vec<Stop>, Reject> {
        self.touch_worker(now, worker_id)?;
        let mut stops = Vec::new();
        for report in reports {
            let Some((job_id, task_id)) = self.locate_task(&report.task_id) else {
                stops.push(Stop {
                    task_id: report.task_id.clone(),
                    attempt: report.attempt,
                    reason: "no such task".into(),
                });
                continue;
            };
            if let Err(reject) = self.check_holder(worker_id, &job_id, &task_id, report.attempt) {
                stops.push(Stop {
                    task_id: report.task_id.clone(),
                    attempt: report.attempt,
                    reason: reject.to_string(),
                });
                continue;
            }
            let task = self.task_mut(&job_id, &task_id).expect("checked");
            let lease = task.lease.as_mut().expect("checked");
            for member in lease.members.iter_mut().filter(|m| m.worker_id == worker_id) {
                member.deadline_ms = now + timing.lease_ttl_ms;
            }
            let attempt = lease.attempt;
            let first_progress = task.state == TaskState::Leased;
            if first_progress {
                task.state = TaskState::Running;
            }
            task.updated_ms = now;
            let mut new_point = None;
            if let Some(mut progress) = report.progress {
                progress.updated_ms = now;
                let advanced = task.progress.as_ref().is_none_or(|p| p.step != progress.step);
                if advanced && !progress.metrics.is_empty() {
                    new_point = Some((progress.step, progress.metrics.clone()));
                }
                task.progress = Some(progress);
            }
            if first_progress {
                self.event(
                    now,
                    &job_id,
                    Some((&task_id, TaskState::Running)),
                    "running",
                    format!("attempt {attempt} running on {worker_id}"),
                );
                if let Some(job) = self.jobs.get(&job_id)
                    && job.state == JobState::Queued
                {
                    let job = self.job_mut(&job_id).expect("job exists");
                    job.state = JobState::Running;
                    job.started_ms.get_or_insert(now);
                }
            }
            if let Some((step, metrics)) = new_point {
                self.counters.metric_seq += 1;
                self.changes.counters_changed = true;
                self.changes.metrics.push(MetricPoint {
                    seq: self.counters.metric_seq,
                    job_id: job_id.clone(),
                    task_id: task_id.clone(),
                    attempt,
                    step,
                    unix_ms: now,
                    metrics,
                });
            }
            for line in report.logs {
                self.counters.log_seq += 1;
                self.changes.counters_changed = true;
                self.changes.logs.push(LogRecord {
                    seq: self.counters.log_seq,
                    job_id: job_id.clone(),
                    task_id: task_id.clone(),
                    worker_id: worker_id.to_string(),
                    unix_ms: if line.unix_ms > 0 { line.unix_ms } else { now },
                    level: line.level,
                    message: line.message,
                });
            }
        }
        Ok(stops)
    }

    /// Task ids are unique within a job; workers name tasks by [`TaskRef`] (`job:task`).
    pub(super) fn locate_task(&self, full_id: &str) -> Option<(JobId, TaskId)> {
        let TaskRef { job, task } = TaskRef::parse(full_id)?;
        self.task(&job, &task)?;
        Some((job, task))
    }

    /// Records a task's result. Repeating the completion of a succeeded attempt is a
    /// no-op, so a worker may retry CompleteTask after a lost reply.
    pub(super) fn complete(
        &mut self,
        now: UnixMs,
        worker_id: &str,
        full_task_id: &str,
        attempt: u32,
        result: TaskResult,
    ) -> Result<(), Reject> {
        if let Some((name, value)) = result.metrics.iter().find(|(_, v)| !v.is_finite()) {
            return Err(Reject::Invalid(format!(
                "result metric `{name}` is {value}; report a failure instead of a non-finite result"
            )));
        }
        self.touch_worker(now, worker_id)?;
        let (job_id, task_id) = self.split_id(full_task_id)?;
        let task = self.task(&job_id, &task_id).expect("located");
        if task.state == TaskState::Succeeded
            && task
                .lease
                .as_ref()
                .is_some_and(|l| l.attempt == attempt && l.member(worker_id).is_some())
        {
            return Ok(());
        }
        self.check_holder(worker_id, &job_id, &task_id, attempt)?;
        let task = self.task_mut(&job_id, &task_id).expect("checked");
        task.state = TaskState::Succeeded;
        task.result = Some(result);
        task.updated_ms = now;
        self.event(
            now,
            &job_id,
            Some((&task_id, TaskState::Succeeded)),
            "succeeded",
            format!("attempt {attempt} succeeded on {worker_id}"),
        );
        self.settle_job(now, &job_id);
        Ok(())
    }

    pub(super) fn split_id(&self, full_id: &str) -> Result<(JobId, TaskId), Reject> {
        self.locate_task(full_id)
            .ok_or_else(|| Reject::NotFound(format!("task `{full_id}` does not exist (ids are `job:task`)")))
    }

    /// A worker reports a failure. Returns what happens next, in words.
    pub(super) fn fail(
        &mut self,
        now: UnixMs,
        worker_id: &str,
        full_task_id: &str,
        attempt: u32,
        class: FailureClass,
        message: &str,
    ) -> Result<String, Reject> {
        self.touch_worker(now, worker_id)?;
        let (job_id, task_id) = self.split_id(full_task_id)?;
        self.check_holder(worker_id, &job_id, &task_id, attempt)?;
        let message = if message.is_empty() { "no reason given" } else { message };
        Ok(self.interrupt(
            now,
            &job_id,
            &task_id,
            attempt,
            class,
            &format!("{worker_id}: {message}"),
        ))
    }

    /// Ends the current attempt of an active task with a failure of `class`: requeue it
    /// (retryable within budget, preempted, lost) or fail it and its job.
    pub(super) fn interrupt(
        &mut self,
        now: UnixMs,
        job_id: &str,
        task_id: &str,
        attempt: u32,
        class: FailureClass,
        message: &str,
    ) -> String {
        let requirements = self.jobs[job_id].requirements.clone();
        let task = self.task_mut(job_id, task_id).expect("task exists");
        task.last_failure = Some(Failure {
            class,
            message: message.to_string(),
            attempt,
            at_ms: now,
        });
        task.updated_ms = now;
        task.lease = None;
        let exhausted = match class {
            FailureClass::Fatal => Some("fatal".to_string()),
            FailureClass::Retryable => {
                task.retries_used += 1;
                (task.retries_used > requirements.max_retries)
                    .then(|| format!("retry budget spent ({} retries)", requirements.max_retries))
            }
            FailureClass::Preempted | FailureClass::Lost => {
                task.interruptions += 1;
                (task.interruptions > requirements.max_interruptions).then(|| {
                    format!(
                        "interrupted more than retry.max_interruptions = {} times",
                        requirements.max_interruptions
                    )
                })
            }
        };
        let outcome = match exhausted {
            Some(why) => {
                task.state = TaskState::Failed;
                if let Some(failure) = task.last_failure.as_mut() {
                    failure.message = format!("{message} ({why})");
                }
                format!("task failed ({why}); the job fails")
            }
            None => {
                task.state = TaskState::Pending;
                format!("requeued; the next lease is attempt {}", attempt + 1)
            }
        };
        let state = self.task(job_id, task_id).expect("task exists").state;
        let kind = if state == TaskState::Failed {
            "failed"
        } else {
            "requeued"
        };
        self.event(
            now,
            job_id,
            Some((task_id, state)),
            kind,
            format!("attempt {attempt} {}: {message}; {outcome}", class.word()),
        );
        self.settle_job(now, job_id);
        outcome
    }

    /// A lease that could not be handed over (the worker's poll ended first) goes back
    /// to pending at once, as a lost attempt.
    pub(super) fn revoke(&mut self, now: UnixMs, full_task_id: &str, attempt: u32) {
        let Some((job_id, task_id)) = self.locate_task(full_task_id) else {
            return;
        };
        let current = self
            .task(&job_id, &task_id)
            .is_some_and(|t| t.state.is_active() && t.lease.as_ref().is_some_and(|l| l.attempt == attempt));
        if current {
            self.interrupt(
                now,
                &job_id,
                &task_id,
                attempt,
                FailureClass::Lost,
                "the lease could not be delivered: the worker's poll had ended",
            );
        }
    }
}

/// Why `worker` at `attempt` no longer holds the task.
fn stale_reason(task: &TaskRecord, worker_id: &str, attempt: u32) -> String {
    let id = &task.id;
    match task.state {
        TaskState::Cancelled => format!("task {id} was cancelled"),
        TaskState::Failed => format!("task {id} failed"),
        TaskState::Succeeded => format!("task {id} already succeeded (attempt {})", task.attempt),
        TaskState::Pending => {
            let why = task
                .last_failure
                .as_ref()
                .map(|f| format!(": {}", f.message))
                .unwrap_or_default();
            format!("attempt {attempt} of task {id} is over; the task was requeued{why}")
        }
        TaskState::Leased | TaskState::Running if task.attempt != attempt => format!(
            "attempt {attempt} of task {id} is stale; the task is {} at attempt {}",
            task.state.word(),
            task.attempt
        ),
        TaskState::Leased | TaskState::Running => format!("{worker_id} does not hold task {id} (attempt {attempt})"),
    }
}
