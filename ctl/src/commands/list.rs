//! `surgeryctl list [--state STATE]...`: every job, or those in the given states.

use super::Context;
use crate::cli::JobStateArg;
use crate::error::CtlError;
use crate::exit;
use crate::render;
use crate::view::{JobListView, JobView};
use surgery_proto::v1::{JobState, ListJobsRequest};

pub async fn run(ctx: &Context, states: &[JobStateArg]) -> Result<u8, CtlError> {
    let mut client = ctx.client().await?;
    let request = ListJobsRequest {
        states: states.iter().map(|state| JobState::from(*state) as i32).collect(),
    };
    let response = client.list_jobs(request).await.map_err(CtlError::rpc)?.into_inner();
    let view = JobListView {
        jobs: response.jobs.iter().map(JobView::from).collect(),
    };
    ctx.printer.document(&view, render::job_list)?;
    Ok(exit::OK)
}
