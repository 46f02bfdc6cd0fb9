//! The binary against an in-process fake JobService: the whole client path (connect,
//! bearer token, request fields, typed errors, exit codes, output) without the real
//! coordinator. The fake answers from fixed data keyed by the ids the tests use.

mod common;

use common::{repo_file, surgeryctl};
use futures::stream::{self, BoxStream};
use std::sync::{Arc, Mutex};
use surgery_proto::v1::job_service_server::{JobService, JobServiceServer};
use surgery_proto::v1::*;
use tonic::{Request, Response, Status};

/// What the fake saw, for the tests to assert on.
#[derive(Default)]
struct Seen {
    /// The `authorization` header of every call (`None`: absent).
    authorization: Vec<Option<String>>,
    submits: Vec<SubmitJobRequest>,
    list_states: Vec<Vec<i32>>,
    cancels: Vec<CancelJobRequest>,
    logs: Vec<GetLogsRequest>,
}

type Shared = Arc<Mutex<Seen>>;

struct Fake {
    seen: Shared,
}

const SUBMITTED_MS: i64 = 1_740_830_400_000;

fn job(id: &str, state: JobState) -> Job {
    Job {
        id: id.into(),
        name: "tiny".into(),
        state: state as i32,
        submitted_unix_ms: SUBMITTED_MS,
        stages: vec![StageSummary {
            stage: Stage::Distill as i32,
            total: 2,
            succeeded: 1,
            running: 1,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn distill_task(block: u32, rate: u32, state: TaskState) -> Task {
    Task {
        id: format!("distill/block-{block:02}/rate-{rate}"),
        stage: Stage::Distill as i32,
        state: state as i32,
        attempt: 1,
        params: Some(TaskParams {
            kind: Some(task_params::Kind::Distill(DistillParams { block, rate })),
        }),
        ..Default::default()
    }
}

fn artifact_bytes(path: &str) -> Vec<u8> {
    (0..(5 << 19))
        .map(|i: usize| (i % 251) as u8 ^ path.len() as u8)
        .collect()
}

fn not_found(what: &str) -> Status {
    ServiceError::new(ErrorKind::NotFound, format!("no job {what}")).into_status()
}

#[tonic::async_trait]
impl JobService for Fake {
    async fn submit_job(&self, request: Request<SubmitJobRequest>) -> Result<Response<SubmitJobResponse>, Status> {
        let request = request.into_inner();
        self.seen.lock().unwrap().submits.push(request.clone());
        match request.request_id.as_str() {
            "reject" => Err(ServiceError::new(ErrorKind::InvalidSpec, "invalid job spec (1 error)")
                .with_fields(vec![FieldError {
                    path: "teacher.url".into(),
                    line: 9,
                    column: 8,
                    message: "no model at file://.demo/models/tiny-teacher".into(),
                }])
                .into_status()),
            "reused" => Err(
                ServiceError::new(ErrorKind::Conflict, "request id reused was used for a different spec").into_status(),
            ),
            request_id => Ok(Response::new(SubmitJobResponse {
                job: Some(job("tiny-0001", JobState::Queued)),
                created: request_id != "again",
            })),
        }
    }

    async fn get_job(&self, request: Request<GetJobRequest>) -> Result<Response<GetJobResponse>, Status> {
        let request = request.into_inner();
        let (job, tasks) = match request.job_id.as_str() {
            "good-1" | "tiny-0001" => (job(&request.job_id, JobState::Succeeded), vec![]),
            "bad-1" => {
                let mut failed = job("bad-1", JobState::Failed);
                failed.failure = "finetune: loss is NaN".into();
                (failed, vec![])
            }
            "run-1" => {
                let mut done = distill_task(0, 2, TaskState::Succeeded);
                done.result_metrics.insert("heldout_error".into(), 0.04321);
                let mut running = distill_task(0, 4, TaskState::Running);
                running.progress = Some(Progress {
                    step: 10,
                    total_steps: 60,
                    ..Default::default()
                });
                (job("run-1", JobState::Running), vec![done, running])
            }
            "done-1" => {
                let evaluate = Task {
                    id: "evaluate".into(),
                    stage: Stage::Evaluate as i32,
                    state: TaskState::Succeeded as i32,
                    result_artifacts: vec![
                        "evaluate/report.json".into(),
                        "evaluate/previews/prompt-0008.mp4".into(),
                        "evaluate/previews/prompt-0008.gif".into(),
                    ],
                    ..Default::default()
                };
                (job("done-1", JobState::Succeeded), vec![evaluate])
            }
            other => return Err(not_found(other)),
        };
        let tasks = if request.include_tasks { tasks } else { vec![] };
        Ok(Response::new(GetJobResponse { job: Some(job), tasks }))
    }

    async fn list_jobs(&self, request: Request<ListJobsRequest>) -> Result<Response<ListJobsResponse>, Status> {
        self.seen.lock().unwrap().list_states.push(request.into_inner().states);
        Ok(Response::new(ListJobsResponse {
            jobs: vec![job("run-1", JobState::Running)],
        }))
    }

    async fn cancel_job(&self, request: Request<CancelJobRequest>) -> Result<Response<CancelJobResponse>, Status> {
        let request = request.into_inner();
        self.seen.lock().unwrap().cancels.push(request.clone());
        match request.job_id.as_str() {
            "good-1" => Err(
                ServiceError::new(ErrorKind::FailedPrecondition, "job good-1 already ended (succeeded)").into_status(),
            ),
            "run-1" => Ok(Response::new(CancelJobResponse {
                job: Some(job("run-1", JobState::Cancelled)),
            })),
            other => Err(not_found(other)),
        }
    }

    async fn resume_job(&self, request: Request<ResumeJobRequest>) -> Result<Response<ResumeJobResponse>, Status> {
        Ok(Response::new(ResumeJobResponse {
            job: Some(job(&request.into_inner().job_id, JobState::Running)),
            resumed_tasks: vec!["distill/block-00/rate-4".into(), "finetune".into()],
        }))
    }

    type WatchJobStream = BoxStream<'static, Result<JobEvent, Status>>;

    async fn watch_job(&self, request: Request<WatchJobRequest>) -> Result<Response<Self::WatchJobStream>, Status> {
        let job_id = request.into_inner().job_id;
        let (last_kind, last_state) = match job_id.as_str() {
            "good-1" | "tiny-0001" => ("job_succeeded", JobState::Succeeded),
            "bad-1" => ("job_failed", JobState::Failed),
            other => return Err(not_found(other)),
        };
        let events = vec![
            JobEvent {
                seq: 1,
                unix_ms: SUBMITTED_MS,
                job_id: job_id.clone(),
                kind: "job_submitted".into(),
                message: "6 tasks planned".into(),
                job_state: JobState::Queued as i32,
                ..Default::default()
            },
            JobEvent {
                seq: 2,
                unix_ms: SUBMITTED_MS + 1500,
                job_id: job_id.clone(),
                task_id: "capture/shard-0000".into(),
                kind: "task_succeeded".into(),
                task_state: TaskState::Succeeded as i32,
                ..Default::default()
            },
            JobEvent {
                seq: 3,
                unix_ms: SUBMITTED_MS + 2000,
                job_id,
                kind: last_kind.into(),
                job_state: last_state as i32,
                ..Default::default()
            },
        ];
        Ok(Response::new(Box::pin(stream::iter(events.into_iter().map(Ok)))))
    }

    type GetLogsStream = BoxStream<'static, Result<LogLine, Status>>;

    async fn get_logs(&self, request: Request<GetLogsRequest>) -> Result<Response<Self::GetLogsStream>, Status> {
        let request = request.into_inner();
        self.seen.lock().unwrap().logs.push(request.clone());
        let line = |seq: u64, task: &str, message: &str| LogLine {
            seq,
            unix_ms: SUBMITTED_MS + seq as i64,
            job_id: request.job_id.clone(),
            task_id: task.into(),
            worker_id: "w-1".into(),
            level: "INFO".into(),
            message: message.into(),
        };
        let lines: Vec<LogLine> = vec![
            line(1, "capture/shard-0000", "sampling 4 prompts"),
            line(2, "finetune", "step 1"),
        ]
        .into_iter()
        .filter(|line| request.task_id.is_empty() || line.task_id == request.task_id)
        .collect();
        Ok(Response::new(Box::pin(stream::iter(lines.into_iter().map(Ok)))))
    }

    type GetArtifactStream = BoxStream<'static, Result<ArtifactChunk, Status>>;

    /// Artifacts of done-1: 2.5 MiB of a repeating byte pattern, in 1 MiB chunks as the
    /// coordinator sends them.
    async fn get_artifact(
        &self,
        request: Request<GetArtifactRequest>,
    ) -> Result<Response<Self::GetArtifactStream>, Status> {
        let request = request.into_inner();
        if request.job_id != "done-1" || !request.path.starts_with("evaluate/previews/") {
            return Err(not_found(&request.path));
        }
        let data = artifact_bytes(&request.path);
        let size = data.len() as u64;
        let chunks: Vec<Result<ArtifactChunk, Status>> = data
            .chunks(1 << 20)
            .map(|c| Ok(ArtifactChunk { data: c.to_vec(), size }))
            .collect();
        Ok(Response::new(Box::pin(stream::iter(chunks))))
    }

    async fn get_metrics(&self, request: Request<GetMetricsRequest>) -> Result<Response<GetMetricsResponse>, Status> {
        let request = request.into_inner();
        let point = |task: &str, attempt: u32, step: u64, loss: f64| MetricPoint {
            task_id: task.into(),
            attempt,
            step,
            unix_ms: 1_764_000_000_000,
            metrics: [("loss".to_string(), loss)].into_iter().collect(),
        };
        let points = vec![point("finetune", 1, 10, 0.5), point("finetune", 2, 20, 0.25)]
            .into_iter()
            .filter(|p| request.task_id.is_empty() || p.task_id == request.task_id)
            .collect();
        Ok(Response::new(GetMetricsResponse { points }))
    }

    async fn list_workers(&self, _: Request<ListWorkersRequest>) -> Result<Response<ListWorkersResponse>, Status> {
        Ok(Response::new(ListWorkersResponse {
            workers: vec![Worker {
                id: "w-1".into(),
                name: "gpu-0".into(),
                host: "node-a".into(),
                status: "alive".into(),
                slots: vec![Slot {
                    device: "cuda".into(),
                    model: "NVIDIA H100 80GB HBM3".into(),
                    memory_bytes: 80 << 30,
                }],
                // Seen "now" by the fake's clock, so the age is a few seconds at most.
                last_seen_unix_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as i64,
                ..Default::default()
            }],
        }))
    }
}

/// Starts the fake on its own thread and runtime; returns `127.0.0.1:port`.
fn start_fake() -> (String, Shared) {
    let seen: Shared = Arc::default();
    let (sender, receiver) = std::sync::mpsc::channel();
    let fake_seen = seen.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            sender.send(listener.local_addr().unwrap()).unwrap();
            let recorder = fake_seen.clone();
            let check_token = move |request: Request<()>| {
                let header = request
                    .metadata()
                    .get("authorization")
                    .map(|value| value.to_str().unwrap().to_string());
                recorder.lock().unwrap().authorization.push(header.clone());
                if header.as_deref() == Some("Bearer wrong") {
                    return Err(
                        ServiceError::new(ErrorKind::Unauthenticated, "the bearer token is wrong").into_status(),
                    );
                }
                Ok(request)
            };
            let service = JobServiceServer::with_interceptor(Fake { seen: fake_seen }, check_token);
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
                .unwrap();
        });
    });
    let addr = receiver.recv().unwrap();
    (addr.to_string(), seen)
}

fn tiny() -> String {
    repo_file("configs/tiny.yaml")
}

#[test]
fn submit_prints_the_job_id_and_sends_the_spec_with_a_fresh_request_id() {
    let (addr, seen) = start_fake();
    let run = surgeryctl(&["--addr", &addr, "submit", &tiny()], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "tiny-0001\n");
    assert_eq!(run.stderr, "");
    let run = surgeryctl(&["--addr", &addr, "submit", &tiny()], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);

    let seen = seen.lock().unwrap();
    assert_eq!(seen.submits[0].spec_yaml, std::fs::read_to_string(tiny()).unwrap());
    let ids: Vec<&str> = seen.submits.iter().map(|submit| submit.request_id.as_str()).collect();
    assert!(ids.iter().all(|id| uuid::Uuid::parse_str(id).is_ok()), "{ids:?}");
    assert_ne!(ids[0], ids[1], "each submit gets its own request id");
}

#[test]
fn a_repeated_request_id_says_already_submitted() {
    let (addr, seen) = start_fake();
    let run = surgeryctl(&["--addr", &addr, "submit", &tiny(), "--request-id", "again"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "tiny-0001\n");
    assert_eq!(
        run.stderr,
        "already submitted: request id again created job tiny-0001 earlier\n"
    );
    assert_eq!(seen.lock().unwrap().submits[0].request_id, "again");

    let run = surgeryctl(
        &[
            "--addr",
            &addr,
            "submit",
            &tiny(),
            "--request-id",
            "again",
            "-o",
            "json",
        ],
        &[],
    );
    let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["created"], false);
    assert_eq!(json["request_id"], "again");
    assert_eq!(json["job"]["id"], "tiny-0001");
    assert_eq!(json["job"]["state"], "queued");
}

#[test]
fn server_side_spec_errors_name_the_file() {
    let (addr, _) = start_fake();
    let run = surgeryctl(&["--addr", &addr, "submit", &tiny(), "--request-id", "reject"], &[]);
    assert_eq!(run.code, 3);
    assert_eq!(
        run.stderr,
        format!(
            "error: invalid job spec (1 error)\n{}:9:8: teacher.url: no model at file://.demo/models/tiny-teacher\n",
            tiny()
        )
    );
}

#[test]
fn a_reused_request_id_is_a_conflict() {
    let (addr, _) = start_fake();
    let run = surgeryctl(&["--addr", &addr, "submit", &tiny(), "--request-id", "reused"], &[]);
    assert_eq!(run.code, 6);
    assert_eq!(run.stderr, "error: request id reused was used for a different spec\n");
}

#[test]
fn the_token_is_sent_as_a_bearer_header_flag_over_env() {
    let (addr, seen) = start_fake();
    assert_eq!(surgeryctl(&["--addr", &addr, "list"], &[]).code, 0);
    assert_eq!(
        surgeryctl(&["--addr", &addr, "list"], &[("SURGERY_TOKEN", "from-env")]).code,
        0
    );
    let run = surgeryctl(
        &["--addr", &addr, "list", "--token", "from-flag"],
        &[("SURGERY_TOKEN", "from-env")],
    );
    assert_eq!(run.code, 0);
    assert_eq!(
        seen.lock().unwrap().authorization,
        [
            None,
            Some("Bearer from-env".to_string()),
            Some("Bearer from-flag".to_string())
        ]
    );
}

#[test]
fn a_wrong_token_exits_7() {
    let (addr, _) = start_fake();
    let run = surgeryctl(&["--addr", &addr, "status", "run-1"], &[("SURGERY_TOKEN", "wrong")]);
    assert_eq!(run.code, 7);
    assert_eq!(run.stderr, "error: the bearer token is wrong\n");
}

#[test]
fn the_address_can_come_from_the_environment() {
    let (addr, _) = start_fake();
    let run = surgeryctl(&["status", "run-1"], &[("SURGERY_ADDR", &addr)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
}

#[test]
fn status_prints_the_distillation_table() {
    let (addr, _) = start_fake();
    let run = surgeryctl(&["--addr", &addr, "status", "run-1"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.ends_with(
            "Distillation (running: step/total; succeeded: held-out error):\n\
             BLOCK  R2                 R4\n\
             0      succeeded 0.04321  running 10/60\n"
        ),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .starts_with("Job:       run-1\nName:      tiny\nState:     running\n"),
        "{}",
        run.stdout
    );
}

#[test]
fn status_json_and_yaml() {
    let (addr, _) = start_fake();
    let run = surgeryctl(&["--addr", &addr, "status", "run-1", "-o", "json"], &[]);
    let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["job"]["state"], "running");
    assert_eq!(json["distill"][1]["rate"], "R4");
    assert_eq!(json["distill"][1]["step"], 10);
    assert_eq!(json["tasks"].as_array().unwrap().len(), 2);

    let run = surgeryctl(&["--addr", &addr, "status", "run-1", "-o", "yaml"], &[]);
    let yaml: serde_json::Value = serde_yaml::from_str(&run.stdout).unwrap();
    assert_eq!(yaml, json);
}

#[test]
fn an_unknown_job_exits_4() {
    let (addr, _) = start_fake();
    let run = surgeryctl(&["--addr", &addr, "status", "nope"], &[]);
    assert_eq!(run.code, 4);
    assert_eq!(run.stderr, "error: no job nope\n");
    assert_eq!(run.stdout, "");
}

#[test]
fn watch_exits_0_when_the_job_succeeds() {
    let (addr, _) = start_fake();
    let run = surgeryctl(&["--addr", &addr, "watch", "good-1"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "2025-03-01T12:00:00.000Z job_submitted: 6 tasks planned\n\
         2025-03-01T12:00:01.500Z [capture/shard-0000] task_succeeded\n\
         2025-03-01T12:00:02.000Z job_succeeded\n\
         job good-1 succeeded\n"
    );
}

#[test]
fn watch_exits_8_when_the_job_fails() {
    let (addr, _) = start_fake();
    let run = surgeryctl(&["--addr", &addr, "watch", "bad-1"], &[]);
    assert_eq!(run.code, 8, "{}", run.stderr);
    assert!(
        run.stdout
            .ends_with("job_failed\njob bad-1 failed: finetune: loss is NaN\n"),
        "{}",
        run.stdout
    );

    let run = surgeryctl(&["--addr", &addr, "watch", "bad-1", "-o", "json"], &[]);
    assert_eq!(run.code, 8);
    let lines: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "JSON Lines, one per event: {}", run.stdout);
    assert_eq!(lines[2]["job_state"], "failed");
}

#[test]
fn submit_and_watch() {
    let (addr, _) = start_fake();
    let run = surgeryctl(&["--addr", &addr, "submit", &tiny(), "--watch"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .starts_with("tiny-0001\n2025-03-01T12:00:00.000Z job_submitted"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.ends_with("job tiny-0001 succeeded\n"), "{}", run.stdout);
}

#[test]
fn cancel_and_resume() {
    let (addr, seen) = start_fake();
    let run = surgeryctl(&["--addr", &addr, "cancel", "run-1", "--reason", "wrong data"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "run-1: cancelled\n");
    assert_eq!(seen.lock().unwrap().cancels[0].reason, "wrong data");

    let run = surgeryctl(&["--addr", &addr, "cancel", "good-1"], &[]);
    assert_eq!(run.code, 6);
    assert_eq!(run.stderr, "error: job good-1 already ended (succeeded)\n");

    let run = surgeryctl(&["--addr", &addr, "resume", "run-1"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "run-1: running (2 tasks resumed)\n");
}

#[test]
fn list_sends_the_states_and_prints_progress() {
    let (addr, seen) = start_fake();
    let run = surgeryctl(
        &["--addr", &addr, "list", "--state", "running", "--state", "queued"],
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "ID     NAME  STATE    PRIORITY  PROGRESS  SUBMITTED             PENDING\n\
         run-1  tiny  running  0         1/2       2025-03-01T12:00:00Z  -\n"
    );
    assert_eq!(
        seen.lock().unwrap().list_states,
        [vec![JobState::Running as i32, JobState::Queued as i32]]
    );
}

#[test]
fn logs_of_one_task() {
    let (addr, seen) = start_fake();
    let run = surgeryctl(&["--addr", &addr, "logs", "run-1", "--task", "finetune", "-f"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "2025-03-01T12:00:00.002Z finetune w-1 INFO step 1\n");
    let request = &seen.lock().unwrap().logs[0];
    assert!(request.follow);
    assert_eq!(request.task_id, "finetune");
}

#[test]
fn workers_table() {
    let (addr, _) = start_fake();
    let run = surgeryctl(&["--addr", &addr, "workers"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines[0],
        "ID   NAME   HOST    STATUS  SLOTS                          TASKS  LAST SEEN"
    );
    assert!(
        lines[1].starts_with("w-1  gpu-0  node-a  alive   1x cuda NVIDIA H100 80GB HBM3  -      "),
        "{}",
        run.stdout
    );
    assert!(lines[1].ends_with("s ago"), "{}", run.stdout);
}

#[test]
fn metrics_table_across_attempts() {
    let (addr, _) = start_fake();
    let run = surgeryctl(&["--addr", &addr, "metrics", "run-1", "--task", "finetune"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "TASK      ATTEMPT  STEP  LOSS\nfinetune  1        10    0.5000\nfinetune  2        20    0.2500\n"
    );
    let json = surgeryctl(&["--addr", &addr, "-o", "json", "metrics", "run-1"], &[]);
    let doc: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(doc["points"][1]["attempt"], 2);
    assert_eq!(doc["points"][1]["metrics"]["loss"], 0.25);
}

#[test]
fn a_spec_from_stdin_can_be_submitted() {
    let (addr, seen) = start_fake();
    let spec = std::fs::read_to_string(tiny()).unwrap();
    let run = common::surgeryctl_with_stdin(&["--addr", &addr, "submit", "-"], &[], Some(&spec));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(seen.lock().unwrap().submits[0].spec_yaml, spec);
}

#[test]
fn previews_are_downloaded_whole_into_the_folder() {
    let (addr, _) = start_fake();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("previews");
    let run = surgeryctl(
        &["--addr", &addr, "previews", "done-1", "--dir", out.to_str().unwrap()],
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    for name in ["prompt-0008.mp4", "prompt-0008.gif"] {
        let file = out.join(name);
        assert!(run.stdout.contains(file.to_str().unwrap()), "{}", run.stdout);
        let want = artifact_bytes(&format!("evaluate/previews/{name}"));
        assert_eq!(std::fs::read(&file).unwrap(), want, "{name} arrives whole, in order");
    }
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "part"))
        .collect();
    assert!(leftovers.is_empty(), "no .part files stay behind");

    // A job whose evaluate has not run yet, and one that does not exist.
    let pending = surgeryctl(&["--addr", &addr, "previews", "run-1"], &[]);
    assert_eq!(pending.code, 4, "not found: {}", pending.stderr);
    assert!(
        pending.stderr.contains("job run-1 has no evaluate task"),
        "{}",
        pending.stderr
    );
    let missing = surgeryctl(&["--addr", &addr, "previews", "nope"], &[]);
    assert_eq!(missing.code, 4, "{}", missing.stderr);
}
