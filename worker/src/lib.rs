//! surgery-worker: runs stage tasks with LibTorch through tch. It is the only crate that
//! links LibTorch; the coordinator and surgeryctl never depend on it.
//!
//! The layers, each using only those below it: `bin/surgery-worker` -> [`cli`] -> [`agent`]
//! -> [`stages`] -> [`model`], [`vae`], [`attention`], [`student`], [`train`], [`sampler`],
//! [`storage`], [`collective`], [`kernels`], [`runtime`]. Only the agent speaks the wire (surgery-proto).
//!
//! - [`cli`]: the `surgery-worker` command (the agent, model tools for users).
//! - [`agent`]: the worker process: registration, leases, heartbeats, SIGTERM, the one
//!   wire-to-domain conversion of an assignment, the gang's rendezvous over gRPC.
//! - [`stages`]: the stage executors (capture, distill, finetune, export, evaluate) and what
//!   they share (the training loop, the block cache, seeds, model inputs, folders).
//! - [`model`]: the Wan2.1 diffusion transformer with diffusers' names and numerics.
//! - [`text`]: prompts to text embeddings: the umT5 encoder and tokenizer, as WanPipeline runs them.
//! - [`vae`]: the Wan2.1 VAE's decoder (latents to video frames) with diffusers' names and
//!   numerics, frame by frame with its causal cache, optionally in spatial tiles.
//! - [`attention`]: self-attention cores: softmax, and the hybrid softmax + linear attention.
//! - [`kernels`]: the CUDA kernels (fused attention, fused block element-wise work),
//!   compiled at run time with LibTorch's NVRTC.
//! - [`student`]: the teacher with hybrid blocks, saved and loaded as a folder.
//! - [`train`]: losses, AdamW with checkpointable moments, clipping, master weights,
//!   distillation's teacher-block target.
//! - [`sampler`]: flow-matching sampling with classifier-free guidance and capture hooks.
//! - [`storage`]: object storage (local, S3, GCS, Azure) and verified background checkpoints.
//! - [`collective`]: gradient all-reduce inside a gang: NCCL on GPUs, a TCP ring on CPUs, with a watchdog.
//! - [`metrics`]: the worker's Prometheus metrics (the agent serves them with /healthz).
//! - [`runtime`]: LibTorch set-up every binary of this crate runs first, and device timing.
//! - [`testbed`]: procedurally generated videos with known ground truth, their prompt code book,
//!   the exact latent codec and the ground-truth quality metrics.
//! - [`video`]: video files of samples (GIF, MP4 with H.264).
//!
//! The GPU benchmarks are the separate crate surgery-bench (bench/), over this public API.

pub mod agent;
pub mod attention;
pub mod cli;
pub mod collective;
pub mod kernels;
pub mod metrics;
pub mod model;
pub mod runtime;
pub mod sampler;
pub mod stages;
pub mod storage;
pub mod student;
pub mod testbed;
pub mod text;
pub mod train;
pub mod vae;
pub mod video;
