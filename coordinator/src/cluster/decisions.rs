//! The scheduler's decisions applied: grants, expiries, lost workers, and the select
//! stage, which runs here.

use super::{Cluster, Timing};
use crate::decision::Decision;
use crate::model::*;
use crate::select_stage;

impl Cluster {
    /// Applies what the scheduler decided.
    pub(super) fn decide(&mut self, now: UnixMs, timing: Timing, decision: &Decision) {
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
        let outcome = match &self.specs[job_id] {
            Ok(spec) => select_stage::select(spec, &self.tasks[job_id].list),
            Err(why) => Err(why.clone()),
        };
        let task = self.task_mut(job_id, task_id).expect("decided on an existing task");
        task.attempt += 1;
        task.updated_ms = now;
        match outcome {
            Ok(chosen) => {
                task.state = TaskState::Succeeded;
                task.result = Some(TaskResult {
                    metrics: chosen.metrics,
                    ..TaskResult::default()
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
