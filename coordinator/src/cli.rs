//! The `surgery-coordinator` command: reads its configuration (defaults < file <
//! SURGERY_* < flags), then serves until SIGTERM or Ctrl-C, and flushes the store on the
//! way out. Exit codes: 0 after a clean shutdown, 1 when serving failed (store in use,
//! port taken), 2 for an invalid configuration.

use crate::config::{Config, Flags, LogFormat};
use clap::Parser;
use std::process::ExitCode;

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::new(&config.log_level);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match config.log_format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: shutting down"),
    }
}

pub fn main() -> ExitCode {
    let flags = Flags::parse();
    let config = match Config::load(&flags) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("surgery-coordinator: invalid configuration:\n{err}");
            return ExitCode::from(2);
        }
    };
    if flags.print_config {
        print!("{}", serde_yaml::to_string(&config).expect("config serialises"));
        return ExitCode::SUCCESS;
    }
    init_logging(&config);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let outcome = runtime.block_on(async {
        let (_, serve) = crate::server::start(config, shutdown_signal()).await?;
        serve.await
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("surgery-coordinator: {err:#}");
            ExitCode::FAILURE
        }
    }
}
