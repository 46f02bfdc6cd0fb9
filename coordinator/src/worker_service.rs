//! WorkerService: what workers call - register, heartbeat, lease (long poll), complete,
//! fail, and the gang rendezvous that relays rank 0's NCCL unique id. Decode a request
//! into a [`Command`], run it through the [`Engine`], encode the [`Outcome`]; the rules
//! live in the transitions.

use crate::command::{Command, Outcome, Reject};
use crate::convert;
use crate::engine::{Engine, short_id};
use crate::job_service::{observed, unexpected};
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

    async fn run(&self, command: Command) -> Result<Outcome, Status> {
        self.engine.run(command).await.map_err(convert::reject_status)
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

#[tonic::async_trait]
impl pb::worker_service_server::WorkerService for WorkerApi {
    async fn register(&self, request: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        observed(&self.engine, "Register", async {
            let req = request.into_inner();
            let host = req.host.clone();
            let command = Command::Register {
                name: req.name,
                host: req.host,
                version: req.version,
                slots: convert::slots_from(req.slots),
                id_suffix: short_id(),
            };
            let Outcome::Registered(worker_id) = self.run(command).await? else {
                return Err(unexpected("Register"));
            };
            tracing::info!(worker = %worker_id, %host, "worker registered");
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
            let command = Command::Heartbeat {
                worker_id: req.worker_id,
                reports: convert::reports_from(req.tasks),
            };
            let Outcome::Heartbeat {
                stops,
                lease_deadline_ms,
            } = self.run(command).await?
            else {
                return Err(unexpected("Heartbeat"));
            };
            Ok(Response::new(pb::HeartbeatResponse {
                stop: stops.into_iter().map(convert::stop).collect(),
                lease_deadline_unix_ms: lease_deadline_ms,
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
            let command = Command::Complete {
                worker_id: req.worker_id,
                task: req.task_id,
                attempt: req.attempt,
                result: convert::result_from(req.result),
            };
            let Outcome::Completed = self.run(command).await? else {
                return Err(unexpected("CompleteTask"));
            };
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
            let (task, attempt, message) = (req.task_id.clone(), req.attempt, req.message.clone());
            let command = Command::Fail {
                worker_id: req.worker_id,
                task: req.task_id,
                attempt: req.attempt,
                class,
                message: req.message,
            };
            let Outcome::Failed(outcome) = self.run(command).await? else {
                return Err(unexpected("FailTask"));
            };
            tracing::warn!(%task, attempt, class = class.word(), %message, %outcome, "task failed");
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
            let wait = self.poll_wait(req.wait_ms);
            let check_in = Command::Rendezvous {
                worker_id: req.worker_id,
                task: req.task_id,
                attempt: req.attempt,
                rank: req.rank,
                endpoint: req.endpoint,
                nccl_unique_id: req.nccl_unique_id,
            };
            let outcome = self
                .engine
                .run_until(check_in, wait, |o| matches!(o, Outcome::Rendezvous(Some(_))))
                .await
                .map_err(convert::reject_status)?;
            let Outcome::Rendezvous(ready) = outcome else {
                return Err(unexpected("Rendezvous"));
            };
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
