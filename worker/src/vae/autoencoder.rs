//! [`WanVaeDecoder`]: the decoder half of `AutoencoderKLWan` (`post_quant_conv` and
//! `decoder`) with WanPipeline's un-normalisation in front, loaded from a diffusers folder.

use std::path::Path;

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::config::VaeConfig;
use super::decoder::Decoder;
use super::layers::CausalConv3d;
use super::tiling::{self, Tiling};
use super::weights::{self, DECODER_RULES, VaeError};
use crate::model::weights::load_into_with;

/// How [`WanVaeDecoder::decode_with`] bounds its memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Decode in overlapping spatial tiles (diffusers' `enable_tiling`) when the latent is
    /// larger than one tile; `None` (the default, as diffusers) decodes whole frames.
    pub tiling: Option<Tiling>,
}

/// The Wan2.1 VAE decoder: normalised latents [B, z, T, h, w] in, video
/// [B, 3, 1 + 4 (T - 1), 8h, 8w] in [-1, 1] out (for the standard config).
#[derive(Debug)]
pub struct WanVaeDecoder {
    vs: VarStore,
    cfg: VaeConfig,
    post_quant_conv: CausalConv3d,
    decoder: Decoder,
}

impl WanVaeDecoder {
    /// The decoder with PyTorch's default initialisation (norm gammas 1) as `kind` on
    /// `device`: for benchmarks and tests; [`Self::load`] fills it from a checkpoint.
    pub fn new(cfg: &VaeConfig, device: Device, kind: Kind) -> Self {
        let vs = VarStore::new(device);
        let root = vs.root();
        let post_quant_conv = CausalConv3d::new(&root / "post_quant_conv", cfg.z_dim, cfg.z_dim, 1, 0);
        let decoder = Decoder::new(&root / "decoder", cfg);
        if kind != Kind::Float {
            tch::no_grad(|| {
                for (_, mut var) in vs.variables() {
                    // set_data swaps the storage under every handle, the layers' included.
                    var.set_data(&var.to_kind(kind));
                }
            });
        }
        WanVaeDecoder {
            vs,
            cfg: cfg.clone(),
            post_quant_conv,
            decoder,
        }
    }

    /// Reads `<dir>/config.json` and the decoder's tensors from the folder's weights (a
    /// diffusers `vae` folder; stored in any float dtype) onto `device` as `kind`
    /// (`Kind::Float` or `Kind::BFloat16`). The encoder's tensors are ignored.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self, VaeError> {
        if !matches!(kind, Kind::Float | Kind::BFloat16) {
            return Err(VaeError::UnsupportedKind(kind));
        }
        let cfg = weights::read_config(dir)?;
        let mut vae = Self::new(&cfg, device, Kind::Float);
        load_into_with(&vae.vs, dir, kind, &DECODER_RULES)?;
        vae.vs.freeze();
        Ok(vae)
    }

    pub fn config(&self) -> &VaeConfig {
        &self.cfg
    }

    /// The variables, named as the checkpoint's tensors.
    pub fn var_store(&self) -> &VarStore {
        &self.vs
    }

    /// The dtype of the weights, which the decode computes in.
    pub fn kind(&self) -> Kind {
        self.decoder.kind()
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// `decoder.*`, for stage-by-stage checks.
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// The video shape [B, C, F, H, W] decoding latents of `latent_shape` gives.
    pub fn output_shape(&self, latent_shape: &[i64]) -> [i64; 5] {
        let [b, _, t, h, w] = latent_shape[..] else {
            panic!("latents must be [B, C, T, H, W], got {latent_shape:?}")
        };
        let ratio = self.cfg.scale_factor_spatial;
        [
            b,
            self.cfg.out_channels,
            self.cfg.output_frames(t),
            ratio * h,
            ratio * w,
        ]
    }

    /// WanPipeline's step before `vae.decode`: the transformer's normalised latents back
    /// to the VAE's scale, `latents / (1 / std) + mean` per channel, computed as the
    /// pipeline does in the VAE's dtype on its device (for fp32 latents on the same device
    /// no copy is made).
    pub fn unnormalize(&self, latents: &Tensor) -> Tensor {
        self.check_latents(latents);
        let (kind, device) = (self.kind(), self.device());
        let per_channel = |values: &[f64]| {
            let values: Vec<f32> = values.iter().map(|&v| v as f32).collect();
            Tensor::from_slice(&values)
                .view([1, self.cfg.z_dim, 1, 1, 1])
                .to_device(device)
                .to_kind(kind)
        };
        let mean = per_channel(&self.cfg.latents_mean);
        // Python's `1.0 / tensor` is reciprocal() * 1.0.
        let inverse_std = per_channel(&self.cfg.latents_std).reciprocal();
        latents.to_device(device).to_kind(kind) / inverse_std + mean
    }

    /// `post_quant_conv` (1x1x1) of un-normalised latents.
    pub fn post_quant_conv(&self, z: &Tensor) -> Tensor {
        self.post_quant_conv.forward(z, None)
    }

    /// [`Self::decode_with`] without tiling: all of a frame's pixels at once.
    pub fn decode(&self, latents: &Tensor) -> Tensor {
        self.decode_with(latents, &DecodeOptions::default())
    }

    /// WanPipeline's decode of the transformer's normalised latents [B, z, T, h, w]:
    /// [`Self::unnormalize`], then [`Self::decode_unnormalized`]. The video
    /// [B, C, F, H, W] (see [`Self::output_shape`]) is in [-1, 1], in the model's dtype on
    /// its device. No autograd graph is recorded.
    pub fn decode_with(&self, latents: &Tensor, options: &DecodeOptions) -> Tensor {
        tch::no_grad(|| self.decode_unnormalized(&self.unnormalize(latents), options))
    }

    /// diffusers' `vae.decode(z).sample` of latents on the VAE's scale: one latent frame
    /// at a time with the causal cache (`_decode`), or by tiles (`tiled_decode`) when
    /// `options` ask for tiling and the latent is larger than one tile; clamped to [-1, 1].
    pub fn decode_unnormalized(&self, z: &Tensor, options: &DecodeOptions) -> Tensor {
        self.check_latents(z);
        let [_, _, latent_frames, height, width] = z.size()[..] else {
            unreachable!("checked 5-D")
        };
        let frames = self.cfg.output_frames(latent_frames);
        let ratio = self.cfg.scale_factor_spatial;
        tch::no_grad(|| {
            let z = z.to_device(self.device()).to_kind(self.kind());
            let mut video = match options.tiling.filter(|t| t.applies(height, width, ratio)) {
                Some(tiling) => tiling::decode_tiled(&z, &tiling, ratio, |tile| {
                    // diffusers runs post_quant_conv per tile and frame here.
                    self.decoder
                        .decode_frames(latent_frames, frames, |k| self.post_quant_conv(&tile.narrow(2, k, 1)))
                }),
                None => {
                    let x = self.post_quant_conv(&z);
                    self.decoder.decode_frames(latent_frames, frames, |i| x.narrow(2, i, 1))
                }
            };
            let _ = video.clamp_(-1.0, 1.0);
            video
        })
    }

    fn check_latents(&self, latents: &Tensor) {
        let size = latents.size();
        assert!(
            size.len() == 5 && size[1] == self.cfg.z_dim,
            "latents must be [B, {}, T, H, W] (z_dim = {}), got {size:?}",
            self.cfg.z_dim,
            self.cfg.z_dim
        );
        assert!(
            size[2] > 0 && size[3] > 0 && size[4] > 0,
            "latents {size:?} have nothing to decode"
        );
    }
}
