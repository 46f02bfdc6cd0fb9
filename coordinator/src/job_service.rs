//! JobService: what users (surgeryctl) call. Thin: decode the request into a
//! [`Command`] (parsing the spec is decoding), run it through the [`Engine`], encode the
//! answer; reads go straight to the engine's durable view.

use crate::artifacts;
use crate::command::{Command, Outcome, Reject};
use crate::convert;
use crate::engine::{Engine, short_id};
use crate::model::{JobState, TaskRecord};
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use surgery_core::ids::TaskRef;
use surgery_core::spec::JobSpec;
use surgery_proto::v1 as pb;
use surgery_proto::v1::{ErrorKind, FieldError, ServiceError};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

pub struct JobApi {
    pub engine: Arc<Engine>,
}

type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Times a call and counts its errors under the method's name.
pub async fn observed<T>(
    engine: &Engine,
    method: &'static str,
    call: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let start = Instant::now();
    let result = call.await;
    engine
        .metrics
        .rpc_seconds
        .with_label_values(&[method])
        .observe(start.elapsed().as_secs_f64());
    if let Err(status) = &result {
        engine
            .metrics
            .rpc_errors
            .with_label_values(&[method, &format!("{:?}", status.code())])
            .inc();
    }
    result
}

/// A command answered with another command's outcome: a bug, reported as one.
pub fn unexpected(method: &str) -> Status {
    ServiceError::new(
        ErrorKind::Internal,
        format!("{method}: the engine answered with another command's outcome"),
    )
    .into_status()
}

/// A spec error as the typed error a client prints field by field.
pub fn spec_error_status(err: &surgery_core::spec::SpecError) -> Status {
    let fields = err
        .errors
        .iter()
        .map(|e| FieldError {
            path: e.path.clone(),
            line: e.line,
            column: e.column,
            message: e.message.clone(),
        })
        .collect();
    ServiceError::new(ErrorKind::InvalidSpec, err.summary())
        .with_fields(fields)
        .into_status()
}

fn job_view(engine: &Engine, state: &crate::engine::State, now: i64, job_id: &str) -> Result<pb::Job, Reject> {
    let job = state
        .cluster
        .jobs
        .get(job_id)
        .ok_or_else(|| Reject::NotFound(format!("job {job_id} does not exist")))?;
    let tasks = &state.cluster.tasks[job_id].list;
    let schedule = engine.explain(state, now);
    Ok(convert::job(job, tasks, schedule.waiting.get(job_id)))
}

#[tonic::async_trait]
impl pb::job_service_server::JobService for JobApi {
    async fn submit_job(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        observed(&self.engine, "SubmitJob", async {
            let req = request.into_inner();
            let spec = JobSpec::parse(&req.spec_yaml).map_err(|e| spec_error_status(&e))?;
            let command = Command::Submit {
                request_id: req.request_id,
                spec_yaml: req.spec_yaml,
                spec: Arc::new(spec),
                id_suffix: short_id(),
                fork_of: (!req.fork_of.is_empty()).then_some(req.fork_of),
            };
            let outcome = self.engine.run(command).await.map_err(convert::reject_status)?;
            let Outcome::Submitted(submitted) = outcome else {
                return Err(unexpected("SubmitJob"));
            };
            if submitted.created {
                tracing::info!(job = %submitted.job_id, "job submitted");
            }
            let job = self
                .engine
                .read(|state, now| job_view(&self.engine, state, now, &submitted.job_id))
                .await
                .map_err(convert::reject_status)?;
            Ok(Response::new(pb::SubmitJobResponse {
                job: Some(job),
                created: submitted.created,
            }))
        })
        .await
    }

    async fn get_job(&self, request: Request<pb::GetJobRequest>) -> Result<Response<pb::GetJobResponse>, Status> {
        observed(&self.engine, "GetJob", async {
            let req = request.into_inner();
            let stages: Vec<i32> = req.task_stages.clone();
            let (job, tasks) = self
                .engine
                .read(|state, now| {
                    let record = state
                        .cluster
                        .jobs
                        .get(&req.job_id)
                        .ok_or_else(|| Reject::NotFound(format!("job {} does not exist", req.job_id)))?;
                    let all = &state.cluster.tasks[&req.job_id];
                    let schedule = self.engine.explain(state, now);
                    let waiting = schedule.waiting.get(&req.job_id);
                    let job = convert::job(record, &all.list, waiting);
                    let tasks: Vec<pb::Task> = if req.include_tasks {
                        // The job's reason to wait applies to its runnable tasks.
                        let reason = waiting.map(|w| w.reason.as_str()).unwrap_or("");
                        let finished = all.finished_stages();
                        all.list
                            .iter()
                            .filter(|t| stages.is_empty() || stages.contains(&(convert::stage(t.stage) as i32)))
                            .map(|t: &TaskRecord| {
                                let why = if all.is_runnable(t, &finished) { reason } else { "" };
                                convert::task(t, why)
                            })
                            .collect()
                    } else {
                        Vec::new()
                    };
                    Ok::<_, Reject>((job, tasks))
                })
                .await
                .map_err(convert::reject_status)?;
            Ok(Response::new(pb::GetJobResponse { job: Some(job), tasks }))
        })
        .await
    }

    async fn list_jobs(&self, request: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        observed(&self.engine, "ListJobs", async {
            let req = request.into_inner();
            let mut wanted = Vec::new();
            for raw in req.states {
                let state = pb::JobState::try_from(raw)
                    .ok()
                    .and_then(convert::job_state_from)
                    .ok_or_else(|| {
                        ServiceError::new(ErrorKind::InvalidArgument, format!("unknown job state {raw}")).into_status()
                    })?;
                wanted.push(state);
            }
            let jobs = self
                .engine
                .read(|state, now| {
                    let schedule = self.engine.explain(state, now);
                    let mut jobs: Vec<pb::Job> = state
                        .cluster
                        .jobs
                        .values()
                        .filter(|j| wanted.is_empty() || wanted.contains(&j.state))
                        .map(|j| convert::job(j, &state.cluster.tasks[&j.id].list, schedule.waiting.get(&j.id)))
                        .collect();
                    jobs.sort_by_key(|j| std::cmp::Reverse(j.submitted_unix_ms));
                    jobs
                })
                .await;
            Ok(Response::new(pb::ListJobsResponse { jobs }))
        })
        .await
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        observed(&self.engine, "CancelJob", async {
            let req = request.into_inner();
            let command = Command::Cancel {
                job_id: req.job_id.clone(),
                reason: req.reason,
            };
            let outcome = self.engine.run(command).await.map_err(convert::reject_status)?;
            let Outcome::Cancelled = outcome else {
                return Err(unexpected("CancelJob"));
            };
            let job = self
                .engine
                .read(|state, now| job_view(&self.engine, state, now, &req.job_id))
                .await
                .map_err(convert::reject_status)?;
            Ok(Response::new(pb::CancelJobResponse { job: Some(job) }))
        })
        .await
    }

    async fn resume_job(
        &self,
        request: Request<pb::ResumeJobRequest>,
    ) -> Result<Response<pb::ResumeJobResponse>, Status> {
        observed(&self.engine, "ResumeJob", async {
            let req = request.into_inner();
            let command = Command::Resume {
                job_id: req.job_id.clone(),
            };
            let outcome = self.engine.run(command).await.map_err(convert::reject_status)?;
            let Outcome::Resumed(resumed) = outcome else {
                return Err(unexpected("ResumeJob"));
            };
            let job = self
                .engine
                .read(|state, now| job_view(&self.engine, state, now, &req.job_id))
                .await
                .map_err(convert::reject_status)?;
            Ok(Response::new(pb::ResumeJobResponse {
                job: Some(job),
                resumed_tasks: resumed,
            }))
        })
        .await
    }

    type WatchJobStream = Streamed<pb::JobEvent>;

    async fn watch_job(&self, request: Request<pb::WatchJobRequest>) -> Result<Response<Self::WatchJobStream>, Status> {
        let req = request.into_inner();
        // Subscribe before reading history so nothing falls between the two.
        let live = self.engine.committer().subscribe_events();
        let ended = self
            .engine
            .read(|state, _| state.cluster.jobs.get(&req.job_id).map(|j| j.state.is_terminal()))
            .await
            .ok_or_else(|| convert::reject_status(Reject::NotFound(format!("job {} does not exist", req.job_id))))?;
        let (tx, rx) = mpsc::channel(256);
        let engine = self.engine.clone();
        tokio::spawn(stream_events(engine, req.job_id, req.after_seq, ended, live, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type GetLogsStream = Streamed<pb::LogLine>;

    async fn get_logs(&self, request: Request<pb::GetLogsRequest>) -> Result<Response<Self::GetLogsStream>, Status> {
        let req = request.into_inner();
        let live = self.engine.committer().subscribe_logs();
        let known = self
            .engine
            .read(|state, _| {
                let job = state.cluster.jobs.get(&req.job_id)?;
                let task_ok = req.task_id.is_empty() || state.cluster.task(&req.job_id, &req.task_id).is_some();
                Some((job.state.is_terminal(), task_ok))
            })
            .await;
        let Some((ended, task_ok)) = known else {
            return Err(convert::reject_status(Reject::NotFound(format!(
                "job {} does not exist",
                req.job_id
            ))));
        };
        if !task_ok {
            return Err(convert::reject_status(Reject::NotFound(format!(
                "job {} has no task {}",
                req.job_id, req.task_id
            ))));
        }
        let (tx, rx) = mpsc::channel(256);
        let engine = self.engine.clone();
        tokio::spawn(stream_logs(engine, req, ended, live, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type GetArtifactStream = Streamed<pb::ArtifactChunk>;

    async fn get_artifact(
        &self,
        request: Request<pb::GetArtifactRequest>,
    ) -> Result<Response<Self::GetArtifactStream>, Status> {
        observed(&self.engine, "GetArtifact", async {
            let req = request.into_inner();
            let listed = self
                .engine
                .read(|state, _| {
                    state.cluster.jobs.get(&req.job_id)?;
                    Some(artifacts::is_listed(&state.cluster.tasks[&req.job_id].list, &req.path))
                })
                .await;
            match listed {
                None => {
                    return Err(convert::reject_status(Reject::NotFound(format!(
                        "job {} does not exist",
                        req.job_id
                    ))));
                }
                Some(false) => {
                    return Err(convert::reject_status(Reject::NotFound(format!(
                        "job {} has no artifact {}: `surgeryctl status {} --tasks` lists what its tasks wrote",
                        req.job_id, req.path, req.job_id
                    ))));
                }
                Some(true) => {}
            }
            let (size, chunks) = artifacts::read(&self.engine.config.object_store_url, &req.job_id, &req.path)
                .await
                .map_err(ServiceError::into_status)?;
            let messages = chunks.map(move |chunk| {
                chunk
                    .map(|data| pb::ArtifactChunk {
                        data: data.to_vec(),
                        size,
                    })
                    .map_err(ServiceError::into_status)
            });
            // An empty artifact is still one message, so the client learns its size.
            let chunks: Vec<Result<pb::ArtifactChunk, Status>> = if size == 0 {
                vec![Ok(pb::ArtifactChunk { data: Vec::new(), size })]
            } else {
                Vec::new()
            };
            let stream: Self::GetArtifactStream = Box::pin(tokio_stream::iter(chunks).chain(messages));
            Ok(Response::new(stream))
        })
        .await
    }

    async fn get_metrics(
        &self,
        request: Request<pb::GetMetricsRequest>,
    ) -> Result<Response<pb::GetMetricsResponse>, Status> {
        observed(&self.engine, "GetMetrics", async {
            let req = request.into_inner();
            let known = self
                .engine
                .read(|state, _| {
                    let job = state.cluster.jobs.contains_key(&req.job_id);
                    let task = req.task_id.is_empty() || state.cluster.task(&req.job_id, &req.task_id).is_some();
                    (job, task)
                })
                .await;
            match known {
                (false, _) => {
                    return Err(convert::reject_status(Reject::NotFound(format!(
                        "job {} does not exist",
                        req.job_id
                    ))));
                }
                (true, false) => {
                    return Err(convert::reject_status(Reject::NotFound(format!(
                        "job {} has no task {}",
                        req.job_id, req.task_id
                    ))));
                }
                _ => {}
            }
            let task = (!req.task_id.is_empty()).then_some(req.task_id.as_str());
            let points = self
                .engine
                .store
                .metrics(&req.job_id, task)
                .map_err(|e| Status::internal(e.to_string()))?;
            Ok(Response::new(pb::GetMetricsResponse {
                points: points.iter().map(convert::metric_point).collect(),
            }))
        })
        .await
    }

    async fn list_workers(
        &self,
        _request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        observed(&self.engine, "ListWorkers", async {
            let workers = self
                .engine
                .read(|state, _| {
                    state
                        .cluster
                        .workers
                        .values()
                        .map(|w| {
                            let tasks = state
                                .cluster
                                .leases_of(&w.id)
                                .into_iter()
                                .map(|(job, task, _)| TaskRef::new(job, task).to_string())
                                .collect();
                            convert::worker(w, tasks)
                        })
                        .collect()
                })
                .await;
            Ok(Response::new(pb::ListWorkersResponse { workers }))
        })
        .await
    }
}

const PAGE: usize = 1000;

/// History from the store, then live events, until the job ends or the client leaves.
async fn stream_events(
    engine: Arc<Engine>,
    job_id: String,
    after_seq: u64,
    ended_at_start: bool,
    mut live: broadcast::Receiver<Arc<crate::model::Event>>,
    tx: mpsc::Sender<Result<pb::JobEvent, Status>>,
) {
    let mut last = after_seq;
    // Replays the store from `last`; returns true when the job's final event went out.
    async fn replay(
        engine: &Engine,
        job_id: &str,
        last: &mut u64,
        tx: &mpsc::Sender<Result<pb::JobEvent, Status>>,
    ) -> Option<bool> {
        loop {
            let page = match engine.store.events(job_id, *last, PAGE) {
                Ok(page) => page,
                Err(err) => {
                    let _ = tx.send(Err(Status::internal(err.to_string()))).await;
                    return None;
                }
            };
            let full = page.len() == PAGE;
            for event in page {
                *last = event.seq;
                let done = is_final(&event);
                tx.send(Ok(convert::event(&event))).await.ok()?;
                if done {
                    return Some(true);
                }
            }
            if !full {
                return Some(false);
            }
        }
    }
    match replay(&engine, &job_id, &mut last, &tx).await {
        None | Some(true) => return,
        Some(false) if ended_at_start => return,
        Some(false) => {}
    }
    loop {
        match live.recv().await {
            Ok(event) => {
                if event.job_id != job_id || event.seq <= last {
                    continue;
                }
                last = event.seq;
                if tx.send(Ok(convert::event(&event))).await.is_err() || is_final(&event) {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => match replay(&engine, &job_id, &mut last, &tx).await {
                None | Some(true) => return,
                Some(false) => {}
            },
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// The job-level event that ends it (task events carry a task id).
fn is_final(event: &crate::model::Event) -> bool {
    event.task_id.is_none() && event.job_state.is_some_and(JobState::is_terminal)
}

async fn stream_logs(
    engine: Arc<Engine>,
    req: pb::GetLogsRequest,
    ended: bool,
    mut live: broadcast::Receiver<Arc<crate::model::LogRecord>>,
    tx: mpsc::Sender<Result<pb::LogLine, Status>>,
) {
    let task = (!req.task_id.is_empty()).then_some(req.task_id.as_str());
    let mut last = req.after_seq;
    let replay = |last: &mut u64| -> Result<Vec<pb::LogLine>, Status> {
        let mut out = Vec::new();
        loop {
            let page = engine
                .store
                .logs(&req.job_id, task, *last, PAGE)
                .map_err(|e| Status::internal(e.to_string()))?;
            let full = page.len() == PAGE;
            for line in page {
                *last = line.seq;
                out.push(convert::log_line(&line));
            }
            if !full {
                return Ok(out);
            }
        }
    };
    // Log lines only come while the job runs; a follower of an ended job stops here.
    let history = replay(&mut last);
    match history {
        Ok(lines) => {
            for line in lines {
                if tx.send(Ok(line)).await.is_err() {
                    return;
                }
            }
        }
        Err(status) => {
            let _ = tx.send(Err(status)).await;
            return;
        }
    }
    if !req.follow || ended {
        return;
    }
    let mut job_events = engine.committer().subscribe_events();
    loop {
        tokio::select! {
            line = live.recv() => match line {
                Ok(line) => {
                    if line.job_id != req.job_id || line.seq <= last || task.is_some_and(|t| line.task_id != t) {
                        continue;
                    }
                    last = line.seq;
                    if tx.send(Ok(convert::log_line(&line))).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => match replay(&mut last) {
                    Ok(lines) => for line in lines {
                        if tx.send(Ok(line)).await.is_err() {
                            return;
                        }
                    },
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                },
                Err(broadcast::error::RecvError::Closed) => return,
            },
            event = job_events.recv() => match event {
                Ok(event) if event.job_id == req.job_id && is_final(&event) => return,
                Err(broadcast::error::RecvError::Closed) => return,
                _ => {}
            },
            _ = tx.closed() => return,
        }
    }
}
