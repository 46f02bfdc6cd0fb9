//! `surgery-worker forward`: one forward pass from a file, to a file.

use super::ModelArgs;
use super::files::{Tensors, load_model, write};
use anyhow::{Result, bail};
use std::path::Path;
use tch::Kind;

pub fn run(args: &ModelArgs, inputs: &Path, output: &Path) -> Result<()> {
    let (vs, model) = load_model(args)?;
    let file = Tensors::read(inputs)?;
    let cfg = model.config();
    let latents = file.get("hidden_states", 5)?;
    let timestep = file.get("timestep", 1)?;
    let text = file.get("encoder_hidden_states", 3)?;
    let batch = latents.size()[0];
    if latents.size()[1] != cfg.in_channels {
        bail!(
            "`hidden_states` has {} channels; the model takes {}",
            latents.size()[1],
            cfg.in_channels
        );
    }
    if timestep.size()[0] != batch || text.size()[0] != batch {
        bail!(
            "batch sizes differ: hidden_states {batch}, timestep {}, encoder_hidden_states {}",
            timestep.size()[0],
            text.size()[0]
        );
    }
    if text.size()[2] != cfg.text_dim {
        bail!(
            "`encoder_hidden_states` has width {}; the model takes {}",
            text.size()[2],
            cfg.text_dim
        );
    }
    for (axis, (size, patch)) in latents.size()[2..].iter().zip(cfg.patch_size).enumerate() {
        if size % patch != 0 {
            bail!(
                "`hidden_states` axis {} has {size}, not a multiple of the patch {patch}",
                axis + 2
            );
        }
    }
    let device = vs.device();
    let kind = model.compute_kind();
    let out = tch::no_grad(|| {
        model.forward(
            &latents.to_device(device).to_kind(kind),
            &timestep.to_device(device).to_kind(Kind::Float),
            &text.to_device(device).to_kind(kind),
        )
    });
    let out = out.to_kind(Kind::Float).to_device(tch::Device::Cpu);
    write(output, &[("output", &out)])
}
