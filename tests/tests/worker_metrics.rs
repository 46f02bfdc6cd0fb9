//! A worker's own /metrics and /healthz, scraped from a real worker process while it runs
//! the tiny recipe: ready once registered, every task it ran counted by outcome, its
//! checkpoints' bytes and upload times recorded, nothing left running at the end. Bad
//! addresses and a taken port stop the worker at start with the flag named.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use surgery_e2e::*;

fn coordinator_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_e2e-coordinator"))
}

fn worker_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_e2e-worker"))
}

/// The address the worker's log says it serves on.
fn metrics_addr(worker: &WorkerProcess) -> String {
    let deadline = Deadline::patient("the worker to log its metrics address");
    loop {
        if let Some(line) = worker
            .log_text()
            .lines()
            .find(|l| l.contains("metrics and health on http://"))
        {
            let addr = line.rsplit("http://").next().unwrap().trim();
            return addr.to_string();
        }
        deadline.check(|| worker.log_text()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// (status code, body) of `GET path`.
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    (status, body)
}

/// The value of the series whose line starts with `series` (name and labels).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_serves_what_it_did() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(coordinator_bin(), &dir.path().join("coordinator"), FAST).unwrap();
    let worker = WorkerProcess::start(worker_bin(), &coordinator, "w0", dir.path()).unwrap();
    let addr = metrics_addr(&worker);
    let deadline = Deadline::patient("the worker to register");
    while get(&addr, "/healthz") != (200, "ok".to_string()) {
        deadline
            .check(|| format!("{:?}\n{}", get(&addr, "/healthz"), worker.log_text()))
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }

    // One worker, so the fine-tune gang is one member.
    let yaml = tiny_job(
        worker_bin(),
        dir.path(),
        "metrics",
        &[("  finetune_workers: 2", "  finetune_workers: 1")],
    )
    .unwrap();
    let mut jobs = coordinator.jobs().await.unwrap();
    let job_id = submit(&mut jobs, "metrics", &yaml).await.unwrap().job.unwrap().id;
    let view = wait_for_job(&mut jobs, &job_id, Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(
        view.job.as_ref().unwrap().state(),
        surgery_proto::v1::JobState::Succeeded,
        "{}\n{}",
        describe_job(&view),
        worker.log_text()
    );
    // Every task but select (which runs in the coordinator) ran here.
    let ran = view.tasks.iter().filter(|t| t.id != "select").count() as f64;

    let (status, text) = get(&addr, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        value(&text, "surgery_worker_tasks_finished_total{outcome=\"succeeded\"}"),
        ran
    );
    assert_eq!(value(&text, "surgery_worker_tasks{state=\"running\"}"), 0.0);
    assert!(value(&text, "surgery_worker_checkpoint_bytes_total") > 0.0, "{text}");
    assert!(
        value(&text, "surgery_worker_checkpoint_upload_seconds_count") >= 1.0,
        "{text}"
    );
    assert!(
        !text.contains("surgery_worker_task_loss{"),
        "no series of tasks that ended:\n{text}"
    );

    // A taken port and a bad address stop a worker at start, saying which flag.
    let run = |metrics: &str| {
        Command::new(worker_bin())
            .args(["run", "--coordinator", &coordinator.url(), "--metrics-addr", metrics])
            .env_remove("SURGERY_TOKEN")
            .output()
            .unwrap()
    };
    let taken = run(&addr);
    assert!(!taken.status.success());
    let stderr = String::from_utf8_lossy(&taken.stderr);
    assert!(stderr.contains(&format!("cannot serve metrics on {addr}")), "{stderr}");
    let bad = run("localhost");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("--metrics-addr `localhost` is not host:port or `off`"),
        "{stderr}"
    );
}
