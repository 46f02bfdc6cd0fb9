//! The words of a job's life: job and task states, stages, failure classes. One place
//! defines them and how they read (`queued`, `running`, `distill`, `lost`, ...), so the
//! coordinator's records, its event log, `surgeryctl` and the pages say the same thing.
//! The wire enums of surgery.v1 convert to and from these in the proto crate.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobState {
    /// Submitted; no task has been leased yet.
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 5] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    }

    pub fn word(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

/// The task state machine (DESIGN.md):
///
/// ```text
/// pending ──lease──▶ leased(workers, attempt, deadline) ──first progress──▶ running
/// running ──complete──▶ succeeded
/// running/leased ──fail (retryable, preempted) or lease expired──▶ pending (next lease is attempt + 1)
/// … ──fail (fatal) or budget exhausted──▶ failed        any ──cancel──▶ cancelled
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskState {
    Pending,
    Leased,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskState {
    pub const ALL: [TaskState; 6] = [
        TaskState::Pending,
        TaskState::Leased,
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Cancelled,
    ];

    pub fn is_active(self) -> bool {
        matches!(self, TaskState::Leased | TaskState::Running)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled)
    }

    pub fn word(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Leased => "leased",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }
}

/// A stage of the job graph (DESIGN.md), in plan order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Stage {
    Encode,
    Capture,
    Distill,
    Select,
    Finetune,
    Export,
    Evaluate,
}

impl Stage {
    pub const ALL: [Stage; 7] = [
        Stage::Encode,
        Stage::Capture,
        Stage::Distill,
        Stage::Select,
        Stage::Finetune,
        Stage::Export,
        Stage::Evaluate,
    ];

    pub fn word(self) -> &'static str {
        match self {
            Stage::Encode => "encode",
            Stage::Capture => "capture",
            Stage::Distill => "distill",
            Stage::Select => "select",
            Stage::Finetune => "finetune",
            Stage::Export => "export",
            Stage::Evaluate => "evaluate",
        }
    }

    /// Select runs inside the coordinator; every other stage runs on workers.
    pub fn runs_on_worker(self) -> bool {
        self != Stage::Select
    }
}

/// How an attempt failed, decided where it happened (DESIGN.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FailureClass {
    /// Counted against the retry budget.
    Retryable,
    /// The worker was asked to leave; not counted.
    Preempted,
    /// Lease expired or the worker went away; not counted.
    Lost,
    /// The task and its job fail now.
    Fatal,
}

impl FailureClass {
    pub const ALL: [FailureClass; 4] = [
        FailureClass::Retryable,
        FailureClass::Preempted,
        FailureClass::Lost,
        FailureClass::Fatal,
    ];

    pub fn word(self) -> &'static str {
        match self {
            FailureClass::Retryable => "retryable",
            FailureClass::Preempted => "preempted",
            FailureClass::Lost => "lost",
            FailureClass::Fatal => "fatal",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn words_are_distinct_lower_case() {
        let words: Vec<&str> = JobState::ALL.iter().map(|s| s.word()).collect();
        assert_eq!(words, ["queued", "running", "succeeded", "failed", "cancelled"]);
        let task: HashSet<&str> = TaskState::ALL.iter().map(|s| s.word()).collect();
        assert_eq!(task.len(), TaskState::ALL.len());
        let stages: Vec<&str> = Stage::ALL.iter().map(|s| s.word()).collect();
        assert_eq!(
            stages,
            [
                "encode", "capture", "distill", "select", "finetune", "export", "evaluate"
            ]
        );
        let classes: HashSet<&str> = FailureClass::ALL.iter().map(|c| c.word()).collect();
        assert_eq!(classes.len(), 4);
    }

    #[test]
    fn terminal_and_active_states() {
        assert!(TaskState::Running.is_active() && !TaskState::Pending.is_active());
        assert!(TaskState::Cancelled.is_terminal() && !TaskState::Leased.is_terminal());
        assert!(JobState::Failed.is_terminal() && !JobState::Queued.is_terminal());
        assert!(!Stage::Select.runs_on_worker() && Stage::Export.runs_on_worker());
    }

    #[test]
    fn stored_form_is_the_variant_name() {
        // The coordinator's store keeps these; the spelling must not change.
        assert_eq!(serde_json::to_string(&TaskState::Succeeded).unwrap(), "\"Succeeded\"");
        assert_eq!(serde_json::to_string(&Stage::Finetune).unwrap(), "\"Finetune\"");
    }
}
