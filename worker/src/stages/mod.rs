//! Stage executors: what a worker does with a leased task of each stage (DESIGN.md's job
//! graph; select runs in the coordinator). Each is a synchronous function of a
//! [`TaskContext`] that returns the task's result or a classified [`TaskError`], checks
//! for a stop request at safe points, and keeps everything it needs to resume in object
//! storage.
//!
//! - [`capture`]: the teacher samples a shard of prompts; every block's input hidden state
//!   and timestep projection at the configured steps go to `cache/block-{b}/shard-{s}`,
//!   the final latents to `latents/shard-{s}` (the default fine-tuning data).
//! - [`distill`]: one (block, rate): trains that block's feature maps on its cache.
//! - [`finetune`]: the whole student, data-parallel over the gang.
//! - [`export`]: the student folder and report.json.
//! - [`evaluate`]: teacher agreement on held-out prompts.

pub mod capture;
pub mod data;
pub mod distill;
pub mod evaluate;
pub mod export;
pub mod finetune;
pub mod gang;
pub mod task;
pub mod trainer;

use crate::storage::Storage;
pub use gang::Gang;
use std::path::PathBuf;
use std::sync::Arc;
use surgery_core::spec::JobSpec;
use surgery_proto::v1 as pb;
pub use task::{StopReason, TaskError, TaskHandle, TaskOutput};
use tch::Device;

/// Everything a stage executor gets.
pub struct TaskContext {
    pub assignment: pb::TaskAssignment,
    pub device: Device,
    pub handle: Arc<TaskHandle>,
    /// For the async storage and RPC calls a synchronous stage makes.
    pub runtime: tokio::runtime::Handle,
    pub cache_dir: PathBuf,
    /// Set for gang tasks (finetune with more than one worker).
    pub gang: Option<Gang>,
}

impl TaskContext {
    pub fn spec(&self) -> Result<JobSpec, TaskError> {
        JobSpec::parse(&self.assignment.spec_yaml)
            .map_err(|e| TaskError::Fatal(format!("the job spec is invalid: {e}")))
    }

    /// The job's folder in object storage (`{object_store_url}/jobs/{job}`).
    pub fn job_storage(&self) -> Result<Storage, TaskError> {
        Storage::from_url(&self.assignment.job_root_url).map_err(TaskError::retryable)
    }

    /// The task's id within its job (`distill/block-03/rate-4`).
    pub fn task_name(&self) -> &str {
        self.assignment
            .task_id
            .split_once(':')
            .map_or(self.assignment.task_id.as_str(), |(_, t)| t)
    }

    pub fn params(&self) -> Option<&pb::task_params::Kind> {
        self.assignment.params.as_ref().and_then(|p| p.kind.as_ref())
    }

    /// Runs an async call (storage, RPC) to completion from the stage's thread.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }
}

/// Runs the task's stage.
pub fn run(ctx: &TaskContext) -> Result<TaskOutput, TaskError> {
    match pb::Stage::try_from(ctx.assignment.stage) {
        Ok(pb::Stage::Capture) => capture::run(ctx),
        Ok(pb::Stage::Distill) => distill::run(ctx),
        Ok(pb::Stage::Finetune) => finetune::run(ctx),
        Ok(pb::Stage::Export) => export::run(ctx),
        Ok(pb::Stage::Evaluate) => evaluate::run(ctx),
        other => Err(TaskError::Fatal(format!(
            "this worker does not run stage {other:?} (select runs in the coordinator)"
        ))),
    }
}
