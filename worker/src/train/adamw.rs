//! AdamW with PyTorch's `torch.optim.AdamW` semantics, and state that checkpoints exactly.
//!
//! Per parameter `p` with gradient `g`, at its own step count `t`, PyTorch's single-tensor path
//! (the default on CPU) op for op, including its `lerp_`, `addcmul_` and `addcdiv_` and the
//! float64 bias corrections, so the results on CPU are bit-identical to PyTorch's
//! (`tests/train.rs` checks it against golden numbers):
//!
//! ```text
//! t += 1
//! p *= 1 - lr * weight_decay                      (decoupled weight decay)
//! m.lerp_(g, 1 - beta1)                           (m = beta1 m + (1 - beta1) g)
//! v = v * beta2 + (1 - beta2) g g
//! step_size = lr / (1 - beta1^t)
//! denom = sqrt(v) / sqrt(1 - beta2^t) + eps
//! p += -step_size * m / denom                     (p -= lr m_hat / (sqrt(v_hat) + eps))
//! ```
//!
//! A parameter whose gradient is absent (`None`, or an undefined tensor) is skipped entirely,
//! step count included, as PyTorch skips `p.grad is None`. On CUDA PyTorch defaults to its
//! foreach implementation (the same arithmetic, batched; the fused kernel only on request), so
//! GPU numbers agree to rounding, not bit for bit.
//!
//! Parameters, gradients and moments are float32 (bf16 parameters go through
//! [`super::master::MasterWeights`]). The state is a name -> tensor map, `exp_avg.{name}`,
//! `exp_avg_sq.{name}` (float32, the parameter's shape) and `step.{name}` (int64 scalar), written
//! to and read from safetensors; a run resumed from it takes bit-identical steps on the same
//! device. Loading validates every entry first and changes nothing unless all fit.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use tch::{Kind, Tensor};

use super::error::TrainError;

/// Hyper-parameters; the defaults are PyTorch's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
        }
    }
}

#[derive(Debug)]
struct ParamState {
    name: String,
    param: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: u64,
}

/// AdamW over a list of named float32 parameters, stepped in place.
#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    params: Vec<ParamState>,
}

const EXP_AVG: &str = "exp_avg.";
const EXP_AVG_SQ: &str = "exp_avg_sq.";
const STEP: &str = "step.";

impl AdamW {
    /// An optimizer over `params` (float32 tensors, typically leaves that require grad; the
    /// optimizer keeps shallow clones and updates their storage in place). Names must be unique.
    pub fn new(params: Vec<(String, Tensor)>, config: AdamWConfig) -> Result<Self, TrainError> {
        let mut seen = HashSet::new();
        let mut states = Vec::with_capacity(params.len());
        for (name, param) in params {
            if !seen.insert(name.clone()) {
                return Err(TrainError::Parameter {
                    name,
                    problem: "listed twice".into(),
                });
            }
            if !param.defined() {
                return Err(TrainError::Parameter {
                    name,
                    problem: "undefined tensor".into(),
                });
            }
            if param.kind() != Kind::Float {
                return Err(TrainError::Parameter {
                    name,
                    problem: format!("{:?}, expected float32 (use MasterWeights for bf16)", param.kind()),
                });
            }
            let exp_avg = param.zeros_like().detach();
            let exp_avg_sq = param.zeros_like().detach();
            states.push(ParamState {
                name,
                param,
                exp_avg,
                exp_avg_sq,
                step: 0,
            });
        }
        Ok(Self { config, params: states })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Sets the learning rate for the next steps (a schedule lives with the caller).
    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|p| p.name.as_str())
    }

    /// The steps taken by parameter `name` (PyTorch's `state[p]["step"]`).
    pub fn step_count(&self, name: &str) -> Option<u64> {
        self.params.iter().find(|p| p.name == name).map(|p| p.step)
    }

    /// The largest step count over the parameters: the number of optimizer steps for a model
    /// whose parameters all get gradients every step.
    pub fn steps(&self) -> u64 {
        self.params.iter().map(|p| p.step).max().unwrap_or(0)
    }

    /// One step with the parameters' own `.grad()` (float32 parameters trained directly).
    pub fn step(&mut self) -> Result<(), TrainError> {
        let grads: Vec<Option<Tensor>> = self
            .params
            .iter()
            .map(|p| {
                let grad = p.param.grad();
                grad.defined().then_some(grad)
            })
            .collect();
        self.step_with_grads(&grads)
    }

    /// One step with explicit gradients, in parameter order (float32, each of its parameter's
    /// shape and device; `None` skips that parameter). Everything is validated before anything
    /// is changed.
    pub fn step_with_grads(&mut self, grads: &[Option<Tensor>]) -> Result<(), TrainError> {
        if grads.len() != self.params.len() {
            return Err(TrainError::Gradient {
                name: "*".into(),
                problem: format!("{} gradients for {} parameters", grads.len(), self.params.len()),
            });
        }
        for (state, grad) in self.params.iter().zip(grads) {
            let Some(grad) = grad.as_ref().filter(|g| g.defined()) else {
                continue;
            };
            let problem = if grad.kind() != Kind::Float {
                Some(format!("{:?}, expected float32", grad.kind()))
            } else if grad.size() != state.param.size() {
                Some(format!("shape {:?}, parameter {:?}", grad.size(), state.param.size()))
            } else if grad.device() != state.param.device() {
                Some(format!(
                    "on {:?}, parameter on {:?}",
                    grad.device(),
                    state.param.device()
                ))
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(TrainError::Gradient {
                    name: state.name.clone(),
                    problem,
                });
            }
        }
        let AdamWConfig {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.config;
        tch::no_grad(|| {
            for (state, grad) in self.params.iter_mut().zip(grads) {
                let Some(grad) = grad.as_ref().filter(|g| g.defined()) else {
                    continue;
                };
                state.step += 1;
                let step = state.step as f64;
                if weight_decay != 0.0 {
                    let _ = state.param.g_mul_scalar_(1.0 - lr * weight_decay);
                }
                let _ = state.exp_avg.lerp_(grad, 1.0 - beta1);
                let _ = state.exp_avg_sq.g_mul_scalar_(beta2);
                // addcmul_(g, g, value = 1 - beta2): self + (value * g) * g.
                let _ = state.exp_avg_sq.addcmul_(&(grad * (1.0 - beta2)), grad);
                let bias_correction1 = 1.0 - beta1.powf(step);
                let bias_correction2 = 1.0 - beta2.powf(step);
                let step_size = lr / bias_correction1;
                let bias_correction2_sqrt = bias_correction2.powf(0.5);
                let denom = state.exp_avg_sq.sqrt() / bias_correction2_sqrt + eps;
                // addcdiv_(m, denom, value = -step_size): self + (value * m) / denom.
                let _ = state.param.addcdiv_(&(&state.exp_avg * -step_size), &denom);
            }
        });
        Ok(())
    }

    /// The state as a name -> tensor list (`exp_avg.{name}`, `exp_avg_sq.{name}`,
    /// `step.{name}`), sharing storage with the optimizer (copy before stepping again if kept).
    pub fn state_dict(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(3 * self.params.len());
        for p in &self.params {
            out.push((format!("{EXP_AVG}{}", p.name), p.exp_avg.shallow_clone()));
            out.push((format!("{EXP_AVG_SQ}{}", p.name), p.exp_avg_sq.shallow_clone()));
            out.push((format!("{STEP}{}", p.name), Tensor::from(p.step as i64)));
        }
        out
    }

    /// Restores the state from a map holding (at least) every entry of [`AdamW::state_dict`];
    /// entries under other prefixes are ignored, so one checkpoint file can hold parameters,
    /// master weights and optimizer state together. Fails, changing nothing, naming every
    /// missing, mis-shaped or unknown entry.
    pub fn load_state_dict(&mut self, state: &BTreeMap<String, Tensor>) -> Result<(), TrainError> {
        let mut problems = Vec::new();
        let names: HashSet<&str> = self.params.iter().map(|p| p.name.as_str()).collect();
        for key in state.keys() {
            for prefix in [EXP_AVG_SQ, EXP_AVG, STEP] {
                if let Some(name) = key.strip_prefix(prefix) {
                    if !names.contains(name) {
                        problems.push(format!("`{key}` is for a parameter the optimizer does not have"));
                    }
                    break;
                }
            }
        }
        for p in &self.params {
            for prefix in [EXP_AVG, EXP_AVG_SQ] {
                let key = format!("{prefix}{}", p.name);
                match state.get(&key) {
                    None => problems.push(format!("`{key}` is missing")),
                    Some(t) if t.size() != p.param.size() => problems.push(format!(
                        "`{key}` has shape {:?}, parameter {:?}",
                        t.size(),
                        p.param.size()
                    )),
                    Some(t) if t.kind() != Kind::Float => {
                        problems.push(format!("`{key}` is {:?}, expected float32", t.kind()))
                    }
                    Some(_) => {}
                }
            }
            let key = format!("{STEP}{}", p.name);
            match state.get(&key) {
                None => problems.push(format!("`{key}` is missing")),
                Some(t) if t.numel() != 1 || t.kind() != Kind::Int64 => {
                    problems.push(format!("`{key}` must be one int64, got {:?} {:?}", t.kind(), t.size()))
                }
                Some(t) if t.reshape([]).int64_value(&[]) < 0 => problems.push(format!("`{key}` is negative")),
                Some(_) => {}
            }
        }
        if !problems.is_empty() {
            return Err(TrainError::StateMismatch {
                what: "optimizer state",
                problems,
            });
        }
        tch::no_grad(|| {
            for p in &mut self.params {
                p.exp_avg.copy_(&state[&format!("{EXP_AVG}{}", p.name)]);
                p.exp_avg_sq.copy_(&state[&format!("{EXP_AVG_SQ}{}", p.name)]);
                p.step = state[&format!("{STEP}{}", p.name)].reshape([]).int64_value(&[]) as u64;
            }
        });
        Ok(())
    }

    /// Writes [`AdamW::state_dict`] to a safetensors file.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), TrainError> {
        write_state(path, &self.state_dict())
    }

    /// Reads a file written by [`AdamW::save`] (or any file holding those entries) and
    /// restores the state, as [`AdamW::load_state_dict`].
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<(), TrainError> {
        self.load_state_dict(&read_state(path)?)
    }
}

/// Writes named tensors to a safetensors file (moved to the CPU, made contiguous).
pub fn write_state(path: impl AsRef<Path>, tensors: &[(String, Tensor)]) -> Result<(), TrainError> {
    let cpu: Vec<(&str, Tensor)> = tensors
        .iter()
        .map(|(name, t)| (name.as_str(), t.detach().to_device(tch::Device::Cpu).contiguous()))
        .collect();
    Tensor::write_safetensors(&cpu, path)?;
    Ok(())
}

/// Reads a safetensors file into a name -> tensor map (on the CPU).
pub fn read_state(path: impl AsRef<Path>) -> Result<BTreeMap<String, Tensor>, TrainError> {
    Ok(Tensor::read_safetensors(path)?.into_iter().collect())
}
