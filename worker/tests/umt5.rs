//! Parity of the native text path (worker/src/text) with transformers and diffusers: the
//! tokenizer's ids and masks, `prompt_clean`, the umT5 encoder in fp32, bf16 and fp16,
//! the sharded bf16 checkpoint, `wan_prompt_embeds` against `WanPipeline._get_t5_prompt_embeds`,
//! and the loaders' errors on bad input.
//!
//! The goldens in tests/golden_umt5/ (a tiny SentencePiece tokenizer, a tiny random
//! `UMT5EncoderModel` saved by transformers, prompts.json and io.safetensors with the
//! reference outputs) are written by scripts/golden/make_umt5_golden.py; Python is not
//! needed here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use surgery_worker::model::weights;
use surgery_worker::text::umt5::relative_position_buckets;
use surgery_worker::text::{PromptTokenizer, TextError, Umt5Encoder, prompt_clean, wan_prompt_embeds};
use tch::{Device, Kind, Tensor};

/// Target for fp32 parity: max|rust - transformers| / max|transformers|.
const FP32_REL: f64 = 1e-5;
/// Elementwise check alongside it: |a - b| <= FP32_ATOL + FP32_RTOL |b|.
const FP32_RTOL: f64 = 1e-5;
const FP32_ATOL: f64 = 1e-5;
/// Reduced precision against transformers' own bf16 / fp16 run of the same checkpoint
/// (same relative measure). Measured on LibTorch 2.11 CPU: 0 in both (bit-identical: the
/// same ATen ops in the same order). The bounds are one ulp of the largest output (bf16
/// 2^-8, fp16 2^-11), room for another kernel's rounding, yet tight enough to catch a
/// wrong cast: rounding fp16 `wo` instead of keeping it fp32 costs 1.9e-3, bf16 instead
/// of fp32 overall 2.9e-2.
const BF16_REL: f64 = 4e-3;
const FP16_REL: f64 = 5e-4;

fn golden(path: &str) -> PathBuf {
    // At run time when set (a test binary carried to the GPU machine runs from another
    // checkout), else where it was built.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("tests/golden_umt5")
        .join(path)
}

fn io() -> BTreeMap<String, Tensor> {
    weights::read_safetensors(&golden("io.safetensors")).expect("golden io.safetensors reads")
}

/// The goldens store ids, masks and buckets as (exact) f32.
fn int(golden: &Tensor) -> Tensor {
    golden.to_kind(Kind::Int64)
}

fn prompts_doc() -> Value {
    let text = std::fs::read_to_string(golden("prompts.json")).expect("prompts.json reads");
    serde_json::from_str(&text).expect("prompts.json is JSON")
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .expect("a list")
        .iter()
        .map(|s| s.as_str().expect("a string").to_string())
        .collect()
}

fn max_lens() -> Vec<usize> {
    prompts_doc()["max_lens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect()
}

fn tokenizer(folder: &str) -> PromptTokenizer {
    PromptTokenizer::load(&golden(folder)).unwrap_or_else(|e| panic!("loading {folder}: {e}"))
}

fn encoder(folder: &str, kind: Kind) -> Umt5Encoder {
    Umt5Encoder::load(&golden(folder), Device::Cpu, kind).unwrap_or_else(|e| panic!("loading {folder}: {e}"))
}

/// max|a - b| / max|b|, in f64.
fn rel_err(actual: &Tensor, expected: &Tensor) -> f64 {
    assert_eq!(actual.size(), expected.size(), "shapes differ");
    let a = actual.to_kind(Kind::Double);
    let b = expected.to_kind(Kind::Double);
    (&a - &b).abs().max().double_value(&[]) / b.abs().max().double_value(&[])
}

/// Asserts fp32 parity and returns the relative error.
fn assert_parity(what: &str, actual: &Tensor, expected: &Tensor) -> f64 {
    let rel = rel_err(actual, expected);
    let close = actual
        .to_kind(Kind::Double)
        .allclose(&expected.to_kind(Kind::Double), FP32_RTOL, FP32_ATOL, false);
    assert!(
        rel <= FP32_REL && close,
        "{what}: max relative error {rel:.3e} (allclose {close})"
    );
    rel
}

#[test]
fn tokenizer_matches_transformers() {
    let doc = prompts_doc();
    let io = io();
    let cleaned = strings(&doc["cleaned"]);
    let raw = strings(&doc["raw_texts"]);
    for folder in ["tokenizer", "tokenizer_v4"] {
        let tokenizer = tokenizer(folder);
        let suffix = if folder == "tokenizer" { "" } else { "v4_" };
        for max_len in max_lens() {
            for (texts, kind) in [(&cleaned, ""), (&raw, "raw_")] {
                // The goldens name them ids_16, ids_v4_16, ids_raw_16, ids_raw_v4_16.
                let key = |what: &str| {
                    if kind.is_empty() {
                        format!("{what}_{suffix}{max_len}")
                    } else {
                        format!("{what}_{kind}{suffix}{max_len}")
                    }
                };
                let batch = tokenizer.encode_batch(texts, max_len).unwrap();
                assert_eq!(batch.ids.kind(), Kind::Int64);
                assert_eq!(batch.mask.kind(), Kind::Int64);
                let (ids_key, mask_key) = (key("ids"), key("mask"));
                assert!(
                    batch.ids.equal(&int(&io[&ids_key])),
                    "{folder}: {ids_key} differs from transformers"
                );
                assert!(
                    batch.mask.equal(&int(&io[&mask_key])),
                    "{folder}: {mask_key} differs from transformers"
                );
            }
        }
    }
}

#[test]
fn truncation_keeps_the_end_of_sequence_token() {
    let tokenizer = tokenizer("tokenizer");
    let long = "the quick brown fox jumps over the lazy dog ".repeat(20);
    let batch = tokenizer.encode_batch(&[long, "x".to_string()], 16).unwrap();
    assert_eq!(batch.ids.size(), [2, 16]);
    assert_eq!(
        batch.ids.int64_value(&[0, 15]),
        1,
        "</s> (id 1) ends a truncated prompt"
    );
    assert_eq!(batch.mask.sum(Kind::Int64).int64_value(&[]), 16 + 3);
    assert!(matches!(
        tokenizer.encode_batch(&["x"], 1),
        Err(TextError::Tokenize { .. })
    ));
}

#[test]
fn prompt_clean_matches_diffusers() {
    let doc = prompts_doc();
    for (raw, cleaned) in strings(&doc["prompts"]).iter().zip(strings(&doc["cleaned"])) {
        assert_eq!(prompt_clean(raw), cleaned, "prompt {raw:?}");
    }
    let cases = doc["clean_cases"].as_array().unwrap();
    assert!(cases.len() > 300);
    for case in cases {
        let (raw, cleaned) = (case[0].as_str().unwrap(), case[1].as_str().unwrap());
        assert_eq!(prompt_clean(raw), cleaned, "input {raw:?}");
    }
}

#[test]
fn position_buckets_match_transformers() {
    let io = io();
    let encoder = encoder("encoder", Kind::Float);
    let len = *max_lens().iter().max().unwrap();
    let buckets = relative_position_buckets(len as i64, encoder.config(), Device::Cpu);
    let expected = &io[&format!("buckets_{len}")];
    assert!(buckets.equal(&int(expected)), "relative position buckets differ");
    // The golden's max_distance makes the longest distances reach the last bucket.
    let last = encoder.config().relative_attention_num_buckets - 1;
    assert_eq!(buckets.max().int64_value(&[]), last);
}

#[test]
fn encoder_fp32_parity() {
    let io = io();
    let encoder = encoder("encoder", Kind::Float);
    let mut report = Vec::new();
    for max_len in max_lens() {
        let hidden = tch::no_grad(|| {
            encoder.forward(
                &int(&io[&format!("ids_{max_len}")]),
                &int(&io[&format!("mask_{max_len}")]),
            )
        });
        assert_eq!(hidden.kind(), Kind::Float);
        let what = format!("hidden_fp32_{max_len}");
        report.push((max_len, assert_parity(&what, &hidden, &io[&what])));
    }
    eprintln!("umT5 fp32 max relative error per max_len: {report:?}");
}

/// The encoder in reduced precision against transformers' run in that precision;
/// returns the relative error.
fn reduced_precision_error(folder: &str, kind: Kind, golden_key: &str) -> f64 {
    let io = io();
    let len = *max_lens().iter().max().unwrap();
    let encoder = encoder(folder, kind);
    let hidden = tch::no_grad(|| encoder.forward(&int(&io[&format!("ids_{len}")]), &int(&io[&format!("mask_{len}")])));
    assert_eq!(hidden.kind(), kind);
    rel_err(&hidden, &io[&format!("{golden_key}_{len}")])
}

#[test]
fn encoder_bf16_close_to_transformers_bf16() {
    let rel = reduced_precision_error("encoder", Kind::BFloat16, "hidden_bf16");
    eprintln!("umT5 bf16 (fp32 file) vs transformers bf16: max relative error {rel:.3e}");
    assert!(rel <= BF16_REL, "bf16 relative error {rel:.3e} > {BF16_REL}");
}

#[test]
fn encoder_fp16_keeps_wo_fp32_like_transformers() {
    let rel = reduced_precision_error("encoder", Kind::Half, "hidden_fp16");
    eprintln!("umT5 fp16 vs transformers fp16 (wo kept fp32): max relative error {rel:.3e}");
    assert!(rel <= FP16_REL, "fp16 relative error {rel:.3e} > {FP16_REL}");
}

#[test]
fn sharded_bf16_checkpoint_loads() {
    let rel = reduced_precision_error("encoder_bf16_sharded", Kind::BFloat16, "hidden_bf16");
    eprintln!("umT5 bf16 (sharded bf16 files) vs transformers bf16: max relative error {rel:.3e}");
    assert!(rel <= BF16_REL, "sharded bf16 relative error {rel:.3e} > {BF16_REL}");
    // bf16 files are the fp32 weights rounded as LibTorch rounds them on load: the two
    // checkpoints give one model.
    let io = io();
    let (ids, mask) = (&int(&io["ids_64"]), &int(&io["mask_64"]));
    let from_fp32 = tch::no_grad(|| encoder("encoder", Kind::BFloat16).forward(ids, mask));
    let from_shards = tch::no_grad(|| encoder("encoder_bf16_sharded", Kind::BFloat16).forward(ids, mask));
    assert!(
        from_fp32.equal(&from_shards),
        "sharded bf16 files load as a different model"
    );
    // And bf16 files load into an fp32 model.
    let widened = encoder("encoder_bf16_sharded", Kind::Float);
    assert_eq!(tch::no_grad(|| widened.forward(ids, mask)).kind(), Kind::Float);
}

#[test]
fn wan_prompt_embeds_match_diffusers() {
    let io = io();
    let doc = prompts_doc();
    let prompts = strings(&doc["prompts"]);
    let tokenizer = tokenizer("tokenizer");
    let fp32 = encoder("encoder", Kind::Float);
    for max_len in max_lens() {
        let embeds = wan_prompt_embeds(&tokenizer, &fp32, &prompts, max_len).unwrap();
        let expected = &io[&format!("embeds_fp32_{max_len}")];
        assert_eq!(
            embeds.size(),
            [prompts.len() as i64, max_len as i64, fp32.config().d_model]
        );
        assert_parity(&format!("embeds_fp32_{max_len}"), &embeds, expected);
        // Exact zeros from each prompt's length on, as in diffusers.
        let lens: Vec<i64> =
            Vec::try_from(io[&format!("mask_{max_len}")].sum_dim_intlist(1, false, Kind::Int64)).unwrap();
        for (row, &len) in lens.iter().enumerate() {
            let tail = embeds.get(row as i64).narrow(0, len, max_len as i64 - len);
            assert!(
                tail.eq(0.0).all().int64_value(&[]) == 1,
                "row {row}: not zero after {len} tokens"
            );
            let head = embeds.get(row as i64).narrow(0, 0, len);
            assert!(
                head.ne(0.0).any().int64_value(&[]) == 1,
                "row {row}: its tokens are zero"
            );
        }
    }
    let len = *max_lens().iter().max().unwrap();
    let bf16 = encoder("encoder", Kind::BFloat16);
    let embeds = wan_prompt_embeds(&tokenizer, &bf16, &prompts, len).unwrap();
    assert_eq!(embeds.kind(), Kind::BFloat16);
    let rel = rel_err(&embeds, &io[&format!("embeds_bf16_{len}")]);
    eprintln!("wan_prompt_embeds bf16 vs diffusers bf16: max relative error {rel:.3e}");
    assert!(rel <= BF16_REL);
}

/// On a GPU machine (skipped elsewhere): the encoder through CUDA in fp32 and bf16 against
/// transformers' CPU goldens. Not bit-exact there (other attention and matmul kernels), so
/// the bounds are looser, as in parity.rs. Run it alone (`umt5 cuda_matches_goldens`):
/// LibTorch settles whether CUDA is available at its first call.
#[test]
fn cuda_matches_goldens() {
    let runtime = surgery_worker::runtime::init();
    if !tch::Cuda::is_available() {
        eprintln!("no CUDA device ({:?}): skipped", runtime.cuda_backend);
        return;
    }
    let device = Device::Cuda(0);
    let io = io();
    let len = *max_lens().iter().max().unwrap();
    let (ids, mask) = (int(&io[&format!("ids_{len}")]), int(&io[&format!("mask_{len}")]));
    for (kind, reference, bound) in [
        (Kind::Float, "hidden_fp32", 1e-3),
        (Kind::BFloat16, "hidden_bf16", 2e-2),
    ] {
        let encoder = Umt5Encoder::load(&golden("encoder"), device, kind).unwrap();
        let hidden = tch::no_grad(|| encoder.forward(&ids, &mask)).to_device(Device::Cpu);
        let rel = rel_err(&hidden, &io[&format!("{reference}_{len}")]);
        eprintln!("umT5 CUDA {kind:?}: max relative error vs transformers CPU {reference}: {rel:.3e}");
        assert!(rel <= bound, "umT5 CUDA {kind:?}: {rel:.3e}");
    }
}

// ---- errors ----

/// A copy of a golden model folder to break.
fn copy_folder(folder: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(golden(folder)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, tmp.path().join(path.file_name().unwrap())).unwrap();
    }
    tmp
}

fn edit_weights(dir: &Path, edit: impl FnOnce(&mut BTreeMap<String, Tensor>)) {
    let path = dir.join("model.safetensors");
    let mut tensors = weights::read_safetensors(&path).unwrap();
    edit(&mut tensors);
    weights::write_safetensors(&path, tensors.iter().map(|(n, t)| (n.as_str(), t)), None).unwrap();
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let path = dir.join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(config.as_object_mut().unwrap());
    std::fs::write(&path, config.to_string()).unwrap();
}

fn load_err(dir: &Path) -> TextError {
    match Umt5Encoder::load(dir, Device::Cpu, Kind::Float) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn missing_tensor_is_named() {
    let tmp = copy_folder("encoder");
    let name = "encoder.block.2.layer.0.SelfAttention.relative_attention_bias.weight";
    edit_weights(tmp.path(), |t| {
        drop(t.remove(name).unwrap());
    });
    let err = load_err(tmp.path());
    assert!(matches!(err, TextError::MissingTensors { count: 1, .. }), "{err}");
    assert!(err.to_string().contains(name), "{err}");
}

#[test]
fn misshaped_tensor_names_both_shapes() {
    let tmp = copy_folder("encoder");
    let name = "encoder.block.1.layer.1.DenseReluDense.wi_1.weight";
    edit_weights(tmp.path(), |t| {
        t.insert(name.into(), Tensor::zeros([63, 32], (Kind::Float, Device::Cpu)));
    });
    let err = load_err(tmp.path());
    let text = err.to_string();
    assert!(matches!(err, TextError::ShapeMismatch { .. }), "{err}");
    assert!(
        text.contains(name) && text.contains("[63, 32]") && text.contains("[64, 32]"),
        "{text}"
    );
    assert!(text.contains("model.safetensors"), "{text}");
}

#[test]
fn tied_embedding_and_decoder_tensors_are_handled() {
    let io = io();
    let (ids, mask) = (&int(&io["ids_16"]), &int(&io["mask_16"]));
    let reference = tch::no_grad(|| encoder("encoder", Kind::Float).forward(ids, mask));
    // Only the tied name: the embedding is read from it.
    let tmp = copy_folder("encoder");
    edit_weights(tmp.path(), |t| {
        let shared = t.remove("shared.weight").unwrap();
        t.insert("encoder.embed_tokens.weight".into(), shared);
        t.insert(
            "decoder.final_layer_norm.weight".into(),
            Tensor::ones([32], (Kind::Float, Device::Cpu)),
        );
        t.insert(
            "lm_head.weight".into(),
            Tensor::ones([404, 32], (Kind::Float, Device::Cpu)),
        );
    });
    let loaded = Umt5Encoder::load(tmp.path(), Device::Cpu, Kind::Float).unwrap();
    assert!(tch::no_grad(|| loaded.forward(ids, mask)).equal(&reference));
    // Anything else unknown is refused, by name.
    edit_weights(tmp.path(), |t| {
        t.insert(
            "encoder.block.0.layer.0.SelfAttention.q.bias".into(),
            Tensor::zeros([40], (Kind::Float, Device::Cpu)),
        );
    });
    let err = load_err(tmp.path());
    assert!(matches!(err, TextError::UnexpectedTensors { count: 1, .. }), "{err}");
    assert!(err.to_string().contains("SelfAttention.q.bias"), "{err}");
}

#[test]
fn non_gated_feed_forward_is_refused() {
    for (key, value) in [
        ("feed_forward_proj", "relu"),
        ("feed_forward_proj", "gated-silu"),
        ("dense_act_fn", "relu"),
    ] {
        let tmp = copy_folder("encoder");
        edit_config(tmp.path(), |c| {
            c.insert(key.into(), Value::String(value.into()));
        });
        let err = load_err(tmp.path());
        assert!(
            matches!(err, TextError::UnsupportedFeedForward { .. }),
            "{key}={value}: {err}"
        );
        assert!(
            err.to_string().contains(value) && err.to_string().contains("gated-gelu"),
            "{err}"
        );
    }
}

#[test]
fn bad_configs_and_folders_give_actionable_errors() {
    // A T5 (not umT5) config.
    let tmp = copy_folder("encoder");
    edit_config(tmp.path(), |c| {
        c.insert("model_type".into(), Value::String("t5".into()));
    });
    let err = load_err(tmp.path());
    assert!(
        matches!(err, TextError::Config { .. }) && err.to_string().contains("\"t5\""),
        "{err}"
    );

    // No config, no weights, a broken index, an unsupported dtype.
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(load_err(empty.path()), TextError::MissingConfig { .. }));
    std::fs::copy(golden("encoder/config.json"), empty.path().join("config.json")).unwrap();
    let err = load_err(empty.path());
    assert!(
        matches!(err, TextError::NoWeights { .. }) && err.to_string().contains("model.safetensors"),
        "{err}"
    );

    let tmp = copy_folder("encoder_bf16_sharded");
    std::fs::remove_file(tmp.path().join("model-00002-of-00003.safetensors")).unwrap();
    let err = load_err(tmp.path());
    assert!(matches!(err, TextError::BadIndex { .. }), "{err}");
    assert!(err.to_string().contains("model-00002-of-00003.safetensors"), "{err}");

    let err = Umt5Encoder::load(&golden("encoder"), Device::Cpu, Kind::Int64).unwrap_err();
    assert!(matches!(err, TextError::UnsupportedKind { .. }), "{err}");

    // A truncated file fails on its header, before any data is read.
    let tmp = copy_folder("encoder");
    let path = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_err(tmp.path());
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}

#[test]
fn bad_tokenizer_files_are_explained() {
    let empty = tempfile::tempdir().unwrap();
    let err = PromptTokenizer::load(empty.path()).unwrap_err();
    assert!(matches!(err, TextError::MissingTokenizer { .. }), "{err}");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");

    std::fs::write(empty.path().join("tokenizer.json"), "<html>not json</html>").unwrap();
    let err = PromptTokenizer::load(empty.path()).unwrap_err();
    assert!(
        matches!(err, TextError::BadTokenizer { .. }) && err.to_string().contains("not JSON"),
        "{err}"
    );

    // JSON, but a BPE model: not a T5 tokenizer.
    std::fs::write(
        empty.path().join("tokenizer.json"),
        r#"{"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}}"#,
    )
    .unwrap();
    let err = PromptTokenizer::load(empty.path()).unwrap_err();
    assert!(err.to_string().contains("Unigram"), "{err}");

    // The file itself may be given; a tokenizer_config.json naming an unknown pad token fails.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(golden("tokenizer/tokenizer.json"), tmp.path().join("tokenizer.json")).unwrap();
    PromptTokenizer::load(&tmp.path().join("tokenizer.json")).unwrap();
    std::fs::write(tmp.path().join("tokenizer_config.json"), r#"{"pad_token": "[PAD]"}"#).unwrap();
    let err = PromptTokenizer::load(tmp.path()).unwrap_err();
    assert!(err.to_string().contains("[PAD]"), "{err}");
}

#[test]
fn mismatched_tokenizer_and_encoder_are_refused() {
    let tmp = copy_folder("encoder");
    edit_config(tmp.path(), |c| {
        c.insert("vocab_size".into(), Value::from(300));
    });
    edit_weights(tmp.path(), |t| {
        let shared = t["shared.weight"].narrow(0, 0, 300);
        t.insert("shared.weight".into(), shared);
    });
    let small = Umt5Encoder::load(tmp.path(), Device::Cpu, Kind::Float).unwrap();
    let err = wan_prompt_embeds(&tokenizer("tokenizer"), &small, &["x".to_string()], 8).unwrap_err();
    assert!(matches!(err, TextError::VocabMismatch { .. }), "{err}");
}
