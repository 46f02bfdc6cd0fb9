//! `surgeryctl watch JOB` (and `submit --watch`): the job's events as they happen, then
//! an exit code that says how it ended, from a final GetJob (the stream ending alone
//! does not say whether the job succeeded). A coordinator that restarts mid-watch is
//! waited for and the stream picked up after the last event seen, since jobs survive a
//! coordinator restart and a watcher should too.
//!
//! On a terminal (and `--output table`) a progress bar per stage sits under the events,
//! refreshed every second from GetJob with the ETA of [`crate::progress`]; piped or in
//! JSON/YAML the output is the plain event lines only.

use super::Context;
use crate::cli::OutputFormat;
use crate::client::Client;
use crate::error::CtlError;
use crate::exit;
use crate::progress::{StageProgress, stage_message, stage_progress};
use crate::render;
use crate::view::{EventView, JobView, stage_word};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;
use surgery_proto::v1::{GetJobRequest, Job, JobState, Stage, Task, WatchJobRequest};
use tonic::{Code, Status};

/// Consecutive failed attempts (about a minute of back-off) before watch gives up.
const MAX_RECONNECTS: u32 = 8;

/// How often the bars ask for the tasks' progress.
const REFRESH: Duration = Duration::from_secs(1);

/// The per-stage bars of a watch on a terminal.
struct Bars {
    multi: MultiProgress,
    bars: BTreeMap<i32, ProgressBar>,
}

impl Bars {
    /// Bars when stdout is a terminal showing the table form; `None` otherwise.
    fn for_output(format: OutputFormat) -> Option<Bars> {
        (matches!(format, OutputFormat::Table) && std::io::stdout().is_terminal())
            .then(|| Bars::drawing_to(ProgressDrawTarget::stdout()))
    }

    fn drawing_to(target: ProgressDrawTarget) -> Bars {
        Bars {
            multi: MultiProgress::with_draw_target(target),
            bars: BTreeMap::new(),
        }
    }

    fn style() -> ProgressStyle {
        ProgressStyle::with_template("{prefix:>9} [{bar:30}] {percent:>3}% {msg}")
            .expect("a valid template")
            .progress_chars("=> ")
    }

    /// Draws `stages` (new stages get a bar, in pipeline order as they appear).
    fn update(&mut self, stages: &[StageProgress]) {
        for p in stages {
            let key = p.stage as i32;
            let multi = &self.multi;
            let bar = self.bars.entry(key).or_insert_with(|| {
                let bar = multi.add(ProgressBar::new(1000).with_style(Bars::style()));
                bar.set_prefix(stage_word(p.stage));
                bar
            });
            bar.set_position((p.fraction * 1000.0).round() as u64);
            bar.set_message(stage_message(p));
        }
    }

    /// An event line above the bars.
    fn println(&self, line: &str) {
        // A terminal that went away is noticed by the next write to stdout.
        let _ = self.multi.println(line);
    }

    /// Leaves the bars as they last were.
    fn finish(&self) {
        for bar in self.bars.values() {
            bar.abandon();
        }
    }
}

/// The tasks the bars can place (a task of an unknown stage has no bar).
fn known(tasks: Vec<Task>) -> Vec<Task> {
    tasks.into_iter().filter(|t| t.stage() != Stage::Unspecified).collect()
}

pub async fn run(ctx: &Context, job_id: &str) -> Result<u8, CtlError> {
    let mut client = ctx.client().await?;
    follow(ctx, &mut client, job_id).await
}

/// Refreshes `bars` from the job's tasks.
async fn refresh(client: &mut Client, job_id: &str, bars: &mut Bars) -> Result<(), Interruption> {
    let request = GetJobRequest {
        job_id: job_id.to_string(),
        include_tasks: true,
        task_stages: Vec::new(),
    };
    let response = client.get_job(request).await.map_err(interruption)?.into_inner();
    bars.update(&stage_progress(&known(response.tasks)));
    Ok(())
}

/// Why one pass over the stream stopped short.
enum Interruption {
    /// The connection went away; worth another try.
    Lost(Status),
    /// Anything else ends the watch.
    Fatal(CtlError),
}

/// A status that means "the coordinator went away", not "the coordinator said no":
/// transport failures come without the typed error a coordinator always attaches.
fn is_transient(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled) && status.details().is_empty()
}

fn interruption(status: Status) -> Interruption {
    if is_transient(&status) {
        Interruption::Lost(status)
    } else {
        Interruption::Fatal(CtlError::rpc(status))
    }
}

/// Streams events after `after_seq`, moving it along; true when any event arrived.
async fn stream_events(
    ctx: &Context,
    client: &mut Client,
    job_id: &str,
    after_seq: &mut u64,
    mut bars: Option<&mut Bars>,
) -> Result<bool, Interruption> {
    let request = WatchJobRequest {
        job_id: job_id.to_string(),
        after_seq: *after_seq,
    };
    let mut stream = client.watch_job(request).await.map_err(interruption)?.into_inner();
    let mut any = false;
    let mut tick = tokio::time::interval(REFRESH);
    loop {
        let event = match bars.as_deref_mut() {
            Some(bars) => tokio::select! {
                event = stream.message() => event.map_err(interruption)?,
                _ = tick.tick() => {
                    refresh(client, job_id, bars).await?;
                    continue;
                }
            },
            None => stream.message().await.map_err(interruption)?,
        };
        let Some(event) = event else { break };
        *after_seq = (*after_seq).max(event.seq);
        any = true;
        let view = EventView::from(&event);
        match bars.as_deref() {
            Some(bars) => bars.println(&render::event_line(&view)),
            None => ctx
                .printer
                .item(&view, render::event_line)
                .map_err(Interruption::Fatal)?,
        }
    }
    Ok(any)
}

async fn final_job(client: &mut Client, job_id: &str) -> Result<Job, Interruption> {
    let request = GetJobRequest {
        job_id: job_id.to_string(),
        include_tasks: false,
        task_stages: Vec::new(),
    };
    let response = client.get_job(request).await.map_err(interruption)?.into_inner();
    response
        .job
        .ok_or_else(|| Interruption::Fatal(CtlError::Protocol("GetJob answered without a job".to_string())))
}

/// 1s, 2s, 4s, then 10s between attempts.
fn backoff(attempt: u32) -> Duration {
    Duration::from_secs((1u64 << attempt.saturating_sub(1).min(4)).min(10))
}

pub async fn follow(ctx: &Context, client: &mut Client, job_id: &str) -> Result<u8, CtlError> {
    let mut after_seq = 0u64;
    let mut failed_attempts = 0u32;
    let mut bars = Bars::for_output(ctx.printer.format);
    loop {
        let outcome = match stream_events(ctx, client, job_id, &mut after_seq, bars.as_mut()).await {
            Ok(progressed) => {
                if progressed {
                    failed_attempts = 0;
                }
                final_job(client, job_id).await
            }
            Err(interruption) => Err(interruption),
        };
        let reason = match outcome {
            Ok(job) => match job.state() {
                JobState::Succeeded => return finish(ctx, client, job_id, bars, &job, exit::OK).await,
                JobState::Failed | JobState::Cancelled => {
                    return finish(ctx, client, job_id, bars, &job, exit::JOB_FAILED).await;
                }
                // The stream ended but the job goes on (the coordinator is shutting
                // down, say): pick it up again.
                _ => "the event stream ended while the job is still going".to_string(),
            },
            Err(Interruption::Fatal(err)) => return Err(err),
            Err(Interruption::Lost(status)) => {
                let message = status.message();
                if message.is_empty() {
                    format!("{:?}", status.code())
                } else {
                    message.to_string()
                }
            }
        };
        failed_attempts += 1;
        if failed_attempts > MAX_RECONNECTS {
            return Err(CtlError::Connect {
                addr: ctx.global.addr.clone(),
                reason: format!("lost while watching {job_id}: {reason}"),
            });
        }
        let delay = backoff(failed_attempts);
        let line = format!("watch: {reason}; retrying in {}s", delay.as_secs());
        match &bars {
            Some(bars) => bars.println(&line),
            None => eprintln!("{line}"),
        }
        tokio::time::sleep(delay).await;
    }
}

async fn finish(
    ctx: &Context,
    client: &mut Client,
    job_id: &str,
    bars: Option<Bars>,
    job: &Job,
    code: u8,
) -> Result<u8, CtlError> {
    if let Some(mut bars) = bars {
        // The bars' last state is the job's final one; a failed refresh only leaves
        // them a second old.
        let _ = refresh(client, job_id, &mut bars).await;
        bars.finish();
    }
    ctx.printer.text_only(&render::watch_outcome(&JobView::from(job)))?;
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use surgery_proto::v1::{ErrorKind, ServiceError};

    #[test]
    fn only_transport_failures_are_retried() {
        assert!(is_transient(&Status::unavailable("connection reset")));
        assert!(is_transient(&Status::unknown("h2 protocol error")));
        assert!(!is_transient(&Status::not_found("no job")));
        // A coordinator that says "unavailable" itself is believed.
        assert!(!is_transient(
            &ServiceError::new(ErrorKind::Unavailable, "shutting down").into_status()
        ));
    }

    #[test]
    fn a_bar_per_stage_with_the_stage_progress() {
        let stage = |stage: Stage, fraction: f64, eta_s: Option<f64>| StageProgress {
            stage,
            tasks: 4,
            succeeded: (fraction * 4.0) as usize,
            running: 1,
            failed: 0,
            fraction,
            eta_s,
        };
        let mut bars = Bars::drawing_to(ProgressDrawTarget::hidden());
        bars.update(&[
            stage(Stage::Capture, 1.0, None),
            stage(Stage::Distill, 0.25, Some(65.0)),
        ]);
        bars.update(&[stage(Stage::Capture, 1.0, None), stage(Stage::Distill, 0.5, Some(20.0))]);
        let drawn: Vec<(String, u64, String)> = bars
            .bars
            .values()
            .map(|b| (b.prefix(), b.position(), b.message()))
            .collect();
        assert_eq!(
            drawn,
            [
                ("capture".to_string(), 1000, "4/4 tasks, 1 running".to_string()),
                ("distill".to_string(), 500, "2/4 tasks, 1 running, ETA 20s".to_string()),
            ]
        );
    }

    #[test]
    fn backoff_grows_to_ten_seconds() {
        let delays: Vec<u64> = (1..=6).map(|attempt| backoff(attempt).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
    }
}
