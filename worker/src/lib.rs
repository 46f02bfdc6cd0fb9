//! surgery-worker: runs stage tasks with LibTorch through tch. It is the only crate that
//! links LibTorch; the coordinator and surgeryctl never depend on it.
//!
//! - [`runtime`]: LibTorch set-up every binary of this crate runs first.
//! - [`agent`]: the worker process: registration, leases, heartbeats, SIGTERM.
//! - [`stages`]: the stage executors (capture, distill, finetune, export, evaluate).
//! - [`cli`]: the `surgery-worker` command (model tools for users).
//! - [`model`]: the Wan2.1 diffusion transformer with diffusers' names and numerics, and
//!   the student built from it.
//! - [`attention`]: self-attention cores: softmax, and the hybrid softmax + linear attention.
//! - [`kernels`]: the CUDA kernels (fused attention, fused block element-wise work),
//!   compiled at run time with LibTorch's NVRTC.
//! - [`train`]: losses, AdamW with checkpointable moments, clipping, master weights.
//! - [`sampler`]: flow-matching sampling with classifier-free guidance and capture hooks.
//! - [`student`]: the teacher with hybrid blocks, saved and loaded as a folder.
//! - [`collective`]: gradient all-reduce inside a gang: NCCL on GPUs, a TCP ring on CPUs, with a watchdog.
//! - [`storage`]: object storage (local, S3, GCS, Azure) and verified background checkpoints.
//! - [`testbed`]: procedurally generated videos with known ground truth, their prompt code book,
//!   the exact latent codec and the ground-truth quality metrics.

pub mod agent;
pub mod attention;
pub mod cli;
pub mod collective;
pub mod kernels;
pub mod model;
pub mod runtime;
pub mod sampler;
pub mod stages;
pub mod storage;
pub mod student;
pub mod testbed;
pub mod train;
