//! The two attentions of a block (diffusers' `WanAttention` + `WanAttnProcessor`):
//! self-attention over the video tokens with RoPE (`attn1`) and cross-attention from the
//! video tokens to the text (`attn2`). Both RMSNorm q and k over the full width
//! heads x head_dim before splitting heads. Self-attention's core (what happens between
//! q, k, v and `to_out`) is a [`SelfAttention`], swappable per block.

use tch::Tensor;
use tch::nn::{self, Module};

use super::layers::{RmsNorm, linear};
use super::rope::Rope;
use crate::attention::{SelfAttention, TokenGrid, softmax_attention};

/// to_q, to_k, to_v, to_out.0 and norm_q, norm_k of one `WanAttention`.
#[derive(Debug)]
struct Projections {
    to_q: nn::Linear,
    to_k: nn::Linear,
    to_v: nn::Linear,
    to_out: nn::Linear,
    norm_q: RmsNorm,
    norm_k: RmsNorm,
    heads: i64,
}

impl Projections {
    fn new(vs: nn::Path, dim: i64, heads: i64, eps: f64) -> Self {
        Projections {
            to_q: linear(&vs / "to_q", dim, dim),
            to_k: linear(&vs / "to_k", dim, dim),
            to_v: linear(&vs / "to_v", dim, dim),
            // to_out is a ModuleList [Linear, Dropout]: the Linear is "to_out.0".
            to_out: linear(&vs / "to_out" / "0", dim, dim),
            norm_q: RmsNorm::new(&vs / "norm_q", dim, eps),
            norm_k: RmsNorm::new(&vs / "norm_k", dim, eps),
            heads,
        }
    }

    /// q = norm_q(to_q(x)), k = norm_k(to_k(context)), v = to_v(context), q and k
    /// rotated by `rope` when given, each split into heads: [B, N, C] -> [B, N, H, d]
    /// (diffusers' layout before attention).
    fn qkv(&self, x: &Tensor, context: &Tensor, rope: Option<&Rope>) -> (Tensor, Tensor, Tensor) {
        let split = |t: Tensor| t.unflatten(2, [self.heads, -1]);
        let head_dim = x.size()[2] / self.heads;
        let q = split(self.norm_q.forward_rotated(&self.to_q.forward(x), rope, head_dim));
        let k = split(self.norm_k.forward_rotated(&self.to_k.forward(context), rope, head_dim));
        let v = split(self.to_v.forward(context));
        (q, k, v)
    }

    /// Attention output [B, H, N, d] -> [B, N, C] in q's dtype (`.type_as(query)`), then
    /// to_out.0.
    fn output(&self, attended: &Tensor, q_kind: tch::Kind) -> Tensor {
        self.to_out
            .forward(&attended.transpose(1, 2).flatten(2, 3).to_kind(q_kind))
    }
}

/// [B, N, H, d] -> [B, H, N, d], a view (what diffusers' native backend hands SDPA).
fn heads_first(t: &Tensor) -> Tensor {
    t.transpose(1, 2)
}

/// `attn1`: self-attention with 3-D RoPE on q and k.
pub struct SelfAttentionLayer {
    proj: Projections,
    pub core: SelfAttention,
}

impl SelfAttentionLayer {
    pub fn new(vs: nn::Path, dim: i64, heads: i64, eps: f64) -> Self {
        SelfAttentionLayer {
            proj: Projections::new(vs, dim, heads, eps),
            core: SelfAttention::Softmax,
        }
    }

    /// x: [B, N, C] (already norm1-ed and modulated) -> q, k, v [B, H, N, d], q and k
    /// RMSNormed and rotated: exactly what the core sees.
    pub fn inputs(&self, x: &Tensor, rope: &Rope) -> (Tensor, Tensor, Tensor) {
        let (q, k, v) = self.proj.qkv(x, x, Some(rope));
        (heads_first(&q), heads_first(&k), heads_first(&v))
    }

    /// x: [B, N, C] -> [B, N, C].
    pub fn forward(&self, x: &Tensor, rope: &Rope, grid: TokenGrid) -> Tensor {
        let (q, k, v) = self.inputs(x, rope);
        self.proj.output(&self.core.forward(&q, &k, &v, grid), q.kind())
    }
}

/// `attn2`: cross-attention from the video tokens to the projected text; no RoPE, full
/// softmax.
#[derive(Debug)]
pub struct CrossAttentionLayer {
    proj: Projections,
}

impl CrossAttentionLayer {
    pub fn new(vs: nn::Path, dim: i64, heads: i64, eps: f64) -> Self {
        CrossAttentionLayer {
            proj: Projections::new(vs, dim, heads, eps),
        }
    }

    /// x: [B, N, C], text: [B, L, C] -> [B, N, C].
    pub fn forward(&self, x: &Tensor, text: &Tensor) -> Tensor {
        let (q, k, v) = self.proj.qkv(x, text, None);
        let attended = softmax_attention(&heads_first(&q), &heads_first(&k), &heads_first(&v));
        self.proj.output(&attended, q.kind())
    }
}
