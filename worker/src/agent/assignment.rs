//! The one place on the worker that turns the wire into the domain: a leased
//! `TaskAssignment` becomes the [`StageInput`] its stage runs on (the spec parsed once,
//! rates decoded, the stage's parameters checked against its stage).

use crate::stages::{CaptureShard, DependencyResult, DistillPair, StageInput, StageParams, TaskError};
use surgery_core::ids::TaskRef;
use surgery_core::spec::JobSpec;
use surgery_core::state::Stage;
use surgery_proto::v1 as pb;
use surgery_proto::v1::task_params::Kind;
use surgery_proto::words;

/// The stage input of `assignment`; a spec, stage or parameters this worker cannot run
/// are fatal (the coordinator would send the same again).
pub fn stage_input(assignment: &pb::TaskAssignment) -> Result<StageInput, TaskError> {
    let spec =
        JobSpec::parse(&assignment.spec_yaml).map_err(|e| TaskError::Fatal(format!("the job spec is invalid: {e}")))?;
    let kind = assignment.params.as_ref().and_then(|p| p.kind.as_ref());
    let params = match (words::decode(assignment.stage, words::stage), kind) {
        (Some(Stage::Encode), Some(Kind::Encode(p))) => StageParams::Encode(CaptureShard {
            shard: p.shard,
            first_prompt: p.first_prompt,
            num_prompts: p.num_prompts,
        }),
        (Some(Stage::Encode), _) => {
            return Err(TaskError::Fatal("an encode task without encode parameters".into()));
        }
        (Some(Stage::Capture), Some(Kind::Capture(p))) => StageParams::Capture(CaptureShard {
            shard: p.shard,
            first_prompt: p.first_prompt,
            num_prompts: p.num_prompts,
        }),
        (Some(Stage::Capture), _) => {
            return Err(TaskError::Fatal("a capture task without capture parameters".into()));
        }
        (Some(Stage::Distill), Some(Kind::Distill(p))) => StageParams::Distill(DistillPair {
            block: p.block,
            rate: p.rate(),
        }),
        (Some(Stage::Distill), _) => {
            return Err(TaskError::Fatal("a distill task without distill parameters".into()));
        }
        (Some(Stage::Finetune), _) => StageParams::Finetune,
        (Some(Stage::Export), _) => StageParams::Export,
        (Some(Stage::Evaluate), _) => StageParams::Evaluate,
        (other, _) => {
            let stage = other.map_or("unspecified", Stage::word);
            return Err(TaskError::Fatal(format!(
                "this worker does not run stage {stage} (select runs in the coordinator)"
            )));
        }
    };
    // `job:task` on the wire; the task's name is what follows the job.
    let name = assignment
        .task_id
        .split_once(':')
        .map_or(assignment.task_id.as_str(), |(_, task)| task);
    Ok(StageInput {
        task: TaskRef::new(assignment.job_id.clone(), name),
        attempt: assignment.attempt,
        spec,
        params,
        layout: assignment.layout.iter().map(pb::BlockRate::pair).collect(),
        dependencies: assignment
            .inputs
            .iter()
            .map(|(task, result)| {
                let result = DependencyResult {
                    metrics: result.metrics.clone().into_iter().collect(),
                    artifacts: result.artifacts.clone(),
                };
                (task.clone(), result)
            })
            .collect(),
        job_root: assignment.job_root_url.clone(),
        reused_roots: assignment.reused_roots.clone().into_iter().collect(),
        rank: assignment.rank,
        gang_size: assignment.gang_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use surgery_core::rate::Rate;

    const SPEC: &str = "version: 1\nname: tiny\nteacher:\n  url: /none\n  preset: wan2.1-t2v-1.3b\ndata:\n  prompts: /none\n  train_prompts: 8\n  prompts_per_shard: 4\nvideo: {frames: 81, height: 480, width: 832}\n";

    fn assignment(stage: pb::Stage, kind: Option<Kind>) -> pb::TaskAssignment {
        pb::TaskAssignment {
            job_id: "tiny-ab12".into(),
            task_id: "tiny-ab12:distill/block-03/rate-linear".into(),
            attempt: 2,
            stage: stage as i32,
            params: Some(pb::TaskParams { kind }),
            spec_yaml: SPEC.into(),
            gang_size: 1,
            layout: vec![pb::BlockRate { block: 0, rate: 1 }, pb::BlockRate { block: 1, rate: 0 }],
            job_root_url: "file:///tmp/store/jobs/tiny-ab12".into(),
            inputs: [(
                "finetune".to_string(),
                pb::TaskResult {
                    metrics: [("final_loss".to_string(), 0.5)].into(),
                    artifacts: vec!["finetune/final/config.json".into()],
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_distill_assignment_becomes_domain_values() {
        let wire = assignment(
            pb::Stage::Distill,
            Some(Kind::Distill(pb::DistillParams { block: 3, rate: 0 })),
        );
        let input = stage_input(&wire).unwrap();
        assert_eq!(input.task, TaskRef::new("tiny-ab12", "distill/block-03/rate-linear"));
        assert_eq!(input.attempt, 2);
        assert_eq!(input.spec.name, "tiny");
        assert_eq!(
            input.params,
            StageParams::Distill(DistillPair {
                block: 3,
                rate: Rate::Linear
            })
        );
        assert_eq!(input.layout, vec![(0, Rate::Softmax), (1, Rate::Linear)]);
        assert_eq!(input.dependencies["finetune"].metrics["final_loss"], 0.5);
        assert_eq!(input.job_root, "file:///tmp/store/jobs/tiny-ab12");
    }

    #[test]
    fn what_this_worker_cannot_run_is_fatal() {
        let missing = stage_input(&assignment(pb::Stage::Capture, None)).unwrap_err();
        assert_eq!(
            missing,
            TaskError::Fatal("a capture task without capture parameters".into())
        );
        let select = stage_input(&assignment(pb::Stage::Select, None)).unwrap_err();
        assert!(select.to_string().contains("does not run stage select"), "{select}");
        let mut bad = assignment(pb::Stage::Export, None);
        bad.spec_yaml = "version: 1\n".into();
        let err = stage_input(&bad).unwrap_err();
        assert!(err.to_string().starts_with("the job spec is invalid"), "{err}");
        let export = stage_input(&assignment(pb::Stage::Export, None)).unwrap();
        assert_eq!(export.params, StageParams::Export);
    }
}
