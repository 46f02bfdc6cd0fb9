//! Jobs: submit (plan and record), cancel, resume, and settling a job once its tasks end.

use super::Cluster;
use super::JobTasks;
use crate::command::{Reject, Submitted};
use crate::model::*;
use crate::planner;
use std::sync::Arc;
use surgery_core::spec::JobSpec;

impl Cluster {
    /// Plans and records a job. A request id seen before returns the job it created;
    /// the same id with a different spec is a conflict.
    pub(super) fn submit(
        &mut self,
        now: UnixMs,
        request_id: &str,
        spec_yaml: &str,
        spec: Arc<JobSpec>,
        id_suffix: &str,
        fork_of: Option<&str>,
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
        let parent_spec = fork_of.map(|parent| self.fork_source(parent)).transpose()?;
        let job_id = surgery_core::ids::job_id(&spec.name, id_suffix);
        if self.jobs.contains_key(&job_id) {
            return Err(Reject::Conflict(format!("job id {job_id} exists; retry the submit")));
        }
        self.counters.job_seq += 1;
        self.changes.counters_changed = true;
        let mut job = JobRecord {
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
            forked_from: fork_of.map(str::to_string),
            reuse_notes: Vec::new(),
        };
        let mut tasks = planner::plan(&job_id, &spec, now);
        let count = tasks.len();
        if let (Some(parent), Some(parent_spec)) = (fork_of, &parent_spec) {
            job.reuse_notes = self.take_over(now, parent, parent_spec, &spec, &mut tasks);
        }
        let reused = tasks.iter().filter(|t| t.reused_from.is_some()).count();
        for task in &tasks {
            self.changes.tasks.insert((job_id.clone(), task.id.clone()));
        }
        self.jobs.insert(job_id.clone(), job);
        self.specs.insert(job_id.clone(), Ok(spec));
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
        if let Some(parent) = fork_of {
            let notes = self.jobs[&job_id].reuse_notes.join("; ");
            self.event(
                now,
                &job_id,
                None,
                "forked",
                format!("forked from {parent}: {reused} of {count} tasks reused ({notes})"),
            );
        }
        Ok(Submitted { job_id, created: true })
    }

    /// Cancels every unfinished task; running ones learn it at their next heartbeat.
    pub(super) fn cancel_job(&mut self, now: UnixMs, job_id: &str, reason: &str) -> Result<(), Reject> {
        let job = self.jobs.get(job_id).ok_or_else(|| not_found_job(job_id))?;
        if job.state.is_terminal() {
            return Err(Reject::WrongState(format!(
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
    pub(super) fn resume_job(&mut self, now: UnixMs, job_id: &str) -> Result<Vec<TaskId>, Reject> {
        let job = self.jobs.get(job_id).ok_or_else(|| not_found_job(job_id))?;
        if !matches!(job.state, JobState::Failed | JobState::Cancelled) {
            return Err(Reject::WrongState(format!(
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
    pub(super) fn end_unfinished_tasks(&mut self, now: UnixMs, job_id: &str, reason: &str) {
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
    pub(super) fn settle_job(&mut self, now: UnixMs, job_id: &str) {
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
}

fn not_found_job(job_id: &str) -> Reject {
    Reject::NotFound(format!("job {job_id} does not exist"))
}
