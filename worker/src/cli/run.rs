//! `surgery-worker run`: the worker agent against a coordinator, until SIGTERM.

use crate::agent::{self, AgentConfig, slots};
use anyhow::Result;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The coordinator (also SURGERY_ADDR).
    #[arg(long, env = "SURGERY_ADDR", default_value = "http://127.0.0.1:7070")]
    pub coordinator: String,
    /// Bearer token (also SURGERY_TOKEN).
    #[arg(long, env = "SURGERY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A stable name (the pod name); default: host name and process id.
    #[arg(long, env = "SURGERY_WORKER_NAME")]
    pub name: Option<String>,
    /// `cuda` (one slot per visible GPU) or `cpu`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// CPU slots (with --device cpu).
    #[arg(long, default_value_t = 1)]
    pub slots: u32,
    /// Local cache of downloaded models and data.
    #[arg(long, env = "SURGERY_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Address gang peers reach this worker's CPU collective on.
    #[arg(long, env = "SURGERY_ADVERTISE_HOST", default_value = "127.0.0.1")]
    pub advertise_host: String,
    /// A collective that makes no progress for this long fails the gang's attempt.
    #[arg(long, default_value = "120s")]
    pub collective_timeout: humantime::Duration,
    /// Longest LeaseTask long poll.
    #[arg(long, default_value = "10s")]
    pub lease_wait: humantime::Duration,
    /// Serve /metrics (Prometheus) and /healthz at host:port (the worker image sets
    /// 0.0.0.0:9102); `off` serves nothing, the default, so several workers can share a
    /// host. Port 0 picks a free port (the log says which).
    #[arg(long, env = "SURGERY_METRICS_ADDR", default_value = "off")]
    pub metrics_addr: String,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "worker".into())
}

pub fn run(args: RunArgs) -> Result<()> {
    let cuda = match args.device.as_str() {
        "cpu" => false,
        "cuda" => true,
        other => anyhow::bail!("--device `{other}` is not cpu or cuda"),
    };
    let host = hostname();
    let config = AgentConfig {
        coordinator: args.coordinator,
        token: args.token.filter(|t| !t.is_empty()),
        name: args.name.unwrap_or_else(|| format!("{host}-{}", std::process::id())),
        host,
        advertise_host: args.advertise_host,
        slots: slots::discover(cuda, args.slots)?,
        cache_dir: args
            .cache_dir
            .unwrap_or_else(|| std::env::temp_dir().join("surgery-cache")),
        collective_timeout: Duration::from(args.collective_timeout),
        lease_wait: Duration::from(args.lease_wait),
        metrics_addr: match args.metrics_addr.as_str() {
            "off" => None,
            addr => Some(
                addr.parse()
                    .map_err(|e| anyhow::anyhow!("--metrics-addr `{addr}` is not host:port or `off`: {e}"))?,
            ),
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(agent::run(config, async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupt"),
        }
    }))
}
