//! The tiny recipe with `object_store_url: s3://...` against a real S3-compatible server
//! (s3s-fs), credentials from the standard AWS environment: a coordinator and two workers
//! write every cache shard, checkpoint (manifest last) and export to the bucket, the server
//! is SIGKILLed for two seconds while distillation runs, the requests that meet the outage
//! back off and retry, and the job finishes. The
//! coordinator then serves an artifact of the job from the bucket.

use std::path::Path;
use std::time::Duration;
use surgery_core::layout;
use surgery_e2e::*;
use surgery_proto::v1 as pb;

fn coordinator_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_e2e-coordinator"))
}

fn worker_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_e2e-worker"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tiny_recipe_runs_on_s3_through_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = S3Server::start(&dir.path().join("s3")).unwrap();
    for (key, value) in server.env() {
        // SAFETY: this test binary runs this one test, before any thread reads the environment;
        // the coordinator and workers inherit it as a deployment's pods would have it.
        unsafe { std::env::set_var(key, value) };
    }
    let store_url = server.url("objects");
    let mut flags: Vec<&str> = FAST.to_vec();
    flags.extend(["--object-store-url", &store_url]);
    let coordinator = Coordinator::start(coordinator_bin(), &dir.path().join("coordinator"), &flags).unwrap();
    let workers: Vec<WorkerProcess> = (0..2)
        .map(|i| WorkerProcess::start(worker_bin(), &coordinator, &format!("w{i}"), dir.path()).unwrap())
        .collect();
    let logs = || cluster_logs(&coordinator, &workers);
    // Tasks that start while the store is away fail fast and are retried: allow plenty.
    let yaml = tiny_job(
        worker_bin(),
        dir.path(),
        "s3",
        &[("  max_retries: 3", "  max_retries: 100")],
    )
    .unwrap();
    let mut jobs = coordinator.jobs().await.unwrap();
    let job_id = submit(&mut jobs, "s3", &yaml).await.unwrap().job.unwrap().id;

    // The store goes away while distillation runs, and comes back.
    let deadline = Deadline::patient("a distill task to run");
    loop {
        let view = get_job(&mut jobs, &job_id).await.unwrap();
        if view
            .tasks
            .iter()
            .any(|t| t.id.starts_with("distill/") && t.state() == pb::TaskState::Running)
        {
            break;
        }
        deadline.check(|| describe_job(&view)).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.restart().unwrap();

    let view = wait_for_job(&mut jobs, &job_id, Duration::from_secs(900))
        .await
        .unwrap();
    assert_eq!(
        view.job.as_ref().unwrap().state(),
        pb::JobState::Succeeded,
        "{}\n{}",
        describe_job(&view),
        logs()
    );
    // The outage was felt, and absorbed: the S3 client backed off and retried the calls
    // that hit it (object_store's transient-error retries), so no task lost its attempt.
    let worker_logs: String = workers.iter().map(|w| w.log_text()).collect();
    assert!(
        worker_logs.contains("backing off"),
        "no request met the outage:\n{worker_logs}"
    );
    // Everything went to the bucket, the fine-tune's manifest after its files.
    let in_bucket = |path: &str| server.object_path(&format!("objects/{}/{path}", layout::job_root(&job_id)));
    assert!(in_bucket(layout::EXPORT_REPORT).is_file());
    assert!(in_bucket(&layout::cache_shard(0, 0)).is_file());
    assert!(in_bucket(&layout::latest_manifest(layout::FINETUNE_DIR)).is_file());
    assert!(in_bucket(&layout::in_dir(layout::FINETUNE_FINAL, "surgery.json")).is_file());

    // The coordinator reads a listed artifact back from the bucket for users.
    let mut stream = jobs
        .get_artifact(pb::GetArtifactRequest {
            job_id: job_id.clone(),
            path: layout::EXPORT_REPORT.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut served = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        served.extend(chunk.data);
    }
    assert_eq!(served, std::fs::read(in_bucket(layout::EXPORT_REPORT)).unwrap());
    // Anything not listed is refused, even if it exists.
    let refused = jobs
        .get_artifact(pb::GetArtifactRequest {
            job_id: job_id.clone(),
            path: layout::latest_manifest(layout::FINETUNE_DIR),
        })
        .await;
    let status = match refused {
        Ok(_) => panic!("an unlisted object was served"),
        Err(status) => status,
    };
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(status.message().contains("has no artifact"), "{}", status.message());
}
