//! The gang's [`Rendezvous`] over the coordinator's gRPC call: one `Rendezvous` request per
//! [`Rendezvous::meet`], made from the task's thread; an unreachable coordinator is "call
//! again", a stale attempt or forgotten worker is a revoked lease.

use super::client::{Client, is_transient};
use crate::stages::gang::{Arrival, Meeting, Rendezvous};
use crate::stages::task::{StopReason, TaskError};
use std::time::Duration;
use surgery_proto::error::decode;
use surgery_proto::v1 as pb;
use surgery_proto::v1::ErrorKind;

/// How long one call waits at the coordinator for the others.
const WAIT_MS: u32 = 5_000;

/// How long to wait before calling an unreachable coordinator again.
const RETRY_DELAY: Duration = Duration::from_millis(500);

pub struct CoordinatorRendezvous {
    pub client: Client,
    pub runtime: tokio::runtime::Handle,
    pub worker_id: String,
    /// `job:task`.
    pub task_id: String,
    pub attempt: u32,
}

impl Rendezvous for CoordinatorRendezvous {
    fn meet(&self, arrival: &Arrival) -> Result<Option<Meeting>, TaskError> {
        let request = pb::RendezvousRequest {
            worker_id: self.worker_id.clone(),
            task_id: self.task_id.clone(),
            attempt: self.attempt,
            rank: arrival.rank,
            endpoint: arrival.endpoint.clone(),
            nccl_unique_id: arrival.nccl_unique_id.clone(),
            wait_ms: WAIT_MS,
        };
        match self.runtime.block_on(self.client.clone().rendezvous(request)) {
            Ok(response) => {
                let response = response.into_inner();
                Ok(response.ready.then(|| Meeting {
                    endpoints: response.members.into_iter().map(|m| m.endpoint).collect(),
                    nccl_unique_id: response.nccl_unique_id,
                }))
            }
            Err(status) if is_transient(&status) => {
                std::thread::sleep(RETRY_DELAY);
                Ok(None)
            }
            Err(status) => {
                let err = decode(&status);
                Err(match err.kind() {
                    ErrorKind::StaleAttempt | ErrorKind::UnknownWorker => TaskError::Stopped(StopReason::Revoked),
                    _ => TaskError::Fatal(format!("rendezvous: {}", err.render())),
                })
            }
        }
    }
}
