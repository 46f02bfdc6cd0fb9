//! [`TrainSettings`]: everything that fixes a testbed teacher's training run (data, model
//! shape, optimiser, schedule, checkpoints), the two presets [`TestbedSize::Cpu`] and
//! [`TestbedSize::Gpu`], and their validation. Pure data: no tch beyond building the
//! [`WanConfig`].
//!
//! The settings are stored in every checkpoint and in `train.json`; a run resumes only with
//! the same settings, except `steps`, which may grow (module doc of `training`).
//!
//! **The presets.**
//! * `cpu`: 32 x 32 x 8 clips (latent 48 x 8 x 8 x 8), one object per clip on a plain
//!   background ([`PromptSelection::max_objects`] 1, `textured_fraction` 0), a 2-block teacher
//!   of width 64 (4 heads of 16) with patch (1, 1, 1): 512 tokens. 400 steps of 16 clips train
//!   it from scratch in about 3 minutes of one CPU core (loss 1.63 -> 0.47); sampled with guidance
//!   5 its held-out clips then show the prompted colour (0.75 of objects, against 0 for an
//!   untrained model) and a trajectory error of 14 px against the untrained 22.6 px (objects
//!   land near, not at, their cells: absolute position reaches a Wan model only through
//!   RoPE's edge effects, which is slow to learn).
//!   **decision: patch (1, 1, 1), not Wan's (1, 2, 2).** A token must carry its patch's
//!   latent values through the residual stream for the velocity `eps - x0` to be predictable:
//!   a (1, 2, 2) patch holds 192 values, which a width of 64 cannot carry (the loss stalled
//!   at 1.15 and samples stayed noisy); with 48 values per token it reaches 0.47 in the same
//!   400 steps. A width of 192 at (1, 2, 2) costs as much and learned less per step.
//! * `gpu`: 64 x 64 x 16 clips (latent 48 x 16 x 16 x 16, 1,024 tokens with patch (1, 2, 2):
//!   192 values per token in a width of 384), every prompt kind, an 8-block teacher (6 heads
//!   of 64, FFN 1,536: about 20M parameters), batch 256 in bf16 with fp32 masters.
//!   Calibration (an independent run): diffusers' 17M Wan at this size, batch 64 and lr 1e-4
//!   for 4,135 steps (8 minutes) learned colour and size but placed objects 10 to 15 px off.
//!   A step at 1,024 tokens is launch-bound at batch 64, so batch 256 costs far less than 4
//!   times as long. Estimate (not yet measured here): about 42 TFLOP and 0.4 TB of
//!   activation traffic a step, 0.2 to 0.25 s on an H200, so the 3,000 steps take 10 to 12
//!   minutes and see 768K clips, about 3 times the calibration run's 265K; with a 6x higher
//!   peak lr (6e-4) behind a 300-step warm-up that keeps the larger steps stable, and a final
//!   linear decay (the last 20 %), which on the CPU preset cut the loss by a fifth and is
//!   what settles fine detail such as positions. `--minutes` and `--steps` adjust it;
//!   training continues across calls.

use anyhow::{Result, ensure};
use serde::{Deserialize, Serialize};

use super::embedding::MAX_TOKENS;
use super::scene::Geometry;
use super::selection::PromptSelection;
use crate::model::WanConfig;
use crate::model::config::QK_NORM_ACROSS_HEADS;

/// The two presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TestbedSize {
    Cpu,
    Gpu,
}

impl TestbedSize {
    pub fn name(self) -> &'static str {
        match self {
            TestbedSize::Cpu => "cpu",
            TestbedSize::Gpu => "gpu",
        }
    }
}

/// The teacher's architecture (Wan2.1's, smaller); channels are the codec's 48.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeacherShape {
    pub layers: i64,
    pub heads: i64,
    pub head_dim: i64,
    pub ffn_dim: i64,
    pub freq_dim: i64,
    /// (t, h, w) patch of the latent.
    pub patch: [i64; 3],
}

/// Everything a training run depends on (module doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSettings {
    /// The preset these settings started from (informational).
    pub size: TestbedSize,
    /// Seeds the initial weights, the data order, the noise, the sigmas and the prompts.
    pub seed: u64,
    pub geometry: Geometry,
    /// Padded text length L of the prompt embeddings `[L, text_dim]`.
    pub text_len: usize,
    pub text_dim: usize,
    pub model: TeacherShape,
    pub prompts: PromptSelection,
    /// Clips per optimiser step.
    pub batch: usize,
    /// Optimiser steps of the whole run (over all calls).
    pub steps: u64,
    /// Peak learning rate (AdamW).
    pub lr: f64,
    /// Linear warm-up from 0 to `lr` over these steps.
    pub warmup_steps: u64,
    /// The last `decay_fraction` of `steps` decays linearly to `final_lr_fraction` x `lr`.
    pub decay_fraction: f64,
    pub final_lr_fraction: f64,
    pub weight_decay: f64,
    /// Global gradient-norm clip; 0 turns it off.
    pub grad_clip: f64,
    /// Training sigmas are `shift(u)`, `u ~ U(0, 1)`, as the fine-tune stage draws them.
    pub sigma_shift: f64,
    /// Fraction of samples trained with the zero (unconditional) embedding, so that
    /// classifier-free guidance with zero `negative_embeds` has an unconditional model.
    pub uncond_fraction: f64,
    /// Training clips the latent normalisation is measured on (the first ones).
    pub norm_clips: usize,
    pub checkpoint_every: u64,
    pub keep_last: usize,
    /// Steps between progress lines.
    pub log_every: u64,
}

impl TrainSettings {
    pub fn preset(size: TestbedSize) -> TrainSettings {
        match size {
            TestbedSize::Cpu => TrainSettings {
                size,
                seed: 0,
                geometry: Geometry::cpu(),
                text_len: 24,
                text_dim: 32,
                model: TeacherShape {
                    layers: 2,
                    heads: 4,
                    head_dim: 16,
                    ffn_dim: 256,
                    freq_dim: 64,
                    patch: [1, 1, 1],
                },
                prompts: PromptSelection {
                    seed: 0,
                    teacher_train: 4096,
                    job_train: 16,
                    held_out: 16,
                    reserved_pairs: 4,
                    textured_fraction: 0.0,
                    max_objects: 1,
                },
                batch: 16,
                steps: 400,
                lr: 5e-3,
                warmup_steps: 25,
                decay_fraction: 0.3,
                final_lr_fraction: 0.05,
                weight_decay: 0.01,
                grad_clip: 1.0,
                sigma_shift: 2.0,
                uncond_fraction: 0.1,
                norm_clips: 256,
                checkpoint_every: 100,
                keep_last: 2,
                log_every: 25,
            },
            TestbedSize::Gpu => TrainSettings {
                size,
                seed: 0,
                geometry: Geometry::gpu(),
                text_len: 24,
                text_dim: 64,
                model: TeacherShape {
                    layers: 8,
                    heads: 6,
                    head_dim: 64,
                    ffn_dim: 1536,
                    freq_dim: 256,
                    patch: [1, 2, 2],
                },
                prompts: PromptSelection {
                    seed: 0,
                    teacher_train: 65_536,
                    job_train: 64,
                    held_out: 32,
                    reserved_pairs: 4,
                    textured_fraction: 0.5,
                    max_objects: 3,
                },
                batch: 256,
                steps: 3000,
                lr: 6e-4,
                warmup_steps: 300,
                decay_fraction: 0.2,
                final_lr_fraction: 0.05,
                weight_decay: 0.01,
                grad_clip: 1.0,
                sigma_shift: 3.0,
                uncond_fraction: 0.1,
                norm_clips: 512,
                checkpoint_every: 500,
                keep_last: 2,
                log_every: 50,
            },
        }
    }

    /// The diffusers config of the teacher.
    pub fn wan_config(&self) -> WanConfig {
        WanConfig {
            patch_size: self.model.patch,
            num_attention_heads: self.model.heads,
            attention_head_dim: self.model.head_dim,
            in_channels: super::codec::LATENT_CHANNELS,
            out_channels: super::codec::LATENT_CHANNELS,
            text_dim: self.text_dim as i64,
            freq_dim: self.model.freq_dim,
            ffn_dim: self.model.ffn_dim,
            num_layers: self.model.layers,
            cross_attn_norm: true,
            qk_norm: Some(QK_NORM_ACROSS_HEADS.to_string()),
            eps: 1e-6,
            image_dim: None,
            added_kv_proj_dim: None,
            rope_max_seq_len: 1024,
            pos_embed_seq_len: None,
        }
    }

    /// The learning rate of step `step` (0-based): linear warm-up, constant, then the final
    /// linear decay.
    pub fn lr_at(&self, step: u64) -> f64 {
        let warm = if self.warmup_steps > 0 {
            ((step + 1) as f64 / self.warmup_steps as f64).min(1.0)
        } else {
            1.0
        };
        let decay_steps = (self.decay_fraction * self.steps as f64).round() as u64;
        let decay_start = self.steps.saturating_sub(decay_steps);
        let decay = if decay_steps > 0 && step >= decay_start {
            let progress = ((step - decay_start + 1) as f64 / decay_steps as f64).min(1.0);
            1.0 - progress * (1.0 - self.final_lr_fraction)
        } else {
            1.0
        };
        self.lr * warm * decay
    }

    /// Checks every setting a user can change; each message names the setting.
    pub fn validate(&self) -> Result<()> {
        self.geometry.validate()?;
        self.prompts.validate()?;
        ensure!(
            self.text_len >= MAX_TOKENS,
            "text_len {} is below the {MAX_TOKENS} tokens a prompt may use",
            self.text_len
        );
        ensure!(self.text_dim >= 1, "text_dim must be at least 1");
        ensure!(self.batch >= 1, "batch must be at least 1");
        ensure!(self.steps >= 1, "steps must be at least 1");
        let positive = |name: &str, value: f64| {
            ensure!(
                value.is_finite() && value > 0.0,
                "{name} must be a positive number, got {value}"
            );
            Ok(())
        };
        positive("lr", self.lr)?;
        positive("sigma_shift", self.sigma_shift)?;
        let fraction = |name: &str, value: f64, top: f64| {
            ensure!(
                (0.0..=top).contains(&value),
                "{name} must be in [0, {top}], got {value}"
            );
            Ok(())
        };
        fraction("decay_fraction", self.decay_fraction, 1.0)?;
        fraction("final_lr_fraction", self.final_lr_fraction, 1.0)?;
        fraction("weight_decay", self.weight_decay, 1.0)?;
        fraction("uncond_fraction", self.uncond_fraction, 0.5)?;
        ensure!(
            self.grad_clip.is_finite() && self.grad_clip >= 0.0,
            "grad_clip must be 0 (off) or positive, got {}",
            self.grad_clip
        );
        ensure!(self.norm_clips >= 1, "norm_clips must be at least 1");
        ensure!(self.checkpoint_every >= 1, "checkpoint_every must be at least 1");
        ensure!(self.keep_last >= 1, "keep_last must be at least 1");
        ensure!(self.log_every >= 1, "log_every must be at least 1");
        let [pt, ph, pw] = self.model.patch;
        let latent = super::codec::latent_shape(self.geometry.frames, self.geometry.height, self.geometry.width);
        ensure!(
            pt >= 1 && ph >= 1 && pw >= 1 && latent[1] % pt == 0 && latent[2] % ph == 0 && latent[3] % pw == 0,
            "the latent {}x{}x{} (frames x height x width) does not divide into patches {:?}",
            latent[1],
            latent[2],
            latent[3],
            self.model.patch
        );
        self.wan_config().validate()?;
        Ok(())
    }

    /// Tokens per clip after patchifying.
    pub fn tokens(&self) -> i64 {
        let latent = super::codec::latent_shape(self.geometry.frames, self.geometry.height, self.geometry.width);
        let [pt, ph, pw] = self.model.patch;
        (latent[1] / pt) * (latent[2] / ph) * (latent[3] / pw)
    }

    /// The settings with `steps` replaced: what must equal a checkpoint's for a resume.
    pub fn without_steps(&self) -> TrainSettings {
        TrainSettings {
            steps: 0,
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_sized_as_documented() {
        let cpu = TrainSettings::preset(TestbedSize::Cpu);
        cpu.validate().unwrap();
        assert_eq!(cpu.tokens(), 512);
        let gpu = TrainSettings::preset(TestbedSize::Gpu);
        gpu.validate().unwrap();
        assert_eq!(gpu.tokens(), 1024);
        assert_eq!(gpu.wan_config().dim(), 384);
        let json = serde_json::to_string(&gpu).unwrap();
        assert_eq!(serde_json::from_str::<TrainSettings>(&json).unwrap(), gpu);
    }

    #[test]
    fn the_schedule_warms_up_holds_and_decays() {
        let settings = TrainSettings {
            steps: 100,
            lr: 1.0,
            warmup_steps: 10,
            decay_fraction: 0.2,
            final_lr_fraction: 0.1,
            ..TrainSettings::preset(TestbedSize::Cpu)
        };
        assert!((settings.lr_at(0) - 0.1).abs() < 1e-12);
        assert_eq!(settings.lr_at(9), 1.0);
        assert_eq!(settings.lr_at(50), 1.0);
        assert_eq!(settings.lr_at(79), 1.0);
        assert!(settings.lr_at(80) < 1.0);
        assert!((settings.lr_at(99) - 0.1).abs() < 1e-12);
        // Past the end (a run extended later) the rate stays at the floor.
        assert!((settings.lr_at(150) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn bad_settings_name_the_setting() {
        let base = TrainSettings::preset(TestbedSize::Cpu);
        let message = |s: TrainSettings| s.validate().unwrap_err().to_string();
        assert_eq!(
            message(TrainSettings {
                batch: 0,
                ..base.clone()
            }),
            "batch must be at least 1"
        );
        assert_eq!(
            message(TrainSettings {
                lr: -1.0,
                ..base.clone()
            }),
            "lr must be a positive number, got -1"
        );
        assert_eq!(
            message(TrainSettings {
                text_len: 8,
                ..base.clone()
            }),
            "text_len 8 is below the 17 tokens a prompt may use"
        );
        let mut odd = base.clone();
        odd.model.patch = [3, 2, 2];
        assert_eq!(
            message(odd),
            "the latent 8x8x8 (frames x height x width) does not divide into patches [3, 2, 2]"
        );
        let mut head = base;
        head.model.head_dim = 31;
        assert!(message(head).contains("attention_head_dim"));
    }
}
