//! WorkerService: what workers call - register, heartbeat, lease (long poll), complete,
//! fail, and the gang rendezvous that relays rank 0's NCCL unique id.

use crate::cluster::Reject;
use crate::convert;
use crate::engine::{Engine, short_id};
use crate::job_service::observed;
use std::sync::Arc;
use std::time::Duration;
use surgery_proto::v1 as pb;
use tonic::{Request, Response, Status};

pub struct WorkerApi {
    pub engine: Arc<Engine>,
}

impl WorkerApi {
    /// A client's wait, capped by the configured maximum; 0 means the maximum.
    fn poll_wait(&self, wait_ms: u32) -> Duration {
        let max = self.engine.config.max_poll;
        if wait_ms == 0 {
            max
        } else {
            Duration::from_millis(u64::from(wait_ms)).min(max)
        }
    }
}

fn require(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        Err(convert::reject_status(Reject::Invalid(format!(
            "{field} must not be empty"
        ))))
    } else {
        Ok(())
    }
}

/// 128 bytes, NCCL's ncclUniqueId.
const NCCL_UNIQUE_ID_BYTES: usize = 128;

#[tonic::async_trait]
impl pb::worker_service_server::WorkerService for WorkerApi {
    async fn register(&self, request: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        observed(&self.engine, "Register", async {
            let req = request.into_inner();
            let slots = convert::slots_from(req.slots);
            let (outcome, pending) = self.engine.mutate(true, |state, now| {
                state
                    .cluster
                    .register(now, &req.name, &req.host, &req.version, slots, &short_id())
            });
            self.engine.finish(pending).await;
            let worker_id = outcome.map_err(convert::reject_status)?;
            tracing::info!(worker = %worker_id, host = %req.host, "worker registered");
            let config = &self.engine.config;
            Ok(Response::new(pb::RegisterResponse {
                worker_id,
                heartbeat_interval_ms: config.heartbeat_interval.as_millis() as u32,
                lease_ttl_ms: config.lease_ttl.as_millis() as u32,
            }))
        })
        .await
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        observed(&self.engine, "Heartbeat", async {
            let req = request.into_inner();
            require("worker_id", &req.worker_id)?;
            let reports = convert::reports_from(req.tasks);
            let timing = self.engine.timing;
            // Heartbeats change no scheduling opportunity; the periodic tick handles
            // expiries, so skip the scheduler here (it is the hot path).
            let (outcome, pending) = self.engine.mutate(false, |state, now| {
                state
                    .cluster
                    .heartbeat(now, timing, &req.worker_id, reports)
                    .map(|stops| (stops, now + timing.lease_ttl_ms))
            });
            self.engine.finish(pending).await;
            let (stops, deadline) = outcome.map_err(convert::reject_status)?;
            Ok(Response::new(pb::HeartbeatResponse {
                stop: stops
                    .into_iter()
                    .map(|s| pb::StopTask {
                        task_id: s.task_id,
                        attempt: s.attempt,
                        reason: s.reason,
                    })
                    .collect(),
                lease_deadline_unix_ms: deadline,
            }))
        })
        .await
    }

    async fn lease_task(
        &self,
        request: Request<pb::LeaseTaskRequest>,
    ) -> Result<Response<pb::LeaseTaskResponse>, Status> {
        observed(&self.engine, "LeaseTask", async {
            let req = request.into_inner();
            require("worker_id", &req.worker_id)?;
            let wait = self.poll_wait(req.wait_ms);
            let assignment = self
                .engine
                .lease(&req.worker_id, req.slot, wait)
                .await
                .map_err(convert::reject_status)?;
            if let Some(a) = &assignment {
                tracing::info!(task = %a.task_id, attempt = a.attempt, worker = %req.worker_id, "leased");
            }
            Ok(Response::new(pb::LeaseTaskResponse { assignment }))
        })
        .await
    }

    async fn complete_task(
        &self,
        request: Request<pb::CompleteTaskRequest>,
    ) -> Result<Response<pb::CompleteTaskResponse>, Status> {
        observed(&self.engine, "CompleteTask", async {
            let req = request.into_inner();
            require("worker_id", &req.worker_id)?;
            let result = convert::result_from(req.result);
            if let Some((name, value)) = result.metrics.iter().find(|(_, v)| !v.is_finite()) {
                return Err(convert::reject_status(Reject::Invalid(format!(
                    "result metric `{name}` is {value}; report a failure instead of a non-finite result"
                ))));
            }
            let (outcome, pending) = self.engine.mutate(true, |state, now| {
                state
                    .cluster
                    .complete(now, &req.worker_id, &req.task_id, req.attempt, result)
            });
            self.engine.finish(pending).await;
            outcome.map_err(convert::reject_status)?;
            Ok(Response::new(pb::CompleteTaskResponse {}))
        })
        .await
    }

    async fn fail_task(&self, request: Request<pb::FailTaskRequest>) -> Result<Response<pb::FailTaskResponse>, Status> {
        observed(&self.engine, "FailTask", async {
            let req = request.into_inner();
            require("worker_id", &req.worker_id)?;
            let class = pb::FailureClass::try_from(req.class)
                .map_err(|_| convert::reject_status(Reject::Invalid(format!("unknown failure class {}", req.class))))
                .and_then(|c| convert::failure_class_from(c).map_err(convert::reject_status))?;
            let (outcome, pending) = self.engine.mutate(true, |state, now| {
                state
                    .cluster
                    .fail(now, &req.worker_id, &req.task_id, req.attempt, class, &req.message)
            });
            self.engine.finish(pending).await;
            let outcome = outcome.map_err(convert::reject_status)?;
            tracing::warn!(task = %req.task_id, attempt = req.attempt, class = class.word(), message = %req.message, %outcome, "task failed");
            Ok(Response::new(pb::FailTaskResponse { outcome }))
        })
        .await
    }

    async fn rendezvous(
        &self,
        request: Request<pb::RendezvousRequest>,
    ) -> Result<Response<pb::RendezvousResponse>, Status> {
        observed(&self.engine, "Rendezvous", async {
            let req = request.into_inner();
            require("worker_id", &req.worker_id)?;
            if req.rank != 0 && !req.nccl_unique_id.is_empty() {
                return Err(convert::reject_status(Reject::Invalid(
                    "only rank 0 brings the NCCL unique id".into(),
                )));
            }
            if !req.nccl_unique_id.is_empty() && req.nccl_unique_id.len() != NCCL_UNIQUE_ID_BYTES {
                return Err(convert::reject_status(Reject::Invalid(format!(
                    "an NCCL unique id has {NCCL_UNIQUE_ID_BYTES} bytes, not {}",
                    req.nccl_unique_id.len()
                ))));
            }
            let wait = self.poll_wait(req.wait_ms);
            let ready = self
                .engine
                .rendezvous(
                    &req.worker_id,
                    &req.task_id,
                    req.attempt,
                    req.rank,
                    &req.endpoint,
                    &req.nccl_unique_id,
                    wait,
                )
                .await
                .map_err(convert::reject_status)?;
            Ok(Response::new(match ready {
                Some(r) => pb::RendezvousResponse {
                    ready: true,
                    members: convert::gang_members(&r.members),
                    nccl_unique_id: r.nccl_unique_id,
                },
                None => pb::RendezvousResponse::default(),
            }))
        })
        .await
    }
}
