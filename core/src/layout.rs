//! The object-store layout of a job (DESIGN.md). A job's objects live under
//! [`job_root`] (`jobs/{job}`, relative to the store's root); a worker is handed that
//! folder as its storage root, so every other path here is relative to it. One place
//! names every object the stages write, so writers, readers, tests and tools cannot drift
//! apart: nothing else spells these paths.
//!
//! ```text
//! spec.yaml
//! encode/shard-{s}.safetensors              encode: prompt (and negative) embeddings
//! cache/block-{b}/shard-{s}.safetensors     capture: block b's inputs for shard s
//! latents/shard-{s}.safetensors             capture: the teacher's final latents
//! distill/block-{b}/rate-{r}/               distill: checkpoints (step-{n}/, latest.json),
//!     phi.safetensors, result.json, loss_curve.json
//! finetune/                                 finetune: checkpoints,
//!     final/ (the student folder), loss_curve.json
//! export/                                   export: the student folder, report.json
//! evaluate/report.json                      evaluate
//! evaluate/previews/prompt-{p}.{mp4,gif}     evaluate: teacher | student videos
//! ```

use crate::rate::Rate;

/// `jobs/{job}`, relative to the store's root: the root every other path is relative to.
pub fn job_root(job: &str) -> String {
    format!("jobs/{job}")
}

/// The spec as submitted.
pub const SPEC: &str = "spec.yaml";

/// `encode/shard-{s}.safetensors`: `prompt_embeds` [n, text_len, text_dim] (and
/// `negative_embeds` alike) of encode shard s's prompts, as diffusers' WanPipeline builds them.
pub fn encode_shard(shard: u32) -> String {
    format!("encode/shard-{shard:04}.safetensors")
}

/// `cache/block-{b}/shard-{s}.safetensors`
pub fn cache_shard(block: u32, shard: u32) -> String {
    format!("cache/block-{block:02}/shard-{shard:04}.safetensors")
}

/// `latents/shard-{s}.safetensors`: the teacher's final latents, the default fine-tuning
/// data.
pub fn latents_shard(shard: u32) -> String {
    format!("latents/shard-{shard:04}.safetensors")
}

/// `distill/block-{b}/rate-{r}`: the task's checkpoints and outputs.
pub fn distill_dir(block: u32, rate: Rate) -> String {
    format!("distill/block-{block:02}/rate-{}", rate.word())
}

/// The distilled feature maps, named as the student names them.
pub fn distill_phi(block: u32, rate: Rate) -> String {
    format!("{}/phi.safetensors", distill_dir(block, rate))
}

/// The distill task's result: its metrics and loss curve.
pub fn distill_result(block: u32, rate: Rate) -> String {
    format!("{}/result.json", distill_dir(block, rate))
}

/// `finetune`: the fine-tuning checkpoints.
pub const FINETUNE_DIR: &str = "finetune";

/// `finetune/final`: the fine-tuned student folder export starts from.
pub const FINETUNE_FINAL: &str = "finetune/final";

/// The fine-tuning loss curve, one value per step.
pub const FINETUNE_LOSS_CURVE: &str = "finetune/loss_curve.json";

/// `export`: the student folder a user takes home.
pub const EXPORT_DIR: &str = "export";

/// The export report: rates, FLOPs, distillation errors, the probe.
pub const EXPORT_REPORT: &str = "export/report.json";

/// The evaluation report: teacher agreement on held-out prompts.
pub const EVALUATE_REPORT: &str = "evaluate/report.json";

/// `evaluate/previews`: the evaluate stage's videos.
pub const EVALUATE_PREVIEWS: &str = "evaluate/previews";

/// `evaluate/previews/prompt-{p}.{ext}`: held-out prompt p, teacher and student side by
/// side, as `mp4` or `gif`.
pub fn evaluate_preview(prompt: u32, ext: &str) -> String {
    format!("{EVALUATE_PREVIEWS}/prompt-{prompt:04}.{ext}")
}

/// `{dir}/step-{n}`, zero-padded so listing order is step order.
pub fn checkpoint_dir(dir: &str, step: u64) -> String {
    format!("{dir}/step-{step:010}")
}

/// `{dir}/latest.json`: written last, it makes a checkpoint visible.
pub fn latest_manifest(dir: &str) -> String {
    format!("{dir}/latest.json")
}

/// `{dir}/{file}` for a file of a folder above (a downloaded student's files).
pub fn in_dir(dir: &str, file: &str) -> String {
    format!("{dir}/{file}")
}

/// The task (by its name, [`crate::ids`]) whose output `path` is: `encode/shard-{s}...`
/// is encode shard s's, `cache/block-{b}/shard-{s}...` and `latents/shard-{s}...` capture
/// shard s's, `distill/block-{b}/rate-{r}/...` that distill task's; `None` for every
/// other path. A forked job reads a reused task's outputs where its parent wrote them,
/// and this says which reads those are.
pub fn producer(path: &str) -> Option<String> {
    let shard_of = |file: &str| -> Option<u32> {
        let digits = file.strip_prefix("shard-")?.split('.').next()?;
        digits.parse().ok()
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["encode", file] => shard_of(file).map(crate::ids::encode_task),
        ["cache", block, file] if block.starts_with("block-") => shard_of(file).map(crate::ids::capture_task),
        ["latents", file] => shard_of(file).map(crate::ids::capture_task),
        ["distill", block, rate, ..] if block.starts_with("block-") && rate.starts_with("rate-") => {
            Some(format!("distill/{block}/{rate}"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids;

    #[test]
    fn every_stage_output_names_the_task_that_wrote_it() {
        assert_eq!(producer(&encode_shard(3)), Some(ids::encode_task(3)));
        assert_eq!(producer(&cache_shard(7, 12)), Some(ids::capture_task(12)));
        assert_eq!(producer(&latents_shard(12)), Some(ids::capture_task(12)));
        for rate in [Rate::Hybrid(4), Rate::Linear] {
            let task = Some(ids::distill_task(5, rate));
            assert_eq!(producer(&distill_phi(5, rate)), task);
            assert_eq!(producer(&distill_result(5, rate)), task);
            assert_eq!(producer(&checkpoint_dir(&distill_dir(5, rate), 40)), task);
            assert_eq!(producer(&distill_dir(5, rate)), task);
        }
        for path in [
            SPEC,
            FINETUNE_FINAL,
            FINETUNE_LOSS_CURVE,
            EXPORT_REPORT,
            EVALUATE_REPORT,
            &evaluate_preview(1, "gif"),
            "cache/readme.txt",
            "encode",
        ] {
            assert_eq!(producer(path), None, "{path}");
        }
    }

    #[test]
    fn paths_follow_the_design() {
        assert_eq!(job_root("j1"), "jobs/j1");
        assert_eq!(encode_shard(5), "encode/shard-0005.safetensors");
        assert_eq!(cache_shard(3, 12), "cache/block-03/shard-0012.safetensors");
        assert_eq!(latents_shard(2), "latents/shard-0002.safetensors");
        let dir = distill_dir(3, Rate::Hybrid(4));
        assert_eq!(dir, "distill/block-03/rate-4");
        assert_eq!(
            distill_phi(3, Rate::Linear),
            "distill/block-03/rate-linear/phi.safetensors"
        );
        assert_eq!(
            distill_result(3, Rate::Hybrid(4)),
            "distill/block-03/rate-4/result.json"
        );
        assert_eq!(checkpoint_dir(&dir, 200), "distill/block-03/rate-4/step-0000000200");
        assert_eq!(latest_manifest(FINETUNE_DIR), "finetune/latest.json");
        assert!(FINETUNE_FINAL.starts_with(FINETUNE_DIR));
        assert!(FINETUNE_LOSS_CURVE.starts_with(FINETUNE_DIR));
        assert!(EXPORT_REPORT.starts_with(EXPORT_DIR));
        assert_eq!(evaluate_preview(17, "mp4"), "evaluate/previews/prompt-0017.mp4");
    }
}
