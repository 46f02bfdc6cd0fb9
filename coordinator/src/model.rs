//! The coordinator's durable records: jobs, tasks (with their lease), workers, and the
//! append-only event, log and metric entries. Plain data, serialised as JSON into the
//! store (JSON so a record written by an older coordinator still reads: new fields take
//! their serde defaults). No behaviour beyond small queries lives here.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
pub use surgery_core::rate::Rate;
use surgery_core::spec::CaptureShard;
pub use surgery_core::state::{FailureClass, JobState, Stage, TaskState};

pub type JobId = String;
pub type TaskId = String;
pub type WorkerId = String;

/// Milliseconds since the Unix epoch; the clock is injected everywhere.
pub type UnixMs = i64;

/// What the scheduler needs of a job's spec, extracted once at submit so scheduling
/// never re-parses YAML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Requirements {
    /// "cuda" or "cpu".
    pub device: String,
    pub min_memory_bytes: u64,
    pub max_retries: u32,
    pub max_interruptions: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: JobId,
    pub name: String,
    pub request_id: String,
    pub spec_yaml: String,
    pub priority: i32,
    /// Submission order; FIFO among equal priorities.
    pub seq: u64,
    pub submitted_ms: UnixMs,
    #[serde(default)]
    pub started_ms: Option<UnixMs>,
    #[serde(default)]
    pub finished_ms: Option<UnixMs>,
    pub state: JobState,
    #[serde(default)]
    pub failure: Option<String>,
    pub requirements: Requirements,
    /// The select stage's choice: (block, rate) for every block (stored as wire codes).
    #[serde(default, with = "surgery_core::rate::code_pairs")]
    pub selected_layout: Option<Vec<(u32, Rate)>>,
    /// The job this one was forked from.
    #[serde(default)]
    pub forked_from: Option<JobId>,
    /// What the fork reused, a line per stage.
    #[serde(default)]
    pub reuse_notes: Vec<String>,
}

/// What a task does, beyond its stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskParams {
    Capture(CaptureShard),
    Distill {
        block: u32,
        /// Stored as the wire code (0 = linear), as earlier coordinators wrote it.
        #[serde(with = "surgery_core::rate::code")]
        rate: Rate,
    },
    Select,
    Finetune,
    Export,
    Evaluate,
    Encode(CaptureShard),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub class: FailureClass,
    pub message: String,
    pub attempt: u32,
    pub at_ms: UnixMs,
}

/// One member of a lease; a plain task has one, a gang task W.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub rank: u32,
    pub worker_id: WorkerId,
    pub slot: u32,
    /// Renewed by the member's heartbeats; the lease is lost when any member's passes.
    pub deadline_ms: UnixMs,
    /// Set at rendezvous: where this member's CPU collective listens.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub arrived: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub attempt: u32,
    pub granted_ms: UnixMs,
    pub members: Vec<Member>,
    /// Rank 0's NCCL unique id, relayed to the other members.
    #[serde(default)]
    pub nccl_unique_id: Option<Vec<u8>>,
}

impl Lease {
    pub fn deadline_ms(&self) -> UnixMs {
        self.members
            .iter()
            .map(|m| m.deadline_ms)
            .min()
            .unwrap_or(self.granted_ms)
    }

    pub fn member(&self, worker_id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.worker_id == worker_id)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub step: u64,
    pub total_steps: u64,
    pub metrics: BTreeMap<String, f64>,
    pub message: String,
    pub updated_ms: UnixMs,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub metrics: BTreeMap<String, f64>,
    /// Object-store paths relative to the job root.
    pub artifacts: Vec<String>,
    /// Words beside the numbers (export: the measuring device).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub job_id: JobId,
    pub id: TaskId,
    pub stage: Stage,
    pub params: TaskParams,
    /// Runs once every task of these stages succeeded. The job graph is a chain of
    /// stage barriers (a distill task needs every capture shard), so a dependency is a
    /// stage, not a list of thousands of task ids.
    pub after: Vec<Stage>,
    /// Workers leased together (all-or-nothing); 1 for a plain task.
    pub gang_size: u32,
    /// Position in the plan; tasks of one job are offered in this order.
    pub order: u32,
    pub state: TaskState,
    /// The attempt of the newest lease; 0 before the first.
    pub attempt: u32,
    /// Counted failures since the last resume.
    pub retries_used: u32,
    /// Preemptions and lost leases since the last resume.
    pub interruptions: u32,
    #[serde(default)]
    pub lease: Option<Lease>,
    #[serde(default)]
    pub progress: Option<Progress>,
    #[serde(default)]
    pub result: Option<TaskResult>,
    #[serde(default)]
    pub last_failure: Option<Failure>,
    pub updated_ms: UnixMs,
    /// A forked job's task that did not run: the job whose outputs (and result) it has.
    #[serde(default)]
    pub reused_from: Option<JobId>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotInfo {
    pub device: String,
    pub model: String,
    pub memory_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerStatus {
    Alive,
    /// Not heard from within the worker timeout.
    Lost,
    /// A newer registration under the same name ended this one.
    Replaced,
}

impl WorkerStatus {
    pub fn name(self) -> &'static str {
        match self {
            WorkerStatus::Alive => "alive",
            WorkerStatus::Lost => "lost",
            WorkerStatus::Replaced => "replaced",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub id: WorkerId,
    pub name: String,
    pub host: String,
    pub version: String,
    pub slots: Vec<SlotInfo>,
    pub status: WorkerStatus,
    pub registered_ms: UnixMs,
    /// Not persisted on every heartbeat; a restarted coordinator starts it at "now".
    pub last_seen_ms: UnixMs,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub job_id: JobId,
    #[serde(default)]
    pub task_id: Option<TaskId>,
    pub unix_ms: UnixMs,
    /// Short machine-readable kind: "submitted", "leased", "failed", ...
    pub kind: String,
    pub message: String,
    #[serde(default)]
    pub job_state: Option<JobState>,
    #[serde(default)]
    pub task_state: Option<TaskState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    pub seq: u64,
    pub job_id: JobId,
    pub task_id: TaskId,
    pub worker_id: WorkerId,
    pub unix_ms: UnixMs,
    pub level: String,
    pub message: String,
}

/// One point of a task's training curve, kept for ever (loss curves across resumes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricPoint {
    pub seq: u64,
    pub job_id: JobId,
    pub task_id: TaskId,
    pub attempt: u32,
    pub step: u64,
    pub unix_ms: UnixMs,
    pub metrics: BTreeMap<String, f64>,
}
