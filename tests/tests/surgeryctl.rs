//! surgeryctl, the real binary, against a real coordinator process: what a user types
//! and what they see, with the documented exit codes.

use std::path::Path;
use std::process::{Command, Output};
use surgery_e2e::*;

fn coordinator_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_e2e-coordinator"))
}

fn ctl(coordinator: &Coordinator, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_e2e-surgeryctl"))
        .args(args)
        .env("SURGERY_ADDR", coordinator.url())
        .env_remove("SURGERY_TOKEN")
        .output()
        .expect("surgeryctl runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn write_spec(dir: &Path, name: &str, yaml: &str) -> String {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn submit_status_list_logs_workers() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(coordinator_binary(), dir.path(), FAST).unwrap();
    let spec = write_spec(dir.path(), "job", &tiny_spec("ctl", &[]));

    let submitted = ctl(&coordinator, &["submit", &spec, "--request-id", "req-1"]);
    assert_eq!(submitted.status.code(), Some(0), "{}", stderr(&submitted));
    let job = stdout(&submitted).trim().to_string();
    assert!(job.starts_with("ctl-"), "{job}");
    let again = ctl(&coordinator, &["submit", &spec, "--request-id", "req-1"]);
    assert_eq!(stdout(&again).trim(), job, "the same request id gives the same job");
    assert!(stderr(&again).contains("already submitted"), "{}", stderr(&again));

    // A worker finishes the captures and one distill task, and runs another.
    let mut worker = FakeWorker::register(&coordinator, "w1", "cpu", 1).await.unwrap();
    for _ in 0..3 {
        let task = worker.lease(0, 2000).await.unwrap().unwrap();
        worker.heartbeat(&task, 1, &[("loss", 0.5)]).await.unwrap();
        worker.complete_like_a_worker(&task).await.unwrap();
    }
    let running = worker.lease(0, 2000).await.unwrap().unwrap();
    worker.heartbeat(&running, 7, &[("loss", 0.25)]).await.unwrap();

    let status = ctl(&coordinator, &["status", &job]);
    assert_eq!(status.status.code(), Some(0), "{}", stderr(&status));
    let text = stdout(&status);
    assert!(text.contains("State:     running"), "{text}");
    assert!(text.contains("Progress:  3/12 tasks succeeded"), "{text}");
    let table: Vec<&str> = text.lines().skip_while(|l| !l.starts_with("BLOCK")).collect();
    assert_eq!(
        table[0].split_whitespace().collect::<Vec<_>>(),
        ["BLOCK", "R2", "R4", "linear"]
    );
    assert_eq!(
        table[1].split_whitespace().collect::<Vec<_>>(),
        ["0", "succeeded", "0.1020", "running", "7/100", "pending"],
        "{text}"
    );

    let json = ctl(&coordinator, &["status", &job, "--output", "json"]);
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(doc["job"]["state"], "running");
    // What the fake worker reported (0.1 + 0.01 * block + 0.001 * rate), bit for bit:
    // since float_roundtrip the JSON reads back exactly, and that is not the literal 0.102.
    assert_eq!(doc["distill"][0]["heldout_error"], 0.1 + 0.01 * 0.0 + 0.001 * 2.0);

    let list = ctl(&coordinator, &["list", "--state", "running"]);
    assert!(stdout(&list).contains(&job), "{}", stdout(&list));
    let none = ctl(&coordinator, &["list", "--state", "failed"]);
    assert!(!stdout(&none).contains(&job));

    let logs = ctl(&coordinator, &["logs", &job, "--task", "capture/shard-0000"]);
    assert_eq!(logs.status.code(), Some(0), "{}", stderr(&logs));
    assert!(
        stdout(&logs).contains(&format!("{job}:capture/shard-0000 step 1")),
        "{}",
        stdout(&logs)
    );

    let workers = ctl(&coordinator, &["workers"]);
    let text = stdout(&workers);
    assert!(
        text.contains(&worker.id) && text.contains("alive") && text.contains("1x cpu"),
        "{text}"
    );
}

#[tokio::test]
async fn cancel_watch_resume_and_their_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(coordinator_binary(), dir.path(), FAST).unwrap();
    let spec = write_spec(dir.path(), "job", &tiny_spec("ctl2", &[]));
    let job = stdout(&ctl(&coordinator, &["submit", &spec])).trim().to_string();

    let cancel = ctl(&coordinator, &["cancel", &job, "--reason", "testing"]);
    assert_eq!(cancel.status.code(), Some(0), "{}", stderr(&cancel));
    assert!(stdout(&cancel).contains("cancelled"), "{}", stdout(&cancel));
    let again = ctl(&coordinator, &["cancel", &job]);
    assert_eq!(again.status.code(), Some(6), "conflict: {}", stderr(&again));
    assert!(
        stderr(&again).contains("already ended (cancelled)"),
        "{}",
        stderr(&again)
    );

    // Watching an ended job replays its events and exits 8 (failed or cancelled).
    let watch = ctl(&coordinator, &["watch", &job]);
    assert_eq!(watch.status.code(), Some(8), "{}", stderr(&watch));
    assert!(stdout(&watch).contains("submitted"), "{}", stdout(&watch));

    let resume = ctl(&coordinator, &["resume", &job]);
    assert_eq!(resume.status.code(), Some(0), "{}", stderr(&resume));
    assert!(stdout(&resume).contains("12 tasks resumed"), "{}", stdout(&resume));

    let missing = ctl(&coordinator, &["status", "no-such-job"]);
    assert_eq!(missing.status.code(), Some(4));
    assert!(
        stderr(&missing).contains("job no-such-job does not exist"),
        "{}",
        stderr(&missing)
    );
}

#[tokio::test]
async fn a_bad_spec_is_refused_with_its_line_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(coordinator_binary(), dir.path(), FAST).unwrap();
    let spec = write_spec(dir.path(), "bad", &tiny_spec("bad", &[("budget: 0.8", "budget: 2.0")]));
    let submit = ctl(&coordinator, &["submit", &spec]);
    assert_eq!(submit.status.code(), Some(3));
    let err = stderr(&submit);
    assert!(
        err.contains(&format!(
            "{spec}:51:7: surgery.selection.knapsack.budget: 2 is out of range"
        )),
        "{err}"
    );
    let list = ctl(&coordinator, &["list", "--output", "json"]);
    let doc: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(
        doc["jobs"].as_array().map(|a| a.len()),
        Some(0),
        "nothing stored: {doc}"
    );
}

#[tokio::test]
async fn the_token_comes_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(coordinator_binary(), dir.path(), &["--auth-token", "t0k"]).unwrap();
    let denied = ctl(&coordinator, &["list"]);
    assert_eq!(denied.status.code(), Some(7));
    assert!(stderr(&denied).contains("needs a bearer token"), "{}", stderr(&denied));
    let allowed = Command::new(env!("CARGO_BIN_EXE_e2e-surgeryctl"))
        .args(["list"])
        .env("SURGERY_ADDR", coordinator.url())
        .env("SURGERY_TOKEN", "t0k")
        .output()
        .unwrap();
    assert_eq!(allowed.status.code(), Some(0), "{}", stderr(&allowed));
}
