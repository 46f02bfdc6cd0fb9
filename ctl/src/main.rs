//! The `surgeryctl` binary: parse the command line (clap exits 2 on a usage error) and
//! hand it to [`surgeryctl::run`].

use clap::Parser;
use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = surgeryctl::cli::Cli::parse();
    surgeryctl::run(cli).await
}
