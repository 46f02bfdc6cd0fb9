//! `surgeryctl status JOB [--tasks]`: the job with its distill tasks (the distillation
//! table is built from them), or with every task when `--tasks` asks for the task table.

use super::Context;
use crate::error::CtlError;
use crate::exit;
use crate::render;
use crate::view::StatusView;
use surgery_proto::v1::{GetJobRequest, Stage};

pub async fn run(ctx: &Context, job_id: &str, with_tasks: bool) -> Result<u8, CtlError> {
    let mut client = ctx.client().await?;
    let response = client
        .get_job(GetJobRequest {
            job_id: job_id.to_string(),
            include_tasks: true,
            // Only what the view shows: a job can have thousands of capture tasks.
            task_stages: if with_tasks {
                Vec::new()
            } else {
                vec![Stage::Distill as i32]
            },
        })
        .await
        .map_err(CtlError::rpc)?
        .into_inner();
    let job = response
        .job
        .ok_or_else(|| CtlError::Protocol("GetJob answered without a job".to_string()))?;
    let view = StatusView::new(&job, &response.tasks);
    ctx.printer.document(&view, |view| render::status(view, with_tasks))?;
    Ok(exit::OK)
}
