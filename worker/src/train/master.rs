//! Float32 master weights for parameters that live in bf16 (or f16).
//!
//! The model computes with its parameters in bf16; the optimizer steps float32 masters:
//!
//! ```text
//! loss.backward()                           grads land on the bf16 parameters
//! grads = master.fp32_grads()               upcast to float32 (fp32 params: their own .grad())
//! norm  = clip_grad_norm(&grads, max_norm)  in float32, in place
//! opt.step_with_grads(&grads)               AdamW over master.optimizer_params()
//! master.sync_params()                      round the masters back into the bf16 parameters
//! ```
//!
//! [`MasterWeights::step`] runs those four lines (and refuses a non-finite norm). A float32
//! parameter gets no master copy: the optimizer steps it directly and its `.grad()` is used as
//! is. The masters are part of the training state (`master.{name}`, float32): resuming from
//! them restores the bf16 parameters too, bit for bit, since each is the rounding of its master.

use std::collections::BTreeMap;
use std::path::Path;

use tch::{Kind, Tensor};

use super::adamw::{AdamW, read_state, write_state};
use super::clip::clip_grad_norm;
use super::error::TrainError;

const MASTER: &str = "master.";

#[derive(Debug)]
struct Entry {
    name: String,
    /// The model's parameter (bf16, f16 or float32).
    param: Tensor,
    /// The float32 copy, for a parameter that is not float32.
    master: Option<Tensor>,
}

/// The trainable parameters with float32 masters for the low-precision ones.
#[derive(Debug)]
pub struct MasterWeights {
    entries: Vec<Entry>,
}

impl MasterWeights {
    /// Takes the trainable parameters (shallow clones of the model's tensors); makes a float32
    /// master copy of every bf16 / f16 one.
    pub fn new(params: Vec<(String, Tensor)>) -> Result<Self, TrainError> {
        let entries = params
            .into_iter()
            .map(|(name, param)| {
                let master = match param.kind() {
                    Kind::Float => None,
                    Kind::BFloat16 | Kind::Half => Some(tch::no_grad(|| param.detach().to_kind(Kind::Float))),
                    other => {
                        return Err(TrainError::Parameter {
                            name,
                            problem: format!("{other:?}, expected float32, bf16 or f16"),
                        });
                    }
                };
                Ok(Entry { name, param, master })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { entries })
    }

    /// How many parameters have a float32 master copy.
    pub fn num_masters(&self) -> usize {
        self.entries.iter().filter(|e| e.master.is_some()).count()
    }

    /// What the optimizer steps: the master of each low-precision parameter, the parameter
    /// itself otherwise (shallow clones: the optimizer updates them in place).
    pub fn optimizer_params(&self) -> Vec<(String, Tensor)> {
        self.entries
            .iter()
            .map(|e| (e.name.clone(), e.master.as_ref().unwrap_or(&e.param).shallow_clone()))
            .collect()
    }

    /// The gradients in float32, in parameter order; `None` where a parameter has none. A
    /// float32 parameter's gradient is its `.grad()` itself (clipping it scales `.grad()`).
    pub fn fp32_grads(&self) -> Vec<Option<Tensor>> {
        self.entries
            .iter()
            .map(|e| {
                let grad = e.param.grad();
                if !grad.defined() {
                    None
                } else if grad.kind() == Kind::Float {
                    Some(grad)
                } else {
                    Some(grad.detach().to_kind(Kind::Float))
                }
            })
            .collect()
    }

    /// Copies every master into its parameter (rounding to the parameter's dtype).
    pub fn sync_params(&self) {
        tch::no_grad(|| {
            for entry in &self.entries {
                if let Some(master) = &entry.master {
                    let mut param = entry.param.shallow_clone();
                    param.copy_(master);
                }
            }
        });
    }

    /// Zeroes the parameters' gradients in place (tch cannot reset them to undefined); the next
    /// backward accumulates into the zeros.
    pub fn zero_grad(&self) {
        for entry in &self.entries {
            let mut grad = entry.param.grad();
            if grad.defined() {
                let _ = grad.zero_();
            }
        }
    }

    /// One optimizer step from the parameters' gradients: upcast, clip to `max_grad_norm`
    /// (if given), step `optimizer` (built over [`MasterWeights::optimizer_params`]), copy the
    /// masters back. Returns the gradient norm before clipping (computed even without
    /// clipping). A non-finite norm steps nothing and returns
    /// [`TrainError::NonFiniteGradNorm`] (fatal). Does not zero the gradients.
    pub fn step(&self, optimizer: &mut AdamW, max_grad_norm: Option<f64>) -> Result<f64, TrainError> {
        let grads = self.fp32_grads();
        let norm = clip_grad_norm(grads.iter().flatten(), max_grad_norm.unwrap_or(f64::INFINITY));
        if !norm.is_finite() {
            return Err(TrainError::NonFiniteGradNorm(norm));
        }
        optimizer.step_with_grads(&grads)?;
        self.sync_params();
        Ok(norm)
    }

    /// The masters as `master.{name}` entries (sharing storage).
    pub fn state_dict(&self) -> Vec<(String, Tensor)> {
        self.entries
            .iter()
            .filter_map(|e| {
                e.master
                    .as_ref()
                    .map(|m| (format!("{MASTER}{}", e.name), m.shallow_clone()))
            })
            .collect()
    }

    /// Restores the masters from a map holding every `master.{name}` entry (other prefixes are
    /// ignored) and copies them into the parameters. Fails, changing nothing, naming every
    /// missing, mis-shaped or unexpected entry.
    pub fn load_state_dict(&mut self, state: &BTreeMap<String, Tensor>) -> Result<(), TrainError> {
        let mut problems = Vec::new();
        for key in state.keys() {
            if let Some(name) = key.strip_prefix(MASTER) {
                match self.entries.iter().find(|e| e.name == name) {
                    None => problems.push(format!("`{key}` is for a parameter that is not trained")),
                    Some(e) if e.master.is_none() => {
                        problems.push(format!("`{key}`: `{name}` is float32 and has no master copy"))
                    }
                    Some(_) => {}
                }
            }
        }
        for entry in &self.entries {
            let Some(master) = &entry.master else { continue };
            let key = format!("{MASTER}{}", entry.name);
            match state.get(&key) {
                None => problems.push(format!("`{key}` is missing")),
                Some(t) if t.size() != master.size() => problems.push(format!(
                    "`{key}` has shape {:?}, parameter {:?}",
                    t.size(),
                    master.size()
                )),
                Some(t) if t.kind() != Kind::Float => {
                    problems.push(format!("`{key}` is {:?}, expected float32", t.kind()))
                }
                Some(_) => {}
            }
        }
        if !problems.is_empty() {
            return Err(TrainError::StateMismatch {
                what: "master weights",
                problems,
            });
        }
        tch::no_grad(|| {
            for entry in &mut self.entries {
                if let Some(master) = &mut entry.master {
                    master.copy_(&state[&format!("{MASTER}{}", entry.name)]);
                }
            }
        });
        self.sync_params();
        Ok(())
    }

    /// Writes [`MasterWeights::state_dict`] to a safetensors file.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), TrainError> {
        write_state(path, &self.state_dict())
    }

    /// Reads a file holding the `master.{name}` entries, as [`MasterWeights::load_state_dict`].
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<(), TrainError> {
        self.load_state_dict(&read_state(path)?)
    }
}
