//! surgeryctl: the command line of surgery. It parses the command line ([`cli`]),
//! checks job specs locally with surgery-core, talks to the coordinator's JobService
//! over gRPC ([`client`]), and prints plain views of the answers ([`view`]) as tables
//! ([`render`]), JSON or YAML. Every failure becomes one stderr message and a documented
//! exit code ([`exit`]). It owns no state and never touches the coordinator's store or
//! the object store directly.

pub mod cli;
pub mod client;
mod commands;
pub mod distill;
pub mod error;
pub mod exit;
pub mod format;
pub mod output;
pub mod progress;
pub mod render;
pub mod view;

use std::process::ExitCode;

/// Runs one parsed command line to its exit code; errors are printed to stderr here.
pub async fn run(cli: cli::Cli) -> ExitCode {
    let code = match commands::dispatch(cli).await {
        Ok(code) => code,
        Err(err) => {
            let text = err.render();
            if !text.is_empty() {
                eprintln!("{text}");
            }
            err.exit_code()
        }
    };
    ExitCode::from(code)
}
