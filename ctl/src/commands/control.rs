//! `surgeryctl cancel` and `surgeryctl resume`: the two calls that change a job; each
//! prints the state the job is in afterwards.

use super::Context;
use crate::error::CtlError;
use crate::exit;
use crate::render;
use crate::view::{CancelView, JobView, ResumeView};
use surgery_proto::v1::{CancelJobRequest, ResumeJobRequest};

pub async fn cancel(ctx: &Context, job_id: &str, reason: Option<&str>) -> Result<u8, CtlError> {
    let mut client = ctx.client().await?;
    let response = client
        .cancel_job(CancelJobRequest {
            job_id: job_id.to_string(),
            reason: reason.unwrap_or_default().to_string(),
        })
        .await
        .map_err(CtlError::rpc)?
        .into_inner();
    let job = response
        .job
        .ok_or_else(|| CtlError::Protocol("CancelJob answered without a job".to_string()))?;
    let view = CancelView {
        job: JobView::from(&job),
    };
    ctx.printer.document(&view, render::cancelled)?;
    Ok(exit::OK)
}

pub async fn resume(ctx: &Context, job_id: &str) -> Result<u8, CtlError> {
    let mut client = ctx.client().await?;
    let response = client
        .resume_job(ResumeJobRequest {
            job_id: job_id.to_string(),
        })
        .await
        .map_err(CtlError::rpc)?
        .into_inner();
    let job = response
        .job
        .ok_or_else(|| CtlError::Protocol("ResumeJob answered without a job".to_string()))?;
    let view = ResumeView {
        job: JobView::from(&job),
        resumed_tasks: response.resumed_tasks,
    };
    ctx.printer.document(&view, render::resumed)?;
    Ok(exit::OK)
}
