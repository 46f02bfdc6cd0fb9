//! Inputs the stages share: the teacher (downloaded once per worker into its cache), the
//! prompt embeddings, and the stage-1 cache of block inputs with its shard format and
//! its streaming reader (one shard in use, the next one loading in the background).
//!
//! Cache shard `cache/block-{b}/shard-{s}.safetensors`: `hidden` [S, N, dim] and
//! `timestep_proj` [S, 6, dim] in the teacher's dtype, `prompt` [S] and `step` [S] (i64),
//! S = prompts of the shard x capture steps, in (prompt, step) order.
//! Latents shard `latents/shard-{s}.safetensors`: `latents` [n, C, F, H, W] (f32) and
//! `prompt` [n] (i64).

use super::TaskContext;
use crate::model::{WanTransformer, WeightsError, weights};
use crate::stages::task::TaskError;
use crate::storage::{Storage, tensors};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc;
use surgery_core::layout;
use surgery_core::spec::{Dtype, JobSpec};
use tch::nn::VarStore;
use tch::{Kind, Tensor};

pub fn kind_of(dtype: Dtype) -> Kind {
    match dtype {
        Dtype::Bf16 => Kind::BFloat16,
        Dtype::Fp32 => Kind::Float,
    }
}

/// A missing or malformed model is the user's to fix (fatal); a failed read is retried.
fn weights_error(err: WeightsError) -> TaskError {
    match err {
        WeightsError::Io { .. } => TaskError::retryable(err),
        other => TaskError::fatal(other),
    }
}

/// `(folder URL, file name)` of a file URL.
fn split_url(url: &str) -> (&str, &str) {
    match url.rsplit_once('/') {
        Some((dir, file)) if !dir.ends_with(':') && !dir.ends_with("/") => (dir, file),
        _ => (".", url),
    }
}

/// Reads one object given its full URL.
pub fn read_url(ctx: &TaskContext, url: &str) -> Result<bytes::Bytes, TaskError> {
    let (dir, file) = split_url(url);
    let storage = Storage::from_url(dir).map_err(TaskError::fatal)?;
    ctx.block_on(storage.get(file)).map_err(TaskError::retryable)
}

/// A local folder holding the model at `url`: the folder itself for a local URL, else a
/// copy in the worker's cache (files already there with the right size are kept).
pub fn local_model_dir(ctx: &TaskContext, url: &str) -> Result<PathBuf, TaskError> {
    let storage = Storage::from_url(url).map_err(TaskError::fatal)?;
    if let Some(path) = storage.local_root() {
        return Ok(path);
    }
    let name: String = url
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let local = ctx.cache_dir.join("models").join(name);
    ctx.block_on(storage.download_dir("", &local))
        .map_err(TaskError::retryable)?;
    Ok(local)
}

/// The teacher on the task's device in the spec's dtype, checked against the spec.
pub fn teacher(ctx: &TaskContext, spec: &JobSpec) -> Result<(VarStore, WanTransformer), TaskError> {
    let dir = local_model_dir(ctx, &spec.teacher.url)?;
    let (vs, model) = weights::load(&dir, ctx.device, kind_of(spec.teacher.dtype)).map_err(weights_error)?;
    check_shape(spec, &model)?;
    Ok((vs, model))
}

/// The teacher folder's config.json must describe the architecture the spec declares
/// (the planner and cost model used the spec's).
pub fn check_shape(spec: &JobSpec, model: &WanTransformer) -> Result<(), TaskError> {
    let found = model.config().shape();
    let want = spec.model_shape();
    let pairs = [
        ("layers", found.layers, want.layers),
        ("heads", found.heads, want.heads),
        ("head_dim", found.head_dim, want.head_dim),
        ("ffn_dim", found.ffn_dim, want.ffn_dim),
        ("text_dim", found.text_dim, want.text_dim),
        ("in_channels", found.in_channels, want.in_channels),
        ("out_channels", found.out_channels, want.out_channels),
        ("freq_dim", found.freq_dim, want.freq_dim),
    ];
    for (name, found, want) in pairs {
        if found != want {
            return Err(TaskError::Fatal(format!(
                "the teacher at {} has {name} = {found} but the spec's teacher shape says {want}",
                spec.teacher.url
            )));
        }
    }
    if found.patch != want.patch {
        return Err(TaskError::Fatal(format!(
            "the teacher's patch_size is {:?} but the spec says {:?}",
            found.patch, want.patch
        )));
    }
    Ok(())
}

/// The prompt embeddings: `prompt_embeds` [P, L, text_dim] and, for guidance > 1,
/// `negative_embeds` [1, L, text_dim], on the CPU.
pub struct Prompts {
    pub embeds: Tensor,
    pub negative: Option<Tensor>,
}

pub fn prompts(ctx: &TaskContext, spec: &JobSpec) -> Result<Prompts, TaskError> {
    let bytes = read_url(ctx, &spec.data.prompts)?;
    let mut map = tensors::from_bytes(&bytes)
        .map_err(|e| TaskError::Fatal(format!("{} is not a safetensors file: {e}", spec.data.prompts)))?;
    let embeds = map.remove("prompt_embeds").ok_or_else(|| {
        TaskError::Fatal(format!(
            "{} has no `prompt_embeds` tensor [prompts, L, text_dim]",
            spec.data.prompts
        ))
    })?;
    let needed = i64::from(spec.data.train_prompts + spec.data.heldout_prompts);
    let shape = spec.model_shape();
    if embeds.dim() != 3 || embeds.size()[0] < needed || embeds.size()[2] != i64::from(shape.text_dim) {
        return Err(TaskError::Fatal(format!(
            "{}: `prompt_embeds` is {:?}; the spec needs at least {needed} prompts (train + held-out) of width {}",
            spec.data.prompts,
            embeds.size(),
            shape.text_dim
        )));
    }
    let negative = map.remove("negative_embeds");
    if spec.sampler.guidance > 1.0 && negative.is_none() {
        return Err(TaskError::Fatal(format!(
            "{} has no `negative_embeds` [1, L, text_dim], which guidance {} needs",
            spec.data.prompts, spec.sampler.guidance
        )));
    }
    Ok(Prompts {
        embeds: embeds.to_kind(Kind::Float),
        negative: negative.map(|n| n.to_kind(Kind::Float)),
    })
}

/// The shards of one block's cache, and which samples are held out.
pub struct BlockCache {
    storage: Storage,
    paths: Vec<String>,
    /// Samples per shard, from the plan (prompts x capture steps).
    sizes: Vec<usize>,
    /// Sample g (global index in shard order) is held out when g % heldout_every == 0.
    heldout_every: usize,
}

pub struct Shard {
    pub hidden: Tensor,
    pub timestep_proj: Tensor,
}

impl BlockCache {
    pub fn new(job: &Storage, spec: &JobSpec, block: u32) -> BlockCache {
        let steps = spec.stages.capture.steps.len();
        let per_shard = spec.data.prompts_per_shard as usize;
        let shards = spec.capture_shards() as usize;
        let train = spec.data.train_prompts as usize;
        let sizes = (0..shards)
            .map(|s| per_shard.min(train - s * per_shard) * steps)
            .collect();
        let fraction = spec.stages.distill.heldout_fraction;
        BlockCache {
            storage: job.clone(),
            paths: (0..shards as u32).map(|s| layout::cache_shard(block, s)).collect(),
            sizes,
            heldout_every: (1.0 / fraction).round().max(2.0) as usize,
        }
    }

    pub fn shards(&self) -> usize {
        self.paths.len()
    }

    /// (shard, index) of every training sample, in a seeded order that visits shards
    /// one at a time (so a stream needs one shard in memory and the next loading).
    pub fn train_order(&self, seed: u64) -> Vec<(usize, usize)> {
        let mut rng = crate::sampler::SeededRng::new(seed);
        let mut shard_order: Vec<usize> = (0..self.shards()).collect();
        shuffle(&mut shard_order, &mut rng);
        let mut order = Vec::new();
        for s in shard_order {
            let mut samples: Vec<usize> = self.samples(s).filter(|i| !self.is_heldout(s, *i)).collect();
            shuffle(&mut samples, &mut rng);
            order.extend(samples.into_iter().map(|i| (s, i)));
        }
        order
    }

    /// (shard, index) of every held-out sample, in shard order.
    pub fn heldout(&self) -> Vec<(usize, usize)> {
        (0..self.shards())
            .flat_map(|s| {
                self.samples(s)
                    .filter(move |i| self.is_heldout(s, *i))
                    .map(move |i| (s, i))
            })
            .collect()
    }

    fn samples(&self, shard: usize) -> std::ops::Range<usize> {
        0..self.sizes[shard]
    }

    fn is_heldout(&self, shard: usize, index: usize) -> bool {
        let global: usize = self.sizes[..shard].iter().sum::<usize>() + index;
        global.is_multiple_of(self.heldout_every)
    }

    pub fn load(&self, runtime: &tokio::runtime::Handle, shard: usize) -> Result<Shard, TaskError> {
        load_shard(&self.storage, runtime, &self.paths[shard])
    }

    /// Loads shards in the background, in the order they will be needed, and moves them to
    /// `device` there too, so the training thread finds each shard already on its device
    /// (two shards ahead at most).
    pub fn prefetch(&self, runtime: tokio::runtime::Handle, order: Vec<usize>, device: tch::Device) -> Prefetcher {
        let (tx, rx) = mpsc::sync_channel(2);
        let storage = self.storage.clone();
        let paths = self.paths.clone();
        std::thread::spawn(move || {
            for shard in order {
                // Through pinned host memory: a pageable copy stalls the GPU's stream several
                // times longer (measured: streamed distillation at 78% of resident without it).
                // (LibTorch warns that pin_memory's device argument is deprecated; tch's
                // binding always passes one. Only the large tensor goes this way.)
                let pinned = |t: Tensor| match device {
                    tch::Device::Cuda(_) => t.pin_memory(device).to_device_(device, t.kind(), true, false),
                    _ => t,
                };
                let loaded = load_shard(&storage, &runtime, &paths[shard]).map(|s| Shard {
                    hidden: pinned(s.hidden),
                    timestep_proj: s.timestep_proj.to_device(device),
                });
                if tx.send((shard, loaded)).is_err() {
                    return;
                }
            }
        });
        Prefetcher { rx, current: None }
    }
}

fn load_shard(storage: &Storage, runtime: &tokio::runtime::Handle, path: &str) -> Result<Shard, TaskError> {
    let bytes = runtime.block_on(storage.get(path)).map_err(TaskError::retryable)?;
    let mut map = tensors::from_bytes(&bytes).map_err(|e| TaskError::Retryable(format!("{path}: {e}")))?;
    let take = |map: &mut BTreeMap<String, Tensor>, name: &str| {
        map.remove(name)
            .ok_or_else(|| TaskError::Retryable(format!("{path} has no `{name}` tensor (an incomplete capture?)")))
    };
    Ok(Shard {
        hidden: take(&mut map, "hidden")?,
        timestep_proj: take(&mut map, "timestep_proj")?,
    })
}

/// One shard at a time from a background loader.
pub struct Prefetcher {
    rx: mpsc::Receiver<(usize, Result<Shard, TaskError>)>,
    current: Option<(usize, Shard)>,
}

impl Prefetcher {
    /// The loaded shard `shard` (which must be the next one in the order given, or the
    /// current one).
    pub fn get(&mut self, shard: usize) -> Result<&Shard, TaskError> {
        if self.current.as_ref().map(|(s, _)| *s) != Some(shard) {
            let (got, loaded) = self
                .rx
                .recv()
                .map_err(|_| TaskError::Retryable("the cache loader stopped".into()))?;
            if got != shard {
                return Err(TaskError::Fatal(format!(
                    "cache loader out of order: wanted shard {shard}, got {got}"
                )));
            }
            self.current = Some((got, loaded?));
        }
        Ok(&self.current.as_ref().expect("just set").1)
    }
}

fn shuffle<T>(items: &mut [T], rng: &mut crate::sampler::SeededRng) {
    for i in (1..items.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// Runs `init` with LibTorch's global generator seeded: parameter initialisation draws from
/// it, and a worker runs tasks on several threads, so the seed and the draws happen under
/// one lock - the same task initialises the same way whatever ran before it.
pub fn with_torch_seed<T>(seed: u64, init: impl FnOnce() -> T) -> T {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    tch::manual_seed(seed as i64);
    init()
}

/// A seed for (job seed, purpose, a, b): independent streams per task and use.
pub fn seed_for(job_seed: u64, purpose: u64, a: u64, b: u64) -> u64 {
    let mut rng = crate::sampler::SeededRng::new(job_seed ^ purpose.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let x = rng.next_u64() ^ a.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    crate::sampler::SeededRng::new(x ^ b.wrapping_mul(0x94D0_49BB_1331_11EB)).next_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_relative_paths() {
        assert_eq!(split_url("file:///a/b/p.safetensors"), ("file:///a/b", "p.safetensors"));
        assert_eq!(split_url("s3://bucket/p.safetensors"), ("s3://bucket", "p.safetensors"));
    }

    #[test]
    fn seeds_are_independent_and_stable() {
        assert_eq!(seed_for(7, 1, 2, 3), seed_for(7, 1, 2, 3));
        assert_ne!(seed_for(7, 1, 2, 3), seed_for(7, 1, 3, 2));
        assert_ne!(seed_for(7, 1, 2, 3), seed_for(8, 1, 2, 3));
    }
}
