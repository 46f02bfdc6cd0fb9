//! surgery-worker: runs stage tasks with LibTorch through tch. It is the only crate that
//! links LibTorch; the coordinator and surgeryctl never depend on it.
//!
//! - [`runtime`]: LibTorch set-up every binary of this crate runs first.
//! - [`cli`]: the `surgery-worker` command (model tools for users).
//! - [`model`]: the Wan2.1 diffusion transformer with diffusers' names and numerics, and
//!   the student built from it.
//! - [`attention`]: self-attention cores: softmax, and the hybrid softmax + linear attention.
//! - [`train`]: losses, AdamW with checkpointable moments, clipping, master weights.
//! - [`sampler`]: flow-matching sampling with classifier-free guidance and capture hooks.
//! - [`student`]: the teacher with hybrid blocks, saved and loaded as a folder.

pub mod attention;
pub mod cli;
pub mod model;
pub mod runtime;
pub mod sampler;
pub mod student;
pub mod train;
