//! The command line: clap types only. Global flags resolve flag > environment > default
//! (clap's own precedence) and are checked here, so a malformed address, token or
//! timeout is a usage error (exit 2) before anything connects.

use crate::client::{self, DEFAULT_ADDR};
use crate::exit;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;
use surgery_proto::v1::JobState;

#[derive(Debug, Parser)]
#[command(
    name = "surgeryctl",
    version,
    about = "Submit, watch and manage Attention Surgery jobs on a surgery coordinator.",
    after_help = exit::HELP
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Coordinator address: a URL, or host:port (http is assumed, port 7070 if left out;
    /// empty means the default).
    #[arg(long, global = true, env = "SURGERY_ADDR", default_value = DEFAULT_ADDR, value_parser = parse_addr)]
    pub addr: String,

    /// Bearer token sent as `authorization: Bearer <token>` on every call (empty: none).
    #[arg(long, global = true, env = "SURGERY_TOKEN", hide_env_values = true, value_parser = parse_token)]
    pub token: Option<String>,

    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// How long to wait for the connection to the coordinator (10s, 500ms, 1m; a bare
    /// number is seconds).
    #[arg(long, global = true, default_value = "10s", value_parser = parse_timeout)]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a job spec locally, then submit it; prints the job id.
    Submit(SubmitArgs),
    /// Submit a new job that reuses JOB's succeeded capture and distillation wherever
    /// their inputs are identical (another budget, more fine-tuning, ...); prints the new
    /// job's id and, on stderr, what it reused. The same as `submit --reuse JOB FILE`.
    Fork {
        /// The job to fork.
        job: String,
        #[command(flatten)]
        submit: ForkArgs,
    },
    /// Check a job spec without a coordinator and summarise what it will run.
    Validate {
        /// The job spec (YAML); `-` reads stdin.
        file: PathBuf,
    },
    /// Show a job: its stages, the distillation table and the selected layout.
    Status {
        job: String,
        /// Also list every task.
        #[arg(long)]
        tasks: bool,
    },
    /// List jobs.
    List {
        /// Only jobs in this state (repeat for several).
        #[arg(long, value_enum)]
        state: Vec<JobStateArg>,
    },
    /// Cancel a job; running tasks stop at their next heartbeat.
    Cancel {
        job: String,
        /// Recorded with the job.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Re-run a job's failed or cancelled tasks from their last checkpoints.
    Resume { job: String },
    /// Print a job's log lines.
    Logs {
        job: String,
        /// Only this task's lines.
        #[arg(long)]
        task: Option<String>,
        /// Keep streaming new lines until the job ends.
        #[arg(short, long)]
        follow: bool,
    },
    /// Stream a job's events until it ends; exit 0 if it succeeded, 8 if not.
    Watch { job: String },
    /// List the workers the coordinator knows.
    Workers,
    /// Print a job's training curves: every reported step with its metrics, all attempts.
    Metrics {
        job: String,
        /// Only this task's points.
        #[arg(long)]
        task: Option<String>,
    },
    /// Download the evaluate stage's videos (held-out prompts, teacher left, student right,
    /// from the same noise) as MP4 and GIF.
    Previews {
        job: String,
        /// Folder to write them into (created if missing). Not `--output`: that global
        /// flag picks the output format.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Clone, Args)]
pub struct SubmitArgs {
    /// The job spec (YAML); `-` reads stdin.
    pub file: PathBuf,
    /// Makes the submit idempotent: resubmitting with the same id returns the same job
    /// (a fresh UUID is used when left out).
    #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub request_id: Option<String>,
    /// After submitting, stream the job's events like `watch`.
    #[arg(long)]
    pub watch: bool,
    /// Fork this job: reuse its succeeded capture and distill tasks wherever their inputs
    /// are identical (see `surgeryctl fork`).
    #[arg(long, value_name = "JOB", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub reuse: Option<String>,
}

/// `surgeryctl fork JOB -f FILE`: the spec is a flag here, the job the argument.
#[derive(Debug, Clone, Args)]
pub struct ForkArgs {
    /// The new job's spec (YAML); `-` reads stdin.
    #[arg(long, short = 'f')]
    pub file: PathBuf,
    /// Makes the submit idempotent (as for `submit`).
    #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub request_id: Option<String>,
    /// After submitting, stream the job's events like `watch`.
    #[arg(long)]
    pub watch: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JobStateArg {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl From<JobStateArg> for JobState {
    fn from(state: JobStateArg) -> Self {
        match state {
            JobStateArg::Queued => JobState::Queued,
            JobStateArg::Running => JobState::Running,
            JobStateArg::Succeeded => JobState::Succeeded,
            JobStateArg::Failed => JobState::Failed,
            JobStateArg::Cancelled => JobState::Cancelled,
        }
    }
}

/// An empty value (`SURGERY_ADDR=`, which clap counts as set) means the default, as an
/// empty SURGERY_TOKEN means no token.
fn parse_addr(raw: &str) -> Result<String, String> {
    if raw.trim().is_empty() {
        return Ok(DEFAULT_ADDR.to_string());
    }
    client::normalize_addr(raw)
}

fn parse_token(raw: &str) -> Result<String, String> {
    client::bearer_value(raw)?;
    Ok(raw.to_string())
}

/// `10s`, `500ms`, `1m`, or a bare number of seconds; zero would fail every connect.
pub fn parse_timeout(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let duration = match raw.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds >= 0.0 => Duration::from_secs_f64(seconds),
        Ok(_) => return Err(format!("`{raw}` is not a duration")),
        Err(_) => humantime::parse_duration(raw).map_err(|err| format!("`{raw}` is not a duration: {err}"))?,
    };
    if duration.is_zero() {
        return Err("the timeout must be more than zero".to_string());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests;
