//! The `surgery-worker` command: `run` (the agent that leases and executes tasks from a
//! coordinator), `forward` and `sample` (check a teacher or student folder against a
//! reference from files), `init-demo` (the tiny teacher and prompts of
//! configs/tiny.yaml), `decode` (latents to MP4 or GIF), and `testbed` (train and sample a quality-testbed teacher).
//!
//! Exit codes: 0 success, 1 error (bad file, missing tensor, no CUDA), 2 usage.

mod decode;
mod demo;
mod files;
mod forward;
mod run;
mod sample;
pub mod testbed;

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
    /// Run the worker: register with the coordinator, lease and execute tasks until SIGTERM
    /// (which checkpoints running tasks and releases their leases as preemptions).
    Run(run::RunArgs),
    /// Write a tiny random-weight teacher and prompt embeddings for configs/tiny.yaml.
    InitDemo {
        /// Folder to write models/tiny-teacher and data/prompts.safetensors into.
        #[arg(long, default_value = ".demo")]
        dir: PathBuf,
        #[arg(long, default_value_t = 12)]
        prompts: i64,
        #[arg(long, default_value_t = 0)]
        seed: i64,
    },
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
        /// Also write each sample as a video (.mp4 or .gif; numbered when several prompts).
        #[arg(long)]
        decode: Option<PathBuf>,
        /// The Wan VAE's folder for --decode (default: the pipeline's vae/ beside --model).
        #[arg(long)]
        vae: Option<PathBuf>,
        /// Frames per second of the video.
        #[arg(long, default_value_t = crate::video::DEFAULT_FPS)]
        fps: u32,
    },
    /// Latents to video files: reads `latents` [P,C,F,H,W] (what `sample` writes) and writes
    /// one .mp4 or .gif per latent (numbered when several).
    Decode {
        #[arg(long)]
        latents: PathBuf,
        #[arg(long)]
        output: PathBuf,
        /// The Wan VAE's folder (diffusers' AutoencoderKLWan; a pipeline's vae/).
        #[arg(long)]
        vae: Option<PathBuf>,
        /// The model that made the latents, when it is not a Wan VAE model (a testbed
        /// teacher: its folder says how its latents decode).
        #[arg(long)]
        model: Option<PathBuf>,
        /// `cpu`, `cuda` or `cuda:N`.
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long, default_value_t = crate::video::DEFAULT_FPS)]
        fps: u32,
    },
    /// The quality testbed: train a small teacher from scratch on rendered clips, sample it.
    Testbed {
        #[command(subcommand)]
        command: testbed::TestbedCommand,
    },
}

/// Logs to stderr; RUST_LOG filters (default info), SURGERY_LOG_FORMAT=json for JSON.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("SURGERY_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

/// Entry point of the binary: LibTorch set-up first (GPU.md), then the command.
pub fn main() -> ExitCode {
    crate::runtime::init();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Run(args) => {
            init_logging();
            run::run(args)
        }
        Command::InitDemo { dir, prompts, seed } => demo::run(&dir, prompts, seed),
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
            decode,
            vae,
            fps,
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
            decode: decode.as_deref(),
            vae: vae.as_deref(),
            fps,
        }),
        Command::Decode {
            latents,
            output,
            vae,
            model,
            device,
            fps,
        } => decode::run(&decode::Options {
            latents: &latents,
            output: &output,
            model: model.as_deref(),
            vae: vae.as_deref(),
            device: &device,
            fps,
        }),
        Command::Testbed { command } => testbed::run(command),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("surgery-worker: {err:#}");
            ExitCode::FAILURE
        }
    }
}
