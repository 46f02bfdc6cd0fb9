//! One module per subcommand; each returns the exit code of a run that went as planned
//! (`watch` can end with "job failed") or a [`CtlError`] for everything else. Only
//! commands that talk to the coordinator connect, so `validate` and `completions` work
//! offline.

mod completions;
mod control;
mod list;
mod logs;
mod metrics;
mod previews;
mod status;
mod submit;
mod validate;
mod watch;
mod workers;

use crate::cli::{Cli, Command, GlobalArgs};
use crate::client::{self, Client};
use crate::error::CtlError;
use crate::output::Printer;

/// What every command gets: the global flags and the printer they chose.
pub struct Context {
    pub global: GlobalArgs,
    pub printer: Printer,
}

impl Context {
    pub async fn client(&self) -> Result<Client, CtlError> {
        client::connect(&self.global.addr, self.global.token.as_deref(), self.global.timeout).await
    }
}

pub async fn dispatch(cli: Cli) -> Result<u8, CtlError> {
    let ctx = Context {
        printer: Printer::new(cli.global.output),
        global: cli.global,
    };
    match cli.command {
        Command::Submit(args) => submit::run(&ctx, &args).await,
        Command::Fork { job, submit: fork } => {
            let args = crate::cli::SubmitArgs {
                file: fork.file,
                request_id: fork.request_id,
                watch: fork.watch,
                reuse: Some(job),
            };
            submit::run(&ctx, &args).await
        }
        Command::Validate { file } => validate::run(&ctx, &file),
        Command::Status { job, tasks } => status::run(&ctx, &job, tasks).await,
        Command::List { state } => list::run(&ctx, &state).await,
        Command::Cancel { job, reason } => control::cancel(&ctx, &job, reason.as_deref()).await,
        Command::Resume { job } => control::resume(&ctx, &job).await,
        Command::Logs { job, task, follow } => logs::run(&ctx, &job, task.as_deref(), follow).await,
        Command::Watch { job } => watch::run(&ctx, &job).await,
        Command::Workers => workers::run(&ctx).await,
        Command::Metrics { job, task } => metrics::run(&ctx, &job, task.as_deref()).await,
        Command::Previews { job, dir } => previews::run(&ctx, &job, &dir).await,
        Command::Completions { shell } => completions::run(shell),
    }
}
