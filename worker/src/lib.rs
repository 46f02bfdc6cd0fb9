//! surgery-worker: runs stage tasks with LibTorch through tch. It is the only crate that
//! links LibTorch; the coordinator and surgeryctl never depend on it.
//!
//! - [`runtime`]: LibTorch set-up every binary of this crate runs first.
//! - [`model`]: the Wan2.1 diffusion transformer with diffusers' names and numerics, and
//!   the student built from it.
//! - [`attention`]: self-attention cores: softmax, and the hybrid softmax + linear attention.
//! - [`train`]: losses, AdamW with checkpointable moments, clipping, master weights.
//! - [`sampler`]: flow-matching sampling with classifier-free guidance and capture hooks.

pub mod attention;
pub mod model;
pub mod runtime;
pub mod sampler;
pub mod train;
