//! The element-wise work of a block, fused for inference on CUDA (`kernels/block.cu`):
//! LayerNorm with the timestep modulation, the gated residual adds, and RMSNorm of q/k
//! with RoPE. diffusers runs each as several fp32 passes over [B, N, dim] (about 30% of
//! the 480p forward is such kernels); here each is one read and one write in the hidden
//! dtype, with diffusers' fp32 arithmetic in between. Capture, sampling, evaluation and
//! the export's speed measurement (no gradients) take these; training and the CPU keep
//! LibTorch's ops (each function returns `None` and the caller runs the eager code,
//! which stays the reference the kernels are tested against).

use crate::attention::fused::autograd::grad_enabled;
use crate::kernels::{Arg, module_of, ptr, suffix, usable};
use tch::{Kind, Tensor};

/// Whether the fused inference kernels serve these tensors: CUDA, bf16 or fp32, and no
/// gradient to record.
fn serves(tensors: &[&Tensor]) -> bool {
    usable(tensors[0]) && !(grad_enabled() && tensors.iter().any(|t| t.requires_grad()))
}

fn f32_contiguous(t: &Tensor) -> Tensor {
    t.to_kind(Kind::Float).contiguous()
}

/// LayerNorm over the last dim of x [B, N, dim] (fp32 statistics), with the affine
/// `weight`/`bias` [dim] and the modulation `* (1 + scale) + shift` (scale, shift
/// [B, 1, dim]) when given, rounded once to x's dtype.
pub fn layer_norm_modulate(
    x: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    modulation: Option<(&Tensor, &Tensor)>,
    eps: f64,
) -> Option<Tensor> {
    let mut all = vec![x];
    all.extend(affine.iter().flat_map(|(w, b)| [*w, *b]));
    all.extend(modulation.iter().flat_map(|(s, h)| [*s, *h]));
    if !serves(&all) {
        return None;
    }
    let m = module_of(x).ok()?;
    let sfx = suffix(x.kind()).ok()?;
    let size = x.size();
    let dim = *size.last()?;
    let rows = x.numel() as i64 / dim;
    let rows_per_batch = rows / size[0];
    let x = x.contiguous();
    let out = x.empty_like();
    let affine = affine.map(|(w, b)| (f32_contiguous(w), f32_contiguous(b)));
    let modulation = modulation.map(|(s, h)| (f32_contiguous(s), f32_contiguous(h)));
    let opt = |t: Option<&Tensor>| t.map_or(Arg::Ptr(0), ptr);
    m.launch_rows(
        &format!("layer_norm_modulate_{sfx}"),
        rows,
        &mut [
            ptr(&x),
            opt(affine.as_ref().map(|a| &a.0)),
            opt(affine.as_ref().map(|a| &a.1)),
            opt(modulation.as_ref().map(|m| &m.0)),
            opt(modulation.as_ref().map(|m| &m.1)),
            ptr(&out),
            Arg::I64(rows),
            Arg::I32(dim as i32),
            Arg::I64(rows_per_batch),
            Arg::F32(eps as f32),
        ],
    )
    .ok()?;
    Some(out)
}

/// h + x * gate in fp32, rounded once to h's dtype; h, x [B, N, dim], gate [B, 1, dim].
pub fn gated_residual(h: &Tensor, x: &Tensor, gate: &Tensor) -> Option<Tensor> {
    if !serves(&[h, x, gate]) || x.kind() != h.kind() {
        return None;
    }
    let m = module_of(h).ok()?;
    let sfx = suffix(h.kind()).ok()?;
    let size = h.size();
    let dim = *size.last()?;
    let rows = h.numel() as i64 / dim;
    let (h, x, gate) = (h.contiguous(), x.contiguous(), f32_contiguous(gate));
    let out = h.empty_like();
    m.launch(
        &format!("gated_residual_{sfx}"),
        rows * dim,
        &mut [
            ptr(&h),
            ptr(&x),
            ptr(&gate),
            ptr(&out),
            Arg::I64(rows),
            Arg::I32(dim as i32),
            Arg::I64(rows / size[0]),
        ],
    )
    .ok()?;
    Some(out)
}

/// RMSNorm of x [B, N, C] over C with `weight` [C] (as ATen's rms_norm rounds), then, with
/// `rope` = (cos, sin) [N, head_dim], RoPE on each head's channel pairs: [B, N, C] in x's
/// dtype (the caller splits heads).
pub fn rms_rope(
    x: &Tensor,
    weight: &Tensor,
    rope: Option<(&Tensor, &Tensor)>,
    head_dim: i64,
    eps: f64,
) -> Option<Tensor> {
    if !serves(&[x, weight]) || weight.kind() != x.kind() {
        return None;
    }
    let m = module_of(x).ok()?;
    let sfx = suffix(x.kind()).ok()?;
    let size = x.size();
    let (tokens, dim) = (size[1], size[2]);
    let rows = size[0] * tokens;
    let x = x.contiguous();
    let weight = weight.contiguous();
    let out = x.empty_like();
    let tables = rope.map(|(c, s)| (f32_contiguous(c), f32_contiguous(s)));
    m.launch_rows(
        &format!("rms_rope_{sfx}"),
        rows,
        &mut [
            ptr(&x),
            ptr(&weight),
            tables.as_ref().map_or(Arg::Ptr(0), |t| ptr(&t.0)),
            tables.as_ref().map_or(Arg::Ptr(0), |t| ptr(&t.1)),
            ptr(&out),
            Arg::I64(rows),
            Arg::I32(dim as i32),
            Arg::I32(head_dim as i32),
            Arg::I64(tokens),
            Arg::F32(eps as f32),
            Arg::I32(i32::from(tables.is_some())),
        ],
    )
    .ok()?;
    Some(out)
}
