//! transformers' `UMT5EncoderModel` (transformers 5.24, models/umt5/modeling_umt5.py) in
//! tch, matching it to fp32 rounding and mirroring its reduced-precision casts.
//!
//! Per layer: `x + SelfAttention(T5LayerNorm(x))`, then `x + GatedGelu(T5LayerNorm(x))`;
//! then a final T5LayerNorm. Unlike T5, where only block 0 owns a relative position bias
//! and the others reuse it, every umT5 layer has its own `relative_attention_bias`, looked
//! up with T5's bidirectional log buckets. Scores are not scaled by 1/sqrt(d_kv). The
//! attention is transformers' default ("sdpa"): the bias and the padding mask (masked keys
//! at `finfo(dtype).min`) form one additive float mask given to LibTorch's
//! `scaled_dot_product_attention` with `scale = 1`, the same ATen call, so the softmax is
//! LibTorch's. T5LayerNorm is RMSNorm without mean subtraction, its variance in fp32, the
//! result cast to the weight's dtype when that is bf16/fp16. The FFN is
//! `wo(gelu_new(wi_0 x) * wi_1 x)` (tanh GELU written out as transformers does), its
//! input cast to `wo`'s dtype. No biases, no dropout (inference).
//!
//! Loading reads a transformers folder: config.json plus `model.safetensors` or the shards
//! of `model.safetensors.index.json`, fp32/bf16/fp16 files, into fp32, bf16 or fp16.
//! transformers keeps `_keep_in_fp32_modules = ["wo"]` in fp32 only for an fp16 model (in
//! bf16 every weight is bf16); so do we, and the residual stream then turns fp32 after the
//! first FFN, as in transformers. Every header is checked (missing, unexpected, mis-shaped
//! tensors, dtypes) before any tensor data is read. `encoder.embed_tokens.weight` is tied
//! to `shared.weight` and may be absent; a full umT5 checkpoint's `decoder.*` and
//! `lm_head.*` tensors are skipped. Tensors are plain (no autograd variables): the text
//! encoder is frozen, so run it under `tch::no_grad`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use super::TextError;
use crate::model::weights::{kind_of, read_header};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// The input embedding, tied to `shared.weight` (read when `shared.weight` is absent).
const TIED_EMBEDDING: &str = "encoder.embed_tokens.weight";
const SHARED_EMBEDDING: &str = "shared.weight";
/// Prefixes of a full encoder-decoder checkpoint that the encoder does not use.
const SKIPPED_PREFIXES: [&str; 2] = ["decoder.", "lm_head."];
/// How many names an error lists before "and N more".
const LISTED: usize = 5;

/// The encoder's hyper-parameters from transformers' config.json.
#[derive(Debug, Clone, PartialEq)]
pub struct Umt5Config {
    pub vocab_size: i64,
    pub d_model: i64,
    pub d_kv: i64,
    pub d_ff: i64,
    pub num_layers: i64,
    pub num_heads: i64,
    pub relative_attention_num_buckets: i64,
    pub relative_attention_max_distance: i64,
    pub layer_norm_epsilon: f64,
}

/// config.json as written by transformers; missing keys take `UMT5Config`'s defaults.
#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    #[serde(default = "defaults::vocab_size")]
    vocab_size: i64,
    #[serde(default = "defaults::d_model")]
    d_model: i64,
    #[serde(default = "defaults::d_kv")]
    d_kv: i64,
    #[serde(default = "defaults::d_ff")]
    d_ff: i64,
    #[serde(default = "defaults::num_layers")]
    num_layers: i64,
    #[serde(default = "defaults::num_heads")]
    num_heads: i64,
    #[serde(default = "defaults::buckets")]
    relative_attention_num_buckets: i64,
    #[serde(default = "defaults::max_distance")]
    relative_attention_max_distance: i64,
    #[serde(default = "defaults::eps")]
    layer_norm_epsilon: f64,
    #[serde(default = "defaults::feed_forward_proj")]
    feed_forward_proj: String,
    dense_act_fn: Option<String>,
    #[serde(default)]
    is_decoder: bool,
}

/// transformers' `UMT5Config` defaults.
mod defaults {
    pub fn vocab_size() -> i64 {
        250112
    }
    pub fn d_model() -> i64 {
        512
    }
    pub fn d_kv() -> i64 {
        64
    }
    pub fn d_ff() -> i64 {
        1024
    }
    pub fn num_layers() -> i64 {
        8
    }
    pub fn num_heads() -> i64 {
        6
    }
    pub fn buckets() -> i64 {
        32
    }
    pub fn max_distance() -> i64 {
        128
    }
    pub fn eps() -> f64 {
        1e-6
    }
    pub fn feed_forward_proj() -> String {
        "gated-gelu".into()
    }
}

impl Umt5Config {
    /// Reads and validates `<dir>/config.json`.
    pub fn read(dir: &Path) -> Result<Self, TextError> {
        let path = dir.join(CONFIG_FILE);
        if !path.is_file() {
            return Err(TextError::MissingConfig { dir: dir.to_path_buf() });
        }
        let text = std::fs::read_to_string(&path).map_err(|source| TextError::Io {
            path: path.clone(),
            source,
        })?;
        Self::from_json(&text, &path)
    }

    /// Parses and validates config.json's text (`path` is for messages).
    pub fn from_json(text: &str, path: &Path) -> Result<Self, TextError> {
        let bad = |reason: String| TextError::Config {
            path: path.to_path_buf(),
            reason,
        };
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        if let Some(model_type) = raw.model_type.as_deref().filter(|t| *t != "umt5") {
            return Err(bad(format!(
                "model_type {model_type:?} is not \"umt5\" (T5 and mT5 share one position bias across layers; \
                 this encoder is umT5's, with one per layer)"
            )));
        }
        if raw.feed_forward_proj != "gated-gelu" {
            return Err(TextError::UnsupportedFeedForward {
                path: path.to_path_buf(),
                found: raw.feed_forward_proj,
            });
        }
        // transformers derives dense_act_fn from feed_forward_proj ("gelu_new" here) and
        // ignores the stored one; a different stored value contradicts it, so refuse.
        if let Some(act) = raw.dense_act_fn.filter(|a| a != "gelu_new") {
            return Err(TextError::UnsupportedFeedForward {
                path: path.to_path_buf(),
                found: format!("gated-gelu with dense_act_fn {act:?}"),
            });
        }
        if raw.is_decoder {
            return Err(bad("is_decoder is true: this is an encoder".into()));
        }
        let dims = [
            ("vocab_size", raw.vocab_size),
            ("d_model", raw.d_model),
            ("d_kv", raw.d_kv),
            ("d_ff", raw.d_ff),
            ("num_layers", raw.num_layers),
            ("num_heads", raw.num_heads),
        ];
        if let Some((name, value)) = dims.iter().find(|(_, v)| *v < 1) {
            return Err(bad(format!("{name} is {value}; it must be positive")));
        }
        // Bidirectional buckets: half per direction, half of those exact.
        let max_exact = raw.relative_attention_num_buckets / 4;
        if max_exact < 1 || raw.relative_attention_max_distance <= max_exact {
            return Err(bad(format!(
                "relative_attention_num_buckets {} and relative_attention_max_distance {} leave no log-spaced buckets \
                 (need num_buckets >= 4 and max_distance > num_buckets / 4)",
                raw.relative_attention_num_buckets, raw.relative_attention_max_distance
            )));
        }
        if !(raw.layer_norm_epsilon >= 0.0 && raw.layer_norm_epsilon.is_finite()) {
            return Err(bad(format!(
                "layer_norm_epsilon {} is not a non-negative number",
                raw.layer_norm_epsilon
            )));
        }
        Ok(Umt5Config {
            vocab_size: raw.vocab_size,
            d_model: raw.d_model,
            d_kv: raw.d_kv,
            d_ff: raw.d_ff,
            num_layers: raw.num_layers,
            num_heads: raw.num_heads,
            relative_attention_num_buckets: raw.relative_attention_num_buckets,
            relative_attention_max_distance: raw.relative_attention_max_distance,
            layer_norm_epsilon: raw.layer_norm_epsilon,
        })
    }

    /// The checkpoint tensors the encoder needs, by name, with their shapes.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<i64>)> {
        let (model, inner, ff) = (self.d_model, self.num_heads * self.d_kv, self.d_ff);
        let mut shapes = vec![(SHARED_EMBEDDING.to_string(), vec![self.vocab_size, model])];
        for i in 0..self.num_layers {
            let attention = format!("encoder.block.{i}.layer.0");
            let ffn = format!("encoder.block.{i}.layer.1");
            shapes.extend([
                (format!("{attention}.SelfAttention.q.weight"), vec![inner, model]),
                (format!("{attention}.SelfAttention.k.weight"), vec![inner, model]),
                (format!("{attention}.SelfAttention.v.weight"), vec![inner, model]),
                (format!("{attention}.SelfAttention.o.weight"), vec![model, inner]),
                (
                    format!("{attention}.SelfAttention.relative_attention_bias.weight"),
                    vec![self.relative_attention_num_buckets, self.num_heads],
                ),
                (format!("{attention}.layer_norm.weight"), vec![model]),
                (format!("{ffn}.DenseReluDense.wi_0.weight"), vec![ff, model]),
                (format!("{ffn}.DenseReluDense.wi_1.weight"), vec![ff, model]),
                (format!("{ffn}.DenseReluDense.wo.weight"), vec![model, ff]),
                (format!("{ffn}.layer_norm.weight"), vec![model]),
            ]);
        }
        shapes.push(("encoder.final_layer_norm.weight".into(), vec![model]));
        shapes
    }
}

/// The dtype tensor `name` gets in an encoder loaded as `kind`: transformers keeps
/// `_keep_in_fp32_modules = ["wo"]` fp32 for fp16 only, matching the pattern anywhere in
/// the name (an unanchored regex search), which in umT5 selects exactly the `wo` weights.
pub fn param_kind(name: &str, kind: Kind) -> Kind {
    if kind == Kind::Half && name.contains("wo") {
        Kind::Float
    } else {
        kind
    }
}

/// `torch.finfo(kind).min`: transformers' value for a masked key.
fn finfo_min(kind: Kind) -> f64 {
    match kind {
        Kind::Half => -65504.0,
        Kind::BFloat16 => -3.3895313892515355e38,
        Kind::Double => f64::MIN,
        _ => f32::MIN as f64,
    }
}

/// `UMT5LayerNorm` (T5LayerNorm): x / sqrt(mean(x^2) + eps) * weight, the statistics in
/// fp32, the normalised x cast to the weight's dtype when that is fp16/bf16.
#[derive(Debug)]
struct T5LayerNorm {
    weight: Tensor,
    eps: f64,
}

impl T5LayerNorm {
    fn forward(&self, x: &Tensor) -> Tensor {
        let variance = x.to_kind(Kind::Float).pow_tensor_scalar(2).mean_dim(-1, true, None);
        let normed = x * (variance + self.eps).rsqrt();
        let normed = match self.weight.kind() {
            Kind::Half | Kind::BFloat16 => normed.to_kind(self.weight.kind()),
            _ => normed,
        };
        &self.weight * normed
    }
}

/// `UMT5Attention` of the encoder (self-attention with its own position bias).
#[derive(Debug)]
struct SelfAttention {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    /// [num_buckets, num_heads]
    relative_attention_bias: Tensor,
    num_heads: i64,
    d_kv: i64,
}

impl SelfAttention {
    /// x [B, L, d_model], buckets [L, L] (i64), keep [B, 1, 1, L] (bool, false = padding)
    /// -> [B, L, d_model].
    fn forward(&self, x: &Tensor, buckets: &Tensor, keep: &Tensor) -> Tensor {
        let (batch, len, _) = x.size3().expect("hidden states are [B, L, d_model]");
        let heads = |w: &Tensor| {
            x.linear::<&Tensor>(w, None)
                .view([batch, -1, self.num_heads, self.d_kv])
                .transpose(1, 2)
        };
        let (q, k, v) = (heads(&self.q), heads(&self.k), heads(&self.v)); // [B, H, L, d_kv]
        // compute_bias: [L, L, H] -> [1, H, L, L]
        let bias = Tensor::embedding(&self.relative_attention_bias, buckets, -1, false, false)
            .permute([2, 0, 1])
            .unsqueeze(0);
        // sdpa_attention_forward's create_position_bias_mask: bias where attended, min elsewhere.
        let mask = bias.where_scalarother(keep, finfo_min(k.kind())).contiguous();
        let attended = Tensor::scaled_dot_product_attention(&q, &k, &v, Some(&mask), 0.0, false, Some(1.0), false);
        let attended = attended.transpose(1, 2).contiguous().reshape([batch, len, -1]);
        attended.linear::<&Tensor>(&self.o, None)
    }
}

/// `UMT5DenseGatedActDense`: wo(gelu_new(wi_0 x) * wi_1 x).
#[derive(Debug)]
struct GatedGeluFfn {
    wi_0: Tensor,
    wi_1: Tensor,
    wo: Tensor,
}

impl GatedGeluFfn {
    fn forward(&self, x: &Tensor) -> Tensor {
        let gate = gelu_new(&x.linear::<&Tensor>(&self.wi_0, None));
        let linear = x.linear::<&Tensor>(&self.wi_1, None);
        let hidden = gate * linear;
        // `wo` may be fp32 in an fp16 model (_keep_in_fp32_modules).
        let hidden = if hidden.kind() != self.wo.kind() {
            hidden.to_kind(self.wo.kind())
        } else {
            hidden
        };
        hidden.linear::<&Tensor>(&self.wo, None)
    }
}

/// transformers' `NewGELUActivation`, op for op:
/// 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))).
fn gelu_new(x: &Tensor) -> Tensor {
    let inner = (x + x.pow_tensor_scalar(3.0) * 0.044715) * (2.0 / std::f64::consts::PI).sqrt();
    (x * 0.5) * (inner.tanh() + 1.0)
}

/// transformers' fp16 guard after each sub-layer: clamp to the fp16 range (1000 less when
/// an inf appeared). A no-op for other dtypes.
fn clamp_fp16(x: Tensor) -> Tensor {
    if x.kind() != Kind::Half {
        return x;
    }
    let max = 65504.0;
    let bound = Tensor::where_scalar(&x.isinf().any(), max - 1000.0, max);
    let lower = -&bound;
    x.clamp_tensor(Some(&lower), Some(&bound))
}

#[derive(Debug)]
struct Block {
    attention_norm: T5LayerNorm,
    attention: SelfAttention,
    ffn_norm: T5LayerNorm,
    ffn: GatedGeluFfn,
}

impl Block {
    fn forward(&self, x: &Tensor, buckets: &Tensor, keep: &Tensor) -> Tensor {
        let x = clamp_fp16(x + self.attention.forward(&self.attention_norm.forward(x), buckets, keep));
        clamp_fp16(&x + self.ffn.forward(&self.ffn_norm.forward(&x)))
    }
}

/// T5's bidirectional relative-position buckets for a length-`len` sequence on `device`:
/// [L, L] i64, entry (query i, key j) the bucket of j - i. transformers'
/// `_relative_position_bucket` op for op (the log in fp32, truncated to an integer).
pub fn relative_position_buckets(len: i64, config: &Umt5Config, device: Device) -> Tensor {
    let positions = Tensor::arange(len, (Kind::Int64, device));
    let relative = positions.unsqueeze(0) - positions.unsqueeze(1); // memory - context
    let num_buckets = config.relative_attention_num_buckets / 2;
    let direction = relative.gt(0).to_kind(Kind::Int64) * num_buckets;
    let distance = relative.abs();
    let max_exact = num_buckets / 2;
    let is_small = distance.lt(max_exact);
    let log_ratio = (distance.to_kind(Kind::Float) / max_exact).log()
        / (config.relative_attention_max_distance as f64 / max_exact as f64).ln();
    let log_ratio = log_ratio * (num_buckets - max_exact);
    let large = log_ratio.to_kind(Kind::Int64) + max_exact;
    let large = large.minimum(&large.full_like(num_buckets - 1));
    direction + distance.where_self(&is_small, &large)
}

/// The umT5 encoder, loaded for inference (module doc).
#[derive(Debug)]
pub struct Umt5Encoder {
    config: Umt5Config,
    shared: Tensor,
    blocks: Vec<Block>,
    final_norm: T5LayerNorm,
    device: Device,
    kind: Kind,
}

impl Umt5Encoder {
    /// Loads the encoder in `dir` (a transformers folder: config.json + safetensors) onto
    /// `device` as `kind` (`Kind::Float`, `Kind::BFloat16` or `Kind::Half`).
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self, TextError> {
        if !matches!(kind, Kind::Float | Kind::BFloat16 | Kind::Half) {
            return Err(TextError::UnsupportedKind { kind });
        }
        let config = Umt5Config::read(dir)?;
        let tensors = load_tensors(dir, &config, device, kind)?;
        Ok(Self::from_tensors(config, tensors, device, kind))
    }

    /// An encoder of `config` with random weights (normal, std 0.02 for matrices, norm
    /// weights near 1) as `kind` on `device`: for benchmarks, where only the shapes matter.
    pub fn random(config: Umt5Config, device: Device, kind: Kind, seed: i64) -> Self {
        tch::manual_seed(seed);
        let tensors = tch::no_grad(|| {
            config
                .tensor_shapes()
                .into_iter()
                .map(|(name, shape)| {
                    let t = if shape.len() == 1 {
                        Tensor::ones(shape.as_slice(), (Kind::Float, device))
                    } else {
                        Tensor::randn(shape.as_slice(), (Kind::Float, device)) * 0.02
                    };
                    let kind = param_kind(&name, kind);
                    (name, t.to_kind(kind))
                })
                .collect()
        });
        Self::from_tensors(config, tensors, device, kind)
    }

    /// Assembles the encoder from every tensor [`Umt5Config::tensor_shapes`] names.
    fn from_tensors(config: Umt5Config, mut tensors: BTreeMap<String, Tensor>, device: Device, kind: Kind) -> Self {
        let mut take = |name: String| tensors.remove(&name).expect("every tensor was checked before loading");
        let norm = |weight: Tensor| T5LayerNorm {
            weight,
            eps: config.layer_norm_epsilon,
        };
        let shared = take(SHARED_EMBEDDING.into());
        let mut blocks = Vec::with_capacity(config.num_layers as usize);
        for i in 0..config.num_layers {
            let attention = format!("encoder.block.{i}.layer.0");
            let ffn = format!("encoder.block.{i}.layer.1");
            blocks.push(Block {
                attention_norm: norm(take(format!("{attention}.layer_norm.weight"))),
                attention: SelfAttention {
                    q: take(format!("{attention}.SelfAttention.q.weight")),
                    k: take(format!("{attention}.SelfAttention.k.weight")),
                    v: take(format!("{attention}.SelfAttention.v.weight")),
                    o: take(format!("{attention}.SelfAttention.o.weight")),
                    relative_attention_bias: take(format!("{attention}.SelfAttention.relative_attention_bias.weight")),
                    num_heads: config.num_heads,
                    d_kv: config.d_kv,
                },
                ffn_norm: norm(take(format!("{ffn}.layer_norm.weight"))),
                ffn: GatedGeluFfn {
                    wi_0: take(format!("{ffn}.DenseReluDense.wi_0.weight")),
                    wi_1: take(format!("{ffn}.DenseReluDense.wi_1.weight")),
                    wo: take(format!("{ffn}.DenseReluDense.wo.weight")),
                },
            });
        }
        let final_norm = norm(take("encoder.final_layer_norm.weight".into()));
        Umt5Encoder {
            config,
            shared,
            blocks,
            final_norm,
            device,
            kind,
        }
    }

    pub fn config(&self) -> &Umt5Config {
        &self.config
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// The dtype it was loaded as (that of its output).
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// `UMT5EncoderModel(input_ids, attention_mask).last_hidden_state`: ids [B, L] (i64),
    /// mask [B, L] (nonzero = token, 0 = padding; any integer or bool dtype), on any
    /// device -> [B, L, d_model] in the encoder's dtype on its device. Padded positions
    /// get values too (they attend to the tokens); callers ignore them.
    ///
    /// Panics if the shapes disagree or an id is outside the vocabulary.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Tensor {
        let (batch, len) = ids.size2().expect("ids are [B, L]");
        assert_eq!(mask.size(), [batch, len], "mask must have the shape of ids [B, L]");
        let ids = ids.to_device(self.device).to_kind(Kind::Int64);
        if ids.numel() > 0 {
            let (low, high) = (ids.min().int64_value(&[]), ids.max().int64_value(&[]));
            assert!(
                low >= 0 && high < self.config.vocab_size,
                "token ids span {low}..={high}, outside the vocabulary of {}",
                self.config.vocab_size
            );
        }
        let keep = mask.to_device(self.device).ne(0).view([batch, 1, 1, len]);
        let buckets = relative_position_buckets(len, &self.config, self.device);
        let hidden = Tensor::embedding(&self.shared, &ids, -1, false, false);
        let hidden = self
            .blocks
            .iter()
            .fold(hidden, |h, block| block.forward(&h, &buckets, &keep));
        self.final_norm.forward(&hidden)
    }
}

/// The weight files of a folder: the index's shards, else the single file.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, TextError> {
    let index = dir.join(INDEX_FILE);
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|source| TextError::Io {
            path: index.clone(),
            source,
        })?;
        let bad = |reason: String| TextError::BadIndex {
            path: index.clone(),
            reason,
        };
        return crate::model::weights::index_shards(dir, &text).map_err(bad);
    }
    let single = dir.join(WEIGHTS_FILE);
    if single.is_file() {
        Ok(vec![single])
    } else {
        Err(TextError::NoWeights { dir: dir.to_path_buf() })
    }
}

fn listed(names: &[String], count: usize) -> String {
    let mut text = names.iter().take(LISTED).cloned().collect::<Vec<_>>().join(", ");
    if count > LISTED {
        text += &format!(" and {} more", count - LISTED);
    }
    text
}

/// Checks every header against `config`, then reads the tensors the encoder needs, one
/// file at a time, each converted to [`param_kind`] on `device`. Keys are the checkpoint
/// names of [`Umt5Config::tensor_shapes`] (the tied embedding under `shared.weight`).
fn load_tensors(
    dir: &Path,
    config: &Umt5Config,
    device: Device,
    kind: Kind,
) -> Result<BTreeMap<String, Tensor>, TextError> {
    let files = weight_files(dir)?;
    let mut headers = Vec::with_capacity(files.len());
    for path in &files {
        headers.push(read_header(path)?);
    }
    let location = crate::model::weights::locate(&headers).map_err(|(name, first, second)| TextError::Duplicate {
        name,
        first: files[first].clone(),
        second: files[second].clone(),
    })?;

    let expected: BTreeMap<String, Vec<i64>> = config.tensor_shapes().into_iter().collect();
    // Which checkpoint tensor fills each expected one: the embedding may be stored only
    // under its tied name.
    let source = |name: &str| -> String {
        if name == SHARED_EMBEDDING && !location.contains_key(SHARED_EMBEDDING) && location.contains_key(TIED_EMBEDDING)
        {
            TIED_EMBEDDING.to_string()
        } else {
            name.to_string()
        }
    };
    let missing: Vec<String> = expected
        .keys()
        .filter(|name| !location.contains_key(source(name).as_str()))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(TextError::MissingTensors {
            dir: dir.to_path_buf(),
            count: missing.len(),
            names: listed(&missing, missing.len()),
        });
    }
    let unexpected: Vec<String> = location
        .keys()
        .filter(|name| !expected.contains_key(**name) && **name != TIED_EMBEDDING)
        .filter(|name| !SKIPPED_PREFIXES.iter().any(|p| name.starts_with(p)))
        .map(|name| name.to_string())
        .collect();
    if !unexpected.is_empty() {
        return Err(TextError::UnexpectedTensors {
            dir: dir.to_path_buf(),
            count: unexpected.len(),
            names: listed(&unexpected, unexpected.len()),
        });
    }
    // Expected name -> checkpoint name, checked for shape and dtype.
    let mut wanted: BTreeMap<String, String> = BTreeMap::new();
    for (name, shape) in &expected {
        let stored = source(name);
        let (file, info) = location[stored.as_str()];
        let found: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        if &found != shape {
            return Err(TextError::ShapeMismatch {
                name: stored,
                file: files[file].clone(),
                expected: shape.clone(),
                found,
            });
        }
        if kind_of(info.dtype).is_none() {
            return Err(TextError::UnsupportedDtype {
                name: stored,
                file: files[file].clone(),
                dtype: format!("{:?}", info.dtype),
            });
        }
        wanted.insert(stored, name.clone());
    }

    let mut tensors = BTreeMap::new();
    for path in &files {
        let corrupt = |reason: String| TextError::Corrupt {
            path: path.clone(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|source| TextError::Io {
            path: path.clone(),
            source,
        })?;
        let file = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(e.to_string()))?;
        for (stored, view) in file.iter() {
            let Some(name) = wanted.get(stored) else { continue };
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            let file_kind = kind_of(view.dtype()).expect("dtypes checked above");
            let host = Tensor::f_from_data_size(view.data(), &shape, file_kind).map_err(|e| corrupt(e.to_string()))?;
            tensors.insert(
                name.clone(),
                host.to_device_(device, param_kind(name, kind), false, false),
            );
        }
    }
    Ok(tensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wo_stays_fp32_in_fp16_only() {
        let wo = "encoder.block.0.layer.1.DenseReluDense.wo.weight";
        assert_eq!(param_kind(wo, Kind::Half), Kind::Float);
        assert_eq!(param_kind(wo, Kind::BFloat16), Kind::BFloat16);
        assert_eq!(
            param_kind("encoder.block.0.layer.1.DenseReluDense.wi_0.weight", Kind::Half),
            Kind::Half
        );
        assert_eq!(param_kind("shared.weight", Kind::Half), Kind::Half);
    }

    #[test]
    fn tensor_names_cover_every_layer() {
        let config = Umt5Config {
            vocab_size: 10,
            d_model: 4,
            d_kv: 2,
            d_ff: 6,
            num_layers: 2,
            num_heads: 3,
            relative_attention_num_buckets: 8,
            relative_attention_max_distance: 16,
            layer_norm_epsilon: 1e-6,
        };
        let shapes: BTreeMap<String, Vec<i64>> = config.tensor_shapes().into_iter().collect();
        assert_eq!(shapes.len(), 2 + 2 * 10);
        assert_eq!(
            shapes["encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"],
            [8, 3]
        );
        assert_eq!(shapes["encoder.block.0.layer.0.SelfAttention.o.weight"], [4, 6]);
    }
}
