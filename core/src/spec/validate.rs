//! Semantic rules of a spec that types alone cannot say: ranges, formats, and fields that
//! must agree with each other. Every rule that fails adds one error at the field the user
//! must change.

use super::locate::Locations;
use super::parse::{FieldError, SpecError};
use super::{AttentionKind, JobSpec, LatentCodec, SUPPORTED_VERSION, SelectionRule};
use crate::rate::Rate;
use std::collections::HashSet;

struct Checker {
    locations: Locations,
    errors: Vec<FieldError>,
}

impl Checker {
    fn fail(&mut self, path: &str, message: impl Into<String>) {
        let (line, column) = self.locations.find(path).unwrap_or((0, 0));
        self.errors.push(FieldError {
            path: path.to_string(),
            line,
            column,
            message: message.into(),
        });
    }

    fn positive(&mut self, path: &str, value: u32) {
        if value == 0 {
            self.fail(path, "must be at least 1");
        }
    }

    fn range_u32(&mut self, path: &str, value: u32, min: u32, max: u32) {
        if value < min || value > max {
            self.fail(path, format!("{value} is out of range; expected {min} to {max}"));
        }
    }

    /// A finite number in [min, max] (or (min, max] when `min_exclusive`).
    fn range_f64(&mut self, path: &str, value: f64, min: f64, min_exclusive: bool, max: f64) {
        let low_ok = if min_exclusive { value > min } else { value >= min };
        if !value.is_finite() || !low_ok || value > max {
            let open = if min_exclusive { "(" } else { "[" };
            self.fail(
                path,
                format!("{value} is out of range; expected a number in {open}{min}, {max}]"),
            );
        }
    }

    fn url(&mut self, path: &str, value: &str) {
        if value.trim().is_empty() {
            self.fail(path, "must not be empty");
            return;
        }
        if let Some((scheme, rest)) = value.split_once("://") {
            const SCHEMES: [&str; 7] = ["file", "s3", "gs", "az", "abfs", "abfss", "memory"];
            if !SCHEMES.contains(&scheme) {
                self.fail(
                    path,
                    format!("unsupported URL scheme `{scheme}://`; expected one of file, s3, gs, az, abfs, abfss, memory, or a local path"),
                );
            } else if rest.is_empty() || rest == "/" {
                self.fail(path, format!("`{value}` names no bucket or folder"));
            }
        }
    }
}

pub(super) fn validate(spec: &JobSpec, yaml: &str) -> Result<(), SpecError> {
    let mut c = Checker {
        locations: Locations::of(yaml),
        errors: Vec::new(),
    };

    if spec.version != SUPPORTED_VERSION {
        c.fail(
            "version",
            format!(
                "unsupported spec version {}; this surgery understands version {SUPPORTED_VERSION}",
                spec.version
            ),
        );
    }
    let name_ok = !spec.name.is_empty()
        && spec.name.len() <= 63
        && spec
            .name
            .chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-')
        && !spec.name.starts_with('-')
        && !spec.name.ends_with('-');
    if !name_ok {
        c.fail(
            "name",
            format!("`{}` is not a valid name: use 1 to 63 lower-case letters, digits and '-', not starting or ending with '-'", spec.name),
        );
    }
    if !(-1000..=1000).contains(&spec.priority) {
        c.fail(
            "priority",
            format!("{} is out of range; expected -1000 to 1000", spec.priority),
        );
    }

    // Teacher.
    c.url("teacher.url", &spec.teacher.url);
    for (path, url) in [
        ("teacher.text_encoder", &spec.teacher.text_encoder),
        ("teacher.tokenizer", &spec.teacher.tokenizer),
        ("teacher.vae", &spec.teacher.vae),
    ] {
        if let Some(url) = url {
            c.url(path, url);
        }
    }
    match (&spec.teacher.preset, &spec.teacher.shape) {
        (None, None) => c.fail(
            "teacher",
            "set exactly one of teacher.preset and teacher.shape; neither is set",
        ),
        (Some(_), Some(_)) => c.fail(
            "teacher.shape",
            "set exactly one of teacher.preset and teacher.shape; both are set",
        ),
        _ => {}
    }
    if let Some(shape) = &spec.teacher.shape {
        c.range_u32("teacher.shape.layers", shape.layers, 1, 1024);
        c.range_u32("teacher.shape.heads", shape.heads, 1, 1024);
        c.range_u32("teacher.shape.head_dim", shape.head_dim, 2, 1024);
        if !shape.head_dim.is_multiple_of(2) {
            c.fail(
                "teacher.shape.head_dim",
                format!("{} must be even (RoPE rotates pairs)", shape.head_dim),
            );
        }
        c.positive("teacher.shape.ffn_dim", shape.ffn_dim);
        c.positive("teacher.shape.text_dim", shape.text_dim);
        c.positive("teacher.shape.text_len", shape.text_len);
        c.positive("teacher.shape.in_channels", shape.in_channels);
        c.positive("teacher.shape.out_channels", shape.out_channels);
        c.positive("teacher.shape.freq_dim", shape.freq_dim);
        if !shape.freq_dim.is_multiple_of(2) {
            c.fail(
                "teacher.shape.freq_dim",
                format!("{} must be even (sin and cos halves)", shape.freq_dim),
            );
        }
        for (i, p) in shape.patch.iter().enumerate() {
            c.range_u32(&format!("teacher.shape.patch[{i}]"), *p, 1, 16);
        }
    }
    let shape = spec.model_shape();

    // Data.
    c.url("data.prompts", &spec.data.prompts);
    if !spec.prompt_source().needs_encoding() && !spec.data.negative_prompt.is_empty() {
        c.fail(
            "data.negative_prompt",
            "applies to text prompts (.txt or .jsonl); an embedding file carries its own `negative_embeds`",
        );
    }
    c.range_u32("data.train_prompts", spec.data.train_prompts, 1, 10_000_000);
    c.range_u32("data.prompts_per_shard", spec.data.prompts_per_shard, 1, 100_000);
    if spec.data.finetune_data != "capture" {
        c.url("data.finetune_data", &spec.data.finetune_data);
    }

    // Video: the codec turns pixels into latents (Wan's VAE: time by 4 plus the first
    // frame, space by 8; space-to-depth: every frame, space by 4), and the patch then
    // divides the latent.
    let video = spec.video;
    let codec = video.latent_codec;
    match codec {
        LatentCodec::WanVae => {
            if video.frames == 0 || !(video.frames - 1).is_multiple_of(4) {
                c.fail(
                    "video.frames",
                    format!(
                        "{} frames: must be 4k + 1 (1, 5, ..., 81) for the VAE's time stride of 4",
                        video.frames
                    ),
                );
            } else if !((video.frames - 1) / 4 + 1).is_multiple_of(shape.patch[0].max(1)) {
                c.fail(
                    "video.frames",
                    format!(
                        "{} latent frames are not divisible by the temporal patch {}",
                        (video.frames - 1) / 4 + 1,
                        shape.patch[0]
                    ),
                );
            }
        }
        LatentCodec::SpaceToDepth => {
            if video.frames == 0 {
                c.fail("video.frames", "must be at least 1");
            } else if !video.frames.is_multiple_of(shape.patch[0].max(1)) {
                c.fail(
                    "video.frames",
                    format!(
                        "{} frames are not divisible by the temporal patch {} (space_to_depth keeps every frame)",
                        video.frames, shape.patch[0]
                    ),
                );
            }
        }
    }
    let stride_name = match codec {
        LatentCodec::WanVae => "VAE stride 8",
        LatentCodec::SpaceToDepth => "space_to_depth stride 4",
    };
    for (field, pixels, patch) in [
        ("video.height", video.height, shape.patch[1]),
        ("video.width", video.width, shape.patch[2]),
    ] {
        let multiple = codec.spatial_stride() * patch.max(1);
        if pixels == 0 || !pixels.is_multiple_of(multiple) {
            c.fail(
                field,
                format!("{pixels} must be a positive multiple of {multiple} ({stride_name} x patch {patch})"),
            );
        } else if pixels > 8192 {
            c.fail(field, format!("{pixels} is out of range; expected at most 8192"));
        }
    }
    if let Some(channels) = codec.channels() {
        match &spec.teacher.shape {
            Some(teacher) => {
                for (field, value) in [
                    ("teacher.shape.in_channels", teacher.in_channels),
                    ("teacher.shape.out_channels", teacher.out_channels),
                ] {
                    if value != channels {
                        c.fail(
                            field,
                            format!(
                                "{value} channels, but video.latent_codec `{}` makes {channels}-channel latents \
                                 (3 colours x 4 x 4 pixels); set it to {channels}",
                                codec.name()
                            ),
                        );
                    }
                }
            }
            None => c.fail(
                "video.latent_codec",
                format!(
                    "`{}` makes {channels}-channel latents, but the teacher preset takes {}; spell out \
                     teacher.shape with in_channels and out_channels {channels}",
                    codec.name(),
                    shape.in_channels
                ),
            ),
        }
    }

    // Sampler.
    c.range_u32("sampler.steps", spec.sampler.steps, 1, 1000);
    c.range_f64("sampler.shift", spec.sampler.shift, 0.0, true, 100.0);
    c.range_f64("sampler.guidance", spec.sampler.guidance, 1.0, false, 50.0);

    // Surgery.
    let surgery = &spec.surgery;
    let selection = &surgery.selection;
    let rules_set = [
        selection.knapsack.is_some(),
        selection.layout.is_some(),
        selection.homogeneous.is_some(),
    ];
    if rules_set.iter().filter(|set| **set).count() > 1 {
        c.fail(
            "surgery.selection",
            "set exactly one of knapsack, layout and homogeneous",
        );
    }
    let knapsack = matches!(selection.rule(), SelectionRule::Knapsack(_));
    if surgery.rates.is_empty() && knapsack {
        c.fail("surgery.rates", "needs at least one candidate rate for the knapsack");
    }
    let mut seen = HashSet::new();
    for (i, &rate) in surgery.rates.iter().enumerate() {
        let path = format!("surgery.rates[{i}]");
        if rate == Rate::Softmax {
            c.fail(
                &path,
                "rate 1 is the unchanged softmax block, always a choice; list only rates >= 2 or `linear`",
            );
        } else if !seen.insert(rate) {
            c.fail(&path, format!("rate {} is listed twice", rate));
        } else if surgery.attention == AttentionKind::Linear && rate != Rate::Linear {
            c.fail(&path, format!("rate {} is a hybrid rate but surgery.attention is `linear`; use rates: [linear] or attention: hybrid", rate));
        }
        if let Rate::Hybrid(r) = rate
            && r > 1024
        {
            c.fail(
                &path,
                format!("rate {r} is out of range; expected 2 to 1024 or `linear`"),
            );
        }
    }
    let fmap = &surgery.feature_map;
    c.range_u32("surgery.feature_map.hidden", fmap.hidden, 1, 65_536);
    c.range_u32("surgery.feature_map.features", fmap.features, 1, 65_536);
    c.range_u32("surgery.feature_map.chunks", fmap.chunks, 1, 4);
    if fmap.chunks > 0 && !fmap.features.is_multiple_of(fmap.chunks) {
        c.fail(
            "surgery.feature_map.features",
            format!(
                "{} features do not split into {} equal chunks",
                fmap.features, fmap.chunks
            ),
        );
    }
    c.range_f64("surgery.feature_map.eps", fmap.eps, 0.0, true, 1.0);

    match &selection.rule() {
        SelectionRule::Knapsack(knapsack) => {
            c.range_f64("surgery.selection.knapsack.budget", knapsack.budget, 0.0, true, 1.0);
        }
        SelectionRule::Homogeneous(super::HomogeneousSpec { rate, blocks }) => {
            let rate = *rate;
            if rate == Rate::Softmax {
                c.fail(
                    "surgery.selection.homogeneous.rate",
                    "rate 1 converts nothing; use a rate >= 2 or `linear`",
                );
            }
            if surgery.attention == AttentionKind::Linear && rate != Rate::Linear {
                c.fail(
                    "surgery.selection.homogeneous.rate",
                    "surgery.attention is `linear`, so the rate must be `linear`",
                );
            }
            if *blocks == 0 || *blocks > shape.layers {
                c.fail(
                    "surgery.selection.homogeneous.blocks",
                    format!("{blocks} is out of range; the teacher has {} blocks", shape.layers),
                );
            }
        }
        SelectionRule::Layout(entries) => {
            if entries.is_empty() {
                c.fail(
                    "surgery.selection.layout",
                    "lists no blocks; an empty layout converts nothing",
                );
            }
            let mut placed = HashSet::new();
            for (i, entry) in entries.iter().enumerate() {
                if entry.blocks.is_empty() {
                    c.fail(
                        &format!("surgery.selection.layout[{i}].blocks"),
                        "must list at least one block",
                    );
                }
                if surgery.attention == AttentionKind::Linear && !matches!(entry.rate, Rate::Linear | Rate::Softmax) {
                    c.fail(
                        &format!("surgery.selection.layout[{i}].rate"),
                        "surgery.attention is `linear`, so a block is either `linear` or 1",
                    );
                }
                for (j, block) in entry.blocks.iter().enumerate() {
                    let path = format!("surgery.selection.layout[{i}].blocks[{j}]");
                    if *block >= shape.layers {
                        c.fail(
                            &path,
                            format!(
                                "block {block} does not exist; the teacher has blocks 0 to {}",
                                shape.layers - 1
                            ),
                        );
                    } else if !placed.insert(*block) {
                        c.fail(&path, format!("block {block} is given a rate twice"));
                    }
                }
            }
        }
    }

    // Stages.
    let capture = &spec.stages.capture;
    if capture.steps.is_empty() {
        c.fail("stages.capture.steps", "must list at least one denoising step to cache");
    }
    for (i, step) in capture.steps.iter().enumerate() {
        let path = format!("stages.capture.steps[{i}]");
        if *step >= spec.sampler.steps {
            c.fail(
                &path,
                format!(
                    "step {step} is past the last denoising step ({} of sampler.steps = {})",
                    spec.sampler.steps.saturating_sub(1),
                    spec.sampler.steps
                ),
            );
        } else if i > 0 && *step <= capture.steps[i - 1] {
            c.fail(&path, "steps must be strictly increasing");
        }
    }
    let distill = &spec.stages.distill;
    c.range_u32("stages.distill.steps", distill.steps, 0, 10_000_000);
    c.range_u32("stages.distill.batch", distill.batch, 1, 4096);
    c.range_u32("stages.distill.updates_per_batch", distill.updates_per_batch, 1, 1000);
    c.range_f64("stages.distill.lr", distill.lr, 0.0, true, 1.0);
    c.range_f64("stages.distill.weight_decay", distill.weight_decay, 0.0, false, 1.0);
    c.range_f64(
        "stages.distill.heldout_fraction",
        distill.heldout_fraction,
        0.0,
        true,
        0.5,
    );
    let samples = u64::from(spec.data.train_prompts) * capture.steps.len() as u64;
    let heldout = (samples as f64 * distill.heldout_fraction).ceil() as u64;
    if samples > 0 && distill.heldout_fraction > 0.0 && heldout >= samples {
        c.fail(
            "stages.distill.heldout_fraction",
            format!("holds out {heldout} of {samples} cached samples (train_prompts x capture steps), leaving none to train on"),
        );
    }
    let finetune = &spec.stages.finetune;
    c.range_u32("stages.finetune.steps", finetune.steps, 0, 10_000_000);
    c.range_u32("stages.finetune.global_batch", finetune.global_batch, 1, 65_536);
    c.range_f64("stages.finetune.lr", finetune.lr, 0.0, true, 1.0);
    c.range_f64("stages.finetune.weight_decay", finetune.weight_decay, 0.0, false, 1.0);
    c.range_f64("stages.finetune.grad_clip", finetune.grad_clip, 0.0, false, 1e6);
    c.range_f64(
        "stages.finetune.teacher_loss_weight",
        finetune.teacher_loss_weight,
        0.0,
        false,
        1e3,
    );
    let workers = spec.resources.finetune_workers;
    if workers > 0 && !finetune.global_batch.is_multiple_of(workers) {
        c.fail(
            "stages.finetune.global_batch",
            format!(
                "{} does not divide evenly over resources.finetune_workers = {workers}",
                finetune.global_batch
            ),
        );
    }
    c.range_u32("stages.evaluate.steps", spec.stages.evaluate.steps, 1, 1000);
    c.range_u32("stages.evaluate.previews", spec.stages.evaluate.previews, 0, 64);

    // Resources, checkpoints, retries.
    c.range_u32("resources.finetune_workers", workers, 1, 1024);
    c.range_u32(
        "resources.min_gpu_memory_gib",
        spec.resources.min_gpu_memory_gib,
        0,
        4096,
    );
    c.range_u32("checkpoint.every_steps", spec.checkpoint.every_steps, 1, 10_000_000);
    c.range_u32("checkpoint.keep_last", spec.checkpoint.keep_last, 1, 1000);
    c.range_u32("retry.max_retries", spec.retry.max_retries, 0, 100);
    c.range_u32("retry.max_interruptions", spec.retry.max_interruptions, 0, 10_000);

    if c.errors.is_empty() {
        Ok(())
    } else {
        c.errors.sort_by_key(|e| (e.line == 0, e.line, e.column));
        Err(SpecError { errors: c.errors })
    }
}
