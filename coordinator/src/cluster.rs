//! The coordinator's whole state in memory, and every transition of it. Transitions are
//! plain methods that take the time as an argument and do no I/O: each records what it
//! touched, and [`Cluster::take_changes`] hands that to the store, which commits it in one
//! transaction before anyone is told the outcome. The decisions the scheduler takes on
//! its own (leases, expiries, lost workers) arrive as [`Decision`]s and are applied here
//! through [`Cluster::apply`].

use crate::decision::Decision;
use crate::model::*;
use crate::planner;
use crate::select_stage;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use surgery_core::ids::TaskRef;
use surgery_core::spec::JobSpec;

/// Why a request was refused; the service maps each to a typed gRPC error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("{0}")]
    NotFound(String),
    /// The caller holds an old attempt (fencing).
    #[error("{0}")]
    Stale(String),
    #[error("unknown worker `{0}`: register again")]
    UnknownWorker(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
}

/// Coordinator settings that transitions need.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub lease_ttl_ms: i64,
    pub worker_timeout_ms: i64,
}

/// A task the worker must stop, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    pub task_id: TaskId,
    pub attempt: u32,
    pub reason: String,
}

/// What a transition changed, to be persisted together.
#[derive(Debug, Default)]
pub struct Changes {
    pub jobs: BTreeSet<JobId>,
    pub tasks: BTreeSet<(JobId, TaskId)>,
    pub workers: BTreeSet<WorkerId>,
    pub requests: Vec<(String, JobId)>,
    pub events: Vec<Event>,
    pub logs: Vec<LogRecord>,
    pub metrics: Vec<MetricPoint>,
    pub counters_changed: bool,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
            && self.tasks.is_empty()
            && self.workers.is_empty()
            && self.requests.is_empty()
            && self.events.is_empty()
            && self.logs.is_empty()
            && self.metrics.is_empty()
            && !self.counters_changed
    }
}

/// Monotonic counters, persisted with the records they number.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    pub job_seq: u64,
    pub event_seq: u64,
    pub log_seq: u64,
    pub metric_seq: u64,
}

#[derive(Debug, Default)]
pub struct JobTasks {
    pub list: Vec<TaskRecord>,
    index: HashMap<TaskId, usize>,
}

impl JobTasks {
    pub fn new(list: Vec<TaskRecord>) -> JobTasks {
        let mut list = list;
        list.sort_by_key(|t| t.order);
        let index = list.iter().enumerate().map(|(i, t)| (t.id.clone(), i)).collect();
        JobTasks { list, index }
    }

    pub fn get(&self, id: &str) -> Option<&TaskRecord> {
        self.index.get(id).map(|i| &self.list[*i])
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut TaskRecord> {
        self.index.get(id).map(|i| &mut self.list[*i])
    }

    /// Stages whose every task succeeded.
    pub fn finished_stages(&self) -> BTreeSet<Stage> {
        let mut finished: BTreeSet<Stage> = self.list.iter().map(|t| t.stage).collect();
        for task in &self.list {
            if task.state != TaskState::Succeeded {
                finished.remove(&task.stage);
            }
        }
        finished
    }

    /// Pending with every prerequisite stage in `finished` (from [`Self::finished_stages`]).
    pub fn is_runnable(&self, task: &TaskRecord, finished: &BTreeSet<Stage>) -> bool {
        task.state == TaskState::Pending && task.after.iter().all(|s| finished.contains(s))
    }

    /// Pending tasks whose prerequisite stages all succeeded, in plan order.
    pub fn runnable(&self) -> impl Iterator<Item = &TaskRecord> {
        let finished = self.finished_stages();
        self.list.iter().filter(move |t| self.is_runnable(t, &finished))
    }
}

#[derive(Debug, Default)]
pub struct Cluster {
    pub jobs: BTreeMap<JobId, JobRecord>,
    pub tasks: BTreeMap<JobId, JobTasks>,
    pub workers: BTreeMap<WorkerId, WorkerRecord>,
    pub requests: HashMap<String, JobId>,
    pub counters: Counters,
    changes: Changes,
}

/// The outcome of a submit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub job_id: JobId,
    pub created: bool,
}

/// A member's view of a finished rendezvous.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendezvous {
    pub members: Vec<Member>,
    pub nccl_unique_id: Vec<u8>,
}

impl Cluster {
    /// Rebuilds the state a store held. Leases get a fresh deadline and workers count as
    /// just seen, so a restarted coordinator gives everyone one TTL to reconnect instead
    /// of expiring work that kept running while it was down.
    pub fn restore(
        now: UnixMs,
        timing: Timing,
        jobs: Vec<JobRecord>,
        tasks: Vec<TaskRecord>,
        workers: Vec<WorkerRecord>,
        requests: Vec<(String, JobId)>,
        counters: Counters,
    ) -> Cluster {
        let mut by_job: BTreeMap<JobId, Vec<TaskRecord>> = BTreeMap::new();
        for mut task in tasks {
            if let Some(lease) = task.lease.as_mut() {
                for member in &mut lease.members {
                    member.deadline_ms = member.deadline_ms.max(now + timing.lease_ttl_ms);
                }
            }
            by_job.entry(task.job_id.clone()).or_default().push(task);
        }
        Cluster {
            jobs: jobs.into_iter().map(|j| (j.id.clone(), j)).collect(),
            tasks: by_job
                .into_iter()
                .map(|(job, list)| (job, JobTasks::new(list)))
                .collect(),
            workers: workers
                .into_iter()
                .map(|mut w| {
                    w.last_seen_ms = now;
                    (w.id.clone(), w)
                })
                .collect(),
            requests: requests.into_iter().collect(),
            counters,
            changes: Changes::default(),
        }
    }

    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    pub fn task(&self, job_id: &str, task_id: &str) -> Option<&TaskRecord> {
        self.tasks.get(job_id)?.get(task_id)
    }

    fn task_mut(&mut self, job_id: &str, task_id: &str) -> Option<&mut TaskRecord> {
        self.changes.tasks.insert((job_id.to_string(), task_id.to_string()));
        self.tasks.get_mut(job_id)?.get_mut(task_id)
    }

    fn job_mut(&mut self, job_id: &str) -> Option<&mut JobRecord> {
        self.changes.jobs.insert(job_id.to_string());
        self.jobs.get_mut(job_id)
    }

    fn event(&mut self, now: UnixMs, job_id: &str, task: Option<(&str, TaskState)>, kind: &str, message: String) {
        self.counters.event_seq += 1;
        self.changes.counters_changed = true;
        let job_state = self.jobs.get(job_id).map(|j| j.state);
        self.changes.events.push(Event {
            seq: self.counters.event_seq,
            job_id: job_id.to_string(),
            task_id: task.map(|(id, _)| id.to_string()),
            unix_ms: now,
            kind: kind.to_string(),
            message,
            job_state,
            task_state: task.map(|(_, state)| state),
        });
    }

    // ------------------------------------------------------------------ jobs

    /// Plans and records a job. A request id seen before returns the job it created;
    /// the same id with a different spec is a conflict.
    pub fn submit(
        &mut self,
        now: UnixMs,
        request_id: &str,
        spec_yaml: &str,
        spec: &JobSpec,
        id_suffix: &str,
    ) -> Result<Submitted, Reject> {
        if request_id.is_empty() {
            return Err(Reject::Invalid("request_id must not be empty".into()));
        }
        if let Some(job_id) = self.requests.get(request_id) {
            let job = &self.jobs[job_id];
            if job.spec_yaml != spec_yaml {
                return Err(Reject::Conflict(format!(
                    "request id `{request_id}` already submitted job {job_id} with a different spec"
                )));
            }
            return Ok(Submitted {
                job_id: job_id.clone(),
                created: false,
            });
        }
        let job_id = surgery_core::ids::job_id(&spec.name, id_suffix);
        if self.jobs.contains_key(&job_id) {
            return Err(Reject::Conflict(format!("job id {job_id} exists; retry the submit")));
        }
        self.counters.job_seq += 1;
        self.changes.counters_changed = true;
        let job = JobRecord {
            id: job_id.clone(),
            name: spec.name.clone(),
            request_id: request_id.to_string(),
            spec_yaml: spec_yaml.to_string(),
            priority: spec.priority,
            seq: self.counters.job_seq,
            submitted_ms: now,
            started_ms: None,
            finished_ms: None,
            state: JobState::Queued,
            failure: None,
            requirements: Requirements {
                device: spec.resources.device.as_str().to_string(),
                min_memory_bytes: u64::from(spec.resources.min_gpu_memory_gib) << 30,
                max_retries: spec.retry.max_retries,
                max_interruptions: spec.retry.max_interruptions,
            },
            selected_layout: None,
        };
        let tasks = planner::plan(&job_id, spec, now);
        let count = tasks.len();
        for task in &tasks {
            self.changes.tasks.insert((job_id.clone(), task.id.clone()));
        }
        self.jobs.insert(job_id.clone(), job);
        self.changes.jobs.insert(job_id.clone());
        self.tasks.insert(job_id.clone(), JobTasks::new(tasks));
        self.requests.insert(request_id.to_string(), job_id.clone());
        self.changes.requests.push((request_id.to_string(), job_id.clone()));
        self.event(
            now,
            &job_id,
            None,
            "submitted",
            format!("job submitted with {count} tasks"),
        );
        Ok(Submitted { job_id, created: true })
    }

    /// Cancels every unfinished task; running ones learn it at their next heartbeat.
    pub fn cancel_job(&mut self, now: UnixMs, job_id: &str, reason: &str) -> Result<(), Reject> {
        let job = self.jobs.get(job_id).ok_or_else(|| not_found_job(job_id))?;
        if job.state.is_terminal() {
            return Err(Reject::Conflict(format!(
                "job {job_id} already ended ({})",
                job.state.word()
            )));
        }
        let reason = if reason.is_empty() { "cancelled by user" } else { reason };
        self.end_unfinished_tasks(now, job_id, reason);
        let job = self.job_mut(job_id).expect("job exists");
        job.state = JobState::Cancelled;
        job.finished_ms = Some(now);
        job.failure = Some(reason.to_string());
        self.event(now, job_id, None, "cancelled", format!("job cancelled: {reason}"));
        Ok(())
    }

    /// Puts failed and cancelled tasks back to pending with a fresh retry budget; they
    /// resume from their last checkpoints when leased again.
    pub fn resume_job(&mut self, now: UnixMs, job_id: &str) -> Result<Vec<TaskId>, Reject> {
        let job = self.jobs.get(job_id).ok_or_else(|| not_found_job(job_id))?;
        if !matches!(job.state, JobState::Failed | JobState::Cancelled) {
            return Err(Reject::Conflict(format!(
                "job {job_id} is {}; only failed or cancelled jobs resume",
                job.state.word()
            )));
        }
        let to_resume: Vec<TaskId> = self.tasks[job_id]
            .list
            .iter()
            .filter(|t| matches!(t.state, TaskState::Failed | TaskState::Cancelled))
            .map(|t| t.id.clone())
            .collect();
        for task_id in &to_resume {
            let task = self.task_mut(job_id, task_id).expect("task exists");
            task.state = TaskState::Pending;
            task.lease = None;
            task.retries_used = 0;
            task.interruptions = 0;
            task.updated_ms = now;
        }
        let started = self.tasks[job_id].list.iter().any(|t| t.attempt > 0);
        let job = self.job_mut(job_id).expect("job exists");
        job.state = if started { JobState::Running } else { JobState::Queued };
        job.finished_ms = None;
        job.failure = None;
        self.event(
            now,
            job_id,
            None,
            "resumed",
            format!("job resumed: {} task(s) back to pending", to_resume.len()),
        );
        Ok(to_resume)
    }

    /// Fails or cancels every task of the job that has not ended.
    fn end_unfinished_tasks(&mut self, now: UnixMs, job_id: &str, reason: &str) {
        let open: Vec<TaskId> = self.tasks[job_id]
            .list
            .iter()
            .filter(|t| !t.state.is_terminal())
            .map(|t| t.id.clone())
            .collect();
        for task_id in open {
            let task = self.task_mut(job_id, &task_id).expect("task exists");
            task.state = TaskState::Cancelled;
            task.updated_ms = now;
            // The lease stays so the holders' next heartbeat is told to stop.
            self.event(
                now,
                job_id,
                Some((&task_id, TaskState::Cancelled)),
                "cancelled",
                reason.to_string(),
            );
        }
    }

    /// Moves a job to its final state when its tasks say so.
    fn settle_job(&mut self, now: UnixMs, job_id: &str) {
        let Some(job) = self.jobs.get(job_id) else { return };
        if job.state.is_terminal() {
            return;
        }
        let tasks = &self.tasks[job_id].list;
        if let Some(failed) = tasks.iter().find(|t| t.state == TaskState::Failed) {
            let why = failed
                .last_failure
                .as_ref()
                .map(|f| f.message.clone())
                .unwrap_or_else(|| "failed".into());
            let reason = format!("task {} failed: {why}", failed.id);
            self.end_unfinished_tasks(now, job_id, &format!("job failed: {reason}"));
            let job = self.job_mut(job_id).expect("job exists");
            job.state = JobState::Failed;
            job.finished_ms = Some(now);
            job.failure = Some(reason.clone());
            self.event(now, job_id, None, "failed", format!("job failed: {reason}"));
        } else if tasks.iter().all(|t| t.state == TaskState::Succeeded) {
            let job = self.job_mut(job_id).expect("job exists");
            job.state = JobState::Succeeded;
            job.finished_ms = Some(now);
            self.event(now, job_id, None, "succeeded", "job succeeded".into());
        }
    }

    // --------------------------------------------------------------- workers

    /// Registers a worker. A name registered before ends its earlier incarnation: its
    /// leases are requeued as lost (not counted against the retry budget).
    pub fn register(
        &mut self,
        now: UnixMs,
        name: &str,
        host: &str,
        version: &str,
        slots: Vec<SlotInfo>,
        id_suffix: &str,
    ) -> Result<WorkerId, Reject> {
        if name.is_empty() {
            return Err(Reject::Invalid("worker name must not be empty".into()));
        }
        if slots.is_empty() {
            return Err(Reject::Invalid("a worker must offer at least one slot".into()));
        }
        if let Some(slot) = slots.iter().find(|s| s.device != "cuda" && s.device != "cpu") {
            return Err(Reject::Invalid(format!(
                "slot device `{}` is neither cuda nor cpu",
                slot.device
            )));
        }
        let earlier: Vec<WorkerId> = self
            .workers
            .values()
            .filter(|w| w.name == name && w.status != WorkerStatus::Replaced)
            .map(|w| w.id.clone())
            .collect();
        for old in earlier {
            self.release_worker(
                now,
                &old,
                WorkerStatus::Replaced,
                "its worker registered again (restarted)",
            );
        }
        let id = format!("{name}-{id_suffix}");
        self.workers.insert(
            id.clone(),
            WorkerRecord {
                id: id.clone(),
                name: name.to_string(),
                host: host.to_string(),
                version: version.to_string(),
                slots,
                status: WorkerStatus::Alive,
                registered_ms: now,
                last_seen_ms: now,
            },
        );
        self.changes.workers.insert(id.clone());
        Ok(id)
    }

    /// Marks a worker seen. A worker that was declared lost and comes back is alive again
    /// (its old leases were already requeued; its heartbeat learns to stop them).
    pub fn touch_worker(&mut self, now: UnixMs, worker_id: &str) -> Result<(), Reject> {
        let worker = self
            .workers
            .get_mut(worker_id)
            .ok_or_else(|| Reject::UnknownWorker(worker_id.to_string()))?;
        if worker.status == WorkerStatus::Replaced {
            return Err(Reject::UnknownWorker(format!(
                "{worker_id} (replaced by a newer registration of `{}`)",
                worker.name
            )));
        }
        worker.last_seen_ms = now;
        if worker.status == WorkerStatus::Lost {
            worker.status = WorkerStatus::Alive;
            self.changes.workers.insert(worker_id.to_string());
        }
        Ok(())
    }

    /// Ends a worker's incarnation and requeues every lease it holds.
    fn release_worker(&mut self, now: UnixMs, worker_id: &str, status: WorkerStatus, why: &str) {
        if let Some(worker) = self.workers.get_mut(worker_id) {
            worker.status = status;
            self.changes.workers.insert(worker_id.to_string());
        }
        for (job_id, task_id, attempt) in self.leases_of(worker_id) {
            self.interrupt(
                now,
                &job_id,
                &task_id,
                attempt,
                FailureClass::Lost,
                &format!("worker {worker_id} lost: {why}"),
            );
        }
    }

    /// (job, task, attempt) of every active lease the worker is a member of.
    pub fn leases_of(&self, worker_id: &str) -> Vec<(JobId, TaskId, u32)> {
        let mut found = Vec::new();
        for (job_id, tasks) in &self.tasks {
            for task in &tasks.list {
                if task.state.is_active()
                    && let Some(lease) = &task.lease
                    && lease.member(worker_id).is_some()
                {
                    found.push((job_id.clone(), task.id.clone(), lease.attempt));
                }
            }
        }
        found
    }

    /// The active lease of (job, task) at `attempt` held by `worker`, or why not.
    fn check_holder(&self, worker_id: &str, job_id: &str, task_id: &str, attempt: u32) -> Result<&TaskRecord, Reject> {
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
    pub fn heartbeat(
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
    fn locate_task(&self, full_id: &str) -> Option<(JobId, TaskId)> {
        let TaskRef { job, task } = TaskRef::parse(full_id)?;
        self.task(&job, &task)?;
        Some((job, task))
    }

    /// Records a task's result. Repeating the completion of a succeeded attempt is a
    /// no-op, so a worker may retry CompleteTask after a lost reply.
    pub fn complete(
        &mut self,
        now: UnixMs,
        worker_id: &str,
        full_task_id: &str,
        attempt: u32,
        result: TaskResult,
    ) -> Result<(), Reject> {
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

    fn split_id(&self, full_id: &str) -> Result<(JobId, TaskId), Reject> {
        self.locate_task(full_id)
            .ok_or_else(|| Reject::NotFound(format!("task `{full_id}` does not exist (ids are `job:task`)")))
    }

    /// A worker reports a failure. Returns what happens next, in words.
    pub fn fail(
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
    fn interrupt(
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
    pub fn revoke(&mut self, now: UnixMs, full_task_id: &str, attempt: u32) {
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

    /// A gang member checks in. Returns the members and rank 0's NCCL id once every
    /// member arrived (and rank 0 brought the id), `None` while some are missing.
    #[allow(clippy::too_many_arguments)]
    pub fn rendezvous(
        &mut self,
        now: UnixMs,
        timing: Timing,
        worker_id: &str,
        full_task_id: &str,
        attempt: u32,
        rank: u32,
        endpoint: &str,
        nccl_unique_id: &[u8],
    ) -> Result<Option<Rendezvous>, Reject> {
        self.touch_worker(now, worker_id)?;
        let (job_id, task_id) = self.split_id(full_task_id)?;
        let task = self.check_holder(worker_id, &job_id, &task_id, attempt)?;
        let lease = task.lease.as_ref().expect("checked");
        let member = lease.member(worker_id).expect("checked");
        if member.rank != rank {
            return Err(Reject::Invalid(format!(
                "{worker_id} holds rank {} of {task_id}, not rank {rank}",
                member.rank
            )));
        }
        let needs_update = !member.arrived
            || member.endpoint.as_deref().unwrap_or("") != endpoint
            || (rank == 0 && !nccl_unique_id.is_empty() && lease.nccl_unique_id.as_deref() != Some(nccl_unique_id));
        let lease = if needs_update {
            let task = self.task_mut(&job_id, &task_id).expect("checked");
            let lease = task.lease.as_mut().expect("checked");
            for m in lease.members.iter_mut().filter(|m| m.worker_id == worker_id) {
                m.arrived = true;
                m.endpoint = (!endpoint.is_empty()).then(|| endpoint.to_string());
                m.deadline_ms = now + timing.lease_ttl_ms;
            }
            if rank == 0 && !nccl_unique_id.is_empty() {
                lease.nccl_unique_id = Some(nccl_unique_id.to_vec());
            }
            &*lease
        } else {
            lease
        };
        let rank0_ready = lease.members.iter().find(|m| m.rank == 0).is_some_and(|m| m.arrived);
        if lease.members.iter().all(|m| m.arrived) && rank0_ready {
            Ok(Some(Rendezvous {
                members: lease.members.clone(),
                nccl_unique_id: lease.nccl_unique_id.clone().unwrap_or_default(),
            }))
        } else {
            Ok(None)
        }
    }

    // ------------------------------------------------------ scheduler decisions

    pub fn apply(&mut self, now: UnixMs, timing: Timing, decision: &Decision) {
        match decision {
            Decision::Grant { job_id, task_id, slots } => {
                let task = self.task_mut(job_id, task_id).expect("decided on an existing task");
                task.attempt += 1;
                task.state = TaskState::Leased;
                task.updated_ms = now;
                task.progress = None;
                let attempt = task.attempt;
                task.lease = Some(Lease {
                    attempt,
                    granted_ms: now,
                    members: slots
                        .iter()
                        .enumerate()
                        .map(|(rank, slot)| Member {
                            rank: rank as u32,
                            worker_id: slot.worker_id.clone(),
                            slot: slot.slot,
                            deadline_ms: now + timing.lease_ttl_ms,
                            endpoint: None,
                            arrived: false,
                        })
                        .collect(),
                    nccl_unique_id: None,
                });
                // A worker handed a lease is as good as heard from.
                for slot in slots {
                    if let Some(worker) = self.workers.get_mut(&slot.worker_id) {
                        worker.last_seen_ms = now;
                    }
                }
                let holders: Vec<String> = slots.iter().map(|s| format!("{}/{}", s.worker_id, s.slot)).collect();
                self.event(
                    now,
                    job_id,
                    Some((task_id, TaskState::Leased)),
                    "leased",
                    format!("attempt {attempt} leased to {}", holders.join(", ")),
                );
            }
            Decision::Expire {
                job_id,
                task_id,
                attempt,
                reason,
            } => {
                // Only the attempt the decision saw; anything since has superseded it.
                let current = self
                    .task(job_id, task_id)
                    .is_some_and(|t| t.state.is_active() && t.lease.as_ref().is_some_and(|l| l.attempt == *attempt));
                if current {
                    self.interrupt(now, job_id, task_id, *attempt, FailureClass::Lost, reason);
                }
            }
            Decision::WorkerLost { worker_id } => {
                let why = format!("no heartbeat for {} ms", timing.worker_timeout_ms);
                self.release_worker(now, worker_id, WorkerStatus::Lost, &why);
            }
            Decision::RunSelect { job_id, task_id } => self.run_select(now, job_id, task_id),
        }
    }

    /// The select stage runs here: the knapsack (or layout, or homogeneous rule) over the
    /// distill results.
    fn run_select(&mut self, now: UnixMs, job_id: &str, task_id: &str) {
        let job = &self.jobs[job_id];
        let outcome = JobSpec::parse(&job.spec_yaml)
            .map_err(|e| e.to_string())
            .and_then(|spec| select_stage::select(&spec, &self.tasks[job_id].list));
        let task = self.task_mut(job_id, task_id).expect("decided on an existing task");
        task.attempt += 1;
        task.updated_ms = now;
        match outcome {
            Ok(chosen) => {
                task.state = TaskState::Succeeded;
                task.result = Some(TaskResult {
                    metrics: chosen.metrics,
                    artifacts: Vec::new(),
                });
                let summary = chosen.summary;
                self.job_mut(job_id).expect("job exists").selected_layout = Some(chosen.layout);
                self.event(now, job_id, Some((task_id, TaskState::Succeeded)), "succeeded", summary);
            }
            Err(why) => {
                task.state = TaskState::Failed;
                task.last_failure = Some(Failure {
                    class: FailureClass::Fatal,
                    message: why.clone(),
                    attempt: task.attempt,
                    at_ms: now,
                });
                self.event(now, job_id, Some((task_id, TaskState::Failed)), "failed", why);
            }
        }
        self.settle_job(now, job_id);
    }
}

/// A worker's report on one task in a heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskReport {
    /// `job_id:task_id`.
    pub task_id: String,
    pub attempt: u32,
    pub progress: Option<Progress>,
    pub logs: Vec<ReportedLog>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReportedLog {
    pub unix_ms: UnixMs,
    pub level: String,
    pub message: String,
}

fn not_found_job(job_id: &str) -> Reject {
    Reject::NotFound(format!("job {job_id} does not exist"))
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
