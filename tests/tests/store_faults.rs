//! Faults injected into object storage (`SURGERY_STORE_FAULTS`, store/src/faults.rs): the
//! tiny recipe runs once on a clean store and once with workers whose every storage call
//! may be slowed or fail and whose writes may be torn (half an object left behind) at
//! random points of capture, distillation, fine-tuning and export. The faulty job must
//! finish, must really have been hit (tasks retried), and must export a student
//! bit-identical to the clean one: nothing torn is ever loaded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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

struct Run {
    export: PathBuf,
    view: pb::GetJobResponse,
    worker_logs: String,
}

/// The tiny recipe on a fresh coordinator and two workers with `env`; retries are plenty,
/// since faults are frequent on purpose.
async fn run(dir: &Path, name: &str, env: &[(&str, &str)]) -> Run {
    let coordinator = Coordinator::start(coordinator_bin(), &dir.join(name), FAST).unwrap();
    let workers: Vec<WorkerProcess> = (0..2)
        .map(|i| WorkerProcess::start_with_env(worker_bin(), &coordinator, &format!("{name}-w{i}"), dir, env).unwrap())
        .collect();
    let yaml = tiny_job(worker_bin(), dir, name, &[("  max_retries: 3", "  max_retries: 100")]).unwrap();
    let mut jobs = coordinator.jobs().await.unwrap();
    let job_id = submit(&mut jobs, name, &yaml).await.unwrap().job.unwrap().id;
    let view = wait_for_job(&mut jobs, &job_id, Duration::from_secs(1200))
        .await
        .unwrap();
    let worker_logs: String = workers.iter().map(|w| w.log_text()).collect::<Vec<_>>().join("\n");
    assert_eq!(
        view.job.as_ref().unwrap().state(),
        pb::JobState::Succeeded,
        "{name}: {}\n{worker_logs}",
        describe_job(&view)
    );
    Run {
        export: coordinator
            .object_root()
            .join(layout::job_root(&job_id))
            .join(layout::EXPORT_DIR),
        view,
        worker_logs,
    }
}

/// Every file of the exported student but the report (which holds measured timings).
fn student_files(export: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(export).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_file() && name != "report.json" {
            files.insert(name, std::fs::read(&path).unwrap());
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faulty_store_changes_nothing_in_the_student() {
    let dir = tempfile::tempdir().unwrap();
    let clean = run(dir.path(), "clean", &[]).await;
    let faulty = run(
        dir.path(),
        "faulty",
        &[("SURGERY_STORE_FAULTS", "seed=11,errors=0.05,torn=0.1,latency=2ms")],
    )
    .await;

    // The faults happened: tasks failed on them and were retried.
    let retried: Vec<&str> = faulty
        .view
        .tasks
        .iter()
        .filter(|t| t.attempt > 1)
        .map(|t| t.id.as_str())
        .collect();
    assert!(!retried.is_empty(), "no task was hit:\n{}", faulty.worker_logs);
    assert!(faulty.worker_logs.contains("injected fault"), "{}", faulty.worker_logs);
    assert!(clean.view.tasks.iter().all(|t| t.attempt == 1));

    let (want, got) = (student_files(&clean.export), student_files(&faulty.export));
    assert!(
        want.keys().any(|name| name.ends_with(".safetensors")),
        "{:?}",
        want.keys()
    );
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>(),
        "the same files"
    );
    for (name, bytes) in &want {
        assert!(
            got[name] == *bytes,
            "{name} differs after faults (retried: {retried:?})"
        );
    }
}
