//! Names of the result metrics a stage reports in CompleteTask and a later stage reads,
//! so the worker that writes them and the coordinator that reads them cannot drift.

/// Distill: e_br, the distillation error on held-out cached samples.
pub const HELDOUT_ERROR: &str = "heldout_error";
/// Distill: forward time of the hybrid attention at the task's rate, in ms, measured on
/// the worker's device at the spec's token count (the `measured` cost of the knapsack).
pub const ATTENTION_MS: &str = "attention_ms";
/// Distill: forward time of full softmax attention at the same shape, in ms.
pub const SOFTMAX_ATTENTION_MS: &str = "softmax_attention_ms";

/// Select: the chosen layout's summed error, its cost, and the budget it had.
pub const TOTAL_ERROR: &str = "total_error";
pub const TOTAL_COST: &str = "total_cost";
pub const SOFTMAX_COST: &str = "softmax_cost";
pub const BUDGET: &str = "budget";

/// Export: the student's forward speed-up over the teacher, measured on the export's
/// device at the job's resolution, and the two forward times in ms.
pub const STUDENT_SPEEDUP: &str = "student_speedup";
pub const STUDENT_FORWARD_MS: &str = "student_forward_ms";
pub const TEACHER_FORWARD_MS: &str = "teacher_forward_ms";
/// Export (a label): the device the speed-up was measured on (`NVIDIA H200`, `cpu`).
pub const SPEED_DEVICE: &str = "speed_device";

/// Evaluate: per hybrid block, the student's linear-branch share of its output and the
/// teacher's softmax mass on the same tokens (`linear_share/block-03`,
/// `teacher_linear_share/block-03`); worker/src/attention/linear_share.rs defines them.
pub const LINEAR_SHARE: &str = "linear_share";
pub const TEACHER_LINEAR_SHARE: &str = "teacher_linear_share";

/// The metric name of `kind` ([`LINEAR_SHARE`] or [`TEACHER_LINEAR_SHARE`]) for `block`.
pub fn linear_share_metric(kind: &str, block: usize) -> String {
    format!("{kind}/block-{block:02}")
}

/// `student 1.90x faster than the teacher at 480x832x81 on NVIDIA H100` (or `slower`): how
/// the export's measured speed-up reads in logs and `surgeryctl status`.
pub fn speed_sentence(speedup: f64, resolution: &str, device: &str) -> String {
    if speedup >= 1.0 {
        format!("student {speedup:.2}x faster than the teacher at {resolution} on {device}")
    } else {
        format!(
            "student {:.2}x slower than the teacher at {resolution} on {device}",
            1.0 / speedup
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_share_metrics_name_the_block() {
        assert_eq!(linear_share_metric(LINEAR_SHARE, 3), "linear_share/block-03");
        assert_eq!(
            linear_share_metric(TEACHER_LINEAR_SHARE, 12),
            "teacher_linear_share/block-12"
        );
    }

    #[test]
    fn the_speed_sentence_says_faster_or_slower() {
        assert_eq!(
            speed_sentence(1.93, "480x832x81", "NVIDIA H100"),
            "student 1.93x faster than the teacher at 480x832x81 on NVIDIA H100"
        );
        assert_eq!(
            speed_sentence(0.5, "64x96x9", "cpu"),
            "student 2.00x slower than the teacher at 64x96x9 on cpu"
        );
    }
}
