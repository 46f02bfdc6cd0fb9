//! Flow-matching sampling with classifier-free guidance and capture hooks: the teacher's
//! sampling loop of the capture stage and of evaluation.
//!
//! - [`scheduler`]: the [`Scheduler`] interface and [`FlowMatchEuler`] (diffusers'
//!   `FlowMatchEulerDiscreteScheduler`, tables bit-equal to diffusers').
//! - [`unipc`]: [`UniPc`], diffusers' `UniPCMultistepScheduler` as the Wan pipeline configures
//!   it (the pipeline's default scheduler).
//! - [`noise`]: seeded noise and seeded random numbers independent of LibTorch's global generator.
//! - here: the [`Denoiser`] and [`Capture`] traits the model implements and calls, and
//!   [`sample`], the Wan pipeline's denoising loop.
//!
//! The loop is diffusers' `WanPipeline.__call__` after the text encoder, for one transformer
//! (Wan2.1; no `boundary_ratio`, no `expand_timesteps`):
//!
//! * for each step `i` with timestep `t = scheduler.timesteps()[i]`, the model gets the latents,
//!   `t` expanded to the batch as float32 (`t.expand(B)`; for UniPC `t` is an integer value) and
//!   the prompt embeddings;
//! * guidance `g > 1`: `v = v_uncond + g (v_cond - v_uncond)` in the model output's dtype, the
//!   unconditional pass with the negative prompt's embeddings; `g <= 1`: only the conditional
//!   pass, `v = v_cond` (the pipeline's `do_classifier_free_guidance = guidance_scale > 1`);
//! * `latents = scheduler.step(v, i, latents)`.
//!
//! **decision: one batched forward for both guidance branches.** Latents, timesteps and text
//! are concatenated `[cond; uncond]` along the batch, which halves the kernel launches and
//! reads each weight once per step; the output is split back. It equals two separate passes up to
//! floating-point reassociation in batched kernels (not bit for bit). When the two text
//! tensors differ in shape (or [`SampleOptions::batch_guidance`] is off, e.g. to save memory)
//! the two passes run separately, conditional first, as the pipeline does.
//!
//! **decision: capture records the conditional branch by default.** At the requested steps the
//! model reports each block's input hidden state `[B, N, dim]` and timestep projection
//! `[B, 6, dim]`; the sampler hands the callback only the conditional rows
//! ([`CaptureBranches::Conditional`]). Stage 1 distils each block's attention on the teacher's
//! conditional trajectory: the unconditional rows sit at the same latents and timestep and
//! differ only through cross-attention to the negative prompt, so they would double the cache
//! (about 100 MB per block, step and sample at 480p) for inputs of nearly the same distribution.
//! [`CaptureBranches::Both`] also hands over the unconditional rows, marked [`Branch::Unconditional`].
//!
//! Reproducible initial noise: `noise::seeded_noise(noise::prompt_seed(job_seed, prompt_index),
//! shape, device)`; see [`noise`].

pub mod noise;
pub mod scheduler;
pub mod unipc;

use anyhow::{Result, bail, ensure};
use tch::{Kind, Tensor};

pub use noise::{SeededRng, prompt_seed, seeded_noise};
pub use scheduler::{FlowMatchEuler, Scheduler};
pub use unipc::{UniPc, UniPcConfig, UniPcSolverType};

/// What the model reports to during a forward pass: the input of every transformer block.
pub trait Capture {
    /// Whether this forward pass records anything. When false the model must not call
    /// [`Capture::block_input`] and should skip any copy or slicing it would make for it.
    fn active(&self) -> bool;

    /// Called by the model once per transformer block, in block order, before the block runs,
    /// with the block's input hidden state `[B, N, dim]` (tokens in (frame, height, width)
    /// raster order) and the timestep projection the block modulates with, `[B, 6, dim]` (the
    /// shared `timestep_proj`, before the block's own `scale_shift_table` is added). The tensors
    /// are only borrowed for the call: an implementation that keeps them must copy them (the
    /// model may reuse their storage), and must not modify them.
    fn block_input(&mut self, block: usize, hidden: &Tensor, timestep_proj: &Tensor);
}

/// A [`Capture`] that records nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoCapture;

impl Capture for NoCapture {
    fn active(&self) -> bool {
        false
    }

    fn block_input(&mut self, _block: usize, _hidden: &Tensor, _timestep_proj: &Tensor) {}
}

/// A velocity-predicting diffusion model (the Wan transformer implements it).
pub trait Denoiser {
    /// The flow-matching velocity `v = noise - x0` predicted at `latents` `[B, C, F, H, W]`,
    /// timestep `[B]` (float32, in `[0, 1000]`, on the latents' device) and prompt embeddings
    /// `text` `[B, L, text_dim]`; same shape as `latents`. The latents arrive in the sampler's
    /// dtype (float32 at the first step); cast them to the compute dtype as the pipeline does
    /// (`latents.to(transformer_dtype)`). Calls `capture` per block when `capture.active()`.
    /// The sampler calls it under `no_grad`.
    fn velocity(&self, latents: &Tensor, timestep: &Tensor, text: &Tensor, capture: &mut dyn Capture) -> Tensor;
}

/// Which guidance branch a captured row belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Branch {
    Conditional,
    Unconditional,
}

/// Which guidance branches the capture hook receives (module doc: the default is a decision).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CaptureBranches {
    #[default]
    Conditional,
    Both,
}

/// One block's input at one captured step, handed to the `on_capture` callback of [`sample`].
/// The tensors are borrowed for the call only (copy them to keep them, e.g. to the CPU).
#[derive(Debug)]
pub struct CapturedBlock<'a> {
    /// The step index in the schedule (`0..n`).
    pub step: usize,
    /// The timestep the model saw at that step.
    pub timestep: f32,
    /// The noise level at that step.
    pub sigma: f32,
    pub block: usize,
    pub branch: Branch,
    /// `[B, N, dim]`: the rows of this branch only.
    pub hidden: &'a Tensor,
    /// `[B, 6, dim]`: the rows of this branch only.
    pub timestep_proj: &'a Tensor,
}

/// Everything [`sample_with`] takes besides the model, the noise, the text and the scheduler.
#[derive(Debug, Clone)]
pub struct SampleOptions<'a> {
    /// The negative prompt's embeddings, `[B, L, text_dim]` or `[1, L, text_dim]` (broadcast);
    /// required when `guidance > 1`.
    pub negative_text: Option<&'a Tensor>,
    /// Classifier-free guidance scale; `<= 1` runs the conditional pass only.
    pub guidance: f64,
    /// Step indices at which the capture hook runs.
    pub capture_steps: &'a [usize],
    pub capture_branches: CaptureBranches,
    /// Run both guidance branches as one batched forward (module doc).
    pub batch_guidance: bool,
}

impl Default for SampleOptions<'_> {
    fn default() -> Self {
        Self {
            negative_text: None,
            guidance: 1.0,
            capture_steps: &[],
            capture_branches: CaptureBranches::Conditional,
            batch_guidance: true,
        }
    }
}

/// Samples from `noise` (the latents at the first step) with classifier-free guidance, calling
/// `on_capture` for every block input at `capture_steps`. The scheduler must have its timesteps
/// set; its history is reset first. Returns the final latents (dtype: see the scheduler).
/// Equivalent to [`sample_with`] with batched guidance and conditional-only capture.
#[allow(clippy::too_many_arguments)]
pub fn sample(
    model: &dyn Denoiser,
    noise: &Tensor,
    text: &Tensor,
    negative_text: Option<&Tensor>,
    guidance: f64,
    scheduler: &mut dyn Scheduler,
    capture_steps: &[usize],
    on_capture: &mut dyn FnMut(&CapturedBlock<'_>),
) -> Result<Tensor> {
    let options = SampleOptions {
        negative_text,
        guidance,
        capture_steps,
        ..SampleOptions::default()
    };
    sample_with(model, noise, text, scheduler, &options, on_capture)
}

/// How the rows of one forward pass map to guidance branches.
#[derive(Debug, Clone, Copy)]
enum Rows {
    /// `[cond; uncond]`, `rows` each.
    Batched { rows: i64 },
    /// One branch, `rows` rows.
    Single { rows: i64, branch: Branch },
}

impl Rows {
    fn total(self) -> i64 {
        match self {
            Rows::Batched { rows } => 2 * rows,
            Rows::Single { rows, .. } => rows,
        }
    }
}

/// The [`Capture`] the sampler hands the model for one forward pass.
struct StepCapture<'c> {
    active: bool,
    step: usize,
    timestep: f32,
    sigma: f32,
    rows: Rows,
    branches: CaptureBranches,
    on_capture: &'c mut dyn FnMut(&CapturedBlock<'_>),
    error: Option<String>,
}

impl StepCapture<'_> {
    fn emit(&mut self, block: usize, branch: Branch, hidden: &Tensor, timestep_proj: &Tensor) {
        if branch == Branch::Unconditional && self.branches == CaptureBranches::Conditional {
            return;
        }
        (self.on_capture)(&CapturedBlock {
            step: self.step,
            timestep: self.timestep,
            sigma: self.sigma,
            block,
            branch,
            hidden,
            timestep_proj,
        });
    }
}

/// Rows `start..start + len` of `t` along the batch.
fn rows_of(t: &Tensor, start: i64, len: i64) -> Tensor {
    t.narrow(0, start, len)
}

impl Capture for StepCapture<'_> {
    fn active(&self) -> bool {
        self.active
    }

    fn block_input(&mut self, block: usize, hidden: &Tensor, timestep_proj: &Tensor) {
        if !self.active || self.error.is_some() {
            return;
        }
        let expected = self.rows.total();
        let (hidden_rows, proj_rows) = (hidden.size().first().copied(), timestep_proj.size().first().copied());
        if hidden.dim() != 3 || timestep_proj.dim() != 3 || hidden_rows != Some(expected) || proj_rows != Some(expected)
        {
            self.error = Some(format!(
                "capture at step {}, block {block}: expected hidden [{expected}, N, dim] and timestep_proj \
                 [{expected}, 6, dim], got {:?} and {:?}",
                self.step,
                hidden.size(),
                timestep_proj.size()
            ));
            return;
        }
        match self.rows {
            Rows::Batched { rows } => {
                let (h, p) = (rows_of(hidden, 0, rows), rows_of(timestep_proj, 0, rows));
                self.emit(block, Branch::Conditional, &h, &p);
                if self.branches == CaptureBranches::Both {
                    let (h, p) = (rows_of(hidden, rows, rows), rows_of(timestep_proj, rows, rows));
                    self.emit(block, Branch::Unconditional, &h, &p);
                }
            }
            Rows::Single { branch, .. } => self.emit(block, branch, hidden, timestep_proj),
        }
    }
}

/// [`sample`] with all options (see [`SampleOptions`]).
pub fn sample_with(
    model: &dyn Denoiser,
    noise: &Tensor,
    text: &Tensor,
    scheduler: &mut dyn Scheduler,
    options: &SampleOptions<'_>,
    on_capture: &mut dyn FnMut(&CapturedBlock<'_>),
) -> Result<Tensor> {
    let _no_grad = tch::no_grad_guard();
    let n = scheduler.num_inference_steps();
    ensure!(n > 0, "the scheduler has no timesteps: call set_timesteps first");
    ensure!(
        noise.dim() >= 1,
        "noise must have a batch dimension, got {:?}",
        noise.size()
    );
    let batch = noise.size()[0];
    ensure!(
        text.dim() == 3 && text.size()[0] == batch,
        "text must be [{batch}, L, text_dim] for {batch} samples, got {:?}",
        text.size()
    );
    if let Some(&bad) = options.capture_steps.iter().find(|&&s| s >= n) {
        bail!("capture step {bad} is out of range: the schedule has {n} steps");
    }
    let guided = options.guidance > 1.0;
    let negative = match (guided, options.negative_text) {
        (false, _) => None,
        (true, None) => bail!(
            "guidance {} > 1 needs the negative prompt's embeddings",
            options.guidance
        ),
        (true, Some(neg)) => {
            ensure!(
                neg.dim() == 3 && (neg.size()[0] == batch || neg.size()[0] == 1),
                "negative text must be [{batch} or 1, L, text_dim], got {:?}",
                neg.size()
            );
            let neg = if neg.size()[0] == batch {
                neg.shallow_clone()
            } else {
                neg.expand([batch, neg.size()[1], neg.size()[2]], false)
            };
            Some(neg.to_kind(text.kind()))
        }
    };
    let batched = options.batch_guidance && negative.as_ref().is_some_and(|neg| neg.size() == text.size());
    let batched_text = match (&negative, batched) {
        (Some(neg), true) => Some(Tensor::cat(&[text, neg], 0)),
        _ => None,
    };

    scheduler.reset();
    let timesteps = scheduler.timesteps().to_vec();
    let sigmas = scheduler.sigmas().to_vec();
    let device = noise.device();
    let mut latents = noise.shallow_clone();
    for step in 0..n {
        let capturing = options.capture_steps.contains(&step);
        let timestep = timesteps[step];
        let mut run = |latents_in: &Tensor, text_in: &Tensor, rows: Rows| -> Result<Tensor> {
            let timestep_in = Tensor::full([rows.total()], f64::from(timestep), (Kind::Float, device));
            let mut capture = StepCapture {
                active: capturing,
                step,
                timestep,
                sigma: sigmas[step],
                rows,
                branches: options.capture_branches,
                on_capture: &mut *on_capture,
                error: None,
            };
            let velocity = model.velocity(latents_in, &timestep_in, text_in, &mut capture);
            if let Some(error) = capture.error {
                bail!(error);
            }
            ensure!(
                velocity.size() == latents_in.size(),
                "the model returned {:?} for latents {:?}",
                velocity.size(),
                latents_in.size()
            );
            Ok(velocity)
        };
        let prediction = match (&negative, &batched_text) {
            (Some(_), Some(both_texts)) => {
                let latents_in = Tensor::cat(&[&latents, &latents], 0);
                let velocity = run(&latents_in, both_texts, Rows::Batched { rows: batch })?;
                let cond = velocity.narrow(0, 0, batch);
                let uncond = velocity.narrow(0, batch, batch);
                guide(&cond, &uncond, options.guidance)
            }
            (Some(neg), None) => {
                let cond = run(
                    &latents,
                    text,
                    Rows::Single {
                        rows: batch,
                        branch: Branch::Conditional,
                    },
                )?;
                let uncond = run(
                    &latents,
                    neg,
                    Rows::Single {
                        rows: batch,
                        branch: Branch::Unconditional,
                    },
                )?;
                guide(&cond, &uncond, options.guidance)
            }
            (None, _) => run(
                &latents,
                text,
                Rows::Single {
                    rows: batch,
                    branch: Branch::Conditional,
                },
            )?,
        };
        latents = scheduler.step(&prediction, step, &latents)?;
    }
    Ok(latents)
}

/// Classifier-free guidance as the Wan pipeline writes it: `uncond + g * (cond - uncond)`,
/// in the dtype of the model output.
pub fn guide(cond: &Tensor, uncond: &Tensor, guidance: f64) -> Tensor {
    uncond + (cond - uncond) * guidance
}
