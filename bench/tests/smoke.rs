//! Every phase of the GPU benchmarks runs with `--smoke` (on the CPU at toy sizes), so a
//! broken benchmark is caught here rather than on a lent GPU. Each phase must print
//! exactly the JSON lines it is meant to.

use std::process::{Command, Output};

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Each stdout line of a benchmark run as JSON, failing on a line that is not.
fn json_lines(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}")))
        .collect()
}

/// The model benchmark's phases, each with the `phase` of every line it prints.
#[test]
fn model_bench_phases_run_in_smoke_mode() {
    // `attention`: softmax, then one line per rate (2, 4, 8, 16, 32, linear);
    // `attention-parts` says it was skipped on the CPU (no fused kernels there);
    // `model-forward`: the teacher and the all-R8 and all-R16 students.
    let phases: [(&str, Vec<&str>); 8] = [
        ("umt5-encode", vec!["umt5-encode"]),
        ("vae-decode", vec!["vae-decode"]),
        ("attention", vec!["attention"; 7]),
        ("attention-parts", vec!["attention-parts"]),
        ("model-forward", vec!["model-forward"; 3]),
        ("teacher-forward", vec!["teacher-forward"]),
        ("teacher-train", vec!["teacher-train"]),
        ("finetune-step", vec!["finetune-step"]),
    ];
    for (phase, expected) in phases {
        let run = Command::new(env!("CARGO_BIN_EXE_model-bench"))
            .args([phase, "--smoke"])
            .output()
            .unwrap();
        assert!(run.status.success(), "{phase}: {}", stderr(&run));
        let lines = json_lines(&run.stdout);
        let printed: Vec<&str> = lines.iter().map(|v| v["phase"].as_str().unwrap_or("")).collect();
        assert_eq!(printed, expected, "{phase}: the lines printed");
        if phase == "attention" {
            let rates: Vec<&str> = lines.iter().map(|v| v["rate"].as_str().unwrap_or("")).collect();
            assert_eq!(rates, ["softmax", "R2", "R4", "R8", "R16", "R32", "linear"]);
            assert!(
                lines.iter().all(|v| v["kernels"] == "eager"),
                "the CPU runs the eager path"
            );
        }
    }
}

/// The runtime benchmark's phases run too (CPU, toy sizes), each printing one JSON line.
#[test]
fn runtime_bench_phases_run_in_smoke_mode() {
    for (phase, args) in [
        ("capture-step", &[][..]),
        ("distill", &[]),
        ("stall", &[]),
        ("finetune", &["--world", "1"]),
    ] {
        let run = Command::new(env!("CARGO_BIN_EXE_runtime-bench"))
            .arg(phase)
            .args(args)
            .arg("--smoke")
            .output()
            .unwrap();
        assert!(run.status.success(), "{phase}: {}", stderr(&run));
        let lines = json_lines(&run.stdout);
        assert_eq!(lines.len(), 1, "{phase}: one line expected, got {lines:?}");
        assert_eq!(lines[0]["phase"], phase, "{phase}: {}", lines[0]);
    }
}
