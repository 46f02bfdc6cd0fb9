//! The probe of export's report: the student's and the teacher's output on one fixed
//! seeded input, which anyone can recompute from the exported folder to check it is the
//! model the report describes.

use crate::model::WanTransformer;
use crate::sampler::seeded_noise;
use surgery_core::spec::JobSpec;
use tch::{Kind, Tensor};

/// The probe's seed and timestep: fixed, so a check can recompute it.
pub const PROBE_SEED: u64 = 0x0005_EED0_F0E7;
pub const PROBE_TIMESTEP: f32 = 500.0;

/// The student's and the teacher's output on the probe input: latents from
/// [`PROBE_SEED`], timestep [`PROBE_TIMESTEP`], the first prompt's embedding.
/// Returns (mean |student|, ||student - teacher|| / ||teacher||), computed in fp32.
pub fn probe(student: &WanTransformer, teacher: &WanTransformer, text: &Tensor, latent: [i64; 5]) -> (f64, f64) {
    tch::no_grad(|| {
        let device = text.device();
        let x = seeded_noise(PROBE_SEED, &latent, device);
        let t = Tensor::from_slice(&[PROBE_TIMESTEP]).to_device(device);
        let (s, v) = (velocity(student, &x, &t, text), velocity(teacher, &x, &t, text));
        let mean_abs = s.abs().mean(Kind::Double).double_value(&[]);
        let rel = (&s - &v).norm().double_value(&[]) / v.norm().double_value(&[]);
        (mean_abs, rel)
    })
}

/// `model`'s velocity at (`x`, `t`, `text`), each cast to the model's compute dtype, in f64.
pub fn velocity(model: &WanTransformer, x: &Tensor, t: &Tensor, text: &Tensor) -> Tensor {
    let kind = model.compute_kind();
    model
        .forward(&x.to_kind(kind), t, &text.to_kind(kind))
        .to_kind(Kind::Double)
}

/// The probe's latent shape [1, C, F, H, W] at the spec's video size.
pub fn probe_shape(spec: &JobSpec) -> [i64; 5] {
    let (f, h, w) = spec.latent_dims();
    [
        1,
        i64::from(spec.model_shape().in_channels),
        i64::from(f),
        i64::from(h),
        i64::from(w),
    ]
}
