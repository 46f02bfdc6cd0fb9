//! The decoder's layers, each a plain struct over tensors registered under diffusers'
//! parameter names and calling the ATen ops its PyTorch counterpart calls, so the numerics
//! are LibTorch's: the causal 3-D convolution and its per-chunk [`FeatureCache`]
//! (`WanCausalConv3d` with `feat_cache` / `feat_idx`), `WanRMS_norm`, the residual block,
//! the mid block's single-head spatial attention and the up-samplers (`WanResample` in
//! `upsample2d` / `upsample3d` mode).
//!
//! The decoder runs on one chunk of frames at a time (one latent frame, or what the
//! temporal up-samplers made of it). A causal convolution with a temporal kernel of 3
//! needs the two frames before the chunk; the cache keeps them from the previous chunk,
//! one slot per convolution, taken in the order the convolutions run (diffusers'
//! `feat_idx`).

use tch::nn::{self, Init};
use tch::{Kind, Tensor};

/// Frames a causal convolution keeps from one chunk for the next (diffusers' `CACHE_T`).
pub const CACHE_T: i64 = 2;

/// One convolution's memory of the previous chunk (an entry of diffusers' `feat_cache`).
#[derive(Debug, Default)]
enum Slot {
    /// No chunk seen yet (`None`).
    #[default]
    Empty,
    /// A temporal up-sampler after the first chunk, which it passed through without
    /// doubling time (`"Rep"`): the next chunk sees zeros before it.
    Repeat,
    /// The last (up to [`CACHE_T`]) input frames of the previous chunk.
    Frames(Tensor),
}

/// The decoder's per-chunk memory: one slot per cached convolution, in call order. A
/// fresh cache starts a video (diffusers' `clear_cache`); [`FeatureCache::start_chunk`]
/// rewinds the cursor before each chunk (`feat_idx = [0]`).
#[derive(Debug, Default)]
pub struct FeatureCache {
    slots: Vec<Slot>,
    cursor: usize,
}

impl FeatureCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rewinds to the first slot, for the next chunk.
    pub fn start_chunk(&mut self) {
        self.cursor = 0;
    }

    /// Slots in use (one per cached convolution the decoder has run).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The next convolution's slot.
    fn next_slot(&mut self) -> &mut Slot {
        if self.cursor == self.slots.len() {
            self.slots.push(Slot::Empty);
        }
        self.cursor += 1;
        &mut self.slots[self.cursor - 1]
    }
}

/// The last (up to [`CACHE_T`]) frames of `x` [B, C, T, H, W], copied so that the cache
/// does not hold the whole chunk alive.
fn last_frames(x: &Tensor) -> Tensor {
    let frames = x.size()[2];
    let kept = frames.min(CACHE_T);
    x.narrow(2, frames - kept, kept).copy()
}

/// PyTorch's default convolution init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)); a loaded model
/// overwrites it.
fn conv_init(fan_in: i64) -> Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    Init::Uniform { lo: -bound, up: bound }
}

/// `WanCausalConv3d`: a Conv3d that pads height and width symmetrically and time only in
/// front (twice the nominal temporal padding), so frame t sees frames t-2..=t only.
#[derive(Debug)]
pub struct CausalConv3d {
    weight: Tensor,
    bias: Tensor,
    /// (time, height, width) nominal padding; time is applied as 2 * p in front.
    padding: [i64; 3],
}

impl CausalConv3d {
    /// A cubic `kernel` with `padding` on every side (diffusers' `(k, padding=p)`).
    pub fn new(vs: nn::Path, in_dim: i64, out_dim: i64, kernel: i64, padding: i64) -> Self {
        Self::with_shape(vs, in_dim, out_dim, [kernel; 3], [padding; 3])
    }

    pub fn with_shape(vs: nn::Path, in_dim: i64, out_dim: i64, kernel: [i64; 3], padding: [i64; 3]) -> Self {
        let init = conv_init(in_dim * kernel.iter().product::<i64>());
        let weight = vs.var("weight", &[out_dim, in_dim, kernel[0], kernel[1], kernel[2]], init);
        let bias = vs.var("bias", &[out_dim], init);
        CausalConv3d { weight, bias, padding }
    }

    pub fn out_channels(&self) -> i64 {
        self.weight.size()[0]
    }

    /// The dtype of the weights.
    pub fn kind(&self) -> Kind {
        self.weight.kind()
    }

    /// The convolution of x [B, C, T, H, W] after `cache` (earlier frames, [B, C, T', H,
    /// W]), zero frames filling what the cache lacks: [B, C_out, T, H', W'].
    pub fn forward(&self, x: &Tensor, cache: Option<&Tensor>) -> Tensor {
        let [pad_t, pad_h, pad_w] = self.padding;
        let mut front = 2 * pad_t;
        let joined;
        let mut x = x;
        if let Some(cache) = cache.filter(|_| front > 0) {
            joined = Tensor::cat(&[cache, x], 2);
            front -= cache.size()[2];
            x = &joined;
        }
        // F.pad's order: (w left, w right, h top, h bottom, t front, t back).
        let pad = [pad_w, pad_w, pad_h, pad_h, front, 0];
        let padded;
        if pad.iter().any(|&p| p != 0) {
            padded = x.constant_pad_nd(pad);
            x = &padded;
        }
        x.conv3d(&self.weight, Some(&self.bias), [1, 1, 1], [0, 0, 0], [1, 1, 1], 1)
    }

    /// [`Self::forward`] inside the chunk loop: takes the next slot of `cache` as the
    /// frames before `x`, and leaves in it the frames the next chunk needs (the last two
    /// of `x`, or the last of the slot and the one of `x`).
    pub fn forward_cached(&self, x: &Tensor, cache: &mut FeatureCache) -> Tensor {
        let slot = cache.next_slot();
        let previous = match slot {
            Slot::Empty => None,
            Slot::Frames(frames) => Some(&*frames),
            Slot::Repeat => unreachable!("a convolution slot never holds the up-sampler's marker"),
        };
        let mut kept = last_frames(x);
        if let Some(previous) = previous.filter(|_| kept.size()[2] < CACHE_T) {
            let last = previous.narrow(2, previous.size()[2] - 1, 1);
            kept = Tensor::cat(&[&last, &kept], 2);
        }
        let out = self.forward(x, previous);
        *slot = Slot::Frames(kept);
        out
    }
}

/// `nn.Conv2d(in, out, kernel, padding)`, stride 1.
#[derive(Debug)]
pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    padding: i64,
}

impl Conv2d {
    pub fn new(vs: nn::Path, in_dim: i64, out_dim: i64, kernel: i64, padding: i64) -> Self {
        let init = conv_init(in_dim * kernel * kernel);
        let weight = vs.var("weight", &[out_dim, in_dim, kernel, kernel], init);
        let bias = vs.var("bias", &[out_dim], init);
        Conv2d { weight, bias, padding }
    }

    /// [N, C, H, W] -> [N, C_out, H', W'].
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(&self.weight, Some(&self.bias), [1, 1], [self.padding; 2], [1, 1], 1)
    }
}

/// `WanRMS_norm` (channel first, no bias): x / max(||x||_2, 1e-12) over the channels, times
/// sqrt(C) and a per-channel `gamma`. The normalisation runs in fp32 for bf16/fp16 input
/// and is rounded to x's dtype before the scaling, as in diffusers.
#[derive(Debug)]
pub struct RmsNorm {
    gamma: Tensor,
    scale: f64,
}

impl RmsNorm {
    /// `images`: gamma [C, 1, 1] for [N, C, H, W] input; else [C, 1, 1, 1] for
    /// [B, C, T, H, W].
    pub fn new(vs: nn::Path, dim: i64, images: bool) -> Self {
        let shape: &[i64] = if images { &[dim, 1, 1] } else { &[dim, 1, 1, 1] };
        RmsNorm {
            gamma: vs.var("gamma", shape, Init::Const(1.0)),
            scale: (dim as f64).sqrt(),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let reduced = matches!(x.kind(), Kind::BFloat16 | Kind::Half);
        let input = if reduced {
            x.to_kind(Kind::Float)
        } else {
            x.shallow_clone()
        };
        // F.normalize(input, dim=1): input / ||input||_2.clamp_min(eps); linalg_norm over
        // one dim is ATen's linalg_vector_norm, which Tensor.norm calls.
        let norm = input
            .linalg_norm(2.0, [1i64].as_slice(), true, None::<Kind>)
            .clamp_min(1e-12);
        let normalized = (&input / norm.expand_as(&input)).to_kind(x.kind());
        normalized * self.scale * &self.gamma
    }
}

/// `WanResidualBlock`: RMS norm, SiLU, causal 3x3x3 conv, twice, plus the input (through a
/// 1x1x1 conv when the width changes). Dropout is inactive at inference.
#[derive(Debug)]
pub struct ResidualBlock {
    norm1: RmsNorm,
    conv1: CausalConv3d,
    norm2: RmsNorm,
    conv2: CausalConv3d,
    conv_shortcut: Option<CausalConv3d>,
}

impl ResidualBlock {
    pub fn new(vs: nn::Path, in_dim: i64, out_dim: i64) -> Self {
        ResidualBlock {
            norm1: RmsNorm::new(&vs / "norm1", in_dim, false),
            conv1: CausalConv3d::new(&vs / "conv1", in_dim, out_dim, 3, 1),
            norm2: RmsNorm::new(&vs / "norm2", out_dim, false),
            conv2: CausalConv3d::new(&vs / "conv2", out_dim, out_dim, 3, 1),
            conv_shortcut: (in_dim != out_dim).then(|| CausalConv3d::new(&vs / "conv_shortcut", in_dim, out_dim, 1, 0)),
        }
    }

    /// [B, C_in, T, H, W] -> [B, C_out, T, H, W]; takes two cache slots.
    pub fn forward(&self, x: &Tensor, cache: &mut FeatureCache) -> Tensor {
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(x, None),
            None => x.shallow_clone(),
        };
        let h = self.norm1.forward(x).silu();
        let h = self.conv1.forward_cached(&h, cache);
        let h = self.norm2.forward(&h).silu();
        let h = self.conv2.forward_cached(&h, cache);
        h + shortcut
    }
}

/// `WanAttentionBlock`: single-head self-attention over the pixels of each frame (no
/// mixing across time), with an RMS norm before and a residual around it.
#[derive(Debug)]
pub struct AttentionBlock {
    norm: RmsNorm,
    to_qkv: Conv2d,
    proj: Conv2d,
}

impl AttentionBlock {
    pub fn new(vs: nn::Path, dim: i64) -> Self {
        AttentionBlock {
            norm: RmsNorm::new(&vs / "norm", dim, true),
            to_qkv: Conv2d::new(&vs / "to_qkv", dim, 3 * dim, 1, 0),
            proj: Conv2d::new(&vs / "proj", dim, dim, 1, 0),
        }
    }

    /// [B, C, T, H, W] -> [B, C, T, H, W].
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let [b, c, t, h, w] = x.size()[..] else {
            panic!("attention input must be [B, C, T, H, W], got {:?}", x.size())
        };
        // [B, C, T, H, W] -> [B*T, C, H, W]
        let frames = x.permute([0, 2, 1, 3, 4]).reshape([b * t, c, h, w]);
        let qkv = self.to_qkv.forward(&self.norm.forward(&frames));
        // [B*T, 3C, H, W] -> [B*T, 1, H*W, 3C], split into q, k, v [B*T, 1, H*W, C].
        let qkv = qkv.reshape([b * t, 1, 3 * c, -1]).permute([0, 1, 3, 2]).contiguous();
        let [q, k, v] = &qkv.chunk(3, -1)[..] else {
            unreachable!("chunk(3) of 3C channels")
        };
        // Fresh copies with canonical strides: chunks of the last dim keep the 3C row
        // stride and an offset, and `contiguous` keeps odd strides on size-1 dims, which
        // CUDA's memory-efficient kernel refused for small tiles on an H200 ("query is not
        // correctly aligned"). The mid block runs at the lowest resolution: cheap.
        let fresh = |t: &Tensor| {
            let mut out = Tensor::empty(t.size(), (t.kind(), t.device()));
            out.copy_(t);
            out
        };
        let (q, k, v) = (fresh(q), fresh(k), fresh(v));
        let attended = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<&Tensor>, 0.0, false, None, false);
        // [B*T, 1, H*W, C] -> [B*T, C, H, W]
        let attended = attended.squeeze_dim(1).permute([0, 2, 1]).reshape([b * t, c, h, w]);
        let out = self.proj.forward(&attended);
        out.view([b, t, c, h, w]).permute([0, 2, 1, 3, 4]) + x
    }
}

/// `WanResample` in an up mode: `upsample2d` doubles height and width (nearest-exact,
/// then a 3x3 conv to `out_dim` channels); `upsample3d` first doubles time with a causal
/// (3, 1, 1) conv to 2C channels whose halves become the even and odd frames, except on
/// the first chunk, which it passes through (diffusers' `"Rep"` marker).
#[derive(Debug)]
pub struct Upsample {
    time_conv: Option<CausalConv3d>,
    conv: Conv2d,
}

impl Upsample {
    pub fn new(vs: nn::Path, dim: i64, out_dim: i64, temporal: bool) -> Self {
        Upsample {
            time_conv: temporal
                .then(|| CausalConv3d::with_shape(&vs / "time_conv", dim, 2 * dim, [3, 1, 1], [1, 0, 0])),
            conv: Conv2d::new(&vs / "resample" / 1, dim, out_dim, 3, 1),
        }
    }

    /// [B, C, T, H, W] -> [B, C_out, T', 2H, 2W], T' = 2T for `upsample3d` after the first
    /// chunk, T otherwise. `upsample3d` takes one cache slot.
    pub fn forward(&self, x: &Tensor, cache: &mut FeatureCache) -> Tensor {
        let [b, c, t, h, w] = x.size()[..] else {
            panic!("up-sampler input must be [B, C, T, H, W], got {:?}", x.size())
        };
        let mut x = x.shallow_clone();
        if let Some(time_conv) = &self.time_conv {
            let slot = cache.next_slot();
            if matches!(slot, Slot::Empty) {
                *slot = Slot::Repeat;
            } else {
                let mut kept = last_frames(&x);
                if kept.size()[2] < CACHE_T {
                    let before = match &*slot {
                        Slot::Frames(previous) => previous.narrow(2, previous.size()[2] - 1, 1),
                        _ => kept.zeros_like(),
                    };
                    kept = Tensor::cat(&[&before, &kept], 2);
                }
                let doubled = match &*slot {
                    Slot::Frames(previous) => time_conv.forward(&x, Some(previous)),
                    _ => time_conv.forward(&x, None),
                };
                *slot = Slot::Frames(kept);
                // [B, 2C, T, H, W] -> [B, 2, C, T, H, W] -> frames interleaved [B, C, 2T, H, W]
                let halves = doubled.reshape([b, 2, c, t, h, w]);
                x = Tensor::stack(&[halves.select(1, 0), halves.select(1, 1)], 3).reshape([b, c, 2 * t, h, w]);
            }
        }
        let t = x.size()[2];
        // [B, C, T, H, W] -> [B*T, C, H, W]; nearest-exact x2 in fp32, as WanUpsample.
        let frames = x.permute([0, 2, 1, 3, 4]).reshape([b * t, c, h, w]);
        let upsampled = frames
            .to_kind(Kind::Float)
            .internal_upsample_nearest_exact2d_vec(None::<&[i64]>, [2.0, 2.0].as_slice())
            .to_kind(x.kind());
        let out = self.conv.forward(&upsampled);
        let [_, c_out, h_out, w_out] = out.size()[..] else {
            unreachable!("conv2d output is 4-D")
        };
        out.view([b, t, c_out, h_out, w_out]).permute([0, 2, 1, 3, 4])
    }
}
