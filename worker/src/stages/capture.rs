//! Capture: the teacher samples each prompt of the shard from its seeded noise with
//! classifier-free guidance; at the spec's capture steps every block's input hidden state
//! and timestep projection (conditional branch) are kept, and written per block to
//! `cache/block-{b}/shard-{s}`; the final latents go to `latents/shard-{s}` as the
//! default fine-tuning data. A restarted capture redoes its shard (a shard is the unit;
//! keep shards small at high resolution).

use super::model_inputs;
use super::{CaptureShard, TaskContext};
use crate::sampler::{self, FlowMatchEuler, Scheduler, UniPc, UniPcConfig, prompt_seed, seeded_noise};
use crate::stages::task::{TaskError, TaskOutput};
use crate::storage::tensors;
use std::collections::BTreeMap;
use surgery_core::layout;
use surgery_core::spec::SchedulerKind;
use tch::{Device, Kind, Tensor};

pub fn scheduler(kind: SchedulerKind, shift: f64, steps: usize) -> Box<dyn Scheduler> {
    match kind {
        SchedulerKind::Euler => Box::new(FlowMatchEuler::with_steps(shift, steps)),
        SchedulerKind::Unipc => Box::new(UniPc::with_steps(
            UniPcConfig {
                flow_shift: shift,
                ..UniPcConfig::default()
            },
            steps,
        )),
    }
}

pub fn run(ctx: &TaskContext, params: CaptureShard) -> Result<TaskOutput, TaskError> {
    let spec = &ctx.input.spec;
    let job = ctx.job_storage()?;
    let (_vs, teacher) = model_inputs::teacher(ctx, spec)?;
    let prompts = model_inputs::prompts(ctx, spec, params.first_prompt..params.first_prompt + params.num_prompts)?;
    let kind = teacher.compute_kind();
    let cfg = teacher.config().clone();
    let (lf, lh, lw) = spec.latent_dims();
    let shape = [1, cfg.in_channels, i64::from(lf), i64::from(lh), i64::from(lw)];
    let capture_steps: Vec<usize> = spec.stages.capture.steps.iter().map(|s| *s as usize).collect();
    let blocks = teacher.num_blocks();

    // Per block: the captured rows, in (prompt, step) order.
    let mut hidden: Vec<Vec<Tensor>> = (0..blocks).map(|_| Vec::new()).collect();
    let mut timestep_proj: Vec<Vec<Tensor>> = (0..blocks).map(|_| Vec::new()).collect();
    let mut sample_prompt = Vec::new();
    let mut sample_step = Vec::new();
    let mut latents = Vec::new();
    let first = params.first_prompt;
    for offset in 0..params.num_prompts {
        ctx.handle.check()?;
        let index = first + offset;
        let text = prompts.text(index).to_device(ctx.device).to_kind(kind);
        let negative = prompts.negative(index).map(|n| n.to_device(ctx.device).to_kind(kind));
        let noise = seeded_noise(prompt_seed(spec.sampler.seed, u64::from(index)), &shape, ctx.device);
        let mut schedule = scheduler(spec.sampler.scheduler, spec.sampler.shift, spec.sampler.steps as usize);
        let final_latents = sampler::sample(
            &teacher,
            &noise,
            &text,
            negative.as_ref(),
            spec.sampler.guidance,
            schedule.as_mut(),
            &capture_steps,
            &mut |captured| {
                // Copies leave the device, so the next step cannot overwrite them.
                hidden[captured.block].push(captured.hidden.to_device(Device::Cpu));
                timestep_proj[captured.block].push(captured.timestep_proj.to_device(Device::Cpu));
                if captured.block == 0 {
                    sample_prompt.push(i64::from(index));
                    sample_step.push(captured.step as i64);
                }
            },
        )
        .map_err(TaskError::retryable)?;
        if final_latents.isfinite().all().int64_value(&[]) == 0 {
            return Err(TaskError::Fatal(format!(
                "the teacher produced non-finite latents for prompt {index}; check the teacher weights"
            )));
        }
        latents.push(final_latents.to_kind(Kind::Float).to_device(Device::Cpu));
        ctx.handle.report(
            u64::from(offset + 1),
            u64::from(params.num_prompts),
            0,
            BTreeMap::new(),
            &format!("sampled prompt {index}"),
        );
    }

    let mut artifacts = Vec::new();
    let prompt_index = Tensor::from_slice(&sample_prompt);
    let step_index = Tensor::from_slice(&sample_step);
    for block in 0..blocks {
        let h = Tensor::cat(&hidden[block], 0);
        let t = Tensor::cat(&timestep_proj[block], 0);
        let bytes = tensors::to_bytes(&[
            ("hidden", &h),
            ("timestep_proj", &t),
            ("prompt", &prompt_index),
            ("step", &step_index),
        ]);
        let path = layout::cache_shard(block as u32, params.shard);
        ctx.block_on(ctx.job_storage()?.put(&path, bytes))
            .map_err(TaskError::retryable)?;
        artifacts.push(path);
    }
    let latents = Tensor::cat(&latents, 0);
    let prompt_ids: Vec<i64> = (first..first + params.num_prompts).map(i64::from).collect();
    let path = layout::latents_shard(params.shard);
    let bytes = tensors::to_bytes(&[("latents", &latents), ("prompt", &Tensor::from_slice(&prompt_ids))]);
    ctx.block_on(job.put(&path, bytes)).map_err(TaskError::retryable)?;
    artifacts.push(path);
    Ok(TaskOutput {
        metrics: BTreeMap::from([
            ("prompts".to_string(), f64::from(params.num_prompts)),
            ("samples".to_string(), sample_prompt.len() as f64),
        ]),
        artifacts,
        labels: BTreeMap::new(),
        report: true,
    })
}
