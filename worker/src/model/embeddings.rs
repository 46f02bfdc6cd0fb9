//! The condition embedder (diffusers' `WanTimeTextImageEmbedding` without the image
//! branch): timestep -> sinusoid -> MLP -> `temb`, shared projection of `temb` to the
//! 6 x dim modulation `timestep_proj`, and the text projection of the umT5 embeddings.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::layers::{linear, weight_kind};

/// diffusers' `get_timestep_embedding(t, dim, flip_sin_to_cos=True,
/// downscale_freq_shift=0, scale=1, max_period=10000)` for t: `[B]` -> `[B, dim]` f32:
///   f_i = exp(-ln(10000) i / half), i < half = dim / 2
///   emb = [cos(t f), sin(t f)] (zero-padded by one column when dim is odd)
/// Op for op as diffusers (f32 throughout) so the rounding is the same.
pub fn timestep_sinusoid(timesteps: &Tensor, dim: i64) -> Tensor {
    let half = dim / 2;
    let exponent = Tensor::arange(half, (Kind::Float, timesteps.device())) * (-(10000f64.ln()));
    // `/ (half_dim - downscale_freq_shift)` with downscale_freq_shift = 0.
    let frequencies = (exponent / (half as f64)).exp();
    // [B, 1] * [1, half] -> [B, half]
    let angles = timesteps.unsqueeze(1).to_kind(Kind::Float) * frequencies.unsqueeze(0);
    // flip_sin_to_cos: diffusers builds [sin, cos] and swaps the halves; same values.
    let emb = Tensor::cat(&[angles.cos(), angles.sin()], -1);
    if dim % 2 == 1 {
        emb.pad([0, 1, 0, 0], "constant", Some(0.0))
    } else {
        emb
    }
}

/// diffusers' `TimestepEmbedding`: linear_1 -> SiLU -> linear_2.
#[derive(Debug)]
struct TimestepEmbedding {
    linear_1: nn::Linear,
    linear_2: nn::Linear,
}

impl Module for TimestepEmbedding {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.linear_2.forward(&self.linear_1.forward(x).silu())
    }
}

/// diffusers' `PixArtAlphaTextProjection` with act_fn "gelu_tanh": linear_1 -> GELU(tanh)
/// -> linear_2.
#[derive(Debug)]
struct TextProjection {
    linear_1: nn::Linear,
    linear_2: nn::Linear,
}

impl Module for TextProjection {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.linear_2.forward(&self.linear_1.forward(x).gelu("tanh"))
    }
}

/// The embedder's three outputs.
pub struct Conditions {
    /// [B, dim], dtype of the text (the model's compute dtype).
    pub temb: Tensor,
    /// [B, 6, dim]: time_proj(SiLU(temb)), split per block into shift/scale/gate.
    pub timestep_proj: Tensor,
    /// [B, L, dim]: the projected text the cross-attention attends to.
    pub text: Tensor,
}

/// `condition_embedder.*`.
#[derive(Debug)]
pub struct ConditionEmbedder {
    time_embedder: TimestepEmbedding,
    time_proj: nn::Linear,
    text_embedder: TextProjection,
    freq_dim: i64,
}

impl ConditionEmbedder {
    pub fn new(vs: nn::Path, dim: i64, freq_dim: i64, text_dim: i64) -> Self {
        let time = &vs / "time_embedder";
        let text = &vs / "text_embedder";
        ConditionEmbedder {
            time_embedder: TimestepEmbedding {
                linear_1: linear(&time / "linear_1", freq_dim, dim),
                linear_2: linear(&time / "linear_2", dim, dim),
            },
            time_proj: linear(&vs / "time_proj", dim, 6 * dim),
            text_embedder: TextProjection {
                linear_1: linear(&text / "linear_1", text_dim, dim),
                linear_2: linear(&text / "linear_2", dim, dim),
            },
            freq_dim,
        }
    }

    /// timestep: `[B]`; text: `[B, L, text_dim]` already in the compute dtype.
    pub fn forward(&self, timestep: &Tensor, text: &Tensor) -> Conditions {
        // The sinusoid is f32; it goes to the time embedder in that MLP's dtype (fp32 even
        // in a bf16 model: `time_embedder` is kept in fp32), and temb comes out in the
        // text's dtype (`.type_as(encoder_hidden_states)`).
        let sinusoid = timestep_sinusoid(timestep, self.freq_dim);
        let sinusoid = sinusoid.to_kind(weight_kind(&self.time_embedder.linear_1));
        let temb = self.time_embedder.forward(&sinusoid).to_kind(text.kind());
        // [B, 6 dim] -> [B, 6, dim]
        let timestep_proj = self.time_proj.forward(&temb.silu()).unflatten(1, [6, -1]);
        let text = self.text_embedder.forward(text);
        Conditions {
            temb,
            timestep_proj,
            text,
        }
    }

    /// The dtype the text projection computes in (the model's compute dtype).
    pub fn text_kind(&self) -> Kind {
        weight_kind(&self.text_embedder.linear_1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn sinusoid_is_cos_then_sin() {
        let t = Tensor::from_slice(&[0.0f32, 10.0]);
        let emb = timestep_sinusoid(&t, 8);
        assert_eq!(emb.size(), [2, 8]);
        // t = 0: cos = 1, sin = 0.
        assert_eq!(emb.double_value(&[0, 0]), 1.0);
        assert_eq!(emb.double_value(&[0, 4]), 0.0);
        // Frequency i = 1 of 4: exp(-ln(10000) / 4) = 0.1.
        let expected = (10.0f64 * 0.1).cos();
        assert!((emb.double_value(&[1, 1]) - expected).abs() < 1e-6);
        // Odd widths get a zero column.
        let odd = timestep_sinusoid(&t.to_device(Device::Cpu), 9);
        assert_eq!(odd.size(), [2, 9]);
        assert_eq!(odd.double_value(&[1, 8]), 0.0);
    }
}
