//! The FLOP cost model of METHOD.md section 1: how many floating-point operations one
//! transformer block (and one whole forward pass of the model) costs at a given token
//! count and block rate R. It owns the teacher's shape (`ModelShape`), the per-head
//! feature-map shape (`FeatureMapShape`), the video -> latent -> token arithmetic of each
//! [`LatentCodec`] (the Wan VAE, or the testbed's space-to-depth) and of the patchifier, and the
//! FLOP formulas. Convention throughout: one multiply-add = 2 FLOPs,
//! C = heads x head_dim, N = tokens; element-wise work (norms, RoPE, activations,
//! softmax exponentials, modulation) is not counted, as in the paper. Everything here is
//! a pure function; stage 2 (`crate::select`) consumes these numbers as costs.

use crate::rate::Rate;
use serde::{Deserialize, Serialize};

/// Shape of the teacher transformer; everything the FLOP model needs and nothing else.
/// Also the spec's `teacher.shape`, hence unknown fields are rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelShape {
    pub layers: u32,
    pub heads: u32,
    pub head_dim: u32,
    pub ffn_dim: u32,
    /// Width of the text-encoder embeddings (umT5-XXL: 4096).
    pub text_dim: u32,
    /// Number of text tokens the cross-attention sees (padded length, 512 for Wan).
    pub text_len: u32,
    pub in_channels: u32,
    pub out_channels: u32,
    /// Patch size in (frames, height, width) of the latent.
    pub patch: [u32; 3],
    /// Width of the sinusoidal timestep embedding.
    pub freq_dim: u32,
}

impl ModelShape {
    /// Wan2.1 T2V 1.3B (METHOD.md section 6).
    pub fn wan21_1_3b() -> Self {
        Self {
            layers: 30,
            heads: 12,
            head_dim: 128,
            ffn_dim: 8960,
            text_dim: 4096,
            text_len: 512,
            in_channels: 16,
            out_channels: 16,
            patch: [1, 2, 2],
            freq_dim: 256,
        }
    }

    /// Model width C = heads x head_dim.
    pub fn dim(&self) -> u64 {
        u64::from(self.heads) * u64::from(self.head_dim)
    }

    /// Latent elements per patch (p_t p_h p_w).
    fn patch_volume(&self) -> u64 {
        self.patch.iter().map(|&p| u64::from(p)).product()
    }
}

/// Shape of one feature map (phi_q or phi_k): per head a 2-layer MLP
/// head_dim -> hidden -> features, where `features` is D', the width of phi's output
/// (the P = 2 power chunks together).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureMapShape {
    pub hidden: u32,
    pub features: u32,
}

impl FeatureMapShape {
    /// The paper's size: hidden = D' = 256 (about 1.2M parameters per map per block).
    pub fn paper_default() -> Self {
        Self {
            hidden: 256,
            features: 256,
        }
    }

    /// Parameters of one map over all heads: per head two linear layers with biases.
    pub fn params_per_map(&self, heads: u32, head_dim: u32) -> u64 {
        let (d, h, f) = (u64::from(head_dim), u64::from(self.hidden), u64::from(self.features));
        u64::from(heads) * (d * h + h + h * f + f)
    }
}

/// Parameters of one map as f64, for the FLOP formulas.
fn phi_params(shape: &ModelShape, fmap: &FeatureMapShape) -> f64 {
    fmap.params_per_map(shape.heads, shape.head_dim) as f64
}

/// Self-attention core FLOPs of one block (scores, softmax-weighted values, the linear
/// state and its read-out, and the feature maps), excluding the q/k/v/o projections.
///
/// * softmax: 4 N^2 C (q k^T and P v, each 2 N^2 C);
/// * hybrid R: 4 N ceil(N/R) C + 4 N D' C + 2 N params(phi_q) + 2 |T_L| params(phi_k);
/// * linear: 4 N D' C + 2 N params(phi_q) + 2 N params(phi_k).
///
/// The linear part is METHOD's "about 4 N D' C": building S over |T_L| keys and reading
/// it out for N queries is 2 (|T_L| + N) D' C, which is at most 4 N D' C; the simpler
/// bound is kept so hybrid and linear share one formula. phi_q runs on every query,
/// phi_k only on the linear keys.
pub fn attention_flops(shape: &ModelShape, fmap: &FeatureMapShape, tokens: u64, rate: Rate) -> f64 {
    let n = tokens as f64;
    let c = shape.dim() as f64;
    if rate == Rate::Softmax {
        return 4.0 * n * n * c;
    }
    let anchors = rate.anchors(tokens);
    let linear_keys = (tokens - anchors) as f64;
    let softmax_part = 4.0 * n * anchors as f64 * c;
    let linear_part = 4.0 * n * f64::from(fmap.features) * c;
    let p = phi_params(shape, fmap);
    let phi = 2.0 * n * p + 2.0 * linear_keys * p;
    softmax_part + linear_part + phi
}

/// FLOPs of one transformer block's forward pass other than the self-attention core:
/// self-attention q, k, v, o projections 8 N C^2; cross-attention q and o projections
/// 4 N C^2, k and v projections of the L text tokens 4 L C^2, scores and values
/// 4 N L C; FFN 4 N C F. (Biases, norms, modulation and gating are element-wise and
/// not counted.) Independent of the rate: surgery only touches the attention core.
pub fn block_flops_excluding_self_attention(shape: &ModelShape, tokens: u64) -> f64 {
    let n = tokens as f64;
    let c = shape.dim() as f64;
    let l = f64::from(shape.text_len);
    let ffn = f64::from(shape.ffn_dim);
    let self_proj = 8.0 * n * c * c;
    let cross_qo = 4.0 * n * c * c;
    let cross_kv = 4.0 * l * c * c;
    let cross_core = 4.0 * n * l * c;
    let ffn_flops = 4.0 * n * c * ffn;
    self_proj + cross_qo + cross_kv + cross_core + ffn_flops
}

/// Tokens of a latent video: (F / p_t)(H / p_h)(W / p_w). Wan requires the latent to
/// be divisible by the patch; integer division here drops any remainder.
pub fn tokens(shape: &ModelShape, latent_frames: u32, latent_height: u32, latent_width: u32) -> u64 {
    let [pt, ph, pw] = shape.patch.map(|p| u64::from(p.max(1)));
    (u64::from(latent_frames) / pt) * (u64::from(latent_height) / ph) * (u64::from(latent_width) / pw)
}

/// Latent (frames, height, width) of a pixel video under the Wan VAE stride (4, 8, 8):
/// the first frame is encoded alone, then every 4 frames become one, so
/// (frames - 1) / 4 + 1 latent frames (0 frames -> 0). Height and width divide by 8.
pub fn latent_dims(frames: u32, height: u32, width: u32) -> (u32, u32, u32) {
    let latent_frames = if frames == 0 { 0 } else { (frames - 1) / 4 + 1 };
    (latent_frames, height / 8, width / 8)
}

/// How pixel videos become the latents the transformer sees; the spec's `video.latent_codec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatentCodec {
    /// Wan2.1's VAE: time stride 4 after the first frame, space stride 8 ([`latent_dims`]).
    #[default]
    WanVae,
    /// The quality testbed's exact 4 x 4 space-to-depth: every frame kept, space stride 4,
    /// 3 colours x 4 x 4 pixels = 48 channels.
    SpaceToDepth,
}

impl LatentCodec {
    /// The spec word.
    pub fn name(self) -> &'static str {
        match self {
            LatentCodec::WanVae => "wan_vae",
            LatentCodec::SpaceToDepth => "space_to_depth",
        }
    }

    /// Pixels per latent element along height and width.
    pub fn spatial_stride(self) -> u32 {
        match self {
            LatentCodec::WanVae => 8,
            LatentCodec::SpaceToDepth => 4,
        }
    }

    /// The latent channel count the codec fixes, if it fixes one. The Wan VAE's 16 is not
    /// enforced: the demo's random-weight teacher pretends to a 4-channel VAE.
    pub fn channels(self) -> Option<u32> {
        match self {
            LatentCodec::WanVae => None,
            LatentCodec::SpaceToDepth => Some(48),
        }
    }

    /// Latent (frames, height, width) of a `frames` x `height` x `width` pixel video
    /// (remainders dropped; validation refuses sizes that leave one).
    pub fn latent_dims(self, frames: u32, height: u32, width: u32) -> (u32, u32, u32) {
        match self {
            LatentCodec::WanVae => latent_dims(frames, height, width),
            LatentCodec::SpaceToDepth => (frames, height / 4, width / 4),
        }
    }
}

/// Tokens per sample of a pixel video under `codec` and the model's patch.
pub fn video_tokens(shape: &ModelShape, codec: LatentCodec, frames: u32, height: u32, width: u32) -> u64 {
    let (f, h, w) = codec.latent_dims(frames, height, width);
    tokens(shape, f, h, w)
}

/// FLOPs outside the blocks for one forward pass of one sample: patch embedding
/// (a strided Conv3d = a linear map of each patch), the output head, the text
/// embedder (2-layer MLP over the L text tokens) and the timestep embedder (computed
/// once per sample). Approximate: the final norm/modulation and unpatchify are
/// element-wise.
fn embedding_flops(shape: &ModelShape, tokens: u64) -> f64 {
    let n = tokens as f64;
    let c = shape.dim() as f64;
    let pv = shape.patch_volume() as f64;
    let l = f64::from(shape.text_len);
    let patch_embed = 2.0 * n * f64::from(shape.in_channels) * pv * c;
    let head = 2.0 * n * c * f64::from(shape.out_channels) * pv;
    let text = 2.0 * l * (f64::from(shape.text_dim) * c + c * c);
    // sinusoid -> dim -> dim, then the shared projection to 6 x dim.
    let time = 2.0 * (f64::from(shape.freq_dim) * c + c * c) + 2.0 * c * 6.0 * c;
    patch_embed + head + text + time
}

/// FLOPs of one forward pass of one sample (classifier-free guidance doubles it)
/// with `rates[i]` the rate of block i. Blocks past the end of `rates` are softmax,
/// the same convention as an explicit layout; entries past `shape.layers` are ignored.
pub fn model_forward_flops(shape: &ModelShape, fmap: &FeatureMapShape, tokens: u64, rates: &[Rate]) -> f64 {
    debug_assert!(
        rates.len() <= shape.layers as usize,
        "{} rates for a {}-block model",
        rates.len(),
        shape.layers
    );
    let rest = block_flops_excluding_self_attention(shape, tokens);
    let blocks: f64 = (0..shape.layers as usize)
        .map(|i| {
            let rate = rates.get(i).copied().unwrap_or(Rate::Softmax);
            attention_flops(shape, fmap, tokens, rate) + rest
        })
        .sum();
    blocks + embedding_flops(shape, tokens)
}

/// FLOPs of one forward pass of the unmodified (all-softmax) teacher.
pub fn softmax_model_forward_flops(shape: &ModelShape, tokens: u64) -> f64 {
    // The feature-map shape is irrelevant when every block is softmax.
    model_forward_flops(shape, &FeatureMapShape::paper_default(), tokens, &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    const N480: u64 = 32_760;

    fn rel(a: f64, b: f64) -> f64 {
        (a - b).abs() / b.abs()
    }

    #[test]
    fn wan_shape_dim() {
        let s = ModelShape::wan21_1_3b();
        assert_eq!(s.dim(), 1536);
        assert_eq!(s.patch_volume(), 4);
    }

    #[test]
    fn latent_and_tokens_480p() {
        let s = ModelShape::wan21_1_3b();
        assert_eq!(latent_dims(81, 480, 832), (21, 60, 104));
        let (f, h, w) = latent_dims(81, 480, 832);
        assert_eq!(tokens(&s, f, h, w), N480);
    }

    #[test]
    fn latent_dims_edges() {
        assert_eq!(latent_dims(0, 0, 0), (0, 0, 0));
        assert_eq!(latent_dims(1, 8, 8), (1, 1, 1));
        assert_eq!(latent_dims(5, 16, 24), (2, 2, 3));
        // 320x480, 81 frames: 21 x 40 x 60 latent.
        assert_eq!(latent_dims(81, 320, 480), (21, 40, 60));
        let s = ModelShape::wan21_1_3b();
        assert_eq!(tokens(&s, 21, 40, 60), 21 * 20 * 30);
    }

    #[test]
    fn space_to_depth_keeps_frames_and_strides_space_by_4() {
        let codec = LatentCodec::SpaceToDepth;
        assert_eq!(codec.latent_dims(16, 64, 64), (16, 16, 16));
        assert_eq!(codec.latent_dims(8, 32, 32), (8, 8, 8));
        assert_eq!(codec.channels(), Some(48));
        assert_eq!(LatentCodec::default(), LatentCodec::WanVae);
        assert_eq!(LatentCodec::WanVae.latent_dims(81, 480, 832), latent_dims(81, 480, 832));
        // The testbed's GPU size: 16 x 8 x 8 = 1,024 tokens with patch (1, 2, 2).
        let testbed = ModelShape {
            in_channels: 48,
            out_channels: 48,
            ..ModelShape::wan21_1_3b()
        };
        assert_eq!(video_tokens(&testbed, codec, 16, 64, 64), 1024);
        assert_eq!(video_tokens(&testbed, codec, 8, 32, 32), 128);
        // The same pixels under the VAE would be 4 x 4 x 4 tokens.
        assert_eq!(video_tokens(&testbed, LatentCodec::WanVae, 13, 64, 64), 64);
        for codec in [LatentCodec::WanVae, LatentCodec::SpaceToDepth] {
            let word = serde_json::to_string(&codec).unwrap();
            assert_eq!(word, format!("\"{}\"", codec.name()));
        }
    }

    #[test]
    fn feature_map_params_about_1_2m() {
        let f = FeatureMapShape::paper_default();
        // Per head: 128*256 + 256 + 256*256 + 256 = 98,816; 12 heads.
        assert_eq!(f.params_per_map(12, 128), 1_185_792);
        assert!(rel(f.params_per_map(12, 128) as f64, 1.2e6) < 0.02);
    }

    #[test]
    fn every_rate_costs_less_than_the_one_before_it() {
        // Rates 16 and 32 sit between R8 and linear: the anchors' quadratic part shrinks
        // with R while the linear part stays.
        let (s, f) = (ModelShape::wan21_1_3b(), FeatureMapShape::paper_default());
        let order = [1, 2, 4, 8, 16, 32].map(Rate::Hybrid);
        let costs: Vec<f64> = std::iter::once(Rate::Softmax)
            .chain(order.into_iter().skip(1))
            .chain([Rate::Linear])
            .map(|r| attention_flops(&s, &f, 32_760, r))
            .collect();
        for pair in costs.windows(2) {
            assert!(pair[1] < pair[0], "{costs:?}");
        }
        // R32 keeps 1,024 anchors of 32,760 tokens.
        assert_eq!(Rate::Hybrid(32).anchors(32_760), 1_024);
        assert_eq!(Rate::Hybrid(16).anchors(32_760), 2_048);
    }

    #[test]
    fn rate_order_is_softmax_given_up() {
        let mut v = vec![Rate::Linear, Rate::Hybrid(8), Rate::Softmax, Rate::Hybrid(2)];
        v.sort();
        assert_eq!(v, vec![Rate::Softmax, Rate::Hybrid(2), Rate::Hybrid(8), Rate::Linear]);
    }

    #[test]
    fn anchors_strided() {
        assert_eq!(Rate::Softmax.anchors(10), 10);
        assert_eq!(Rate::Linear.anchors(10), 0);
        // indices 0, 2, 4, 6, 8 / 0, 4, 8 / 0, 8
        assert_eq!(Rate::Hybrid(2).anchors(10), 5);
        assert_eq!(Rate::Hybrid(4).anchors(10), 3);
        assert_eq!(Rate::Hybrid(8).anchors(10), 2);
        assert_eq!(Rate::Hybrid(2).anchors(0), 0);
        assert_eq!(Rate::Hybrid(2).anchors(1), 1);
        // Brute-force the rule itself.
        for n in 0..50u64 {
            for r in [2u32, 3, 4, 8] {
                let count = (0..n).filter(|i| i.is_multiple_of(u64::from(r))).count() as u64;
                assert_eq!(Rate::Hybrid(r).anchors(n), count);
            }
        }
        assert_eq!(Rate::Hybrid(2).anchors(N480), 16_380);
    }

    #[test]
    fn softmax_core_480p_is_6_59_tflop() {
        let s = ModelShape::wan21_1_3b();
        let f = FeatureMapShape::paper_default();
        let core = attention_flops(&s, &f, N480, Rate::Softmax);
        assert_eq!(core, 4.0 * 32_760f64.powi(2) * 1536.0);
        assert!(rel(core, 6.59e12) < 0.005, "{core:e}");
    }

    #[test]
    fn rest_of_block_480p_is_2_84_tflop() {
        let s = ModelShape::wan21_1_3b();
        let rest = block_flops_excluding_self_attention(&s, N480);
        assert!(rel(rest, 2.84e12) < 0.03, "{rest:e}");
        // FFN dominates: 4 N C F = 1.80 TFLOP.
        let ffn = 4.0 * N480 as f64 * 1536.0 * 8960.0;
        assert!(ffn / rest > 0.6);
    }

    #[test]
    fn hybrid_and_linear_formulas() {
        let s = ModelShape::wan21_1_3b();
        let f = FeatureMapShape::paper_default();
        let (n, c, d) = (N480 as f64, 1536.0, 256.0);
        let p = 1_185_792.0;
        let r2 = attention_flops(&s, &f, N480, Rate::Hybrid(2));
        let want = 4.0 * n * 16_380.0 * c + 4.0 * n * d * c + 2.0 * n * p + 2.0 * 16_380.0 * p;
        assert_eq!(r2, want);
        let lin = attention_flops(&s, &f, N480, Rate::Linear);
        assert_eq!(lin, 4.0 * n * d * c + 4.0 * n * p);
        // The linear core is a few percent of the softmax core at 480p.
        let sm = attention_flops(&s, &f, N480, Rate::Softmax);
        assert!(lin / sm < 0.05, "{}", lin / sm);
        // R2 roughly halves the core.
        assert!((r2 / sm - 0.5).abs() < 0.05, "{}", r2 / sm);
    }

    #[test]
    fn cost_decreases_with_rate() {
        let s = ModelShape::wan21_1_3b();
        let f = FeatureMapShape::paper_default();
        let costs: Vec<f64> = [
            Rate::Softmax,
            Rate::Hybrid(2),
            Rate::Hybrid(4),
            Rate::Hybrid(8),
            Rate::Linear,
        ]
        .iter()
        .map(|&r| attention_flops(&s, &f, N480, r))
        .collect();
        for w in costs.windows(2) {
            assert!(w[0] > w[1], "{costs:?}");
        }
    }

    #[test]
    fn zero_tokens_cost_nothing_per_token() {
        let s = ModelShape::wan21_1_3b();
        let f = FeatureMapShape::paper_default();
        for r in [Rate::Softmax, Rate::Hybrid(2), Rate::Linear] {
            assert_eq!(attention_flops(&s, &f, 0, r), 0.0);
        }
    }

    #[test]
    fn model_forward_480p() {
        let s = ModelShape::wan21_1_3b();
        let f = FeatureMapShape::paper_default();
        let full = softmax_model_forward_flops(&s, N480);
        let per_block = attention_flops(&s, &f, N480, Rate::Softmax) + block_flops_excluding_self_attention(&s, N480);
        let blocks = 30.0 * per_block;
        // Embeddings and head are a small positive extra (~0.01%).
        assert!(full > blocks);
        assert!((full - blocks) / full < 1e-3);
        assert!(rel(full, 283e12) < 0.01, "{full:e}");
        // An explicit all-softmax list is the same; a short list pads with softmax.
        let all = vec![Rate::Softmax; 30];
        assert_eq!(model_forward_flops(&s, &f, N480, &all), full);
        // 15 blocks at R2 save 15 x (softmax core - R2 core).
        let mut mixed = vec![Rate::Hybrid(2); 15];
        mixed.extend(vec![Rate::Softmax; 15]);
        let saved =
            15.0 * (attention_flops(&s, &f, N480, Rate::Softmax) - attention_flops(&s, &f, N480, Rate::Hybrid(2)));
        let got = model_forward_flops(&s, &f, N480, &mixed);
        assert!(rel(full - got, saved) < 1e-9);
        let short = model_forward_flops(&s, &f, N480, &mixed[..15]);
        assert_eq!(short, got);
    }

    #[test]
    fn shapes_serde_roundtrip() {
        let s = ModelShape::wan21_1_3b();
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<ModelShape>(&j).unwrap(), s);
        let f = FeatureMapShape::paper_default();
        let j = serde_json::to_string(&f).unwrap();
        assert_eq!(serde_json::from_str::<FeatureMapShape>(&j).unwrap(), f);
    }
}
