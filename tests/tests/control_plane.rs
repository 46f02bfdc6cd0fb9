//! The control plane end to end: a real coordinator process, real gRPC clients acting
//! as users and workers, SIGKILL and SIGTERM.

use std::path::Path;
use std::time::Duration;
use surgery_core::layout;
use surgery_e2e::*;
use surgery_proto::error::decode;
use surgery_proto::v1 as pb;
use surgery_proto::v1::ErrorKind;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_e2e-coordinator"))
}

fn start(dir: &tempfile::TempDir) -> Coordinator {
    Coordinator::start(binary(), dir.path(), FAST).expect("coordinator starts")
}

fn state_of(resp: &pb::GetJobResponse, task: &str) -> pb::TaskState {
    resp.tasks
        .iter()
        .find(|t| t.id == task)
        .map(|t| t.state())
        .expect("task exists")
}

#[tokio::test]
async fn lease_heartbeat_complete_and_progress_is_visible() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = start(&dir);
    let mut jobs = coordinator.jobs().await.unwrap();
    let job = submit(&mut jobs, "r1", &tiny_spec("lease", &[]))
        .await
        .unwrap()
        .job
        .unwrap();
    assert_eq!(job.state(), pb::JobState::Queued);
    assert!(
        job.pending_reason.contains("no alive worker offers a cpu slot"),
        "{}",
        job.pending_reason
    );

    let mut worker = FakeWorker::register(&coordinator, "w1", "cpu", 1).await.unwrap();
    let task = worker.lease(0, 2000).await.unwrap().expect("a task");
    assert_eq!(task.task_id, format!("{}:capture/shard-0000", job.id));
    assert_eq!((task.attempt, task.rank, task.gang_size), (1, 0, 1));
    assert!(
        task.job_root_url.ends_with(&format!("/{}", layout::job_root(&job.id))),
        "{}",
        task.job_root_url
    );
    assert!(task.spec_yaml.contains("name: lease"));

    let beat = worker.heartbeat(&task, 7, &[("loss", 0.5)]).await.unwrap();
    assert!(beat.stop.is_empty());
    let view = get_job(&mut jobs, &job.id).await.unwrap();
    assert_eq!(view.job.as_ref().unwrap().state(), pb::JobState::Running);
    let t = view.tasks.iter().find(|t| t.id == "capture/shard-0000").unwrap();
    assert_eq!(t.state(), pb::TaskState::Running);
    assert_eq!(t.progress.as_ref().unwrap().step, 7);
    assert_eq!(t.holders[0].worker_id, worker.id);

    worker.complete(&task, &[]).await.unwrap();
    let view = get_job(&mut jobs, &job.id).await.unwrap();
    assert_eq!(state_of(&view, "capture/shard-0000"), pb::TaskState::Succeeded);

    // The worker's log line reached the job's logs.
    let mut logs = jobs
        .get_logs(pb::GetLogsRequest {
            job_id: job.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let line = logs.message().await.unwrap().expect("one line");
    assert_eq!(line.message, format!("{}:capture/shard-0000 step 7", job.id));
    assert_eq!(line.worker_id, worker.id);
    assert!(logs.message().await.unwrap().is_none());
}

#[tokio::test]
async fn expired_lease_is_requeued_and_the_stale_attempt_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = start(&dir);
    let mut jobs = coordinator.jobs().await.unwrap();
    let job = submit(&mut jobs, "r", &tiny_spec("expiry", &[]))
        .await
        .unwrap()
        .job
        .unwrap();
    let mut w1 = FakeWorker::register(&coordinator, "w1", "cpu", 1).await.unwrap();
    let first = w1.lease(0, 2000).await.unwrap().unwrap();
    w1.heartbeat(&first, 1, &[]).await.unwrap();

    // w1 stops heartbeating; after the 2 s TTL the task is requeued as attempt 2.
    let mut w2 = FakeWorker::register(&coordinator, "w2", "cpu", 1).await.unwrap();
    let deadline = Deadline::patient(format!("w2 to lease {} again", first.task_id));
    let mut leased = Vec::new();
    let second = loop {
        let got = w2.lease(0, 3000).await.unwrap().expect("some task");
        if got.task_id == first.task_id {
            break got;
        }
        // w2 may get the other shard first; hold it and ask again.
        w2.heartbeat(&got, 0, &[]).await.unwrap();
        w2.complete(&got, &[]).await.unwrap();
        leased.push(got.task_id);
        deadline
            .check(|| format!("w2 leased and completed {leased:?}"))
            .unwrap();
    };
    assert_eq!(second.attempt, 2);
    let view = get_job(&mut jobs, &job.id).await.unwrap();
    let task = view.tasks.iter().find(|t| t.id == "capture/shard-0000").unwrap();
    assert_eq!(task.failure_class(), pb::FailureClass::Lost);
    assert!(task.failure.contains("expired"), "{}", task.failure);
    assert_eq!((task.retries_used, task.interruptions), (0, 1));

    // Fencing: the old attempt's completion is refused with a typed error.
    let status = w1.complete(&first, &[]).await.unwrap_err();
    let err = decode(&status);
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(err.kind(), ErrorKind::StaleAttempt);
    assert_eq!(
        err.message,
        "attempt 1 of task capture/shard-0000 is stale; the task is leased at attempt 2"
    );
    // And its heartbeat is told to stop.
    let beat = w1.heartbeat(&first, 2, &[]).await.unwrap();
    assert_eq!(beat.stop.len(), 1);
    w2.complete(&second, &[]).await.unwrap();
}

/// Drives the tiny job through capture and distill with `worker`, so the gang stage is next.
async fn run_to_finetune(worker: &mut FakeWorker) {
    let deadline = Deadline::patient("the last distill task, distill/block-01/rate-linear");
    let mut completed = Vec::new();
    loop {
        let task = worker.lease(0, 3000).await.unwrap().expect("a task");
        if task.stage() == pb::Stage::Finetune {
            panic!("a single worker must not get a gang task of 2");
        }
        worker.complete_like_a_worker(&task).await.unwrap();
        if task.task_id.ends_with("distill/block-01/rate-linear") {
            return;
        }
        completed.push(task.task_id);
        deadline.check(|| format!("completed {completed:?}")).unwrap();
    }
}

#[tokio::test]
async fn gang_is_leased_all_or_nothing_and_requeued_whole() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = start(&dir);
    let mut jobs = coordinator.jobs().await.unwrap();
    let job = submit(&mut jobs, "r", &tiny_spec("gang", &[]))
        .await
        .unwrap()
        .job
        .unwrap();
    let mut w1 = FakeWorker::register(&coordinator, "w1", "cpu", 1).await.unwrap();
    run_to_finetune(&mut w1).await;

    let view = get_job(&mut jobs, &job.id).await.unwrap();
    assert_eq!(state_of(&view, "select"), pb::TaskState::Succeeded);
    assert_eq!(view.job.as_ref().unwrap().selected_layout.len(), 2);

    // One idle slot: nothing is leased.
    assert!(w1.lease(0, 500).await.unwrap().is_none());
    let view = get_job(&mut jobs, &job.id).await.unwrap();
    assert!(
        view.job
            .as_ref()
            .unwrap()
            .pending_reason
            .contains("needs 2 cpu slots at once but alive workers offer only 1"),
        "{}",
        view.job.as_ref().unwrap().pending_reason
    );

    // A second worker: both get the gang at once, ranks 0 and 1.
    let mut w2 = FakeWorker::register(&coordinator, "w2", "cpu", 1).await.unwrap();
    let (a, b) = tokio::join!(w1.lease(0, 3000), w2.lease(0, 3000));
    let (a, b) = (a.unwrap().unwrap(), b.unwrap().unwrap());
    assert_eq!(a.task_id, format!("{}:finetune", job.id));
    assert_eq!((a.gang_size, b.gang_size), (2, 2));
    assert_eq!({ a.rank + b.rank }, 1);
    assert!(!a.layout.is_empty(), "the gang gets the selected layout");

    // Rendezvous relays rank 0's NCCL id.
    let (rank0, rank1) = if a.rank == 0 { (&a, &b) } else { (&b, &a) };
    let (w_rank0, w_rank1) = if a.rank == 0 {
        (&mut w1, &mut w2)
    } else {
        (&mut w2, &mut w1)
    };
    let mut c0 = w_rank0.client.clone();
    let mut c1 = w_rank1.client.clone();
    let r0 = pb::RendezvousRequest {
        worker_id: w_rank0.id.clone(),
        task_id: rank0.task_id.clone(),
        attempt: rank0.attempt,
        rank: 0,
        endpoint: "127.0.0.1:1000".into(),
        nccl_unique_id: vec![42; 128],
        wait_ms: 3000,
    };
    let r1 = pb::RendezvousRequest {
        worker_id: w_rank1.id.clone(),
        task_id: rank1.task_id.clone(),
        attempt: rank1.attempt,
        rank: 1,
        endpoint: "127.0.0.1:1001".into(),
        nccl_unique_id: vec![],
        wait_ms: 3000,
    };
    let (x, y) = tokio::join!(c0.rendezvous(r0), c1.rendezvous(r1));
    let (x, y) = (x.unwrap().into_inner(), y.unwrap().into_inner());
    assert!(x.ready && y.ready);
    assert_eq!(y.nccl_unique_id, vec![42; 128]);
    assert_eq!(
        y.members.iter().map(|m| m.endpoint.as_str()).collect::<Vec<_>>(),
        ["127.0.0.1:1000", "127.0.0.1:1001"]
    );

    // Rank 1 goes silent; rank 0 keeps beating. The whole gang is requeued.
    let deadline = Deadline::patient("rank 0 to be told to stop once rank 1 went silent");
    let stop = loop {
        let beat = w_rank0.heartbeat(rank0, 1, &[]).await.unwrap();
        if let Some(stop) = beat.stop.first() {
            break stop.clone();
        }
        deadline.check(|| format!("heartbeat answer {beat:?}")).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(stop.reason.contains("the task was requeued"), "{}", stop.reason);
    let view = get_job(&mut jobs, &job.id).await.unwrap();
    let finetune = view.tasks.iter().find(|t| t.id == "finetune").unwrap();
    assert_eq!(finetune.state(), pb::TaskState::Pending);
    assert!(
        finetune.failure.contains("the whole gang is requeued"),
        "{}",
        finetune.failure
    );
}

#[tokio::test]
async fn cancel_reaches_a_running_task_at_its_next_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = start(&dir);
    let mut jobs = coordinator.jobs().await.unwrap();
    let job = submit(&mut jobs, "r", &tiny_spec("cancel", &[]))
        .await
        .unwrap()
        .job
        .unwrap();
    let mut worker = FakeWorker::register(&coordinator, "w", "cpu", 1).await.unwrap();
    let task = worker.lease(0, 2000).await.unwrap().unwrap();
    worker.heartbeat(&task, 1, &[]).await.unwrap();
    let cancelled = jobs
        .cancel_job(pb::CancelJobRequest {
            job_id: job.id.clone(),
            reason: "wrong budget".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(cancelled.state(), pb::JobState::Cancelled);
    assert_eq!(cancelled.failure, "wrong budget");
    let beat = worker.heartbeat(&task, 2, &[]).await.unwrap();
    assert_eq!(beat.stop[0].reason, "task capture/shard-0000 was cancelled");
    // Cancelling again: the job's state forbids it (FAILED_PRECONDITION, not
    // ALREADY_EXISTS), with the real reason.
    let status = jobs
        .cancel_job(pb::CancelJobRequest {
            job_id: job.id.clone(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    let err = decode(&status);
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    assert_eq!(err.message, format!("job {} already ended (cancelled)", job.id));

    // Resume puts the work back.
    let resumed = jobs
        .resume_job(pb::ResumeJobRequest { job_id: job.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resumed.job.unwrap().state(), pb::JobState::Running);
    assert!(resumed.resumed_tasks.contains(&"capture/shard-0000".to_string()));
    // Resuming a running job is refused the same way.
    let status = jobs
        .resume_job(pb::ResumeJobRequest { job_id: job.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        decode(&status).message,
        format!("job {} is running; only failed or cancelled jobs resume", job.id)
    );
    let again = worker.lease(0, 2000).await.unwrap().unwrap();
    assert_eq!((again.task_id.as_str(), again.attempt), (task.task_id.as_str(), 2));
}

#[tokio::test]
async fn submit_is_idempotent_and_bad_specs_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = start(&dir);
    let mut jobs = coordinator.jobs().await.unwrap();
    let yaml = tiny_spec("idem", &[]);
    let first = submit(&mut jobs, "same", &yaml).await.unwrap();
    let second = submit(&mut jobs, "same", &yaml).await.unwrap();
    assert!(first.created && !second.created);
    assert_eq!(first.job.unwrap().id, second.job.unwrap().id);

    let other = tiny_spec("other", &[]);
    let err = decode(&submit(&mut jobs, "same", &other).await.unwrap_err());
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.message.contains("with a different spec"), "{}", err.message);

    let bad = tiny_spec(
        "bad",
        &[("global_batch: 4", "global_batch: 3"), ("frames: 9", "frames: 8")],
    );
    let status = submit(&mut jobs, "bad-1", &bad).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let err = decode(&status);
    assert_eq!(err.kind(), ErrorKind::InvalidSpec);
    assert_eq!(err.message, "invalid job spec (2 errors)");
    let fields: Vec<(&str, u32)> = err.field_errors.iter().map(|f| (f.path.as_str(), f.line)).collect();
    assert_eq!(fields, vec![("video.frames", 30), ("stages.finetune.global_batch", 66)]);

    let garbage = submit(&mut jobs, "bad-2", "version: 1\nname: x\nteacher: [")
        .await
        .unwrap_err();
    assert_eq!(decode(&garbage).kind(), ErrorKind::InvalidSpec);
    let empty_id = submit(&mut jobs, "", &yaml).await.unwrap_err();
    assert_eq!(decode(&empty_id).message, "request_id must not be empty");

    let listed = jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.jobs.len(), 1, "only the valid job is stored");
    let missing = decode(
        &get_job(&mut jobs, "nope")
            .await
            .unwrap_err()
            .downcast::<tonic::Status>()
            .unwrap(),
    );
    assert_eq!(missing.kind(), ErrorKind::NotFound);
    assert_eq!(missing.message, "job nope does not exist");
}

#[tokio::test]
async fn coordinator_killed_mid_job_restarts_with_everything_intact() {
    let dir = tempfile::tempdir().unwrap();
    let mut coordinator = start(&dir);
    let mut jobs = coordinator.jobs().await.unwrap();
    let job = submit(&mut jobs, "r", &tiny_spec("crash", &[]))
        .await
        .unwrap()
        .job
        .unwrap();
    let mut worker = FakeWorker::register(&coordinator, "w", "cpu", 2).await.unwrap();
    let done = worker.lease(0, 2000).await.unwrap().unwrap();
    let failed_first = worker.lease(1, 2000).await.unwrap().unwrap();
    worker.heartbeat(&done, 3, &[("loss", 0.25)]).await.unwrap();
    worker.complete(&done, &[]).await.unwrap();
    worker
        .fail(&failed_first, pb::FailureClass::Retryable, "disk hiccup")
        .await
        .unwrap();
    let running = worker.lease(1, 2000).await.unwrap().unwrap();
    assert_eq!(
        (running.task_id.as_str(), running.attempt),
        (failed_first.task_id.as_str(), 2)
    );
    worker.heartbeat(&running, 5, &[("loss", 0.125)]).await.unwrap();

    let before = get_job(&mut jobs, &job.id).await.unwrap();
    let events_before = collect_events(&mut jobs, &job.id).await;
    let metrics_before = jobs
        .get_metrics(pb::GetMetricsRequest {
            job_id: job.id.clone(),
            task_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .points;
    assert_eq!(metrics_before.len(), 2, "{metrics_before:?}");
    let workers_before = jobs.list_workers(pb::ListWorkersRequest {}).await.unwrap().into_inner();

    coordinator.kill();
    coordinator.restart().unwrap();

    let mut jobs = coordinator.jobs().await.unwrap();
    let after = get_job(&mut jobs, &job.id).await.unwrap();
    assert_eq!(after.job, before.job, "the job record is intact");
    // Tasks are intact except for the lease deadlines, which restart grants one TTL.
    let strip = |resp: &pb::GetJobResponse| {
        resp.tasks
            .iter()
            .cloned()
            .map(|mut t| {
                t.lease_deadline_unix_ms = 0;
                t
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&after), strip(&before));
    assert_eq!(collect_events(&mut jobs, &job.id).await, events_before);
    let metrics_after = jobs
        .get_metrics(pb::GetMetricsRequest {
            job_id: job.id.clone(),
            task_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .points;
    assert_eq!(metrics_after, metrics_before, "every metric point survived");
    let workers_after = jobs.list_workers(pb::ListWorkersRequest {}).await.unwrap().into_inner();
    assert_eq!(
        workers_after
            .workers
            .iter()
            .map(|w| (&w.id, &w.tasks))
            .collect::<Vec<_>>(),
        workers_before
            .workers
            .iter()
            .map(|w| (&w.id, &w.tasks))
            .collect::<Vec<_>>()
    );

    // The worker reconnects without registering again and keeps its lease.
    let mut worker = FakeWorker {
        client: coordinator.worker_client().await.unwrap(),
        id: worker.id.clone(),
    };
    let beat = worker.heartbeat(&running, 6, &[("loss", 0.0625)]).await.unwrap();
    assert!(beat.stop.is_empty(), "{:?}", beat.stop);
    worker.complete(&running, &[]).await.unwrap();
    let view = get_job(&mut jobs, &job.id).await.unwrap();
    let task = view
        .tasks
        .iter()
        .find(|t| format!("{}:{}", job.id, t.id) == running.task_id)
        .unwrap();
    assert_eq!(task.state(), pb::TaskState::Succeeded);
    assert_eq!(
        (task.attempt, task.retries_used),
        (2, 1),
        "the counted failure survived the crash"
    );
}

async fn collect_events(
    jobs: &mut surgery_proto::v1::job_service_client::JobServiceClient<tonic::transport::Channel>,
    job_id: &str,
) -> Vec<pb::JobEvent> {
    // Watch replays history; the job is still running, so read only what is there.
    let mut stream = jobs
        .watch_job(pb::WatchJobRequest {
            job_id: job_id.into(),
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let deadline = Deadline::patient(format!("job {job_id}'s event history to end (500 ms without an event)"));
    let mut events: Vec<pb::JobEvent> = Vec::new();
    while let Ok(Ok(Some(event))) = tokio::time::timeout(Duration::from_millis(500), stream.message()).await {
        events.push(event);
        deadline
            .check(|| format!("{} events, the last {:?}", events.len(), events.last()))
            .unwrap();
    }
    events
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly_and_keeps_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut coordinator = start(&dir);
    let mut jobs = coordinator.jobs().await.unwrap();
    let job = submit(&mut jobs, "r", &tiny_spec("term", &[]))
        .await
        .unwrap()
        .job
        .unwrap();
    drop(jobs);
    let status = coordinator.terminate().unwrap();
    assert!(status.success(), "{status}");
    let log = coordinator.log.lock().unwrap().join("\n");
    assert!(
        log.contains("SIGTERM: shutting down") && log.contains("store flushed"),
        "{log}"
    );
    coordinator.restart().unwrap();
    let mut jobs = coordinator.jobs().await.unwrap();
    assert_eq!(get_job(&mut jobs, &job.id).await.unwrap().job.unwrap().id, job.id);
}

#[tokio::test]
async fn watch_streams_events_until_the_job_ends() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = start(&dir);
    let mut jobs = coordinator.jobs().await.unwrap();
    let job = submit(&mut jobs, "r", &tiny_spec("watch", &[]))
        .await
        .unwrap()
        .job
        .unwrap();
    let mut stream = jobs
        .watch_job(pb::WatchJobRequest {
            job_id: job.id.clone(),
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.kind, "submitted");
    let mut worker = FakeWorker::register(&coordinator, "w", "cpu", 1).await.unwrap();
    let task = worker.lease(0, 2000).await.unwrap().unwrap();
    worker
        .fail(&task, pb::FailureClass::Fatal, "NaN loss at step 3")
        .await
        .unwrap();
    let deadline = Deadline::patient("the event stream to end with the job");
    let mut kinds = Vec::new();
    while let Some(event) = deadline
        .within(stream.message(), || format!("events {kinds:?}"))
        .await
        .unwrap()
        .unwrap()
    {
        kinds.push((event.kind.clone(), event.task_id.clone()));
        if event.task_id.is_empty() && event.kind == "failed" {
            assert!(event.message.contains("NaN loss at step 3"), "{}", event.message);
        }
    }
    assert_eq!(kinds[0], ("leased".to_string(), "capture/shard-0000".to_string()));
    assert_eq!(
        kinds.last().unwrap(),
        &("failed".to_string(), String::new()),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn health_and_reflection_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = start(&dir);
    let channel = coordinator.channel().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "surgery.v1.JobService", "surgery.v1.WorkerService"] {
        let resp = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            resp.status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            "{service}"
        );
    }

    // Reflection answers in v1 (grpcurl) and v1alpha (Python's grpcio-reflection).
    let expected = [
        "surgery.v1.JobService",
        "surgery.v1.WorkerService",
        "grpc.health.v1.Health",
    ];
    let v1 = list_services_v1(channel.clone()).await;
    let v1alpha = list_services_v1alpha(channel).await;
    for name in expected {
        assert!(v1.contains(&name.to_string()), "v1: {v1:?}");
        assert!(v1alpha.contains(&name.to_string()), "v1alpha: {v1alpha:?}");
    }
}

async fn list_services_v1(channel: tonic::transport::Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(futures::stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer");
    };
    list.service.into_iter().map(|s| s.name).collect()
}

async fn list_services_v1alpha(channel: tonic::transport::Channel) -> Vec<String> {
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let request = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(futures::stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected v1alpha reflection answer");
    };
    list.service.into_iter().map(|s| s.name).collect()
}

#[tokio::test]
async fn a_token_is_required_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(binary(), dir.path(), &["--auth-token", "s3cret"]).unwrap();
    let mut jobs = coordinator.jobs().await.unwrap();
    let status = jobs.list_jobs(pb::ListJobsRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let err = decode(&status);
    assert_eq!(err.kind(), ErrorKind::Unauthenticated);
    assert_eq!(
        err.message,
        "this coordinator needs a bearer token (surgeryctl: --token or SURGERY_TOKEN)"
    );

    let mut wrong = tonic::Request::new(pb::ListJobsRequest::default());
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer nope".parse().unwrap());
    assert_eq!(
        decode(&jobs.list_jobs(wrong).await.unwrap_err()).message,
        "the bearer token is wrong"
    );

    let mut right = tonic::Request::new(pb::ListJobsRequest::default());
    right
        .metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    assert!(jobs.list_jobs(right).await.is_ok());
    // Probes need no token.
    let mut health = tonic_health::pb::health_client::HealthClient::new(coordinator.channel().await.unwrap());
    assert!(
        health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn bad_worker_requests_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = start(&dir);
    let mut client = coordinator.worker_client().await.unwrap();
    let no_slots = client
        .register(pb::RegisterRequest {
            name: "w".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(decode(&no_slots).message, "a worker must offer at least one slot");
    let unknown = client
        .heartbeat(pb::HeartbeatRequest {
            worker_id: "ghost".into(),
            tasks: vec![],
        })
        .await
        .unwrap_err();
    let err = decode(&unknown);
    assert_eq!(err.kind(), ErrorKind::UnknownWorker);
    assert_eq!(err.message, "unknown worker `ghost`: register again");
    let mut worker = FakeWorker::register(&coordinator, "w", "cpu", 1).await.unwrap();
    let bad_slot = worker.lease(3, 10).await.unwrap_err();
    assert_eq!(
        decode(&bad_slot).message,
        format!("slot 3 does not exist; {} registered 1 slot(s)", worker.id)
    );
    let no_class = worker
        .client
        .fail_task(pb::FailTaskRequest {
            worker_id: worker.id.clone(),
            task_id: "x:y".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        decode(&no_class).message,
        "FailTask needs a failure class: retryable, preempted or fatal"
    );
}

#[test]
fn invalid_configuration_exits_2_with_the_reason() {
    let output = std::process::Command::new(binary())
        .args(["--lease-ttl", "1s", "--data-dir", "/nonexistent"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("lease_ttl (1s) must be at least twice heartbeat_interval (2s)"),
        "{stderr}"
    );
}

#[test]
fn a_second_coordinator_on_the_same_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = start(&dir);
    let err = Coordinator::start(binary(), dir.path(), FAST)
        .err()
        .expect("second start fails");
    assert!(
        err.to_string().contains("is in use by another coordinator process"),
        "{err}"
    );
}
