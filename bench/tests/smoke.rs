//! Every phase of the GPU benchmarks runs with `--smoke` (on the CPU at toy sizes), so a
//! broken benchmark is caught here rather than on a lent GPU.

use std::process::{Command, Output};

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The model benchmark's phases.
#[test]
fn model_bench_phases_run_in_smoke_mode() {
    for phase in [
        "attention",
        "model-forward",
        "teacher-forward",
        "teacher-train",
        "finetune-step",
    ] {
        let run = Command::new(env!("CARGO_BIN_EXE_model-bench"))
            .args([phase, "--smoke"])
            .output()
            .unwrap();
        assert!(run.status.success(), "{phase}: {}", stderr(&run));
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(stdout.lines().count() > 0, "{phase} printed nothing");
        for line in stdout.lines() {
            let value: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert!(value["phase"].is_string(), "{line}");
            if let Some(ok) = value.get("ok") {
                assert_eq!(ok, true, "{line}");
            }
        }
    }
}

/// The runtime benchmark's phases run too (CPU, toy sizes).
#[test]
fn runtime_bench_phases_run_in_smoke_mode() {
    for phase in [
        &["capture-step"][..],
        &["distill"],
        &["stall"],
        &["finetune", "--world", "1"],
    ] {
        let run = Command::new(env!("CARGO_BIN_EXE_runtime-bench"))
            .args(phase)
            .arg("--smoke")
            .output()
            .unwrap();
        assert!(run.status.success(), "{phase:?}: {}", stderr(&run));
        let stdout = String::from_utf8_lossy(&run.stdout);
        let value: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        assert!(value["phase"].is_string(), "{stdout}");
    }
}
