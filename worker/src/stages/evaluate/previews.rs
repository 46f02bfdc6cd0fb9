//! Previews: for the first few held-out prompts, the teacher's and the student's samples
//! from the same noise, decoded to pixels and put side by side (teacher left), stored with
//! the job as MP4 and GIF (`layout::evaluate_preview`) for `surgeryctl previews` and the
//! job page. The decoder is the testbed codec for a testbed teacher, else the Wan VAE
//! (`teacher.vae` or the pipeline's); without one the report says why there are none.

use crate::stages::folders::model_folder;
use crate::stages::task::TaskError;
use crate::stages::{TaskContext, pipeline};
use crate::storage::Storage;
use crate::video::{self, PixelDecoder, Video};
use serde::Serialize;
use std::path::Path;
use surgery_core::layout;
use tch::Tensor;

/// One stored preview.
#[derive(Debug, Clone, Serialize)]
pub struct Preview {
    pub prompt: u32,
    pub mp4: String,
    pub gif: String,
}

/// The decoder for this job's latents, or why there is none.
pub fn decoder(ctx: &TaskContext, teacher_dir: &Path) -> Result<Result<PixelDecoder, String>, TaskError> {
    if teacher_dir.join(crate::testbed::folder::DESCRIPTION_FILE).is_file() {
        return PixelDecoder::for_model(teacher_dir, None, ctx.device)
            .map(Ok)
            .map_err(|e| TaskError::Fatal(format!("{e:#}")));
    }
    let Some(url) = pipeline::resolve(ctx)?.vae else {
        return Ok(Err(
            "no previews: the teacher has no VAE (set teacher.vae, or point teacher.url at the diffusers pipeline folder)"
                .into(),
        ));
    };
    let dir = model_folder(ctx, &url)?;
    PixelDecoder::wan_vae(&dir, ctx.device)
        .map(Ok)
        .map_err(|e| TaskError::Fatal(format!("{e:#}")))
}

/// Decodes, joins and stores one prompt's preview.
pub fn store(
    ctx: &TaskContext,
    job: &Storage,
    decoder: &PixelDecoder,
    prompt: u32,
    teacher: &Tensor,
    student: &Tensor,
) -> Result<Preview, TaskError> {
    let fatal = |e: anyhow::Error| TaskError::Fatal(format!("preview of prompt {prompt}: {e:#}"));
    let pixels = |latent: &Tensor| {
        decoder
            .pixels(&latent.squeeze_dim(0))
            .and_then(|p| Video::from_unit_range(&p))
    };
    let (t, s) = (pixels(teacher).map_err(fatal)?, pixels(student).map_err(fatal)?);
    let both = Video::side_by_side(&[&t, &s]).map_err(fatal)?;
    let mp4 = layout::evaluate_preview(prompt, "mp4");
    let gif = layout::evaluate_preview(prompt, "gif");
    let fps = video::DEFAULT_FPS;
    for (path, bytes) in [
        (&mp4, video::write_mp4(&both, fps).map_err(fatal)?),
        (&gif, video::write_gif(&both, fps).map_err(fatal)?),
    ] {
        ctx.block_on(job.put(path, bytes.into()))
            .map_err(TaskError::retryable)?;
    }
    Ok(Preview { prompt, mp4, gif })
}
