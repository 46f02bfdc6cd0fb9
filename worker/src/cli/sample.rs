//! `surgery-worker sample`: latents from seeded noise with classifier-free guidance.

use super::files::{Tensors, load_model, write};
use super::{ModelArgs, SchedulerKind};
use crate::sampler::{FlowMatchEuler, Scheduler, UniPc, UniPcConfig, prompt_seed, sample, seeded_noise};
use anyhow::{Result, bail};
use std::path::Path;
use tch::{Kind, Tensor};

pub struct Options<'a> {
    pub model: &'a ModelArgs,
    pub prompts: &'a Path,
    pub output: &'a Path,
    /// (frames, height, width) in pixels.
    pub video: (u32, u32, u32),
    pub steps: usize,
    pub shift: f64,
    pub guidance: f64,
    pub seed: u64,
    pub scheduler: SchedulerKind,
    /// Also write videos here (.mp4 or .gif).
    pub decode: Option<&'a Path>,
    pub vae: Option<&'a Path>,
    pub fps: u32,
}

pub fn run(options: &Options) -> Result<()> {
    let (frames, height, width) = options.video;
    if frames == 0 || (frames - 1) % 4 != 0 {
        bail!("--frames {frames}: must be 4k + 1 (the VAE's time stride is 4)");
    }
    if options.steps == 0 {
        bail!("--steps must be at least 1");
    }

    let (vs, model) = load_model(options.model)?;
    let cfg = model.config();
    let (lf, lh, lw) = surgery_core::cost::latent_dims(frames, height, width);
    let [pt, ph, pw] = cfg.patch_size;
    if height % 8 != 0
        || width % 8 != 0
        || i64::from(lh) % ph != 0
        || i64::from(lw) % pw != 0
        || i64::from(lf) % pt != 0
    {
        bail!(
            "{height}x{width} with {frames} frames does not patchify: height and width must be multiples of {}",
            8 * ph.max(pw)
        );
    }
    let file = Tensors::read(options.prompts)?;
    let prompts = file.get("prompt_embeds", 3)?;
    if prompts.size()[2] != cfg.text_dim {
        bail!(
            "`prompt_embeds` has width {}; the model takes {}",
            prompts.size()[2],
            cfg.text_dim
        );
    }
    let negative = file.optional("negative_embeds");
    if options.guidance > 1.0 && negative.is_none() {
        bail!(
            "--guidance {} needs `negative_embeds` [1, L, text_dim] in the prompts file (or --guidance 1)",
            options.guidance
        );
    }
    let device = vs.device();
    // Checked before sampling: a missing VAE or a bad file name should not cost a run.
    let decoder = match options.decode {
        Some(path) => {
            crate::video::Format::of(path)?;
            Some(crate::video::PixelDecoder::for_model(
                &options.model.model,
                options.vae,
                device,
            )?)
        }
        None => None,
    };
    let mut scheduler: Box<dyn Scheduler> = match options.scheduler {
        SchedulerKind::Euler => Box::new(FlowMatchEuler::with_steps(options.shift, options.steps)),
        SchedulerKind::Unipc => Box::new(UniPc::with_steps(
            UniPcConfig {
                flow_shift: options.shift,
                ..UniPcConfig::default()
            },
            options.steps,
        )),
    };
    let kind = model.compute_kind();
    let negative = negative.map(|n| n.to_device(device).to_kind(kind));
    let mut results = Vec::new();
    // One prompt at a time, each from its own seed, so a prompt's sample does not depend
    // on which others share the file.
    for index in 0..prompts.size()[0] {
        let text = prompts.narrow(0, index, 1).to_device(device).to_kind(kind);
        let shape = [1, cfg.in_channels, i64::from(lf), i64::from(lh), i64::from(lw)];
        let noise = seeded_noise(prompt_seed(options.seed, index as u64), &shape, device);
        let latents = sample(
            &model,
            &noise,
            &text,
            negative.as_ref(),
            options.guidance,
            scheduler.as_mut(),
            &[],
            &mut |_| {},
        )?;
        results.push(latents.to_kind(Kind::Float).to_device(tch::Device::Cpu));
    }
    let latents = Tensor::cat(&results, 0);
    write(options.output, &[("latents", &latents)])?;
    if let (Some(decoder), Some(path)) = (&decoder, options.decode) {
        super::decode::write_videos(decoder, &latents, path, options.fps)?;
    }
    Ok(())
}
