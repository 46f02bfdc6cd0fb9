//! The quality testbed's teacher end to end: trained from scratch on the CPU it beats an
//! untrained model of the same config on the ground truth; a run stopped or killed mid-way and
//! started again ends with the weights of an uninterrupted one; the shipped testbed job specs
//! match the presets; bad flags and inputs say what is wrong.
//!
//! Each test binary is its own process, so `tch::set_num_threads(1)` here touches nothing
//! else: one LibTorch thread per training keeps two concurrent trainings off each other's core.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use surgery_core::spec::{JobSpec, LatentCodec, SchedulerKind};
use surgery_worker::model::weights;
use surgery_worker::testbed::{
    Flow, Progress, SamplerSettings, TestbedFolder, TestbedSize, TrainOptions, TrainRecord, TrainSettings,
    sample_folder, train,
};
use tch::{Device, Kind, Tensor};

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

/// Trains `settings` into `out` on the CPU in fp32, stopping after `stop_after` steps if given.
fn train_cpu(settings: &TrainSettings, out: &Path, stop_after: Option<u64>) -> TrainRecord {
    tch::set_num_threads(1);
    let mut on_progress = |p: &Progress| match stop_after {
        Some(stop) if p.step >= stop => Flow::Stop,
        _ => Flow::Continue,
    };
    let options = TrainOptions {
        device: Device::Cpu,
        kind: Kind::Float,
        minutes: None,
        render_threads: 1,
        on_progress: &mut on_progress,
    };
    train(settings, out, options).unwrap()
}

fn teacher_weights(out: &Path) -> BTreeMap<String, Tensor> {
    weights::read_safetensors(&out.join("teacher/diffusion_pytorch_model.safetensors")).unwrap()
}

fn assert_same_weights(a: &Path, b: &Path) {
    let (a, b) = (teacher_weights(a), teacher_weights(b));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, tensor) in &a {
        assert!(tensor.equal(&b[name]), "{name} differs");
    }
}

/// A teacher small enough that a few steps take a fraction of a second.
fn micro() -> TrainSettings {
    let mut settings = TrainSettings::preset(TestbedSize::Cpu);
    settings.model.layers = 1;
    settings.model.heads = 2;
    settings.model.head_dim = 16;
    settings.model.ffn_dim = 32;
    settings.batch = 2;
    settings.steps = 8;
    settings.warmup_steps = 2;
    settings.checkpoint_every = 2;
    settings.prompts.teacher_train = 64;
    settings.norm_clips = 8;
    settings
}

#[test]
fn cpu_teacher_beats_an_untrained_model_on_the_ground_truth() {
    let out = tempfile::tempdir().unwrap();
    let settings = TrainSettings::preset(TestbedSize::Cpu);
    let record = train_cpu(&settings, out.path(), None);
    assert!(record.complete && record.step == settings.steps);
    let curve = &record.loss_curve;
    let first: f64 = curve[..25].iter().sum::<f64>() / 25.0;
    println!(
        "loss: first 25 steps {first:.4}, last {} steps {:.4}",
        settings.log_every, record.final_loss
    );
    assert!(
        record.final_loss < 0.8 * first,
        "the loss fell only from {first} to {}",
        record.final_loss
    );

    let sampler = SamplerSettings {
        steps: 25,
        shift: 2.0,
        guidance: 5.0,
        seed: 0,
        scheduler: SchedulerKind::Unipc,
    };
    let folder = TestbedFolder::new(out.path());
    let (report, _) = sample_folder(&folder, None, &sampler, Device::Cpu, Kind::Float).unwrap();
    let (teacher, untrained) = (report.teacher.mean, report.untrained.mean);
    println!(
        "teacher   {teacher:?}\nuntrained {untrained:?}\nspread {:?}",
        report.teacher_seed_spread
    );
    assert_eq!(report.prompts, 16);
    assert!(
        teacher.colour_correctness >= untrained.colour_correctness + 0.4,
        "colour correctness: teacher {} vs untrained {}",
        teacher.colour_correctness,
        untrained.colour_correctness
    );
    assert!(
        teacher.trajectory_error_px <= 0.8 * untrained.trajectory_error_px,
        "trajectory error: teacher {} px vs untrained {} px",
        teacher.trajectory_error_px,
        untrained.trajectory_error_px
    );
    assert!(
        teacher.presence >= untrained.presence + 0.5,
        "presence {} vs {}",
        teacher.presence,
        untrained.presence
    );
}

#[test]
fn a_stopped_run_continues_to_the_uninterrupted_weights() {
    let settings = micro();
    let whole = tempfile::tempdir().unwrap();
    let uninterrupted = train_cpu(&settings, whole.path(), None);
    assert_eq!(uninterrupted.loss_curve.len(), 8);

    // Stopped at step 5 (between checkpoints 4 and 6): it checkpoints step 5 and writes the
    // teacher as it is; the same call again continues from there.
    let parts = tempfile::tempdir().unwrap();
    let stopped = train_cpu(&settings, parts.path(), Some(5));
    assert_eq!((stopped.step, stopped.complete), (5, false));
    let resumed = train_cpu(&settings, parts.path(), None);
    assert!(resumed.complete);
    assert_eq!(resumed.loss_curve, uninterrupted.loss_curve);
    assert_eq!(resumed.calls.len(), 2);
    assert_same_weights(whole.path(), parts.path());

    // More steps continue the finished run; other settings are refused, naming them.
    let longer = TrainSettings {
        steps: 9,
        ..settings.clone()
    };
    assert_eq!(train_cpu(&longer, parts.path(), None).step, 9);
    let other = TrainSettings {
        lr: settings.lr * 2.0,
        batch: 3,
        ..settings
    };
    let mut on_progress = |_: &Progress| Flow::Continue;
    let options = TrainOptions {
        device: Device::Cpu,
        kind: Kind::Float,
        minutes: None,
        render_threads: 1,
        on_progress: &mut on_progress,
    };
    let error = train(&other, parts.path(), options).unwrap_err().to_string();
    assert!(
        error.contains("holds checkpoints of a run with other settings (they differ in: batch, lr)"),
        "{error}"
    );
}

/// `--size cpu` shrunk by flags to a few cheap steps.
fn cli_train(out: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_surgery-worker"));
    command.args([
        "testbed",
        "train",
        "--size",
        "cpu",
        "--out",
        path(out),
        "--steps",
        "12",
        "--batch",
        "2",
        "--checkpoint-every",
        "3",
        "--threads",
        "1",
    ]);
    command
}

#[test]
fn a_killed_command_rerun_ends_with_the_uninterrupted_weights() {
    let dir = tempfile::tempdir().unwrap();
    let (whole, killed) = (dir.path().join("whole"), dir.path().join("killed"));
    let run = cli_train(&whole).output().unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(text.contains("step 12/12  loss"), "{text}");
    assert!(text.contains("trained to step 12"), "{text}");

    // SIGKILL once the checkpoint of step 6 is complete, then the same command again.
    let mut child = cli_train(&killed).stdout(Stdio::null()).spawn().unwrap();
    let manifest: PathBuf = killed.join("checkpoints/step-0000000006/manifest.json");
    let started = Instant::now();
    while !manifest.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "it finished before it could be killed"
        );
        assert!(started.elapsed() < Duration::from_secs(300), "no checkpoint at step 6");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let rerun = cli_train(&killed).output().unwrap();
    assert!(rerun.status.success(), "{}", stderr(&rerun));
    let text = String::from_utf8_lossy(&rerun.stdout);
    assert!(text.contains("resumed from the checkpoint at step"), "{text}");
    assert_same_weights(&whole, &killed);
    let curve = |dir: &Path| -> TrainRecord {
        serde_json::from_str(&std::fs::read_to_string(dir.join("train.json")).unwrap()).unwrap()
    };
    assert_eq!(curve(&whole).loss_curve, curve(&killed).loss_curve);

    // The folder is a teacher a job and the sampler read.
    let (_vs, model) = weights::load(&whole.join("teacher"), Device::Cpu, Kind::Float).unwrap();
    assert_eq!(model.config().in_channels, 48);
    let prompts = weights::read_safetensors(&whole.join("prompts.safetensors")).unwrap();
    assert_eq!(prompts["prompt_embeds"].size(), vec![32, 24, 32]);
    assert_eq!(prompts["negative_embeds"].size(), vec![1, 24, 32]);
    assert_eq!(prompts["negative_embeds"].abs().sum(Kind::Float).double_value(&[]), 0.0);
    let output = dir.path().join("sample.json");
    let sample = worker(&[
        "testbed",
        "sample",
        "--teacher",
        path(&whole.join("teacher")),
        "--prompts",
        "2",
        "--steps",
        "2",
        "--output",
        path(&output),
    ]);
    assert!(sample.status.success(), "{}", stderr(&sample));
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&output).unwrap()).unwrap();
    assert_eq!(report["prompts"], 2);
    assert!(report["teacher"]["mean"]["trajectory_error_px"].is_number());
    let too_many = worker(&["testbed", "sample", "--teacher", path(&whole), "--prompts", "99"]);
    assert!(
        stderr(&too_many).contains("--prompts 99: the folder has 16 held-out prompts"),
        "{}",
        stderr(&too_many)
    );
}

#[test]
fn bad_flags_and_inputs_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let out = path(dir.path());
    let cases: [(&[&str], &str); 9] = [
        (
            &["testbed", "train", "--size", "tpu"],
            "invalid value 'tpu' for '--size <SIZE>'",
        ),
        (
            &["testbed", "train", "--size", "cpu", "--steps", "0", "--out", out],
            "--steps must be at least 1",
        ),
        (
            &["testbed", "train", "--size", "cpu", "--batch", "0", "--out", out],
            "--batch must be at least 1",
        ),
        (
            &["testbed", "train", "--size", "cpu", "--lr=-1", "--out", out],
            "--lr must be a positive number, got -1",
        ),
        (
            &["testbed", "train", "--size", "cpu", "--minutes", "0", "--out", out],
            "--minutes must be a positive number, got 0",
        ),
        (
            &["testbed", "train", "--size", "cpu", "--device", "tpu", "--out", out],
            "--device `tpu` is not cpu, cuda or cuda:N",
        ),
        (
            &["testbed", "sample", "--teacher", out],
            "is not a testbed teacher folder: expected teacher/testbed.json",
        ),
        (
            &["testbed", "sample", "--teacher", out, "--guidance", "0.5"],
            "--guidance must be at least 1 (1 turns guidance off), got 0.5",
        ),
        (&["testbed", "sample"], "--teacher <TEACHER>"),
    ];
    for (args, message) in cases {
        let run = worker(args);
        assert!(!run.status.success(), "{args:?} succeeded");
        assert!(stderr(&run).contains(message), "{args:?}: {}", stderr(&run));
    }
    // Nothing was written by the refused commands.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn the_testbed_job_specs_match_the_presets() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (file, size) in [
        ("testbed-cpu.yaml", TestbedSize::Cpu),
        ("testbed-gpu.yaml", TestbedSize::Gpu),
    ] {
        let text = std::fs::read_to_string(root.join("configs").join(file)).unwrap();
        let spec = JobSpec::parse(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        let settings = TrainSettings::preset(size);
        assert_eq!(spec.video.latent_codec, LatentCodec::SpaceToDepth, "{file}");
        let geometry = &settings.geometry;
        assert_eq!(
            (spec.video.frames, spec.video.height, spec.video.width),
            (geometry.frames as u32, geometry.height as u32, geometry.width as u32),
            "{file}"
        );
        let shape = settings.wan_config().shape_with_text_len(settings.text_len as u32);
        assert_eq!(spec.model_shape(), shape, "{file}");
        assert_eq!(spec.tokens(), settings.tokens() as u64, "{file}");
        assert_eq!(spec.data.train_prompts as usize, settings.prompts.job_train, "{file}");
        assert_eq!(spec.data.heldout_prompts as usize, settings.prompts.held_out, "{file}");
        let out = format!(".demo/testbed-{}", size.name());
        assert_eq!(spec.teacher.url, format!("file://{out}/teacher"), "{file}");
        assert_eq!(spec.data.prompts, format!("file://{out}/prompts.safetensors"), "{file}");
    }
}
