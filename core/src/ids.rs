//! The names of tasks in a job's plan. One place builds them, so the planner, the
//! worker and the CLI agree: `capture/shard-0003`, `distill/block-07/rate-4`,
//! `distill/block-07/rate-linear`, `select`, `finetune`, `export`, `evaluate`.

use crate::cost::Rate;

pub fn capture_task(shard: u32) -> String {
    format!("capture/shard-{shard:04}")
}

pub fn distill_task(block: u32, rate: Rate) -> String {
    format!("distill/block-{block:02}/rate-{}", rate_word(rate))
}

pub const SELECT_TASK: &str = "select";
pub const FINETUNE_TASK: &str = "finetune";
pub const EXPORT_TASK: &str = "export";
pub const EVALUATE_TASK: &str = "evaluate";

/// `4`, `linear` or `1`, as used in task names and object-store paths.
pub fn rate_word(rate: Rate) -> String {
    match rate {
        Rate::Linear => "linear".to_string(),
        Rate::Softmax => "1".to_string(),
        Rate::Hybrid(r) => r.to_string(),
    }
}

/// A job id: the spec's name and a short random suffix the caller supplies, so two
/// submissions of one spec get different ids.
pub fn job_id(name: &str, suffix: &str) -> String {
    format!("{name}-{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_in_plan_order() {
        assert_eq!(capture_task(3), "capture/shard-0003");
        assert_eq!(distill_task(7, Rate::Hybrid(4)), "distill/block-07/rate-4");
        assert_eq!(distill_task(12, Rate::Linear), "distill/block-12/rate-linear");
        assert!(distill_task(2, Rate::Hybrid(2)) < distill_task(10, Rate::Hybrid(2)));
    }
}
