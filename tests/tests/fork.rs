//! Forked jobs on real processes: a coordinator, two CPU workers, the tiny teacher.
//! A job runs; `surgeryctl fork` submits another budget, which reuses every capture and
//! distill task (reading the parent's objects in place: nothing is copied) and runs only
//! select, fine-tuning, export and evaluation; a fork of that fork with other distill
//! settings reuses the capture of the original job and distils again; an infeasible
//! budget fails select with the advice to fork; forking a job that does not exist is a
//! clear error.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
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

/// A stuck job, not a slow one.
const LIMIT: Duration = Duration::from_secs(900);

fn ctl(coordinator: &Coordinator, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_e2e-surgeryctl"))
        .args(args)
        .env("SURGERY_ADDR", coordinator.url())
        .env_remove("SURGERY_TOKEN")
        .output()
        .expect("surgeryctl runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every object under a job's folder, relative to it.
fn objects(job_dir: &Path) -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(job_dir, job_dir, &mut out);
    out.sort();
    out
}

fn task<'a>(view: &'a pb::GetJobResponse, id: &str) -> &'a pb::Task {
    view.tasks
        .iter()
        .find(|t| t.id == id)
        .unwrap_or_else(|| panic!("no task {id}"))
}

fn stage_tasks(view: &pb::GetJobResponse, stage: pb::Stage) -> Vec<&pb::Task> {
    view.tasks.iter().filter(|t| t.stage() == stage).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_reuses_capture_and_distillation_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let coordinator = Coordinator::start(coordinator_bin(), &dir.join("coordinator"), FAST).unwrap();
    let workers: Vec<WorkerProcess> = (0..2)
        .map(|i| WorkerProcess::start(worker_bin(), &coordinator, &format!("w{i}"), dir).unwrap())
        .collect();
    let logs = || cluster_logs(&coordinator, &workers);
    let job_dir = |job: &str| -> PathBuf { coordinator.object_root().join(layout::job_root(job)) };
    let mut jobs = coordinator.jobs().await.unwrap();

    // The parent.
    let parent_yaml = tiny_job(worker_bin(), dir, "parent", &[]).unwrap();
    let parent = submit(&mut jobs, "parent", &parent_yaml).await.unwrap().job.unwrap().id;
    let parent_view = wait_for_job(&mut jobs, &parent, LIMIT).await.unwrap();
    let parent_job = parent_view.job.as_ref().unwrap();
    assert_eq!(
        parent_job.state(),
        pb::JobState::Succeeded,
        "{}\n{}",
        parent_job.failure,
        logs()
    );
    let parent_objects = objects(&job_dir(&parent));

    // An infeasible budget: select fails and says to fork.
    let tight = tiny_job(worker_bin(), dir, "tight", &[("budget: 0.8", "budget: 0.01")]).unwrap();
    let spec_file = dir.join("tight.yaml");
    std::fs::write(&spec_file, &tight).unwrap();
    let out = ctl(&coordinator, &["fork", &parent, "-f", spec_file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let tight_id = text(&out.stdout).trim().to_string();
    assert!(
        text(&out.stderr).contains("capture: 2 of 2 reused"),
        "{}",
        text(&out.stderr)
    );
    let tight_view = wait_for_job(&mut jobs, &tight_id, LIMIT).await.unwrap();
    let failure = &tight_view.job.as_ref().unwrap().failure;
    assert_eq!(tight_view.job.as_ref().unwrap().state(), pb::JobState::Failed);
    assert!(
        failure.contains("infeasible") && failure.contains("surgeryctl fork"),
        "{failure}"
    );

    // Another budget and a shorter fine-tuning, forked from the parent with surgeryctl.
    let child_yaml = tiny_job(
        worker_bin(),
        dir,
        "child",
        &[("budget: 0.8", "budget: 0.7"), ("steps: 20", "steps: 10")],
    )
    .unwrap();
    let spec_file = dir.join("child.yaml");
    std::fs::write(&spec_file, &child_yaml).unwrap();
    let out = ctl(&coordinator, &["fork", &parent, "-f", spec_file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let child = text(&out.stdout).trim().to_string();
    let said = text(&out.stderr);
    assert!(said.contains(&format!("forked from {parent}")), "{said}");
    assert!(said.contains("distill: 6 of 6 reused"), "{said}");

    // Before anything runs, the reused tasks are succeeded and name the parent.
    let view = get_job(&mut jobs, &child).await.unwrap();
    let job = view.job.as_ref().unwrap();
    assert_eq!(job.forked_from, parent);
    let reused: Vec<&pb::Task> = view.tasks.iter().filter(|t| !t.reused_from.is_empty()).collect();
    assert_eq!(reused.len(), 2 + 6, "two capture shards, 2 blocks x 3 rates");
    for t in &reused {
        assert_eq!(t.reused_from, parent);
        assert_eq!(t.state(), pb::TaskState::Succeeded);
        assert_eq!(t.attempt, 0, "{} never ran here", t.id);
        // The result is the parent's: select uses its held-out errors.
        assert_eq!(t.result_metrics, task(&parent_view, &t.id).result_metrics, "{}", t.id);
    }
    let distill = job.stages.iter().find(|s| s.stage() == pb::Stage::Distill).unwrap();
    assert_eq!((distill.succeeded, distill.reused), (6, 6));

    let view = wait_for_job(&mut jobs, &child, LIMIT).await.unwrap();
    let job = view.job.as_ref().unwrap();
    assert_eq!(job.state(), pb::JobState::Succeeded, "{}\n{}", job.failure, logs());
    for stage in [
        pb::Stage::Select,
        pb::Stage::Finetune,
        pb::Stage::Export,
        pb::Stage::Evaluate,
    ] {
        for t in stage_tasks(&view, stage) {
            assert!(t.reused_from.is_empty(), "{} ran here", t.id);
        }
    }
    // Referenced, not copied: the child wrote no capture or distill object; fine-tuning
    // read the parent's latents and export the parent's feature maps in place.
    let child_objects = objects(&job_dir(&child));
    let copied: Vec<&String> = child_objects.iter().filter(|p| layout::producer(p).is_some()).collect();
    assert!(copied.is_empty(), "copied into the fork: {copied:?}");
    assert!(
        child_objects.iter().any(|p| p == layout::EXPORT_REPORT),
        "{child_objects:?}"
    );
    assert_eq!(
        objects(&job_dir(&parent)),
        parent_objects,
        "the parent's objects changed"
    );
    let status = ctl(&coordinator, &["status", &child, "--tasks"]);
    let status = text(&status.stdout);
    assert!(status.contains(&format!("Forked:    from {parent}")), "{status}");
    assert!(status.contains(&format!("reused ({parent})")), "{status}");

    // A fork of the fork with other distill settings: the original's capture is reused
    // (the fork names the job that ran it), the distillation runs again.
    let grandchild_yaml = tiny_job(
        worker_bin(),
        dir,
        "grandchild",
        &[("budget: 0.8", "budget: 0.7"), ("lr: 0.003", "lr: 0.002")],
    )
    .unwrap();
    let grandchild = jobs
        .submit_job(pb::SubmitJobRequest {
            request_id: "grandchild".into(),
            spec_yaml: grandchild_yaml,
            fork_of: child.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert!(
        grandchild
            .reuse_notes
            .iter()
            .any(|n| n.contains("distill: 0 of 6 reused") && n.contains("stages.distill")),
        "{:?}",
        grandchild.reuse_notes
    );
    let view = wait_for_job(&mut jobs, &grandchild.id, LIMIT).await.unwrap();
    let job = view.job.as_ref().unwrap();
    assert_eq!(job.state(), pb::JobState::Succeeded, "{}\n{}", job.failure, logs());
    for t in stage_tasks(&view, pb::Stage::Capture) {
        assert_eq!(t.reused_from, parent, "{}", t.id);
    }
    for t in stage_tasks(&view, pb::Stage::Distill) {
        assert!(t.reused_from.is_empty() && t.attempt >= 1, "{} ran here", t.id);
    }
    let grandchild_objects = objects(&job_dir(&grandchild.id));
    assert!(grandchild_objects.iter().any(|p| p.starts_with("distill/")));
    assert!(
        !grandchild_objects
            .iter()
            .any(|p| p.starts_with("cache/") || p.starts_with("latents/")),
        "{grandchild_objects:?}"
    );

    // Forking what does not exist says so, and records nothing.
    let out = ctl(
        &coordinator,
        &["fork", "no-such-job", "-f", spec_file.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cannot fork job `no-such-job`: there is no such job"),
        "{}",
        text(&out.stderr)
    );
    let listed = jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(listed.len(), 4, "parent, tight, child, grandchild");
}
