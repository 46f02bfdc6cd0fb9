//! The stage-1 cache of block inputs, as distillation reads it: which samples of a block's
//! shards train and which are held out, a seeded shard-blocked training order, and a
//! streaming reader that keeps one shard in use and loads the next in the background,
//! already on the training device.
//!
//! Cache shard `cache/block-{b}/shard-{s}.safetensors` (written by capture):
//! `hidden` [S, N, dim] and `timestep_proj` [S, 6, dim] in the teacher's dtype, `prompt`
//! \[S\] and `step` \[S\] (i64), S = prompts of the shard x capture steps, in (prompt, step)
//! order.

use super::seeds::shuffle;
use super::task::TaskError;
use crate::sampler::SeededRng;
use crate::storage::{Storage, tensors};
use std::collections::BTreeMap;
use std::sync::mpsc;
use surgery_core::layout;
use surgery_core::spec::JobSpec;
use tch::Tensor;

/// The shards of one block's cache, and which samples are held out.
pub struct BlockCache {
    storage: Storage,
    paths: Vec<String>,
    /// Samples per shard, from the plan (prompts x capture steps).
    sizes: Vec<usize>,
    /// Sample g (global index in shard order) is held out when g % heldout_every == 0.
    heldout_every: usize,
}

/// One loaded shard: a block's inputs for its samples.
pub struct Shard {
    pub hidden: Tensor,
    pub timestep_proj: Tensor,
}

impl Shard {
    /// Sample `index`'s (hidden, timestep_proj) rows, each with a batch dimension of 1.
    pub fn rows(&self, index: usize) -> (Tensor, Tensor) {
        let i = index as i64;
        (self.hidden.narrow(0, i, 1), self.timestep_proj.narrow(0, i, 1))
    }
}

impl BlockCache {
    /// Block `block`'s cache in the job's store `job`, shaped as `spec` plans it.
    pub fn new(job: &Storage, spec: &JobSpec, block: u32) -> BlockCache {
        let steps = spec.stages.capture.steps.len();
        let per_shard = spec.data.prompts_per_shard as usize;
        let shards = spec.capture_shards() as usize;
        let train = spec.data.train_prompts as usize;
        let sizes = (0..shards)
            .map(|s| per_shard.min(train - s * per_shard) * steps)
            .collect();
        let fraction = spec.stages.distill.heldout_fraction;
        BlockCache::with_sizes(job, block, sizes, (1.0 / fraction).round().max(2.0) as usize)
    }

    /// Block `block`'s cache with `sizes[s]` samples in shard s, every `heldout_every`-th
    /// sample (in shard order, from the first) held out.
    pub fn with_sizes(job: &Storage, block: u32, sizes: Vec<usize>, heldout_every: usize) -> BlockCache {
        BlockCache {
            storage: job.clone(),
            paths: (0..sizes.len() as u32).map(|s| layout::cache_shard(block, s)).collect(),
            sizes,
            heldout_every: heldout_every.max(1),
        }
    }

    pub fn shards(&self) -> usize {
        self.paths.len()
    }

    /// (shard, index) of every training sample, in a seeded order that visits shards
    /// one at a time (so a stream needs one shard in memory and the next loading).
    pub fn train_order(&self, seed: u64) -> Vec<(usize, usize)> {
        let mut rng = SeededRng::new(seed);
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

    /// Loads shard `shard` on the CPU, from the calling thread.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> BlockCache {
        let store = Storage::from_url("memory://").unwrap();
        BlockCache::with_sizes(&store, 3, vec![4, 4, 2], 3)
    }

    #[test]
    fn every_sample_trains_or_is_held_out_once() {
        let cache = cache();
        assert_eq!(cache.heldout(), vec![(0, 0), (0, 3), (1, 2), (2, 1)]);
        let order = cache.train_order(9);
        assert_eq!(order, cache.train_order(9));
        assert_eq!(order.len() + cache.heldout().len(), 10);
        let mut all: Vec<(usize, usize)> = order.iter().chain(&cache.heldout()).copied().collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 10);
        // Shard-blocked: once the order leaves a shard it never comes back.
        let mut visited: Vec<usize> = order.iter().map(|(s, _)| *s).collect();
        visited.dedup();
        assert_eq!(visited.len(), cache.shards());
    }
}
