//! `surgeryctl logs JOB [--task TASK] [-f]`: the job's log lines as the coordinator
//! relays them; with `--follow` the stream stays open until the job ends.

use super::Context;
use crate::error::CtlError;
use crate::exit;
use crate::render;
use crate::view::LogView;
use surgery_proto::v1::GetLogsRequest;

pub async fn run(ctx: &Context, job_id: &str, task_id: Option<&str>, follow: bool) -> Result<u8, CtlError> {
    let mut client = ctx.client().await?;
    let request = GetLogsRequest {
        job_id: job_id.to_string(),
        task_id: task_id.unwrap_or_default().to_string(),
        follow,
        after_seq: 0,
    };
    let mut stream = client.get_logs(request).await.map_err(CtlError::rpc)?.into_inner();
    while let Some(line) = stream.message().await.map_err(CtlError::rpc)? {
        ctx.printer.item(&LogView::from(&line), render::log_line)?;
    }
    Ok(exit::OK)
}
