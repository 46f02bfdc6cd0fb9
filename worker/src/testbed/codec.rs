//! The testbed's "VAE": an exact, invertible 4 x 4 space-to-depth of the pixels, so the latent
//! carries no codec error and every quality difference is the transformer's.
//!
//! Pixels `[..., 3, F, H, W]` in `[-1, 1]` (any leading batch dims, H and W multiples of 4)
//! become latents `[..., 48, F, H/4, W/4]` and back, bit for bit. Latent channel
//! `c * 16 + dy * 4 + dx` holds colour channel `c` (R, G, B) of the pixel at row `dy` and
//! column `dx` of each 4 x 4 block: colour-major, then row, then column. Time is not folded.
//! At 64 x 64 x 16 the latent is 48 x 16 x 16 x 16, 1,024 tokens with Wan's patch (1, 2, 2);
//! a teacher on it has `in_channels = out_channels = 48`.
//!
//! The latent is not rescaled: values are the pixels' own, mostly the background's -0.6.
//! Whether to normalise before the flow-matching noise is the trainer's decision, not the codec's.

use anyhow::{Result, ensure};
use tch::{Kind, Tensor};

use super::video::Video;

/// Side of the square pixel block folded into channels.
pub const PATCH: i64 = 4;

/// Latent channels: 3 colours x 4 x 4 pixels.
pub const LATENT_CHANNELS: i64 = 3 * PATCH * PATCH;

/// The latent shape of a clip of `frames` x `height` x `width` pixels: `[48, F, H/4, W/4]`.
pub fn latent_shape(frames: usize, height: usize, width: usize) -> [i64; 4] {
    [
        LATENT_CHANNELS,
        frames as i64,
        height as i64 / PATCH,
        width as i64 / PATCH,
    ]
}

/// Pixels `[..., 3, F, H, W]` -> latent `[..., 48, F, H/4, W/4]`.
pub fn encode(pixels: &Tensor) -> Result<Tensor> {
    let size = pixels.size();
    ensure!(size.len() >= 4, "pixels must be [..., 3, F, H, W], got {size:?}");
    let (lead, tail) = size.split_at(size.len() - 4);
    let [channels, frames, height, width] = [tail[0], tail[1], tail[2], tail[3]];
    ensure!(channels == 3, "pixels must have 3 channels, got {size:?}");
    ensure!(
        height % PATCH == 0 && width % PATCH == 0,
        "H and W must be multiples of {PATCH}, got {size:?}"
    );
    let batch: i64 = lead.iter().product();
    let (rows, cols) = (height / PATCH, width / PATCH);
    let blocks = pixels.reshape([batch, 3, frames, rows, PATCH, cols, PATCH]); // [B, c, F, h, dy, w, dx]
    let latent = blocks.permute([0, 1, 4, 6, 2, 3, 5]); // [B, c, dy, dx, F, h, w]
    let mut out_shape = lead.to_vec();
    out_shape.extend([LATENT_CHANNELS, frames, rows, cols]);
    Ok(latent.reshape(out_shape.as_slice()))
}

/// Latent `[..., 48, F, h, w]` -> pixels `[..., 3, F, 4h, 4w]`; the inverse of [`encode`].
pub fn decode(latent: &Tensor) -> Result<Tensor> {
    let size = latent.size();
    ensure!(size.len() >= 4, "latent must be [..., 48, F, h, w], got {size:?}");
    let (lead, tail) = size.split_at(size.len() - 4);
    let [channels, frames, rows, cols] = [tail[0], tail[1], tail[2], tail[3]];
    ensure!(
        channels == LATENT_CHANNELS,
        "latent must have {LATENT_CHANNELS} channels, got {size:?}"
    );
    let batch: i64 = lead.iter().product();
    let blocks = latent.reshape([batch, 3, PATCH, PATCH, frames, rows, cols]); // [B, c, dy, dx, F, h, w]
    let pixels = blocks.permute([0, 1, 4, 5, 2, 6, 3]); // [B, c, F, h, dy, w, dx]
    let mut out_shape = lead.to_vec();
    out_shape.extend([3, frames, rows * PATCH, cols * PATCH]);
    Ok(pixels.reshape(out_shape.as_slice()))
}

/// A [`Video`] as a float32 CPU tensor `[3, F, H, W]`.
pub fn video_tensor(video: &Video) -> Tensor {
    let shape = [3, video.frames() as i64, video.height() as i64, video.width() as i64];
    Tensor::from_slice(video.values()).view(shape)
}

/// A [`Video`] from a pixel tensor `[3, F, H, W]` (any device and float kind), clamped to
/// `[-1, 1]` as a decoder's output is before it is shown.
pub fn video_from_tensor(pixels: &Tensor) -> Result<Video> {
    let size = pixels.size();
    ensure!(
        size.len() == 4 && size[0] == 3,
        "pixels must be [3, F, H, W], got {size:?}"
    );
    let values = pixels
        .to_kind(Kind::Float)
        .clamp(-1.0, 1.0)
        .to_device(tch::Device::Cpu)
        .contiguous()
        .view([-1]);
    let values = Vec::<f32>::try_from(&values)?;
    let [frames, height, width] = [size[1], size[2], size[3]].map(|d| d as usize);
    Ok(Video::from_values(frames, height, width, values).expect("the length is the tensor's"))
}

/// A clip's latent `[48, F, H/4, W/4]`.
pub fn encode_video(video: &Video) -> Result<Tensor> {
    encode(&video_tensor(video))
}

/// The clip of one latent `[48, F, h, w]`.
pub fn decode_video(latent: &Tensor) -> Result<Video> {
    video_from_tensor(&decode(latent)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::SeededRng;
    use crate::testbed::render::render;
    use crate::testbed::scene::{Background, Cell, Colour, Direction, Geometry, Prompt, SceneObject, Shape, Speed};

    #[test]
    fn round_trip_is_exact_with_any_batch_dims() {
        let mut rng = SeededRng::new(11);
        for shape in [vec![3, 2, 8, 12], vec![2, 3, 3, 4, 8], vec![2, 1, 3, 2, 4, 4]] {
            let pixels = rng.normal_tensor(&shape, tch::Device::Cpu);
            let latent = encode(&pixels).unwrap();
            let n = shape.len();
            let mut want = shape[..n - 4].to_vec();
            want.extend([48, shape[n - 3], shape[n - 2] / 4, shape[n - 1] / 4]);
            assert_eq!(latent.size(), want);
            assert!(decode(&latent).unwrap().equal(&pixels), "{shape:?}");
        }
        let odd = Tensor::zeros([3, 2, 6, 8], (Kind::Float, tch::Device::Cpu));
        assert!(encode(&odd).is_err());
        assert!(decode(&Tensor::zeros([16, 2, 2, 2], (Kind::Float, tch::Device::Cpu))).is_err());
    }

    #[test]
    fn channel_order_is_colour_then_row_then_column() {
        // pixel value = 1000 c + 100 f + 10 y + x on a 1 x 4 x 8 clip.
        let values: Vec<f32> = (0..3 * 4 * 8)
            .map(|i| {
                let (c, y, x) = (i / 32, (i / 8) % 4, i % 8);
                (1000 * c + 10 * y + x) as f32
            })
            .collect();
        let pixels = Tensor::from_slice(&values).view([3, 1, 4, 8]);
        let latent = encode(&pixels).unwrap();
        // Channel 2 * 16 + 3 * 4 + 1 = 45 at block column 1: blue, row 3, column 4 + 1.
        assert_eq!(latent.double_value(&[45, 0, 0, 1]), 2035.0);
        assert_eq!(latent.double_value(&[0, 0, 0, 0]), 0.0);
        assert_eq!(latent.double_value(&[5, 0, 0, 0]), 11.0);
    }

    #[test]
    fn a_rendered_clip_survives_the_codec() {
        let geometry = Geometry::gpu();
        let object = SceneObject {
            shape: Shape::Disc,
            colour: Colour::Orange,
            cell: Cell { row: 2, col: 1 },
            direction: Direction::SW,
            speed: Speed::Fast,
        };
        let video = render(&Prompt::new(vec![object], Background::Textured).unwrap(), &geometry);
        let latent = encode_video(&video).unwrap();
        assert_eq!(latent.size(), latent_shape(16, 64, 64).to_vec());
        assert_eq!(latent.size(), vec![48, 16, 16, 16]);
        assert_eq!(decode_video(&latent).unwrap(), video);
        // Out-of-range decoder output is clamped.
        let loud = video_from_tensor(&(video_tensor(&video) * 3.0)).unwrap();
        assert!(loud.values().iter().all(|v| (-1.0..=1.0).contains(v)));
    }
}
