//! Global gradient-norm clipping, `torch.nn.utils.clip_grad_norm_(grads, max_norm)` with the
//! L2 norm:
//!
//! ```text
//! total = || [ ||g_1||_2, ||g_2||_2, ... ] ||_2           (float32)
//! coef  = min(max_norm / (total + 1e-6), 1)               (torch: reciprocal(total + 1e-6) * max_norm)
//! g_i  *= coef                                            (in place, when coef < 1)
//! ```
//!
//! So, like PyTorch, it scales whenever `total + 1e-6 > max_norm` (a norm just under
//! `max_norm` is scaled by a factor just under 1); multiplying by a clamped factor of exactly 1
//! is skipped, which changes no value. Per-gradient norms are computed in float32 even for bf16
//! gradients (PyTorch would return bf16 norms for them); a bf16 gradient is scaled in place in
//! bf16.
//!
//! **Non-finite norms.** If the total is NaN or infinite nothing is scaled and the norm is
//! returned as is: the caller must treat it as fatal (NaN loss / gradients, DESIGN.md) and not
//! step the optimizer. [`super::master::MasterWeights::step`] does that check and returns
//! [`super::TrainError::NonFiniteGradNorm`]. (PyTorch would multiply every gradient by NaN.)

use tch::{Kind, Tensor};

/// Clips the gradients in place to a total L2 norm of `max_norm` and returns the total norm
/// before clipping (0 when there are no defined gradients). Undefined tensors are skipped.
/// Gradients share storage with what the caller passes (shallow clones of `.grad()` work).
pub fn clip_grad_norm<'a>(grads: impl IntoIterator<Item = &'a Tensor>, max_norm: f64) -> f64 {
    let grads: Vec<&Tensor> = grads.into_iter().filter(|g| g.defined()).collect();
    let Some(first) = grads.first() else { return 0.0 };
    let device = first.device();
    tch::no_grad(|| {
        let norms: Vec<Tensor> = grads
            .iter()
            .map(|g| g.norm_scalaropt_dtype(2.0, Kind::Float).to_device(device))
            .collect();
        let total = Tensor::stack(&norms, 0).norm_scalaropt_dtype(2.0, Kind::Float);
        let total_value = total.double_value(&[]);
        if !total_value.is_finite() {
            return total_value;
        }
        let coef = ((&total + 1e-6).reciprocal() * max_norm).clamp_max(1.0);
        if coef.double_value(&[]) < 1.0 {
            for g in &grads {
                let mut g = g.shallow_clone();
                let _ = g.g_mul_(&coef.to_device(g.device()));
            }
        }
        total_value
    })
}

/// The total L2 norm of the gradients (float32), without clipping.
pub fn grad_norm<'a>(grads: impl IntoIterator<Item = &'a Tensor>) -> f64 {
    clip_grad_norm(grads, f64::INFINITY)
}
