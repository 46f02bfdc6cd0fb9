//! The baseline server: the same services, answered from memory at once - no state, no
//! store, no fsync. What gRPC and this machine cost; the coordinator's own cost is the
//! difference.

use anyhow::Context;
use futures::Stream;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use surgery_proto::v1 as pb;
use surgery_proto::v1::job_service_server::{JobService, JobServiceServer};
use surgery_proto::v1::worker_service_server::{WorkerService, WorkerServiceServer};
use tonic::{Request, Response, Status};

type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[derive(Default)]
struct Null {
    next_task: AtomicU64,
}

fn job() -> pb::Job {
    pb::Job {
        id: "bench-null".into(),
        name: "bench".into(),
        state: pb::JobState::Running as i32,
        stages: vec![pb::StageSummary {
            stage: pb::Stage::Capture as i32,
            total: 10_000,
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[tonic::async_trait]
impl JobService for Null {
    async fn submit_job(&self, _: Request<pb::SubmitJobRequest>) -> Result<Response<pb::SubmitJobResponse>, Status> {
        Ok(Response::new(pb::SubmitJobResponse {
            job: Some(job()),
            created: true,
        }))
    }
    async fn get_job(&self, _: Request<pb::GetJobRequest>) -> Result<Response<pb::GetJobResponse>, Status> {
        let tasks = (0..6)
            .map(|i| pb::Task {
                id: format!("distill/block-0{}/rate-2", i),
                state: pb::TaskState::Pending as i32,
                ..Default::default()
            })
            .collect();
        Ok(Response::new(pb::GetJobResponse {
            job: Some(job()),
            tasks,
        }))
    }
    async fn list_jobs(&self, _: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        Err(Status::unimplemented("null server"))
    }
    async fn cancel_job(&self, _: Request<pb::CancelJobRequest>) -> Result<Response<pb::CancelJobResponse>, Status> {
        Err(Status::unimplemented("null server"))
    }
    async fn resume_job(&self, _: Request<pb::ResumeJobRequest>) -> Result<Response<pb::ResumeJobResponse>, Status> {
        Err(Status::unimplemented("null server"))
    }
    type WatchJobStream = Streamed<pb::JobEvent>;
    async fn watch_job(&self, _: Request<pb::WatchJobRequest>) -> Result<Response<Self::WatchJobStream>, Status> {
        Err(Status::unimplemented("null server"))
    }
    type GetLogsStream = Streamed<pb::LogLine>;
    async fn get_logs(&self, _: Request<pb::GetLogsRequest>) -> Result<Response<Self::GetLogsStream>, Status> {
        Err(Status::unimplemented("null server"))
    }
    type GetArtifactStream = Streamed<pb::ArtifactChunk>;
    async fn get_artifact(
        &self,
        _: Request<pb::GetArtifactRequest>,
    ) -> Result<Response<Self::GetArtifactStream>, Status> {
        Err(Status::unimplemented("null server"))
    }
    async fn get_metrics(&self, _: Request<pb::GetMetricsRequest>) -> Result<Response<pb::GetMetricsResponse>, Status> {
        Err(Status::unimplemented("null server"))
    }
    async fn list_workers(
        &self,
        _: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        Err(Status::unimplemented("null server"))
    }
}

#[tonic::async_trait]
impl WorkerService for Null {
    async fn register(&self, request: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        Ok(Response::new(pb::RegisterResponse {
            worker_id: request.into_inner().name,
            heartbeat_interval_ms: 1000,
            lease_ttl_ms: 20_000,
        }))
    }
    async fn heartbeat(&self, _: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatResponse>, Status> {
        Ok(Response::new(pb::HeartbeatResponse::default()))
    }
    async fn lease_task(&self, _: Request<pb::LeaseTaskRequest>) -> Result<Response<pb::LeaseTaskResponse>, Status> {
        let n = self.next_task.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(pb::LeaseTaskResponse {
            assignment: Some(pb::TaskAssignment {
                job_id: "bench-null".into(),
                task_id: format!("bench-null:capture/shard-{n:04}"),
                attempt: 1,
                spec_yaml: crate::bench_spec(10),
                ..Default::default()
            }),
        }))
    }
    async fn complete_task(
        &self,
        _: Request<pb::CompleteTaskRequest>,
    ) -> Result<Response<pb::CompleteTaskResponse>, Status> {
        Ok(Response::new(pb::CompleteTaskResponse {}))
    }
    async fn fail_task(&self, _: Request<pb::FailTaskRequest>) -> Result<Response<pb::FailTaskResponse>, Status> {
        Ok(Response::new(pb::FailTaskResponse::default()))
    }
    async fn rendezvous(&self, _: Request<pb::RendezvousRequest>) -> Result<Response<pb::RendezvousResponse>, Status> {
        Ok(Response::new(pb::RendezvousResponse::default()))
    }
}

pub async fn serve() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?);
    let null = std::sync::Arc::new(Null::default());
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(JobServiceServer::from_arc(null.clone()))
        .add_service(WorkerServiceServer::from_arc(null))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await?;
    Ok(())
}

/// Starts this binary again as the null server and returns it with its address.
pub fn start() -> anyhow::Result<(std::process::Child, String)> {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("--serve-null")
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    Ok((child, format!("http://{}", line.trim())))
}
