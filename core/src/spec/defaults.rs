//! The values a spec field takes when it is left out (serde's `default = ...`), and the
//! sections' `Default`s built from them.

use super::*;
use crate::rate::Rate;

pub fn prompts_per_shard() -> u32 {
    8
}
pub fn previews() -> u32 {
    2
}
pub fn finetune_data() -> String {
    "capture".to_string()
}
pub fn sampler_steps() -> u32 {
    50
}
pub fn shift() -> f64 {
    5.0
}
pub fn guidance() -> f64 {
    5.0
}
pub fn rates() -> Vec<Rate> {
    vec![Rate::Hybrid(2), Rate::Hybrid(4), Rate::Hybrid(8)]
}
pub fn budget() -> f64 {
    0.6
}
pub fn fmap_width() -> u32 {
    256
}
pub fn chunks() -> u32 {
    2
}
pub fn fmap_eps() -> f64 {
    1e-6
}
pub fn capture_steps() -> Vec<u32> {
    vec![0, 10, 20, 30, 40]
}
pub fn distill_steps() -> u32 {
    2000
}
pub fn distill_batch() -> u32 {
    1
}
pub fn updates_per_batch() -> u32 {
    4
}
pub fn distill_lr() -> f64 {
    1e-3
}
pub fn heldout_fraction() -> f64 {
    0.1
}
pub fn finetune_steps() -> u32 {
    1000
}
pub fn global_batch() -> u32 {
    32
}
pub fn finetune_lr() -> f64 {
    1e-5
}
pub fn weight_decay() -> f64 {
    0.01
}
pub fn grad_clip() -> f64 {
    1.0
}
pub fn yes() -> bool {
    true
}
pub fn one() -> u32 {
    1
}
pub fn checkpoint_every() -> u32 {
    100
}
pub fn keep_last() -> u32 {
    3
}
pub fn max_retries() -> u32 {
    3
}
pub fn max_interruptions() -> u32 {
    50
}

impl Default for SamplerSpec {
    fn default() -> Self {
        SamplerSpec {
            steps: sampler_steps(),
            shift: shift(),
            guidance: guidance(),
            seed: 0,
            scheduler: SchedulerKind::default(),
        }
    }
}

impl Default for SurgerySpec {
    fn default() -> Self {
        SurgerySpec {
            attention: AttentionKind::default(),
            rates: rates(),
            anchor_pattern: AnchorPattern::default(),
            feature_map: FeatureMapSpec::default(),
            selection: SelectionSpec::default(),
        }
    }
}

impl Default for FeatureMapSpec {
    fn default() -> Self {
        FeatureMapSpec {
            hidden: fmap_width(),
            features: fmap_width(),
            chunks: chunks(),
            eps: fmap_eps(),
        }
    }
}

impl Default for CaptureSpec {
    fn default() -> Self {
        CaptureSpec { steps: capture_steps() }
    }
}

impl Default for DistillSpec {
    fn default() -> Self {
        DistillSpec {
            steps: distill_steps(),
            batch: distill_batch(),
            updates_per_batch: updates_per_batch(),
            lr: distill_lr(),
            weight_decay: 0.0,
            loss: DistillLoss::default(),
            heldout_fraction: heldout_fraction(),
        }
    }
}

impl Default for FinetuneSpec {
    fn default() -> Self {
        FinetuneSpec {
            steps: finetune_steps(),
            global_batch: global_batch(),
            lr: finetune_lr(),
            weight_decay: weight_decay(),
            grad_clip: grad_clip(),
            teacher_loss_weight: 0.0,
            activation_checkpointing: true,
            fp32_master_weights: true,
        }
    }
}

impl Default for EvaluateSpec {
    fn default() -> Self {
        EvaluateSpec {
            steps: sampler_steps(),
            previews: previews(),
        }
    }
}

impl Default for ResourcesSpec {
    fn default() -> Self {
        ResourcesSpec {
            device: Device::default(),
            min_gpu_memory_gib: 0,
            finetune_workers: 1,
        }
    }
}

impl Default for CheckpointSpec {
    fn default() -> Self {
        CheckpointSpec {
            every_steps: checkpoint_every(),
            keep_last: keep_last(),
        }
    }
}

impl Default for RetrySpec {
    fn default() -> Self {
        RetrySpec {
            max_retries: max_retries(),
            max_interruptions: max_interruptions(),
        }
    }
}
