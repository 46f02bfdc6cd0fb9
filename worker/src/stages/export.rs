//! Export: the fine-tuned student as a folder a user loads (`export/`: diffusers'
//! config.json and safetensors with the feature maps, surgery.json with each block's rate)
//! and `export/report.json`: the per-block rates, attention and whole-model FLOPs against
//! the teacher, the distillation errors of the chosen blocks, the fine-tuning loss, and a
//! probe - the student's and the teacher's output on a fixed seeded input - that anyone
//! can recompute from the exported folder to check it is the model the report describes.

use super::TaskContext;
use super::folders::{download_folder, upload_folder};
use super::inputs::{self, kind_of};
use crate::model::WanTransformer;
use crate::sampler::seeded_noise;
use crate::stages::task::{TaskError, TaskOutput};
use crate::student::Student;
use serde_json::json;
use std::collections::BTreeMap;
use surgery_core::layout;
use surgery_core::rate::Rate;
use surgery_core::spec::JobSpec;
use surgery_core::{cost, ids};
use tch::{Kind, Tensor};

/// The probe's seed and timestep: fixed, so a check can recompute it.
pub const PROBE_SEED: u64 = 0x0005_EED0_F0E7;
pub const PROBE_TIMESTEP: f32 = 500.0;

/// The student's and the teacher's output on the probe input: latents from
/// [`PROBE_SEED`], timestep [`PROBE_TIMESTEP`], the first prompt's embedding.
/// Returns (mean |student|, ||student - teacher|| / ||teacher||), computed in fp32.
pub fn probe(student: &WanTransformer, teacher: &WanTransformer, text: &Tensor, latent: [i64; 5]) -> (f64, f64) {
    tch::no_grad(|| {
        let device = text.device();
        let x = seeded_noise(PROBE_SEED, &latent, device);
        let t = Tensor::from_slice(&[PROBE_TIMESTEP]).to_device(device);
        let s = student
            .forward(
                &x.to_kind(student.compute_kind()),
                &t,
                &text.to_kind(student.compute_kind()),
            )
            .to_kind(Kind::Double);
        let v = teacher
            .forward(
                &x.to_kind(teacher.compute_kind()),
                &t,
                &text.to_kind(teacher.compute_kind()),
            )
            .to_kind(Kind::Double);
        let mean_abs = s.abs().mean(Kind::Double).double_value(&[]);
        let rel = (&s - &v).norm().double_value(&[]) / v.norm().double_value(&[]);
        (mean_abs, rel)
    })
}

pub fn probe_shape(spec: &JobSpec) -> [i64; 5] {
    let (f, h, w) = spec.latent_dims();
    [
        1,
        i64::from(spec.model_shape().in_channels),
        i64::from(f),
        i64::from(h),
        i64::from(w),
    ]
}

pub fn run(ctx: &TaskContext) -> Result<TaskOutput, TaskError> {
    let spec = &ctx.input.spec;
    let job = ctx.job_storage()?;
    let local = download_folder(ctx, &job, layout::FINETUNE_FINAL, "exports")?;
    let student = Student::load(&local, ctx.device, kind_of(spec.teacher.dtype)).map_err(TaskError::retryable)?;
    let (_tvs, teacher) = inputs::teacher(ctx, spec)?;
    ctx.handle.check()?;

    // The exported folder: the same files, under export/.
    let mut artifacts = upload_folder(ctx, &job, &local, layout::EXPORT_DIR)?;

    // FLOPs, from the cost model at the spec's size.
    let shape = spec.model_shape();
    let fmap = spec.surgery.feature_map.shape();
    let tokens = spec.tokens();
    let rates = student.surgery.rates(shape.layers as usize);
    let softmax_block = cost::attention_flops(&shape, &fmap, tokens, Rate::Softmax);
    let blocks: Vec<serde_json::Value> = rates
        .iter()
        .enumerate()
        .map(|(b, rate)| {
            json!({
                "block": b,
                "rate": rate.code(),
                "rate_name": rate.to_string(),
                "attention_flops": cost::attention_flops(&shape, &fmap, tokens, *rate),
            })
        })
        .collect();
    let attention_student: f64 = rates
        .iter()
        .map(|r| cost::attention_flops(&shape, &fmap, tokens, *r))
        .sum();
    let attention_teacher = softmax_block * f64::from(shape.layers);
    let model_student = cost::model_forward_flops(&shape, &fmap, tokens, &rates);
    let model_teacher = cost::softmax_model_forward_flops(&shape, tokens);

    // Distillation errors of the chosen blocks, from the distill tasks' results.
    let mut distill = Vec::new();
    for (b, rate) in rates.iter().enumerate() {
        if *rate == Rate::Softmax {
            continue;
        }
        let path = layout::distill_result(b as u32, *rate);
        let bytes = ctx.block_on(job.get(&path)).map_err(TaskError::retryable)?;
        let result: serde_json::Value = serde_json::from_slice(&bytes).map_err(TaskError::retryable)?;
        distill.push(json!({ "block": b, "rate": rate.code(), "metrics": result["metrics"] }));
    }
    let finetune = ctx
        .input
        .dependencies
        .get(ids::FINETUNE_TASK)
        .map(|r| r.metrics.clone())
        .unwrap_or_default();

    let prompts = inputs::prompts(ctx, spec)?;
    let text = prompts.embeds.narrow(0, 0, 1).to_device(ctx.device);
    let (probe_mean_abs, probe_rel) = probe(&student.model, &teacher, &text, probe_shape(spec));
    let report = json!({
        "job": ctx.input.task.job,
        "model": { "layers": shape.layers, "heads": shape.heads, "head_dim": shape.head_dim, "tokens": tokens },
        "blocks": blocks,
        "attention_flops": {
            "teacher": attention_teacher,
            "student": attention_student,
            "saved_fraction": 1.0 - attention_student / attention_teacher,
        },
        "model_forward_flops": {
            "teacher": model_teacher,
            "student": model_student,
            "saved_fraction": 1.0 - model_student / model_teacher,
        },
        "distill": distill,
        "finetune": finetune,
        "probe": {
            "seed": PROBE_SEED,
            "timestep": PROBE_TIMESTEP,
            "prompt": 0,
            "student_mean_abs": probe_mean_abs,
            "velocity_relative_error_vs_teacher": probe_rel,
        },
    });
    let path = layout::EXPORT_REPORT.to_string();
    ctx.block_on(job.put(&path, serde_json::to_vec_pretty(&report).expect("json").into()))
        .map_err(TaskError::retryable)?;
    artifacts.push(path);
    Ok(TaskOutput {
        metrics: BTreeMap::from([
            (
                "attention_flops_saved".to_string(),
                1.0 - attention_student / attention_teacher,
            ),
            ("model_flops_saved".to_string(), 1.0 - model_student / model_teacher),
            ("probe_velocity_relative_error".to_string(), probe_rel),
        ]),
        artifacts,
        report: true,
    })
}
