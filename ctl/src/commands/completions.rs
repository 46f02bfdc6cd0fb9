//! `surgeryctl completions SHELL`: the completion script clap_complete writes for the
//! command line in [`crate::cli`].

use crate::cli::Cli;
use crate::error::CtlError;
use crate::exit;
use crate::output::write_stdout;
use clap::CommandFactory;
use clap_complete::Shell;

pub fn run(shell: Shell) -> Result<u8, CtlError> {
    // Generated into memory first: clap_complete panics on a failed write, and a closed
    // pipe should end quietly.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "surgeryctl", &mut script);
    write_stdout(&String::from_utf8_lossy(&script))?;
    Ok(exit::OK)
}
