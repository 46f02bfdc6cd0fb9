//! The scheduler's decisions as a pure function of (now, state, waiting slots): which
//! leases expired, which workers are lost, which waiting slots get which tasks, and why
//! each waiting job waits. No clock, no I/O, no randomness: tests drive it with a
//! synthetic clock, and the service applies its decisions through
//! [`Cluster::apply`](crate::cluster::Cluster::apply), committing them before anyone
//! acts on them.
//!
//! Order: jobs by priority (higher first), then submission (FIFO); tasks of a job in plan
//! order; slots in the order they started waiting. A gang is leased all-or-nothing. A
//! task that cannot be served yet reserves the idle slots it could use, so a gang is not
//! starved by smaller tasks behind it (no backfill past a waiting task) - unless the
//! cluster does not even have enough such slots, in which case it reserves nothing.

use crate::cluster::{Cluster, Timing};
use crate::decision::{Decision, SlotRef, WaitingSlot};
use crate::model::*;
use std::collections::{BTreeMap, HashSet};

/// Why a job waits, and where it stands among waiting jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub reason: String,
    /// 1-based.
    pub position: u32,
    pub length: u32,
}

#[derive(Debug, Default)]
pub struct Schedule {
    pub decisions: Vec<Decision>,
    /// Jobs with runnable tasks that got no slot, keyed by job id.
    pub waiting: BTreeMap<JobId, Waiting>,
}

/// Jobs in scheduling order: priority descending, then submission order.
pub fn job_order(cluster: &Cluster) -> Vec<&JobRecord> {
    let mut jobs: Vec<&JobRecord> = cluster.jobs.values().filter(|j| !j.state.is_terminal()).collect();
    jobs.sort_by_key(|j| (std::cmp::Reverse(j.priority), j.seq));
    jobs
}

fn slot_fits(worker: &WorkerRecord, slot: u32, req: &Requirements) -> bool {
    worker
        .slots
        .get(slot as usize)
        .is_some_and(|s| s.device == req.device && (req.device != "cuda" || s.memory_bytes >= req.min_memory_bytes))
}

fn describe_slot(req: &Requirements) -> String {
    if req.device == "cuda" && req.min_memory_bytes > 0 {
        format!("cuda slot with at least {} GiB", req.min_memory_bytes >> 30)
    } else {
        format!("{} slot", req.device)
    }
}

pub fn decide(now: UnixMs, cluster: &Cluster, waiting: &[WaitingSlot], timing: Timing) -> Schedule {
    let mut out = Schedule::default();
    let waiting_workers: HashSet<&str> = waiting.iter().map(|w| w.worker_id.as_str()).collect();

    // Lost workers: silent past the timeout and not parked in a long poll.
    let mut lost: HashSet<&str> = HashSet::new();
    for worker in cluster.workers.values() {
        if worker.status == WorkerStatus::Alive
            && now - worker.last_seen_ms > timing.worker_timeout_ms
            && !waiting_workers.contains(worker.id.as_str())
        {
            lost.insert(worker.id.as_str());
            out.decisions.push(Decision::WorkerLost {
                worker_id: worker.id.clone(),
            });
        }
    }

    // Expired leases (a lost worker's leases are requeued by its own decision).
    for (job_id, tasks) in &cluster.tasks {
        for task in tasks.list.iter().filter(|t| t.state.is_active()) {
            let Some(lease) = &task.lease else { continue };
            if lease.members.iter().any(|m| lost.contains(m.worker_id.as_str())) {
                continue;
            }
            if let Some(late) = lease
                .members
                .iter()
                .filter(|m| m.deadline_ms < now)
                .min_by_key(|m| m.deadline_ms)
            {
                let gang = if lease.members.len() > 1 {
                    format!(
                        " (rank {} of a gang of {}; the whole gang is requeued)",
                        late.rank,
                        lease.members.len()
                    )
                } else {
                    String::new()
                };
                out.decisions.push(Decision::Expire {
                    job_id: job_id.clone(),
                    task_id: task.id.clone(),
                    attempt: lease.attempt,
                    reason: format!(
                        "lease of {} expired {} ms ago without a heartbeat{gang}",
                        late.worker_id,
                        now - late.deadline_ms
                    ),
                });
            }
        }
    }

    // Assignment.
    let alive = |id: &str| {
        cluster
            .workers
            .get(id)
            .is_some_and(|w| w.status == WorkerStatus::Alive && !lost.contains(id))
    };
    let mut free: Vec<&WaitingSlot> = waiting.iter().filter(|w| alive(&w.worker_id)).collect();
    free.sort_by_key(|w| w.since_ms);
    let order = job_order(cluster);
    let mut blocked_jobs: Vec<(JobId, String)> = Vec::new();
    // Slots that could ever serve a requirement; the same for every task of a job.
    let capacity_of = |req: &Requirements| -> usize {
        cluster
            .workers
            .values()
            .filter(|w| w.status == WorkerStatus::Alive && !lost.contains(w.id.as_str()))
            .map(|w| (0..w.slots.len() as u32).filter(|s| slot_fits(w, *s, req)).count())
            .sum()
    };
    for job in order {
        let tasks = &cluster.tasks[&job.id];
        let req = &job.requirements;
        for task in tasks.runnable() {
            if !task.stage.runs_on_worker() {
                out.decisions.push(Decision::RunSelect {
                    job_id: job.id.clone(),
                    task_id: task.id.clone(),
                });
                continue;
            }
            let need = task.gang_size.max(1) as usize;
            let eligible: Vec<usize> = free
                .iter()
                .enumerate()
                .filter(|(_, w)| slot_fits(&cluster.workers[&w.worker_id], w.slot, req))
                .map(|(i, _)| i)
                .take(need)
                .collect();
            if eligible.len() == need {
                let slots = eligible
                    .iter()
                    .map(|i| SlotRef {
                        worker_id: free[*i].worker_id.clone(),
                        slot: free[*i].slot,
                    })
                    .collect();
                for i in eligible.into_iter().rev() {
                    free.remove(i);
                }
                out.decisions.push(Decision::Grant {
                    job_id: job.id.clone(),
                    task_id: task.id.clone(),
                    slots,
                });
                continue;
            }
            // Not enough idle slots: reserve what is idle, if waiting can ever succeed.
            // Every later task of this job waits behind this one (same requirements,
            // no backfill), so the job's scan stops here.
            let capacity = capacity_of(req);
            let what = describe_slot(req);
            let reason = if capacity < need {
                if capacity == 0 {
                    format!("no alive worker offers a {what}; start workers that do")
                } else {
                    format!(
                        "task {} needs {need} {what}s at once but alive workers offer only {capacity}",
                        task.id
                    )
                }
            } else {
                free.retain(|w| !slot_fits(&cluster.workers[&w.worker_id], w.slot, req));
                if need > 1 {
                    format!(
                        "task {} waits for a gang of {need} idle {what}s ({capacity} on alive workers, the rest busy)",
                        task.id
                    )
                } else {
                    format!("waiting for an idle {what} (all {capacity} busy or held for jobs ahead)")
                }
            };
            blocked_jobs.push((job.id.clone(), reason));
            break;
        }
    }
    let length = blocked_jobs.len() as u32;
    for (i, (job_id, reason)) in blocked_jobs.into_iter().enumerate() {
        out.waiting.insert(
            job_id,
            Waiting {
                reason,
                position: i as u32 + 1,
                length,
            },
        );
    }
    out
}

#[cfg(test)]
mod tests;
