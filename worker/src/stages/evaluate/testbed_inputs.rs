//! The testbed side of the evaluate stage's inputs and outputs: the teacher folder's
//! description and the held-out prompts' attribute tuples in, the report's headline
//! numbers out as metrics.

use crate::stages::TaskContext;
use crate::stages::model_inputs;
use crate::stages::pipeline;
use crate::stages::task::TaskError;
use crate::testbed::{self, TestbedDescription};
use std::collections::BTreeMap;
use surgery_core::spec::JobSpec;

/// The testbed's description and the held-out prompts' attribute tuples, when the teacher
/// is a testbed teacher; `None` for any other job.
pub(super) fn testbed_inputs(
    ctx: &TaskContext,
    spec: &JobSpec,
    heldout: &[u32],
) -> Result<Option<(TestbedDescription, Vec<testbed::Prompt>)>, TaskError> {
    let teacher_dir = pipeline::transformer_folder(ctx)?;
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
pub(super) fn testbed_metrics(report: &testbed::EvaluationReport) -> BTreeMap<String, f64> {
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
