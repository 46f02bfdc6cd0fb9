//! Workers: registration (ending an earlier incarnation of the name), being heard from,
//! and the end of an incarnation, which requeues its leases.

use super::Cluster;
use crate::command::Reject;
use crate::model::*;

impl Cluster {
    /// Registers a worker. A name registered before ends its earlier incarnation: its
    /// leases are requeued as lost (not counted against the retry budget).
    pub(super) fn register(
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
    pub(super) fn touch_worker(&mut self, now: UnixMs, worker_id: &str) -> Result<(), Reject> {
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

    /// A slot asks for work (LeaseTask): the worker is heard from and the slot must exist.
    pub(super) fn poll(&mut self, now: UnixMs, worker_id: &str, slot: u32) -> Result<(), Reject> {
        self.touch_worker(now, worker_id)?;
        let worker = &self.workers[worker_id];
        if slot as usize >= worker.slots.len() {
            return Err(Reject::Invalid(format!(
                "slot {slot} does not exist; {worker_id} registered {} slot(s)",
                worker.slots.len()
            )));
        }
        Ok(())
    }

    /// Ends a worker's incarnation and requeues every lease it holds.
    pub(super) fn release_worker(&mut self, now: UnixMs, worker_id: &str, status: WorkerStatus, why: &str) {
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
}
