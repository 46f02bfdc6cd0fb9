use super::*;

/// A parent spec with text prompts (so encode tasks exist): 20 prompts in shards of 8
/// (encode shards 0..8, 8..16, 16..20; capture shards 0..8, 8..16), 30 blocks x 3 rates.
const PARENT: &str = "\
version: 1
name: parent
priority: 0
teacher:
  url: /m/wan
  preset: wan2.1-t2v-1.3b
  dtype: bf16
data:
  prompts: /p/prompts.txt
  negative_prompt: ''
  train_prompts: 16
  heldout_prompts: 4
  prompts_per_shard: 8
video: {frames: 81, height: 480, width: 832, latent_codec: wan_vae}
sampler: {steps: 50, shift: 3.0, guidance: 5.0, seed: 7, scheduler: unipc}
surgery:
  rates: [2, 4, linear]
  anchor_pattern: strided
  feature_map: {hidden: 64, features: 64, chunks: 2, eps: 0.000001}
  selection:
    knapsack: {budget: 0.6}
stages:
  capture: {steps: [0, 10]}
  distill: {steps: 100, batch: 2, updates_per_batch: 1, lr: 0.001, weight_decay: 0.0, loss: value_l1, heldout_fraction: 0.1}
  finetune: {steps: 10, lr: 0.00001}
  evaluate: {steps: 10, previews: 1}
resources: {device: cuda, finetune_workers: 1, min_gpu_memory_gib: 0}
checkpoint: {every_steps: 10, keep_last: 2}
retry: {max_retries: 3}
";

fn parent() -> JobSpec {
    JobSpec::parse(PARENT).unwrap()
}

/// The parent's spec with `from` replaced by `to` (which must occur).
fn child(from: &str, to: &str) -> JobSpec {
    assert!(PARENT.contains(from), "the parent spec has no `{from}`");
    let yaml = PARENT.replacen(from, to, 1);
    JobSpec::parse(&yaml).unwrap_or_else(|e| panic!("{from} -> {to}: {e}"))
}

/// Whether every encode, capture and distill task of `child` is reused.
fn reused_stages(child: &JobSpec) -> (bool, bool, bool) {
    let reuse = reusable(&parent(), child, |_| true);
    let all = |tasks: Vec<(String, Key)>| tasks.iter().all(|(task, _)| reuse.tasks.contains(task));
    let none = |tasks: Vec<(String, Key)>| tasks.iter().all(|(task, _)| !reuse.tasks.contains(task));
    let stage = |tasks: Vec<(String, Key)>| {
        let (all, none) = (all(tasks.clone()), none(tasks));
        assert!(all || none, "a stage is reused in part: {:?}", reuse.notes);
        all
    };
    (
        stage(encode_keys(child)),
        stage(capture_keys(child)),
        stage(distill_keys(child)),
    )
}

#[test]
fn an_identical_spec_reuses_every_task() {
    let reuse = reusable(&parent(), &parent(), |_| true);
    assert_eq!(reuse.tasks.len(), 3 + 2 + 90);
    assert_eq!(
        reuse.notes,
        [
            "encode: 3 of 3 reused",
            "capture: 2 of 2 reused",
            "distill: 90 of 90 reused"
        ]
    );
}

#[test]
fn fields_that_change_what_a_stage_computes_stop_its_reuse() {
    // (field, from, to, encode reused, capture reused, distill reused)
    let cases: &[(&str, &str, &str, bool, bool, bool)] = &[
        ("teacher.url", "url: /m/wan", "url: /m/other", false, false, false),
        ("teacher.dtype", "dtype: bf16", "dtype: fp32", false, false, false),
        (
            "teacher.text_encoder",
            "dtype: bf16",
            "dtype: bf16\n  text_encoder: /m/enc",
            false,
            false,
            false,
        ),
        (
            "teacher.tokenizer",
            "dtype: bf16",
            "dtype: bf16\n  tokenizer: /m/tok",
            false,
            false,
            false,
        ),
        (
            "data.prompts",
            "prompts: /p/prompts.txt",
            "prompts: /p/other.txt",
            false,
            false,
            false,
        ),
        (
            "data.negative_prompt",
            "negative_prompt: ''",
            "negative_prompt: blurry",
            false,
            false,
            false,
        ),
        (
            "data.prompts_per_shard",
            "prompts_per_shard: 8",
            "prompts_per_shard: 4",
            false,
            false,
            false,
        ),
        ("video.frames", "frames: 81", "frames: 49", true, false, false),
        ("video.height", "height: 480", "height: 320", true, false, false),
        ("video.width", "width: 832", "width: 480", true, false, false),
        ("sampler.steps", "steps: 50", "steps: 40", true, false, false),
        ("sampler.shift", "shift: 3.0", "shift: 5.0", true, false, false),
        ("sampler.guidance", "guidance: 5.0", "guidance: 1.0", true, false, false),
        ("sampler.seed", "seed: 7", "seed: 8", true, false, false),
        (
            "sampler.scheduler",
            "scheduler: unipc",
            "scheduler: euler",
            true,
            false,
            false,
        ),
        (
            "stages.capture.steps",
            "steps: [0, 10]",
            "steps: [0, 20]",
            true,
            false,
            false,
        ),
        (
            "surgery.anchor_pattern",
            "anchor_pattern: strided",
            "anchor_pattern: diagonal",
            true,
            true,
            false,
        ),
        (
            "surgery.feature_map.hidden",
            "hidden: 64",
            "hidden: 32",
            true,
            true,
            false,
        ),
        (
            "surgery.feature_map.features",
            "features: 64",
            "features: 32",
            true,
            true,
            false,
        ),
        (
            "surgery.feature_map.chunks",
            "chunks: 2",
            "chunks: 1",
            true,
            true,
            false,
        ),
        (
            "surgery.feature_map.eps",
            "eps: 0.000001",
            "eps: 0.001",
            true,
            true,
            false,
        ),
        ("stages.distill.steps", "steps: 100", "steps: 200", true, true, false),
        ("stages.distill.batch", "batch: 2", "batch: 4", true, true, false),
        (
            "stages.distill.updates_per_batch",
            "updates_per_batch: 1",
            "updates_per_batch: 2",
            true,
            true,
            false,
        ),
        ("stages.distill.lr", "lr: 0.001", "lr: 0.002", true, true, false),
        (
            "stages.distill.weight_decay",
            "weight_decay: 0.0, loss",
            "weight_decay: 0.1, loss",
            true,
            true,
            false,
        ),
        (
            "stages.distill.loss",
            "loss: value_l1",
            "loss: attention_score",
            true,
            true,
            false,
        ),
        (
            "stages.distill.heldout_fraction",
            "heldout_fraction: 0.1",
            "heldout_fraction: 0.2",
            true,
            true,
            false,
        ),
    ];
    for (field, from, to, encode, capture, distill) in cases {
        let got = reused_stages(&child(from, to));
        assert_eq!(got, (*encode, *capture, *distill), "{field}: {from} -> {to}");
        if !distill {
            // The note names the field (or its section) that stopped the reuse.
            let notes = reusable(&parent(), &child(from, to), |_| true).notes.join("\n");
            let section = field.rsplit_once('.').map_or(*field, |(s, _)| s);
            let named = notes.contains(field) || notes.contains(section) || field.starts_with("data.prompts_per");
            assert!(named, "{field}: {notes}");
        }
    }
}

#[test]
fn fields_that_do_not_change_capture_or_distillation_keep_the_reuse() {
    let cases: &[(&str, &str, &str)] = &[
        ("name", "name: parent", "name: child"),
        ("priority", "priority: 0", "priority: 5"),
        ("teacher.vae", "dtype: bf16", "dtype: bf16\n  vae: /m/vae"),
        ("the knapsack budget", "budget: 0.6", "budget: 0.3"),
        ("the cost source", "budget: 0.6}", "budget: 0.6, cost: flops}"),
        ("stages.finetune.steps", "steps: 10, lr", "steps: 500, lr"),
        ("stages.finetune.lr", "lr: 0.00001", "lr: 0.0001"),
        (
            "stages.evaluate",
            "evaluate: {steps: 10, previews: 1}",
            "evaluate: {steps: 20, previews: 4}",
        ),
        ("resources.device", "device: cuda", "device: cpu"),
        (
            "resources.finetune_workers",
            "finetune_workers: 1",
            "finetune_workers: 2",
        ),
        (
            "resources.min_gpu_memory_gib",
            "min_gpu_memory_gib: 0",
            "min_gpu_memory_gib: 40",
        ),
        (
            "checkpoint",
            "every_steps: 10, keep_last: 2",
            "every_steps: 50, keep_last: 5",
        ),
        ("retry", "max_retries: 3", "max_retries: 9"),
    ];
    for (field, from, to) in cases {
        assert_eq!(reused_stages(&child(from, to)), (true, true, true), "{field}");
    }
}

#[test]
fn another_selection_rule_reuses_the_distill_tasks_it_needs() {
    let homogeneous = child("knapsack: {budget: 0.6}", "homogeneous: {rate: 4, blocks: 10}");
    let reuse = reusable(&parent(), &homogeneous, |_| true);
    assert_eq!(reused_stages(&homogeneous), (true, true, true));
    assert_eq!(reuse.notes[2], "distill: 30 of 30 reused");
}

#[test]
fn a_new_rate_distills_only_its_own_tasks() {
    let more = child("rates: [2, 4, linear]", "rates: [2, 4, 8, linear]");
    let reuse = reusable(&parent(), &more, |_| true);
    assert!(reuse.tasks.contains("distill/block-00/rate-4"));
    assert!(!reuse.tasks.contains("distill/block-00/rate-8"));
    assert_eq!(
        reuse.notes[2],
        "distill: 90 of 120 reused; the rest differ in (the parent has no such task)"
    );
}

#[test]
fn fewer_training_prompts_reuse_the_unchanged_capture_shards() {
    // 12 training prompts: capture shards 0..8 (as before) and 8..12 (was 8..16); the
    // encode shards 0..8 and 8..16 (12 + 4 prompts) stay as they were.
    let fewer = child("train_prompts: 16", "train_prompts: 12");
    let reuse = reusable(&parent(), &fewer, |_| true);
    assert!(reuse.tasks.contains("capture/shard-0000"));
    assert!(!reuse.tasks.contains("capture/shard-0001"));
    assert!(reuse.tasks.contains("encode/shard-0001"));
    // Every distill task trains on all shards: none is reused.
    assert!(!reuse.tasks.iter().any(|t| t.starts_with("distill/")));
    assert!(reuse.notes[1].starts_with("capture: 1 of 2 reused; the rest differ in the shard's prompts"));
    assert!(reuse.notes[2].contains("data.train_prompts"), "{:?}", reuse.notes);
}

#[test]
fn more_heldout_prompts_change_only_the_last_encode_shard() {
    let more = child("heldout_prompts: 4", "heldout_prompts: 6");
    let reuse = reusable(&parent(), &more, |_| true);
    assert!(reuse.tasks.contains("encode/shard-0001"));
    assert!(!reuse.tasks.contains("encode/shard-0002"));
    assert!(reuse.tasks.contains("capture/shard-0001"));
    assert_eq!(reuse.notes[2], "distill: 90 of 90 reused");
}

#[test]
fn embeddings_need_no_encoder_so_its_settings_do_not_matter() {
    let embeddings = |extra: &str| {
        child(
            "prompts: /p/prompts.txt",
            &format!("prompts: /p/embeds.safetensors{extra}"),
        )
    };
    let parent = embeddings("");
    let other_encoder = {
        let yaml = PARENT
            .replacen("prompts: /p/prompts.txt", "prompts: /p/embeds.safetensors", 1)
            .replacen(
                "dtype: bf16",
                "dtype: bf16\n  text_encoder: /m/enc\n  tokenizer: /m/tok",
                1,
            );
        JobSpec::parse(&yaml).unwrap()
    };
    let reuse = reusable(&parent, &other_encoder, |_| true);
    assert_eq!(reuse.tasks.len(), 2 + 90, "{:?}", reuse.notes);
    assert_eq!(reuse.notes[0], "capture: 2 of 2 reused");
}

#[test]
fn only_finished_tasks_of_the_parent_are_reused() {
    let reuse = reusable(&parent(), &parent(), |task| task != "capture/shard-0001");
    assert!(!reuse.tasks.contains("capture/shard-0001"));
    assert!(reuse.tasks.contains("capture/shard-0000"));
    assert_eq!(reuse.notes[1], "capture: 1 of 2 reused; 1 not finished in the parent");
}
