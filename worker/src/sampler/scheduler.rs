//! The [`Scheduler`] interface and the flow-matching Euler scheduler.
//!
//! [`FlowMatchEuler`] reproduces diffusers' `FlowMatchEulerDiscreteScheduler` as the Wan pipeline
//! uses it (`num_train_timesteps=1000`, `shift`, `use_dynamic_shifting=False`, no Karras /
//! exponential / beta sigmas, no stochastic sampling), including two details that are easy to
//! get wrong:
//!
//! * **The shift is applied twice.** The constructor builds the 1000 training sigmas already
//!   shifted and keeps their ends (`sigma_max = 1`, `sigma_min = shift(1/1000)`); `set_timesteps`
//!   spaces `n` timesteps linearly between `1000 sigma_max` and `1000 sigma_min` and shifts
//!   *those* again. With shift 5 and 8 steps the last timestep is 24.41, not 5. The tables here
//!   equal diffusers' bit for bit (float32), checked by `tests/sampler.rs` against the golden file.
//! * **Precision.** The endpoints are computed in float32 (torch tensors), the linear spacing and
//!   the second shift in float64 (numpy), then rounded to float32; `timesteps = 1000 sigmas` in
//!   float32. The model sees those float32 timesteps as they are (not rounded to integers).
//!
//! The step is `x_next = x + (sigma_next - sigma) v`, computed in float32 and returned in the
//! dtype of the model output, as diffusers does (`prev_sample.to(model_output.dtype)`): with a
//! bf16 model the latents become bf16 after the first step, exactly as in the pipeline.
//! diffusers multiplies `dt * model_output` in the model output's dtype before adding; here the
//! model output is upcast first (one rounding instead of two; identical for float32 outputs).

use anyhow::{Result, bail, ensure};
use tch::{Kind, Tensor};

/// A denoising schedule and its solver, stepped in order `0, 1, ..., n - 1`.
pub trait Scheduler {
    /// Builds the schedule for `num_inference_steps` steps and clears any multistep history.
    fn set_timesteps(&mut self, num_inference_steps: usize);

    /// Clears the multistep history (if any) so the same schedule can sample again.
    fn reset(&mut self);

    /// The timestep the model sees at each step (length `n`), in `[0, 1000]`: exactly the value
    /// the Wan pipeline passes to the transformer (float32 for Euler, the integer for UniPC).
    fn timesteps(&self) -> &[f32];

    /// The noise levels, length `n + 1`; `sigmas[i]` belongs to step `i`, the last is 0.
    fn sigmas(&self) -> &[f32];

    /// Advances `sample` (the latents at step `step_index`) with the model's velocity
    /// prediction. Steps must be taken in order from 0 after [`Scheduler::set_timesteps`] or
    /// [`Scheduler::reset`] (a multistep solver keeps history and refuses anything else).
    fn step(&mut self, model_output: &Tensor, step_index: usize, sample: &Tensor) -> Result<Tensor>;

    fn num_inference_steps(&self) -> usize {
        self.timesteps().len()
    }
}

/// `numpy.linspace(start, stop, num)` (endpoint=True) with numpy's exact arithmetic:
/// `y[i] = i * step + start`, `step = (stop - start) / (num - 1)`, and `y[num - 1] = stop`.
pub(crate) fn numpy_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return Vec::new();
    }
    if num == 1 {
        return vec![start];
    }
    let delta = stop - start;
    let step = delta / (num - 1) as f64;
    let mut y: Vec<f64> = if step == 0.0 {
        (0..num).map(|i| i as f64 / (num - 1) as f64 * delta + start).collect()
    } else {
        (0..num).map(|i| i as f64 * step + start).collect()
    };
    y[num - 1] = stop;
    y
}

/// The timestep shift `shift s / (1 + (shift - 1) s)` in float64 (numpy's order of operations).
pub(crate) fn shift_f64(sigma: f64, shift: f64) -> f64 {
    shift * sigma / (1.0 + (shift - 1.0) * sigma)
}

/// diffusers' `FlowMatchEulerDiscreteScheduler` as configured by the Wan pipeline (module doc).
#[derive(Debug, Clone)]
pub struct FlowMatchEuler {
    num_train_timesteps: usize,
    shift: f64,
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
}

impl FlowMatchEuler {
    /// A scheduler with 1000 training timesteps and the given shift (Wan: 5.0 in METHOD.md; the
    /// diffusers docs suggest 3.0 at 480p). Call [`Scheduler::set_timesteps`] before sampling.
    pub fn new(shift: f64) -> Self {
        Self {
            num_train_timesteps: 1000,
            shift,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
        }
    }

    /// [`FlowMatchEuler::new`] followed by `set_timesteps(num_inference_steps)`.
    pub fn with_steps(shift: f64, num_inference_steps: usize) -> Self {
        let mut scheduler = Self::new(shift);
        scheduler.set_timesteps(num_inference_steps);
        scheduler
    }

    pub fn shift(&self) -> f64 {
        self.shift
    }

    /// The constructor's shifted training sigma for training timestep `t` (1..=1000), in
    /// float32 as torch computes it: `shift * s / (1 + (shift - 1) * s)`, `s = t / 1000`.
    fn train_sigma_f32(&self, t: usize) -> f32 {
        let s = t as f32 / self.num_train_timesteps as f32;
        let numerator = self.shift as f32 * s;
        let denominator = 1.0f32 + (self.shift - 1.0) as f32 * s;
        numerator / denominator
    }

    /// One Euler step between two noise levels: `sample + (sigma_next - sigma) * model_output`,
    /// in float32 (the difference of the two float32 sigmas taken in float32, as diffusers does),
    /// returned in the model output's dtype.
    pub fn euler_step(model_output: &Tensor, sigma: f32, sigma_next: f32, sample: &Tensor) -> Tensor {
        let dt = sigma_next - sigma;
        let velocity = model_output.to_kind(Kind::Float);
        let next = sample.to_kind(Kind::Float) + velocity * f64::from(dt);
        next.to_kind(model_output.kind())
    }
}

impl Scheduler for FlowMatchEuler {
    fn set_timesteps(&mut self, num_inference_steps: usize) {
        let n_train = self.num_train_timesteps as f64;
        // __init__: sigma_max / sigma_min are the ends of the already shifted training sigmas
        // (float32), read back as Python floats.
        let sigma_max = f64::from(self.train_sigma_f32(self.num_train_timesteps));
        let sigma_min = f64::from(self.train_sigma_f32(1));
        // set_timesteps: float64 linspace between the timesteps of those, shifted again.
        let spaced = numpy_linspace(sigma_max * n_train, sigma_min * n_train, num_inference_steps);
        self.sigmas = spaced
            .iter()
            .map(|&t| shift_f64(t / n_train, self.shift) as f32)
            .collect();
        self.timesteps = self
            .sigmas
            .iter()
            .map(|&s| s * self.num_train_timesteps as f32)
            .collect();
        self.sigmas.push(0.0);
    }

    fn reset(&mut self) {}

    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    fn step(&mut self, model_output: &Tensor, step_index: usize, sample: &Tensor) -> Result<Tensor> {
        if self.timesteps.is_empty() {
            bail!("FlowMatchEuler::step before set_timesteps");
        }
        ensure!(
            step_index < self.timesteps.len(),
            "step {step_index} out of range: the schedule has {} steps",
            self.timesteps.len()
        );
        Ok(Self::euler_step(
            model_output,
            self.sigmas[step_index],
            self.sigmas[step_index + 1],
            sample,
        ))
    }
}
