//! Distill one (block, rate): train the block's feature maps phi_q, phi_k so the hybrid
//! attention reproduces the teacher's softmax attention on the block's cached inputs
//! (METHOD.md section 2). Everything else is frozen: q, k, v are recomputed from the
//! cached hidden state and modulation with the teacher's weights, and the teacher output
//! y = softmax attention(q, k, v) is the target. Each loaded batch serves U updates.
//!
//! Deterministic by construction - the sample order is a seeded function of (job seed,
//! block, rate) and the step - so a resumed run takes exactly the steps the uninterrupted
//! one would: a checkpoint holds phi, the optimizer's moments, the step and the loss curve,
//! nothing else. Output: `phi.safetensors` (the student's own tensor names), `result.json`
//! (e_br and the rest) and the loss curve, beside the checkpoints.

use super::cache::{BlockCache, Shard};
use super::folders::put_json;
use super::trainer::Trainer;
use super::training::{LoopSettings, LossCurve, Training, TrainingMeta};
use super::{DistillPair, TaskContext};
use super::{model_inputs, seeds};
use crate::attention::hybrid::{HybridAttention, HybridConfig};
use crate::attention::score_loss::attention_score_loss;
use crate::attention::softmax_attention;
use crate::runtime::median_ms;
use crate::stages::task::{TaskError, TaskOutput};
use crate::storage::tensors;
use crate::train::{Batch, TeacherBlock, value_distillation_loss};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use surgery_core::spec::DistillLoss;
use surgery_core::{layout, results};
use tch::Tensor;
use tch::nn::VarStore;

/// Purpose tag of this stage's random streams.
const SEED_PURPOSE: u64 = 0xD157;

/// The checkpoint's and result's meta data.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Meta {
    #[serde(flatten)]
    curve: LossCurve,
    untrained_heldout_error: f64,
}

impl TrainingMeta for Meta {
    fn step(&self) -> u64 {
        self.curve.step
    }

    fn record(&mut self, loss: f64) {
        self.curve.record(loss);
    }
}

/// The cached samples distillation trains on from step `first_step` to `total_steps`, in
/// order: each loaded batch of `batch` samples serves `updates` steps, and batch i holds
/// positions `i * batch ..` of a sequence of epochs, epoch e being `epoch_order(e)` (each
/// `epoch_len` > 0 samples long). The batches are `first_step / updates ..
/// ceil(total_steps / updates)`, so a resumed run's samples are the tail of a fresh run's.
pub fn sample_order<T: Copy>(
    first_step: u64,
    total_steps: u64,
    updates: u64,
    batch: u64,
    epoch_len: u64,
    epoch_order: impl Fn(u64) -> Vec<T>,
) -> Vec<T> {
    let first_batch = first_step / updates;
    let last_batch = total_steps.div_ceil(updates);
    let (from, to) = (first_batch * batch, last_batch * batch);
    let mut positions = Vec::with_capacity(to.saturating_sub(from) as usize);
    for epoch in from / epoch_len..=to.saturating_sub(1) / epoch_len {
        let order = epoch_order(epoch);
        let start = epoch * epoch_len;
        positions.extend((start.max(from)..(start + epoch_len).min(to)).map(|p| order[(p - start) as usize]));
    }
    positions
}

/// Mean L1 error of the hybrid output against the teacher's on the held-out samples.
fn heldout_error(
    ctx: &TaskContext,
    cache: &BlockCache,
    teacher: &TeacherBlock,
    hybrid: &HybridAttention,
    batch: usize,
) -> Result<f64, TaskError> {
    let heldout = cache.heldout();
    if heldout.is_empty() {
        return Err(TaskError::Fatal(
            "no held-out samples: raise stages.distill.heldout_fraction or the number of prompts".into(),
        ));
    }
    let mut total = 0.0;
    let mut count = 0usize;
    let mut loaded: Option<(usize, Shard)> = None;
    for chunk in heldout.chunks(batch.max(1)) {
        ctx.handle.check()?;
        let mut picked = Vec::new();
        for (s, i) in chunk {
            if loaded.as_ref().map(|(l, _)| *l) != Some(*s) {
                loaded = Some((*s, cache.load(&ctx.runtime, *s)?));
            }
            picked.push(loaded.as_ref().expect("loaded").1.rows(*i));
        }
        let b = teacher.batch(&picked);
        let err = tch::no_grad(|| value_distillation_loss(&b.target, &hybrid.forward(&b.q, &b.k, &b.v, teacher.grid)));
        total += err.double_value(&[]) * picked.len() as f64;
        count += picked.len();
    }
    Ok(total / count as f64)
}

pub fn run(ctx: &TaskContext, params: DistillPair) -> Result<TaskOutput, TaskError> {
    let spec = &ctx.input.spec;
    let block = params.block as usize;
    let rate = params.rate;
    let job = ctx.job_storage()?;
    let (_teacher_vs, teacher) = model_inputs::teacher(ctx, spec)?;
    let cfg = teacher.config().clone();
    let (lf, lh, lw) = spec.latent_dims();
    let grid = teacher.grid_of((i64::from(lf), i64::from(lh), i64::from(lw)));
    let rope = teacher.rope(grid);
    let target = TeacherBlock {
        model: &teacher,
        block,
        rope: &rope,
        grid,
        device: ctx.device,
    };

    // The feature maps, fp32 for the optimiser, named as the student names them.
    // Seeded so the untrained maps - and hence the whole run - repeat exactly.
    let vs = VarStore::new(ctx.device);
    let init_seed = seeds::seed_for(
        spec.sampler.seed,
        SEED_PURPOSE + 1,
        u64::from(params.block),
        u64::from(rate.code()),
    );
    let hybrid = seeds::with_torch_seed(init_seed, || {
        HybridAttention::new(
            &(vs.root() / "blocks" / block as i64 / "attn1"),
            HybridConfig::from_spec(
                &spec.surgery.feature_map,
                cfg.num_attention_heads,
                cfg.attention_head_dim,
                rate,
                spec.surgery.anchor_pattern,
            ),
        )
    });
    let distill = &spec.stages.distill;
    // fp32 parameters: no master copies, but the same step as fine-tuning.
    let trainer = Trainer::new(&vs, distill.lr, distill.weight_decay)?;
    let cache = BlockCache::new(&job, spec, params.block);
    let batch = distill.batch as usize;

    // Resume from the newest complete checkpoint, or start fresh.
    let dir = layout::distill_dir(params.block, rate);
    let mut training: Training<Meta> = Training::resume(ctx, &job, &dir, trainer)?;
    if !training.resumed() {
        training.meta.untrained_heldout_error = heldout_error(ctx, &cache, &target, &hybrid, batch)?;
    }

    let total = u64::from(distill.steps);
    let updates = u64::from(distill.updates_per_batch);
    let seed = seeds::seed_for(
        spec.sampler.seed,
        SEED_PURPOSE,
        u64::from(params.block),
        u64::from(rate.code()),
    );
    // The training sequence: epochs of a seeded, shard-blocked order.
    let epoch_len = cache.train_order(seed).len() as u64;
    if epoch_len == 0 {
        return Err(TaskError::Fatal("no training samples in the cache".into()));
    }
    let first_step = training.meta.curve.step;
    let first_batch = first_step / updates;
    let positions = sample_order(first_step, total, updates, batch as u64, epoch_len, |epoch| {
        cache.train_order(seed ^ epoch)
    });
    let mut shard_order: Vec<usize> = Vec::new();
    for (s, _) in &positions {
        if shard_order.last() != Some(s) {
            shard_order.push(*s);
        }
    }
    let mut prefetch = cache.prefetch(ctx.runtime.clone(), shard_order, ctx.device);

    let settings = LoopSettings {
        total_steps: total,
        writes_checkpoints: true,
        clip: None,
        activity: "distilling",
        loss_name: "distillation",
        lr_setting: "stages.distill.lr",
    };
    let mut current: Option<(u64, Batch)> = None;
    training.run(ctx, &settings, |step, _| {
        let batch_index = step / updates;
        if current.as_ref().map(|(i, _)| *i) != Some(batch_index) {
            let start = ((batch_index - first_batch) * batch as u64) as usize;
            let mut picked = Vec::with_capacity(batch);
            for (s, i) in &positions[start..start + batch] {
                picked.push(prefetch.get(*s)?.rows(*i));
            }
            current = Some((batch_index, target.batch(&picked)));
        }
        let b = &current.as_ref().expect("loaded").1;
        let loss = match distill.loss {
            DistillLoss::ValueL1 => value_distillation_loss(&b.target, &hybrid.forward(&b.q, &b.k, &b.v, grid)),
            DistillLoss::AttentionScore => attention_score_loss(&hybrid, &b.q, &b.k, grid, 1),
        };
        loss.backward();
        Ok(loss.double_value(&[]))
    })?;
    drop(prefetch);

    let error = heldout_error(ctx, &cache, &target, &hybrid, batch)?;
    // Attention time at this rate and softmax's, on this device at the spec's size.
    let (q, k, v) = {
        let shape = [1, cfg.num_attention_heads, grid.tokens(), cfg.attention_head_dim];
        let opts = (teacher.compute_kind(), ctx.device);
        (
            Tensor::randn(shape, opts),
            Tensor::randn(shape, opts),
            Tensor::randn(shape, opts),
        )
    };
    let attention_ms = tch::no_grad(|| median_ms(ctx.device, 2, 5, || drop(hybrid.forward(&q, &k, &v, grid))));
    let softmax_ms = tch::no_grad(|| median_ms(ctx.device, 2, 5, || drop(softmax_attention(&q, &k, &v))));

    let mut outputs: Vec<(String, Tensor)> = training
        .trainer
        .named
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    outputs.sort_by(|a, b| a.0.cmp(&b.0));
    let refs: Vec<(&str, &Tensor)> = outputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let phi_path = layout::distill_phi(params.block, rate);
    ctx.block_on(job.put(&phi_path, tensors::to_bytes(&refs)))
        .map_err(TaskError::retryable)?;
    let mut metrics = BTreeMap::from([
        (results::HELDOUT_ERROR.to_string(), error),
        (
            "untrained_heldout_error".to_string(),
            training.meta.untrained_heldout_error,
        ),
        (results::ATTENTION_MS.to_string(), attention_ms),
        (results::SOFTMAX_ATTENTION_MS.to_string(), softmax_ms),
    ]);
    if let Some(loss) = training.meta.curve.last_loss() {
        metrics.insert("final_loss".to_string(), loss);
    }
    let result = serde_json::json!({ "block": params.block, "rate": rate.code(), "metrics": metrics, "loss_curve": training.meta.curve.loss_curve });
    let result_path = layout::distill_result(params.block, rate);
    put_json(ctx, &job, &result_path, &result)?;
    training.finish()?;
    Ok(TaskOutput {
        metrics,
        artifacts: vec![phi_path, result_path],
        labels: BTreeMap::new(),
        report: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_meta_keeps_its_json_fields() {
        let mut meta = Meta {
            untrained_heldout_error: 0.5,
            ..Meta::default()
        };
        meta.record(0.25);
        let json = serde_json::to_value(&meta).unwrap();
        assert_eq!(
            json,
            serde_json::json!({ "step": 1, "untrained_heldout_error": 0.5, "loss_curve": [0.25] })
        );
        let back: Meta = serde_json::from_value(json).unwrap();
        assert_eq!((back.step(), back.curve.loss_curve), (1, vec![0.25]));
    }

    #[test]
    fn a_resumed_run_trains_on_the_tail_of_a_fresh_runs_samples() {
        let epoch = |e: u64| crate::stages::seeds::permutation(7, e);
        let (total, updates, batch) = (23, 2, 3);
        let fresh = sample_order(0, total, updates, batch, 7, epoch);
        assert_eq!(fresh.len(), 12 * 3, "ceil(23 / 2) batches of 3");
        assert_eq!(fresh[..7], epoch(0)[..]);
        assert_eq!(fresh[7..14], epoch(1)[..]);
        for first_step in 0..total {
            let resumed = sample_order(first_step, total, updates, batch, 7, epoch);
            let skipped = ((first_step / updates) * batch) as usize;
            assert_eq!(resumed, fresh[skipped..], "resumed at step {first_step}");
        }
        assert!(sample_order(0, 0, updates, batch, 7, epoch).is_empty());
    }
}
