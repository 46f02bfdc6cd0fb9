//! UniPC (Zhao et al. 2023), the Wan pipeline's default scheduler, as diffusers'
//! `UniPCMultistepScheduler` runs it for Wan: `prediction_type="flow_prediction"`,
//! `use_flow_sigmas=True`, `flow_shift`, `solver_order=2`, `solver_type="bh2"`,
//! `predict_x0=True`, `lower_order_final=True`, `final_sigmas_type="zero"`, no corrector
//! disabled, no thresholding, no `solver_p`, `timestep_spacing="linspace"`.
//!
//! Schedule: `sigmas = linspace(1, 1/1000, n + 1)[:-1]` (float64), shifted, the first one
//! moved from 1 to `1 - 1e-6`; the model's timestep is `int64(1000 sigma)` (truncated, from the
//! float64 sigma), so the transformer sees integers here; sigmas are then rounded to float32 and
//! a final 0 appended.
//!
//! Step `i` (model output `v`, sample `x`): the data prediction `m = x - sigma_i v`; if `i > 0`,
//! the UniC corrector refines `x` with `m` and the history; then the UniP predictor of order
//! `min(solver_order, steps left, steps taken + 1)` produces the next sample. The coefficients
//! (log-SNR steps `h`, `expm1(-h)`, the `rho`s) are scalars here computed in float64 from the
//! float32 sigmas, where diffusers keeps them as float32 0-dim tensors; the tensor arithmetic is
//! float32 in the same order. Measured against diffusers' golden trajectories: see
//! `tests/sampler.rs` (relative differences around 1e-7).
//!
//! `solver_order` 1 to 3 and `bh1` are implemented too and checked against diffusers, with one
//! deliberate difference: with `bh1` and a final sigma of 0 diffusers' last step computes
//! `B(h) * 0 = -inf * 0 = NaN`; here a first-order step has no correction term to multiply, so
//! the last sample is the data prediction, as with `bh2`.
//!
//! Dtypes: the data predictions are float32 (the model output is upcast first; diffusers
//! multiplies `sigma * v` in the model output's dtype); the returned sample has the input
//! sample's dtype, so with float32 noise the latents stay float32 throughout, as in the pipeline.

use anyhow::{Result, bail, ensure};
use tch::{Kind, Tensor};

use super::scheduler::{Scheduler, numpy_linspace, shift_f64};

/// UniPC's B(h): `bh1` is `B(h) = h`, `bh2` is `B(h) = expm1(h)` (Wan uses `bh2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UniPcSolverType {
    Bh1,
    Bh2,
}

#[derive(Debug, Clone)]
pub struct UniPcConfig {
    pub num_train_timesteps: usize,
    pub flow_shift: f64,
    pub solver_order: usize,
    pub solver_type: UniPcSolverType,
    pub lower_order_final: bool,
    /// Steps (indices) after which the corrector is skipped; diffusers' `disable_corrector`.
    pub disable_corrector: Vec<usize>,
}

impl Default for UniPcConfig {
    /// The Wan pipeline's configuration with `flow_shift = 5.0` (METHOD.md; the diffusers docs
    /// suggest 3.0 for 480p and 5.0 for 720p).
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            flow_shift: 5.0,
            solver_order: 2,
            solver_type: UniPcSolverType::Bh2,
            lower_order_final: true,
            disable_corrector: Vec::new(),
        }
    }
}

/// diffusers' `UniPCMultistepScheduler` in its flow-matching configuration (module doc).
#[derive(Debug)]
pub struct UniPc {
    config: UniPcConfig,
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    /// Data predictions of the last `solver_order` steps, oldest first.
    model_outputs: Vec<Option<Tensor>>,
    lower_order_nums: usize,
    /// The order the predictor used at the previous step (the corrector reuses it).
    this_order: usize,
    last_sample: Option<Tensor>,
    step_index: usize,
}

/// log(alpha / sigma) for a flow sigma: alpha = 1 - sigma. +inf at sigma = 0.
fn lambda(sigma: f32) -> f64 {
    let sigma = f64::from(sigma);
    (1.0 - sigma).ln() - sigma.ln()
}

/// Solves the small dense system `a x = b` (Gaussian elimination, partial pivoting, float64).
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .expect("non-empty");
        a.swap(col, pivot);
        b.swap(col, pivot);
        let (upper, lower) = a.split_at_mut(col + 1);
        let pivot_row = &upper[col];
        for (offset, row) in lower.iter_mut().enumerate() {
            let factor = row[col] / pivot_row[col];
            for (value, pivot_value) in row[col..].iter_mut().zip(&pivot_row[col..]) {
                *value -= factor * pivot_value;
            }
            b[col + 1 + offset] -= factor * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let tail: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - tail) / a[row][row];
    }
    x
}

/// The shared coefficients of the predictor and the corrector for one interval.
struct Coefficients {
    /// `(lambda_si - lambda_s0) / h` for the older history entries, then 1.
    rks: Vec<f64>,
    h_phi_1: f64,
    b_h: f64,
    /// `R[i][j] = rks[j]^i` and `b[i]`, `i` in `0..order`.
    r: Vec<Vec<f64>>,
    b: Vec<f64>,
}

impl Coefficients {
    fn new(solver_type: UniPcSolverType, lambda_t: f64, lambda_s0: f64, history_lambdas: &[f64], order: usize) -> Self {
        let h = lambda_t - lambda_s0;
        let mut rks: Vec<f64> = history_lambdas.iter().map(|&l| (l - lambda_s0) / h).collect();
        rks.push(1.0);
        // predict_x0: hh = -h.
        let hh = -h;
        let h_phi_1 = hh.exp_m1();
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let b_h = match solver_type {
            UniPcSolverType::Bh1 => hh,
            UniPcSolverType::Bh2 => hh.exp_m1(),
        };
        let mut factorial = 1.0;
        let mut r = Vec::with_capacity(order);
        let mut b = Vec::with_capacity(order);
        for i in 1..=order {
            r.push(rks.iter().map(|&rk| rk.powi(i as i32 - 1)).collect());
            b.push(h_phi_k * factorial / b_h);
            factorial *= (i + 1) as f64;
            h_phi_k = h_phi_k / hh - 1.0 / factorial;
        }
        Self {
            rks,
            h_phi_1,
            b_h,
            r,
            b,
        }
    }
}

impl UniPc {
    pub fn new(config: UniPcConfig) -> Self {
        assert!(config.solver_order >= 1, "solver_order must be at least 1");
        let order = config.solver_order;
        Self {
            config,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            model_outputs: (0..order).map(|_| None).collect(),
            lower_order_nums: 0,
            this_order: 0,
            last_sample: None,
            step_index: 0,
        }
    }

    /// [`UniPc::new`] followed by `set_timesteps(num_inference_steps)`.
    pub fn with_steps(config: UniPcConfig, num_inference_steps: usize) -> Self {
        let mut scheduler = Self::new(config);
        scheduler.set_timesteps(num_inference_steps);
        scheduler
    }

    pub fn config(&self) -> &UniPcConfig {
        &self.config
    }

    fn history(&self, back: usize) -> &Tensor {
        let len = self.model_outputs.len();
        self.model_outputs[len - 1 - back]
            .as_ref()
            .expect("UniPC history entry present")
    }

    /// UniP: the next sample from `x` at step `i` with the last `order` data predictions.
    fn predictor(&self, x: &Tensor, order: usize) -> Tensor {
        let i = self.step_index;
        let sigma_t = self.sigmas[i + 1];
        let sigma_s0 = self.sigmas[i];
        let alpha_t = 1.0 - f64::from(sigma_t);
        let lambda_s0 = lambda(sigma_s0);
        let history_lambdas: Vec<f64> = (1..order).map(|k| lambda(self.sigmas[i - k])).collect();
        let c = Coefficients::new(
            self.config.solver_type,
            lambda(sigma_t),
            lambda_s0,
            &history_lambdas,
            order,
        );
        let m0 = self.history(0);

        let x_t = x * (f64::from(sigma_t) / f64::from(sigma_s0)) - m0 * (alpha_t * c.h_phi_1);
        if order == 1 {
            return x_t;
        }
        let rhos_p = if order == 2 {
            vec![0.5]
        } else {
            let r = c.r[..order - 1].iter().map(|row| row[..order - 1].to_vec()).collect();
            solve(r, c.b[..order - 1].to_vec())
        };
        let mut pred_res: Option<Tensor> = None;
        for (k, rho) in rhos_p.iter().enumerate() {
            let d1 = (self.history(k + 1) - m0) / c.rks[k];
            let term = d1 * *rho;
            pred_res = Some(match pred_res {
                None => term,
                Some(acc) => acc + term,
            });
        }
        let pred_res = pred_res.expect("order >= 2 has history");
        x_t - pred_res * (alpha_t * c.b_h)
    }

    /// UniC: the corrected sample at step `i`, recomputed from `last_sample` (step `i - 1`) with
    /// the new data prediction `model_t`, before the history shifts. (diffusers takes the
    /// uncorrected sample too, and never reads it.)
    fn corrector(&self, model_t: &Tensor, last_sample: &Tensor, order: usize) -> Tensor {
        let i = self.step_index;
        let sigma_t = self.sigmas[i];
        let sigma_s0 = self.sigmas[i - 1];
        let alpha_t = 1.0 - f64::from(sigma_t);
        let lambda_s0 = lambda(sigma_s0);
        let history_lambdas: Vec<f64> = (1..order).map(|k| lambda(self.sigmas[i - (k + 1)])).collect();
        let c = Coefficients::new(
            self.config.solver_type,
            lambda(sigma_t),
            lambda_s0,
            &history_lambdas,
            order,
        );
        let m0 = self.history(0);
        let rhos_c = if order == 1 {
            vec![0.5]
        } else {
            solve(c.r.clone(), c.b.clone())
        };

        let x_t = last_sample * (f64::from(sigma_t) / f64::from(sigma_s0)) - m0 * (alpha_t * c.h_phi_1);
        let d1_t = model_t - m0;
        let mut correction = d1_t * rhos_c[order - 1];
        for (k, rho) in rhos_c[..order - 1].iter().enumerate() {
            let d1 = (self.history(k + 1) - m0) / c.rks[k];
            correction = d1 * *rho + correction;
        }
        x_t - correction * (alpha_t * c.b_h)
    }
}

impl Scheduler for UniPc {
    fn set_timesteps(&mut self, num_inference_steps: usize) {
        let n_train = self.config.num_train_timesteps as f64;
        let mut spaced = numpy_linspace(1.0, 1.0 / n_train, num_inference_steps + 1);
        spaced.truncate(num_inference_steps);
        let mut sigmas: Vec<f64> = spaced.iter().map(|&s| shift_f64(s, self.config.flow_shift)).collect();
        if let Some(first) = sigmas.first_mut() {
            // diffusers: avoid log(0) of alpha at sigma = 1.
            if (*first - 1.0).abs() < 1e-6 {
                *first -= 1e-6;
            }
        }
        self.timesteps = sigmas.iter().map(|&s| (s * n_train) as i64 as f32).collect();
        self.sigmas = sigmas.iter().map(|&s| s as f32).collect();
        self.sigmas.push(0.0);
        self.reset();
    }

    fn reset(&mut self) {
        self.model_outputs = (0..self.config.solver_order).map(|_| None).collect();
        self.lower_order_nums = 0;
        self.this_order = 0;
        self.last_sample = None;
        self.step_index = 0;
    }

    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    fn step(&mut self, model_output: &Tensor, step_index: usize, sample: &Tensor) -> Result<Tensor> {
        if self.timesteps.is_empty() {
            bail!("UniPc::step before set_timesteps");
        }
        ensure!(
            step_index == self.step_index && step_index < self.timesteps.len(),
            "UniPC steps must run in order: expected step {} of {}, got {step_index} (reset() to start over)",
            self.step_index,
            self.timesteps.len()
        );
        let i = self.step_index;
        let out_kind = sample.kind();
        let x = sample.to_kind(Kind::Float);
        // flow_prediction with predict_x0: the data prediction x0 = x - sigma v.
        let model_x0 = &x - model_output.to_kind(Kind::Float) * f64::from(self.sigmas[i]);

        let use_corrector = i > 0 && !self.config.disable_corrector.contains(&(i - 1)) && self.last_sample.is_some();
        let x = if use_corrector {
            let last = self.last_sample.as_ref().expect("checked");
            self.corrector(&model_x0, last, self.this_order)
        } else {
            x
        };

        self.model_outputs.rotate_left(1);
        let last = self.model_outputs.len() - 1;
        self.model_outputs[last] = Some(model_x0);

        let order = self.config.solver_order;
        let this_order = if self.config.lower_order_final {
            order.min(self.timesteps.len() - i)
        } else {
            order
        };
        self.this_order = this_order.min(self.lower_order_nums + 1);
        let prev = self.predictor(&x, self.this_order);
        self.last_sample = Some(x);
        if self.lower_order_nums < order {
            self.lower_order_nums += 1;
        }
        self.step_index += 1;
        Ok(prev.to_kind(out_kind))
    }
}
