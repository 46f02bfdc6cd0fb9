//! The planner: a pure function from a validated spec to the job's tasks and their
//! dependencies (DESIGN.md's job graph):
//!
//! ```text
//! [encode[shard] ──▶] capture[shard] ──▶ distill[block, rate] ──▶ select ──▶ finetune (gang) ──▶ export ──▶ evaluate
//! ```
//!
//! Encode tasks exist only for text prompts (`data.prompts` a .txt or .jsonl file). Distill
//! tasks are only those the selection rule can use (all blocks x rates for the
//! knapsack, one rate for the homogeneous rule, the listed pairs for a layout).

use crate::model::{JobId, Stage, TaskParams, TaskRecord, TaskState, UnixMs};
use surgery_core::ids;
use surgery_core::spec::JobSpec;

pub fn plan(job_id: &JobId, spec: &JobSpec, now: UnixMs) -> Vec<TaskRecord> {
    let mut tasks = Vec::new();
    let mut add = |id: String, stage: Stage, params: TaskParams, after: Vec<Stage>, gang_size: u32| {
        let order = tasks.len() as u32;
        tasks.push(TaskRecord {
            job_id: job_id.clone(),
            id,
            stage,
            params,
            after,
            gang_size,
            order,
            state: TaskState::Pending,
            attempt: 0,
            retries_used: 0,
            interruptions: 0,
            lease: None,
            progress: None,
            result: None,
            last_failure: None,
            updated_ms: now,
            reused_from: None,
        });
    };

    // Text prompts are encoded first; embedding files need no encode stage.
    let encode = spec.encode_shard_list();
    let after_encode = if encode.is_empty() {
        Vec::new()
    } else {
        vec![Stage::Encode]
    };
    for shard in encode {
        add(
            ids::encode_task(shard.shard),
            Stage::Encode,
            TaskParams::Encode(shard),
            Vec::new(),
            1,
        );
    }

    for shard in spec.capture_shard_list() {
        add(
            ids::capture_task(shard.shard),
            Stage::Capture,
            TaskParams::Capture(shard),
            after_encode.clone(),
            1,
        );
    }

    for (block, rate) in spec.distill_pairs() {
        add(
            ids::distill_task(block, rate),
            Stage::Distill,
            TaskParams::Distill { block, rate },
            vec![Stage::Capture],
            1,
        );
    }

    add(
        ids::SELECT_TASK.into(),
        Stage::Select,
        TaskParams::Select,
        vec![Stage::Distill],
        1,
    );
    // Fine-tuning also reads the capture stage's latents; select already waits for them.
    add(
        ids::FINETUNE_TASK.into(),
        Stage::Finetune,
        TaskParams::Finetune,
        vec![Stage::Select],
        spec.resources.finetune_workers,
    );
    add(
        ids::EXPORT_TASK.into(),
        Stage::Export,
        TaskParams::Export,
        vec![Stage::Finetune],
        1,
    );
    add(
        ids::EVALUATE_TASK.into(),
        Stage::Evaluate,
        TaskParams::Evaluate,
        vec![Stage::Export],
        1,
    );
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use surgery_core::rate::Rate;
    use surgery_core::spec::CaptureShard;

    fn spec(extra: &str) -> JobSpec {
        let yaml = format!(
            "version: 1\nname: p\nteacher:\n  url: /m\n  preset: wan2.1-t2v-1.3b\ndata:\n  prompts: /p\n  train_prompts: 20\n  prompts_per_shard: 8\nvideo: {{frames: 81, height: 480, width: 832}}\nresources:\n  finetune_workers: 4\n{extra}"
        );
        JobSpec::parse(&yaml).unwrap()
    }

    #[test]
    fn knapsack_plan_has_every_stage_in_order() {
        let tasks = plan(&"j".to_string(), &spec(""), 5);
        // 3 capture shards (20 prompts / 8), 30 blocks x 3 rates, select, finetune, export, evaluate.
        assert_eq!(tasks.len(), 3 + 90 + 4);
        let ids: Vec<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(
            &ids[..3],
            ["capture/shard-0000", "capture/shard-0001", "capture/shard-0002"]
        );
        assert_eq!(ids[3], "distill/block-00/rate-2");
        assert_eq!(ids[92], "distill/block-29/rate-8");
        assert_eq!(&ids[93..], ["select", "finetune", "export", "evaluate"]);
        assert_eq!(
            tasks[2].params,
            TaskParams::Capture(CaptureShard {
                shard: 2,
                first_prompt: 16,
                num_prompts: 4
            })
        );
        assert_eq!(
            tasks[4].params,
            TaskParams::Distill {
                block: 0,
                rate: Rate::Hybrid(4)
            }
        );
        assert!(
            tasks
                .iter()
                .enumerate()
                .all(|(i, t)| t.order == i as u32 && t.state == TaskState::Pending && t.attempt == 0)
        );
    }

    #[test]
    fn dependencies_form_the_design_graph() {
        let tasks = plan(&"j".to_string(), &spec(""), 0);
        let by_id = |id: &str| tasks.iter().find(|t| t.id == id).unwrap();
        assert!(by_id("capture/shard-0001").after.is_empty());
        assert_eq!(by_id("distill/block-05/rate-4").after, vec![Stage::Capture]);
        assert_eq!(by_id("select").after, vec![Stage::Distill]);
        assert_eq!(by_id("finetune").after, vec![Stage::Select]);
        assert_eq!(by_id("finetune").gang_size, 4);
        assert_eq!(by_id("export").after, vec![Stage::Finetune]);
        assert_eq!(by_id("evaluate").after, vec![Stage::Export]);
        // Every prerequisite stage is planned before the task: the plan is a DAG in order.
        let mut seen = HashSet::new();
        for task in &tasks {
            for stage in &task.after {
                assert!(seen.contains(stage), "{} waits for later stage {stage:?}", task.id);
            }
            seen.insert(task.stage);
        }
    }

    #[test]
    fn text_prompts_are_encoded_before_capture() {
        let yaml = format!(
            "{}data:\n  prompts: /p/prompts.jsonl\n  train_prompts: 20\n  heldout_prompts: 3\n  prompts_per_shard: 8\n",
            "version: 1\nname: p\nteacher:\n  url: /m\n  preset: wan2.1-t2v-1.3b\n"
        ) + "video: {frames: 81, height: 480, width: 832}\n";
        let tasks = plan(&"j".to_string(), &JobSpec::parse(&yaml).unwrap(), 0);
        let encode: Vec<&TaskRecord> = tasks.iter().filter(|t| t.stage == Stage::Encode).collect();
        // 23 prompts (20 train + 3 held out) in slices of 8.
        let ids: Vec<&str> = encode.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["encode/shard-0000", "encode/shard-0001", "encode/shard-0002"]);
        assert_eq!(
            encode[2].params,
            TaskParams::Encode(CaptureShard {
                shard: 2,
                first_prompt: 16,
                num_prompts: 7
            })
        );
        assert!(encode.iter().all(|t| t.after.is_empty() && t.order < 3));
        let capture = tasks.iter().find(|t| t.id == "capture/shard-0000").unwrap();
        assert_eq!(capture.after, vec![Stage::Encode]);
        // Embedding files plan no encode stage.
        assert!(
            plan(&"j".to_string(), &spec(""), 0)
                .iter()
                .all(|t| t.stage != Stage::Encode)
        );
    }

    #[test]
    fn layout_plans_only_the_listed_pairs() {
        let tasks = plan(
            &"j".to_string(),
            &spec(
                "surgery:\n  selection:\n    layout:\n      - {blocks: [4, 2], rate: 2}\n      - {blocks: [9], rate: linear}\n",
            ),
            0,
        );
        let distill: Vec<&str> = tasks
            .iter()
            .filter(|t| t.stage == Stage::Distill)
            .map(|t| t.id.as_str())
            .collect();
        assert_eq!(
            distill,
            [
                "distill/block-02/rate-2",
                "distill/block-04/rate-2",
                "distill/block-09/rate-linear"
            ]
        );
    }

    #[test]
    fn homogeneous_plans_one_rate() {
        let tasks = plan(
            &"j".to_string(),
            &spec("surgery:\n  selection:\n    homogeneous: {rate: 4, blocks: 15}\n"),
            0,
        );
        assert_eq!(tasks.iter().filter(|t| t.stage == Stage::Distill).count(), 30);
        assert!(
            tasks
                .iter()
                .filter(|t| t.stage == Stage::Distill)
                .all(|t| t.id.ends_with("rate-4"))
        );
    }

    #[test]
    fn shards_cover_every_prompt_once() {
        let tasks = plan(&"j".to_string(), &spec(""), 0);
        let mut covered = Vec::new();
        for task in &tasks {
            if let TaskParams::Capture(CaptureShard {
                first_prompt,
                num_prompts,
                ..
            }) = task.params
            {
                covered.extend(first_prompt..first_prompt + num_prompts);
            }
        }
        assert_eq!(covered, (0..20).collect::<Vec<_>>());
    }
}
