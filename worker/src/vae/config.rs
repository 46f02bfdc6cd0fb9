//! The VAE's hyper-parameters as diffusers writes them to `config.json` (the arguments of
//! `AutoencoderKLWan.__init__`, diffusers 0.42.1), validated once here so the decoder can
//! trust them. Only the Wan2.1 architecture is supported: Wan2.2's residual up blocks
//! (`is_residual`) and patchified output (`patch_size` > 1) are refused with a message.
//! Keys the decoder does not use (`in_channels`, `attn_scales`, which only the encoder
//! reads, and `dropout`, inactive at inference) are accepted and kept.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `AutoencoderKLWan` hyper-parameters, field names as in diffusers' `config.json`.
/// [`VaeConfig::from_json`] has checked them (see [`VaeConfigError`]).
#[derive(Debug, Clone, PartialEq)]
pub struct VaeConfig {
    /// The encoder's base width; the decoder's too unless `decoder_base_dim` is set.
    pub base_dim: i64,
    pub decoder_base_dim: Option<i64>,
    /// Latent channels.
    pub z_dim: i64,
    /// Width multipliers per resolution level, encoder order (the decoder reverses them).
    pub dim_mult: Vec<i64>,
    pub num_res_blocks: i64,
    /// Encoder only; the decoder has no attention outside its mid block.
    pub attn_scales: Vec<f64>,
    /// Per encoder level whether it halves time; the decoder's up blocks double time in
    /// the reverse order.
    pub temperal_downsample: Vec<bool>,
    /// Inactive at inference.
    pub dropout: f64,
    /// Per-channel statistics of the latents: the transformer works on
    /// `(z - mean) / std`, and the decoder undoes it first.
    pub latents_mean: Vec<f64>,
    pub latents_std: Vec<f64>,
    /// Encoder only.
    pub in_channels: i64,
    /// Channels of the decoded video (3: RGB).
    pub out_channels: i64,
    /// Pixels per latent pixel along height and width (the up blocks' 2^(levels - 1)).
    pub scale_factor_spatial: i64,
    /// Frames per latent frame after the first (2 per temporal up block).
    pub scale_factor_temporal: i64,
}

/// What `config.json` may contain; missing keys take `__init__`'s defaults, as in
/// diffusers. Keys starting with `_` are bookkeeping and ignored; any other unknown key
/// is refused, since it could change the architecture in a way this code would get wrong.
#[derive(Debug, Deserialize)]
struct RawConfig {
    #[serde(default = "defaults::base_dim")]
    base_dim: i64,
    #[serde(default)]
    decoder_base_dim: Option<i64>,
    #[serde(default = "defaults::z_dim")]
    z_dim: i64,
    #[serde(default = "defaults::dim_mult")]
    dim_mult: Vec<i64>,
    #[serde(default = "defaults::num_res_blocks")]
    num_res_blocks: i64,
    #[serde(default)]
    attn_scales: Vec<f64>,
    #[serde(default = "defaults::temperal_downsample")]
    temperal_downsample: Vec<bool>,
    #[serde(default)]
    dropout: f64,
    #[serde(default = "defaults::latents_mean")]
    latents_mean: Vec<f64>,
    #[serde(default = "defaults::latents_std")]
    latents_std: Vec<f64>,
    #[serde(default)]
    is_residual: bool,
    #[serde(default = "defaults::channels")]
    in_channels: i64,
    #[serde(default = "defaults::channels")]
    out_channels: i64,
    #[serde(default)]
    patch_size: Option<i64>,
    #[serde(default = "defaults::scale_factor_temporal")]
    scale_factor_temporal: Option<i64>,
    #[serde(default = "defaults::scale_factor_spatial")]
    scale_factor_spatial: Option<i64>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

/// `AutoencoderKLWan.__init__` defaults (diffusers 0.42.1): Wan2.1's VAE.
mod defaults {
    pub fn base_dim() -> i64 {
        96
    }
    pub fn z_dim() -> i64 {
        16
    }
    pub fn dim_mult() -> Vec<i64> {
        vec![1, 2, 4, 4]
    }
    pub fn num_res_blocks() -> i64 {
        2
    }
    pub fn temperal_downsample() -> Vec<bool> {
        vec![false, true, true]
    }
    pub fn latents_mean() -> Vec<f64> {
        vec![
            -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517, -0.3632,
            -0.1922, -0.9497, 0.2503, -0.2921,
        ]
    }
    pub fn latents_std() -> Vec<f64> {
        vec![
            2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579, 1.6382,
            1.1253, 2.8251, 1.9160,
        ]
    }
    pub fn channels() -> i64 {
        3
    }
    pub fn scale_factor_temporal() -> Option<i64> {
        Some(4)
    }
    pub fn scale_factor_spatial() -> Option<i64> {
        Some(8)
    }
}

/// A VAE `config.json` this code cannot run, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VaeConfigError {
    #[error("config.json is not valid JSON for AutoencoderKLWan: {0}")]
    Json(String),
    #[error("config.json has keys AutoencoderKLWan (diffusers 0.42.1) does not define: {0:?}")]
    UnknownKeys(Vec<String>),
    #[error(
        "{what}: this is a Wan2.2 VAE, which is not supported; use a Wan2.1 VAE \
         (e.g. the vae folder of Wan-AI/Wan2.1-T2V-1.3B-Diffusers)"
    )]
    Wan22 { what: String },
    #[error("config.json: {0}")]
    Invalid(String),
}

impl VaeConfig {
    /// Parses diffusers' `config.json` for `AutoencoderKLWan` and checks it.
    pub fn from_json(text: &str) -> Result<Self, VaeConfigError> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| VaeConfigError::Json(e.to_string()))?;
        let unknown: Vec<String> = raw.other.keys().filter(|k| !k.starts_with('_')).cloned().collect();
        if !unknown.is_empty() {
            return Err(VaeConfigError::UnknownKeys(unknown));
        }
        if raw.is_residual {
            return Err(VaeConfigError::Wan22 {
                what: "is_residual = true (residual up blocks)".into(),
            });
        }
        if let Some(patch) = raw.patch_size.filter(|&p| p != 1) {
            return Err(VaeConfigError::Wan22 {
                what: format!("patch_size = {patch} (patchified video)"),
            });
        }
        let invalid = |message: String| Err(VaeConfigError::Invalid(message));
        for (name, value) in [
            ("base_dim", raw.base_dim),
            ("decoder_base_dim", raw.decoder_base_dim.unwrap_or(1)),
            ("z_dim", raw.z_dim),
            ("out_channels", raw.out_channels),
        ] {
            if value <= 0 {
                return invalid(format!("{name} = {value} must be positive"));
            }
        }
        if raw.num_res_blocks < 0 {
            return invalid(format!("num_res_blocks = {} must not be negative", raw.num_res_blocks));
        }
        if raw.dim_mult.is_empty() || raw.dim_mult.iter().any(|&m| m <= 0) {
            return invalid(format!("dim_mult = {:?} must be non-empty and positive", raw.dim_mult));
        }
        let levels = raw.dim_mult.len();
        if raw.temperal_downsample.len() < levels - 1 {
            return invalid(format!(
                "temperal_downsample = {:?} needs an entry for each of the {} resampling levels of dim_mult = {:?}",
                raw.temperal_downsample,
                levels - 1,
                raw.dim_mult
            ));
        }
        for (name, values) in [("latents_mean", &raw.latents_mean), ("latents_std", &raw.latents_std)] {
            if values.len() as i64 != raw.z_dim {
                return invalid(format!(
                    "{name} has {} entries, z_dim = {} channels",
                    values.len(),
                    raw.z_dim
                ));
            }
        }
        if let Some(i) = raw.latents_std.iter().position(|&s| s == 0.0 || !s.is_finite()) {
            return invalid(format!(
                "latents_std[{i}] = {} cannot scale latents",
                raw.latents_std[i]
            ));
        }
        let mut cfg = VaeConfig {
            base_dim: raw.base_dim,
            decoder_base_dim: raw.decoder_base_dim,
            z_dim: raw.z_dim,
            dim_mult: raw.dim_mult,
            num_res_blocks: raw.num_res_blocks,
            attn_scales: raw.attn_scales,
            temperal_downsample: raw.temperal_downsample,
            dropout: raw.dropout,
            latents_mean: raw.latents_mean,
            latents_std: raw.latents_std,
            in_channels: raw.in_channels,
            out_channels: raw.out_channels,
            scale_factor_spatial: 0,
            scale_factor_temporal: 0,
        };
        // The pipelines and tiling read the scale factors; they must be what the up
        // blocks do (diffusers does not check). Absent (null) means "as built".
        cfg.scale_factor_spatial = cfg.built_spatial_factor();
        cfg.scale_factor_temporal = cfg.built_temporal_factor();
        for (name, given, built) in [
            (
                "scale_factor_spatial",
                raw.scale_factor_spatial,
                cfg.scale_factor_spatial,
            ),
            (
                "scale_factor_temporal",
                raw.scale_factor_temporal,
                cfg.scale_factor_temporal,
            ),
        ] {
            if given.is_some_and(|g| g != built) {
                return invalid(format!(
                    "{name} = {} but dim_mult and temperal_downsample build a decoder that scales by {built}",
                    given.expect("checked")
                ));
            }
        }
        Ok(cfg)
    }

    /// The decoder's base width.
    pub fn decoder_dim(&self) -> i64 {
        self.decoder_base_dim.unwrap_or(self.base_dim)
    }

    /// Per decoder up block, whether it doubles time: diffusers' `temperal_upsample[i]`
    /// (`temperal_downsample` reversed), for every block but the last, which does not
    /// resample.
    pub fn temporal_upsample(&self) -> Vec<bool> {
        let reversed: Vec<bool> = self.temperal_downsample.iter().rev().copied().collect();
        (0..self.dim_mult.len() - 1).map(|i| reversed[i]).collect()
    }

    /// Frames the decoder makes from `latent_frames`: the first latent frame gives one
    /// frame, each later one [`Self::scale_factor_temporal`] (81 from 21 for Wan2.1).
    pub fn output_frames(&self, latent_frames: i64) -> i64 {
        if latent_frames == 0 {
            0
        } else {
            1 + self.scale_factor_temporal * (latent_frames - 1)
        }
    }

    fn built_spatial_factor(&self) -> i64 {
        1 << (self.dim_mult.len() - 1)
    }

    fn built_temporal_factor(&self) -> i64 {
        1 << self.temporal_upsample().iter().filter(|&&t| t).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_wan21() {
        let cfg = VaeConfig::from_json(r#"{"_class_name": "AutoencoderKLWan"}"#).unwrap();
        assert_eq!((cfg.base_dim, cfg.z_dim, cfg.decoder_dim()), (96, 16, 96));
        assert_eq!(cfg.temporal_upsample(), [true, true, false]);
        assert_eq!((cfg.scale_factor_spatial, cfg.scale_factor_temporal), (8, 4));
        assert_eq!(cfg.output_frames(21), 81);
        assert_eq!(cfg.output_frames(1), 1);
    }

    #[test]
    fn wan22_and_inconsistent_configs_are_refused() {
        let err = VaeConfig::from_json(r#"{"is_residual": true}"#).unwrap_err();
        assert!(matches!(err, VaeConfigError::Wan22 { .. }), "{err}");
        let err = VaeConfig::from_json(r#"{"patch_size": 2}"#).unwrap_err();
        assert!(err.to_string().contains("patch_size = 2"), "{err}");
        VaeConfig::from_json(r#"{"patch_size": 1}"#).expect("patch 1 is no patch");
        let err = VaeConfig::from_json(r#"{"z_dim": 4}"#).unwrap_err();
        assert!(err.to_string().contains("latents_mean has 16 entries"), "{err}");
        let err = VaeConfig::from_json(r#"{"scale_factor_spatial": 16}"#).unwrap_err();
        assert!(err.to_string().contains("scales by 8"), "{err}");
        let err = VaeConfig::from_json(r#"{"clip_output": true}"#).unwrap_err();
        assert!(matches!(err, VaeConfigError::UnknownKeys(_)), "{err}");
    }
}
