//! The errors of the training primitives. All but [`TrainError::Checkpoint`] are fatal for a
//! task (retrying reproduces them): a shape or dtype mismatch, a checkpoint that does not fit the
//! parameters, a non-finite gradient norm (NaN or inf in the loss or the gradients).

use thiserror::Error;

#[derive(Debug, Error)]
pub enum TrainError {
    /// A parameter the optimizer or the master copy cannot take.
    #[error("parameter `{name}`: {problem}")]
    Parameter { name: String, problem: String },

    /// A gradient that does not fit its parameter.
    #[error("gradient of `{name}`: {problem}")]
    Gradient { name: String, problem: String },

    /// A saved state that does not fit the parameters; every problem found is listed.
    #[error("saved {what} does not fit the parameters: {}", problems.join("; "))]
    StateMismatch { what: &'static str, problems: Vec<String> },

    /// The total gradient norm is NaN or infinite; nothing was stepped.
    #[error("non-finite gradient norm ({0}): NaN or inf in the loss or the gradients")]
    NonFiniteGradNorm(f64),

    /// Reading or writing a state file failed.
    #[error("checkpoint file: {0}")]
    Checkpoint(#[from] tch::TchError),
}

impl TrainError {
    /// Whether retrying the task cannot help (every variant but a failed file read or write).
    pub fn is_fatal(&self) -> bool {
        !matches!(self, TrainError::Checkpoint(_))
    }
}
