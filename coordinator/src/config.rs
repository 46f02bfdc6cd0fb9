//! Coordinator configuration, one precedence chain (Restate's habit): built-in defaults <
//! a YAML file (`--config` or `SURGERY_CONFIG`) < `SURGERY_*` environment variables <
//! command-line flags; then [`Config::validate`] before anything starts.

use clap::Parser;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Yaml};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// gRPC, the status page, /metrics and /healthz all listen here.
    pub listen: SocketAddr,
    /// Folder of the store file (`coordinator.redb`).
    pub data_dir: PathBuf,
    /// Object-store URL under which job artifacts live (`{url}/jobs/{job}/...`); handed
    /// to workers with every task.
    pub object_store_url: String,
    /// A lease not renewed by a heartbeat for this long is lost and its task requeued.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How often workers are told to heartbeat.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A worker silent for this long is marked lost.
    #[serde(with = "humantime_serde")]
    pub worker_timeout: Duration,
    /// Longest a LeaseTask or Rendezvous long poll is held.
    #[serde(with = "humantime_serde")]
    pub max_poll: Duration,
    /// How often expiries and lost workers are checked.
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
    /// When set, every JobService and WorkerService call must carry
    /// `authorization: Bearer <token>`. Health and reflection stay open for probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<String>,
    pub log_format: LogFormat,
    /// A tracing-subscriber filter, for example `info` or `surgery_coordinator=debug`.
    pub log_level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:7070".parse().expect("valid address"),
            data_dir: PathBuf::from("surgery-data"),
            object_store_url: "file://surgery-data/objects".into(),
            lease_ttl: Duration::from_secs(20),
            heartbeat_interval: Duration::from_secs(2),
            worker_timeout: Duration::from_secs(60),
            max_poll: Duration::from_secs(20),
            tick: Duration::from_millis(250),
            auth_token: None,
            log_format: LogFormat::Human,
            log_level: "info".into(),
        }
    }
}

/// Flags of `surgery-coordinator`; each overrides the file and the environment.
#[derive(Debug, Clone, Default, Parser, Serialize)]
#[command(
    name = "surgery-coordinator",
    version,
    about = "The surgery coordinator: plans, schedules and keeps jobs."
)]
pub struct Flags {
    /// YAML configuration file (also SURGERY_CONFIG).
    #[arg(long, env = "SURGERY_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_store_url: Option<String>,
    /// For example `20s`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_ttl: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_timeout: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_poll: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tick: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<String>,
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// Print the effective configuration as YAML and exit.
    #[arg(long)]
    #[serde(skip)]
    pub print_config: bool,
}

/// Environment variables the coordinator reads (`SURGERY_` + the upper-cased key). Only
/// these: SURGERY_ADDR and SURGERY_TOKEN belong to surgeryctl and must not trip us.
/// The auth token is read apart, verbatim: figment would parse `123` or `true` as a
/// number or a boolean and reject a perfectly good secret.
const ENV_KEYS: [&str; 10] = [
    "listen",
    "data_dir",
    "object_store_url",
    "lease_ttl",
    "heartbeat_interval",
    "worker_timeout",
    "max_poll",
    "tick",
    "log_format",
    "log_level",
];

impl Config {
    /// Layers defaults, file, environment and flags, then validates.
    pub fn load(flags: &Flags) -> Result<Config, String> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = &flags.config {
            if !path.is_file() {
                return Err(format!("configuration file {} does not exist", path.display()));
            }
            figment = figment.merge(Yaml::file_exact(path));
        }
        figment = figment.merge(Env::prefixed("SURGERY_").only(&ENV_KEYS));
        if let Ok(token) = std::env::var("SURGERY_AUTH_TOKEN") {
            figment = figment.merge(Serialized::default("auth_token", token));
        }
        figment = figment.merge(Serialized::defaults(flags));
        let config: Config = figment.extract().map_err(|err| {
            err.into_iter()
                .map(|e| format!("configuration: {e}"))
                .collect::<Vec<_>>()
                .join("\n")
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Settings that are each fine alone but wrong together, or out of range.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.heartbeat_interval.is_zero() {
            problems.push("heartbeat_interval must be positive".to_string());
        }
        if self.lease_ttl < self.heartbeat_interval * 2 {
            problems.push(format!(
                "lease_ttl ({}) must be at least twice heartbeat_interval ({}), or one late heartbeat loses the lease",
                humantime::format_duration(self.lease_ttl),
                humantime::format_duration(self.heartbeat_interval)
            ));
        }
        if self.worker_timeout < self.lease_ttl {
            problems.push(format!(
                "worker_timeout ({}) must be at least lease_ttl ({})",
                humantime::format_duration(self.worker_timeout),
                humantime::format_duration(self.lease_ttl)
            ));
        }
        if self.max_poll >= self.worker_timeout {
            problems.push(format!(
                "max_poll ({}) must be shorter than worker_timeout ({})",
                humantime::format_duration(self.max_poll),
                humantime::format_duration(self.worker_timeout)
            ));
        }
        if self.tick.is_zero() || self.tick > self.lease_ttl {
            problems.push("tick must be positive and at most lease_ttl".to_string());
        }
        if self.object_store_url.trim().is_empty() {
            problems.push("object_store_url must not be empty".to_string());
        }
        if self.auth_token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            problems.push("auth_token is set but empty".to_string());
        }
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            problems.push(format!("log_level `{}` is not a valid filter: {err}", self.log_level));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }

    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("coordinator.redb")
    }
}

#[cfg(test)]
// figment::Jail's closures return figment::Error, which is large; that is its API.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    // Figment's Jail isolates the environment and the working directory per test.
    #[test]
    fn precedence_defaults_file_env_flags() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.yaml",
                "lease_ttl: 30s\nworker_timeout: 90s\nlog_level: debug\ntick: 1s\n",
            )?;
            jail.set_env("SURGERY_WORKER_TIMEOUT", "120s");
            jail.set_env("SURGERY_TICK", "2s");
            // surgeryctl's variables are ignored, not rejected.
            jail.set_env("SURGERY_ADDR", "http://elsewhere:1");
            let flags = Flags {
                config: Some("c.yaml".into()),
                tick: Some("500ms".into()),
                ..Flags::default()
            };
            let config = Config::load(&flags).map_err(|e| e.to_string())?;
            assert_eq!(config.lease_ttl, Duration::from_secs(30), "file over default");
            assert_eq!(config.worker_timeout, Duration::from_secs(120), "env over file");
            assert_eq!(config.tick, Duration::from_millis(500), "flag over env");
            assert_eq!(config.log_level, "debug");
            assert_eq!(config.heartbeat_interval, Duration::from_secs(2), "default kept");
            Ok(())
        });
    }

    #[test]
    fn bad_values_name_the_setting() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.yaml", "lease_tll: 30s\n")?;
            let flags = Flags {
                config: Some("c.yaml".into()),
                ..Flags::default()
            };
            let err = Config::load(&flags).unwrap_err();
            assert!(err.contains("unknown field") && err.contains("lease_tll"), "{err}");

            // Secrets are strings whatever they look like.
            jail.set_env("SURGERY_AUTH_TOKEN", "12345");
            assert_eq!(
                Config::load(&Flags::default()).unwrap().auth_token.as_deref(),
                Some("12345")
            );

            jail.set_env("SURGERY_LEASE_TTL", "soon");
            let err = Config::load(&Flags::default()).unwrap_err();
            assert!(err.contains("lease_ttl") || err.contains("LEASE_TTL"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn inconsistent_values_are_rejected() {
        let config = Config {
            lease_ttl: Duration::from_secs(3),
            ..Config::default()
        };
        let err = config.validate().unwrap_err();
        assert_eq!(
            err,
            "lease_ttl (3s) must be at least twice heartbeat_interval (2s), or one late heartbeat loses the lease"
        );
        let config = Config {
            max_poll: Duration::from_secs(90),
            ..Config::default()
        };
        assert!(
            config
                .validate()
                .unwrap_err()
                .contains("max_poll (1m 30s) must be shorter")
        );
        let missing = Config::load(&Flags {
            config: Some("/nonexistent/c.yaml".into()),
            ..Flags::default()
        });
        assert_eq!(
            missing.unwrap_err(),
            "configuration file /nonexistent/c.yaml does not exist"
        );
    }
}
