//! The transformer's hyper-parameters as diffusers writes them to `config.json` (the
//! arguments of `WanTransformer3DModel.__init__`, diffusers 0.42.1), validated once here
//! so the model code can trust them. Only text-to-video Wan2.1 is supported: the
//! image-conditioned variants (I2V / FLF2V: `image_dim`, `added_kv_proj_dim`) and any
//! q/k norm other than diffusers' `rms_norm_across_heads` are refused with a message.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use surgery_core::cost::ModelShape;

/// Padded text length Wan's pipeline feeds the cross-attention (umT5 tokens). It is not
/// in `config.json`; the pipeline pads every prompt to it.
pub const WAN_TEXT_LEN: u32 = 512;

/// The one q/k normalisation diffusers implements (and we with it): RMSNorm over the full
/// width heads x head_dim, before the heads are split.
pub const QK_NORM_ACROSS_HEADS: &str = "rms_norm_across_heads";

/// The diffusers version whose numerics the model reproduces; written into saved configs.
pub const DIFFUSERS_VERSION: &str = "0.42.1";

/// `WanTransformer3DModel` hyper-parameters, field names as in diffusers' `config.json`.
/// Integers are `i64` because that is what tch takes for shapes; [`WanConfig::from_json`]
/// has checked they are positive and fit the `u32` of [`ModelShape`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WanConfig {
    /// (t, h, w) patch of the latent; the patch embedding is a Conv3d with this kernel
    /// and stride.
    pub patch_size: [i64; 3],
    pub num_attention_heads: i64,
    pub attention_head_dim: i64,
    pub in_channels: i64,
    /// diffusers' `out_channels or in_channels`, resolved at parse time.
    pub out_channels: i64,
    pub text_dim: i64,
    /// Width of the sinusoidal timestep embedding.
    pub freq_dim: i64,
    pub ffn_dim: i64,
    pub num_layers: i64,
    /// Whether the cross-attention input is layer-normed (`norm2`, with affine).
    pub cross_attn_norm: bool,
    pub qk_norm: Option<String>,
    pub eps: f64,
    /// Always `None` here (I2V is refused); kept so a saved config round-trips.
    pub image_dim: Option<i64>,
    /// Always `None` here (I2V is refused).
    pub added_kv_proj_dim: Option<i64>,
    /// Rows of the precomputed RoPE tables: the largest post-patch frames/height/width.
    pub rope_max_seq_len: i64,
    /// Only used by the image embedder, which we do not build; accepted and ignored.
    pub pos_embed_seq_len: Option<i64>,
}

/// What `config.json` may contain; missing keys take `__init__`'s defaults, as in
/// diffusers. Keys starting with `_` (`_class_name`, `_diffusers_version`, ...) are
/// bookkeeping and ignored; any other unknown key is refused, since it could change the
/// architecture in a way this code would silently get wrong.
#[derive(Debug, Deserialize)]
struct RawConfig {
    #[serde(default = "defaults::patch_size")]
    patch_size: Vec<i64>,
    #[serde(default = "defaults::num_attention_heads")]
    num_attention_heads: i64,
    #[serde(default = "defaults::attention_head_dim")]
    attention_head_dim: i64,
    #[serde(default = "defaults::channels")]
    in_channels: i64,
    #[serde(default = "defaults::out_channels")]
    out_channels: Option<i64>,
    #[serde(default = "defaults::text_dim")]
    text_dim: i64,
    #[serde(default = "defaults::freq_dim")]
    freq_dim: i64,
    #[serde(default = "defaults::ffn_dim")]
    ffn_dim: i64,
    #[serde(default = "defaults::num_layers")]
    num_layers: i64,
    #[serde(default = "defaults::cross_attn_norm")]
    cross_attn_norm: bool,
    #[serde(default = "defaults::qk_norm")]
    qk_norm: Option<String>,
    #[serde(default = "defaults::eps")]
    eps: f64,
    #[serde(default)]
    image_dim: Option<i64>,
    #[serde(default)]
    added_kv_proj_dim: Option<i64>,
    #[serde(default = "defaults::rope_max_seq_len")]
    rope_max_seq_len: i64,
    #[serde(default)]
    pos_embed_seq_len: Option<i64>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

/// `WanTransformer3DModel.__init__` defaults (diffusers 0.42.1).
mod defaults {
    pub fn patch_size() -> Vec<i64> {
        vec![1, 2, 2]
    }
    pub fn num_attention_heads() -> i64 {
        40
    }
    pub fn attention_head_dim() -> i64 {
        128
    }
    pub fn channels() -> i64 {
        16
    }
    pub fn out_channels() -> Option<i64> {
        Some(16)
    }
    pub fn text_dim() -> i64 {
        4096
    }
    pub fn freq_dim() -> i64 {
        256
    }
    pub fn ffn_dim() -> i64 {
        13824
    }
    pub fn num_layers() -> i64 {
        40
    }
    pub fn cross_attn_norm() -> bool {
        true
    }
    pub fn qk_norm() -> Option<String> {
        Some(super::QK_NORM_ACROSS_HEADS.to_string())
    }
    pub fn eps() -> f64 {
        1e-6
    }
    pub fn rope_max_seq_len() -> i64 {
        1024
    }
}

/// A `config.json` this code cannot run, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("config.json is not valid JSON for WanTransformer3DModel: {0}")]
    Json(String),
    #[error("config.json has keys WanTransformer3DModel (diffusers {DIFFUSERS_VERSION}) does not define: {0:?}")]
    UnknownKeys(Vec<String>),
    #[error(
        "image-conditioned Wan (I2V/FLF2V: image_dim = {image_dim:?}, added_kv_proj_dim = {added_kv_proj_dim:?}) \
         is not supported; use a text-to-video checkpoint"
    )]
    ImageConditioned {
        image_dim: Option<i64>,
        added_kv_proj_dim: Option<i64>,
    },
    #[error("qk_norm {0:?} is not supported; only {QK_NORM_ACROSS_HEADS:?} (what diffusers implements)")]
    QkNorm(Option<String>),
    #[error("{field} = {value} is invalid: {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
}

impl WanConfig {
    /// Parses and validates diffusers' `config.json` text.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| ConfigError::Json(e.to_string()))?;
        let unknown: Vec<String> = raw.other.keys().filter(|k| !k.starts_with('_')).cloned().collect();
        if !unknown.is_empty() {
            return Err(ConfigError::UnknownKeys(unknown));
        }
        let patch_size: [i64; 3] = raw.patch_size.clone().try_into().map_err(|_| ConfigError::Invalid {
            field: "patch_size",
            value: format!("{:?}", raw.patch_size),
            reason: "must have three entries (t, h, w)",
        })?;
        let cfg = WanConfig {
            patch_size,
            num_attention_heads: raw.num_attention_heads,
            attention_head_dim: raw.attention_head_dim,
            in_channels: raw.in_channels,
            // diffusers: `out_channels = out_channels or in_channels` (None and 0 alike).
            out_channels: raw.out_channels.filter(|&c| c != 0).unwrap_or(raw.in_channels),
            text_dim: raw.text_dim,
            freq_dim: raw.freq_dim,
            ffn_dim: raw.ffn_dim,
            num_layers: raw.num_layers,
            cross_attn_norm: raw.cross_attn_norm,
            qk_norm: raw.qk_norm,
            eps: raw.eps,
            image_dim: raw.image_dim,
            added_kv_proj_dim: raw.added_kv_proj_dim,
            rope_max_seq_len: raw.rope_max_seq_len,
            pos_embed_seq_len: raw.pos_embed_seq_len,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Wan2.1 T2V 1.3B (METHOD.md section 6), as in its diffusers `config.json`.
    /// A toy model of Wan's architecture (2 blocks, 2 heads of 12) for smoke tests and
    /// benchmark dry runs on a CPU.
    pub fn toy() -> Self {
        WanConfig {
            num_layers: 2,
            num_attention_heads: 2,
            attention_head_dim: 12,
            ffn_dim: 32,
            text_dim: 16,
            freq_dim: 16,
            ..Self::wan21_t2v_1_3b()
        }
    }

    pub fn wan21_t2v_1_3b() -> Self {
        WanConfig {
            patch_size: [1, 2, 2],
            num_attention_heads: 12,
            attention_head_dim: 128,
            in_channels: 16,
            out_channels: 16,
            text_dim: 4096,
            freq_dim: 256,
            ffn_dim: 8960,
            num_layers: 30,
            cross_attn_norm: true,
            qk_norm: Some(QK_NORM_ACROSS_HEADS.to_string()),
            eps: 1e-6,
            image_dim: None,
            added_kv_proj_dim: None,
            rope_max_seq_len: 1024,
            pos_embed_seq_len: None,
        }
    }

    /// Checks everything the model code relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.image_dim.is_some() || self.added_kv_proj_dim.is_some() {
            return Err(ConfigError::ImageConditioned {
                image_dim: self.image_dim,
                added_kv_proj_dim: self.added_kv_proj_dim,
            });
        }
        if self.qk_norm.as_deref() != Some(QK_NORM_ACROSS_HEADS) {
            return Err(ConfigError::QkNorm(self.qk_norm.clone()));
        }
        let invalid = |field: &'static str, value: String, reason: &'static str| {
            Err(ConfigError::Invalid { field, value, reason })
        };
        let max = i64::from(u32::MAX);
        for (field, value) in [
            ("num_attention_heads", self.num_attention_heads),
            ("attention_head_dim", self.attention_head_dim),
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("text_dim", self.text_dim),
            ("freq_dim", self.freq_dim),
            ("ffn_dim", self.ffn_dim),
            ("rope_max_seq_len", self.rope_max_seq_len),
        ] {
            if !(1..=max).contains(&value) {
                return invalid(field, value.to_string(), "must be a positive 32-bit integer");
            }
        }
        if !(0..=max).contains(&self.num_layers) {
            return invalid(
                "num_layers",
                self.num_layers.to_string(),
                "must be a non-negative 32-bit integer",
            );
        }
        if self.patch_size.iter().any(|p| !(1..=max).contains(p)) {
            return invalid(
                "patch_size",
                format!("{:?}", self.patch_size),
                "entries must be positive",
            );
        }
        // Each RoPE axis rotates channel pairs; get_1d_rotary_pos_embed asserts even dims,
        // and t_dim = d - 2 * 2 * (d / 6) is even exactly when d is.
        if self.attention_head_dim % 2 != 0 {
            return invalid(
                "attention_head_dim",
                self.attention_head_dim.to_string(),
                "must be even (RoPE pairs)",
            );
        }
        // half = freq_dim / 2 divides the exponent; freq_dim 1 would divide by zero.
        if self.freq_dim < 2 {
            return invalid("freq_dim", self.freq_dim.to_string(), "must be at least 2");
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return invalid("eps", self.eps.to_string(), "must be a positive number");
        }
        Ok(())
    }

    /// Model width C = heads x head_dim (diffusers' `inner_dim`).
    pub fn dim(&self) -> i64 {
        self.num_attention_heads * self.attention_head_dim
    }

    /// RoPE channels per axis (t, h, w) of one head: h = w = 2 (d / 6), t = the rest
    /// (44/42/42 for d = 128).
    pub fn rope_split(&self) -> [i64; 3] {
        let hw = 2 * (self.attention_head_dim / 6);
        [self.attention_head_dim - 2 * hw, hw, hw]
    }

    /// Latent elements per patch and channel (p_t p_h p_w).
    pub fn patch_volume(&self) -> i64 {
        self.patch_size.iter().product()
    }

    /// The shape the cost model needs, with Wan's padded text length.
    pub fn shape(&self) -> ModelShape {
        self.shape_with_text_len(WAN_TEXT_LEN)
    }

    /// The shape the cost model needs, for a given padded text length.
    pub fn shape_with_text_len(&self, text_len: u32) -> ModelShape {
        // `validate` bounded every field to 1..=u32::MAX (num_layers to 0..=u32::MAX).
        let u = |v: i64| u32::try_from(v).expect("validated to fit u32");
        ModelShape {
            layers: u(self.num_layers),
            heads: u(self.num_attention_heads),
            head_dim: u(self.attention_head_dim),
            ffn_dim: u(self.ffn_dim),
            text_dim: u(self.text_dim),
            text_len,
            in_channels: u(self.in_channels),
            out_channels: u(self.out_channels),
            patch: self.patch_size.map(u),
            freq_dim: u(self.freq_dim),
        }
    }

    /// diffusers' `config.json` text for this configuration (with `_class_name` and
    /// `_diffusers_version`, so `WanTransformer3DModel.from_pretrained` accepts it).
    pub fn to_json(&self) -> String {
        let mut value = serde_json::to_value(self).expect("WanConfig serialises");
        let map = value.as_object_mut().expect("a struct serialises to an object");
        map.insert("_class_name".into(), "WanTransformer3DModel".into());
        map.insert("_diffusers_version".into(), DIFFUSERS_VERSION.into());
        let sorted: BTreeMap<_, _> = map.iter().collect();
        serde_json::to_string_pretty(&sorted).expect("JSON values serialise") + "\n"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Wan2.1-T2V-1.3B-Diffusers transformer config.json as published (no
    /// `pos_embed_seq_len`: older diffusers did not write it).
    const WAN_1_3B_JSON: &str = r#"{
      "_class_name": "WanTransformer3DModel",
      "_diffusers_version": "0.33.0.dev0",
      "added_kv_proj_dim": null,
      "attention_head_dim": 128,
      "cross_attn_norm": true,
      "eps": 1e-06,
      "ffn_dim": 8960,
      "freq_dim": 256,
      "image_dim": null,
      "in_channels": 16,
      "num_attention_heads": 12,
      "num_layers": 30,
      "out_channels": 16,
      "patch_size": [1, 2, 2],
      "qk_norm": "rms_norm_across_heads",
      "rope_max_seq_len": 1024,
      "text_dim": 4096
    }"#;

    #[test]
    fn parses_the_published_1_3b_config() {
        let cfg = WanConfig::from_json(WAN_1_3B_JSON).unwrap();
        assert_eq!(cfg, WanConfig::wan21_t2v_1_3b());
        assert_eq!(cfg.dim(), 1536);
        assert_eq!(cfg.rope_split(), [44, 42, 42]);
        assert_eq!(cfg.shape(), ModelShape::wan21_1_3b());
    }

    #[test]
    fn round_trips_through_to_json() {
        let cfg = WanConfig::wan21_t2v_1_3b();
        let text = cfg.to_json();
        assert!(text.contains("\"_class_name\": \"WanTransformer3DModel\""));
        assert_eq!(WanConfig::from_json(&text).unwrap(), cfg);
    }

    #[test]
    fn null_out_channels_means_in_channels() {
        let text = WAN_1_3B_JSON.replace("\"out_channels\": 16", "\"out_channels\": null");
        assert_eq!(WanConfig::from_json(&text).unwrap().out_channels, 16);
    }

    #[test]
    fn refuses_image_conditioning() {
        let text = WAN_1_3B_JSON.replace("\"image_dim\": null", "\"image_dim\": 1280");
        let err = WanConfig::from_json(&text).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::ImageConditioned {
                    image_dim: Some(1280),
                    ..
                }
            ),
            "{err}"
        );
        let text = WAN_1_3B_JSON.replace("\"added_kv_proj_dim\": null", "\"added_kv_proj_dim\": 5120");
        assert!(
            WanConfig::from_json(&text)
                .unwrap_err()
                .to_string()
                .contains("not supported")
        );
    }

    #[test]
    fn refuses_other_qk_norms_and_unknown_keys() {
        let text = WAN_1_3B_JSON.replace("\"rms_norm_across_heads\"", "\"rms_norm\"");
        assert_eq!(
            WanConfig::from_json(&text).unwrap_err(),
            ConfigError::QkNorm(Some("rms_norm".into()))
        );
        let text = WAN_1_3B_JSON.replace("\"eps\"", "\"window_size\": [-1, -1], \"eps\"");
        assert_eq!(
            WanConfig::from_json(&text).unwrap_err(),
            ConfigError::UnknownKeys(vec!["window_size".into()])
        );
    }

    #[test]
    fn refuses_invalid_sizes() {
        let text = WAN_1_3B_JSON.replace("\"attention_head_dim\": 128", "\"attention_head_dim\": 127");
        assert!(matches!(
            WanConfig::from_json(&text).unwrap_err(),
            ConfigError::Invalid {
                field: "attention_head_dim",
                ..
            }
        ));
        let text = WAN_1_3B_JSON.replace("[1, 2, 2]", "[1, 2]");
        assert!(matches!(
            WanConfig::from_json(&text).unwrap_err(),
            ConfigError::Invalid {
                field: "patch_size",
                ..
            }
        ));
    }
}
