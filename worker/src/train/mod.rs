//! Training primitives shared by stage 1 (per-block distillation) and stage 3 (fine-tuning).
//! Pure tensor code over tch: no I/O besides the state files; the stage loops live elsewhere.
//!
//! - [`losses`]: value distillation (L1), the flow-matching pieces (noisy input, velocity
//!   target, timestep, shift, seeded training sigmas) and the MSE losses, with the optional
//!   teacher-velocity term. All in float32.
//! - [`adamw`]: AdamW with `torch.optim.AdamW`'s arithmetic, its moments and step counts as a
//!   name -> tensor state that saves to / loads from safetensors and resumes bit for bit.
//! - [`master`]: float32 master weights for bf16 parameters, part of the saved state.
//! - [`clip`]: global L2 gradient-norm clipping like `torch.nn.utils.clip_grad_norm_`.
//! - [`error`]: [`TrainError`]; everything but a failed file read / write is fatal.
//! - [`recompute`]: block-wise activation checkpointing of the Wan transformer.
//! - [`teacher_block`]: distillation's target: a frozen teacher block's q, k, v and
//!   softmax attention output, recomputed from cached block inputs.
//!
//! A checkpoint of a fine-tune is the union of three name -> tensor maps with disjoint
//! prefixes: the trainable parameters (their own names, written by the checkpoint code),
//! [`MasterWeights::state_dict`] (`master.*`) and [`AdamW::state_dict`] (`exp_avg.*`,
//! `exp_avg_sq.*`, `step.*`); each `load_state_dict` ignores the others' entries. Add the
//! [`losses::SigmaSampler`] state and the data position to resume the same stream.

pub mod adamw;
pub mod clip;
pub mod error;
pub mod losses;
pub mod master;
pub mod recompute;
pub mod teacher_block;

pub use adamw::{AdamW, AdamWConfig, read_state, write_state};
pub use clip::{clip_grad_norm, grad_norm};
pub use error::TrainError;
pub use losses::{
    FineTuneLoss, SigmaSampler, fine_tune_loss, flow_matching_loss, noisy, shift_sigma, shift_sigmas, timestep_of,
    value_distillation_loss, velocity_target,
};
pub use master::MasterWeights;
pub use teacher_block::{Batch, TeacherBlock};
