//! The job spec: one YAML document (with `version: 1`) that describes a whole Attention
//! Surgery run (METHOD.md): the teacher, the prompt data, the surgery settings, every
//! stage's hyper-parameters, resources, checkpoints and retries.
//!
//! [`JobSpec::parse`] is the only way in: it rejects unknown fields, wrong types and
//! out-of-range or inconsistent values, each as a [`FieldError`] with the field's path and
//! its line in the YAML, so `surgeryctl validate` and the coordinator say the same thing.

mod defaults;
mod locate;
mod parse;
mod validate;

pub use parse::{FieldError, SpecError};

pub use crate::cost::LatentCodec;
use crate::cost::{FeatureMapShape, ModelShape};
use crate::rate::Rate;
use serde::{Deserialize, Serialize};

/// The spec versions this build understands.
pub const SUPPORTED_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Spec format version; only [`SUPPORTED_VERSION`].
    pub version: u32,
    /// Lower-case letters, digits and '-', at most 63 characters.
    pub name: String,
    /// Higher runs first; FIFO among equal priorities. -1000..=1000.
    #[serde(default)]
    pub priority: i32,
    pub teacher: TeacherSpec,
    pub data: DataSpec,
    /// Pixel size of the generated videos and the codec that makes them latents.
    pub video: VideoSpec,
    #[serde(default)]
    pub sampler: SamplerSpec,
    #[serde(default)]
    pub surgery: SurgerySpec,
    #[serde(default)]
    pub stages: StagesSpec,
    #[serde(default)]
    pub resources: ResourcesSpec,
    #[serde(default)]
    pub checkpoint: CheckpointSpec,
    #[serde(default)]
    pub retry: RetrySpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherSpec {
    /// Object-store URL (or local path) of a diffusers-format transformer folder
    /// (config.json plus safetensors, single file or sharded with its index), or of a
    /// diffusers pipeline folder (model_index.json with transformer/, text_encoder/,
    /// tokenizer/ and vae/), where the worker finds the other models.
    pub url: String,
    /// The umT5 text encoder's folder (transformers' UMT5EncoderModel); default: the
    /// pipeline's `text_encoder/`. Needed when `data.prompts` is text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_encoder: Option<String>,
    /// The folder holding the encoder's tokenizer.json; default: the pipeline's `tokenizer/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<String>,
    /// The Wan VAE's folder (diffusers' AutoencoderKLWan), for videos; default: the
    /// pipeline's `vae/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vae: Option<String>,
    /// A known architecture; exactly one of `preset` and `shape`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<Preset>,
    /// The architecture spelled out (must match the model's config.json).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<ModelShape>,
    #[serde(default)]
    pub dtype: Dtype,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Preset {
    #[serde(rename = "wan2.1-t2v-1.3b")]
    Wan21T2v1_3b,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    #[default]
    Bf16,
    Fp32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// Object-store URL of the prompts, by its extension (see [`PromptSource`]): `.txt`
    /// (one prompt per line), `.jsonl` (`{"prompt": ..., "negative_prompt": ...}` per
    /// line), both encoded by the job's encode stage; anything else is a safetensors file
    /// holding `prompt_embeds` [prompts, text_len, text_dim] (and optionally
    /// `negative_embeds` [1 or prompts, text_len, text_dim] for classifier-free guidance).
    pub prompts: String,
    /// The negative prompt of text prompts without their own (diffusers' default: empty).
    #[serde(default)]
    pub negative_prompt: String,
    /// Prompts the teacher samples in the capture stage (the first ones of the file).
    pub train_prompts: u32,
    /// Prompts after the training ones, kept for evaluation.
    #[serde(default)]
    pub heldout_prompts: u32,
    /// Prompts per capture task.
    #[serde(default = "defaults::prompts_per_shard")]
    pub prompts_per_shard: u32,
    /// Fine-tuning data: `capture` (the teacher's own final latents from the capture
    /// stage) or an object-store URL of latent shards.
    #[serde(default = "defaults::finetune_data")]
    pub finetune_data: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VideoSpec {
    pub frames: u32,
    pub height: u32,
    pub width: u32,
    /// `wan_vae` (the default): latents are (frames-1)/4+1 x height/8 x width/8.
    /// `space_to_depth` (the quality testbed): frames x height/4 x width/4 with 48 channels,
    /// so the teacher's `in_channels` and `out_channels` must be 48.
    #[serde(default)]
    pub latent_codec: LatentCodec,
}

impl VideoSpec {
    /// `HxWxF` in pixels and frames (`480x832x81`): how logs, reports and `surgeryctl`
    /// name a video size.
    pub fn size(&self) -> String {
        format!("{}x{}x{}", self.height, self.width, self.frames)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerSpec {
    /// Denoising steps (flow-matching Euler).
    #[serde(default = "defaults::sampler_steps")]
    pub steps: u32,
    /// Timestep shift: sigma' = shift sigma / (1 + (shift - 1) sigma).
    #[serde(default = "defaults::shift")]
    pub shift: f64,
    /// Classifier-free guidance scale; 1 turns guidance off.
    #[serde(default = "defaults::guidance")]
    pub guidance: f64,
    #[serde(default)]
    pub seed: u64,
    /// `unipc` (the Wan pipeline's default) or `euler`.
    #[serde(default)]
    pub scheduler: SchedulerKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchedulerKind {
    #[default]
    Unipc,
    Euler,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SurgerySpec {
    /// `hybrid` (softmax anchors + linear rest) or `linear` (only rate `linear`).
    #[serde(default)]
    pub attention: AttentionKind,
    /// Candidate rates to distill for the knapsack: integers >= 2 or `linear`.
    #[serde(default = "defaults::rates")]
    pub rates: Vec<Rate>,
    #[serde(default)]
    pub anchor_pattern: AnchorPattern,
    #[serde(default)]
    pub feature_map: FeatureMapSpec,
    #[serde(default)]
    pub selection: SelectionSpec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionKind {
    #[default]
    Hybrid,
    Linear,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnchorPattern {
    /// Anchor when flattened index i mod R == 0 (the paper's rule).
    #[default]
    Strided,
    /// Anchor when (f + h + w) mod R == 0 (no vertical stripes when width % R == 0).
    Diagonal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureMapSpec {
    /// Hidden width of the per-head MLP psi (d -> hidden -> features).
    #[serde(default = "defaults::fmap_width")]
    pub hidden: u32,
    /// Output width D' of phi.
    #[serde(default = "defaults::fmap_width")]
    pub features: u32,
    /// P: chunk p of psi's output is raised to the p-th power.
    #[serde(default = "defaults::chunks")]
    pub chunks: u32,
    /// Added to the shared normaliser's denominator.
    #[serde(default = "defaults::fmap_eps")]
    pub eps: f64,
}

impl FeatureMapSpec {
    pub fn shape(&self) -> FeatureMapShape {
        FeatureMapShape {
            hidden: self.hidden,
            features: self.features,
        }
    }
}

/// How the select stage chooses each block's rate (METHOD.md section 3): exactly one of
/// the three rules. (A struct of options rather than an enum: serde_yaml spells enums as
/// YAML tags, which users do not write.)
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectionSpec {
    /// Multiple-choice knapsack: least total distillation error within a budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knapsack: Option<KnapsackSpec>,
    /// An explicit layout: these blocks at these rates, the rest softmax.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Vec<LayoutEntry>>,
    /// The paper's baseline: the `blocks` lowest-error blocks at one rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub homogeneous: Option<HomogeneousSpec>,
}

/// The rule a [`SelectionSpec`] names; knapsack with its defaults when none is set.
#[derive(Debug, Clone, PartialEq)]
pub enum SelectionRule {
    Knapsack(KnapsackSpec),
    Layout(Vec<LayoutEntry>),
    Homogeneous(HomogeneousSpec),
}

impl SelectionSpec {
    pub fn rule(&self) -> SelectionRule {
        if let Some(layout) = &self.layout {
            SelectionRule::Layout(layout.clone())
        } else if let Some(homogeneous) = &self.homogeneous {
            SelectionRule::Homogeneous(homogeneous.clone())
        } else {
            SelectionRule::Knapsack(self.knapsack.clone().unwrap_or_default())
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnapsackSpec {
    /// Fraction of the all-softmax attention cost, in (0, 1].
    #[serde(default = "defaults::budget")]
    pub budget: f64,
    #[serde(default)]
    pub cost: CostSource,
}

impl Default for KnapsackSpec {
    fn default() -> Self {
        KnapsackSpec {
            budget: defaults::budget(),
            cost: CostSource::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HomogeneousSpec {
    pub rate: Rate,
    pub blocks: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CostSource {
    /// The FLOP model of METHOD.md.
    Flops,
    /// Attention time measured on the worker's GPU during distillation.
    #[default]
    Measured,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayoutEntry {
    pub blocks: Vec<u32>,
    pub rate: Rate,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StagesSpec {
    #[serde(default)]
    pub capture: CaptureSpec,
    #[serde(default)]
    pub distill: DistillSpec,
    #[serde(default)]
    pub finetune: FinetuneSpec,
    #[serde(default)]
    pub evaluate: EvaluateSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureSpec {
    /// Denoising step indices (0-based, < sampler.steps) whose block inputs are cached.
    #[serde(default = "defaults::capture_steps")]
    pub steps: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillSpec {
    /// Optimizer steps per (block, rate) task; 0 keeps phi at its initialisation (the
    /// ablation "without distillation": the held-out error is still measured).
    #[serde(default = "defaults::distill_steps")]
    pub steps: u32,
    /// Cached samples per loaded batch.
    #[serde(default = "defaults::distill_batch")]
    pub batch: u32,
    /// U: updates taken on each loaded batch.
    #[serde(default = "defaults::updates_per_batch")]
    pub updates_per_batch: u32,
    #[serde(default = "defaults::distill_lr")]
    pub lr: f64,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default)]
    pub loss: DistillLoss,
    /// Fraction of cached samples held out to measure e_br.
    #[serde(default = "defaults::heldout_fraction")]
    pub heldout_fraction: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DistillLoss {
    /// mean |y - y_hat| (the paper's default).
    #[default]
    ValueL1,
    /// log(1 + ||exp(q k^T) - phi_q phi_k^T||^2).
    AttentionScore,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneSpec {
    /// Optimizer steps of the whole student; 0 exports the distilled student as it is
    /// (the ablation "without fine-tuning").
    #[serde(default = "defaults::finetune_steps")]
    pub steps: u32,
    /// Samples per optimizer step over the whole gang; a multiple of the gang size.
    #[serde(default = "defaults::global_batch")]
    pub global_batch: u32,
    #[serde(default = "defaults::finetune_lr")]
    pub lr: f64,
    #[serde(default = "defaults::weight_decay")]
    pub weight_decay: f64,
    /// Clip the global gradient norm to this; 0 turns clipping off.
    #[serde(default = "defaults::grad_clip")]
    pub grad_clip: f64,
    /// Weight of the optional MSE to the teacher's velocity; 0 turns it off.
    #[serde(default)]
    pub teacher_loss_weight: f64,
    /// Recompute each block in the backward pass.
    #[serde(default = "defaults::yes")]
    pub activation_checkpointing: bool,
    /// Keep an fp32 master copy of bf16 weights.
    #[serde(default = "defaults::yes")]
    pub fp32_master_weights: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateSpec {
    /// Sampling steps for the teacher-agreement check on held-out prompts.
    #[serde(default = "defaults::sampler_steps")]
    pub steps: u32,
    /// Held-out prompts rendered as videos, teacher and student side by side (0: none).
    #[serde(default = "defaults::previews")]
    pub previews: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesSpec {
    #[serde(default)]
    pub device: Device,
    /// Slots with less GPU memory are not used (0: any).
    #[serde(default)]
    pub min_gpu_memory_gib: u32,
    /// Workers (one GPU each) in the fine-tuning gang.
    #[serde(default = "defaults::one")]
    pub finetune_workers: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Cuda,
    Cpu,
}

impl Device {
    pub fn as_str(&self) -> &'static str {
        match self {
            Device::Cuda => "cuda",
            Device::Cpu => "cpu",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSpec {
    /// Training steps between checkpoints (distill and finetune).
    #[serde(default = "defaults::checkpoint_every")]
    pub every_steps: u32,
    /// Complete checkpoints kept per task; older ones are deleted.
    #[serde(default = "defaults::keep_last")]
    pub keep_last: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Counted (retryable) failures a task may have before it, and the job, fail.
    #[serde(default = "defaults::max_retries")]
    pub max_retries: u32,
    /// Preemptions and lost leases a task may have; not counted as failures, but a
    /// ceiling keeps a task that kills its worker from cycling for ever.
    #[serde(default = "defaults::max_interruptions")]
    pub max_interruptions: u32,
}

impl JobSpec {
    /// Parses and validates a spec. Every problem found is returned at once, each with
    /// its field path and line.
    pub fn parse(yaml: &str) -> Result<JobSpec, SpecError> {
        let spec = parse::deserialize(yaml)?;
        validate::validate(&spec, yaml)?;
        Ok(spec)
    }

    /// The teacher's architecture, from the preset or the spelled-out shape.
    pub fn model_shape(&self) -> ModelShape {
        match (&self.teacher.shape, self.teacher.preset) {
            (Some(shape), _) => *shape,
            (None, Some(Preset::Wan21T2v1_3b)) | (None, None) => ModelShape::wan21_1_3b(),
        }
    }

    /// Latent (frames, height, width) of the configured video size under its codec.
    pub fn latent_dims(&self) -> (u32, u32, u32) {
        self.video
            .latent_codec
            .latent_dims(self.video.frames, self.video.height, self.video.width)
    }

    /// Tokens per sample after patchifying the latent video.
    pub fn tokens(&self) -> u64 {
        let (f, h, w) = self.latent_dims();
        crate::cost::tokens(&self.model_shape(), f, h, w)
    }

    /// The (block, rate) pairs the distill stage must train for the selection rule.
    pub fn distill_pairs(&self) -> Vec<(u32, Rate)> {
        let layers = self.model_shape().layers;
        match self.surgery.selection.rule() {
            SelectionRule::Knapsack(_) => (0..layers)
                .flat_map(|block| self.surgery.rates.iter().map(move |rate| (block, *rate)))
                .collect(),
            SelectionRule::Homogeneous(h) => (0..layers).map(|block| (block, h.rate)).collect(),
            SelectionRule::Layout(entries) => {
                let mut pairs: Vec<(u32, Rate)> = entries
                    .iter()
                    .filter(|entry| entry.rate != Rate::Softmax)
                    .flat_map(|entry| entry.blocks.iter().map(move |block| (*block, entry.rate)))
                    .collect();
                pairs.sort_by_key(|(block, rate)| (*block, rate.code()));
                pairs
            }
        }
    }

    /// What `data.prompts` holds.
    pub fn prompt_source(&self) -> PromptSource {
        PromptSource::of(&self.data.prompts)
    }

    /// The encode tasks' slices of every prompt the job uses (training and held-out),
    /// `prompts_per_shard` each, so encode shard s holds capture shard s's prompts; none
    /// when the prompts are embeddings already.
    pub fn encode_shard_list(&self) -> Vec<CaptureShard> {
        if !self.prompt_source().needs_encoding() {
            return Vec::new();
        }
        let total = self.data.train_prompts + self.data.heldout_prompts;
        let per_shard = self.data.prompts_per_shard.max(1);
        (0..total.div_ceil(per_shard))
            .map(|shard| {
                let first_prompt = shard * per_shard;
                CaptureShard {
                    shard,
                    first_prompt,
                    num_prompts: per_shard.min(total - first_prompt),
                }
            })
            .collect()
    }

    /// Number of capture tasks.
    pub fn capture_shards(&self) -> u32 {
        self.data.train_prompts.div_ceil(self.data.prompts_per_shard.max(1))
    }

    /// The capture tasks' slices of the training prompts, in order, covering each once.
    pub fn capture_shard_list(&self) -> Vec<CaptureShard> {
        let per_shard = self.data.prompts_per_shard;
        (0..self.capture_shards())
            .map(|shard| {
                let first_prompt = shard * per_shard;
                CaptureShard {
                    shard,
                    first_prompt,
                    num_prompts: per_shard.min(self.data.train_prompts - first_prompt),
                }
            })
            .collect()
    }
}

/// What `data.prompts` holds, told by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptSource {
    /// A safetensors file of precomputed embeddings.
    Embeddings,
    /// `.txt`: one prompt per line (blank lines skipped).
    Text,
    /// `.jsonl`: one JSON object per line with `prompt` and optionally `negative_prompt`.
    JsonLines,
}

impl PromptSource {
    pub fn of(url: &str) -> PromptSource {
        let lower = url.to_ascii_lowercase();
        if lower.ends_with(".txt") {
            PromptSource::Text
        } else if lower.ends_with(".jsonl") {
            PromptSource::JsonLines
        } else {
            PromptSource::Embeddings
        }
    }

    /// Text prompts need the encode stage (tokenizer and text encoder on the workers).
    pub fn needs_encoding(self) -> bool {
        self != PromptSource::Embeddings
    }
}

/// One capture (or encode) task's slice of the prompts (the coordinator stores it, the
/// worker reads it from the wire, surgeryctl shows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureShard {
    pub shard: u32,
    pub first_prompt: u32,
    pub num_prompts: u32,
}

#[cfg(test)]
mod tests;
