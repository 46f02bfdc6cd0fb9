//! `surgeryctl workers`: the workers the coordinator knows, with their slots and when
//! each was last heard from.

use super::Context;
use crate::error::CtlError;
use crate::exit;
use crate::format;
use crate::render;
use crate::view::{WorkerListView, WorkerView};
use surgery_proto::v1::ListWorkersRequest;

pub async fn run(ctx: &Context) -> Result<u8, CtlError> {
    let mut client = ctx.client().await?;
    let response = client
        .list_workers(ListWorkersRequest {})
        .await
        .map_err(CtlError::rpc)?
        .into_inner();
    let view = WorkerListView {
        workers: response.workers.iter().map(WorkerView::from).collect(),
    };
    let now = format::now_unix_ms();
    ctx.printer.document(&view, |view| render::worker_list(view, now))?;
    Ok(exit::OK)
}
