//! `surgeryctl watch JOB` (and `submit --watch`): the job's events as they happen, then
//! an exit code that says how it ended, from a final GetJob (the stream ending alone
//! does not say whether the job succeeded). A coordinator that restarts mid-watch is
//! waited for and the stream picked up after the last event seen, since jobs survive a
//! coordinator restart and a watcher should too.

use super::Context;
use crate::client::Client;
use crate::error::CtlError;
use crate::exit;
use crate::render;
use crate::view::{EventView, JobView};
use std::time::Duration;
use surgery_proto::v1::{GetJobRequest, Job, JobState, WatchJobRequest};
use tonic::{Code, Status};

/// Consecutive failed attempts (about a minute of back-off) before watch gives up.
const MAX_RECONNECTS: u32 = 8;

pub async fn run(ctx: &Context, job_id: &str) -> Result<u8, CtlError> {
    let mut client = ctx.client().await?;
    follow(ctx, &mut client, job_id).await
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
) -> Result<bool, Interruption> {
    let request = WatchJobRequest {
        job_id: job_id.to_string(),
        after_seq: *after_seq,
    };
    let mut stream = client.watch_job(request).await.map_err(interruption)?.into_inner();
    let mut any = false;
    while let Some(event) = stream.message().await.map_err(interruption)? {
        *after_seq = (*after_seq).max(event.seq);
        any = true;
        ctx.printer
            .item(&EventView::from(&event), render::event_line)
            .map_err(Interruption::Fatal)?;
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
    loop {
        let outcome = match stream_events(ctx, client, job_id, &mut after_seq).await {
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
                JobState::Succeeded => return finish(ctx, &job, exit::OK),
                JobState::Failed | JobState::Cancelled => return finish(ctx, &job, exit::JOB_FAILED),
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
        eprintln!("watch: {reason}; retrying in {}s", delay.as_secs());
        tokio::time::sleep(delay).await;
    }
}

fn finish(ctx: &Context, job: &Job, code: u8) -> Result<u8, CtlError> {
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
    fn backoff_grows_to_ten_seconds() {
        let delays: Vec<u64> = (1..=6).map(|attempt| backoff(attempt).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
    }
}
