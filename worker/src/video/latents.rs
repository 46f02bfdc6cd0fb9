//! Latents to pixels, for whichever codec a model was trained with: the quality testbed's
//! exact space-to-depth (its teacher folder's description carries the latent
//! normalisation) or the Wan VAE (diffusers' AutoencoderKLWan, the pipeline's vae/).

use crate::testbed::{TestbedDescription, codec, folder};
use crate::vae::{DecodeOptions, Tiling, WanVaeDecoder};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// How one model's latents become pixels.
pub enum PixelDecoder {
    /// The testbed codec; `shift`/`scale` undo the teacher's latent normalisation.
    SpaceToDepth(crate::testbed::LatentNorm),
    /// The Wan VAE, frame by frame, spatially tiled past its tile size.
    WanVae(Box<WanVaeDecoder>, DecodeOptions),
}

/// The VAE beside a transformer in a diffusers pipeline folder (`{pipeline}/vae` next to
/// `{pipeline}/transformer`), if there is one.
pub fn sibling_vae(model_dir: &Path) -> Option<PathBuf> {
    let parent = model_dir.parent()?;
    let vae = parent.join("vae");
    (parent.join("model_index.json").is_file() && vae.join("config.json").is_file()).then_some(vae)
}

impl PixelDecoder {
    /// The decoder of the model in `model_dir`: the testbed codec when the folder is a
    /// testbed teacher (or a student made from one), else the VAE at `vae_dir` or the
    /// pipeline's own.
    pub fn for_model(model_dir: &Path, vae_dir: Option<&Path>, device: Device) -> Result<PixelDecoder> {
        if model_dir.join(folder::DESCRIPTION_FILE).is_file() {
            let description = TestbedDescription::read(model_dir)?;
            return Ok(PixelDecoder::SpaceToDepth(description.latent_norm));
        }
        let vae = match vae_dir.map(Path::to_path_buf).or_else(|| sibling_vae(model_dir)) {
            Some(dir) => dir,
            None => bail!(
                "{} makes Wan VAE latents: pass the VAE's folder (diffusers' AutoencoderKLWan, a pipeline's vae/) to decode them",
                model_dir.display()
            ),
        };
        Self::wan_vae(&vae, device)
    }

    /// The Wan VAE in `dir` (fp32: it runs once per video and its output is what users see).
    pub fn wan_vae(dir: &Path, device: Device) -> Result<PixelDecoder> {
        let vae = WanVaeDecoder::load(dir, device, Kind::Float)
            .with_context(|| format!("loading the VAE at {}", dir.display()))?;
        // Tiled past 256 pixels (diffusers' default tiles): a 480p decode stays small next to a model.
        let options = DecodeOptions {
            tiling: Some(Tiling::default()),
        };
        Ok(PixelDecoder::WanVae(Box::new(vae), options))
    }

    /// Pixels [3, F, H, W] in [-1, 1] of one model latent [C, f, h, w].
    pub fn pixels(&self, latent: &Tensor) -> Result<Tensor> {
        tch::no_grad(|| match self {
            PixelDecoder::SpaceToDepth(norm) => {
                Ok(codec::decode(&norm.denormalise(&latent.to_kind(Kind::Float)))?.clamp(-1.0, 1.0))
            }
            PixelDecoder::WanVae(vae, options) => {
                let z = latent.unsqueeze(0).to_device(vae.device()).to_kind(vae.kind());
                Ok(vae.decode_with(&z, options).squeeze_dim(0).to_kind(Kind::Float))
            }
        })
    }
}
