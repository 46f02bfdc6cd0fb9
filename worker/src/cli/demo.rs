//! `surgery-worker init-demo`: the inputs of configs/tiny.yaml - a tiny random-weight
//! Wan-style teacher in diffusers format and random prompt embeddings - so the whole
//! recipe runs on a laptop CPU without downloading anything.

use crate::model::{WanConfig, WanTransformer, weights};
use anyhow::{Context, Result};
use std::path::Path;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// The teacher shape of configs/tiny.yaml.
pub fn tiny_config() -> WanConfig {
    let mut cfg = WanConfig::wan21_t2v_1_3b();
    cfg.num_layers = 2;
    cfg.num_attention_heads = 2;
    cfg.attention_head_dim = 16;
    cfg.ffn_dim = 64;
    cfg.text_dim = 32;
    cfg.in_channels = 4;
    cfg.out_channels = 4;
    cfg.freq_dim = 32;
    cfg
}

pub fn run(dir: &Path, prompts: i64, seed: i64) -> Result<()> {
    tch::manual_seed(seed);
    let model_dir = dir.join("models/tiny-teacher");
    let vs = VarStore::new(Device::Cpu);
    let cfg = tiny_config();
    let _model = WanTransformer::new(&vs.root(), &cfg);
    weights::save(&vs, &cfg, &model_dir).with_context(|| format!("writing {}", model_dir.display()))?;
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir)?;
    let embeds = Tensor::randn([prompts, 8, cfg.text_dim], (Kind::Float, Device::Cpu));
    let negative = Tensor::randn([1, 8, cfg.text_dim], (Kind::Float, Device::Cpu));
    let path = data_dir.join("prompts.safetensors");
    weights::write_safetensors(
        &path,
        [("prompt_embeds", &embeds), ("negative_embeds", &negative)],
        None,
    )?;
    println!("wrote {} and {}", model_dir.display(), path.display());
    Ok(())
}
