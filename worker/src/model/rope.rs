//! Wan's 3-D rotary position embedding (diffusers' `WanRotaryPosEmbed` and the rotation
//! inside `WanAttnProcessor`). Each head's d channels are split into t/h/w parts
//! (h = w = 2 (d / 6), t = the rest); part a rotates its channel pairs by angles
//! pos_a * theta^(-2i / d_a), pos_a the token's frame, row or column.
//!
//! Numerics as diffusers: the per-axis angle tables are computed in float64 and stored as
//! float32 (`get_1d_rotary_pos_embed(..., freqs_dtype=float64)` ends in `.float()`); the
//! rotation is computed with those fp32 tables, so for bf16 q/k it runs in fp32 and is
//! rounded to bf16 once.

use tch::{Device, Kind, Tensor};

use crate::attention::TokenGrid;

/// RoPE base, fixed in diffusers (`theta: float = 10000.0`).
pub const ROPE_THETA: f64 = 10000.0;

/// The precomputed per-axis tables: for each of t, h, w, positions 0..max_seq_len.
#[derive(Debug)]
pub struct RopeTables {
    /// [max_seq_len, d] f32, axes concatenated along channels (t, h, w); each angle's
    /// cos appears twice in a row (repeat_interleave_real).
    cos: Tensor,
    sin: Tensor,
    split: [i64; 3],
    max_seq_len: i64,
}

impl RopeTables {
    /// split: channels per axis (t, h, w), summing to the head dim.
    pub fn new(split: [i64; 3], max_seq_len: i64, device: Device) -> Self {
        let (cos, sin): (Vec<Tensor>, Vec<Tensor>) =
            split.iter().map(|&dim| axis_table(dim, max_seq_len, device)).unzip();
        RopeTables {
            cos: Tensor::cat(&cos, 1),
            sin: Tensor::cat(&sin, 1),
            split,
            max_seq_len,
        }
    }

    /// The cos/sin of every token of a post-patch grid, tokens in (frame, row, column)
    /// raster order.
    ///
    /// # Panics
    /// If an axis of the grid is longer than `rope_max_seq_len`.
    pub fn for_grid(&self, grid: TokenGrid, device: Device) -> Rope {
        let axes = [grid.frames, grid.height, grid.width];
        for (axis, len) in ["frames", "height", "width"].iter().zip(axes) {
            assert!(
                len <= self.max_seq_len,
                "post-patch {axis} {len} exceeds rope_max_seq_len {}; use a smaller latent",
                self.max_seq_len
            );
        }
        let gather = |table: &Tensor| {
            let parts = table.to_device(device).split_with_sizes(self.split, 1);
            let [f, h, w] = axes;
            // Each axis' rows [len, d_a] broadcast over the other two axes: [F, H, W, d_a].
            let t_part = parts[0]
                .narrow(0, 0, f)
                .view([f, 1, 1, -1])
                .expand([f, h, w, -1], false);
            let h_part = parts[1]
                .narrow(0, 0, h)
                .view([1, h, 1, -1])
                .expand([f, h, w, -1], false);
            let w_part = parts[2]
                .narrow(0, 0, w)
                .view([1, 1, w, -1])
                .expand([f, h, w, -1], false);
            // [F, H, W, d] -> [N, d]
            Tensor::cat(&[t_part, h_part, w_part], -1).reshape([f * h * w, -1])
        };
        Rope {
            cos: gather(&self.cos),
            sin: gather(&self.sin),
        }
    }
}

/// One axis: angles pos * theta^(-j / dim) for even j, in f64; cos and sin each
/// repeat-interleaved to [max_seq_len, dim] and cast to f32.
fn axis_table(dim: i64, max_seq_len: i64, device: Device) -> (Tensor, Tensor) {
    // diffusers: 1.0 / (theta ** (arange(0, dim, 2, f64) / dim)), the reciprocal of a power.
    let exponents = Tensor::arange_start_step(0, dim, 2, (Kind::Double, device)) / (dim as f64);
    let inv_freq = Tensor::pow_scalar(ROPE_THETA, &exponents).reciprocal();
    // torch.outer(arange(max_seq_len) [int64], inv_freq) -> [S, dim / 2] f64
    let angles = Tensor::arange(max_seq_len, (Kind::Int64, device)).outer(&inv_freq);
    let interleave = |t: Tensor| t.repeat_interleave_self_int(2, 1, Some(dim)).to_kind(Kind::Float);
    (interleave(angles.cos()), interleave(angles.sin()))
}

/// RoPE for one token grid: cos/sin per token and channel.
#[derive(Debug)]
pub struct Rope {
    /// [N, d] f32 (diffusers' `freqs_cos` [1, N, 1, d] without the unit dims).
    pub cos: Tensor,
    /// [N, d] f32.
    pub sin: Tensor,
}

impl Rope {
    /// Rotates x: [B, N, H, d] (diffusers' layout after `unflatten(2, (heads, -1))`).
    /// Channel pairs (2i, 2i+1) rotate by the pair's angle:
    /// ```text
    /// out[2i]   = x[2i] cos - x[2i+1] sin
    /// out[2i+1] = x[2i] sin + x[2i+1] cos
    /// ```
    /// computed in the tables' fp32 and cast back to x's dtype.
    pub fn rotate(&self, x: &Tensor) -> Tensor {
        let n = self.cos.size()[0];
        // [N, d] -> [1, N, 1, d/2]; the repeated tables hold each angle at 2i and 2i+1.
        let cos = self.cos.view([1, n, 1, -1]).slice(-1, 0, None, 2);
        let sin = self.sin.view([1, n, 1, -1]).slice(-1, 1, None, 2);
        // [B, N, H, d] -> [B, N, H, d/2, 2]: x1 = even channels, x2 = odd channels.
        let pairs = x.unflatten(-1, [-1, 2]);
        let (x1, x2) = (pairs.select(-1, 0), pairs.select(-1, 1));
        let even = &x1 * &cos - &x2 * &sin;
        let odd = &x1 * &sin + &x2 * &cos;
        // [B, N, H, d/2, 2] -> [B, N, H, d], interleaving even and odd back.
        Tensor::stack(&[even, odd], -1).flatten(-2, -1).to_kind(x.kind())
    }

    /// Number of tokens N.
    pub fn tokens(&self) -> i64 {
        self.cos.size()[0]
    }

    /// Moves or copies both tables (e.g. onto another GPU).
    pub fn to_device(&self, device: Device) -> Rope {
        Rope {
            cos: self.cos.to_device(device),
            sin: self.sin.to_device(device),
        }
    }

    /// A handle on the same tensors.
    pub fn shallow_clone(&self) -> Rope {
        Rope {
            cos: self.cos.shallow_clone(),
            sin: self.sin.shallow_clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_position_is_identity_and_norms_are_kept() {
        let tables = RopeTables::new([8, 4, 4], 16, Device::Cpu);
        let grid = TokenGrid {
            frames: 2,
            height: 3,
            width: 4,
        };
        let rope = tables.for_grid(grid, Device::Cpu);
        assert_eq!(rope.cos.size(), [24, 16]);
        let x = Tensor::randn([2, 24, 3, 16], (Kind::Float, Device::Cpu));
        let y = rope.rotate(&x);
        // Token 0 sits at (0, 0, 0): no rotation.
        let diff = (y.narrow(1, 0, 1) - x.narrow(1, 0, 1)).abs().max().double_value(&[]);
        assert!(diff < 1e-7, "{diff}");
        // A rotation keeps each pair's norm.
        let norm = |t: &Tensor| {
            t.unflatten(-1, [-1, 2])
                .square()
                .sum_dim_intlist(-1, false, Kind::Float)
        };
        let diff = (norm(&y) - norm(&x)).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn table_matches_closed_form() {
        // Axis h (channels 8..12) of token (f=1, h=2, w=3): angle = 2 * 10000^(-j/4), j = 0, 2.
        let tables = RopeTables::new([8, 4, 4], 16, Device::Cpu);
        let rope = tables.for_grid(
            TokenGrid {
                frames: 2,
                height: 3,
                width: 4,
            },
            Device::Cpu,
        );
        let token = (3 + 2) * 4 + 3;
        for (j, channel) in [(0.0, 8), (2.0, 10)] {
            let angle = 2.0 * ROPE_THETA.powf(-j / 4.0);
            let got = rope.cos.double_value(&[token, channel]);
            assert!((got - angle.cos()).abs() < 1e-7, "{got} vs {}", angle.cos());
            assert_eq!(rope.cos.double_value(&[token, channel + 1]), got);
        }
    }
}
