//! What the distill and fine-tune stages share about their parameters: the sorted named
//! trainable tensors, fp32 master copies for the bf16 ones, AdamW over the masters, one
//! optimizer step, and the checkpointable state (the fp32 masters stand in for the bf16
//! parameters they round to; parameters without a master are saved as they are).

use crate::stages::task::TaskError;
use crate::train::{AdamW, AdamWConfig, MasterWeights};
use std::collections::{BTreeMap, HashSet};
use tch::Tensor;
use tch::nn::VarStore;

pub struct Trainer {
    /// Every variable of the store, sorted by name (the same order on every rank).
    pub named: Vec<(String, Tensor)>,
    masters: MasterWeights,
    optimizer: AdamW,
}

impl Trainer {
    pub fn new(vs: &VarStore, lr: f64, weight_decay: f64) -> Result<Trainer, TaskError> {
        let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let masters = MasterWeights::new(named.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect())
            .map_err(TaskError::fatal)?;
        let optimizer = AdamW::new(
            masters.optimizer_params(),
            AdamWConfig {
                lr,
                weight_decay,
                ..AdamWConfig::default()
            },
        )
        .map_err(TaskError::fatal)?;
        Ok(Trainer {
            named,
            masters,
            optimizer,
        })
    }

    /// The gradients to reduce across a gang, in name order (undefined ones skipped).
    pub fn grads(&self) -> Vec<Tensor> {
        self.named
            .iter()
            .map(|(_, p)| p.grad())
            .filter(|g| g.defined())
            .collect()
    }

    /// Clips (when given), steps AdamW on the masters, rounds them back, zeroes the grads.
    /// Returns the pre-clip gradient norm; a non-finite one is fatal.
    pub fn step(&mut self, clip: Option<f64>) -> Result<f64, TaskError> {
        let norm = self.masters.step(&mut self.optimizer, clip).map_err(TaskError::fatal)?;
        self.masters.zero_grad();
        Ok(norm)
    }

    /// The checkpointable state (tensors share storage with the live ones: snapshot them).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mastered: HashSet<String> = self
            .masters
            .state_dict()
            .into_iter()
            .map(|(n, _)| n.trim_start_matches("master.").to_string())
            .collect();
        let mut state: Vec<(String, Tensor)> = self
            .named
            .iter()
            .filter(|(n, _)| !mastered.contains(n))
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        state.extend(self.masters.state_dict());
        state.extend(self.optimizer.state_dict());
        state
    }

    /// Restores [`Trainer::state`]: the saved parameters, the masters (and the bf16
    /// parameters rounded from them), AdamW's moments and step counts.
    pub fn restore(&mut self, state: &BTreeMap<String, Tensor>) -> Result<(), TaskError> {
        tch::no_grad(|| {
            for (name, param) in &self.named {
                if let Some(saved) = state.get(name) {
                    let mut param = param.shallow_clone();
                    param.copy_(saved);
                }
            }
        });
        self.masters.load_state_dict(state).map_err(TaskError::fatal)?;
        self.masters.sync_params();
        self.optimizer.load_state_dict(state).map_err(TaskError::fatal)
    }
}
