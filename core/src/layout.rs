//! The object-store layout of a job (DESIGN.md), relative to the store's root. One place
//! names every path, so writers and readers cannot drift apart.

use crate::cost::Rate;
use crate::ids::rate_word;

/// `jobs/{job}`
pub fn job_root(job: &str) -> String {
    format!("jobs/{job}")
}

/// `jobs/{job}/spec.yaml`
pub fn spec(job: &str) -> String {
    format!("{}/spec.yaml", job_root(job))
}

/// `jobs/{job}/cache/block-{b}/shard-{s}.safetensors`
pub fn cache_shard(job: &str, block: u32, shard: u32) -> String {
    format!("{}/cache/block-{block:02}/shard-{shard:04}.safetensors", job_root(job))
}

/// `jobs/{job}/latents/shard-{s}.safetensors`: the teacher's final latents, the default
/// fine-tuning data.
pub fn latents_shard(job: &str, shard: u32) -> String {
    format!("{}/latents/shard-{shard:04}.safetensors", job_root(job))
}

/// `jobs/{job}/distill/block-{b}/rate-{r}`: checkpoints live under `step-{n}/`, with
/// `latest.json` beside them.
pub fn distill_dir(job: &str, block: u32, rate: Rate) -> String {
    format!("{}/distill/block-{block:02}/rate-{}", job_root(job), rate_word(rate))
}

/// `jobs/{job}/finetune`
pub fn finetune_dir(job: &str) -> String {
    format!("{}/finetune", job_root(job))
}

/// `{dir}/step-{n}`, zero-padded so listing order is step order.
pub fn checkpoint_dir(dir: &str, step: u64) -> String {
    format!("{dir}/step-{step:010}")
}

/// `{dir}/latest.json`: written last, it makes a checkpoint visible.
pub fn latest_manifest(dir: &str) -> String {
    format!("{dir}/latest.json")
}

/// `jobs/{job}/export`
pub fn export_dir(job: &str) -> String {
    format!("{}/export", job_root(job))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_design() {
        assert_eq!(spec("j1"), "jobs/j1/spec.yaml");
        assert_eq!(
            cache_shard("j1", 3, 12),
            "jobs/j1/cache/block-03/shard-0012.safetensors"
        );
        let dir = distill_dir("j1", 3, Rate::Hybrid(4));
        assert_eq!(dir, "jobs/j1/distill/block-03/rate-4");
        assert_eq!(
            checkpoint_dir(&dir, 200),
            "jobs/j1/distill/block-03/rate-4/step-0000000200"
        );
        assert_eq!(latest_manifest(&finetune_dir("j1")), "jobs/j1/finetune/latest.json");
        assert_eq!(export_dir("j1"), "jobs/j1/export");
    }
}
