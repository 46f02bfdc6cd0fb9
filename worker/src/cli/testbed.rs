//! `surgery-worker testbed train | sample`: train a quality-testbed teacher from scratch on
//! rendered clips (resuming from its checkpoints), and sample its held-out prompts against an
//! untrained model of the same config with ground-truth metrics. The work is
//! [`crate::testbed::train`] and [`crate::testbed::sample_folder`]; this file parses flags,
//! prints progress and writes the report.

use super::files::device as parse_device;
use super::{Dtype, SchedulerKind};
use crate::testbed::{
    Flow, Progress, SampleReport, SamplerSettings, TestbedFolder, TestbedSize, TrainOptions, TrainSettings,
    sample_folder, train,
};
use anyhow::{Context, Result, bail};
use clap::{Subcommand, ValueEnum};
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Size {
    /// 32x32x8 clips, one object, a 2-block teacher: trains on a CPU in minutes.
    Cpu,
    /// 64x64x16 clips, 1,024 tokens, an 8-block 20M-parameter teacher: for a GPU.
    Gpu,
}

impl Size {
    fn preset(self) -> TestbedSize {
        match self {
            Size::Cpu => TestbedSize::Cpu,
            Size::Gpu => TestbedSize::Gpu,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum TestbedCommand {
    /// Train a testbed teacher from scratch into --out (rerun the same command to continue
    /// from its newest checkpoint).
    Train(TrainArgs),
    /// Sample held-out prompts with a testbed teacher and with an untrained model of the same
    /// config from the same noise, and report the ground-truth metrics as JSON.
    Sample(SampleArgs),
}

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    #[arg(long, value_enum)]
    pub size: Size,
    /// Output folder [default: .demo/testbed-SIZE]: teacher/, prompts.*, train.json, checkpoints/.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Optimiser steps of the whole run [default: the preset's]; raise it to train on.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Wall-clock budget of this call; it then checkpoints and writes the teacher as it is.
    #[arg(long)]
    pub minutes: Option<f64>,
    /// Clips per step [default: the preset's].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Peak learning rate [default: the preset's].
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Steps between checkpoints [default: the preset's].
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// [default: bf16 on CUDA (fp32 masters), fp32 on the CPU]
    #[arg(long, value_enum)]
    pub dtype: Option<Dtype>,
    /// LibTorch's CPU threads [default: LibTorch's choice].
    #[arg(long)]
    pub threads: Option<i32>,
    /// Threads rendering clips [default: 1 on the CPU, all cores but one with CUDA].
    #[arg(long)]
    pub render_threads: Option<usize>,
}

#[derive(Debug, clap::Args)]
pub struct SampleArgs {
    /// The folder `testbed train` wrote (or its teacher/ subfolder).
    #[arg(long)]
    pub teacher: PathBuf,
    /// How many held-out prompts to sample (the first ones) [default: all].
    #[arg(long)]
    pub prompts: Option<usize>,
    /// Sampler steps (the defaults are configs/testbed-cpu.yaml's sampler; the GPU config's
    /// are --steps 30 --shift 3).
    #[arg(long, default_value_t = 25)]
    pub steps: usize,
    #[arg(long, default_value_t = 2.0)]
    pub shift: f64,
    /// Classifier-free guidance against the zero embedding (1 turns it off).
    #[arg(long, default_value_t = 5.0)]
    pub guidance: f64,
    /// The job's sampler seed: prompt i starts from seeded_noise(prompt_seed(seed, i)).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_enum, default_value = "unipc")]
    pub scheduler: SchedulerKind,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, value_enum, default_value = "fp32")]
    pub dtype: Dtype,
    /// Where the metrics JSON goes [default: DIR/sample.json].
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Also write the sampled latents (`teacher`, `untrained`, `teacher_second_noise`).
    #[arg(long)]
    pub latents: Option<PathBuf>,
}

pub fn run(command: TestbedCommand) -> Result<()> {
    match command {
        TestbedCommand::Train(args) => run_train(&args),
        TestbedCommand::Sample(args) => run_sample(&args),
    }
}

/// The preset with the flags applied; flag errors name the flag.
pub fn train_settings(args: &TrainArgs) -> Result<TrainSettings> {
    let mut settings = TrainSettings::preset(args.size.preset());
    let at_least_one = |flag: &str, value: Option<u64>| match value {
        Some(0) => bail!("--{flag} must be at least 1"),
        _ => Ok(()),
    };
    at_least_one("steps", args.steps)?;
    at_least_one("batch", args.batch.map(|b| b as u64))?;
    at_least_one("checkpoint-every", args.checkpoint_every)?;
    if let Some(lr) = args.lr
        && !(lr.is_finite() && lr > 0.0)
    {
        bail!("--lr must be a positive number, got {lr}");
    }
    if let Some(minutes) = args.minutes
        && !(minutes.is_finite() && minutes > 0.0)
    {
        bail!("--minutes must be a positive number, got {minutes}");
    }
    settings.steps = args.steps.unwrap_or(settings.steps);
    settings.batch = args.batch.unwrap_or(settings.batch);
    settings.lr = args.lr.unwrap_or(settings.lr);
    settings.checkpoint_every = args.checkpoint_every.unwrap_or(settings.checkpoint_every);
    if let Some(seed) = args.seed {
        settings.seed = seed;
        settings.prompts.seed = seed;
    }
    settings.validate()?;
    Ok(settings)
}

fn run_train(args: &TrainArgs) -> Result<()> {
    let settings = train_settings(args)?;
    let device = parse_device(&args.device)?;
    let kind = match (args.dtype, device) {
        (Some(dtype), _) => dtype.kind(),
        (None, Device::Cpu) => Kind::Float,
        (None, _) => Kind::BFloat16,
    };
    if let Some(threads) = args.threads {
        if threads < 1 {
            bail!("--threads must be at least 1, got {threads}");
        }
        tch::set_num_threads(threads);
    }
    let render_threads = args.render_threads.unwrap_or_else(|| match device {
        Device::Cpu => 1,
        _ => std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1)),
    });
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!(".demo/testbed-{}", settings.size.name())));
    println!(
        "testbed train: size {}, {} tokens per clip, batch {}, {} steps, lr {:.1e}, {:?} {:?}, into {}",
        settings.size.name(),
        settings.tokens(),
        settings.batch,
        settings.steps,
        settings.lr,
        device,
        kind,
        out.display()
    );
    let mut first = true;
    let mut on_progress = |progress: &Progress| {
        if first && progress.call_first_step > 0 {
            println!(
                "resumed from the checkpoint at step {} in {}",
                progress.call_first_step,
                out.join("checkpoints").display()
            );
        }
        first = false;
        if progress.report {
            println!("{progress}");
            let _ = std::io::stdout().flush();
        }
        Flow::Continue
    };
    let record = train(
        &settings,
        &out,
        TrainOptions {
            device,
            kind,
            minutes: args.minutes,
            render_threads,
            on_progress: &mut on_progress,
        },
    )?;
    let seconds = record.train_seconds.round() as u64;
    if record.complete {
        println!(
            "trained to step {} ({} samples, {} parameters) in {}m{:02}s, final loss {:.4}; wrote {}/teacher, \
             prompts.safetensors, prompts.json, train.json",
            record.step,
            record.samples_seen,
            record.parameters,
            seconds / 60,
            seconds % 60,
            record.final_loss,
            out.display()
        );
    } else {
        println!(
            "stopped at step {} of {} (final loss {:.4}); the teacher in {}/teacher is this step's. Run the same \
             command to continue",
            record.step,
            settings.steps,
            record.final_loss,
            out.display()
        );
    }
    Ok(())
}

fn run_sample(args: &SampleArgs) -> Result<()> {
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    if !(args.shift.is_finite() && args.shift > 0.0) {
        bail!("--shift must be a positive number, got {}", args.shift);
    }
    if !(args.guidance.is_finite() && args.guidance >= 1.0) {
        bail!(
            "--guidance must be at least 1 (1 turns guidance off), got {}",
            args.guidance
        );
    }
    let device = parse_device(&args.device)?;
    let folder = TestbedFolder::locate(&args.teacher)?;
    let settings = SamplerSettings {
        steps: args.steps,
        shift: args.shift,
        guidance: args.guidance,
        seed: args.seed,
        scheduler: match args.scheduler {
            SchedulerKind::Euler => surgery_core::spec::SchedulerKind::Euler,
            SchedulerKind::Unipc => surgery_core::spec::SchedulerKind::Unipc,
        },
    };
    let (report, latents) = sample_folder(&folder, args.prompts, &settings, device, args.dtype.kind())?;
    let output = args.output.clone().unwrap_or_else(|| folder.root.join("sample.json"));
    std::fs::write(&output, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", output.display()))?;
    if let Some(path) = &args.latents {
        crate::model::weights::write_safetensors(
            path,
            [
                ("teacher", &latents.teacher),
                ("untrained", &latents.untrained),
                ("teacher_second_noise", &latents.teacher_second_noise),
            ],
            None,
        )?;
    }
    print_report(&report, &output);
    Ok(())
}

fn print_report(report: &SampleReport, output: &Path) {
    println!(
        "{} held-out prompts, {:?} {} steps, shift {}, guidance {}",
        report.prompts, report.sampler.scheduler, report.sampler.steps, report.sampler.shift, report.sampler.guidance
    );
    let rows = |summary: &crate::testbed::MetricsSummary| serde_json::to_value(summary.mean).expect("metrics");
    let (teacher, untrained) = (rows(&report.teacher), rows(&report.untrained));
    let spread = serde_json::to_value(report.teacher_seed_spread.mean_abs_difference).expect("metrics");
    println!(
        "{:<28}{:>12}{:>12}{:>14}",
        "metric", "teacher", "untrained", "seed spread"
    );
    for (name, value) in teacher.as_object().expect("an object") {
        println!(
            "{:<28}{:>12.4}{:>12.4}{:>14.4}",
            name,
            value.as_f64().unwrap_or(f64::NAN),
            untrained[name].as_f64().unwrap_or(f64::NAN),
            spread[name].as_f64().unwrap_or(f64::NAN)
        );
    }
    println!(
        "PSNR untrained vs teacher {:.2} dB; teacher vs itself from another noise {:.2} dB",
        report.untrained_teacher_psnr_db, report.teacher_seed_spread.psnr_db
    );
    println!("wrote {}", output.display());
}
