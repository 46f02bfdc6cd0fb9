//! The small layers the transformer is built from, each a plain struct over tensors
//! registered under diffusers' parameter names (`weight`, `bias`), each calling the same
//! ATen op as its PyTorch counterpart so the numerics are LibTorch's, not ours.

use tch::nn::{self, Init, Module};
use tch::{Kind, Tensor};

/// `torch.nn.Linear` (weight `[out, in]`, bias `[out]`), with PyTorch's default init.
pub fn linear(vs: nn::Path, in_dim: i64, out_dim: i64) -> nn::Linear {
    nn::linear(vs, in_dim, out_dim, Default::default())
}

/// diffusers' `FP32LayerNorm`: LayerNorm over the last dim computed in fp32 whatever the
/// input dtype, the result cast back to the input's dtype. Without affine it has no
/// parameters (norm1, norm3, norm_out); with affine, `weight` and `bias` (norm2).
#[derive(Debug)]
pub struct Fp32LayerNorm {
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    dim: i64,
    eps: f64,
}

impl Fp32LayerNorm {
    pub fn new(vs: nn::Path, dim: i64, eps: f64, elementwise_affine: bool) -> Self {
        let (weight, bias) = if elementwise_affine {
            (
                Some(vs.var("weight", &[dim], Init::Const(1.0))),
                Some(vs.var("bias", &[dim], Init::Const(0.0))),
            )
        } else {
            (None, None)
        };
        Fp32LayerNorm { weight, bias, dim, eps }
    }
}

impl Fp32LayerNorm {
    /// LayerNorm(x) [* (1 + scale) + shift] in fp32, rounded once to x's dtype (diffusers'
    /// `norm(x.float())`, the modulation, `.type_as(x)`): scale, shift [B, 1, dim]. One
    /// fused kernel for inference on CUDA, LibTorch's ops otherwise.
    pub fn forward_modulated(&self, x: &Tensor, modulation: Option<(&Tensor, &Tensor)>) -> Tensor {
        let affine = self.weight.as_ref().zip(self.bias.as_ref());
        if let Some(out) = super::fused::layer_norm_modulate(x, affine, modulation, self.eps) {
            return out;
        }
        let normed = self.forward(&x.to_kind(Kind::Float));
        match modulation {
            Some((scale, shift)) => (normed * (scale + 1.0) + shift).to_kind(x.kind()),
            None => normed.to_kind(x.kind()),
        }
    }
}

impl Module for Fp32LayerNorm {
    fn forward(&self, x: &Tensor) -> Tensor {
        let fp32 = |t: &Tensor| t.to_kind(Kind::Float);
        // cudnn_enable = true: what F.layer_norm passes (torch.backends.cudnn.enabled).
        x.to_kind(Kind::Float)
            .layer_norm(
                [self.dim],
                self.weight.as_ref().map(fp32),
                self.bias.as_ref().map(fp32),
                self.eps,
                true,
            )
            .to_kind(x.kind())
    }
}

/// `torch.nn.RMSNorm(dim, eps, elementwise_affine=True)`: x / rms(x) * weight over the
/// last dim, through ATen's `rms_norm` (which does its reduction in fp32 for bf16 input).
#[derive(Debug)]
pub struct RmsNorm {
    weight: Tensor,
    dim: i64,
    eps: f64,
}

impl RmsNorm {
    pub fn new(vs: nn::Path, dim: i64, eps: f64) -> Self {
        RmsNorm {
            weight: vs.var("weight", &[dim], Init::Const(1.0)),
            dim,
            eps,
        }
    }
}

impl RmsNorm {
    /// The norm over x [B, N, C], then with `rope` the rotation of each head's channel
    /// pairs (head width `head_dim`): [B, N, C]. One fused kernel for inference on CUDA;
    /// LibTorch's `rms_norm` and [`Rope::rotate`](super::rope::Rope::rotate) otherwise.
    pub fn forward_rotated(&self, x: &Tensor, rope: Option<&super::rope::Rope>, head_dim: i64) -> Tensor {
        let tables = rope.map(|r| (&r.cos, &r.sin));
        if let Some(out) = super::fused::rms_rope(x, &self.weight, tables, head_dim, self.eps) {
            return out;
        }
        let normed = self.forward(x);
        match rope {
            Some(rope) => rope.rotate(&normed.unflatten(2, [-1, head_dim])).flatten(2, 3),
            None => normed,
        }
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Tensor {
        x.rms_norm([self.dim], Some(&self.weight), self.eps)
    }
}

/// `torch.nn.Conv3d(in, out, kernel_size=patch, stride=patch)`: the patch embedding,
/// one token per non-overlapping (p_t, p_h, p_w) patch.
#[derive(Debug)]
pub struct PatchConv3d {
    weight: Tensor,
    bias: Tensor,
    patch: [i64; 3],
}

impl PatchConv3d {
    /// The dtype of the weights (the model's compute dtype).
    pub fn kind(&self) -> tch::Kind {
        self.weight.kind()
    }

    pub fn new(vs: nn::Path, in_channels: i64, out_channels: i64, patch: [i64; 3]) -> Self {
        // PyTorch's default Conv init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for both.
        let bound = 1.0 / ((in_channels * patch.iter().product::<i64>()) as f64).sqrt();
        let init = Init::Uniform { lo: -bound, up: bound };
        let weight = vs.var(
            "weight",
            &[out_channels, in_channels, patch[0], patch[1], patch[2]],
            init,
        );
        let bias = vs.var("bias", &[out_channels], init);
        PatchConv3d { weight, bias, patch }
    }
}

impl Module for PatchConv3d {
    /// [B, C_in, F, H, W] -> [B, C_out, F / p_t, H / p_h, W / p_w].
    fn forward(&self, x: &Tensor) -> Tensor {
        x.conv3d(&self.weight, Some(&self.bias), self.patch, [0, 0, 0], [1, 1, 1], 1)
    }
}

/// Weight dtype of a linear layer: the dtype its input must have.
pub fn weight_kind(layer: &nn::Linear) -> Kind {
    layer.ws.kind()
}
