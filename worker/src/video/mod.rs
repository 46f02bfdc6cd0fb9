//! Video files of samples, and the latents-to-pixels step before them ([`PixelDecoder`]:
//! the testbed codec or the Wan VAE). GIF (image-rs's `gif`, pure Rust, what web pages show) and MP4
//! with H.264 (`openh264`, Cisco's encoder built from source, muxed by `mp4`). A [`Video`]
//! is RGB8 frames; [`Video::from_unit_range`] makes one from a decoded sample the way
//! diffusers' video processor does (`vae::to_u8_frames`).

mod encode;
mod latents;

pub use encode::{read_mp4_frames, write_gif, write_mp4};
pub use latents::{PixelDecoder, sibling_vae};

use anyhow::{Context, Result, bail, ensure};
use std::path::Path;
use tch::Tensor;

/// Wan2.1 renders at 16 frames a second.
pub const DEFAULT_FPS: u32 = 16;

/// RGB8 frames of one size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Video {
    pub width: usize,
    pub height: usize,
    /// Each `height x width x 3` bytes, rows top to bottom.
    pub frames: Vec<Vec<u8>>,
}

impl Video {
    /// From a pixel tensor [3, F, H, W] (or [1, 3, F, H, W]) with values in [-1, 1].
    pub fn from_unit_range(pixels: &Tensor) -> Result<Video> {
        let pixels = if pixels.dim() == 5 {
            ensure!(
                pixels.size()[0] == 1,
                "one video at a time, got a batch of {}",
                pixels.size()[0]
            );
            pixels.squeeze_dim(0)
        } else {
            pixels.shallow_clone()
        };
        ensure!(
            pixels.dim() == 4 && pixels.size()[0] == 3,
            "expected pixels [3, frames, height, width], got {:?}",
            pixels.size()
        );
        let bytes = crate::vae::to_u8_frames(&pixels)
            .contiguous()
            .to_device(tch::Device::Cpu);
        let (f, h, w) = (bytes.size()[0], bytes.size()[1] as usize, bytes.size()[2] as usize);
        let mut frames = Vec::with_capacity(f as usize);
        for i in 0..f {
            let frame = bytes.get(i).flatten(0, -1);
            frames.push(Vec::<u8>::try_from(&frame).context("reading frame bytes")?);
        }
        Ok(Video {
            width: w,
            height: h,
            frames,
        })
    }

    /// Videos next to each other, left to right (teacher and student from the same noise),
    /// with a 2-pixel white gap; all must have the same height and frame count.
    pub fn side_by_side(videos: &[&Video]) -> Result<Video> {
        const GAP: usize = 2;
        let Some(first) = videos.first() else {
            bail!("no videos to put side by side")
        };
        for v in videos {
            ensure!(
                v.height == first.height && v.frames.len() == first.frames.len(),
                "side by side needs one height and frame count: {}x{} ({} frames) against {}x{} ({} frames)",
                v.height,
                v.width,
                v.frames.len(),
                first.height,
                first.width,
                first.frames.len()
            );
        }
        let width = videos.iter().map(|v| v.width).sum::<usize>() + GAP * (videos.len() - 1);
        let frames = (0..first.frames.len())
            .map(|f| {
                let mut out = Vec::with_capacity(width * first.height * 3);
                for row in 0..first.height {
                    for (i, v) in videos.iter().enumerate() {
                        if i > 0 {
                            out.extend(std::iter::repeat_n(255u8, GAP * 3));
                        }
                        out.extend_from_slice(&v.frames[f][row * v.width * 3..(row + 1) * v.width * 3]);
                    }
                }
                out
            })
            .collect();
        Ok(Video {
            width,
            height: first.height,
            frames,
        })
    }

    fn check(&self) -> Result<()> {
        ensure!(!self.frames.is_empty(), "a video needs at least one frame");
        ensure!(
            self.width > 0 && self.height > 0,
            "a video needs a size, got {}x{}",
            self.width,
            self.height
        );
        for (i, f) in self.frames.iter().enumerate() {
            ensure!(
                f.len() == self.width * self.height * 3,
                "frame {i} holds {} bytes; {}x{} RGB needs {}",
                f.len(),
                self.width,
                self.height,
                self.width * self.height * 3
            );
        }
        Ok(())
    }
}

/// Container chosen by a file's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Gif,
    Mp4,
}

impl Format {
    pub fn of(path: &Path) -> Result<Format> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("gif") => Ok(Format::Gif),
            Some("mp4") => Ok(Format::Mp4),
            _ => bail!("{}: the video's name must end in .mp4 or .gif", path.display()),
        }
    }
}

/// Writes `video` at `fps` to `path` as its extension says (.gif or .mp4).
pub fn write(path: &Path, video: &Video, fps: u32) -> Result<()> {
    let format = Format::of(path)?;
    ensure!(fps > 0, "frames per second must be positive");
    video.check()?;
    let bytes = match format {
        Format::Gif => write_gif(video, fps)?,
        Format::Mp4 => write_mp4(video, fps)?,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixels_in_unit_range_become_bytes_like_diffusers() {
        // [3, 1, 1, 4]: -1 -> 0, 0 -> 128 (127.5 rounds half to even in torch: 128), 1 -> 255, 2 clamps.
        let t = Tensor::from_slice(&[-1.0f32, 0.0, 1.0, 2.0])
            .view([1, 1, 1, 4])
            .repeat([3, 1, 1, 1]);
        let v = Video::from_unit_range(&t).unwrap();
        assert_eq!((v.width, v.height, v.frames.len()), (4, 1, 1));
        assert_eq!(v.frames[0], [0, 0, 0, 128, 128, 128, 255, 255, 255, 255, 255, 255]);
        let err =
            Video::from_unit_range(&Tensor::zeros([4, 1, 2, 2], (tch::Kind::Float, tch::Device::Cpu))).unwrap_err();
        assert!(
            err.to_string().contains("expected pixels [3, frames, height, width]"),
            "{err}"
        );
    }

    #[test]
    fn side_by_side_puts_a_gap_between() {
        let a = Video {
            width: 1,
            height: 1,
            frames: vec![vec![1, 2, 3]],
        };
        let b = Video {
            width: 1,
            height: 1,
            frames: vec![vec![4, 5, 6]],
        };
        let both = Video::side_by_side(&[&a, &b]).unwrap();
        assert_eq!(both.width, 4);
        assert_eq!(both.frames[0], [1, 2, 3, 255, 255, 255, 255, 255, 255, 4, 5, 6]);
        let tall = Video {
            width: 1,
            height: 2,
            frames: vec![vec![0; 6]],
        };
        let err = Video::side_by_side(&[&a, &tall]).unwrap_err();
        assert!(err.to_string().contains("needs one height and frame count"), "{err}");
    }

    #[test]
    fn the_extension_picks_the_format() {
        assert_eq!(Format::of(Path::new("a/b.MP4")).unwrap(), Format::Mp4);
        assert_eq!(Format::of(Path::new("b.gif")).unwrap(), Format::Gif);
        let err = Format::of(Path::new("b.avi")).unwrap_err();
        assert_eq!(err.to_string(), "b.avi: the video's name must end in .mp4 or .gif");
    }
}
