//! `surgeryctl metrics JOB [--task TASK]`: the training curves workers reported, one row
//! per reported step, across attempts (a resumed task continues its curve).

use super::Context;
use crate::error::CtlError;
use crate::exit;
use crate::render;
use crate::view::{MetricListView, MetricPointView};
use surgery_proto::v1::GetMetricsRequest;

pub async fn run(ctx: &Context, job_id: &str, task: Option<&str>) -> Result<u8, CtlError> {
    let mut client = ctx.client().await?;
    let response = client
        .get_metrics(GetMetricsRequest {
            job_id: job_id.to_string(),
            task_id: task.unwrap_or_default().to_string(),
        })
        .await
        .map_err(CtlError::rpc)?
        .into_inner();
    let view = MetricListView {
        points: response.points.iter().map(MetricPointView::from).collect(),
    };
    ctx.printer.document(&view, render::metric_list)?;
    Ok(exit::OK)
}
