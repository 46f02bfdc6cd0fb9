//! [`evaluate`]: the ground-truth quality of a student against its testbed teacher on
//! held-out prompts, as a pure function of sampled latents, prompts and the
//! [`TestbedDescription`] (no model, no I/O), so the job's evaluate stage can call it with the
//! latents it sampled.
//!
//! Inputs, for held-out prompts `p_0 .. p_{P-1}` (rows in that order, model latent space, i.e.
//! as sampled, before [`super::LatentNorm`] is undone): the teacher's samples and the
//! student's from the same noise, and the teacher's samples from a second noise. Each latent is
//! decoded ([`super::LatentNorm::decode`]) and scored with [`clip_metrics`] against its prompt;
//! the report holds every clip's metrics, the student's PSNR against the teacher's clip, their
//! means, and the teacher's seed-to-seed spread: per metric the mean over prompts of
//! `|m(teacher, noise 1) - m(teacher, noise 2)|`, and the PSNR between the two teacher clips.
//! A student whose differences from the teacher are within that spread is as good as reseeding.

use anyhow::{Result, ensure};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::folder::TestbedDescription;
use super::metrics::{ClipMetrics, MetricsSummary, clip_metrics, psnr};
use super::scene::Prompt;

/// The samples [`evaluate`] compares: `[P, 48, F, h, w]` each, rows in prompt order.
#[derive(Debug, Clone, Copy)]
pub struct EvaluationSamples<'a> {
    pub teacher: &'a Tensor,
    pub student: &'a Tensor,
    /// The teacher from a second noise per prompt.
    pub teacher_second_noise: &'a Tensor,
}

/// One held-out prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipEvaluation {
    pub prompt: String,
    pub teacher: ClipMetrics,
    pub student: ClipMetrics,
    pub teacher_second_noise: ClipMetrics,
    /// The student's clip against the teacher's from the same noise, dB.
    pub student_teacher_psnr_db: f64,
    /// The teacher's two clips against each other, dB.
    pub teacher_seeds_psnr_db: f64,
}

/// How much the teacher's own metrics move when only the noise changes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SeedSpread {
    /// Per metric, the mean over prompts of |metric(noise 1) - metric(noise 2)|.
    pub mean_abs_difference: ClipMetrics,
    /// Mean over prompts of the PSNR between the two teacher clips, dB.
    pub psnr_db: f64,
}

/// What [`evaluate`] returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluationReport {
    pub clips: usize,
    /// Means over the clips (teacher: the first noise).
    pub teacher: MetricsSummary,
    pub student: MetricsSummary,
    /// Mean over clips of the student's PSNR against the teacher from the same noise, dB.
    pub student_teacher_psnr_db: f64,
    pub teacher_seed_spread: SeedSpread,
    pub per_clip: Vec<ClipEvaluation>,
}

/// `|a - b|` field by field (through serde, so a new metric is covered without a change here).
fn abs_difference(a: &ClipMetrics, b: &ClipMetrics) -> ClipMetrics {
    let (a, b) = (
        serde_json::to_value(a).expect("metrics serialise"),
        serde_json::to_value(b).expect("metrics serialise"),
    );
    let difference: serde_json::Map<String, serde_json::Value> = a
        .as_object()
        .expect("an object")
        .iter()
        .map(|(key, x)| {
            let x = x.as_f64().expect("a number");
            let y = b[key].as_f64().expect("a number");
            (key.clone(), (x - y).abs().into())
        })
        .collect();
    serde_json::from_value(difference.into()).expect("the same fields")
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, count) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    sum / count.max(1) as f64
}

/// Scores student and teacher samples of held-out `prompts` (module doc).
pub fn evaluate(
    description: &TestbedDescription,
    prompts: &[Prompt],
    samples: EvaluationSamples<'_>,
) -> Result<EvaluationReport> {
    let geometry = &description.generator.geometry;
    let codec_shape = description.generator.codec.latent_shape;
    let want: Vec<i64> = std::iter::once(prompts.len() as i64).chain(codec_shape).collect();
    for (name, tensor) in [
        ("teacher", samples.teacher),
        ("student", samples.student),
        ("teacher (second noise)", samples.teacher_second_noise),
    ] {
        ensure!(
            tensor.size() == want,
            "the {name} samples are {:?}; {} prompts of this testbed need {want:?}",
            tensor.size(),
            prompts.len()
        );
    }
    ensure!(!prompts.is_empty(), "evaluation needs at least one prompt");
    let norm = description.latent_norm;
    let mut per_clip = Vec::with_capacity(prompts.len());
    for (i, prompt) in prompts.iter().enumerate() {
        let row = i as i64;
        let teacher = norm.decode(&samples.teacher.get(row))?;
        let student = norm.decode(&samples.student.get(row))?;
        let second = norm.decode(&samples.teacher_second_noise.get(row))?;
        per_clip.push(ClipEvaluation {
            prompt: prompt.to_string(),
            teacher: clip_metrics(&teacher, prompt, geometry)?,
            student: clip_metrics(&student, prompt, geometry)?,
            teacher_second_noise: clip_metrics(&second, prompt, geometry)?,
            student_teacher_psnr_db: psnr(&student, &teacher)?,
            teacher_seeds_psnr_db: psnr(&second, &teacher)?,
        });
    }
    let spread: Vec<ClipMetrics> = per_clip
        .iter()
        .map(|c| abs_difference(&c.teacher, &c.teacher_second_noise))
        .collect();
    Ok(EvaluationReport {
        clips: per_clip.len(),
        teacher: MetricsSummary::of(&per_clip.iter().map(|c| c.teacher).collect::<Vec<_>>()),
        student: MetricsSummary::of(&per_clip.iter().map(|c| c.student).collect::<Vec<_>>()),
        student_teacher_psnr_db: mean(per_clip.iter().map(|c| c.student_teacher_psnr_db)),
        teacher_seed_spread: SeedSpread {
            mean_abs_difference: MetricsSummary::of(&spread).mean,
            psnr_db: mean(per_clip.iter().map(|c| c.teacher_seeds_psnr_db)),
        },
        per_clip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testbed::codec;
    use crate::testbed::description::GeneratorDescription;
    use crate::testbed::latent::LatentNorm;
    use crate::testbed::render::{render, render_background};
    use crate::testbed::scene::Geometry;
    use crate::testbed::selection::PromptSelection;
    use crate::testbed::{PromptSet, PromptSetSpec};

    fn description() -> TestbedDescription {
        TestbedDescription {
            generator: GeneratorDescription::new(Geometry::cpu(), 24, 8).unwrap(),
            latent_norm: LatentNorm {
                shift: -0.5,
                scale: 0.4,
            },
            prompts: PromptSelection {
                seed: 0,
                teacher_train: 1,
                job_train: 1,
                held_out: 2,
                reserved_pairs: 4,
                textured_fraction: 0.0,
                max_objects: 3,
            },
        }
    }

    /// Model-space latents of clips.
    fn latents(description: &TestbedDescription, videos: &[crate::testbed::Video]) -> Tensor {
        let rows: Vec<Tensor> = videos
            .iter()
            .map(|v| description.latent_norm.normalise(&codec::encode_video(v).unwrap()))
            .collect();
        Tensor::stack(&rows, 0)
    }

    #[test]
    fn perfect_and_empty_students_score_as_they_should() {
        let description = description();
        let geometry = &description.generator.geometry;
        let prompts = PromptSet::generate(&PromptSetSpec::new(2, 1, 3)).unwrap().held_out;
        let truth: Vec<_> = prompts.iter().map(|p| render(p, geometry)).collect();
        let empty: Vec<_> = prompts
            .iter()
            .map(|p| render_background(p.background(), geometry))
            .collect();
        let teacher = latents(&description, &truth);
        let blank = latents(&description, &empty);

        // The student is the teacher; the teacher's second noise gave an empty clip.
        let same = EvaluationSamples {
            teacher: &teacher,
            student: &teacher,
            teacher_second_noise: &blank,
        };
        let report = evaluate(&description, &prompts, same).unwrap();
        assert_eq!(report.clips, 3);
        assert_eq!(report.teacher.mean.presence, 1.0);
        assert_eq!(report.student, report.teacher);
        assert!(
            report.student_teacher_psnr_db > 60.0,
            "{}",
            report.student_teacher_psnr_db
        );
        assert_eq!(report.teacher_seed_spread.mean_abs_difference.presence, 1.0);
        assert!(report.teacher_seed_spread.psnr_db < 30.0);

        // An empty student: nothing present, the missing penalty as trajectory error.
        let empty_student = EvaluationSamples {
            student: &blank,
            ..same
        };
        let report = evaluate(&description, &prompts, empty_student).unwrap();
        assert_eq!(report.student.mean.presence, 0.0);
        assert_eq!(report.student.mean.colour_correctness, 0.0);
        let diagonal = 32f64.hypot(32.0);
        assert!((report.student.mean.trajectory_error_px - 0.5 * diagonal).abs() < 1e-9);
        assert_eq!(report.teacher.mean.colour_correctness, 1.0);
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(serde_json::from_str::<EvaluationReport>(&json).unwrap(), report);
    }

    #[test]
    fn mismatched_inputs_are_refused_with_the_shapes() {
        let description = description();
        let prompts = PromptSet::generate(&PromptSetSpec::new(2, 1, 2)).unwrap().held_out;
        let right = Tensor::zeros([2, 48, 8, 8, 8], (tch::Kind::Float, tch::Device::Cpu));
        let wrong = Tensor::zeros([2, 48, 8, 16, 16], (tch::Kind::Float, tch::Device::Cpu));
        let samples = EvaluationSamples {
            teacher: &right,
            student: &wrong,
            teacher_second_noise: &right,
        };
        let error = evaluate(&description, &prompts, samples).unwrap_err().to_string();
        assert_eq!(
            error,
            "the student samples are [2, 48, 8, 16, 16]; 2 prompts of this testbed need [2, 48, 8, 8, 8]"
        );
        let samples = EvaluationSamples {
            student: &right,
            ..samples
        };
        let error = evaluate(&description, &prompts[..1], samples).unwrap_err().to_string();
        assert!(
            error.starts_with("the teacher samples are [2, 48, 8, 8, 8]; 1 prompts"),
            "{error}"
        );
    }
}
