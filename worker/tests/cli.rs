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

fn golden_vae() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden_vae/tiny")
}

/// 10 log10(255^2 / mse) of two equal-length byte strings.
fn psnr_u8(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mse = a
        .iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    10.0 * (255f64.powi(2) / mse.max(1e-12)).log10()
}

#[test]
fn decode_writes_what_the_vae_makes_of_the_latents() {
    use surgery_worker::vae::{WanVaeDecoder, to_u8_frames};
    use surgery_worker::video::read_mp4_frames;
    surgery_worker::runtime::init();
    let dir = tempfile::tempdir().unwrap();
    tch::manual_seed(3);
    let latents = Tensor::randn([2, 4, 3, 4, 6], (Kind::Float, tch::Device::Cpu));
    let file = dir.path().join("latents.safetensors");
    weights::write_safetensors(&file, [("latents", &latents)], None).unwrap();
    let out = dir.path().join("clip.mp4");
    let run = worker(&[
        "decode",
        "--latents",
        path(&file),
        "--output",
        path(&out),
        "--vae",
        path(&golden_vae()),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    // Two latents, two numbered files, each what the VAE decodes (through H.264).
    let vae = WanVaeDecoder::load(&golden_vae(), tch::Device::Cpu, Kind::Float).unwrap();
    let frames = |i: i64| {
        let want = to_u8_frames(&vae.decode(&latents.narrow(0, i, 1)).get(0)).contiguous();
        Vec::<u8>::try_from(&want.flatten(0, -1)).unwrap()
    };
    let want = [frames(0), frames(1)];
    for i in 0..2 {
        let name = dir.path().join(format!("clip-00{i}.mp4"));
        let video = read_mp4_frames(&std::fs::read(&name).unwrap()).unwrap();
        assert_eq!((video.frames.len(), video.height, video.width), (9, 32, 48));
        let got: Vec<u8> = video.frames.concat();
        // Random latents decode to noise-like frames, H.264's hardest case; the match
        // must still stand out against the other clip.
        let (db, other) = (psnr_u8(&got, &want[i]), psnr_u8(&got, &want[1 - i]));
        assert!(
            db > 20.0 && db > other + 3.0,
            "clip {i}: {db:.1} dB, {other:.1} dB against the other clip"
        );
    }
    let gif = dir.path().join("one.gif");
    weights::write_safetensors(&file, [("latents", &latents.narrow(0, 0, 1))], None).unwrap();
    let run = worker(&[
        "decode",
        "--latents",
        path(&file),
        "--output",
        path(&gif),
        "--vae",
        path(&golden_vae()),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(&std::fs::read(&gif).unwrap()[..6], b"GIF89a");
}

#[test]
fn sample_decode_and_decode_explain_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let latents = dir.path().join("l.safetensors");
    weights::write_safetensors(
        &latents,
        [(
            "latents",
            &Tensor::zeros([1, 4, 3, 4, 6], (Kind::Float, tch::Device::Cpu)),
        )],
        None,
    )
    .unwrap();
    let decode = |extra: &[&str]| {
        let mut args = vec!["decode", "--latents", path(&latents)];
        args.extend_from_slice(extra);
        worker(&args)
    };
    let out = dir.path().join("x.mp4");
    let run = decode(&["--output", path(&out)]);
    assert!(!run.status.success());
    assert!(
        stderr(&run).contains("say how to decode: --vae DIR"),
        "{}",
        stderr(&run)
    );
    let (avi, vae) = (dir.path().join("x.avi"), golden_vae());
    let run = decode(&["--output", path(&avi), "--vae", path(&vae)]);
    assert!(
        stderr(&run).contains("the video's name must end in .mp4 or .gif"),
        "{}",
        stderr(&run)
    );
    let tiny_a = golden("tiny_a");
    let run = decode(&["--output", path(&out), "--model", path(&tiny_a)]);
    assert!(
        stderr(&run).contains("makes Wan VAE latents: pass the VAE's folder"),
        "{}",
        stderr(&run)
    );
    let run = decode(&["--output", path(&out), "--vae", path(dir.path())]);
    assert!(stderr(&run).contains("loading the VAE at"), "{}", stderr(&run));
    assert!(!out.exists(), "no video from a failed run");

    // sample --decode checks the VAE before sampling, and then writes the video too.
    let prompts = dir.path().join("p.safetensors");
    let embeds = Tensor::randn([1, 8, 16], (Kind::Float, tch::Device::Cpu));
    weights::write_safetensors(&prompts, [("prompt_embeds", &embeds)], None).unwrap();
    let model = golden("tiny_a");
    let sample = |extra: &[&str]| {
        let mut args = vec![
            "sample",
            "--model",
            path(&model),
            "--prompts",
            path(&prompts),
            "--output",
            path(&latents),
            "--frames",
            "9",
            "--height",
            "32",
            "--width",
            "48",
            "--steps",
            "2",
            "--guidance",
            "1",
        ];
        args.extend_from_slice(extra);
        worker(&args)
    };
    let run = sample(&["--decode", path(&out)]);
    assert!(stderr(&run).contains("pass the VAE's folder"), "{}", stderr(&run));
    let run = sample(&["--decode", path(&out), "--vae", path(&vae)]);
    assert!(run.status.success(), "{}", stderr(&run));
    let video = surgery_worker::video::read_mp4_frames(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!((video.frames.len(), video.height, video.width), (9, 32, 48));
}
