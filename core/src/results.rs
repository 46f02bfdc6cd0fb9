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
