//! Trains a testbed teacher from scratch: the project's Wan model ([`WanTransformer`]) on
//! freshly rendered clips ([`super::data`]), with the fine-tune stage's flow matching
//! (`x_sigma = (1 - sigma) x0 + sigma eps`, target `eps - x0`, `t = 1000 sigma`, sigma a shifted
//! uniform), AdamW on fp32 masters of bf16 weights, gradient clipping, a warm-up / constant /
//! decay learning rate, periodic checkpoints and resume. Writes the folder of [`super::folder`].
//!
//! **Resume.** Every `checkpoint_every` steps (and when a call ends) the fp32 weights, AdamW's
//! moments and the loss curve go to `checkpoints/` through a [`SnapshotWriter`] (manifest
//! last). A call starts from the newest complete checkpoint, if any, and refuses one made with
//! other settings (anything but `steps`). Since every batch, noise and sigma is a function of
//! the seed and the position only, a run killed at any moment and started again ends with the
//! same weights as one that was never interrupted, bit for bit on the CPU (the test does it).
//! `steps` may be raised to train on; the schedule is a function of (step, steps), so the
//! decay then moves to the new end.
//!
//! **Budgets.** `steps` is the run's total; [`TrainOptions::minutes`] bounds one call, which
//! then checkpoints and writes the teacher as it is (`train.json` says `complete: false`), so
//! training continues across calls.
//!
//! **decision: a seeded initialisation, not LibTorch's.** LibTorch's generator is process-wide
//! (tests in parallel threads would disturb each other's), so every weight is drawn again from
//! its own [`SeededRng`] stream: matrices U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as PyTorch's
//! default, biases 0, norms 1, modulation tables N(0, 1/dim), and the output projection 0
//! (DiT's zero-initialised last layer: the untrained teacher predicts zero velocity).
//!
//! Its own small optimiser wrapper rather than `stages::trainer::Trainer`: this loop needs a
//! learning-rate schedule, and its checkpoint stores fp32 weights by name whatever the dtype,
//! so a run may move between the CPU (fp32) and a GPU (bf16 with masters).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::data::{NoiseSource, PURPOSE_DEVICE_NOISE, Prefetcher, TrainingData, stream_seed};
use super::description::GeneratorDescription;
use super::folder::{DESCRIPTION_FILE, TestbedDescription, TestbedFolder};
use super::latent::LatentNorm;
use super::render::render;
use super::settings::TrainSettings;
use crate::model::{WanConfig, WanTransformer, weights};
use crate::sampler::SeededRng;
use crate::storage::{Checkpointer, SnapshotWriter, Storage, tensors};
use crate::train::{AdamW, AdamWConfig, MasterWeights, flow_matching_loss, noisy, timestep_of, velocity_target};

const PURPOSE_INIT: u64 = 0x7E57_0010;
const STATE_FILE: &str = "state.safetensors";

/// What the progress callback tells the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Checkpoint, write the teacher as it is and return (as when the minutes run out).
    Stop,
}

/// One step's progress, handed to [`TrainOptions::on_progress`] after every step.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Steps done (the step just taken is `step - 1`).
    pub step: u64,
    pub steps: u64,
    /// The step this call started (resumed) from.
    pub call_first_step: u64,
    pub loss: f64,
    /// Mean loss of the last `log_every` steps.
    pub recent_loss: f64,
    pub lr: f64,
    /// Over this call's steps.
    pub steps_per_second: f64,
    pub eta_seconds: f64,
    /// Whether this step is one a progress line is due at (every `log_every`, and the last).
    pub report: bool,
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let eta = self.eta_seconds.round() as u64;
        write!(
            f,
            "step {}/{}  loss {:.4}  lr {:.2e}  {:.2} steps/s  ETA {}m{:02}s",
            self.step,
            self.steps,
            self.recent_loss,
            self.lr,
            self.steps_per_second,
            eta / 60,
            eta % 60
        )
    }
}

/// How one call trains.
pub struct TrainOptions<'a> {
    pub device: Device,
    /// `Kind::Float`, or `Kind::BFloat16` (fp32 masters; diffusers' fp32 modules stay fp32).
    pub kind: Kind,
    /// Wall-clock budget of this call.
    pub minutes: Option<f64>,
    /// Threads rendering clips.
    pub render_threads: usize,
    pub on_progress: &'a mut dyn FnMut(&Progress) -> Flow,
}

/// Why a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoppedBy {
    /// All `steps` are done.
    Steps,
    Minutes,
    Caller,
}

/// One call of `train`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    pub first_step: u64,
    pub last_step: u64,
    pub seconds: f64,
    pub steps_per_second: f64,
    pub device: String,
    pub dtype: String,
    pub noise: NoiseSource,
    pub stopped_by: StoppedBy,
}

/// The state a checkpoint's manifest carries besides the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CheckpointMeta {
    step: u64,
    settings: TrainSettings,
    loss_curve: Vec<f64>,
    train_seconds: f64,
    calls: Vec<CallRecord>,
}

/// `train.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainRecord {
    pub settings: TrainSettings,
    pub step: u64,
    pub complete: bool,
    pub parameters: i64,
    pub tokens_per_clip: i64,
    pub samples_seen: u64,
    /// Training time over all recorded calls (a killed call's time is not recorded).
    pub train_seconds: f64,
    pub latent_norm: LatentNorm,
    /// Mean loss of the last `log_every` steps.
    pub final_loss: f64,
    pub loss_curve: Vec<f64>,
    pub calls: Vec<CallRecord>,
}

/// The run's description and prompts, computed before any training (deterministic).
pub fn describe(settings: &TrainSettings) -> Result<(TestbedDescription, super::selection::SelectedPrompts)> {
    settings.validate()?;
    let selected = settings.prompts.draw()?;
    let clips: Vec<_> = selected
        .teacher_train
        .iter()
        .take(settings.norm_clips)
        .map(|p| render(p, &settings.geometry))
        .collect();
    let description = TestbedDescription {
        generator: GeneratorDescription::new(settings.geometry.clone(), settings.text_len, settings.text_dim)?,
        latent_norm: LatentNorm::of_videos(&clips)?,
        prompts: settings.prompts.clone(),
    };
    Ok((description, selected))
}

/// Redraws every weight from its own seeded stream (module doc).
pub fn init_weights(vs: &VarStore, seed: u64) {
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (index, (name, var)) in named.iter().enumerate() {
            let size = var.size();
            let numel: i64 = size.iter().product();
            let mut rng = SeededRng::new(stream_seed(seed, PURPOSE_INIT, index as u64));
            let values: Vec<f32> = if name.ends_with("scale_shift_table") {
                let std = 1.0 / (*size.last().expect("a table has a width") as f32).sqrt();
                rng.normal_f32(numel as usize).into_iter().map(|v| v * std).collect()
            } else if name.starts_with("proj_out.") || name.ends_with(".bias") {
                vec![0.0; numel as usize]
            } else if size.len() >= 2 {
                let bound = 1.0 / (size[1..].iter().product::<i64>() as f64).sqrt();
                (0..numel)
                    .map(|_| ((2.0 * rng.uniform_open() - 1.0) * bound) as f32)
                    .collect()
            } else {
                vec![1.0; numel as usize]
            };
            let mut var = var.shallow_clone();
            var.copy_(&Tensor::from_slice(&values).view(size.as_slice()));
        }
    });
}

/// A freshly initialised teacher: fp32 on `device`, then `kind` (diffusers' fp32 modules kept).
pub fn init_model(cfg: &WanConfig, seed: u64, device: Device, kind: Kind) -> (VarStore, WanTransformer) {
    let vs = VarStore::new(device);
    let model = WanTransformer::new(&vs.root(), cfg);
    init_weights(&vs, seed);
    if kind != Kind::Float {
        weights::cast_like_diffusers(&vs, kind);
    }
    (vs, model)
}

/// AdamW over fp32 masters, with a state of fp32 weights by name plus AdamW's moments.
struct Optimiser {
    masters: MasterWeights,
    adamw: AdamW,
    clip: Option<f64>,
}

impl Optimiser {
    fn new(vs: &VarStore, settings: &TrainSettings) -> Result<Optimiser> {
        let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let masters = MasterWeights::new(named)?;
        let adamw = AdamW::new(
            masters.optimizer_params(),
            AdamWConfig {
                lr: settings.lr,
                weight_decay: settings.weight_decay,
                ..AdamWConfig::default()
            },
        )?;
        Ok(Optimiser {
            masters,
            adamw,
            clip: (settings.grad_clip > 0.0).then_some(settings.grad_clip),
        })
    }

    fn step(&mut self, lr: f64) -> Result<f64> {
        self.adamw.set_lr(lr);
        let norm = self.masters.step(&mut self.adamw, self.clip)?;
        self.masters.zero_grad();
        Ok(norm)
    }

    /// The fp32 weights (masters of bf16 parameters, fp32 parameters themselves), by name.
    fn weights(&self) -> Vec<(String, Tensor)> {
        self.masters.optimizer_params()
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut state = self.weights();
        state.extend(self.adamw.state_dict());
        state
    }

    fn restore(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()> {
        let weights = self.weights();
        let missing: Vec<&str> = weights
            .iter()
            .filter(|(name, _)| !state.contains_key(name))
            .map(|(name, _)| name.as_str())
            .collect();
        if !missing.is_empty() {
            bail!(
                "the checkpoint lacks {} weights, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(3)]
            );
        }
        tch::no_grad(|| {
            for (name, weight) in &weights {
                let mut weight = weight.shallow_clone();
                weight.copy_(&state[name]);
            }
        });
        self.masters.sync_params();
        self.adamw.load_state_dict(state)?;
        Ok(())
    }
}

fn dtype_name(kind: Kind) -> String {
    match kind {
        Kind::Float => "fp32".into(),
        Kind::BFloat16 => "bf16".into(),
        other => format!("{other:?}"),
    }
}

/// The top-level settings that differ, for the resume error.
fn differing(a: &TrainSettings, b: &TrainSettings) -> Vec<String> {
    let (a, b) = (
        serde_json::to_value(a.without_steps()).expect("settings serialise"),
        serde_json::to_value(b.without_steps()).expect("settings serialise"),
    );
    let (a, b) = (a.as_object().expect("an object"), b.as_object().expect("an object"));
    a.iter()
        .filter(|(key, value)| b.get(key.as_str()) != Some(value))
        .map(|(key, _)| key.clone())
        .collect()
}

/// Trains (or continues) the teacher of `settings` into `out` and returns `train.json`.
pub fn train(settings: &TrainSettings, out: &Path, options: TrainOptions<'_>) -> Result<TrainRecord> {
    let (description, selected) = describe(settings)?;
    let folder = TestbedFolder::new(out);
    folder.write_prompts(&selected.job, &description)?;
    let cfg = settings.wan_config();
    let (vs, model) = init_model(&cfg, settings.seed, options.device, options.kind);
    let mut optimiser = Optimiser::new(&vs, settings)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let storage = Storage::from_url(&out.display().to_string())?;
    let checkpoints = SnapshotWriter::new(Checkpointer::new(
        storage,
        super::folder::CHECKPOINT_DIR,
        settings.keep_last,
        runtime.handle().clone(),
    ));
    let mut meta = CheckpointMeta {
        step: 0,
        settings: settings.clone(),
        loss_curve: Vec::new(),
        train_seconds: 0.0,
        calls: Vec::new(),
    };
    if let Some(restored) = checkpoints.latest()? {
        let saved: CheckpointMeta = serde_json::from_value(restored.meta).with_context(|| {
            format!(
                "the checkpoint in {} has unreadable metadata",
                folder.checkpoints().display()
            )
        })?;
        let differ = differing(&saved.settings, settings);
        if !differ.is_empty() {
            bail!(
                "{} holds checkpoints of a run with other settings (they differ in: {}); continue it with \
                 its own settings, or train into another --out",
                folder.checkpoints().display(),
                differ.join(", ")
            );
        }
        let state = tensors::from_bytes(&restored.files[STATE_FILE])?;
        optimiser.restore(&state)?;
        meta = CheckpointMeta {
            settings: settings.clone(),
            ..saved
        };
    }

    let noise = match options.device {
        Device::Cpu => NoiseSource::Seeded,
        _ => NoiseSource::Device,
    };
    let data = Arc::new(TrainingData::new(
        settings,
        selected.teacher_train.clone(),
        description.latent_norm,
        noise,
    )?);
    let first_step = meta.step;
    let call_started = Instant::now();
    let mut stopped_by = StoppedBy::Steps;
    let mut saved_step = first_step;
    if meta.step < settings.steps {
        let prefetcher = Prefetcher::new(Arc::clone(&data), meta.step, settings.steps, options.render_threads);
        let compute = model.compute_kind();
        while let Some(batch) = prefetcher.next_batch() {
            let step = batch.step;
            let x0 = batch.latents.to_device(options.device);
            let eps = match &batch.noise {
                Some(noise) => noise.to_device(options.device),
                None => {
                    tch::manual_seed(stream_seed(settings.seed, PURPOSE_DEVICE_NOISE, step) as i64);
                    Tensor::randn(x0.size(), (Kind::Float, options.device))
                }
            };
            let sigmas = batch.sigmas.to_device(options.device);
            let x_sigma = noisy(&x0, &eps, &sigmas).to_kind(compute);
            let target = velocity_target(&x0, &eps);
            let text = batch.text.to_device(options.device).to_kind(compute);
            let prediction = model.forward(&x_sigma, &timestep_of(&sigmas), &text);
            let loss = flow_matching_loss(&prediction, &target);
            loss.backward();
            let loss = loss.double_value(&[]);
            if !loss.is_finite() {
                bail!("the training loss is {loss} at step {step}; lower --lr");
            }
            let lr = settings.lr_at(step);
            optimiser.step(lr)?;
            meta.loss_curve.push(loss);
            meta.step = step + 1;

            let done = meta.step - first_step;
            let seconds = call_started.elapsed().as_secs_f64();
            let steps_per_second = done as f64 / seconds.max(1e-9);
            let recent = &meta.loss_curve[meta.loss_curve.len().saturating_sub(settings.log_every as usize)..];
            let progress = Progress {
                step: meta.step,
                steps: settings.steps,
                call_first_step: first_step,
                loss,
                recent_loss: recent.iter().sum::<f64>() / recent.len() as f64,
                lr,
                steps_per_second,
                eta_seconds: (settings.steps - meta.step) as f64 / steps_per_second.max(1e-9),
                report: meta.step.is_multiple_of(settings.log_every) || meta.step == settings.steps,
            };
            let flow = (options.on_progress)(&progress);
            if meta.step.is_multiple_of(settings.checkpoint_every) && meta.step < settings.steps {
                checkpoints.save(meta.step, STATE_FILE, &optimiser.state(), serde_json::to_value(&meta)?);
                saved_step = meta.step;
            }
            if meta.step == settings.steps {
                break;
            }
            if flow == Flow::Stop {
                stopped_by = StoppedBy::Caller;
                break;
            }
            if options
                .minutes
                .is_some_and(|m| call_started.elapsed().as_secs_f64() >= m * 60.0)
            {
                stopped_by = StoppedBy::Minutes;
                break;
            }
        }
    }
    let seconds = call_started.elapsed().as_secs_f64();
    if meta.step > first_step {
        meta.train_seconds += seconds;
        meta.calls.push(CallRecord {
            first_step,
            last_step: meta.step,
            seconds,
            steps_per_second: (meta.step - first_step) as f64 / seconds.max(1e-9),
            device: format!("{:?}", options.device),
            dtype: dtype_name(options.kind),
            noise,
            stopped_by,
        });
    }
    if meta.step > saved_step {
        checkpoints.save(meta.step, STATE_FILE, &optimiser.state(), serde_json::to_value(&meta)?);
    }
    checkpoints.flush()?;

    let teacher = folder.teacher();
    let weights = optimiser.weights();
    weights::save_tensors(&teacher, &cfg, weights.iter().map(|(n, t)| (n.as_str(), t)))?;
    std::fs::write(teacher.join(DESCRIPTION_FILE), description.to_json()?)?;
    let recent = &meta.loss_curve[meta.loss_curve.len().saturating_sub(settings.log_every as usize)..];
    let record = TrainRecord {
        settings: settings.clone(),
        step: meta.step,
        complete: meta.step >= settings.steps,
        parameters: weights.iter().map(|(_, t)| t.numel() as i64).sum(),
        tokens_per_clip: settings.tokens(),
        samples_seen: meta.step * settings.batch as u64,
        train_seconds: meta.train_seconds,
        latent_norm: description.latent_norm,
        final_loss: recent.iter().sum::<f64>() / recent.len().max(1) as f64,
        loss_curve: meta.loss_curve,
        calls: meta.calls,
    };
    std::fs::write(folder.train_record(), serde_json::to_string_pretty(&record)? + "\n")?;
    Ok(record)
}
