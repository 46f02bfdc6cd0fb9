//! The names of jobs and tasks. One place builds them, so the planner, the worker and the
//! CLI agree: task names `encode/shard-0003`, `capture/shard-0003`, `distill/block-07/rate-4`,
//! `distill/block-07/rate-linear`, `select`, `finetune`, `export`, `evaluate`; job ids
//! `{spec name}-{suffix}`; and the `job:task` reference workers use on the wire.

use crate::rate::Rate;
use std::fmt;

pub fn encode_task(shard: u32) -> String {
    format!("encode/shard-{shard:04}")
}

pub fn capture_task(shard: u32) -> String {
    format!("capture/shard-{shard:04}")
}

pub fn distill_task(block: u32, rate: Rate) -> String {
    format!("distill/block-{block:02}/rate-{}", rate.word())
}

pub const SELECT_TASK: &str = "select";
pub const FINETUNE_TASK: &str = "finetune";
pub const EXPORT_TASK: &str = "export";
pub const EVALUATE_TASK: &str = "evaluate";

/// A job id: the spec's name and a short random suffix the caller supplies, so two
/// submissions of one spec get different ids.
pub fn job_id(name: &str, suffix: &str) -> String {
    format!("{name}-{suffix}")
}

/// A task of a job, as workers name it on the wire: `job:task` (job ids never hold a
/// `:`, spec names being lower-case letters, digits and `-`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskRef {
    pub job: String,
    pub task: String,
}

impl TaskRef {
    pub fn new(job: impl Into<String>, task: impl Into<String>) -> TaskRef {
        TaskRef {
            job: job.into(),
            task: task.into(),
        }
    }

    /// Splits `job:task`; `None` when there is no `:` or either side is empty.
    pub fn parse(full: &str) -> Option<TaskRef> {
        let (job, task) = full.split_once(':')?;
        (!job.is_empty() && !task.is_empty()).then(|| TaskRef::new(job, task))
    }
}

impl fmt::Display for TaskRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.job, self.task)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_in_plan_order() {
        assert_eq!(encode_task(3), "encode/shard-0003");
        assert_eq!(capture_task(3), "capture/shard-0003");
        assert_eq!(distill_task(7, Rate::Hybrid(4)), "distill/block-07/rate-4");
        assert_eq!(distill_task(12, Rate::Linear), "distill/block-12/rate-linear");
        assert!(distill_task(2, Rate::Hybrid(2)) < distill_task(10, Rate::Hybrid(2)));
    }

    #[test]
    fn task_refs_round_trip() {
        let r = TaskRef::new("tiny-ab12cd", distill_task(3, Rate::Linear));
        assert_eq!(r.to_string(), "tiny-ab12cd:distill/block-03/rate-linear");
        assert_eq!(TaskRef::parse(&r.to_string()), Some(r));
        assert_eq!(TaskRef::parse("no-colon"), None);
        assert_eq!(TaskRef::parse(":select"), None);
        assert_eq!(TaskRef::parse("job:"), None);
    }
}
