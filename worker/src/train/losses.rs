//! Losses of stage 1 (value distillation) and stage 3 (flow matching), and the flow-matching
//! pieces they are built from (METHOD.md sections 2 and 4).
//!
//! Every loss is computed in float32 whatever the inputs' dtype (bf16 activations are upcast
//! first, so the reduction accumulates in float32) and returns a float32 scalar that carries the
//! autograd graph of its inputs.
//!
//! Flow matching, as diffusers' Wan training and sampling use it:
//! `x_sigma = (1 - sigma) x0 + sigma eps`, target velocity `v = eps - x0`, model timestep
//! `t = 1000 sigma`, training sigmas `shift(u)` with `u ~ U(0, 1)` per sample and the same
//! shift `s' = shift s / (1 + (shift - 1) s)` as the sampler.

use tch::{Kind, Tensor};

use crate::sampler::noise::SeededRng;

/// Stage 1's default loss: mean |y - y_hat| between the teacher's attention output `y` and the
/// hybrid attention's `y_hat` (float32 scalar).
pub fn value_distillation_loss(teacher: &Tensor, student: &Tensor) -> Tensor {
    (student.to_kind(Kind::Float) - teacher.to_kind(Kind::Float))
        .abs()
        .mean(Kind::Float)
}

/// `sigma` `[B]` viewed as `[B, 1, ...]` to broadcast over a tensor of rank `rank`.
fn per_sample(sigma: &Tensor, rank: usize) -> Tensor {
    let mut shape = vec![sigma.numel() as i64];
    shape.resize(rank.max(1), 1);
    sigma.to_kind(Kind::Float).reshape(shape)
}

/// The noisy input `(1 - sigma) x0 + sigma noise`, `sigma` `[B]` broadcast per sample; computed
/// in float32, returned in `x0`'s dtype.
pub fn noisy(x0: &Tensor, noise: &Tensor, sigma: &Tensor) -> Tensor {
    let s = per_sample(sigma, x0.dim()).to_device(x0.device());
    let keep: Tensor = 1.0 - &s;
    let mixed = keep * x0.to_kind(Kind::Float) + &s * noise.to_kind(Kind::Float);
    mixed.to_kind(x0.kind())
}

/// The flow-matching target velocity `noise - x0` (float32).
pub fn velocity_target(x0: &Tensor, noise: &Tensor) -> Tensor {
    noise.to_kind(Kind::Float) - x0.to_kind(Kind::Float)
}

/// The model timestep of a noise level: `1000 sigma` (float32, same shape).
pub fn timestep_of(sigma: &Tensor) -> Tensor {
    sigma.to_kind(Kind::Float) * 1000.0
}

/// The timestep shift `shift s / (1 + (shift - 1) s)` (shift 1 is the identity).
pub fn shift_sigma(sigma: f64, shift: f64) -> f64 {
    shift * sigma / (1.0 + (shift - 1.0) * sigma)
}

/// [`shift_sigma`] element-wise on a tensor (float32).
pub fn shift_sigmas(sigma: &Tensor, shift: f64) -> Tensor {
    let s = sigma.to_kind(Kind::Float);
    (&s * shift) / ((&s * (shift - 1.0)) + 1.0)
}

/// Training noise levels: `u` uniform in (0, 1) per sample from a seeded generator, then
/// shifted. Its state is one `u64` ([`SigmaSampler::state`]): save it with the checkpoint so a
/// resumed run draws the same sigmas.
#[derive(Debug, Clone)]
pub struct SigmaSampler {
    rng: SeededRng,
    shift: f64,
}

impl SigmaSampler {
    pub fn new(seed: u64, shift: f64) -> Self {
        Self {
            rng: SeededRng::new(seed),
            shift,
        }
    }

    /// Resumes from a saved [`SigmaSampler::state`].
    pub fn from_state(state: u64, shift: f64) -> Self {
        Self {
            rng: SeededRng::from_state(state),
            shift,
        }
    }

    pub fn state(&self) -> u64 {
        self.rng.state()
    }

    pub fn shift(&self) -> f64 {
        self.shift
    }

    /// `batch` shifted sigmas, each drawn in float64 and rounded to float32 (so a value may
    /// round to exactly 1.0, pure noise); a `[batch]` float32 tensor on the CPU.
    pub fn sample(&mut self, batch: usize) -> Tensor {
        let values: Vec<f32> = (0..batch)
            .map(|_| shift_sigma(self.rng.uniform_open(), self.shift) as f32)
            .collect();
        Tensor::from_slice(&values)
    }
}

/// Stage 3's loss: mean squared error between the predicted and the target velocity (float32).
pub fn flow_matching_loss(pred_v: &Tensor, target_v: &Tensor) -> Tensor {
    (pred_v.to_kind(Kind::Float) - target_v.to_kind(Kind::Float))
        .square()
        .mean(Kind::Float)
}

/// The terms of the fine-tuning loss; `total` is what to differentiate.
#[derive(Debug)]
pub struct FineTuneLoss {
    pub total: Tensor,
    /// MSE to the flow-matching target.
    pub flow: Tensor,
    /// MSE to the teacher's velocity on the same input, when a teacher term is used.
    pub teacher: Option<Tensor>,
}

/// `flow_matching_loss(pred, target) + teacher_weight * mse(pred, teacher_v)`: the optional
/// teacher term (METHOD.md section 4) uses the teacher's velocity on the same noisy input,
/// detached (the teacher is not trained). With `teacher_v = None` or weight 0 the total is the
/// flow-matching loss alone.
pub fn fine_tune_loss(
    pred_v: &Tensor,
    target_v: &Tensor,
    teacher_v: Option<&Tensor>,
    teacher_weight: f64,
) -> FineTuneLoss {
    let flow = flow_matching_loss(pred_v, target_v);
    let teacher = teacher_v
        .filter(|_| teacher_weight != 0.0)
        .map(|teacher_v| flow_matching_loss(pred_v, &teacher_v.detach()));
    let total = match &teacher {
        Some(term) => &flow + term * teacher_weight,
        None => flow.shallow_clone(),
    };
    FineTuneLoss { total, flow, teacher }
}
