//! Spec parsing and validation: the shipped examples are valid, and each class of user
//! error comes back with the message, path and line the user sees.

use super::*;
use crate::rate::Rate;

const TINY: &str = include_str!("../../../configs/tiny.yaml");
const WAN: &str = include_str!("../../../configs/wan2.1-1.3b.yaml");
const TESTBED_CPU: &str = include_str!("../../../configs/testbed-cpu.yaml");
const TESTBED_GPU: &str = include_str!("../../../configs/testbed-gpu.yaml");

/// A small valid spec; tests edit it one line at a time.
const BASE: &str = "\
version: 1
name: t
teacher:
  url: file:///models/wan
  preset: wan2.1-t2v-1.3b
data:
  prompts: s3://bucket/prompts.safetensors
  train_prompts: 16
video:
  frames: 81
  height: 480
  width: 832
";

fn errors(yaml: &str) -> Vec<FieldError> {
    JobSpec::parse(yaml).expect_err("spec should be rejected").errors
}

fn one_error(yaml: &str) -> FieldError {
    let errs = errors(yaml);
    assert_eq!(errs.len(), 1, "expected one error, got {errs:#?}");
    errs.into_iter().next().unwrap()
}

fn with(extra: &str) -> String {
    format!("{BASE}{extra}")
}

#[test]
fn shipped_configs_are_valid() {
    let tiny = JobSpec::parse(TINY).unwrap();
    assert_eq!(tiny.name, "tiny");
    assert_eq!(tiny.resources.device, Device::Cpu);
    assert_eq!(tiny.model_shape().layers, 2);
    assert_eq!(tiny.tokens(), 72);
    assert_eq!(tiny.capture_shards(), 2);
    assert_eq!(tiny.distill_pairs().len(), 2 * 3);

    let wan = JobSpec::parse(WAN).unwrap();
    assert_eq!(wan.model_shape(), crate::cost::ModelShape::wan21_1_3b());
    assert_eq!(wan.tokens(), 32_760);
    assert_eq!(wan.distill_pairs().len(), 30 * 3);
    assert_eq!(wan.capture_shards(), 125);
    assert_eq!(wan.encode_shard_list().len(), 127, "1,016 text prompts, 8 a shard");

    let cpu = JobSpec::parse(TESTBED_CPU).unwrap();
    assert_eq!(cpu.video.latent_codec, LatentCodec::SpaceToDepth);
    assert_eq!(cpu.latent_dims(), (8, 8, 8));
    assert_eq!(cpu.tokens(), 512);
    let gpu = JobSpec::parse(TESTBED_GPU).unwrap();
    assert_eq!(gpu.latent_dims(), (16, 16, 16));
    assert_eq!(gpu.tokens(), 1024);
    assert_eq!(gpu.distill_pairs().len(), 8 * 4);
}

#[test]
fn defaults_fill_what_is_left_out() {
    let spec = JobSpec::parse(BASE).unwrap();
    assert_eq!(spec.sampler.steps, 50);
    assert_eq!(spec.sampler.shift, 5.0);
    assert_eq!(spec.sampler.scheduler, SchedulerKind::Unipc);
    assert_eq!(
        spec.surgery.rates.clone(),
        vec![Rate::Hybrid(2), Rate::Hybrid(4), Rate::Hybrid(8)]
    );
    assert_eq!(spec.surgery.anchor_pattern, AnchorPattern::Strided);
    assert_eq!(
        spec.surgery.selection.rule(),
        SelectionRule::Knapsack(KnapsackSpec {
            budget: 0.6,
            cost: CostSource::Measured
        })
    );
    assert_eq!(spec.stages.distill.loss, DistillLoss::ValueL1);
    assert_eq!(spec.retry.max_retries, 3);
}

#[test]
fn unknown_field_names_path_and_line() {
    let err = one_error(&with("sampler:\n  stpes: 20\n"));
    assert_eq!(err.path, "sampler.stpes");
    assert_eq!(err.line, 14);
    assert!(
        err.message.starts_with("unknown field `stpes`, expected one of"),
        "{}",
        err.message
    );
    assert!(err.message.contains("`steps`"), "{}", err.message);
}

#[test]
fn unknown_top_level_field() {
    let err = one_error(&with("gpus: 8\n"));
    assert_eq!(err.path, "gpus");
    assert_eq!(err.line, 13);
    assert!(err.message.contains("unknown field `gpus`"), "{}", err.message);
}

#[test]
fn wrong_type_names_path_and_line() {
    let err = one_error(&with("stages:\n  distill:\n    steps: many\n"));
    assert_eq!(err.path, "stages.distill.steps");
    assert_eq!(err.line, 15);
    assert!(
        err.message.contains("invalid type: string \"many\", expected u32"),
        "{}",
        err.message
    );
}

#[test]
fn negative_where_unsigned() {
    let err = one_error(&with("stages:\n  finetune:\n    steps: -5\n"));
    assert_eq!(err.path, "stages.finetune.steps");
    assert_eq!(err.message, "invalid type: integer `-5`, expected u32");
}

#[test]
fn zero_steps_are_the_ablations_without_distillation_or_fine_tuning() {
    let spec = JobSpec::parse(&with("stages:\n  distill:\n    steps: 0\n  finetune:\n    steps: 0\n")).unwrap();
    assert_eq!((spec.stages.distill.steps, spec.stages.finetune.steps), (0, 0));
    let err = one_error(&with("stages:\n  distill:\n    steps: 10000001\n"));
    assert_eq!(err.path, "stages.distill.steps");
    assert_eq!(err.message, "10000001 is out of range; expected 0 to 10000000");
}

#[test]
fn missing_required_field() {
    let yaml = BASE.replace("  train_prompts: 16\n", "");
    let err = one_error(&yaml);
    assert_eq!(err.path, "data");
    assert!(err.message.contains("missing field `train_prompts`"), "{}", err.message);
}

#[test]
fn unknown_enum_word() {
    let err = one_error(&with("surgery:\n  anchor_pattern: spiral\n"));
    assert_eq!(err.path, "surgery.anchor_pattern");
    assert_eq!(err.line, 14);
    assert!(
        err.message
            .contains("unknown variant `spiral`, expected `strided` or `diagonal`"),
        "{}",
        err.message
    );
}

#[test]
fn rates_up_to_32_are_candidates() {
    let spec = JobSpec::parse(&with("surgery:\n  rates: [2, 4, 8, 16, 32, linear]\n")).unwrap();
    assert_eq!(
        spec.surgery.rates,
        vec![2, 4, 8, 16, 32]
            .into_iter()
            .map(Rate::Hybrid)
            .chain([Rate::Linear])
            .collect::<Vec<_>>()
    );
    // Every (block, rate) pair is a distillation task.
    assert_eq!(spec.distill_pairs().len(), 6 * spec.model_shape().layers as usize);
}

#[test]
fn bad_rate_word() {
    let err = one_error(&with("surgery:\n  rates: [2, fast]\n"));
    assert_eq!(err.path, "surgery.rates[1]");
    assert_eq!(err.line, 14);
    assert!(
        err.message
            .contains("unknown rate `fast`; expected a positive integer or `linear`"),
        "{}",
        err.message
    );
    let zero = one_error(&with("surgery:\n  rates: [0]\n"));
    assert!(zero.message.contains("write `linear`"), "{}", zero.message);
}

#[test]
fn unsupported_version() {
    let err = one_error(&BASE.replace("version: 1", "version: 2"));
    assert_eq!(err.path, "version");
    assert_eq!(err.line, 1);
    assert_eq!(
        err.message,
        "unsupported spec version 2; this surgery understands version 1"
    );
}

#[test]
fn out_of_range_values() {
    let err = one_error(&with("surgery:\n  selection:\n    knapsack:\n      budget: 1.5\n"));
    assert_eq!(err.path, "surgery.selection.knapsack.budget");
    assert_eq!(err.line, 16);
    assert_eq!(err.message, "1.5 is out of range; expected a number in (0, 1]");

    let err = one_error(&with("priority: 5000\n"));
    assert_eq!((err.path.as_str(), err.line), ("priority", 13));
    assert_eq!(err.message, "5000 is out of range; expected -1000 to 1000");

    let err = one_error(&with("stages:\n  distill:\n    lr: .nan\n"));
    assert_eq!(err.path, "stages.distill.lr");
    assert!(err.message.starts_with("NaN is out of range"), "{}", err.message);
}

#[test]
fn video_shape_rules() {
    let errs = errors(
        &BASE
            .replace("frames: 81", "frames: 80")
            .replace("width: 832", "width: 830"),
    );
    let paths: Vec<_> = errs.iter().map(|e| (e.path.as_str(), e.line)).collect();
    assert_eq!(paths, vec![("video.frames", 10), ("video.width", 12)]);
    assert!(errs[0].message.contains("must be 4k + 1"), "{}", errs[0].message);
    assert_eq!(
        errs[1].message,
        "830 must be a positive multiple of 16 (VAE stride 8 x patch 2)"
    );
}

#[test]
fn inconsistent_values_point_at_the_field_to_change() {
    let err = one_error(&with(
        "stages:\n  finetune:\n    global_batch: 30\nresources:\n  finetune_workers: 8\n",
    ));
    assert_eq!(err.path, "stages.finetune.global_batch");
    assert_eq!(err.line, 15);
    assert_eq!(
        err.message,
        "30 does not divide evenly over resources.finetune_workers = 8"
    );

    let err = one_error(&with("surgery:\n  attention: linear\n  rates: [linear, 4]\n"));
    assert_eq!(err.path, "surgery.rates[1]");
    assert!(err.message.contains("surgery.attention is `linear`"), "{}", err.message);

    let err = one_error(&with("stages:\n  capture:\n    steps: [0, 10, 60]\n"));
    assert_eq!(err.path, "stages.capture.steps[2]");
    assert_eq!(
        err.message,
        "step 60 is past the last denoising step (49 of sampler.steps = 50)"
    );

    let err = one_error(&with("stages:\n  capture:\n    steps: [10, 5]\n"));
    assert_eq!(err.message, "steps must be strictly increasing");
}

#[test]
fn layout_rules() {
    let yaml = with(
        "surgery:\n  selection:\n    layout:\n      - blocks: [0, 1, 2]\n        rate: 2\n      - blocks: [2, 31]\n        rate: linear\n",
    );
    let errs = errors(&yaml);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert_eq!(errs[0].path, "surgery.selection.layout[1].blocks[0]");
    assert_eq!(errs[0].message, "block 2 is given a rate twice");
    assert_eq!(errs[1].path, "surgery.selection.layout[1].blocks[1]");
    assert_eq!(
        errs[1].message,
        "block 31 does not exist; the teacher has blocks 0 to 29"
    );
    assert_eq!(errs[0].line, 18);

    let ok = JobSpec::parse(&with(
        "surgery:\n  selection:\n    layout:\n      - blocks: [3, 1]\n        rate: 2\n",
    ))
    .unwrap();
    assert_eq!(ok.distill_pairs(), vec![(1, Rate::Hybrid(2)), (3, Rate::Hybrid(2))]);
}

#[test]
fn homogeneous_rules() {
    let spec = JobSpec::parse(&with(
        "surgery:\n  selection:\n    homogeneous: {rate: 2, blocks: 15}\n",
    ))
    .unwrap();
    assert_eq!(spec.distill_pairs().len(), 30);
    let err = one_error(&with(
        "surgery:\n  selection:\n    homogeneous: {rate: 2, blocks: 40}\n",
    ));
    assert_eq!(err.path, "surgery.selection.homogeneous.blocks");
    assert_eq!(err.message, "40 is out of range; the teacher has 30 blocks");
}

#[test]
fn selection_needs_a_known_rule() {
    let err = one_error(&with("surgery:\n  selection:\n    greedy: {}\n"));
    assert_eq!(err.path, "surgery.selection.greedy");
    assert!(
        err.message
            .starts_with("unknown field `greedy`, expected one of `knapsack`, `layout`, `homogeneous`"),
        "{}",
        err.message
    );
    let err = one_error(&with(
        "surgery:\n  selection:\n    knapsack: {budget: 0.5}\n    homogeneous: {rate: 2, blocks: 3}\n",
    ));
    assert_eq!((err.path.as_str(), err.line), ("surgery.selection", 14));
    assert_eq!(err.message, "set exactly one of knapsack, layout and homogeneous");
}

#[test]
fn teacher_architecture_exactly_once() {
    let yaml = BASE.replace("  preset: wan2.1-t2v-1.3b\n", "");
    let err = one_error(&yaml);
    assert_eq!(err.path, "teacher");
    assert_eq!(err.line, 3);
    assert!(err.message.contains("neither is set"), "{}", err.message);

    let err = one_error(&BASE.replace("preset: wan2.1-t2v-1.3b", "preset: wan2.2"));
    assert_eq!(err.path, "teacher.preset");
    assert!(err.message.contains("unknown variant `wan2.2`"), "{}", err.message);
}

#[test]
fn urls_are_checked() {
    let err = one_error(&BASE.replace("s3://bucket/prompts.safetensors", "ftp://host/p"));
    assert_eq!(err.path, "data.prompts");
    assert_eq!(err.line, 7);
    assert!(
        err.message.starts_with("unsupported URL scheme `ftp://`"),
        "{}",
        err.message
    );
    // A plain local path is fine.
    JobSpec::parse(&BASE.replace("s3://bucket/prompts.safetensors", "./data/p.safetensors")).unwrap();
}

#[test]
fn name_rules() {
    let err = one_error(&BASE.replace("name: t", "name: My_Job"));
    assert_eq!(err.path, "name");
    assert!(
        err.message.starts_with("`My_Job` is not a valid name"),
        "{}",
        err.message
    );
}

#[test]
fn every_error_is_reported_at_once() {
    let yaml = BASE
        .replace("version: 1", "version: 3")
        .replace("train_prompts: 16", "train_prompts: 0")
        .replace("height: 480", "height: 0");
    let errs = errors(&yaml);
    let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, vec!["version", "data.train_prompts", "video.height"]);
    let text = SpecError { errors: errs }.to_string();
    assert!(
        text.starts_with("invalid job spec (3 errors)\n  version (line 1, column 1): unsupported spec version 3"),
        "{text}"
    );
}

#[test]
fn not_yaml_at_all() {
    let err = one_error("version: 1\nname: [unclosed\n");
    assert!(err.line >= 2, "{err:?}");
    let empty = one_error("   \n");
    assert_eq!(empty.message, "the spec is empty");
    let scalar = one_error("just a string");
    assert!(scalar.message.contains("invalid type"), "{}", scalar.message);
}

#[test]
fn heldout_cannot_take_everything() {
    let err = one_error(
        &with("stages:\n  capture:\n    steps: [0]\n  distill:\n    heldout_fraction: 0.5\n")
            .replace("train_prompts: 16", "train_prompts: 1"),
    );
    assert_eq!(err.path, "stages.distill.heldout_fraction");
    assert!(err.message.contains("leaving none to train on"), "{}", err.message);
}

/// A small valid space-to-depth spec (the testbed's shapes); tests edit it one line at a time.
const S2D: &str = "\
version: 1
name: t
teacher:
  url: file://t/teacher
  shape: {layers: 2, heads: 2, head_dim: 32, ffn_dim: 256, text_dim: 32, text_len: 24, in_channels: 48, out_channels: 48, patch: [1, 2, 2], freq_dim: 64}
data:
  prompts: file://t/prompts.safetensors
  train_prompts: 16
video:
  frames: 8
  height: 32
  width: 32
  latent_codec: space_to_depth
";

#[test]
fn space_to_depth_shapes_and_tokens() {
    let spec = JobSpec::parse(S2D).unwrap();
    assert_eq!(spec.video.latent_codec, LatentCodec::SpaceToDepth);
    assert_eq!(spec.latent_dims(), (8, 8, 8));
    assert_eq!(spec.tokens(), 8 * 4 * 4);
    // Left out, the codec is the Wan VAE's, as before the field existed.
    assert_eq!(JobSpec::parse(BASE).unwrap().video.latent_codec, LatentCodec::WanVae);
    // Any frame count divisible by the temporal patch: no 4k + 1 rule.
    let spec = JobSpec::parse(&S2D.replace("frames: 8", "frames: 7")).unwrap();
    assert_eq!(spec.latent_dims(), (7, 8, 8));
    // The FLOP model follows the tokens.
    let flops = crate::cost::softmax_model_forward_flops(&spec.model_shape(), spec.tokens());
    let vae_tokens = crate::cost::video_tokens(&spec.model_shape(), LatentCodec::WanVae, 9, 32, 32);
    assert_eq!(vae_tokens, 3 * 2 * 2);
    assert!(flops > crate::cost::softmax_model_forward_flops(&spec.model_shape(), vae_tokens));
}

#[test]
fn unknown_codec_word() {
    let err = one_error(&S2D.replace("latent_codec: space_to_depth", "latent_codec: pixels"));
    assert_eq!(err.path, "video.latent_codec");
    assert_eq!(err.line, 13);
    assert!(
        err.message
            .contains("unknown variant `pixels`, expected `wan_vae` or `space_to_depth`"),
        "{}",
        err.message
    );
}

#[test]
fn space_to_depth_size_rules() {
    let errs = errors(&S2D.replace("height: 32", "height: 36").replace("width: 32", "width: 0"));
    let paths: Vec<_> = errs.iter().map(|e| (e.path.as_str(), e.line)).collect();
    assert_eq!(paths, vec![("video.height", 11), ("video.width", 12)]);
    assert_eq!(
        errs[0].message,
        "36 must be a positive multiple of 8 (space_to_depth stride 4 x patch 2)"
    );
    assert_eq!(
        errs[1].message,
        "0 must be a positive multiple of 8 (space_to_depth stride 4 x patch 2)"
    );
    // 20 is a multiple of 4 but not of 4 x patch 2.
    let err = one_error(&S2D.replace("width: 32", "width: 20"));
    assert_eq!(err.path, "video.width");

    let err = one_error(&S2D.replace("frames: 8", "frames: 0"));
    assert_eq!(
        (err.path.as_str(), err.message.as_str()),
        ("video.frames", "must be at least 1")
    );
    let err = one_error(
        &S2D.replace("frames: 8", "frames: 9")
            .replace("patch: [1, 2, 2]", "patch: [2, 2, 2]"),
    );
    assert_eq!(err.path, "video.frames");
    assert_eq!(
        err.message,
        "9 frames are not divisible by the temporal patch 2 (space_to_depth keeps every frame)"
    );
}

#[test]
fn space_to_depth_needs_48_channels() {
    let err = one_error(&S2D.replace("in_channels: 48", "in_channels: 16"));
    assert_eq!(err.path, "teacher.shape.in_channels");
    assert_eq!(
        err.message,
        "16 channels, but video.latent_codec `space_to_depth` makes 48-channel latents (3 colours x 4 x 4 pixels); set it to 48"
    );
    let err = one_error(&S2D.replace("out_channels: 48", "out_channels: 3"));
    assert_eq!(err.path, "teacher.shape.out_channels");
    // The 1.3B preset takes 16-channel VAE latents.
    let yaml = with("  latent_codec: space_to_depth\n").replace("frames: 81", "frames: 16");
    let err = one_error(&yaml);
    assert_eq!((err.path.as_str(), err.line), ("video.latent_codec", 13));
    assert_eq!(
        err.message,
        "`space_to_depth` makes 48-channel latents, but the teacher preset takes 16; spell out teacher.shape with in_channels and out_channels 48"
    );
}

#[test]
fn text_prompts_plan_an_encode_shard_per_slice_of_every_prompt() {
    let embeds = JobSpec::parse(&with("")).unwrap();
    assert_eq!(embeds.prompt_source(), PromptSource::Embeddings);
    assert!(embeds.encode_shard_list().is_empty());

    let text = JobSpec::parse(&BASE.replace("prompts.safetensors", "prompts.txt").replace(
        "train_prompts: 16",
        "train_prompts: 16\n  heldout_prompts: 4\n  prompts_per_shard: 6",
    ))
    .unwrap();
    assert_eq!(text.prompt_source(), PromptSource::Text);
    assert_eq!(text.data.negative_prompt, "", "diffusers' default negative prompt");
    let shards = text.encode_shard_list();
    // 20 prompts (16 train + 4 held out) in slices of 6, aligned with capture's slices.
    let slices: Vec<(u32, u32)> = shards.iter().map(|s| (s.first_prompt, s.num_prompts)).collect();
    assert_eq!(slices, [(0, 6), (6, 6), (12, 6), (18, 2)]);
    assert_eq!(text.capture_shard_list()[1].first_prompt, shards[1].first_prompt);
    assert_eq!(PromptSource::of("s3://b/p.JSONL"), PromptSource::JsonLines);
}

#[test]
fn a_negative_prompt_needs_text_prompts() {
    let err = one_error(&BASE.replace("train_prompts: 16", "train_prompts: 16\n  negative_prompt: blurry"));
    assert_eq!(err.path, "data.negative_prompt");
    assert!(err.message.contains("applies to text prompts"), "{}", err.message);
    let ok = JobSpec::parse(
        &BASE
            .replace("prompts.safetensors", "prompts.jsonl")
            .replace("train_prompts: 16", "train_prompts: 16\n  negative_prompt: blurry"),
    )
    .unwrap();
    assert_eq!(ok.data.negative_prompt, "blurry");
}

#[test]
fn pipeline_model_urls_are_checked() {
    let err = one_error(&BASE.replace(
        "  preset: wan2.1-t2v-1.3b",
        "  preset: wan2.1-t2v-1.3b\n  vae: ftp://host/vae",
    ));
    assert_eq!(err.path, "teacher.vae");
    assert!(
        err.message.contains("unsupported URL scheme `ftp://`"),
        "{}",
        err.message
    );
    let ok = JobSpec::parse(&BASE.replace(
        "  preset: wan2.1-t2v-1.3b",
        "  preset: wan2.1-t2v-1.3b\n  text_encoder: s3://b/umt5\n  tokenizer: s3://b/tok",
    ))
    .unwrap();
    assert_eq!(ok.teacher.text_encoder.as_deref(), Some("s3://b/umt5"));
    assert!(ok.teacher.vae.is_none());
}

#[test]
fn previews_are_bounded() {
    let spec = JobSpec::parse(&with("")).unwrap();
    assert_eq!(spec.stages.evaluate.previews, 2);
    let err = one_error(&with("stages:\n  evaluate:\n    previews: 65\n"));
    assert_eq!(err.path, "stages.evaluate.previews");
    assert!(err.message.contains("out of range"), "{}", err.message);
}
