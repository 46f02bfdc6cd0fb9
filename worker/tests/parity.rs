//! Parity of the Rust Wan transformer with diffusers' `WanTransformer3DModel`, and the
//! loader's behaviour on good and bad checkpoints.
//!
//! The goldens in tests/golden/<name>/ are tiny random-weight diffusers models saved with
//! `save_pretrained`, plus io.safetensors with inputs, diffusers' output and
//! intermediates; scripts/golden/make_golden.py writes them (Python is not needed here).
//! Each parity test checks the stages in order (RoPE, embeddings, block 0's attention
//! inputs, block 0, full output), so a failure points at the first stage that differs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use surgery_worker::attention::SelfAttention;
use surgery_worker::attention::feature_map::FeatureMapConfig;
use surgery_worker::attention::hybrid::{AnchorPattern, HybridAttention, HybridConfig, Normaliser, Rate};
use surgery_worker::model::weights::{self, INDEX_FILE, WEIGHTS_FILE, WeightsError};
use surgery_worker::model::{Embedded, WanConfig, WanTransformer};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// Target for fp32 parity: max|rust - diffusers| / max|diffusers|.
const FP32_REL: f64 = 1e-5;
/// Elementwise check alongside it: |a - b| <= FP32_ATOL + FP32_RTOL |b|.
const FP32_RTOL: f64 = 1e-5;
const FP32_ATOL: f64 = 1e-5;

fn golden_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name)
}

fn golden_io(name: &str) -> BTreeMap<String, Tensor> {
    weights::read_safetensors(&golden_dir(name).join("io.safetensors")).expect("golden io.safetensors reads")
}

fn load(dir: &Path, kind: Kind) -> (VarStore, WanTransformer) {
    weights::load(dir, Device::Cpu, kind).unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

/// max|a - b| / max|b|, in f64.
fn rel_err(actual: &Tensor, expected: &Tensor) -> f64 {
    assert_eq!(actual.size(), expected.size(), "shapes differ");
    let a = actual.to_kind(Kind::Double);
    let b = expected.to_kind(Kind::Double);
    (&a - &b).abs().max().double_value(&[]) / b.abs().max().double_value(&[])
}

/// Asserts fp32 parity of one stage and returns its relative error.
fn assert_parity(stage: &str, actual: &Tensor, expected: &Tensor) -> f64 {
    let rel = rel_err(actual, expected);
    let a = actual.to_kind(Kind::Double);
    let b = expected.to_kind(Kind::Double);
    let close = a.allclose(&b, FP32_RTOL, FP32_ATOL, false);
    assert!(
        rel <= FP32_REL && close,
        "{stage}: max relative error {rel:.3e} (allclose {close})"
    );
    rel
}

/// Forward through the staged API, keeping what the goldens record.
struct Staged {
    embedded: Embedded,
    block0_out: Tensor,
    output: Tensor,
}

fn run_staged(model: &WanTransformer, io: &BTreeMap<String, Tensor>) -> Staged {
    let embedded = model.embed(&io["latents"], &io["timestep"], &io["encoder_hidden_states"]);
    let block0_out = model.block_forward(0, &embedded.hidden, &embedded);
    let hidden = (1..model.num_blocks()).fold(block0_out.shallow_clone(), |h, i| model.block_forward(i, &h, &embedded));
    let output = model.head(&hidden, &embedded);
    Staged {
        embedded,
        block0_out,
        output,
    }
}

/// Every stage against diffusers in fp32; returns the full output's relative error.
fn check_fp32_parity(name: &str) -> f64 {
    let io = golden_io(name);
    let (_vs, model) = load(&golden_dir(name), Kind::Float);
    tch::no_grad(|| {
        let staged = run_staged(&model, &io);
        let e = &staged.embedded;
        let (q, k, v) = model.block_self_attention_inputs(0, &e.hidden, &e.timestep_proj, &e.rope);
        let cfg = model.config();
        let bhnd = vec![2, cfg.num_attention_heads, e.grid.tokens(), cfg.attention_head_dim];
        assert_eq!((q.size(), k.size(), v.size()), (bhnd.clone(), bhnd.clone(), bhnd));

        // In forward order, so the first failure is the first stage that differs. The
        // goldens hold block 0's q and k for sample 0 only.
        let stages = [
            ("rope_cos", e.rope.cos.shallow_clone()),
            ("rope_sin", e.rope.sin.shallow_clone()),
            ("patch_embedding", e.hidden.shallow_clone()),
            ("temb", e.temb.shallow_clone()),
            ("timestep_proj", e.timestep_proj.shallow_clone()),
            ("text", e.text.shallow_clone()),
            ("block0_q", q.get(0)),
            ("block0_k", k.get(0)),
            ("block0_out", staged.block0_out.shallow_clone()),
            ("output", staged.output.shallow_clone()),
        ];
        let report: Vec<(&str, f64)> = stages
            .iter()
            .map(|(stage, actual)| (*stage, assert_parity(stage, actual, &io[*stage])))
            .collect();
        eprintln!("{name} fp32 max relative error per stage: {report:?}");

        // forward() is the same computation as the staged calls, bit for bit.
        let output = model.forward(&io["latents"], &io["timestep"], &io["encoder_hidden_states"]);
        assert!(
            output.equal(&staged.output),
            "forward differs from embed + blocks + head"
        );
        report.last().expect("output is checked").1
    })
}

#[test]
fn parity_tiny_a() {
    check_fp32_parity("tiny_a");
}

#[test]
fn parity_tiny_b() {
    check_fp32_parity("tiny_b");
}

#[test]
fn parity_tiny_c() {
    check_fp32_parity("tiny_c");
}

/// Swapping block 0's core for linear attention changes what the model computes (the
/// output moves away from diffusers'), and swapping softmax back restores the teacher's
/// output bit for bit.
#[test]
fn self_attention_core_is_swappable() {
    let io = golden_io("tiny_c");
    let (vs, mut model) = load(&golden_dir("tiny_c"), Kind::Float);
    assert_eq!(model.num_blocks(), 1);
    assert!(matches!(model.self_attention(0), SelfAttention::Softmax));
    let forward = |model: &WanTransformer| {
        tch::no_grad(|| model.forward(&io["latents"], &io["timestep"], &io["encoder_hidden_states"]))
    };
    let teacher = forward(&model);
    assert_parity("softmax core", &teacher, &io["output"]);

    let (heads, head_dim) = (model.config().num_attention_heads, model.config().attention_head_dim);
    let linear = HybridAttention::new(
        &(vs.root() / "blocks" / 0 / "attn1"),
        HybridConfig {
            feature_map: FeatureMapConfig {
                heads,
                head_dim,
                hidden: 8,
                features: 8,
                chunks: 2,
            },
            eps: 1e-6,
            rate: Rate::Linear,
            pattern: AnchorPattern::Strided,
            normaliser: Normaliser::default(),
        },
    );
    model.set_self_attention(0, SelfAttention::Hybrid(linear));
    assert!(matches!(
        model.self_attention(0),
        SelfAttention::Hybrid(h) if h.rate == Rate::Linear
    ));
    let student = forward(&model);
    assert_eq!(student.size(), teacher.size());
    assert!(
        bool::try_from(student.isfinite().all()).unwrap(),
        "linear core: non-finite output"
    );
    let moved = rel_err(&student, &teacher);
    assert!(
        moved > 1e-3,
        "the linear core computes what softmax does (relative difference {moved:.3e}): the swap did not take"
    );

    model.set_self_attention(0, SelfAttention::Softmax);
    assert!(matches!(model.self_attention(0), SelfAttention::Softmax));
    assert!(
        forward(&model).equal(&teacher),
        "swapping softmax back does not restore the teacher's output"
    );
}

/// Inputs the model cannot take are refused with a message, not miscomputed.
#[test]
#[should_panic(expected = "per-token [B, N] timestep of Wan2.2 TI2V is not supported")]
fn per_token_timestep_is_refused() {
    let io = golden_io("tiny_c");
    let (_vs, model) = load(&golden_dir("tiny_c"), Kind::Float);
    let per_token = Tensor::zeros([2, 30], (Kind::Float, Device::Cpu));
    let _ = model.forward(&io["latents"], &per_token, &io["encoder_hidden_states"]);
}

#[test]
#[should_panic(expected = "is not divisible by the patch")]
fn latents_not_divisible_by_the_patch_are_refused() {
    let io = golden_io("tiny_c");
    let (_vs, model) = load(&golden_dir("tiny_c"), Kind::Float);
    let odd_frames = io["latents"].narrow(2, 0, 3); // patch (2, 1, 2), 3 frames
    let _ = model.forward(&odd_frames, &io["timestep"], &io["encoder_hidden_states"]);
}

/// Loads in bf16: diffusers' fp32 modules stay fp32, everything else is bf16, and the
/// output is close to fp32 and to diffusers' own bf16 run of the same checkpoint.
#[test]
fn bf16_keeps_fp32_modules_and_stays_close() {
    for name in ["tiny_a", "tiny_b", "tiny_c"] {
        let io = golden_io(name);
        let (vs, model) = load(&golden_dir(name), Kind::BFloat16);
        for (var, tensor) in vs.variables() {
            let fp32 = var.contains("scale_shift_table")
                || var.contains("time_embedder")
                || var.contains(".norm2.")
                || var.contains(".norm1.")
                || var.contains(".norm3.");
            let expected = if fp32 { Kind::Float } else { Kind::BFloat16 };
            assert_eq!(tensor.kind(), expected, "{var}");
        }
        let output = tch::no_grad(|| model.forward(&io["latents"], &io["timestep"], &io["encoder_hidden_states"]));
        assert_eq!(output.kind(), Kind::BFloat16);
        let vs_fp32 = rel_err(&output, &io["output"]);
        let vs_diffusers_bf16 = rel_err(&output, &io["output_bf16"]);
        let diffusers_bf16_vs_fp32 = rel_err(&io["output_bf16"], &io["output"]);
        eprintln!(
            "{name} bf16: vs fp32 golden {vs_fp32:.3e}, vs diffusers bf16 {vs_diffusers_bf16:.3e} \
             (diffusers bf16 vs fp32 {diffusers_bf16_vs_fp32:.3e})"
        );
        assert!(vs_fp32 <= 3e-2, "{name}: bf16 output {vs_fp32:.3e} from fp32");
        assert!(
            vs_diffusers_bf16 <= 1e-2,
            "{name}: bf16 output {vs_diffusers_bf16:.3e} from diffusers bf16"
        );
    }
}

/// Copies a golden model folder (config + weights) into a fresh temporary folder.
fn copy_golden(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for file in ["config.json", WEIGHTS_FILE] {
        std::fs::copy(golden_dir(name).join(file), tmp.path().join(file)).unwrap();
    }
    tmp
}

/// Rewrites a folder's single weights file through `edit`.
fn edit_weights(dir: &Path, edit: impl FnOnce(&mut BTreeMap<String, Tensor>)) {
    let path = dir.join(WEIGHTS_FILE);
    let mut tensors = weights::read_safetensors(&path).unwrap();
    edit(&mut tensors);
    weights::write_safetensors(&path, tensors.iter().map(|(n, t)| (n.as_str(), t)), None).unwrap();
}

fn load_err(dir: &Path) -> WeightsError {
    match weights::load(dir, Device::Cpu, Kind::Float) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn missing_tensor_is_named() {
    let tmp = copy_golden("tiny_a");
    let name = "blocks.1.attn2.norm_k.weight";
    edit_weights(tmp.path(), |t| {
        assert!(t.remove(name).is_some(), "the golden has {name}");
    });
    let err = load_err(tmp.path());
    let message = err.to_string();
    assert!(
        matches!(&err, WeightsError::MissingTensors { count: 1, names, .. } if names == &[name]),
        "{message}"
    );
    assert!(
        message.contains(name) && message.contains(&tmp.path().display().to_string()),
        "{message}"
    );
}

#[test]
fn misshaped_tensor_names_both_shapes() {
    let tmp = copy_golden("tiny_a");
    edit_weights(tmp.path(), |t| {
        t.insert(
            "proj_out.weight".into(),
            Tensor::zeros([15, 32], (Kind::Float, Device::Cpu)),
        );
    });
    let err = load_err(tmp.path());
    let message = err.to_string();
    match &err {
        WeightsError::ShapeMismatch {
            name, expected, found, ..
        } => {
            assert_eq!(
                (name.as_str(), expected.as_slice(), found.as_slice()),
                ("proj_out.weight", &[16, 32][..], &[15, 32][..])
            );
        }
        other => panic!("expected a shape mismatch, got {other}"),
    }
    assert!(
        message.contains("[16, 32]") && message.contains("[15, 32]"),
        "{message}"
    );
}

#[test]
fn unexpected_tensors_are_refused_except_ignored_ones() {
    let tmp = copy_golden("tiny_c");
    // diffusers ignores norm_added_q (old I2V checkpoints): so do we.
    edit_weights(tmp.path(), |t| {
        t.insert(
            "blocks.0.attn2.norm_added_q.weight".into(),
            Tensor::ones([12], (Kind::Float, Device::Cpu)),
        );
    });
    weights::load(tmp.path(), Device::Cpu, Kind::Float).expect("norm_added_q is ignored");
    edit_weights(tmp.path(), |t| {
        t.insert(
            "blocks.0.attn2.add_k_proj.weight".into(),
            Tensor::ones([12, 12], (Kind::Float, Device::Cpu)),
        );
    });
    let err = load_err(tmp.path());
    assert!(
        matches!(&err, WeightsError::UnexpectedTensors { count: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("blocks.0.attn2.add_k_proj.weight"), "{err}");
}

#[test]
fn broken_folders_give_actionable_errors() {
    // No config.json.
    let tmp = tempfile::tempdir().unwrap();
    let err = load_err(tmp.path());
    assert!(matches!(err, WeightsError::MissingConfig { .. }), "{err}");

    // Config but no weights.
    std::fs::copy(golden_dir("tiny_c").join("config.json"), tmp.path().join("config.json")).unwrap();
    let err = load_err(tmp.path());
    assert!(matches!(err, WeightsError::NoWeights { .. }), "{err}");

    // A truncated weights file.
    let bytes = std::fs::read(golden_dir("tiny_c").join(WEIGHTS_FILE)).unwrap();
    std::fs::write(tmp.path().join(WEIGHTS_FILE), &bytes[..bytes.len() - 100]).unwrap();
    let err = load_err(tmp.path());
    assert!(matches!(err, WeightsError::Corrupt { .. }), "{err}");

    // Garbage.
    std::fs::write(tmp.path().join(WEIGHTS_FILE), b"not a safetensors file").unwrap();
    let err = load_err(tmp.path());
    assert!(matches!(err, WeightsError::Corrupt { .. }), "{err}");

    // An image-to-video config.
    let config = std::fs::read_to_string(golden_dir("tiny_c").join("config.json")).unwrap();
    std::fs::write(
        tmp.path().join("config.json"),
        config.replace("\"image_dim\": null", "\"image_dim\": 1280"),
    )
    .unwrap();
    let err = load_err(tmp.path());
    assert!(
        matches!(err, WeightsError::Config { .. }) && err.to_string().contains("image_dim"),
        "{err}"
    );
}

/// A checkpoint split into shards with an index loads to the same model.
#[test]
fn sharded_checkpoint_loads_identically() {
    let name = "tiny_b";
    let io = golden_io(name);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(golden_dir(name).join("config.json"), tmp.path().join("config.json")).unwrap();
    let tensors = weights::read_safetensors(&golden_dir(name).join(WEIGHTS_FILE)).unwrap();
    let shard_names = [
        "diffusion_pytorch_model-00001-of-00002.safetensors",
        "diffusion_pytorch_model-00002-of-00002.safetensors",
    ];
    let mut weight_map = serde_json::Map::new();
    let (first, second): (Vec<_>, Vec<_>) = tensors.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    for (shard, part) in shard_names.iter().zip([first, second]) {
        let part: Vec<(&str, &Tensor)> = part.into_iter().map(|(_, (n, t))| (n.as_str(), t)).collect();
        for (n, _) in &part {
            weight_map.insert(n.to_string(), serde_json::Value::from(*shard));
        }
        weights::write_safetensors(&tmp.path().join(shard), part, None).unwrap();
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(tmp.path().join(INDEX_FILE), index.to_string()).unwrap();

    let (_vs, model) = load(tmp.path(), Kind::Float);
    let (_vs_single, single) = load(&golden_dir(name), Kind::Float);
    tch::no_grad(|| {
        let args = (&io["latents"], &io["timestep"], &io["encoder_hidden_states"]);
        assert!(
            model
                .forward(args.0, args.1, args.2)
                .equal(&single.forward(args.0, args.1, args.2))
        );
    });

    // An index naming a shard that is not there.
    std::fs::remove_file(tmp.path().join(shard_names[1])).unwrap();
    let err = load_err(tmp.path());
    assert!(
        matches!(err, WeightsError::BadIndex { .. }) && err.to_string().contains(shard_names[1]),
        "{err}"
    );
}

/// Loaded then saved (fp32 and bf16) reloads to identical outputs.
#[test]
fn save_then_load_round_trips() {
    let name = "tiny_a";
    let io = golden_io(name);
    let args = (&io["latents"], &io["timestep"], &io["encoder_hidden_states"]);
    for kind in [Kind::Float, Kind::BFloat16] {
        let (vs, model) = load(&golden_dir(name), kind);
        let tmp = tempfile::tempdir().unwrap();
        weights::save(&vs, model.config(), tmp.path()).unwrap();
        let (vs_again, again) = load(tmp.path(), kind);
        assert_eq!(again.config(), model.config());
        for (var, tensor) in vs_again.variables() {
            assert_eq!(tensor.kind(), vs.variables()[&var].kind(), "{var}");
        }
        tch::no_grad(|| {
            assert!(
                again
                    .forward(args.0, args.1, args.2)
                    .equal(&model.forward(args.0, args.1, args.2)),
                "{kind:?}"
            );
        });
    }
}

/// On a GPU machine (skipped elsewhere): the goldens through CUDA, fp32 and bf16. fp32 is
/// not bit-exact there (other kernels; cuDNN convolutions may use TF32, as in PyTorch), so
/// the bound is looser than on CPU. Run it alone (`parity cuda_matches_goldens`): LibTorch
/// settles whether CUDA is available at its first call, so after other tests in the same
/// process it reports no CUDA and this test skips.
#[test]
fn cuda_matches_goldens() {
    let runtime = surgery_worker::runtime::init();
    if !tch::Cuda::is_available() {
        eprintln!("no CUDA device ({:?}): skipped", runtime.cuda_backend);
        return;
    }
    let device = Device::Cuda(0);
    for name in ["tiny_a", "tiny_b", "tiny_c"] {
        let io = golden_io(name);
        let input = |key: &str| io[key].to_device(device);
        for (kind, golden, bound) in [(Kind::Float, "output", 1e-3), (Kind::BFloat16, "output_bf16", 2e-2)] {
            let (_vs, model) = weights::load(&golden_dir(name), device, kind).unwrap();
            let output =
                tch::no_grad(|| model.forward(&input("latents"), &input("timestep"), &input("encoder_hidden_states")));
            let rel = rel_err(&output.to_device(Device::Cpu), &io[golden]);
            eprintln!("{name} CUDA {kind:?}: max relative error vs diffusers CPU {golden}: {rel:.3e}");
            assert!(rel <= bound, "{name} CUDA {kind:?}: {rel:.3e}");
        }
    }
}

/// Wan2.1 1.3B at 480p (random weights, bf16 with diffusers' fp32 modules) on a GPU: runs,
/// gives a finite output of the latents' shape, and prints the forward time. Run alone,
/// for the reason given at [`cuda_matches_goldens`].
#[test]
#[ignore = "needs a GPU: parity full_size_bf16_forward --ignored"]
fn full_size_bf16_forward() {
    surgery_worker::runtime::init();
    if !tch::Cuda::is_available() {
        eprintln!("no CUDA device: skipped");
        return;
    }
    let device = Device::Cuda(0);
    let cfg = WanConfig::wan21_t2v_1_3b();
    let vs = VarStore::new(device);
    let model = WanTransformer::new(&vs.root(), &cfg);
    weights::cast_like_diffusers(&vs, Kind::BFloat16);
    let latents = Tensor::randn([1, 16, 21, 60, 104], (Kind::BFloat16, device));
    let timestep = Tensor::from_slice(&[500.0f32]).to_device(device);
    let text = Tensor::randn([1, 512, 4096], (Kind::BFloat16, device));
    tch::no_grad(|| {
        let mut times = Vec::new();
        let mut output = None;
        for _ in 0..4 {
            tch::Cuda::synchronize(0);
            let start = std::time::Instant::now();
            output = Some(model.forward(&latents, &timestep, &text));
            tch::Cuda::synchronize(0);
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        let output = output.expect("ran");
        assert_eq!(output.size(), latents.size());
        assert!(bool::try_from(output.isfinite().all()).unwrap(), "non-finite output");
        eprintln!("Wan2.1 1.3B bf16 forward, 32,760 tokens: {times:.1?} ms (first includes warm-up)");
    });
}
