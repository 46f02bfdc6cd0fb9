//! What the scheduler decides, as plain values: which waiting slots get which task, which
//! leases expired, which workers are lost, when select runs. [`crate::scheduler`] produces
//! them from a read of the [`Cluster`](crate::cluster::Cluster), and the cluster applies
//! them. A module of their own, so the cluster never imports the scheduler (the
//! scheduler reads the cluster; the cluster only knows the decisions' shape).

use crate::model::{JobId, TaskId, UnixMs, WorkerId};

/// A worker slot blocked in LeaseTask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitingSlot {
    pub worker_id: WorkerId,
    pub slot: u32,
    pub since_ms: UnixMs,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRef {
    pub worker_id: WorkerId,
    pub slot: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Lease the task to these slots; rank = position.
    Grant {
        job_id: JobId,
        task_id: TaskId,
        slots: Vec<SlotRef>,
    },
    /// A member missed its deadline: requeue the whole (gang) task.
    Expire {
        job_id: JobId,
        task_id: TaskId,
        attempt: u32,
        reason: String,
    },
    /// No word from the worker within the timeout: requeue its leases.
    WorkerLost { worker_id: WorkerId },
    /// Run the select stage inside the coordinator.
    RunSelect { job_id: JobId, task_id: TaskId },
}
