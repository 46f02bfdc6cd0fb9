//! Export: the fine-tuned student as a folder a user loads (`export/`: diffusers'
//! config.json and safetensors with the feature maps, surgery.json with each block's rate)
//! and `export/report.json`: the per-block rates, attention and whole-model FLOPs against
//! the teacher, the distillation errors of the chosen blocks, the fine-tuning loss, and a
//! probe - the student's and the teacher's output on a fixed seeded input - that anyone
//! can recompute from the exported folder to check it is the model the report describes;
//! and the student's measured speed-up over the teacher on the device the task ran on.

pub mod flops;
pub mod probe;
pub mod speed;

use super::TaskContext;
use super::folders::{put_json, upload_folder};
use super::model_inputs;
use crate::stages::task::{TaskError, TaskOutput};
pub use flops::{FlopReport, flop_report};
pub use probe::{PROBE_SEED, PROBE_TIMESTEP, probe, probe_shape, velocity};
use serde_json::json;
use std::collections::BTreeMap;
use surgery_core::rate::Rate;
use surgery_core::{ids, layout, results};

pub fn run(ctx: &TaskContext) -> Result<TaskOutput, TaskError> {
    let spec = &ctx.input.spec;
    let job = ctx.job_storage()?;
    let (student, local) = model_inputs::student(ctx, &job, layout::FINETUNE_FINAL, "exports")?;
    let (_tvs, teacher) = model_inputs::teacher(ctx, spec)?;
    ctx.handle.check()?;

    // The exported folder: the same files, under export/.
    let mut artifacts = upload_folder(ctx, &job, &local, layout::EXPORT_DIR)?;

    // FLOPs, from the cost model at the spec's size.
    let shape = spec.model_shape();
    let rates = student.surgery.rates(shape.layers as usize);
    let flops = flop_report(spec, &rates);

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

    let prompts = model_inputs::prompts(ctx, spec, 0..1)?;
    let text = prompts.text(0).to_device(ctx.device);
    let (probe_mean_abs, probe_rel) = probe(&student.model, &teacher, &text, probe_shape(spec));
    ctx.handle.check()?;
    let speed = speed::measure(&student.model, &teacher, spec, &text, probe_shape(spec));
    ctx.handle.log(
        "info",
        results::speed_sentence(speed.speedup, &speed.resolution, &speed.device),
    );
    let report = json!({
        "job": ctx.input.task.job,
        "model": { "layers": shape.layers, "heads": shape.heads, "head_dim": shape.head_dim, "tokens": spec.tokens() },
        "blocks": flops.blocks,
        "attention_flops": flops.attention_flops,
        "model_forward_flops": flops.model_forward_flops,
        "distill": distill,
        "finetune": finetune,
        "probe": {
            "seed": PROBE_SEED,
            "timestep": PROBE_TIMESTEP,
            "prompt": 0,
            "student_mean_abs": probe_mean_abs,
            "velocity_relative_error_vs_teacher": probe_rel,
        },
        "speed": speed,
    });
    let path = layout::EXPORT_REPORT.to_string();
    put_json(ctx, &job, &path, &report)?;
    artifacts.push(path);
    Ok(TaskOutput {
        metrics: BTreeMap::from([
            (
                "attention_flops_saved".to_string(),
                flops.attention_flops.saved_fraction,
            ),
            (
                "model_flops_saved".to_string(),
                flops.model_forward_flops.saved_fraction,
            ),
            ("probe_velocity_relative_error".to_string(), probe_rel),
            (results::STUDENT_SPEEDUP.to_string(), speed.speedup),
            (results::STUDENT_FORWARD_MS.to_string(), speed.student_ms),
            (results::TEACHER_FORWARD_MS.to_string(), speed.teacher_ms),
        ]),
        artifacts,
        labels: BTreeMap::from([(results::SPEED_DEVICE.to_string(), speed.device.clone())]),
        report: true,
    })
}
