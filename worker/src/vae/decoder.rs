//! `WanDecoder3d` for the Wan2.1 layout: `conv_in`, the mid block (residual, attention,
//! residual), the up blocks (residual blocks, then an up-sampler on all but the last),
//! `norm_out`, SiLU, `conv_out`; and diffusers' `_decode` loop over latent frames.

use tch::nn;
use tch::{Kind, Tensor};

use super::config::VaeConfig;
use super::layers::{AttentionBlock, CausalConv3d, FeatureCache, ResidualBlock, RmsNorm, Upsample};

/// `WanMidBlock` with one attention layer.
#[derive(Debug)]
pub struct MidBlock {
    resnets: [ResidualBlock; 2],
    attention: AttentionBlock,
}

impl MidBlock {
    pub fn new(vs: nn::Path, dim: i64) -> Self {
        MidBlock {
            resnets: [
                ResidualBlock::new(&vs / "resnets" / 0, dim, dim),
                ResidualBlock::new(&vs / "resnets" / 1, dim, dim),
            ],
            attention: AttentionBlock::new(&vs / "attentions" / 0, dim),
        }
    }

    pub fn forward(&self, x: &Tensor, cache: &mut FeatureCache) -> Tensor {
        let x = self.resnets[0].forward(x, cache);
        let x = self.attention.forward(&x);
        self.resnets[1].forward(&x, cache)
    }
}

/// `WanUpBlock`: `num_res_blocks + 1` residual blocks, then the optional up-sampler.
#[derive(Debug)]
pub struct UpBlock {
    resnets: Vec<ResidualBlock>,
    upsampler: Option<Upsample>,
}

impl UpBlock {
    /// `upsample`: `None` for the last block, else whether it also doubles time.
    pub fn new(vs: nn::Path, in_dim: i64, out_dim: i64, num_res_blocks: i64, upsample: Option<bool>) -> Self {
        let resnets = (0..=num_res_blocks)
            .map(|j| ResidualBlock::new(&vs / "resnets" / j, if j == 0 { in_dim } else { out_dim }, out_dim))
            .collect();
        // Wan2.1's up-samplers halve the width (WanResample's default upsample_out_dim).
        let upsampler = upsample.map(|temporal| Upsample::new(&vs / "upsamplers" / 0, out_dim, out_dim / 2, temporal));
        UpBlock { resnets, upsampler }
    }

    pub fn forward(&self, x: &Tensor, cache: &mut FeatureCache) -> Tensor {
        let x = self
            .resnets
            .iter()
            .fold(x.shallow_clone(), |x, resnet| resnet.forward(&x, cache));
        match &self.upsampler {
            Some(upsampler) => upsampler.forward(&x, cache),
            None => x,
        }
    }
}

/// `WanDecoder3d` (Wan2.1: `is_residual = false`), parameters under `decoder.`.
#[derive(Debug)]
pub struct Decoder {
    pub conv_in: CausalConv3d,
    pub mid_block: MidBlock,
    pub up_blocks: Vec<UpBlock>,
    norm_out: RmsNorm,
    conv_out: CausalConv3d,
}

impl Decoder {
    pub fn new(vs: nn::Path, cfg: &VaeConfig) -> Self {
        let base = cfg.decoder_dim();
        // Widths from the deepest level out: [dim_mult[-1]] + reversed(dim_mult), times base.
        let mut mults = vec![*cfg.dim_mult.last().expect("dim_mult is non-empty")];
        mults.extend(cfg.dim_mult.iter().rev());
        let dims: Vec<i64> = mults.iter().map(|m| base * m).collect();
        let temporal = cfg.temporal_upsample();
        let last = cfg.dim_mult.len() - 1;
        let up_blocks = (0..cfg.dim_mult.len())
            .map(|i| {
                // Each block after the first takes the previous up-sampler's halved width.
                let in_dim = if i > 0 { dims[i] / 2 } else { dims[i] };
                let upsample = (i != last).then(|| temporal[i]);
                UpBlock::new(&vs / "up_blocks" / i, in_dim, dims[i + 1], cfg.num_res_blocks, upsample)
            })
            .collect();
        let out_dim = *dims.last().expect("dims is non-empty");
        Decoder {
            conv_in: CausalConv3d::new(&vs / "conv_in", cfg.z_dim, dims[0], 3, 1),
            mid_block: MidBlock::new(&vs / "mid_block", dims[0]),
            up_blocks,
            norm_out: RmsNorm::new(&vs / "norm_out", out_dim, false),
            conv_out: CausalConv3d::new(&vs / "conv_out", out_dim, cfg.out_channels, 3, 1),
        }
    }

    /// One chunk (one latent frame, [B, z, 1, h, w]) through the decoder, after the
    /// chunks `cache` has seen: [B, C_out, 1 or 4, 8h, 8w] for Wan2.1 (1 on the first
    /// chunk), not clamped.
    pub fn forward(&self, x: &Tensor, cache: &mut FeatureCache) -> Tensor {
        cache.start_chunk();
        let x = self.conv_in.forward_cached(x, cache);
        let x = self.mid_block.forward(&x, cache);
        let x = self.up_blocks.iter().fold(x, |x, block| block.forward(&x, cache));
        let x = self.norm_out.forward(&x).silu();
        self.conv_out.forward_cached(&x, cache)
    }

    /// diffusers' `_decode` loop: latent frames 0..`latent_frames` (`chunk(i)` gives frame
    /// i after `post_quant_conv`, [B, z, 1, h, w]) decoded one at a time with a fresh
    /// cache, into [B, C_out, frames, 8h, 8w], where `frames` is
    /// [`VaeConfig::output_frames`]`(latent_frames)`. Not clamped. Each chunk is written
    /// into the preallocated output, so the peak holds the output and one chunk's
    /// activations.
    pub fn decode_frames(&self, latent_frames: i64, frames: i64, chunk: impl Fn(i64) -> Tensor) -> Tensor {
        assert!(latent_frames > 0, "nothing to decode: the latents have no frames");
        let mut cache = FeatureCache::new();
        let mut output: Option<Tensor> = None;
        let mut written = 0;
        for i in 0..latent_frames {
            let decoded = self.forward(&chunk(i), &mut cache);
            let out = output.get_or_insert_with(|| {
                let mut shape = decoded.size();
                shape[2] = frames;
                Tensor::empty(shape, (decoded.kind(), decoded.device()))
            });
            let n = decoded.size()[2];
            assert!(
                written + n <= frames,
                "the decoder made more frames than the config's temporal factor says ({frames})"
            );
            out.narrow(2, written, n).copy_(&decoded);
            written += n;
        }
        assert_eq!(
            written, frames,
            "the decoder made {written} frames, the config's temporal factor says {frames}"
        );
        output.expect("at least one latent frame")
    }

    /// The dtype of the weights.
    pub fn kind(&self) -> Kind {
        self.conv_in.kind()
    }
}
