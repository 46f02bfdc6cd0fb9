//! The recipe's effect on a teacher that has learned something: the quality testbed's CPU
//! teacher is trained from scratch, then two jobs of configs/testbed-cpu.yaml run through a
//! real coordinator and workers with both blocks at R4 and no fine-tuning: one keeps phi at
//! its initialisation (distill steps 0), one distils it. The distilled student must be
//! closer to the teacher on what the testbed measures: held-out distillation error, PSNR
//! against the teacher from the same noise, and most of the ground-truth metrics (motion
//! clearly). The linear branch's share of each block's output is checked for what it
//! shows: phi at its initialisation weighs the linear tokens like diffuse attention, and
//! distillation moves that weight.

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use surgery_core::layout;
use surgery_core::results::{LINEAR_SHARE, TEACHER_LINEAR_SHARE, linear_share_metric};
use surgery_e2e::*;
use surgery_proto::v1 as pb;

fn coordinator_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_e2e-coordinator"))
}

fn worker_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_e2e-worker"))
}

/// A stuck job, not a slow one.
const LIMIT: Duration = Duration::from_secs(1200);

fn json(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The CPU preset's teacher, trained into `dir` by the worker binary (about 3.5 minutes on
/// two cores).
fn train_teacher(dir: &Path) {
    let out = Command::new(worker_bin())
        .args(["testbed", "train", "--size", "cpu", "--out"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "testbed train: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The testbed CPU job with both blocks at R4, `distill_steps` of distillation, no
/// fine-tuning.
fn job_spec(name: &str, testbed: &Path, distill_steps: u32) -> String {
    let teacher = format!("file://{}/teacher", testbed.display());
    let prompts = format!("file://{}/prompts.safetensors", testbed.display());
    let distill = format!("  distill:\n    steps: {distill_steps}\n");
    testbed_cpu_spec(
        name,
        &[
            ("file://.demo/testbed-cpu/teacher", &teacher),
            ("file://.demo/testbed-cpu/prompts.safetensors", &prompts),
            ("  rates: [2, 4, linear]", "  rates: [4]"),
            (
                "    knapsack:\n      budget: 0.6\n      cost: flops            # CPU timings are too noisy to cost blocks by\n",
                "    homogeneous:\n      rate: 4\n      blocks: 2\n",
            ),
            ("  distill:\n    steps: 200\n", &distill),
            ("  finetune:\n    steps: 100\n", "  finetune:\n    steps: 0\n"),
        ],
    )
}

/// What one job's reports say.
struct Outcome {
    heldout_error: Vec<f64>,
    psnr_db: f64,
    /// Per block: (student share, teacher mass, mean per-query gap).
    shares: Vec<(f64, f64, f64)>,
    student: serde_json::Value,
    teacher: serde_json::Value,
}

fn outcome(job_dir: &Path, view: &pb::GetJobResponse) -> Outcome {
    let export = json(&job_dir.join(layout::EXPORT_REPORT));
    let heldout_error = export["distill"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["metrics"]["heldout_error"].as_f64().unwrap())
        .collect();
    let evaluate = json(&job_dir.join(layout::EVALUATE_REPORT));
    let testbed = &evaluate["testbed"];
    let shares: Vec<(f64, f64, f64)> = evaluate["linear_share"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["student"].as_f64().unwrap(),
                b["teacher"].as_f64().unwrap(),
                b["gap"].as_f64().unwrap(),
            )
        })
        .collect();
    // The task's metrics carry the same shares under their per-block names.
    let metrics = &view.tasks.iter().find(|t| t.id == "evaluate").unwrap().result_metrics;
    for (block, (student, teacher, _)) in shares.iter().enumerate() {
        assert_eq!(metrics[&linear_share_metric(LINEAR_SHARE, block)], *student);
        assert_eq!(metrics[&linear_share_metric(TEACHER_LINEAR_SHARE, block)], *teacher);
    }
    Outcome {
        heldout_error,
        psnr_db: testbed["student_teacher_psnr_db"].as_f64().unwrap(),
        shares,
        student: testbed["student"]["mean"].clone(),
        teacher: testbed["teacher"]["mean"].clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distilled_phi_beats_untrained_phi_on_the_testbed_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let testbed = dir.path().join("testbed-cpu");
    train_teacher(&testbed);

    let coordinator = Coordinator::start(coordinator_bin(), &dir.path().join("coordinator"), FAST).unwrap();
    let workers: Vec<WorkerProcess> = (0..2)
        .map(|i| WorkerProcess::start(worker_bin(), &coordinator, &format!("w{i}"), dir.path()).unwrap())
        .collect();
    let logs = || cluster_logs(&coordinator, &workers);
    let mut jobs = coordinator.jobs().await.unwrap();
    let mut ids = Vec::new();
    for (name, steps) in [("untrained-phi", 0), ("distilled-phi", 200)] {
        let yaml = job_spec(name, &testbed, steps);
        let id = submit(&mut jobs, name, &yaml).await.unwrap().job.unwrap().id;
        ids.push(id);
    }
    let mut outcomes = Vec::new();
    for id in &ids {
        let view = wait_for_job(&mut jobs, id, LIMIT).await.unwrap();
        let job = view.job.as_ref().unwrap();
        assert_eq!(
            job.state(),
            pb::JobState::Succeeded,
            "job {id} failed: {}\n{}",
            job.failure,
            logs()
        );
        let job_dir = coordinator.object_root().join(layout::job_root(id));
        outcomes.push(outcome(&job_dir, &view));
    }
    let (untrained, distilled) = (&outcomes[0], &outcomes[1]);
    let metric = |o: &serde_json::Value, name: &str| o[name].as_f64().unwrap();
    println!(
        "held-out error {:?} -> {:?}\nPSNR vs teacher {:.2} -> {:.2} dB\nlinear share (student, teacher, gap) {:?} -> {:?}",
        untrained.heldout_error,
        distilled.heldout_error,
        untrained.psnr_db,
        distilled.psnr_db,
        untrained.shares,
        distilled.shares
    );
    for name in [
        "colour_correctness",
        "trajectory_error_px",
        "frame_difference",
        "area_cv",
    ] {
        println!(
            "{name}: untrained {:.3} distilled {:.3} teacher {:.3}",
            metric(&untrained.student, name),
            metric(&distilled.student, name),
            metric(&distilled.teacher, name)
        );
    }

    // Both jobs sampled the same teacher from the same noise.
    for (name, value) in untrained.teacher.as_object().unwrap() {
        let (a, b) = (value.as_f64().unwrap(), metric(&distilled.teacher, name));
        assert!((a - b).abs() <= 1e-6 * a.abs().max(1.0), "teacher {name}: {a} vs {b}");
    }
    for (block, (before, after)) in untrained.heldout_error.iter().zip(&distilled.heldout_error).enumerate() {
        assert!(
            *after < 0.7 * before,
            "block {block}: distilled held-out error {after} is not well below untrained {before}"
        );
    }
    assert!(
        distilled.psnr_db > untrained.psnr_db + 2.0,
        "PSNR vs teacher: distilled {:.2} dB, untrained {:.2} dB",
        distilled.psnr_db,
        untrained.psnr_db
    );
    assert_eq!(distilled.shares.len(), 2, "both blocks are hybrid");
    for (block, (before, after)) in untrained.shares.iter().zip(&distilled.shares).enumerate() {
        // The first block sees the same latents in both students, so the teacher's mass on
        // its linear tokens is the same (later blocks see their student's earlier blocks).
        if block == 0 {
            assert!(
                (before.1 - after.1).abs() < 1e-9,
                "block {block}: {before:?} vs {after:?}"
            );
        }
        // phi at its initialisation imitates diffuse attention: the linear tokens' weight is
        // near 1 - 1/R = 0.75 of the output.
        assert!(
            (before.0 - 0.75).abs() < 0.05,
            "block {block}: untrained share {before:?}"
        );
        // Distillation moves the linear branch's weight (on this teacher it lowers it below
        // the teacher's mass: docs/QUALITY.md).
        assert!(
            (after.0 - before.0).abs() > 0.05 && after.0 > 0.0 && after.0 < 1.0,
            "block {block}: distilled share {after:?}, untrained {before:?}"
        );
    }
    // The ground truth: the distilled student is nearer the teacher than the untrained one
    // on most of what the testbed measures, and clearly on motion.
    let off = |o: &Outcome, name: &str| (metric(&o.student, name) - metric(&o.teacher, name)).abs();
    let names = [
        "colour_correctness",
        "trajectory_error_px",
        "area_cv",
        "frame_difference",
    ];
    let nearer: Vec<&str> = names
        .into_iter()
        .filter(|name| off(distilled, name) < off(untrained, name))
        .collect();
    assert!(
        nearer.len() >= 3,
        "the distilled student is nearer the teacher only on {nearer:?}"
    );
    assert!(
        off(distilled, "frame_difference") < 0.5 * off(untrained, "frame_difference"),
        "frame difference: distilled {} untrained {} teacher {}",
        metric(&distilled.student, "frame_difference"),
        metric(&untrained.student, "frame_difference"),
        metric(&distilled.teacher, "frame_difference")
    );
}
