//! `surgeryctl submit FILE`: check the spec locally (a bad spec fails without a
//! server), send it with an idempotency key, print the job id; `--watch` then follows
//! the job like `watch`. `--reuse JOB` (and `surgeryctl fork`) forks JOB: the new job
//! takes over its parent's reusable capture and distillation, and what it reused is said
//! on stderr.

use super::{Context, validate, watch};
use crate::error::CtlError;
use crate::exit;
use crate::view::{JobView, SubmitView};
use surgery_proto::v1::SubmitJobRequest;

pub async fn run(ctx: &Context, args: &crate::cli::SubmitArgs) -> Result<u8, CtlError> {
    let (file, bytes) = validate::read_spec(&args.file)?;
    let yaml = validate::check(&file, bytes)?;
    let request_id = args
        .request_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut client = ctx.client().await?;
    let response = client
        .submit_job(SubmitJobRequest {
            request_id: request_id.clone(),
            spec_yaml: yaml,
            fork_of: args.reuse.clone().unwrap_or_default(),
        })
        .await
        .map_err(|status| CtlError::rpc_for_file(status, &file))?
        .into_inner();
    let job = response
        .job
        .ok_or_else(|| CtlError::Protocol("SubmitJob answered without a job".to_string()))?;
    let view = SubmitView {
        job: JobView::from(&job),
        created: response.created,
        request_id,
    };
    if !view.created {
        // stderr, so `JOB=$(surgeryctl submit ...)` still captures just the id.
        eprintln!(
            "already submitted: request id {} created job {} earlier",
            view.request_id, view.job.id
        );
    }
    if let Some(parent) = &view.job.forked_from {
        // stderr, as above: stdout is the id alone.
        eprintln!("forked from {parent}:");
        for note in &view.job.reuse_notes {
            eprintln!("  {note}");
        }
    }
    let text = |view: &SubmitView| view.job.id.clone();
    if args.watch {
        // One item per line from here on, so JSON output stays JSON Lines throughout.
        ctx.printer.item(&view, text)?;
        return watch::follow(ctx, &mut client, &job.id).await;
    }
    ctx.printer.document(&view, text)?;
    Ok(exit::OK)
}
