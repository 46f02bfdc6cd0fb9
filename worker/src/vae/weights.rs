//! Reading a diffusers `AutoencoderKLWan` folder: `config.json` plus the weights, one
//! `diffusion_pytorch_model.safetensors` or shards with their index (the transformer's
//! reader, [`crate::model::weights`], under the VAE's [`LoadRules`]). Only the decoder
//! half is read: `post_quant_conv.*` and `decoder.*`; the encoder's tensors
//! (`encoder.*`, `quant_conv.*`) may be present or not and are never read. No parameter
//! is kept fp32 in a bf16 model (`AutoencoderKLWan` has no `_keep_in_fp32_modules`).

use std::path::{Path, PathBuf};

use tch::Kind;

use super::config::{VaeConfig, VaeConfigError};
use crate::model::weights::{CONFIG_FILE, LoadRules, WeightsError};

/// Checkpoint tensors of the encoder half, which the decoder does not need.
pub const ENCODER_PREFIXES: [&str; 2] = ["encoder.", "quant_conv."];

/// The VAE decoder's [`LoadRules`]: nothing kept fp32, the encoder half skipped.
pub const DECODER_RULES: LoadRules = LoadRules {
    keeps_fp32: |_| false,
    skips_unexpected: |name| ENCODER_PREFIXES.iter().any(|prefix| name.starts_with(prefix)),
};

/// Why a VAE folder could not be loaded. Paths are as given by the caller; weight-file
/// problems (missing, unexpected or mis-shaped tensors, shards, corrupt files) are the
/// transformer loader's [`WeightsError`], naming the tensor, shapes and file.
#[derive(Debug, thiserror::Error)]
pub enum VaeError {
    #[error("{dir} has no {CONFIG_FILE}: not a diffusers model folder (expected the VAE's folder, e.g. <model>/vae)")]
    MissingConfig { dir: PathBuf },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Config { path: PathBuf, source: VaeConfigError },
    #[error("the VAE decoder runs in Float or BFloat16, not {0:?}")]
    UnsupportedKind(Kind),
    #[error(transparent)]
    Weights(#[from] WeightsError),
}

/// Reads and validates `<dir>/config.json` as an `AutoencoderKLWan` config.
pub fn read_config(dir: &Path) -> Result<VaeConfig, VaeError> {
    let path = dir.join(CONFIG_FILE);
    if !path.is_file() {
        return Err(VaeError::MissingConfig { dir: dir.to_path_buf() });
    }
    let text = std::fs::read_to_string(&path).map_err(|source| VaeError::Io {
        path: path.clone(),
        source,
    })?;
    VaeConfig::from_json(&text).map_err(|source| VaeError::Config { path, source })
}
