//! Self-attention cores of a transformer block: what happens between q, k, v (after the
//! teacher's RMSNorm and 3-D RoPE) and the output projection. The teacher uses full
//! softmax attention; a student block may use the hybrid softmax + linear attention of
//! METHOD.md section 1 ([`hybrid`]).
//!
//! Layout everywhere: q, k, v and outputs are [B, H, N, d], tokens in (frame, height,
//! width) raster order over a [`TokenGrid`].

pub mod anchors;
pub mod feature_map;
pub mod fused;
pub mod hybrid;
pub mod linear_share;
pub mod score_loss;

use tch::Tensor;

/// The patchified latent video's token grid; N = frames x height x width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenGrid {
    pub frames: i64,
    pub height: i64,
    pub width: i64,
}

impl TokenGrid {
    pub fn tokens(&self) -> i64 {
        self.frames * self.height * self.width
    }
}

/// A block's self-attention core.
pub enum SelfAttention {
    /// softmax(q k^T / sqrt(d)) v through LibTorch's fused kernel (the teacher).
    Softmax,
    /// Softmax over anchor tokens plus linear attention over the rest (the student).
    Hybrid(hybrid::HybridAttention),
}

impl SelfAttention {
    /// q, k, v: [B, H, N, d] -> [B, H, N, d].
    pub fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor, grid: TokenGrid) -> Tensor {
        match self {
            SelfAttention::Softmax => softmax_attention(q, k, v),
            SelfAttention::Hybrid(hybrid) => hybrid.forward(q, k, v, grid),
        }
    }
}

/// Full softmax attention, fused (FlashAttention / cuDNN on GPU).
pub fn softmax_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    Tensor::scaled_dot_product_attention(q, k, v, None::<&Tensor>, 0.0, false, None, false)
}
