//! The `surgery-worker` command. Today: `forward` and `sample`, so a user can check a
//! converted model (teacher or student folder) against a reference from files; the worker
//! loop that leases tasks from the coordinator joins it with the worker runtime.
//!
//! Exit codes: 0 success, 1 error (bad file, missing tensor, no CUDA), 2 usage.

mod files;
mod forward;
mod sample;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "surgery-worker",
    version,
    about = "The surgery GPU worker: model tools (forward, sample)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Dtype {
    Fp32,
    Bf16,
}

impl Dtype {
    pub fn kind(self) -> tch::Kind {
        match self {
            Dtype::Fp32 => tch::Kind::Float,
            Dtype::Bf16 => tch::Kind::BFloat16,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SchedulerKind {
    /// Flow-matching Euler.
    Euler,
    /// UniPC (bh2, order 2), the Wan pipeline's default.
    Unipc,
}

#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    /// A diffusers-format folder: a teacher (config.json + safetensors) or a student
    /// (the same plus surgery.json).
    #[arg(long)]
    pub model: PathBuf,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, value_enum, default_value = "fp32")]
    pub dtype: Dtype,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// One forward pass. Reads `hidden_states` [B,C,F,H,W], `timestep` [B] and
    /// `encoder_hidden_states` [B,L,text_dim] from a safetensors file (diffusers' argument
    /// names) and writes `output` [B,C,F,H,W].
    Forward {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        inputs: PathBuf,
        #[arg(long)]
        output: PathBuf,
    },
    /// Samples latents from seeded noise with classifier-free guidance. Reads
    /// `prompt_embeds` [P,L,text_dim] (and `negative_embeds` [1,L,text_dim] when
    /// guidance > 1) and writes `latents` [P,C,F,H,W] (float32).
    Sample {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        prompts: PathBuf,
        #[arg(long)]
        output: PathBuf,
        /// Video frames in pixels (4k + 1).
        #[arg(long)]
        frames: u32,
        #[arg(long)]
        height: u32,
        #[arg(long)]
        width: u32,
        #[arg(long, default_value_t = 50)]
        steps: usize,
        #[arg(long, default_value_t = 5.0)]
        shift: f64,
        #[arg(long, default_value_t = 5.0)]
        guidance: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, value_enum, default_value = "unipc")]
        scheduler: SchedulerKind,
    },
}

/// Entry point of the binary: LibTorch set-up first (GPU.md), then the command.
pub fn main() -> ExitCode {
    crate::runtime::init();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Forward { model, inputs, output } => forward::run(&model, &inputs, &output),
        Command::Sample {
            model,
            prompts,
            output,
            frames,
            height,
            width,
            steps,
            shift,
            guidance,
            seed,
            scheduler,
        } => sample::run(&sample::Options {
            model: &model,
            prompts: &prompts,
            output: &output,
            video: (frames, height, width),
            steps,
            shift,
            guidance,
            seed,
            scheduler,
        }),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("surgery-worker: {err:#}");
            ExitCode::FAILURE
        }
    }
}
