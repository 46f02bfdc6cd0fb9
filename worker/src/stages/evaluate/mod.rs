//! Evaluate: how closely the exported student agrees with its teacher on held-out prompts
//! (METHOD.md section 5: VBench needs models this project cannot run). For each held-out
//! prompt both models sample from the same seeded noise; the final latents' PSNR (teacher
//! as reference) says how far the trajectories drift. On the teacher's final latents,
//! noised at a few sigmas, the relative velocity error says where the student is off.
//!
//! A testbed job (the teacher folder holds `testbed.json`, its prompts file a
//! `prompts.json` beside it) also gets the ground-truth metrics of issue "quality
//! testbed": the teacher's and the student's samples decoded to pixels and scored against
//! the prompts (colour, shape, trajectory, consistency, motion), the student's PSNR
//! against the teacher from the same noise, and the teacher's seed-to-seed spread (it
//! samples each prompt from a second noise too), under `testbed` in the report.
//! For hybrid blocks, the share of the output that comes from the linear branch
//! ([`share`]), measured on the same noised latents as the velocity error, beside the
//! teacher's softmax mass on those tokens (`linear_share` in the report,
//! `linear_share/block-NN` and `teacher_linear_share/block-NN` in the metrics).
//! For the first `stages.evaluate.previews` held-out prompts, the teacher's and the
//! student's samples become one side-by-side video (teacher left) stored as MP4 and GIF
//! ([`previews`]), listed in the report and the task's artifacts.
//! Written to `evaluate/report.json` and the task's metrics.

mod previews;
mod share;
mod testbed_inputs;

use super::TaskContext;
use super::capture::scheduler;
use super::export::velocity;
use super::folders::put_json;
use super::model_inputs;
use super::pipeline;
use crate::model::WanTransformer;
use crate::sampler::{self, prompt_seed, seeded_noise};
use crate::stages::task::{TaskError, TaskOutput};
use crate::testbed::{self, EvaluationSamples};
use serde_json::json;
use share::LinearShareMeter;
use std::collections::BTreeMap;
use surgery_core::layout;
use surgery_core::results::{LINEAR_SHARE, TEACHER_LINEAR_SHARE, linear_share_metric};
use surgery_core::spec::JobSpec;
use tch::{Kind, Tensor};
use testbed_inputs::{testbed_inputs, testbed_metrics};

pub const SIGMAS: [f64; 5] = [0.1, 0.3, 0.5, 0.7, 0.9];

/// PSNR in dB of `x` against `reference`, with the reference's range as the peak.
pub fn psnr(x: &Tensor, reference: &Tensor) -> f64 {
    let r = reference.to_kind(Kind::Double);
    let mse = (x.to_kind(Kind::Double) - &r)
        .square()
        .mean(Kind::Double)
        .double_value(&[]);
    let peak = (r.max() - r.min()).double_value(&[]);
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (peak * peak / mse).log10()
    }
}

fn sample_with(
    model: &WanTransformer,
    spec: &JobSpec,
    noise: &Tensor,
    text: &Tensor,
    negative: Option<&Tensor>,
) -> Result<Tensor, TaskError> {
    let kind = model.compute_kind();
    let mut schedule = scheduler(
        spec.sampler.scheduler,
        spec.sampler.shift,
        spec.stages.evaluate.steps as usize,
    );
    sampler::sample(
        model,
        noise,
        &text.to_kind(kind),
        negative.map(|n| n.to_kind(kind)).as_ref(),
        spec.sampler.guidance,
        schedule.as_mut(),
        &[],
        &mut |_| {},
    )
    .map(|x| x.to_kind(Kind::Float))
    .map_err(TaskError::retryable)
}

pub fn run(ctx: &TaskContext) -> Result<TaskOutput, TaskError> {
    let spec = &ctx.input.spec;
    let job = ctx.job_storage()?;
    let (student, _) = model_inputs::student(ctx, &job, layout::EXPORT_DIR, "evaluate")?;
    let (_tvs, teacher) = model_inputs::teacher(ctx, spec)?;
    // Held-out prompts follow the training ones; with none configured, the first prompt
    // stands in (and the report says so).
    let train = spec.data.train_prompts;
    let heldout: Vec<u32> = if spec.data.heldout_prompts > 0 {
        (train..train + spec.data.heldout_prompts).collect()
    } else {
        ctx.handle.log(
            "warn",
            "no held-out prompts configured; evaluating on prompt 0, a training prompt",
        );
        vec![0]
    };
    let range = heldout[0]..heldout[heldout.len() - 1] + 1;
    let prompts = model_inputs::prompts(ctx, spec, range)?;
    let shape = super::export::probe_shape(spec);
    let testbed = testbed_inputs(ctx, spec, &heldout)?;
    let wanted = spec.stages.evaluate.previews as usize;
    let decoder = if wanted == 0 {
        Err("no previews: stages.evaluate.previews is 0".to_string())
    } else {
        previews::decoder(ctx, &pipeline::transformer_folder(ctx)?)?
    };
    if let Err(why) = &decoder {
        ctx.handle.log("warn", why.clone());
    }
    let mut stored = Vec::new();
    let mut samples: [Vec<Tensor>; 3] = Default::default();
    let mut psnrs = Vec::new();
    let mut velocity_errors: Vec<Vec<f64>> = SIGMAS.iter().map(|_| Vec::new()).collect();
    let mut shares = LinearShareMeter::default();
    for (done, index) in heldout.iter().enumerate() {
        ctx.handle.check()?;
        let text = prompts.text(*index).to_device(ctx.device);
        let negative = prompts.negative(*index).map(|n| n.to_device(ctx.device));
        let noise = seeded_noise(prompt_seed(spec.sampler.seed, u64::from(*index)), &shape, ctx.device);
        let by_teacher = sample_with(&teacher, spec, &noise, &text, negative.as_ref())?;
        let by_student = sample_with(&student.model, spec, &noise, &text, negative.as_ref())?;
        psnrs.push(psnr(&by_student, &by_teacher));
        if let Ok(decoder) = &decoder
            && done < wanted
        {
            stored.push(previews::store(ctx, &job, decoder, *index, &by_teacher, &by_student)?);
        }
        if testbed.is_some() {
            // The rule `surgery-worker testbed sample` uses (testbed/sampling.rs), so the
            // two give a prompt the same second noise.
            let second = seeded_noise(
                prompt_seed(testbed::second_noise_seed(spec.sampler.seed), u64::from(*index)),
                &shape,
                ctx.device,
            );
            samples[2]
                .push(sample_with(&teacher, spec, &second, &text, negative.as_ref())?.to_device(tch::Device::Cpu));
            samples[0].push(by_teacher.to_device(tch::Device::Cpu));
            samples[1].push(by_student.to_device(tch::Device::Cpu));
        }
        tch::no_grad(|| {
            for (i, sigma) in SIGMAS.iter().enumerate() {
                let x = (&by_teacher * (1.0 - sigma) + &noise * *sigma).to_kind(teacher.compute_kind());
                let t = Tensor::from_slice(&[(*sigma * 1000.0) as f32]).to_device(ctx.device);
                let (vt, vs) = (
                    velocity(&teacher, &x, &t, &text),
                    velocity(&student.model, &x, &t, &text),
                );
                velocity_errors[i].push((&vs - &vt).norm().double_value(&[]) / vt.norm().double_value(&[]));
                shares.measure(&student.model, &x, &t, &text);
            }
        });
        ctx.handle
            .report(done as u64 + 1, heldout.len() as u64, 0, BTreeMap::new(), "evaluating");
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let mut metrics = BTreeMap::from([
        ("latent_psnr_db".to_string(), mean(&psnrs)),
        ("prompts".to_string(), heldout.len() as f64),
    ]);
    for (sigma, errors) in SIGMAS.iter().zip(&velocity_errors) {
        metrics.insert(format!("velocity_rel_error_sigma_{sigma}"), mean(errors));
    }
    let shares = shares.blocks();
    for s in &shares {
        metrics.insert(linear_share_metric(LINEAR_SHARE, s.block), s.share.student);
        metrics.insert(linear_share_metric(TEACHER_LINEAR_SHARE, s.block), s.share.teacher);
    }
    let testbed_report = match testbed {
        Some((description, prompts)) => {
            let [teacher_rows, student_rows, second_rows] = samples.map(|rows| Tensor::cat(&rows, 0));
            let report = testbed::evaluate(
                &description,
                &prompts,
                EvaluationSamples {
                    teacher: &teacher_rows,
                    student: &student_rows,
                    teacher_second_noise: &second_rows,
                },
            )
            .map_err(|e| TaskError::Fatal(format!("testbed evaluation: {e:#}")))?;
            metrics.extend(testbed_metrics(&report));
            Some(report)
        }
        None => None,
    };
    let report = json!({
        "prompts": heldout,
        "heldout": spec.data.heldout_prompts > 0,
        "latent_psnr_db": psnrs,
        "sigmas": SIGMAS,
        "velocity_relative_error": velocity_errors,
        "mean": metrics,
        "linear_share": shares,
        "testbed": testbed_report,
        "previews": stored,
        "previews_note": decoder.as_ref().err(),
    });
    let path = layout::EVALUATE_REPORT.to_string();
    put_json(ctx, &job, &path, &report)?;
    let mut artifacts = vec![path];
    for p in &stored {
        artifacts.extend([p.mp4.clone(), p.gif.clone()]);
    }
    Ok(TaskOutput {
        metrics,
        artifacts,
        labels: BTreeMap::new(),
        report: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psnr_of_known_errors() {
        let reference = Tensor::from_slice(&[0.0f32, 1.0, 2.0, 3.0]);
        assert_eq!(psnr(&reference, &reference), f64::INFINITY);
        let off = &reference + 0.1;
        // peak 3, mse 0.01 -> 10 log10(900) = 29.54 dB
        assert!((psnr(&off, &reference) - 29.5424).abs() < 1e-3);
    }
}
