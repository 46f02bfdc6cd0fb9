//! The evaluate stage's linear-share meter: runs the student's blocks on the latents the
//! velocity check already uses and averages each hybrid block's
//! [`LinearShare`](crate::attention::linear_share) over those calls.

use crate::attention::SelfAttention;
use crate::attention::linear_share::{LinearShare, linear_share};
use crate::model::WanTransformer;
use serde::Serialize;
use std::collections::BTreeMap;
use surgery_core::rate::Rate;
use tch::Tensor;

/// One hybrid block's shares, averaged over the meter's calls.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BlockShare {
    pub block: usize,
    /// The block's rate as the spec writes it (`4`, `linear`).
    pub rate: Rate,
    #[serde(flatten)]
    pub share: LinearShare,
}

/// Sums of [`LinearShare`] per hybrid block.
#[derive(Debug, Default)]
pub struct LinearShareMeter {
    sums: BTreeMap<usize, (Rate, LinearShare, u32)>,
}

impl LinearShareMeter {
    /// Runs `model`'s blocks on latents `x` at timestep `t` with `text` (no head, no
    /// gradients) and adds each hybrid block's shares.
    pub fn measure(&mut self, model: &WanTransformer, x: &Tensor, t: &Tensor, text: &Tensor) {
        if !(0..model.num_blocks()).any(|i| matches!(model.self_attention(i), SelfAttention::Hybrid(_))) {
            return;
        }
        tch::no_grad(|| {
            let e = model.embed(x, t, text);
            let mut hidden = e.hidden.shallow_clone();
            for i in 0..model.num_blocks() {
                if let SelfAttention::Hybrid(h) = model.self_attention(i) {
                    let (q, k, _) = model.block_self_attention_inputs(i, &hidden, &e.timestep_proj, &e.rope);
                    if let Some(share) = linear_share(h, &q, &k, e.grid) {
                        self.add(i, h.rate, share);
                    }
                }
                hidden = model.block_forward(i, &hidden, &e);
            }
        });
    }

    fn add(&mut self, block: usize, rate: Rate, share: LinearShare) {
        let zero = LinearShare {
            student: 0.0,
            teacher: 0.0,
            gap: 0.0,
        };
        let (_, sum, n) = self.sums.entry(block).or_insert((rate, zero, 0));
        sum.student += share.student;
        sum.teacher += share.teacher;
        sum.gap += share.gap;
        *n += 1;
    }

    /// The averages, by block.
    pub fn blocks(&self) -> Vec<BlockShare> {
        self.sums
            .iter()
            .map(|(block, (rate, sum, n))| {
                let n = f64::from(*n);
                BlockShare {
                    block: *block,
                    rate: *rate,
                    share: LinearShare {
                        student: sum.student / n,
                        teacher: sum.teacher / n,
                        gap: sum.gap / n,
                    },
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_per_block() {
        let mut meter = LinearShareMeter::default();
        let share = |s: f64| LinearShare {
            student: s,
            teacher: 0.5,
            gap: s / 2.0,
        };
        meter.add(3, Rate::Hybrid(4), share(0.2));
        meter.add(1, Rate::Linear, share(1.0));
        meter.add(3, Rate::Hybrid(4), share(0.4));
        let blocks = meter.blocks();
        assert_eq!(blocks.len(), 2);
        assert_eq!((blocks[0].block, blocks[0].rate), (1, Rate::Linear));
        assert_eq!(blocks[1].block, 3);
        assert!((blocks[1].share.student - 0.3).abs() < 1e-12);
        assert!((blocks[1].share.gap - 0.15).abs() < 1e-12);
        assert_eq!(blocks[1].share.teacher, 0.5);
    }
}
