//! `surgery-worker decode`: latents from `sample` (or a job) to video files, and the
//! writing `sample --decode` shares.

use super::files::{Tensors, device};
use crate::video::{self, PixelDecoder, Video};
use anyhow::{Result, bail};
use std::path::{Path, PathBuf};
use tch::Tensor;

pub struct Options<'a> {
    pub latents: &'a Path,
    pub output: &'a Path,
    pub model: Option<&'a Path>,
    pub vae: Option<&'a Path>,
    pub device: &'a str,
    pub fps: u32,
}

pub fn run(options: &Options) -> Result<()> {
    video::Format::of(options.output)?;
    let file = Tensors::read(options.latents)?;
    let latents = file.get("latents", 5)?;
    let device = device(options.device)?;
    let decoder = match (options.model, options.vae) {
        (Some(model), vae) => PixelDecoder::for_model(model, vae, device)?,
        (None, Some(vae)) => PixelDecoder::wan_vae(vae, device)?,
        (None, None) => bail!(
            "say how to decode: --vae DIR (the Wan VAE, a pipeline's vae/) or --model DIR (the model that made the latents)"
        ),
    };
    write_videos(&decoder, latents, options.output, options.fps)
}

/// One video per latent of `latents` [P, C, F, H, W]: `output` itself for one, else
/// `{stem}-{i:03}.{ext}`. Prints each path.
pub fn write_videos(decoder: &PixelDecoder, latents: &Tensor, output: &Path, fps: u32) -> Result<()> {
    let count = latents.size()[0];
    for i in 0..count {
        let pixels = decoder.pixels(&latents.get(i))?;
        let path = numbered(output, i, count);
        video::write(&path, &Video::from_unit_range(&pixels)?, fps)?;
        println!("{}", path.display());
    }
    Ok(())
}

/// `out.mp4` for one video; `out-000.mp4`, `out-001.mp4`, ... for several.
pub fn numbered(path: &Path, index: i64, count: i64) -> PathBuf {
    if count == 1 {
        return path.to_path_buf();
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("{stem}-{index:03}.{ext}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_videos_are_numbered() {
        assert_eq!(numbered(Path::new("a/out.mp4"), 0, 1), Path::new("a/out.mp4"));
        assert_eq!(numbered(Path::new("a/out.gif"), 7, 12), Path::new("a/out-007.gif"));
    }
}
