//! Fused GPU kernels for the linear part of the hybrid attention and its combination with
//! the anchors' softmax output (METHOD.md section 1), forward and backward.
//!
//! The eager path of [`HybridAttention`](super::hybrid::HybridAttention) spends 5-6 ms of
//! a forward at 32,760 tokens on a part that is ~1% of the FLOPs: phi's bias adds, GELU,
//! chunk activations, fp32 casts, splits and concatenations each make a pass over
//! [N, D'] tensors. Here the GEMMs stay cuBLAS's (through LibTorch, bf16 in with fp32
//! accumulation) and every pass between them is one kernel of [`kernels.cu`]
//! ([`linear`] lists them); S and z come from one GEMM against the values with a ones
//! column appended, and the readout's [num | den] is combined with the anchor output in
//! one kernel. The kernels are CUDA C++ (`kernels/attention.cu`) compiled at run time by
//! LibTorch's own NVRTC ([`crate::kernels`]) and cached per device, so the worker is one binary that builds and tests
//! on machines without CUDA; they run on LibTorch's (default) stream with no host
//! synchronisation. Gradients flow through a LibTorch autograd Function ([`autograd`],
//! a small C++ shim calling back into Rust), so distillation (gradients to phi) and
//! fine-tuning (to q, k, v and phi) use the same kernels as inference.
//!
//! The eager path stays: it is the CPU path, the reference these kernels are tested
//! against (worker/tests/fused_attention.rs on a GPU), and what runs when
//! `SURGERY_FUSED_KERNELS=0` (or `off`) is set or the kernels cannot be built.

pub mod autograd;
pub mod linear;

use super::feature_map::FeatureMap;
use linear::{Config, Phi};
use tch::Tensor;

/// y = (a O + phi_q(q).S) / (a + phi_q(q).z + eps) with S, z over (k_L, v_L); `o` is the
/// softmax output over the anchors, `None` at the linear rate. Differentiable (to every
/// input) when LibTorch records gradients and some input requires them.
#[allow(clippy::too_many_arguments)]
pub fn hybrid(
    o: Option<&Tensor>,
    q: &Tensor,
    kl: &Tensor,
    vl: &Tensor,
    phi_q: &FeatureMap,
    phi_k: &FeatureMap,
    anchor_weight: f64,
    eps: f64,
) -> Result<Tensor, String> {
    let cfg = Config {
        a: anchor_weight,
        eps,
        has_anchors: o.is_some(),
        ends: Config::ends_of(&phi_q.config.chunk_sizes()),
    };
    let pq = Phi {
        w1: &phi_q.w1,
        b1: &phi_q.b1,
        w2: &phi_q.w2,
        b2: &phi_q.b2,
    };
    let pk = Phi {
        w1: &phi_k.w1,
        b1: &phi_k.b1,
        w2: &phi_k.w2,
        b2: &phi_k.b2,
    };
    let needs_grad = autograd::grad_enabled()
        && [q, kl, vl]
            .into_iter()
            .chain(o)
            .chain(phi_q.parameters())
            .chain(phi_k.parameters())
            .any(Tensor::requires_grad);
    if needs_grad {
        autograd::apply(o, q, kl, vl, &pq, &pk, &cfg)
    } else {
        linear::forward(o, q, kl, vl, &pq, &pk, &cfg).map(|(y, _)| y)
    }
}
