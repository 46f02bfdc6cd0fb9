//! Spatial tiling of the decode, as diffusers' `AutoencoderKLWan.tiled_decode`: the latent
//! is cut into overlapping tiles, each decoded on its own (all its frames, with its own
//! cache), and each decoded tile's top and left overlap is cross-faded with the tile above
//! and the tile to its left (`blend_v`, `blend_h`) before the tiles are laid side by side.
//!
//! What it bounds: the decoder's activations, which scale with the area decoded at once
//! (for Wan2.1 at full width, 96-384 channels at up to 8x the latent's resolution, over up
//! to 4 frames), become those of one tile (by default 256 x 256 pixels) whatever the frame
//! size. What it does not: the decoded video itself, and one row of decoded tiles (each
//! tile all its frames) kept for blending with the next row. Tiles are decoded row by row
//! and blended as soon as their neighbours exist, instead of decoding all tiles first as
//! diffusers does; the blends read the same (already blended) neighbours, so the result
//! is the same.

use tch::Tensor;

/// Tile sizes and strides in output pixels, as diffusers' `enable_tiling` takes them;
/// [`Tiling::default`] is diffusers' default (256-pixel tiles every 192 pixels: 64 pixels
/// of blending). The latent tile is the pixel size over the spatial factor (8), rounded
/// down, as in diffusers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiling {
    pub tile_sample_min_height: i64,
    pub tile_sample_min_width: i64,
    pub tile_sample_stride_height: i64,
    pub tile_sample_stride_width: i64,
}

impl Default for Tiling {
    fn default() -> Self {
        Tiling {
            tile_sample_min_height: 256,
            tile_sample_min_width: 256,
            tile_sample_stride_height: 192,
            tile_sample_stride_width: 192,
        }
    }
}

impl Tiling {
    /// Whether a latent of `height` x `width` is tiled at spatial factor `ratio`: only
    /// when it is larger than one tile (diffusers' test in `_decode`).
    pub fn applies(&self, height: i64, width: i64, ratio: i64) -> bool {
        width > self.tile_sample_min_width / ratio || height > self.tile_sample_min_height / ratio
    }

    /// Panics with the reason if these sizes cannot tile at spatial factor `ratio` (a
    /// stride under one latent pixel, or tiles that do not overlap their stride).
    fn check(&self, ratio: i64) {
        for (what, stride, min) in [
            ("height", self.tile_sample_stride_height, self.tile_sample_min_height),
            ("width", self.tile_sample_stride_width, self.tile_sample_min_width),
        ] {
            assert!(
                stride >= ratio,
                "tile stride along {what} is {stride} pixels, less than one latent pixel ({ratio})"
            );
            assert!(
                min >= stride,
                "tiles along {what} are {min} pixels, smaller than their stride {stride}: they would leave gaps"
            );
        }
    }
}

/// `tiled_decode`: `z` [B, z, T, h, w] (un-normalised latents) cut into tiles of
/// `tiling` at spatial factor `ratio`, each decoded by `decode_tile` ([B, z, T, th, tw]
/// -> [B, C, F, ratio * th, ratio * tw]), blended and assembled into
/// [B, C, F, ratio * h, ratio * w]. Not clamped.
pub fn decode_tiled(z: &Tensor, tiling: &Tiling, ratio: i64, decode_tile: impl Fn(&Tensor) -> Tensor) -> Tensor {
    tiling.check(ratio);
    let [_, _, _, height, width] = z.size()[..] else {
        panic!("latents must be [B, C, T, H, W], got {:?}", z.size())
    };
    let (latent_min_h, latent_min_w) = (
        tiling.tile_sample_min_height / ratio,
        tiling.tile_sample_min_width / ratio,
    );
    let (latent_stride_h, latent_stride_w) = (
        tiling.tile_sample_stride_height / ratio,
        tiling.tile_sample_stride_width / ratio,
    );
    let (stride_h, stride_w) = (tiling.tile_sample_stride_height, tiling.tile_sample_stride_width);
    let blend_height = tiling.tile_sample_min_height - stride_h;
    let blend_width = tiling.tile_sample_min_width - stride_w;
    let (sample_h, sample_w) = (height * ratio, width * ratio);

    let mut output: Option<Tensor> = None;
    let mut above: Vec<Tensor> = Vec::new();
    let mut top = 0;
    for (row_index, i) in (0..height).step_by(latent_stride_h as usize).enumerate() {
        let mut row: Vec<Tensor> = Vec::new();
        let (mut left, mut row_height) = (0, 0);
        for (column, j) in (0..width).step_by(latent_stride_w as usize).enumerate() {
            let latent_tile = z
                .narrow(3, i, latent_min_h.min(height - i))
                .narrow(4, j, latent_min_w.min(width - j));
            let mut tile = decode_tile(&latent_tile);
            if row_index > 0 {
                blend_v(&above[column], &mut tile, blend_height);
            }
            if column > 0 {
                blend_h(&row[column - 1], &mut tile, blend_width);
            }
            let size = tile.size();
            let (crop_h, crop_w) = (stride_h.min(size[3]), stride_w.min(size[4]));
            let out = output.get_or_insert_with(|| {
                Tensor::empty(
                    [size[0], size[1], size[2], sample_h, sample_w],
                    (tile.kind(), tile.device()),
                )
            });
            // The cropped tile goes where diffusers' torch.cat puts it; the final crop to
            // the sample size clips the last row and column.
            let (rows, cols) = (crop_h.min(sample_h - top), crop_w.min(sample_w - left));
            if rows > 0 && cols > 0 {
                out.narrow(3, top, rows)
                    .narrow(4, left, cols)
                    .copy_(&tile.narrow(3, 0, rows).narrow(4, 0, cols));
            }
            left += crop_w;
            row_height = crop_h;
            row.push(tile);
        }
        top += row_height;
        above = row;
    }
    output.expect("a latent with pixels has at least one tile")
}

/// diffusers' `blend_v`: the first `extent` rows of `b` fade in from the last `extent`
/// rows of `a` (the tile above), row y weighted y / extent; in place on `b`.
pub fn blend_v(a: &Tensor, b: &mut Tensor, extent: i64) {
    blend(a, b, extent, 3);
}

/// diffusers' `blend_h`: the same across columns, from the tile to the left.
pub fn blend_h(a: &Tensor, b: &mut Tensor, extent: i64) {
    blend(a, b, extent, 4);
}

fn blend(a: &Tensor, b: &mut Tensor, extent: i64, dim: i64) {
    let (a_len, b_len) = (a.size()[dim as usize], b.size()[dim as usize]);
    let extent = a_len.min(b_len).min(extent);
    // One line at a time with scalar weights, as diffusers, so the rounding is the same.
    for y in 0..extent {
        let weight = y as f64 / extent as f64;
        let blended = a.narrow(dim, a_len - extent + y, 1) * (1.0 - weight) + b.narrow(dim, y, 1) * weight;
        b.narrow(dim, y, 1).copy_(&blended);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn blending_fades_linearly_and_stops_at_the_smaller_tile() {
        let a = Tensor::ones([1, 1, 1, 4, 2], (Kind::Float, Device::Cpu));
        let mut b = Tensor::zeros([1, 1, 1, 3, 2], (Kind::Float, Device::Cpu));
        blend_v(&a, &mut b, 8); // extent min(4, 3, 8) = 3
        let column: Vec<f32> = Vec::try_from(b.select(4, 0).flatten(0, -1)).unwrap();
        assert_eq!(column, [1.0, 2.0 / 3.0, 1.0 / 3.0]);
    }

    /// With a decoder that is an exact nearest-neighbour upscale, overlapping tiles agree
    /// and blending must reproduce the untiled result wherever the tiles land.
    #[test]
    fn tiles_reassemble_a_pointwise_decoder() {
        let z = Tensor::arange(2 * 3 * 7 * 9, (Kind::Float, Device::Cpu)).view([1, 2, 3, 7, 9]);
        let upscale = |t: &Tensor| {
            t.repeat_interleave_self_int(8, 3, None)
                .repeat_interleave_self_int(8, 4, None)
        };
        let tiling = Tiling {
            tile_sample_min_height: 32,
            tile_sample_min_width: 48,
            tile_sample_stride_height: 24,
            tile_sample_stride_width: 32,
        };
        assert!(tiling.applies(7, 9, 8));
        let tiled = decode_tiled(&z, &tiling, 8, upscale);
        let whole = upscale(&z);
        assert_eq!(tiled.size(), whole.size());
        let diff = (&tiled - &whole).abs().max().double_value(&[]);
        assert!(diff < 1e-3, "tiles reassemble to {diff} off");
    }

    #[test]
    #[should_panic(expected = "smaller than their stride")]
    fn gaps_are_refused() {
        let tiling = Tiling {
            tile_sample_min_height: 16,
            ..Tiling::default()
        };
        let _ = decode_tiled(
            &Tensor::zeros([1, 1, 1, 4, 4], (Kind::Float, Device::Cpu)),
            &tiling,
            8,
            |t| t.copy(),
        );
    }
}
