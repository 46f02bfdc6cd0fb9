//! The whole recipe on real processes: a coordinator, CPU workers, the tiny teacher.
//! Every stage runs; the export is checked against its report; workers and the
//! coordinator are SIGKILLed mid-job and the job still finishes with the loss curves of
//! an undisturbed run; fine-tuning on two workers equals one worker.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use surgery_e2e::*;
use surgery_proto::v1 as pb;
use surgery_worker::model::weights;
use surgery_worker::stages::export::{probe, probe_shape};
use surgery_worker::student::Student;
use tch::{Device, Kind};

fn coordinator_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_e2e-coordinator"))
}

fn worker_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_e2e-worker"))
}

const LIMIT: Duration = Duration::from_secs(240);

struct Cluster {
    coordinator: Coordinator,
    workers: Vec<WorkerProcess>,
    dir: PathBuf,
}

impl Cluster {
    fn start(dir: &Path, workers: usize) -> Cluster {
        let coordinator = Coordinator::start(coordinator_bin(), &dir.join("coordinator"), FAST).unwrap();
        let workers = (0..workers)
            .map(|i| WorkerProcess::start(worker_bin(), &coordinator, &format!("w{i}"), dir).unwrap())
            .collect();
        Cluster {
            coordinator,
            workers,
            dir: dir.to_path_buf(),
        }
    }

    fn job_dir(&self, job: &str) -> PathBuf {
        self.dir.join("coordinator/objects/jobs").join(job)
    }

    fn add_worker(&mut self, name: &str) {
        self.workers
            .push(WorkerProcess::start(worker_bin(), &self.coordinator, name, &self.dir).unwrap());
    }

    fn logs(&self) -> String {
        let mut all = self.coordinator.log.lock().unwrap().join("\n");
        for w in &self.workers {
            all.push_str(&format!("\n--- {} ---\n{}", w.name, w.log_text()));
        }
        all
    }
}

async fn run_job(cluster: &Cluster, yaml: &str) -> (String, pb::GetJobResponse) {
    let mut jobs = cluster.coordinator.jobs().await.unwrap();
    let job = submit(&mut jobs, &uuid(), yaml).await.unwrap().job.unwrap().id;
    let view = wait_for_job(&mut jobs, &job, LIMIT).await.unwrap();
    (job, view)
}

fn uuid() -> String {
    format!("r-{}", std::process::id()) + &format!("-{:?}", std::time::Instant::now())
}

fn assert_succeeded(view: &pb::GetJobResponse, cluster: &Cluster) {
    let job = view.job.as_ref().unwrap();
    assert_eq!(
        job.state(),
        pb::JobState::Succeeded,
        "job failed: {}\n{}",
        job.failure,
        cluster.logs()
    );
    assert!(view.tasks.iter().all(|t| t.state() == pb::TaskState::Succeeded));
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// Every loss curve of a job: each distill task's and the fine-tuning's.
fn loss_curves(job_dir: &Path) -> BTreeMap<String, Vec<f64>> {
    let mut curves = BTreeMap::new();
    for block in std::fs::read_dir(job_dir.join("distill")).unwrap() {
        let block = block.unwrap().path();
        for rate in std::fs::read_dir(&block).unwrap() {
            let rate = rate.unwrap().path();
            let result = json(&rate.join("result.json"));
            let curve: Vec<f64> = serde_json::from_value(result["loss_curve"].clone()).unwrap();
            let name = format!(
                "{}/{}",
                block.file_name().unwrap().to_string_lossy(),
                rate.file_name().unwrap().to_string_lossy()
            );
            curves.insert(name, curve);
        }
    }
    let finetune: Vec<f64> = serde_json::from_value(json(&job_dir.join("finetune/loss_curve.json"))).unwrap();
    curves.insert("finetune".into(), finetune);
    curves
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_recipe_end_to_end_on_two_workers() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 2);
    let yaml = tiny_job(worker_bin(), dir.path(), "e2e", &[]).unwrap();
    let (job, view) = run_job(&cluster, &yaml).await;
    assert_succeeded(&view, &cluster);
    let finetune = view.tasks.iter().find(|t| t.id == "finetune").unwrap();
    assert_eq!(finetune.result_metrics["workers"], 2.0, "the gang had two workers");

    let job_dir = cluster.job_dir(&job);
    let report = json(&job_dir.join("export/report.json"));
    // The knapsack kept attention within the 0.8 budget.
    assert!(
        report["attention_flops"]["saved_fraction"].as_f64().unwrap() >= 0.2 - 1e-9,
        "{report}"
    );
    // Distillation helped at every converted block.
    let distill = report["distill"].as_array().unwrap();
    assert!(!distill.is_empty(), "the budget forces converted blocks");
    for d in distill {
        let m = &d["metrics"];
        let (before, after) = (
            m["untrained_heldout_error"].as_f64().unwrap(),
            m["heldout_error"].as_f64().unwrap(),
        );
        assert!(
            after < before,
            "block {}: distilled {after} is not below untrained {before}",
            d["block"]
        );
    }

    // The export loads, and its measured numbers are the report's.
    surgery_worker::runtime::init();
    let student = Student::load(&job_dir.join("export"), Device::Cpu, Kind::Float).unwrap();
    let (_vs, teacher) = weights::load(&dir.path().join("models/tiny-teacher"), Device::Cpu, Kind::Float).unwrap();
    let spec = surgery_core::spec::JobSpec::parse(&yaml).unwrap();
    let prompts = weights::read_safetensors(&dir.path().join("data/prompts.safetensors")).unwrap();
    let text = prompts["prompt_embeds"].narrow(0, 0, 1);
    let (mean_abs, rel) = probe(&student.model, &teacher, &text, probe_shape(&spec));
    let reported = &report["probe"];
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * b.abs().max(1e-12);
    assert!(
        close(mean_abs, reported["student_mean_abs"].as_f64().unwrap()),
        "{mean_abs} vs {reported}"
    );
    assert!(
        close(rel, reported["velocity_relative_error_vs_teacher"].as_f64().unwrap()),
        "{rel} vs {reported}"
    );
    let rates: Vec<u64> = report["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["rate"].as_u64().unwrap())
        .collect();
    let layout: Vec<u64> = view
        .job
        .as_ref()
        .unwrap()
        .selected_layout
        .iter()
        .map(|b| u64::from(b.rate))
        .collect();
    assert_eq!(rates, layout, "the export has the selected layout");

    let evaluate = json(&job_dir.join("evaluate/report.json"));
    assert!(evaluate["mean"]["latent_psnr_db"].as_f64().unwrap().is_finite());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fine_tuning_on_two_workers_equals_one() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 2);
    let two = tiny_job(worker_bin(), dir.path(), "two", &[]).unwrap();
    let one = tiny_job(
        worker_bin(),
        dir.path(),
        "one",
        &[("finetune_workers: 2", "finetune_workers: 1")],
    )
    .unwrap();
    let (job_two, view) = run_job(&cluster, &two).await;
    assert_succeeded(&view, &cluster);
    let (job_one, view) = run_job(&cluster, &one).await;
    assert_succeeded(&view, &cluster);

    let (a, b) = (
        loss_curves(&cluster.job_dir(&job_one)),
        loss_curves(&cluster.job_dir(&job_two)),
    );
    assert_eq!(a.len(), b.len());
    for (name, curve) in &a {
        let other = &b[name];
        assert_eq!(curve.len(), other.len(), "{name}");
        for (step, (x, y)) in curve.iter().zip(other).enumerate() {
            let tol = 1e-4 * x.abs().max(1.0);
            assert!(
                (x - y).abs() <= tol,
                "{name} step {step}: one worker {x}, two workers {y}"
            );
        }
    }
    surgery_worker::runtime::init();
    let load = |job: &str| {
        weights::read_safetensors(&cluster.job_dir(job).join("export/diffusion_pytorch_model.safetensors")).unwrap()
    };
    let (wa, wb) = (load(&job_one), load(&job_two));
    for (name, x) in &wa {
        let y = &wb[name];
        let diff = (x - y).abs().max().double_value(&[]);
        let scale = x.abs().max().double_value(&[]).max(1e-6);
        assert!(diff / scale <= 1e-4, "{name}: relative difference {}", diff / scale);
    }
}

/// The highest complete checkpoint step under `dir` (a step folder with its manifest).
fn newest_checkpoint(dir: &Path) -> Option<u64> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("manifest.json").exists())
        .filter_map(|e| e.file_name().to_string_lossy().strip_prefix("step-")?.parse().ok())
        .max()
}

async fn task_view(
    jobs: &mut surgery_proto::v1::job_service_client::JobServiceClient<tonic::transport::Channel>,
    job: &str,
    task: &str,
) -> Option<pb::Task> {
    get_job(jobs, job).await.ok()?.tasks.into_iter().find(|t| t.id == task)
}

/// The log line "resumed from the checkpoint at step N" of a task, if any.
async fn resumed_at(
    jobs: &mut surgery_proto::v1::job_service_client::JobServiceClient<tonic::transport::Channel>,
    job: &str,
    task: &str,
) -> Vec<u64> {
    let mut stream = jobs
        .get_logs(pb::GetLogsRequest {
            job_id: job.into(),
            task_id: task.into(),
            follow: false,
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut steps = Vec::new();
    while let Some(line) = stream.message().await.unwrap() {
        if let Some(step) = line.message.strip_prefix("resumed from the checkpoint at step ") {
            steps.push(step.parse().unwrap());
        }
    }
    steps
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_workers_and_coordinator_change_nothing() {
    // Larger than the demo so each task lasts long enough to be killed mid-way.
    let bigger = [
        ("height: 64", "height: 128"),
        ("width: 96", "width: 192"),
        ("    steps: 100", "    steps: 300"),
        ("    steps: 20\n", "    steps: 60\n"),
        ("every_steps: 10", "every_steps: 20"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 2);
    let undisturbed_yaml = tiny_job(worker_bin(), dir.path(), "calm", &bigger).unwrap();
    let (calm, view) = run_job(&cluster, &undisturbed_yaml).await;
    assert_succeeded(&view, &cluster);

    let yaml = tiny_job(worker_bin(), dir.path(), "storm", &bigger).unwrap();
    let mut jobs = cluster.coordinator.jobs().await.unwrap();
    let job = submit(&mut jobs, "storm", &yaml).await.unwrap().job.unwrap().id;
    let job_dir = cluster.job_dir(&job);

    // 1. SIGKILL the worker of a distill task once it has a checkpoint.
    let (task, holder, checkpoint) = loop {
        let view = get_job(&mut jobs, &job).await.unwrap();
        let running = view
            .tasks
            .iter()
            .find(|t| t.stage() == pb::Stage::Distill && t.state() == pb::TaskState::Running);
        if let Some(t) = running {
            let (block, rate) = match t.params.as_ref().and_then(|p| p.kind.as_ref()) {
                Some(pb::task_params::Kind::Distill(d)) => (d.block, d.rate),
                _ => unreachable!(),
            };
            let rate = if rate == 0 {
                "linear".to_string()
            } else {
                rate.to_string()
            };
            let dir = job_dir.join(format!("distill/block-{block:02}/rate-{rate}"));
            if let (Some(step), Some(holder)) = (newest_checkpoint(&dir), t.holders.first()) {
                break (t.id.clone(), holder.worker_id.clone(), step);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let victim = cluster
        .workers
        .iter_mut()
        .find(|w| holder.starts_with(&format!("{}-", w.name)))
        .unwrap();
    victim.kill();
    cluster.add_worker("w2");

    // 2. SIGKILL a fine-tuning gang member once there is a checkpoint, and corrupt that
    //    newest checkpoint: the resume must fall back to the one before (or the start).
    let finetune_dir = job_dir.join("finetune");
    let corrupted = loop {
        let t = task_view(&mut jobs, &job, "finetune").await;
        if let Some(t) = t.filter(|t| t.state() == pb::TaskState::Running)
            && let Some(step) = newest_checkpoint(&finetune_dir)
        {
            let member = t.holders.last().unwrap().worker_id.clone();
            let victim = cluster
                .workers
                .iter_mut()
                .find(|w| member.starts_with(&format!("{}-", w.name)))
                .unwrap();
            victim.kill();
            break step;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let state = finetune_dir.join(format!("step-{corrupted:010}/state.safetensors"));
    let mut bytes = std::fs::read(&state).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xFF;
    std::fs::write(&state, bytes).unwrap();
    cluster.add_worker("w3");

    // 3. SIGKILL the coordinator and restart it on the same port and store.
    cluster.coordinator.kill();
    cluster.coordinator.restart().unwrap();
    let mut jobs = cluster.coordinator.jobs().await.unwrap();
    let view = wait_for_job(&mut jobs, &job, LIMIT).await.unwrap();
    assert_succeeded(&view, &cluster);

    // The disturbed run's every loss curve equals the undisturbed one, bit for bit.
    let (calm_curves, storm_curves) = (loss_curves(&cluster.job_dir(&calm)), loss_curves(&job_dir));
    assert_eq!(
        calm_curves, storm_curves,
        "resumed loss curves differ from the undisturbed run"
    );

    // The killed distill task resumed from a checkpoint at least as new as the one that
    // was complete when it was killed: at most one interval was recomputed.
    let resumed = resumed_at(&mut jobs, &job, &task).await;
    assert!(
        !resumed.is_empty(),
        "{task} never resumed from a checkpoint:\n{}",
        cluster.logs()
    );
    assert!(
        resumed[0] >= checkpoint,
        "{task} resumed at {} but step {checkpoint} was complete",
        resumed[0]
    );
    // The fine-tuning did not load the corrupted checkpoint.
    let resumed = resumed_at(&mut jobs, &job, "finetune").await;
    assert!(
        resumed.iter().all(|s| *s != corrupted),
        "loaded the corrupted checkpoint at step {corrupted}"
    );
    let finetune = view.tasks.iter().find(|t| t.id == "finetune").unwrap();
    assert!(
        finetune.attempt >= 2 && finetune.retries_used == 0,
        "a lost gang member is not a counted failure"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_checkpoints_and_releases_the_lease_as_a_preemption() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 1);
    let yaml = tiny_job(
        worker_bin(),
        dir.path(),
        "term",
        &[
            ("height: 64", "height: 128"),
            ("width: 96", "width: 192"),
            ("    steps: 100", "    steps: 400"),
            ("finetune_workers: 2", "finetune_workers: 1"),
            ("every_steps: 10", "every_steps: 1000"),
        ],
    )
    .unwrap();
    let mut jobs = cluster.coordinator.jobs().await.unwrap();
    let job = submit(&mut jobs, "term", &yaml).await.unwrap().job.unwrap().id;
    // Wait for a distill task well under way (no periodic checkpoint: every 1000 steps).
    let task = loop {
        let view = get_job(&mut jobs, &job).await.unwrap();
        let busy = view.tasks.iter().find(|t| {
            t.stage() == pb::Stage::Distill
                && t.state() == pb::TaskState::Running
                && t.progress.as_ref().is_some_and(|p| p.step >= 20)
        });
        if let Some(t) = busy {
            break t.id.clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let status = cluster.workers[0].terminate().unwrap();
    assert!(
        status.success(),
        "the worker exits cleanly on SIGTERM: {status}\n{}",
        cluster.logs()
    );
    let t = task_view(&mut jobs, &job, &task).await.unwrap();
    assert_eq!(t.state(), pb::TaskState::Pending, "{t:?}");
    assert_eq!(t.failure_class(), pb::FailureClass::Preempted, "{}", t.failure);
    assert_eq!((t.retries_used, t.interruptions), (0, 1));

    // A new worker resumes from the checkpoint written at preemption, not from scratch.
    cluster.add_worker("w-after");
    let view = wait_for_job(&mut jobs, &job, LIMIT).await.unwrap();
    assert_succeeded(&view, &cluster);
    let resumed = resumed_at(&mut jobs, &job, &task).await;
    assert!(
        resumed.first().is_some_and(|s| *s >= 20),
        "resumed at {resumed:?}:\n{}",
        cluster.logs()
    );
}
