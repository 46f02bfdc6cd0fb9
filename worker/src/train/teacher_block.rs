//! The target of per-block distillation (METHOD.md section 2): the frozen teacher block
//! whose self-attention the hybrid attention learns to imitate. From cached block inputs
//! (hidden state and timestep modulation rows) it recomputes the block's q, k, v with the
//! teacher's weights and the teacher's softmax attention output.

use crate::attention::{TokenGrid, softmax_attention};
use crate::model::{Rope, WanTransformer};
use tch::{Device, Tensor};

/// q, k, v of a batch and the teacher's attention output: computed once, used U times.
pub struct Batch {
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub target: Tensor,
}

/// The frozen teacher block whose attention is being imitated.
pub struct TeacherBlock<'a> {
    pub model: &'a WanTransformer,
    pub block: usize,
    pub rope: &'a Rope,
    pub grid: TokenGrid,
    pub device: Device,
}

impl TeacherBlock<'_> {
    /// Recomputes the block's attention inputs and the teacher output from cached rows.
    pub fn batch(&self, shard_rows: &[(Tensor, Tensor)]) -> Batch {
        tch::no_grad(|| {
            let stack = |pick: fn(&(Tensor, Tensor)) -> &Tensor| {
                Tensor::cat(
                    &shard_rows.iter().map(|r| pick(r).shallow_clone()).collect::<Vec<_>>(),
                    0,
                )
                .to_device(self.device)
            };
            let (hidden, tp) = (stack(|r| &r.0), stack(|r| &r.1));
            let (q, k, v) = self
                .model
                .block_self_attention_inputs(self.block, &hidden, &tp, self.rope);
            let target = softmax_attention(&q, &k, &v);
            Batch { q, k, v, target }
        })
    }
}
