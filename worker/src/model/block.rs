//! One transformer block (diffusers' `WanTransformerBlock`, the 3-D `temb` case):
//!
//!   shift, scale, gate, c_shift, c_scale, c_gate = scale_shift_table + timestep_proj
//!   h = h + gate   * attn1(norm1(h) (1 + scale) + shift)       (self-attention, RoPE)
//!   h = h +          attn2(norm2(h), text)                     (cross-attention)
//!   h = h + c_gate * ffn(norm3(h) (1 + c_scale) + c_shift)
//!
//! with diffusers' casts: the modulation, the norms and the two gated residual adds are
//! fp32 and rounded back to the hidden dtype right after (`.float()` / `.type_as`); the
//! cross-attention residual is added in the hidden dtype.

use tch::nn::{self, Init, Module};
use tch::{Kind, Tensor};

use super::layers::{Fp32LayerNorm, linear};
use super::rope::Rope;
use super::wan_attention::{CrossAttentionLayer, SelfAttentionLayer};
use crate::attention::TokenGrid;

/// diffusers' `FeedForward(dim, inner_dim=ffn_dim, activation_fn="gelu-approximate")`:
/// net.0.proj -> GELU(tanh) -> (dropout) -> net.2.
#[derive(Debug)]
struct FeedForward {
    proj_in: nn::Linear,
    proj_out: nn::Linear,
}

impl FeedForward {
    fn new(vs: nn::Path, dim: i64, ffn_dim: i64) -> Self {
        let net = &vs / "net";
        FeedForward {
            proj_in: linear(&net / "0" / "proj", dim, ffn_dim),
            proj_out: linear(&net / "2", ffn_dim, dim),
        }
    }
}

impl Module for FeedForward {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.proj_out.forward(&self.proj_in.forward(x).gelu("tanh"))
    }
}

/// The block's six modulation vectors, each [B, 1, dim] f32.
pub struct Modulation {
    pub shift_msa: Tensor,
    pub scale_msa: Tensor,
    pub gate_msa: Tensor,
    pub c_shift_msa: Tensor,
    pub c_scale_msa: Tensor,
    pub c_gate_msa: Tensor,
}

/// (h + x gate) in fp32, rounded to h's dtype (diffusers' `(h.float() + x * gate).type_as(h)`);
/// one fused kernel for inference on CUDA.
fn gated_residual(hidden: &Tensor, x: &Tensor, gate: &Tensor) -> Tensor {
    super::fused::gated_residual(hidden, x, gate)
        .unwrap_or_else(|| (hidden.to_kind(Kind::Float) + x.to_kind(Kind::Float) * gate).to_kind(hidden.kind()))
}

/// `blocks.{i}`.
pub struct WanBlock {
    norm1: Fp32LayerNorm,
    pub(crate) attn1: SelfAttentionLayer,
    /// None when `cross_attn_norm` is false (diffusers' `nn.Identity`).
    norm2: Option<Fp32LayerNorm>,
    attn2: CrossAttentionLayer,
    norm3: Fp32LayerNorm,
    ffn: FeedForward,
    /// [1, 6, dim], fp32 in a bf16 model.
    scale_shift_table: Tensor,
}

impl WanBlock {
    pub fn new(vs: nn::Path, dim: i64, ffn_dim: i64, heads: i64, cross_attn_norm: bool, eps: f64) -> Self {
        WanBlock {
            norm1: Fp32LayerNorm::new(&vs / "norm1", dim, eps, false),
            attn1: SelfAttentionLayer::new(&vs / "attn1", dim, heads, eps),
            norm2: cross_attn_norm.then(|| Fp32LayerNorm::new(&vs / "norm2", dim, eps, true)),
            attn2: CrossAttentionLayer::new(&vs / "attn2", dim, heads, eps),
            norm3: Fp32LayerNorm::new(&vs / "norm3", dim, eps, false),
            ffn: FeedForward::new(&vs / "ffn", dim, ffn_dim),
            // diffusers' init: randn / sqrt(dim).
            scale_shift_table: vs.var(
                "scale_shift_table",
                &[1, 6, dim],
                Init::Randn {
                    mean: 0.0,
                    stdev: 1.0 / (dim as f64).sqrt(),
                },
            ),
        }
    }

    /// (scale_shift_table + timestep_proj.float()).chunk(6): timestep_proj [B, 6, dim].
    pub fn modulation(&self, timestep_proj: &Tensor) -> Modulation {
        let m = (&self.scale_shift_table + timestep_proj.to_kind(Kind::Float)).chunk(6, 1);
        let [shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa] =
            <[Tensor; 6]>::try_from(m).expect("chunk(6) of a size-6 dim gives 6 parts");
        Modulation {
            shift_msa,
            scale_msa,
            gate_msa,
            c_shift_msa,
            c_scale_msa,
            c_gate_msa,
        }
    }

    /// norm1(h) (1 + scale) + shift, in h's dtype: the self-attention's input.
    fn self_attention_input(&self, hidden: &Tensor, m: &Modulation) -> Tensor {
        self.norm1.forward_modulated(hidden, Some((&m.scale_msa, &m.shift_msa)))
    }

    /// q, k, v [B, H, N, d] as the self-attention core sees them (after norm1 and
    /// modulation, projections, RMSNorm and RoPE).
    pub fn self_attention_inputs(
        &self,
        hidden: &Tensor,
        timestep_proj: &Tensor,
        rope: &Rope,
    ) -> (Tensor, Tensor, Tensor) {
        let m = self.modulation(timestep_proj);
        self.attn1.inputs(&self.self_attention_input(hidden, &m), rope)
    }

    /// hidden [B, N, dim] -> [B, N, dim].
    pub fn forward(
        &self,
        hidden: &Tensor,
        timestep_proj: &Tensor,
        text: &Tensor,
        rope: &Rope,
        grid: TokenGrid,
    ) -> Tensor {
        let m = self.modulation(timestep_proj);

        // 1. Self-attention, gated residual in fp32.
        let attn = self.attn1.forward(&self.self_attention_input(hidden, &m), rope, grid);
        let hidden = gated_residual(hidden, &attn, &m.gate_msa);

        // 2. Cross-attention, plain residual in the hidden dtype.
        let normed = match &self.norm2 {
            Some(norm2) => norm2.forward_modulated(&hidden, None),
            None => hidden.shallow_clone(),
        };
        let hidden = &hidden + self.attn2.forward(&normed, text);

        // 3. Feed-forward, gated residual in fp32.
        let normed = self
            .norm3
            .forward_modulated(&hidden, Some((&m.c_scale_msa, &m.c_shift_msa)));
        let ff = self.ffn.forward(&normed);
        gated_residual(&hidden, &ff, &m.c_gate_msa)
    }
}
