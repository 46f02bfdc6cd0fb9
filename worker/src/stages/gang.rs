//! A gang task's meeting point: every member calls the coordinator's Rendezvous with where
//! its CPU collective listens (and rank 0 with a fresh NCCL unique id) until all have
//! arrived, then builds the collective: NCCL on CUDA, a TCP ring on CPU.

use super::TaskContext;
use crate::agent::client::{Client, is_transient};
use crate::agent::task::{StopReason, TaskError};
use crate::collective::{Collective, CollectiveError, Nccl, TcpRing, gang_token};
use std::time::Duration;
use surgery_proto::error::decode;
use surgery_proto::v1 as pb;
use surgery_proto::v1::ErrorKind;
use tch::Device;

pub struct Gang {
    client: Client,
    worker_id: String,
    task_id: String,
    attempt: u32,
    rank: u32,
    world: u32,
    advertise_host: String,
    timeout: Duration,
}

/// A collective failure ends this attempt of the gang: a lost peer is not counted against
/// the retry budget (like a lost lease), a broken setup is fatal.
pub fn collective_error(err: CollectiveError) -> TaskError {
    if err.is_retryable() {
        TaskError::Lost(err.to_string())
    } else {
        TaskError::Fatal(err.to_string())
    }
}

impl Gang {
    pub fn new(
        client: Client,
        worker_id: String,
        assignment: &pb::TaskAssignment,
        advertise_host: String,
        timeout: Duration,
    ) -> Gang {
        Gang {
            client,
            worker_id,
            task_id: assignment.task_id.clone(),
            attempt: assignment.attempt,
            rank: assignment.rank,
            world: assignment.gang_size,
            advertise_host,
            timeout,
        }
    }

    pub fn rank(&self) -> usize {
        self.rank as usize
    }

    pub fn world_size(&self) -> usize {
        self.world as usize
    }

    /// Waits for every member, then connects the collective for `device`.
    pub fn connect(&self, ctx: &TaskContext, device: Device) -> Result<Box<dyn Collective>, TaskError> {
        let rank = self.rank();
        match device {
            Device::Cuda(index) => {
                let id = if rank == 0 {
                    Nccl::unique_id().map_err(collective_error)?.to_vec()
                } else {
                    Vec::new()
                };
                let met = self.meet(ctx, "", &id)?;
                let id: [u8; 128] = met
                    .nccl_unique_id
                    .as_slice()
                    .try_into()
                    .map_err(|_| TaskError::Lost("rank 0 brought no NCCL unique id".into()))?;
                let nccl = Nccl::new(index, rank, self.world_size(), id, self.timeout).map_err(collective_error)?;
                Ok(Box::new(nccl))
            }
            _ => {
                let (listener, endpoint) = TcpRing::bind(&self.advertise_host).map_err(collective_error)?;
                let met = self.meet(ctx, &endpoint, &[])?;
                let endpoints: Vec<String> = met.members.iter().map(|m| m.endpoint.clone()).collect();
                let ring = listener
                    .connect(rank, &endpoints, &gang_token(&self.task_id, self.attempt), self.timeout)
                    .map_err(collective_error)?;
                Ok(Box::new(ring))
            }
        }
    }

    fn meet(&self, ctx: &TaskContext, endpoint: &str, nccl_id: &[u8]) -> Result<pb::RendezvousResponse, TaskError> {
        let request = pb::RendezvousRequest {
            worker_id: self.worker_id.clone(),
            task_id: self.task_id.clone(),
            attempt: self.attempt,
            rank: self.rank,
            endpoint: endpoint.to_string(),
            nccl_unique_id: nccl_id.to_vec(),
            wait_ms: 5_000,
        };
        ctx.handle
            .log("info", format!("waiting for the gang of {} at rendezvous", self.world));
        loop {
            ctx.handle.check()?;
            match ctx.block_on(self.client.clone().rendezvous(request.clone())) {
                Ok(response) => {
                    let response = response.into_inner();
                    if response.ready {
                        return Ok(response);
                    }
                }
                Err(status) if is_transient(&status) => std::thread::sleep(Duration::from_millis(500)),
                Err(status) => {
                    let err = decode(&status);
                    return Err(match err.kind() {
                        ErrorKind::StaleAttempt | ErrorKind::UnknownWorker => TaskError::Stopped(StopReason::Revoked),
                        _ => TaskError::Fatal(format!("rendezvous: {}", err.render())),
                    });
                }
            }
        }
    }
}
