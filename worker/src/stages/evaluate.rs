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
//! Written to `evaluate/report.json` and the task's metrics.

use super::TaskContext;
use super::capture::scheduler;
use super::export::velocity;
use super::folders::{model_folder, put_json};
use super::model_inputs;
use crate::model::WanTransformer;
use crate::sampler::{self, prompt_seed, seeded_noise};
use crate::stages::task::{TaskError, TaskOutput};
use crate::testbed::{self, EvaluationSamples, TestbedDescription};
use serde_json::json;
use std::collections::BTreeMap;
use surgery_core::layout;
use surgery_core::spec::JobSpec;
use tch::{Kind, Tensor};

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
    let prompts = model_inputs::prompts(ctx, spec)?;
    let negative = prompts.negative.as_ref().map(|n| n.to_device(ctx.device));
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
    let shape = super::export::probe_shape(spec);
    let testbed = testbed_inputs(ctx, spec, &heldout)?;
    let mut samples: [Vec<Tensor>; 3] = Default::default();
    let mut psnrs = Vec::new();
    let mut velocity_errors: Vec<Vec<f64>> = SIGMAS.iter().map(|_| Vec::new()).collect();
    for (done, index) in heldout.iter().enumerate() {
        ctx.handle.check()?;
        let text = prompts.embeds.narrow(0, i64::from(*index), 1).to_device(ctx.device);
        let noise = seeded_noise(prompt_seed(spec.sampler.seed, u64::from(*index)), &shape, ctx.device);
        let by_teacher = sample_with(&teacher, spec, &noise, &text, negative.as_ref())?;
        let by_student = sample_with(&student.model, spec, &noise, &text, negative.as_ref())?;
        psnrs.push(psnr(&by_student, &by_teacher));
        if testbed.is_some() {
            // The rule `surgery-worker testbed sample` uses, so the two agree.
            let second = seeded_noise(
                testbed::second_noise_seed(prompt_seed(spec.sampler.seed, u64::from(*index))),
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
        "testbed": testbed_report,
    });
    let path = layout::EVALUATE_REPORT.to_string();
    put_json(ctx, &job, &path, &report)?;
    Ok(TaskOutput {
        metrics,
        artifacts: vec![path],
        labels: BTreeMap::new(),
        report: true,
    })
}

/// The testbed's description and the held-out prompts' attribute tuples, when the teacher
/// is a testbed teacher; `None` for any other job.
fn testbed_inputs(
    ctx: &super::TaskContext,
    spec: &JobSpec,
    heldout: &[u32],
) -> Result<Option<(TestbedDescription, Vec<testbed::Prompt>)>, TaskError> {
    let teacher_dir = model_folder(ctx, &spec.teacher.url)?;
    if !teacher_dir.join(testbed::folder::DESCRIPTION_FILE).exists() {
        return Ok(None);
    }
    let description = TestbedDescription::read(&teacher_dir).map_err(|e| TaskError::Fatal(format!("{e:#}")))?;
    let url = match spec.data.prompts.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/{}", testbed::folder::PROMPTS_JSON),
        None => testbed::folder::PROMPTS_JSON.to_string(),
    };
    let bytes = model_inputs::read_url(ctx, &url)?;
    let set: testbed::PromptSet = serde_json::from_slice(&bytes)
        .map_err(|e| TaskError::Fatal(format!("{url} is not a testbed prompt set: {e}")))?;
    let all: Vec<testbed::Prompt> = set.train.iter().chain(&set.held_out).cloned().collect();
    let prompts = heldout
        .iter()
        .map(|i| {
            all.get(*i as usize).cloned().ok_or_else(|| {
                TaskError::Fatal(format!(
                    "{url} holds {} prompts; the spec evaluates prompt {i}",
                    all.len()
                ))
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Some((description, prompts)))
}

/// The testbed report's headline numbers as task metrics (`testbed_` prefixed).
fn testbed_metrics(report: &testbed::EvaluationReport) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let mut flatten = |prefix: &str, value: serde_json::Value| {
        if let serde_json::Value::Object(map) = value {
            for (name, v) in map {
                if let Some(x) = v.as_f64().filter(|x| x.is_finite()) {
                    out.insert(format!("testbed_{prefix}_{name}"), x);
                }
            }
        }
    };
    flatten("teacher", serde_json::to_value(report.teacher.mean).unwrap_or_default());
    flatten("student", serde_json::to_value(report.student.mean).unwrap_or_default());
    flatten(
        "teacher_spread",
        serde_json::to_value(report.teacher_seed_spread.mean_abs_difference).unwrap_or_default(),
    );
    if report.student_teacher_psnr_db.is_finite() {
        out.insert("testbed_student_teacher_psnr_db".into(), report.student_teacher_psnr_db);
    }
    out
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
