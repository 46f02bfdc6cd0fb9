use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    surgeryctl::run(surgeryctl::cli::Cli::parse()).await
}
