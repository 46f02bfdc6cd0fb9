//! Parity of the Rust Wan2.1 VAE decoder with diffusers' `AutoencoderKLWan` (decoder half,
//! with WanPipeline's un-normalisation), and the loader's behaviour on good and bad folders.
//!
//! The goldens in tests/golden_vae/ are a tiny random-weight diffusers VAE (tiny/: fp32
//! with its encoder, as `save_pretrained` writes it; tiny_bf16/: bf16, decoder tensors
//! only) and io.safetensors with normalised latents, diffusers' outputs and intermediates;
//! scripts/golden/make_vae_golden.py writes them (Python is not needed here). The parity
//! test checks the stages in order (post_quant_conv, conv_in, mid block, the decoder's
//! first and second chunk, the clamped video), so a failure points at the first that
//! differs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use surgery_worker::model::weights::{self, INDEX_FILE, WEIGHTS_FILE, WeightsError};
use surgery_worker::vae::layers::FeatureCache;
use surgery_worker::vae::{DecodeOptions, Tiling, VaeConfigError, VaeError, WanVaeDecoder, to_u8_frames};
use tch::{Device, Kind, Tensor};

/// Target for fp32 parity: max|rust - diffusers| / max|diffusers|.
const FP32_REL: f64 = 1e-5;
/// Elementwise check alongside it: |a - b| <= FP32_ATOL + FP32_RTOL |b|.
const FP32_RTOL: f64 = 1e-5;
const FP32_ATOL: f64 = 1e-5;

/// The tiling the golden script passes to diffusers' `enable_tiling`.
const GOLDEN_TILING: Tiling = Tiling {
    tile_sample_min_height: 32,
    tile_sample_min_width: 48,
    tile_sample_stride_height: 24,
    tile_sample_stride_width: 32,
};

fn golden_dir(name: &str) -> PathBuf {
    // At run time when set (a test binary carried to the GPU machine runs from another
    // checkout), else where it was built.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("tests/golden_vae")
        .join(name)
}

fn golden_io() -> BTreeMap<String, Tensor> {
    weights::read_safetensors(&golden_dir("io.safetensors")).expect("golden io.safetensors reads")
}

fn load(dir: &Path, kind: Kind) -> WanVaeDecoder {
    WanVaeDecoder::load(dir, Device::Cpu, kind).unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
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
    let close = actual
        .to_kind(Kind::Double)
        .allclose(&expected.to_kind(Kind::Double), FP32_RTOL, FP32_ATOL, false);
    assert!(
        rel <= FP32_REL && close,
        "{stage}: max relative error {rel:.3e} (allclose {close})"
    );
    rel
}

#[test]
fn fp32_parity_stage_by_stage() {
    let io = golden_io();
    let vae = load(&golden_dir("tiny"), Kind::Float);
    let latents = &io["latents"];
    let (output, stages) = tch::no_grad(|| {
        let x = vae.post_quant_conv(&vae.unnormalize(latents));
        let decoder = vae.decoder();
        let frame0 = x.narrow(2, 0, 1);
        let conv_in = decoder.conv_in.forward(&frame0, None);
        let mid_block = decoder.mid_block.forward(&conv_in, &mut FeatureCache::new());
        let mut cache = FeatureCache::new();
        let decoder_frame0 = decoder.forward(&frame0, &mut cache);
        let decoder_frame1 = decoder.forward(&x.narrow(2, 1, 1), &mut cache);
        let stages = vec![
            ("post_quant_conv", x),
            ("conv_in_frame0", conv_in),
            ("mid_block_frame0", mid_block),
            ("decoder_frame0", decoder_frame0),
            ("decoder_frame1", decoder_frame1),
        ];
        (vae.decode(latents), stages)
    });
    let mut report: Vec<(&str, f64)> = stages
        .iter()
        .map(|(stage, actual)| (*stage, assert_parity(stage, actual, &io[*stage])))
        .collect();
    assert_eq!(output.size(), [1, 3, 9, 32, 48]);
    assert_eq!(output.kind(), Kind::Float);
    report.push(("output", assert_parity("output", &output, &io["output"])));
    eprintln!("VAE fp32 max relative error per stage: {report:?}");
}

/// Every variable is bf16 (the VAE keeps nothing in fp32), and the output is close to
/// diffusers' own bf16 run and to the fp32 golden.
#[test]
fn bf16_stays_close() {
    let io = golden_io();
    // The bf16 folder holds the decoder's tensors only.
    let vae = load(&golden_dir("tiny_bf16"), Kind::BFloat16);
    for (name, tensor) in vae.var_store().variables() {
        assert_eq!(tensor.kind(), Kind::BFloat16, "{name}");
    }
    let output = vae.decode(&io["latents"]);
    assert_eq!(output.kind(), Kind::BFloat16);
    let vs_diffusers_bf16 = rel_err(&output, &io["output_bf16"]);
    let vs_fp32 = rel_err(&output, &io["output"]);
    let diffusers_bf16_vs_fp32 = rel_err(&io["output_bf16"], &io["output"]);
    eprintln!(
        "VAE bf16: vs diffusers bf16 {vs_diffusers_bf16:.3e}, vs fp32 golden {vs_fp32:.3e} \
         (diffusers bf16 vs fp32 {diffusers_bf16_vs_fp32:.3e})"
    );
    assert!(
        vs_diffusers_bf16 <= 2e-2,
        "bf16 output {vs_diffusers_bf16:.3e} from diffusers bf16"
    );
    assert!(vs_fp32 <= 6e-2, "bf16 output {vs_fp32:.3e} from fp32");

    // The fp32 checkpoint loaded as bf16 is the same model as the bf16 checkpoint.
    let from_fp32 = load(&golden_dir("tiny"), Kind::BFloat16);
    assert!(from_fp32.decode(&io["latents"]).equal(&output));
}

#[test]
fn tiled_decode_matches_diffusers_tiling() {
    let io = golden_io();
    let vae = load(&golden_dir("tiny"), Kind::Float);
    let latents = &io["tiled_latents"];
    assert_eq!(latents.size(), [1, 4, 2, 7, 9]);
    let tiled = vae.decode_with(
        latents,
        &DecodeOptions {
            tiling: Some(GOLDEN_TILING),
        },
    );
    assert_eq!(tiled.size(), [1, 3, 5, 56, 72]);
    let rel = assert_parity("tiled output", &tiled, &io["tiled_output"]);
    // Tiling changes a random model's output a lot, so this parity means it was applied.
    let untiled = vae.decode(latents);
    let tiling_effect = rel_err(&untiled, &tiled);
    eprintln!("VAE tiled fp32 max relative error {rel:.3e} (untiled differs by {tiling_effect:.3e})");
    assert!(tiling_effect > 1e-2, "tiling made no difference: was it applied?");

    // A latent no larger than one tile is decoded whole, as in diffusers.
    let small = &io["latents"];
    assert!(!Tiling::default().applies(4, 6, 8));
    let default_tiling = DecodeOptions {
        tiling: Some(Tiling::default()),
    };
    assert!(vae.decode_with(small, &default_tiling).equal(&vae.decode(small)));
}

/// Frames 1 + 4 (T - 1), 8x the latent's height and width, batch and channels as given;
/// the batch's samples are decoded independently; the output never leaves [-1, 1].
#[test]
fn output_shapes_and_range() {
    let vae = load(&golden_dir("tiny"), Kind::Float);
    for (t, frames) in [(1, 1), (2, 5), (4, 13)] {
        assert_eq!(vae.output_shape(&[2, 4, t, 3, 5]), [2, 3, frames, 24, 40]);
    }
    assert_eq!(vae.config().output_frames(21), 81);

    tch::manual_seed(11);
    let latents = Tensor::randn([2, 4, 2, 3, 5], (Kind::Float, Device::Cpu));
    let video = vae.decode(&latents);
    assert_eq!(video.size(), vae.output_shape(&latents.size()));
    let first = vae.decode(&latents.narrow(0, 0, 1));
    let second = vae.decode(&latents.narrow(0, 1, 1));
    assert_parity("batch sample 0", &video.narrow(0, 0, 1), &first);
    assert_parity("batch sample 1", &video.narrow(0, 1, 1), &second);

    let single = vae.decode(&latents.narrow(0, 0, 1).narrow(2, 0, 1));
    assert_eq!(single.size(), [1, 3, 1, 24, 40]);
    // The first frame does not depend on later latent frames (the decode is causal).
    assert_parity("causal first frame", &single, &first.narrow(2, 0, 1));

    let loud = vae.decode(&(latents * 50.0));
    let (min, max) = (loud.min().double_value(&[]), loud.max().double_value(&[]));
    assert!(
        (-1.0..=1.0).contains(&min) && (-1.0..=1.0).contains(&max),
        "[{min}, {max}]"
    );
    assert!(
        max == 1.0 || min == -1.0,
        "large latents should reach the clamp: [{min}, {max}]"
    );
}

#[test]
#[should_panic(expected = "latents must be [B, 4, T, H, W]")]
fn latents_with_the_wrong_channels_are_refused() {
    let vae = load(&golden_dir("tiny"), Kind::Float);
    let _ = vae.decode(&Tensor::zeros([1, 16, 1, 2, 2], (Kind::Float, Device::Cpu)));
}

#[test]
fn u8_frames_match_the_pipeline_postprocess() {
    let io = golden_io();
    let expected = io["frames_u8"].to_kind(Kind::Uint8);
    assert_eq!(expected.size(), [9, 32, 48, 3]);
    let from_golden = to_u8_frames(&io["output"].get(0));
    assert_eq!(from_golden.kind(), Kind::Uint8);
    assert!(from_golden.equal(&expected), "postprocess of diffusers' output differs");

    // From our own decode: equal up to a rounding flip where the two outputs straddle a
    // half step.
    let vae = load(&golden_dir("tiny"), Kind::Float);
    let ours = to_u8_frames(&vae.decode(&io["latents"]).get(0));
    let diff = (ours.to_kind(Kind::Int) - expected.to_kind(Kind::Int)).abs();
    let (max, differing) = (diff.max().int64_value(&[]), diff.count_nonzero(None).int64_value(&[]));
    eprintln!("u8 frames: {differing} of {} values differ (max {max})", diff.numel());
    assert!(max <= 1 && differing <= 10, "{differing} values differ, by up to {max}");
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

fn load_err(dir: &Path) -> VaeError {
    match WanVaeDecoder::load(dir, Device::Cpu, Kind::Float) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn missing_tensor_is_named() {
    let tmp = copy_golden("tiny");
    let name = "decoder.up_blocks.1.resnets.0.conv_shortcut.weight";
    edit_weights(tmp.path(), |t| {
        assert!(t.remove(name).is_some(), "the golden has {name}");
    });
    let err = load_err(tmp.path());
    let message = err.to_string();
    assert!(
        matches!(&err, VaeError::Weights(WeightsError::MissingTensors { count: 1, names, .. }) if names == &[name]),
        "{message}"
    );
    assert!(
        message.contains(name) && message.contains(&tmp.path().display().to_string()),
        "{message}"
    );
}

#[test]
fn misshaped_tensor_names_both_shapes() {
    let tmp = copy_golden("tiny");
    let name = "decoder.mid_block.attentions.0.norm.gamma";
    edit_weights(tmp.path(), |t| {
        t.insert(name.into(), Tensor::ones([16, 1, 1, 1], (Kind::Float, Device::Cpu)));
    });
    let err = load_err(tmp.path());
    let message = err.to_string();
    match &err {
        VaeError::Weights(WeightsError::ShapeMismatch {
            name: found_name,
            expected,
            found,
            file,
        }) => {
            assert_eq!(found_name, name);
            assert_eq!(
                (expected.as_slice(), found.as_slice()),
                (&[16, 1, 1][..], &[16, 1, 1, 1][..])
            );
            assert!(file.ends_with(WEIGHTS_FILE));
        }
        other => panic!("expected a shape mismatch, got {other}"),
    }
    assert!(
        message.contains("[16, 1, 1]") && message.contains("[16, 1, 1, 1]"),
        "{message}"
    );
}

/// The encoder half may be present (tiny/) or absent (tiny_bf16/); any other tensor the
/// decoder lacks is refused.
#[test]
fn encoder_tensors_are_ignored_others_refused() {
    let full = weights::read_safetensors(&golden_dir("tiny").join(WEIGHTS_FILE)).unwrap();
    assert!(full.keys().any(|k| k.starts_with("encoder.")) && full.contains_key("quant_conv.weight"));
    let decoder_only = weights::read_safetensors(&golden_dir("tiny_bf16").join(WEIGHTS_FILE)).unwrap();
    assert!(
        decoder_only
            .keys()
            .all(|k| k.starts_with("decoder.") || k.starts_with("post_quant_conv."))
    );
    load(&golden_dir("tiny_bf16"), Kind::Float);

    let tmp = copy_golden("tiny");
    edit_weights(tmp.path(), |t| {
        t.insert(
            "decoder.up_blocks.3.upsamplers.0.time_conv.weight".into(),
            Tensor::ones([2], (Kind::Float, Device::Cpu)),
        );
    });
    let err = load_err(tmp.path());
    assert!(
        matches!(
            &err,
            VaeError::Weights(WeightsError::UnexpectedTensors { count: 1, .. })
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("decoder.up_blocks.3.upsamplers.0.time_conv.weight")
    );
}

#[test]
fn wan22_and_broken_folders_give_actionable_errors() {
    let tmp = copy_golden("tiny");
    let config = std::fs::read_to_string(tmp.path().join("config.json")).unwrap();

    // Wan2.2's VAE: residual up blocks, patchified output.
    std::fs::write(
        tmp.path().join("config.json"),
        config.replace("\"is_residual\": false", "\"is_residual\": true"),
    )
    .unwrap();
    let err = load_err(tmp.path());
    assert!(
        matches!(
            &err,
            VaeError::Config {
                source: VaeConfigError::Wan22 { .. },
                ..
            }
        ),
        "{err}"
    );
    let message = err.to_string();
    assert!(message.contains("is_residual") && message.contains("Wan2.2") && message.contains("config.json"));
    std::fs::write(
        tmp.path().join("config.json"),
        config.replace("\"patch_size\": null", "\"patch_size\": 2"),
    )
    .unwrap();
    let err = load_err(tmp.path());
    assert!(err.to_string().contains("patch_size = 2"), "{err}");

    // latents_mean of the wrong length.
    std::fs::write(
        tmp.path().join("config.json"),
        config.replace("\"z_dim\": 4", "\"z_dim\": 16"),
    )
    .unwrap();
    let err = load_err(tmp.path());
    assert!(err.to_string().contains("latents_mean has 4 entries"), "{err}");

    // No config, no weights, an fp16 request.
    std::fs::remove_file(tmp.path().join("config.json")).unwrap();
    let err = load_err(tmp.path());
    assert!(
        matches!(err, VaeError::MissingConfig { .. }) && err.to_string().contains("vae"),
        "{err}"
    );
    std::fs::write(tmp.path().join("config.json"), &config).unwrap();
    std::fs::remove_file(tmp.path().join(WEIGHTS_FILE)).unwrap();
    let err = load_err(tmp.path());
    assert!(
        matches!(err, VaeError::Weights(WeightsError::NoWeights { .. })),
        "{err}"
    );
    let err = WanVaeDecoder::load(&golden_dir("tiny"), Device::Cpu, Kind::Half).unwrap_err();
    assert!(matches!(err, VaeError::UnsupportedKind(Kind::Half)), "{err}");
}

/// A checkpoint split into shards with an index loads to the same decoder.
#[test]
fn sharded_checkpoint_loads_identically() {
    let io = golden_io();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(golden_dir("tiny").join("config.json"), tmp.path().join("config.json")).unwrap();
    let tensors = weights::read_safetensors(&golden_dir("tiny").join(WEIGHTS_FILE)).unwrap();
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

    let sharded = load(tmp.path(), Kind::Float);
    let single = load(&golden_dir("tiny"), Kind::Float);
    assert!(sharded.decode(&io["latents"]).equal(&single.decode(&io["latents"])));
}

/// On a GPU machine (skipped elsewhere): the goldens through CUDA, fp32 and bf16, whole
/// and tiled. fp32 is not bit-exact there (other kernels; cuDNN may use TF32, as in
/// PyTorch), so the bound is looser than on CPU. Run it alone (`vae cuda_matches_goldens`):
/// LibTorch settles whether CUDA is available at its first call.
#[test]
fn cuda_matches_goldens() {
    let runtime = surgery_worker::runtime::init();
    if !tch::Cuda::is_available() {
        eprintln!("no CUDA device ({:?}): skipped", runtime.cuda_backend);
        return;
    }
    let device = Device::Cuda(0);
    let io = golden_io();
    let tiled = DecodeOptions {
        tiling: Some(GOLDEN_TILING),
    };
    // fp32: cuDNN runs the convolutions in TF32 by default (as PyTorch does: 10 mantissa
    // bits). bf16: other accumulation orders than the CPU's through a dozen convolutions;
    // diffusers' own bf16 output is 3.2e-2 from its fp32 one on these weights. Measured on
    // an H200, 2026-12-02: fp32 1.9e-3, tiled 1.7e-3, bf16 3.9e-2.
    for (folder, kind, bound) in [("tiny", Kind::Float, 5e-3), ("tiny_bf16", Kind::BFloat16, 5e-2)] {
        let vae = WanVaeDecoder::load(&golden_dir(folder), device, kind).unwrap();
        let golden = if kind == Kind::Float { "output" } else { "output_bf16" };
        let output = vae.decode(&io["latents"].to_device(device)).to_device(Device::Cpu);
        let rel = rel_err(&output, &io[golden]);
        eprintln!("VAE CUDA {kind:?}: max relative error vs diffusers CPU {golden}: {rel:.3e}");
        assert!(rel <= bound, "CUDA {kind:?}: {rel:.3e}");
        if kind == Kind::Float {
            let output = vae.decode_with(&io["tiled_latents"].to_device(device), &tiled);
            let rel = rel_err(&output.to_device(Device::Cpu), &io["tiled_output"]);
            eprintln!("VAE CUDA tiled {kind:?}: max relative error vs diffusers CPU: {rel:.3e}");
            assert!(rel <= bound, "CUDA tiled: {rel:.3e}");
        }
    }
}

/// Wan2.1's VAE at 480p x 81 frames (random weights, the default config) on a GPU: decodes
/// latents [1, 16, 21, 60, 104] to [1, 3, 81, 480, 832] and prints the time. Set
/// `VAE_TILING=1` for diffusers' default tiling, `VAE_KIND=fp32` for fp32 (bf16
/// otherwise); measure the peak memory from outside (nvidia-smi), one process per case.
/// Run alone, for the reason given at [`cuda_matches_goldens`].
#[test]
#[ignore = "needs a GPU: vae full_size_decode --ignored"]
fn full_size_decode() {
    surgery_worker::runtime::init();
    if !tch::Cuda::is_available() {
        eprintln!("no CUDA device: skipped");
        return;
    }
    let device = Device::Cuda(0);
    let tiling = std::env::var("VAE_TILING").is_ok_and(|v| v == "1");
    let kind = match std::env::var("VAE_KIND").as_deref() {
        Ok("fp32") => Kind::Float,
        _ => Kind::BFloat16,
    };
    let cfg = surgery_worker::vae::VaeConfig::from_json("{}").unwrap();
    let vae = WanVaeDecoder::new(&cfg, device, kind);
    let options = DecodeOptions {
        tiling: tiling.then(Tiling::default),
    };
    let latents = Tensor::randn([1, 16, 21, 60, 104], (Kind::Float, device));
    let mut times = Vec::new();
    for _ in 0..2 {
        tch::Cuda::synchronize(0);
        let start = std::time::Instant::now();
        let video = vae.decode_with(&latents, &options);
        tch::Cuda::synchronize(0);
        times.push(start.elapsed().as_secs_f64());
        assert_eq!(video.size(), [1, 3, 81, 480, 832]);
        assert!(bool::try_from(video.isfinite().all()).unwrap(), "non-finite output");
    }
    eprintln!(
        "Wan2.1 VAE decode 21 -> 81 frames at 480x832, {kind:?}, tiling {tiling}: {times:.2?} s (first includes warm-up)"
    );
}
