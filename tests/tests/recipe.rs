//! The whole recipe on real processes: a coordinator, CPU workers, the tiny teacher.
//! Every stage runs; the export is checked against its report; workers and the
//! coordinator are SIGKILLed mid-job and the job still finishes with the loss curves of
//! an undisturbed run, byte for byte; fine-tuning on two workers equals one worker.
//! Objects are found through `surgery_core::layout`, never by spelling their paths; every
//! wait has a [`Deadline`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use surgery_core::layout;
use surgery_core::rate::Rate;
use surgery_core::spec::JobSpec;
use surgery_e2e::*;
use surgery_proto::v1 as pb;
use surgery_worker::model::weights;
use surgery_worker::stages::export::{probe, probe_shape};
use surgery_worker::storage::checkpoint::MANIFEST_FILE;
use surgery_worker::student::Student;
use tch::{Device, Kind};

fn coordinator_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_e2e-coordinator"))
}

fn worker_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_e2e-worker"))
}

/// How long a job may take before the test gives up on it: a stuck job, not a slow one.
const LIMIT: Duration = Duration::from_secs(900);

/// The file a fine-tuning checkpoint keeps its state in (worker/src/stages/finetune.rs).
const FINETUNE_STATE_FILE: &str = "state.safetensors";

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

    /// The folder of `job`'s objects: every `layout` path of the job is relative to it.
    fn job_dir(&self, job: &str) -> PathBuf {
        self.coordinator.object_root().join(layout::job_root(job))
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

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A loss curve as the job wrote it: each number's text, and the values parsed from it.
#[derive(Debug)]
struct Curve {
    written: Vec<String>,
    values: Vec<f64>,
}

/// The curve in the JSON file at `path`: the array under `key`, or the document itself
/// when `key` is `None`. The numbers' text is taken verbatim, so a value that reads back
/// the same but was written differently (the last digit of a float that did not round
/// trip) still differs.
fn curve(path: &Path, key: Option<&str>) -> Curve {
    let bytes = read(path);
    let text = std::str::from_utf8(&bytes).unwrap();
    let doc: serde_json::Value = serde_json::from_str(text).unwrap();
    let (array, from) = match key {
        Some(key) => (&doc[key], text.find(&format!("\"{key}\"")).expect("the key")),
        None => (&doc, 0),
    };
    let open = from + text[from..].find('[').expect("an array");
    let close = open + text[open..].find(']').expect("a flat array");
    let written: Vec<String> = text[open + 1..close]
        .split(',')
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect();
    let values: Vec<f64> = serde_json::from_value(array.clone())
        .unwrap_or_else(|e| panic!("{}: {key:?} is not a list of numbers: {e}", path.display()));
    assert_eq!(written.len(), values.len(), "{}: {written:?}", path.display());
    Curve { written, values }
}

/// Every loss curve of a finished job, by name: each distill task's (from its result) and
/// the fine-tuning's, each checked to have one value per step of the spec.
fn loss_curves(job_dir: &Path, view: &pb::GetJobResponse, spec: &JobSpec) -> BTreeMap<String, Curve> {
    let mut curves = BTreeMap::new();
    for task in &view.tasks {
        let Some(pb::task_params::Kind::Distill(d)) = task.params.as_ref().and_then(|p| p.kind.as_ref()) else {
            continue;
        };
        let path = layout::distill_result(d.block, Rate::from_code(d.rate));
        let result = curve(&job_dir.join(&path), Some("loss_curve"));
        assert_eq!(result.values.len(), spec.stages.distill.steps as usize, "{path}");
        curves.insert(path, result);
    }
    assert!(
        !curves.is_empty(),
        "the job has no distill task:\n{}",
        describe_job(view)
    );
    let finetune = curve(&job_dir.join(layout::FINETUNE_LOSS_CURVE), None);
    assert_eq!(finetune.values.len(), spec.stages.finetune.steps as usize);
    curves.insert(layout::FINETUNE_LOSS_CURVE.to_string(), finetune);
    curves
}

/// `a` and `b` hold the same curves, the same length each, and `differs` finds nothing
/// at any step (given each side's written text and value); fails at the first step where
/// it does, naming the curve and saying why.
fn compare_curves(
    a: &BTreeMap<String, Curve>,
    b: &BTreeMap<String, Curve>,
    differs: impl Fn((&str, f64), (&str, f64)) -> Option<String>,
) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "the two jobs wrote different curves"
    );
    for (name, x) in a {
        let y = &b[name];
        assert_eq!(x.values.len(), y.values.len(), "{name}: lengths differ");
        for step in 0..x.values.len() {
            let (xs, ys) = (
                (x.written[step].as_str(), x.values[step]),
                (y.written[step].as_str(), y.values[step]),
            );
            if let Some(why) = differs(xs, ys) {
                panic!("{name} step {step}: {why}");
            }
        }
    }
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
    let report = json(&job_dir.join(layout::EXPORT_REPORT));
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
    let student = Student::load(&job_dir.join(layout::EXPORT_DIR), Device::Cpu, Kind::Float).unwrap();
    let (_vs, teacher) = weights::load(&dir.path().join("models/tiny-teacher"), Device::Cpu, Kind::Float).unwrap();
    let spec = JobSpec::parse(&yaml).unwrap();
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
    let selected: Vec<u64> = view
        .job
        .as_ref()
        .unwrap()
        .selected_layout
        .iter()
        .map(|b| u64::from(b.rate))
        .collect();
    assert_eq!(rates, selected, "the export has the selected layout");

    let evaluate = json(&job_dir.join(layout::EVALUATE_REPORT));
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
    let (job_two, view_two) = run_job(&cluster, &two).await;
    assert_succeeded(&view_two, &cluster);
    let (job_one, view_one) = run_job(&cluster, &one).await;
    assert_succeeded(&view_one, &cluster);

    let spec = JobSpec::parse(&one).unwrap();
    let (a, b) = (
        loss_curves(&cluster.job_dir(&job_one), &view_one, &spec),
        loss_curves(&cluster.job_dir(&job_two), &view_two, &spec),
    );
    compare_curves(&a, &b, |(_, x), (_, y)| {
        let tol = 1e-4 * x.abs().max(1.0);
        ((x - y).abs() > tol).then(|| format!("one worker {x}, two workers {y}"))
    });
    surgery_worker::runtime::init();
    let load = |job: &str| {
        let weights = layout::in_dir(layout::EXPORT_DIR, weights::WEIGHTS_FILE);
        weights::read_safetensors(&cluster.job_dir(job).join(weights)).unwrap()
    };
    let (wa, wb) = (load(&job_one), load(&job_two));
    assert_eq!(
        wa.keys().collect::<Vec<_>>(),
        wb.keys().collect::<Vec<_>>(),
        "the exports hold different tensors"
    );
    for (name, x) in &wa {
        let y = &wb[name];
        let diff = (x - y).abs().max().double_value(&[]);
        let scale = x.abs().max().double_value(&[]).max(1e-6);
        assert!(diff / scale <= 1e-4, "{name}: relative difference {}", diff / scale);
    }
}

/// The highest complete checkpoint step of the checkpoint folder `dir` (job-relative) of
/// the job at `job_dir`: a step folder, named as `layout::checkpoint_dir` names it, with
/// its manifest.
fn newest_checkpoint(job_dir: &Path, dir: &str) -> Option<u64> {
    std::fs::read_dir(job_dir.join(dir))
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step: u64 = name.strip_prefix("step-")?.parse().ok()?;
            let folder = layout::checkpoint_dir(dir, step);
            (folder.ends_with(&format!("/{name}")) && job_dir.join(&folder).join(MANIFEST_FILE).exists())
                .then_some(step)
        })
        .max()
}

async fn task_view(
    jobs: &mut surgery_proto::v1::job_service_client::JobServiceClient<tonic::transport::Channel>,
    job: &str,
    task: &str,
) -> Option<pb::Task> {
    get_job(jobs, job).await.ok()?.tasks.into_iter().find(|t| t.id == task)
}

/// Every log line of a task: (`unix_ms worker`, message).
async fn task_logs(
    jobs: &mut surgery_proto::v1::job_service_client::JobServiceClient<tonic::transport::Channel>,
    job: &str,
    task: &str,
) -> Vec<(String, String)> {
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
    let deadline = Deadline::patient(format!("the end of {task}'s logs"));
    let mut lines = Vec::new();
    while let Some(line) = deadline
        .within(stream.message(), || format!("{} lines so far", lines.len()))
        .await
        .unwrap()
        .unwrap()
    {
        lines.push((format!("{} {}", line.unix_ms, line.worker_id), line.message));
    }
    lines
}

/// The steps of a task's "resumed from the checkpoint at step N" log lines, in order,
/// and all its lines for a failure message.
async fn resumed_at(
    jobs: &mut surgery_proto::v1::job_service_client::JobServiceClient<tonic::transport::Channel>,
    job: &str,
    task: &str,
) -> (Vec<u64>, String) {
    let lines = task_logs(jobs, job, task).await;
    let steps = lines
        .iter()
        .filter_map(|(_, m)| m.strip_prefix("resumed from the checkpoint at step "))
        .map(|step| step.parse().unwrap())
        .collect();
    let text = lines
        .iter()
        .map(|(who, m)| format!("{who}: {m}"))
        .collect::<Vec<_>>()
        .join("\n");
    (steps, text)
}

/// What the storm test below needs of serde_json, in a millisecond: losses read back from
/// a checkpoint's JSON meta (bytes, then a `Value`, then the curve) are the values that
/// were written, bit for bit, so re-serialising them writes the same text. Without
/// serde_json's `float_roundtrip` feature about one f32 loss in eight comes back one ulp
/// off; these are some that do.
#[test]
fn losses_read_back_from_json_bit_for_bit() {
    // f32 losses widened to f64 (as the stages record them), then one plain f64.
    let losses = [
        0.098_359_964_787_960_05,
        1.924_513_697_624_206_5,
        0.115_337_580_442_428_59,
        0.401_406_049_728_393_55,
        0.415_037_244_558_334_35,
        1.409_571_486_404_892_3,
    ];
    for loss in &losses[..5] {
        assert_eq!(f64::from(*loss as f32), *loss, "{loss} is an f32 value");
    }
    let written = serde_json::to_vec(&serde_json::json!({ "loss_curve": losses })).unwrap();
    let meta: serde_json::Value = serde_json::from_slice(&written).unwrap();
    let read: Vec<f64> = serde_json::from_value(meta["loss_curve"].clone()).unwrap();
    for (wrote, got) in losses.iter().zip(&read) {
        assert_eq!(
            wrote.to_bits(),
            got.to_bits(),
            "wrote {wrote}, read back {got}: is serde_json's float_roundtrip feature on?"
        );
    }
    assert_eq!(read.len(), losses.len());
    assert_eq!(
        serde_json::to_vec(&serde_json::json!({ "loss_curve": read })).unwrap(),
        written
    );
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
    let (calm, calm_view) = run_job(&cluster, &undisturbed_yaml).await;
    assert_succeeded(&calm_view, &cluster);

    let yaml = tiny_job(worker_bin(), dir.path(), "storm", &bigger).unwrap();
    let mut jobs = cluster.coordinator.jobs().await.unwrap();
    let job = submit(&mut jobs, "storm", &yaml).await.unwrap().job.unwrap().id;
    let job_dir = cluster.job_dir(&job);

    // 1. SIGKILL the worker of a distill task once it has a checkpoint.
    let deadline = Deadline::patient("a running distill task with a complete checkpoint");
    let (task, holder, checkpoint) = loop {
        let view = get_job(&mut jobs, &job).await.unwrap();
        let running = view
            .tasks
            .iter()
            .find(|t| t.stage() == pb::Stage::Distill && t.state() == pb::TaskState::Running);
        if let Some(t) = running {
            let (block, rate) = match t.params.as_ref().and_then(|p| p.kind.as_ref()) {
                Some(pb::task_params::Kind::Distill(d)) => (d.block, Rate::from_code(d.rate)),
                _ => unreachable!(),
            };
            let dir = layout::distill_dir(block, rate);
            if let (Some(step), Some(holder)) = (newest_checkpoint(&job_dir, &dir), t.holders.first()) {
                break (t.id.clone(), holder.worker_id.clone(), step);
            }
        }
        deadline.check_job(&view).unwrap();
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
    let deadline = Deadline::patient("the fine-tuning running with a complete checkpoint");
    let corrupted = loop {
        let view = get_job(&mut jobs, &job).await.unwrap();
        let running = view
            .tasks
            .iter()
            .find(|t| t.id == "finetune" && t.state() == pb::TaskState::Running);
        if let Some(t) = running
            && let Some(step) = newest_checkpoint(&job_dir, layout::FINETUNE_DIR)
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
        deadline.check_job(&view).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let checkpoint_dir = layout::checkpoint_dir(layout::FINETUNE_DIR, corrupted);
    let state = job_dir.join(layout::in_dir(&checkpoint_dir, FINETUNE_STATE_FILE));
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

    // The disturbed run's every loss curve equals the undisturbed one, byte for byte as
    // written (a resumed run re-serialises the curve it read from its checkpoint) and bit
    // for bit as read.
    let spec = JobSpec::parse(&yaml).unwrap();
    let (calm_curves, storm_curves) = (
        loss_curves(&cluster.job_dir(&calm), &calm_view, &spec),
        loss_curves(&job_dir, &view, &spec),
    );
    compare_curves(&calm_curves, &storm_curves, |(calm_text, x), (storm_text, y)| {
        (calm_text != storm_text || x.to_bits() != y.to_bits())
            .then(|| format!("the undisturbed run wrote {calm_text} ({x:e}), the disturbed one {storm_text} ({y:e})"))
    });
    assert_eq!(
        read(&cluster.job_dir(&calm).join(layout::FINETUNE_LOSS_CURVE)),
        read(&job_dir.join(layout::FINETUNE_LOSS_CURVE)),
        "the fine-tuning loss curves differ as files"
    );

    // The killed distill task resumed from a checkpoint at least as new as the one that
    // was complete when it was killed: at most one interval was recomputed.
    let (resumed, logs) = resumed_at(&mut jobs, &job, &task).await;
    assert!(
        !resumed.is_empty(),
        "{task} never resumed from a checkpoint:\n{}",
        cluster.logs()
    );
    assert!(
        resumed[0] >= checkpoint,
        "{task} resumed at {} but step {checkpoint} was complete:\n{logs}",
        resumed[0]
    );
    // The fine-tuning did not load the corrupted checkpoint.
    let (resumed, logs) = resumed_at(&mut jobs, &job, "finetune").await;
    assert!(
        resumed.iter().all(|s| *s != corrupted),
        "loaded the corrupted checkpoint at step {corrupted} (resumed at {resumed:?}):\n{logs}\n{}",
        cluster.logs()
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
    let deadline = Deadline::patient("a distill task running at step 20 or later");
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
        deadline.check_job(&view).unwrap();
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
    let (resumed, logs) = resumed_at(&mut jobs, &job, &task).await;
    assert!(
        resumed.first().is_some_and(|s| *s >= 20),
        "resumed at {resumed:?}:\n{logs}\n{}",
        cluster.logs()
    );
}

/// Issue "eight GPUs", item 2, on the CPU ring: a fine-tuning gang of 8 worker processes
/// loses one member to SIGKILL, and then its replacement's collective hangs (a test hook:
/// it stops inside the all-reduce while it keeps heartbeating). Each time the whole gang
/// restarts from the newest checkpoint (the hang ended by the peers' collective watchdog,
/// not by a lease), and the resumed fine-tuning loss curve equals an undisturbed gang's,
/// bit for bit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gang_of_eight_restarts_whole_after_a_kill_and_a_hang() {
    let eight = [
        ("  finetune_workers: 2", "  finetune_workers: 8"),
        ("    global_batch: 4", "    global_batch: 8"),
        ("    steps: 20\n", "    steps: 40\n"),
        ("every_steps: 10", "every_steps: 5"),
        ("  max_retries: 3", "  max_retries: 20"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 8);
    let calm_yaml = tiny_job(worker_bin(), dir.path(), "calm8", &eight).unwrap();
    let (calm, calm_view) = run_job(&cluster, &calm_yaml).await;
    assert_succeeded(&calm_view, &cluster);
    let finetune = calm_view.tasks.iter().find(|t| t.id == "finetune").unwrap();
    assert_eq!(finetune.result_metrics["workers"], 8.0, "the gang had eight members");

    let yaml = tiny_job(worker_bin(), dir.path(), "storm8", &eight).unwrap();
    let mut jobs = cluster.coordinator.jobs().await.unwrap();
    let job = submit(&mut jobs, "storm8", &yaml).await.unwrap().job.unwrap().id;
    let job_dir = cluster.job_dir(&job);

    // 1. SIGKILL rank 3 once the gang has a checkpoint.
    let deadline = Deadline::patient("the gang of eight fine-tuning with a checkpoint");
    let member = loop {
        let view = get_job(&mut jobs, &job).await.unwrap();
        if let Some(t) = view
            .tasks
            .iter()
            .find(|t| t.id == "finetune" && t.state() == pb::TaskState::Running)
            && newest_checkpoint(&job_dir, layout::FINETUNE_DIR).is_some()
            && t.holders.len() == 8
        {
            break t.holders[3].worker_id.clone();
        }
        deadline.check_job(&view).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let victim = cluster
        .workers
        .iter_mut()
        .find(|w| member.starts_with(&format!("{}-", w.name)))
        .unwrap();
    victim.kill();

    // 2. The replacement pod hangs, once, inside the all-reduce of step 30 while its agent
    //    keeps heartbeating (a test hook): only the peers' collective watchdog can end that
    //    attempt, and the gang restarts whole again.
    cluster.workers.push(
        WorkerProcess::start_with_env(
            worker_bin(),
            &cluster.coordinator,
            "w8",
            dir.path(),
            &[("SURGERY_FAULT_HANG_COLLECTIVE", "30")],
        )
        .unwrap(),
    );

    let view = wait_for_job(&mut jobs, &job, LIMIT).await.unwrap();
    assert_succeeded(&view, &cluster);
    let finetune = view.tasks.iter().find(|t| t.id == "finetune").unwrap();
    assert!(
        finetune.attempt >= 3,
        "two restarts of the gang: {}",
        describe_job(&view)
    );
    // The hang was ended by the peers' watchdog, which names the collective.
    assert!(
        cluster.logs().contains("collective timed out"),
        "no member reported the stalled collective:\n{}",
        cluster.logs()
    );
    assert_eq!(
        read(&cluster.job_dir(&calm).join(layout::FINETUNE_LOSS_CURVE)),
        read(&job_dir.join(layout::FINETUNE_LOSS_CURVE)),
        "the resumed fine-tuning loss curve differs from the undisturbed one"
    );
}
