//! What a stage is asked to do, in domain terms: one [`StageInput`] per assignment, built
//! by the agent (the one place on the worker that reads the wire), so stages never see
//! prost types, spec YAML or rate codes.

use std::collections::BTreeMap;
use surgery_core::ids::TaskRef;
use surgery_core::rate::Rate;
use surgery_core::spec::JobSpec;

/// One leased task, parsed once.
#[derive(Debug, Clone)]
pub struct StageInput {
    /// `job:task`.
    pub task: TaskRef,
    pub attempt: u32,
    pub spec: JobSpec,
    pub params: StageParams,
    /// The selected layout, `(block, rate)` per block (finetune, export, evaluate; empty
    /// before select has run).
    pub layout: Vec<(u32, Rate)>,
    /// Results of the tasks this one depends on, by task name (`finetune`).
    pub dependencies: BTreeMap<String, DependencyResult>,
    /// Object-store URL of the job's folder (`{store}/jobs/{job}`): every path of
    /// `surgery_core::layout` is relative to it.
    pub job_root: String,
    /// A forked job's reused tasks (by name) and the URL of the job root holding their
    /// outputs, which this task reads there.
    pub reused_roots: BTreeMap<String, String>,
    /// This member's rank in its gang (0 outside one).
    pub rank: u32,
    /// Members of the gang (1, or 0 from an older coordinator, outside one).
    pub gang_size: u32,
}

/// The stage and what it works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageParams {
    /// Text prompts to embeddings, a slice of the prompts.
    Encode(CaptureShard),
    Capture(CaptureShard),
    Distill(DistillPair),
    Finetune,
    Export,
    Evaluate,
}

/// A capture (or encode) task: prompts `first_prompt .. first_prompt + num_prompts` make
/// shard `shard`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureShard {
    pub shard: u32,
    pub first_prompt: u32,
    pub num_prompts: u32,
}

/// A distill task: one block at one rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DistillPair {
    pub block: u32,
    pub rate: Rate,
}

/// What a finished task this one depends on reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DependencyResult {
    pub metrics: BTreeMap<String, f64>,
    /// Object-store paths relative to the job root.
    pub artifacts: Vec<String>,
}
