//! Stage executors: what a worker does with a leased task of each stage (DESIGN.md's job
//! graph; select runs in the coordinator). Each is a synchronous function of a
//! [`TaskContext`] (its typed [`StageInput`], the device, the task's handle) that returns
//! the task's result or a classified [`TaskError`], checks for a stop request at safe
//! points, and keeps everything it needs to resume in object storage. This layer knows
//! nothing of the coordinator or the wire: the agent above builds the input, implements
//! the gang's [`gang::Rendezvous`] and reads the [`TaskHandle`].
//!
//! The stages:
//! - [`encode`]: a slice of text prompts to umT5 embeddings, as diffusers' WanPipeline
//!   makes them (only when `data.prompts` is text).
//! - [`capture`]: the teacher samples a shard of prompts; every block's input hidden state
//!   and timestep projection at the configured steps go to `cache/block-{b}/shard-{s}`,
//!   the final latents to `latents/shard-{s}` (the default fine-tuning data).
//! - [`distill`]: one (block, rate): trains that block's feature maps on its cache.
//! - [`finetune`]: the whole student, data-parallel over the gang.
//! - [`export`]: the student folder and report.json (its FLOPs and probe pure functions).
//! - [`evaluate`]: teacher agreement on held-out prompts.
//!
//! What they share:
//! - [`input`]: the typed stage input; [`task`]: the handle, the output, the errors.
//! - [`training`]: the training loop distill and finetune both run (resume, stop, non-finite
//!   loss, progress, checkpoints); [`trainer`]: parameters, fp32 masters and AdamW.
//! - [`cache`]: the block cache (held-out split, training order, prefetching reader).
//! - [`model_inputs`]: the teacher, the student, the prompt embeddings.
//! - [`pipeline`]: where the teacher's models are (a transformer or a pipeline folder);
//!   [`prompt_file`]: text prompts as users write them (.txt, .jsonl).
//! - [`folders`]: folders between the store and the worker's disk.
//! - [`seeds`]: seeds, the one shuffle, LibTorch's generator under a lock.
//! - [`gang`]: a gang member's rendezvous and collective.

pub mod cache;
pub mod capture;
pub mod distill;
pub mod encode;
pub mod evaluate;
pub mod export;
pub mod finetune;
pub mod folders;
pub mod gang;
pub mod input;
pub mod model_inputs;
pub mod pipeline;
pub mod prompt_file;
pub mod seeds;
pub mod task;
pub mod trainer;
pub mod training;

use crate::storage::{Links, Storage, StorageError};
pub use gang::Gang;
pub use input::{CaptureShard, DependencyResult, DistillPair, StageInput, StageParams};
use std::path::PathBuf;
use std::sync::Arc;
use surgery_core::layout;
pub use task::{StopReason, TaskError, TaskHandle, TaskOutput};
use tch::Device;

/// Everything a stage executor gets.
pub struct TaskContext {
    pub input: StageInput,
    pub device: Device,
    pub handle: Arc<TaskHandle>,
    /// For the async storage and RPC calls a synchronous stage makes.
    pub runtime: tokio::runtime::Handle,
    pub cache_dir: PathBuf,
    /// Set for gang tasks (finetune with more than one worker).
    pub gang: Option<Gang>,
}

impl TaskContext {
    /// The job's folder in object storage (`{object_store_url}/jobs/{job}`). A forked
    /// job's reused outputs are read where the job that ran them wrote them.
    pub fn job_storage(&self) -> Result<Storage, TaskError> {
        let storage = Storage::from_url(&self.input.job_root).map_err(TaskError::retryable)?;
        let roots = self
            .input
            .reused_roots
            .iter()
            .map(|(task, root)| Ok((task.clone(), Storage::from_url(root)?)))
            .collect::<Result<_, StorageError>>()
            .map_err(TaskError::retryable)?;
        Ok(storage.with_links(Links::new(layout::producer, roots)))
    }

    /// Runs an async call (storage, RPC) to completion from the stage's thread.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }
}

/// Runs the task's stage.
pub fn run(ctx: &TaskContext) -> Result<TaskOutput, TaskError> {
    match ctx.input.params {
        StageParams::Encode(shard) => encode::run(ctx, shard),
        StageParams::Capture(shard) => capture::run(ctx, shard),
        StageParams::Distill(pair) => distill::run(ctx, pair),
        StageParams::Finetune => finetune::run(ctx),
        StageParams::Export => export::run(ctx),
        StageParams::Evaluate => evaluate::run(ctx),
    }
}
