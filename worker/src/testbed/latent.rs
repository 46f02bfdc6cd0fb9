//! [`LatentNorm`]: the constant shift and scale between the codec's latents and what the
//! testbed teacher is trained on, so the diffusion model sees latents of about unit variance.
//!
//! The codec's latents are the pixels themselves (mostly the background's -0.6, objects at -1,
//! 0 or 1), so their variance is far from the unit variance of the flow-matching noise. The
//! teacher trains on `z = (x - shift) / scale`; whoever decodes a sampled `z` applies
//! `x = z scale + shift` first ([`LatentNorm::decode`]). The two numbers are the mean and the
//! population standard deviation of every latent value of a fixed set of training clips,
//! rounded to 4 decimals, computed in plain Rust (f64) so they are the same on every machine;
//! they are recorded in the teacher folder's `testbed.json`.

use anyhow::{Result, ensure};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::codec;
use super::video::Video;

/// `z = (x - shift) / scale` for the model, `x = z scale + shift` for the codec.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatentNorm {
    pub shift: f64,
    pub scale: f64,
}

impl LatentNorm {
    /// No normalisation: the codec's latents as they are.
    pub const IDENTITY: LatentNorm = LatentNorm { shift: 0.0, scale: 1.0 };

    /// The mean and standard deviation of every value of `videos` (the codec only moves
    /// values), each rounded to 4 decimals. `videos` must not be empty or constant.
    pub fn of_videos(videos: &[Video]) -> Result<LatentNorm> {
        let count: usize = videos.iter().map(|v| v.values().len()).sum();
        ensure!(count > 0, "the latent statistics need at least one non-empty clip");
        let values = || videos.iter().flat_map(|v| v.values().iter().map(|&x| f64::from(x)));
        let mean = values().sum::<f64>() / count as f64;
        let variance = values().map(|x| (x - mean).powi(2)).sum::<f64>() / count as f64;
        let round = |x: f64| (x * 1e4).round() / 1e4;
        let norm = LatentNorm {
            shift: round(mean),
            scale: round(variance.sqrt()),
        };
        ensure!(norm.scale > 0.0, "the clips are constant: no scale to normalise by");
        Ok(norm)
    }

    /// Codec latents -> model latents, float32: `(x - shift) / scale`.
    pub fn normalise(&self, latent: &Tensor) -> Tensor {
        (latent.to_kind(Kind::Float) - self.shift) / self.scale
    }

    /// Model latents -> codec latents, float32: `z scale + shift`.
    pub fn denormalise(&self, latent: &Tensor) -> Tensor {
        latent.to_kind(Kind::Float) * self.scale + self.shift
    }

    /// The clip of one model latent `[48, F, h, w]` (any device and float kind).
    pub fn decode(&self, latent: &Tensor) -> Result<Video> {
        codec::decode_video(&self.denormalise(latent))
    }

    /// Whether both numbers are finite and the scale positive.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.shift.is_finite() && self.scale.is_finite() && self.scale > 0.0,
            "latent normalisation shift {} / scale {} must be finite with a positive scale",
            self.shift,
            self.scale
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testbed::render::render;
    use crate::testbed::scene::{Background, Cell, Colour, Direction, Geometry, Prompt, SceneObject, Shape, Speed};

    fn clip(colour: Colour) -> Video {
        let object = SceneObject {
            shape: Shape::Square,
            colour,
            cell: Cell { row: 1, col: 2 },
            direction: Direction::E,
            speed: Speed::Slow,
        };
        render(&Prompt::new(vec![object], Background::Plain).unwrap(), &Geometry::cpu())
    }

    #[test]
    fn normalised_latents_have_unit_scale_and_decode_back() {
        let videos = [clip(Colour::Red), clip(Colour::White)];
        let norm = LatentNorm::of_videos(&videos).unwrap();
        // Mostly the -0.6 background.
        assert!((-0.6..-0.4).contains(&norm.shift), "{norm:?}");
        let latents = Tensor::stack(
            &videos
                .iter()
                .map(|v| codec::encode_video(v).unwrap())
                .collect::<Vec<_>>(),
            0,
        );
        let z = norm.normalise(&latents);
        let mean = z.mean(Kind::Double).double_value(&[]);
        let std = z.std(false).double_value(&[]);
        assert!(mean.abs() < 1e-3 && (std - 1.0).abs() < 1e-3, "{mean} {std}");
        // Decoding applies the inverse (to float32 rounding), then the codec.
        let decoded = norm.decode(&z.get(1)).unwrap();
        let worst = decoded
            .values()
            .iter()
            .zip(videos[1].values())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "{worst}");
        assert_eq!(LatentNorm::IDENTITY.decode(&latents.get(0)).unwrap(), videos[0]);
        assert!(LatentNorm::of_videos(&[]).is_err());
        assert!(LatentNorm { shift: 0.0, scale: 0.0 }.validate().is_err());
    }
}
