//! `surgery-worker forward` and `sample`, the real binary on the committed tiny models.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use surgery_worker::model::weights;
use tch::{Kind, Tensor};

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name)
}

fn worker(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_surgery-worker"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[]) / b.abs().max().double_value(&[])
}

#[test]
fn forward_reproduces_diffusers_from_files() {
    surgery_worker::runtime::init();
    let io = weights::read_safetensors(&golden("tiny_a").join("io.safetensors")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("in.safetensors");
    weights::write_safetensors(
        &inputs,
        [
            ("hidden_states", &io["latents"]),
            ("timestep", &io["timestep"]),
            ("encoder_hidden_states", &io["encoder_hidden_states"]),
        ],
        None,
    )
    .unwrap();
    let out = dir.path().join("out.safetensors");
    let run = worker(&[
        "forward",
        "--model",
        path(&golden("tiny_a")),
        "--inputs",
        path(&inputs),
        "--output",
        path(&out),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let got = weights::read_safetensors(&out).unwrap();
    let err = rel_err(&got["output"], &io["output"]);
    assert!(err <= 1e-5, "relative error {err:e}");

    // bf16 runs too, and stays close to the fp32 reference.
    let run = worker(&[
        "forward",
        "--model",
        path(&golden("tiny_a")),
        "--inputs",
        path(&inputs),
        "--output",
        path(&out),
        "--dtype",
        "bf16",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let got = weights::read_safetensors(&out).unwrap();
    assert!(rel_err(&got["output"], &io["output"]) < 3e-2);
}

#[test]
fn sample_is_seeded_and_shaped() {
    surgery_worker::runtime::init();
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.safetensors");
    tch::manual_seed(1);
    let embeds = Tensor::randn([2, 8, 16], (Kind::Float, tch::Device::Cpu));
    let negative = Tensor::randn([1, 8, 16], (Kind::Float, tch::Device::Cpu));
    weights::write_safetensors(
        &prompts,
        [("prompt_embeds", &embeds), ("negative_embeds", &negative)],
        None,
    )
    .unwrap();
    let run_with = |seed: &str, out: &Path, scheduler: &str| {
        worker(&[
            "sample",
            "--model",
            path(&golden("tiny_a")),
            "--prompts",
            path(&prompts),
            "--output",
            path(out),
            "--frames",
            "9",
            "--height",
            "64",
            "--width",
            "96",
            "--steps",
            "4",
            "--seed",
            seed,
            "--scheduler",
            scheduler,
        ])
    };
    let (a, b, c) = (
        dir.path().join("a.st"),
        dir.path().join("b.st"),
        dir.path().join("c.st"),
    );
    for (seed, out) in [("7", &a), ("7", &b), ("8", &c)] {
        let run = run_with(seed, out, "unipc");
        assert!(run.status.success(), "{}", stderr(&run));
    }
    let read = |p: &Path| weights::read_safetensors(p).unwrap().remove("latents").unwrap();
    let (la, lb, lc) = (read(&a), read(&b), read(&c));
    assert_eq!(la.size(), vec![2, 4, 3, 8, 12]);
    assert!(la.equal(&lb), "same seed, same latents");
    assert!(!la.equal(&lc), "another seed, other latents");
    assert!(la.isfinite().all().int64_value(&[]) == 1);
    let run = run_with("7", &c, "euler");
    assert!(run.status.success(), "{}", stderr(&run));
}

#[test]
fn bad_inputs_are_explained() {
    surgery_worker::runtime::init();
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("in.safetensors");
    let x = Tensor::zeros([1, 4, 3, 8, 12], (Kind::Float, tch::Device::Cpu));
    weights::write_safetensors(&inputs, [("hidden_states", &x)], None).unwrap();
    let out = dir.path().join("out.safetensors");
    let model = golden("tiny_a");
    let run = worker(&[
        "forward",
        "--model",
        path(&model),
        "--inputs",
        path(&inputs),
        "--output",
        path(&out),
    ]);
    assert_eq!(run.status.code(), Some(1));
    assert!(
        stderr(&run).contains("has no `timestep` tensor (it has: hidden_states)"),
        "{}",
        stderr(&run)
    );

    let run = worker(&[
        "forward",
        "--model",
        path(&model),
        "--inputs",
        path(&inputs),
        "--output",
        path(&out),
        "--device",
        "gpu0",
    ]);
    assert!(
        stderr(&run).contains("--device `gpu0` is not cpu, cuda or cuda:N"),
        "{}",
        stderr(&run)
    );

    let run = worker(&[
        "forward",
        "--model",
        "/nonexistent",
        "--inputs",
        path(&inputs),
        "--output",
        path(&out),
    ]);
    assert_eq!(run.status.code(), Some(1));
    assert!(stderr(&run).contains("/nonexistent"), "{}", stderr(&run));

    let run = worker(&[
        "sample",
        "--model",
        path(&model),
        "--prompts",
        path(&inputs),
        "--output",
        path(&out),
        "--frames",
        "8",
        "--height",
        "64",
        "--width",
        "96",
    ]);
    assert!(stderr(&run).contains("--frames 8: must be 4k + 1"), "{}", stderr(&run));
    let run = worker(&["forward"]);
    assert_eq!(run.status.code(), Some(2), "usage error");
}

/// Each stdout line of a benchmark run as JSON, failing on a line that is not.
fn json_lines(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}")))
        .collect()
}

/// The GPU benchmark's every phase runs (on the CPU at toy sizes), so a broken benchmark
/// is caught here rather than on a lent GPU.
#[test]
fn model_bench_phases_run_in_smoke_mode() {
    // What each phase prints, one JSON line per measurement: `attention` one line for
    // softmax and one per rate (2, 4, 8, linear), then the fp32 and bf16 checks of the
    // fast path against the reference.
    let attention = [vec!["attention"; 5], vec!["attention-check"; 2]].concat();
    let phases: [(&str, Vec<&str>); 4] = [
        ("attention", attention),
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
        for value in &lines {
            if value["phase"] == "attention-check" {
                assert_eq!(value["ok"], true, "{phase}: {value}");
            }
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
