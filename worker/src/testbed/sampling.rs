//! Sampling testbed prompts with the project's sampler ([`crate::sampler`]), from noise seeded
//! per prompt the way a job seeds it, so a testbed sample and a job's evaluation sample of the
//! same prompt start from the same noise.
//!
//! Prompt `i` of the job's prompt file (training prompts first, then held-out) starts from
//! `seeded_noise(prompt_seed(seed, i), [1, 48, F, h, w])`: the capture and evaluate stages'
//! rule. The second noise of a prompt, for the teacher's seed-to-seed spread, uses the seed
//! [`second_noise_seed`]`(seed)` with the same rule.
//!
//! [`sample_folder`] is `surgery-worker testbed sample`: a teacher folder's held-out prompts
//! sampled by the teacher (two noises) and by an untrained model of the same config (the
//! teacher's own seeded initialisation) from the first noise, scored by [`evaluate`].

use anyhow::{Context, Result, ensure};
use serde::{Deserialize, Serialize};
use surgery_core::spec::SchedulerKind;
use tch::{Device, Kind, Tensor};

use super::evaluation::{ClipEvaluation, EvaluationSamples, SeedSpread, evaluate};
use super::folder::TestbedFolder;
use super::metrics::MetricsSummary;
use super::training::{TrainRecord, init_model};
use crate::model::{WanTransformer, weights};
use crate::sampler::{self, FlowMatchEuler, Scheduler, UniPc, UniPcConfig, prompt_seed, seeded_noise};

/// Prompts sampled in one batch (both guidance branches together).
const CHUNK: usize = 16;

/// How to sample; the job's `sampler` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplerSettings {
    pub steps: usize,
    pub shift: f64,
    pub guidance: f64,
    pub seed: u64,
    pub scheduler: SchedulerKind,
}

/// The seed of a prompt's second noise: another stream of the same rule.
pub fn second_noise_seed(seed: u64) -> u64 {
    prompt_seed(seed, u64::MAX)
}

/// A scheduler of `kind` with its timesteps set.
pub fn scheduler(kind: SchedulerKind, shift: f64, steps: usize) -> Box<dyn Scheduler> {
    match kind {
        SchedulerKind::Euler => Box::new(FlowMatchEuler::with_steps(shift, steps)),
        SchedulerKind::Unipc => Box::new(UniPc::with_steps(
            UniPcConfig {
                flow_shift: shift,
                ..UniPcConfig::default()
            },
            steps,
        )),
    }
}

/// Samples the prompts whose embeddings are `text` `[P, L, text_dim]` and whose indices in the
/// job's prompt file are `indices` (they seed the noise), with `negative` `[1, L, text_dim]`
/// for guidance, on `model`'s `device`. Returns the final latents `[P, 48, F, h, w]`, float32
/// on the CPU, in the model's (normalised) latent space.
pub fn sample_prompts(
    model: &WanTransformer,
    device: Device,
    text: &Tensor,
    negative: Option<&Tensor>,
    indices: &[u64],
    latent_shape: [i64; 4],
    settings: &SamplerSettings,
) -> Result<Tensor> {
    ensure!(
        text.dim() == 3 && text.size()[0] == indices.len() as i64,
        "{} prompt indices for embeddings of shape {:?}",
        indices.len(),
        text.size()
    );
    ensure!(settings.steps >= 1, "sampling needs at least 1 step");
    ensure!(
        settings.guidance <= 1.0 || negative.is_some(),
        "guidance {} needs negative embeddings",
        settings.guidance
    );
    let kind = model.compute_kind();
    let negative = negative.map(|n| n.to_device(device).to_kind(kind));
    let mut schedule = scheduler(settings.scheduler, settings.shift, settings.steps);
    let mut out = Vec::new();
    for (chunk, start) in indices.chunks(CHUNK).zip((0..).step_by(CHUNK)) {
        let noise: Vec<Tensor> = chunk
            .iter()
            .map(|&i| {
                let shape = [1, latent_shape[0], latent_shape[1], latent_shape[2], latent_shape[3]];
                seeded_noise(prompt_seed(settings.seed, i), &shape, device)
            })
            .collect();
        let rows = text
            .narrow(0, start as i64, chunk.len() as i64)
            .to_device(device)
            .to_kind(kind);
        let latents = tch::no_grad(|| {
            sampler::sample(
                model,
                &Tensor::cat(&noise, 0),
                &rows,
                negative.as_ref(),
                settings.guidance,
                schedule.as_mut(),
                &[],
                &mut |_| {},
            )
        })?;
        out.push(latents.to_kind(Kind::Float).to_device(Device::Cpu));
    }
    Ok(Tensor::cat(&out, 0))
}

/// What `surgery-worker testbed sample` reports: a teacher folder's held-out prompts sampled by
/// the teacher and by an untrained model of the same config from the same noise, scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleReport {
    pub teacher_dir: String,
    pub prompts: usize,
    pub sampler: SamplerSettings,
    /// The seed of the untrained model's initialisation (the teacher's own, from `train.json`).
    pub untrained_init_seed: u64,
    pub teacher: MetricsSummary,
    pub untrained: MetricsSummary,
    /// The untrained model's clips against the teacher's from the same noise.
    pub untrained_teacher_psnr_db: f64,
    pub teacher_seed_spread: SeedSpread,
    /// Per prompt; `student` is the untrained model.
    pub per_clip: Vec<ClipEvaluation>,
}

/// The sampled latents behind a [`SampleReport`], `[P, 48, F, h, w]` each (model space).
pub struct SampledLatents {
    pub teacher: Tensor,
    pub untrained: Tensor,
    pub teacher_second_noise: Tensor,
}

/// Samples the first `prompts` held-out prompts of the testbed folder `folder` (all when
/// `None`) with its teacher and with an untrained model of the same config, on `device` in
/// `kind`, and evaluates them ([`evaluate`]).
pub fn sample_folder(
    folder: &TestbedFolder,
    prompts: Option<usize>,
    settings: &SamplerSettings,
    device: Device,
    kind: Kind,
) -> Result<(SampleReport, SampledLatents)> {
    let description = folder.description()?;
    let set = folder.prompt_set()?;
    let count = prompts.unwrap_or(set.held_out.len());
    ensure!(
        (1..=set.held_out.len()).contains(&count),
        "--prompts {count}: the folder has {} held-out prompts",
        set.held_out.len()
    );
    let held_out = &set.held_out[..count];
    let (_teacher_vs, teacher) = weights::load(&folder.teacher(), device, kind)
        .with_context(|| format!("loading the teacher in {}", folder.teacher().display()))?;
    let init_seed = match std::fs::read_to_string(folder.train_record()) {
        Ok(text) => serde_json::from_str::<TrainRecord>(&text)?.settings.seed,
        Err(_) => 0,
    };
    let (_untrained_vs, untrained) = init_model(teacher.config(), init_seed, device, kind);
    let book = description.generator.code_book()?;
    let text = book.embed_batch(held_out);
    let negative = Tensor::zeros(
        [1, book.text_len() as i64, book.text_dim() as i64],
        (Kind::Float, Device::Cpu),
    );
    // Held-out prompt k is row job_train + k of the job's prompt file: its noise seed.
    let indices: Vec<u64> = (0..count as u64).map(|k| set.train.len() as u64 + k).collect();
    let shape = description.generator.codec.latent_shape;
    let second = SamplerSettings {
        seed: second_noise_seed(settings.seed),
        ..settings.clone()
    };
    let latents = SampledLatents {
        teacher: sample_prompts(&teacher, device, &text, Some(&negative), &indices, shape, settings)?,
        untrained: sample_prompts(&untrained, device, &text, Some(&negative), &indices, shape, settings)?,
        teacher_second_noise: sample_prompts(&teacher, device, &text, Some(&negative), &indices, shape, &second)?,
    };
    let samples = EvaluationSamples {
        teacher: &latents.teacher,
        student: &latents.untrained,
        teacher_second_noise: &latents.teacher_second_noise,
    };
    let evaluation = evaluate(&description, held_out, samples)?;
    let report = SampleReport {
        teacher_dir: folder.teacher().display().to_string(),
        prompts: count,
        sampler: settings.clone(),
        untrained_init_seed: init_seed,
        teacher: evaluation.teacher,
        untrained: evaluation.student,
        untrained_teacher_psnr_db: evaluation.student_teacher_psnr_db,
        teacher_seed_spread: evaluation.teacher_seed_spread,
        per_clip: evaluation.per_clip,
    };
    Ok((report, latents))
}
