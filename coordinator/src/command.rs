//! Everything that can happen to the coordinator's state, in one enum (Ballista's event
//! loop habit: one place to read what can happen). The gRPC services decode a request
//! into a [`Command`]; the [`Engine`](crate::engine::Engine) applies it through
//! [`Cluster::apply`](crate::cluster::Cluster::apply) under the state lock, lets the
//! scheduler act on the outcome, queues what changed for the store, and answers with an
//! [`Outcome`] or a [`Reject`]. Nothing else mutates the state.
//!
//! What must be durable before the answer ([`Outcome::may_answer_before_durable`];
//! docs/DESIGN-NOTES.md, "Durability", says why and what a crash can lose):
//!
//! | command        | from                                  | durable before the answer                    |
//! |----------------|---------------------------------------|----------------------------------------------|
//! | `Submit`       | JobService.SubmitJob                  | yes                                          |
//! | `Cancel`       | JobService.CancelJob                  | yes                                          |
//! | `Resume`       | JobService.ResumeJob                  | yes                                          |
//! | `Register`     | WorkerService.Register                | yes                                          |
//! | `Poll`         | WorkerService.LeaseTask               | the grant it is answered with is             |
//! | `Heartbeat`    | WorkerService.Heartbeat               | no, unless it tells the worker to stop a task |
//! | `Complete`     | WorkerService.CompleteTask            | yes                                          |
//! | `Fail`         | WorkerService.FailTask                | yes                                          |
//! | `Rendezvous`   | WorkerService.Rendezvous              | yes                                          |
//! | `Revoke`       | the engine, for an undeliverable lease | yes                                         |
//! | `Decision`     | the scheduler: grant, expire, worker lost, run select | yes; a grant reaches its worker only once durable |
//!
//! A heartbeat that tells the worker to carry on is answered at once: its lease renewal
//! and progress are not decisions (a restarted coordinator re-grants every lease for one
//! TTL, and the next heartbeat restates the progress), and its changes still reach the
//! group committer at once, so they are on disk one commit later.

use crate::decision::Decision;
use crate::model::*;
use std::sync::Arc;
use surgery_core::spec::JobSpec;

#[derive(Debug, Clone)]
pub enum Command {
    /// Plan and record a job. A request id seen before answers with the job it created;
    /// the same id with another spec is a conflict.
    Submit {
        request_id: String,
        spec_yaml: String,
        /// Parsed once, by the service (a bad spec is the caller's typed error), and
        /// kept beside the job for as long as the coordinator runs.
        spec: Arc<JobSpec>,
        /// The random part of the new job's id.
        id_suffix: String,
        /// The job this one forks: its reusable succeeded tasks are taken over.
        fork_of: Option<JobId>,
    },
    /// Cancel every unfinished task; holders learn it at their next heartbeat.
    Cancel { job_id: JobId, reason: String },
    /// Put a failed or cancelled job's failed and cancelled tasks back to pending.
    Resume { job_id: JobId },
    /// A worker joins. A name registered before ends its earlier incarnation.
    Register {
        name: String,
        host: String,
        version: String,
        slots: Vec<SlotInfo>,
        /// The random part of the new worker's id.
        id_suffix: String,
    },
    /// A worker slot asks for work (LeaseTask). The engine parks it until the scheduler
    /// grants it a task.
    Poll { worker_id: WorkerId, slot: u32 },
    /// Lease renewals, progress, log lines and metric points of a worker's tasks.
    Heartbeat {
        worker_id: WorkerId,
        reports: Vec<TaskReport>,
    },
    /// An attempt's result. Repeating the completion of a succeeded attempt is a no-op.
    Complete {
        worker_id: WorkerId,
        /// `job:task`.
        task: String,
        attempt: u32,
        result: TaskResult,
    },
    /// An attempt failed; `class` says whether it counts against the retry budget.
    Fail {
        worker_id: WorkerId,
        /// `job:task`.
        task: String,
        attempt: u32,
        class: FailureClass,
        message: String,
    },
    /// A gang member checks in; rank 0 brings the NCCL unique id.
    Rendezvous {
        worker_id: WorkerId,
        /// `job:task`.
        task: String,
        attempt: u32,
        rank: u32,
        endpoint: String,
        nccl_unique_id: Vec<u8>,
    },
    /// A granted lease could not be handed over (the slot's poll had ended): requeue it.
    Revoke {
        /// `job:task`.
        task: String,
        attempt: u32,
    },
    /// What the scheduler decided on its own: [`Decision::Grant`],
    /// [`Decision::Expire`], [`Decision::WorkerLost`], [`Decision::RunSelect`].
    Decision(Decision),
}

impl Command {
    /// Whether the scheduler runs after this command. A heartbeat or a rendezvous opens
    /// no scheduling opportunity (expiries are the periodic tick's), and the scheduler
    /// applies its own decisions.
    pub fn reschedules(&self) -> bool {
        !matches!(
            self,
            Command::Heartbeat { .. } | Command::Rendezvous { .. } | Command::Decision(_)
        )
    }
}

/// What a command answers, one variant per command.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Submitted(Submitted),
    Cancelled,
    /// The ids of the tasks put back to pending.
    Resumed(Vec<TaskId>),
    Registered(WorkerId),
    Polled,
    /// The reported tasks the worker must stop, and the deadline the renewed leases
    /// now have.
    Heartbeat {
        stops: Vec<Stop>,
        lease_deadline_ms: UnixMs,
    },
    Completed,
    /// What happens next, in words.
    Failed(String),
    /// The gang once every member checked in; `None` while some are missing.
    Rendezvous(Option<GangReady>),
    /// A revoke or a decision: nobody waits for an answer.
    Applied,
}

impl Outcome {
    /// Whether the caller may have this answer before the change is durable: only a
    /// heartbeat that tells the worker to carry on. An answer the worker acts on (stop a
    /// task) may stem from a decision still on its way to the disk, so it waits; so does
    /// every refusal.
    pub fn may_answer_before_durable(&self) -> bool {
        matches!(self, Outcome::Heartbeat { stops, .. } if stops.is_empty())
    }
}

/// Why a command was refused; the service maps each to a typed gRPC error.
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
    /// A request id reused with another spec, or an id that exists.
    #[error("{0}")]
    Conflict(String),
    /// The job's state does not allow it: cancel an ended job, resume a running one.
    #[error("{0}")]
    WrongState(String),
}

/// The outcome of a submit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub job_id: JobId,
    pub created: bool,
}

/// A task the worker must stop, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    pub task_id: TaskId,
    pub attempt: u32,
    pub reason: String,
}

/// A member's view of a finished rendezvous.
#[derive(Debug, Clone, PartialEq)]
pub struct GangReady {
    pub members: Vec<Member>,
    pub nccl_unique_id: Vec<u8>,
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
