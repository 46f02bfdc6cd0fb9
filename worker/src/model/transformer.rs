//! The whole transformer (diffusers' `WanTransformer3DModel.forward`, text-to-video,
//! timestep per sample), split into the three stages other code drives separately:
//! [`WanTransformer::embed`] (patchify, RoPE, condition embeddings), one
//! [`WanTransformer::block_forward`] per block (activation checkpointing, per-block
//! distillation and capture hooks work block by block), and [`WanTransformer::head`]
//! (modulated output norm, projection, unpatchify).

use tch::nn::{self, Init, Module};
use tch::{Kind, Tensor};

use super::block::WanBlock;
use super::config::WanConfig;
use super::embeddings::ConditionEmbedder;
use super::layers::{Fp32LayerNorm, PatchConv3d, linear};
use super::rope::{Rope, RopeTables};
use crate::attention::{SelfAttention, TokenGrid};

/// What every block needs besides the hidden states, computed once per forward.
pub struct Embedded {
    /// [B, N, dim]: the patch-embedded latents, tokens in (frame, row, column) order.
    pub hidden: Tensor,
    /// [B, dim]: the timestep embedding (feeds the output head's modulation).
    pub temb: Tensor,
    /// [B, 6, dim]: the shared projection of temb (feeds every block's modulation).
    pub timestep_proj: Tensor,
    /// [B, L, dim]: the projected text.
    pub text: Tensor,
    /// Per-token cos/sin for the grid.
    pub rope: Rope,
    /// The post-patch token grid.
    pub grid: TokenGrid,
}

/// Wan2.1's diffusion transformer with diffusers' parameter names and numerics.
pub struct WanTransformer {
    config: WanConfig,
    rope_tables: RopeTables,
    patch_embedding: PatchConv3d,
    condition_embedder: ConditionEmbedder,
    blocks: Vec<WanBlock>,
    norm_out: Fp32LayerNorm,
    proj_out: nn::Linear,
    /// [1, 2, dim], fp32 in a bf16 model.
    scale_shift_table: Tensor,
}

impl WanTransformer {
    /// Builds the model's parameters under `vs` (names = diffusers' checkpoint keys),
    /// PyTorch-style random init, every block's self-attention core softmax. Load weights
    /// with [`super::weights::load`] / [`super::weights::load_into`].
    ///
    /// # Panics
    /// If `cfg` fails [`WanConfig::validate`].
    pub fn new(vs: &nn::Path, cfg: &WanConfig) -> Self {
        if let Err(e) = cfg.validate() {
            panic!("invalid Wan config: {e}");
        }
        let dim = cfg.dim();
        let blocks = (0..cfg.num_layers)
            .map(|i| {
                let block = vs / "blocks" / i;
                WanBlock::new(
                    block,
                    dim,
                    cfg.ffn_dim,
                    cfg.num_attention_heads,
                    cfg.cross_attn_norm,
                    cfg.eps,
                )
            })
            .collect();
        WanTransformer {
            config: cfg.clone(),
            rope_tables: RopeTables::new(cfg.rope_split(), cfg.rope_max_seq_len, vs.device()),
            patch_embedding: PatchConv3d::new(vs / "patch_embedding", cfg.in_channels, dim, cfg.patch_size),
            condition_embedder: ConditionEmbedder::new(vs / "condition_embedder", dim, cfg.freq_dim, cfg.text_dim),
            blocks,
            norm_out: Fp32LayerNorm::new(vs / "norm_out", dim, cfg.eps, false),
            proj_out: linear(vs / "proj_out", dim, cfg.out_channels * cfg.patch_volume()),
            // diffusers' init: randn / sqrt(dim).
            scale_shift_table: vs.var(
                "scale_shift_table",
                &[1, 2, dim],
                Init::Randn {
                    mean: 0.0,
                    stdev: 1.0 / (dim as f64).sqrt(),
                },
            ),
        }
    }

    /// The dtype the model computes in (the patch embedding's); latents and text are cast
    /// to it, as diffusers' pipeline does with `latents.to(transformer_dtype)`.
    pub fn compute_kind(&self) -> Kind {
        self.patch_embedding.kind()
    }

    /// The rotary embedding of a token grid (what `embed` computes from latents), for code
    /// that drives one block from cached inputs.
    pub fn rope(&self, grid: TokenGrid) -> Rope {
        self.rope_tables.for_grid(grid, self.rope_device())
    }

    fn rope_device(&self) -> tch::Device {
        self.scale_shift_table.device()
    }

    /// The post-patch token grid of latent frames x height x width.
    pub fn grid_of(&self, latent: (i64, i64, i64)) -> TokenGrid {
        let [pt, ph, pw] = self.config.patch_size;
        TokenGrid {
            frames: latent.0 / pt,
            height: latent.1 / ph,
            width: latent.2 / pw,
        }
    }

    pub fn config(&self) -> &WanConfig {
        &self.config
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Replaces block `block`'s self-attention core (e.g. with a hybrid one).
    pub fn set_self_attention(&mut self, block: usize, core: SelfAttention) {
        self.blocks[block].attn1.core = core;
    }

    pub fn self_attention(&self, block: usize) -> &SelfAttention {
        &self.blocks[block].attn1.core
    }

    /// latents `[B, C_in, F, H, W]`, timestep `[B]`, text `[B, L, text_dim]` -> what the blocks
    /// need. Latents and text are cast to the model's compute dtype (its weights').
    ///
    /// # Panics
    /// On shapes the model cannot take: a 2-D (per-token) timestep, a batch mismatch,
    /// latent sizes not divisible by the patch, channel counts other than the config's.
    pub fn embed(&self, latents: &Tensor, timestep: &Tensor, text: &Tensor) -> Embedded {
        let grid = self.token_grid(latents);
        let batch = latents.size()[0];
        assert!(
            timestep.dim() == 1,
            "timestep must be [B] (one per sample); the per-token [B, N] timestep of Wan2.2 TI2V is not supported, got {:?}",
            timestep.size()
        );
        assert_eq!(
            timestep.size()[0],
            batch,
            "timestep has {} entries for a batch of {batch}",
            timestep.size()[0]
        );
        let text_size = text.size();
        assert!(
            text_size.len() == 3 && text_size[0] == batch && text_size[2] == self.config.text_dim,
            "text must be [B={batch}, L, text_dim={}], got {text_size:?}",
            self.config.text_dim
        );

        let compute = self.condition_embedder.text_kind();
        let rope = self.rope_tables.for_grid(grid, latents.device());
        // [B, dim, F', H', W'] -> [B, dim, N] -> [B, N, dim]
        let hidden = self
            .patch_embedding
            .forward(&latents.to_kind(compute))
            .flatten(2, -1)
            .transpose(1, 2)
            .contiguous();
        let conditions = self.condition_embedder.forward(timestep, &text.to_kind(compute));
        Embedded {
            hidden,
            temb: conditions.temb,
            timestep_proj: conditions.timestep_proj,
            text: conditions.text,
            rope,
            grid,
        }
    }

    /// Block `i`: hidden [B, N, dim] -> [B, N, dim].
    pub fn block_forward(&self, i: usize, hidden: &Tensor, e: &Embedded) -> Tensor {
        self.blocks[i].forward(hidden, &e.timestep_proj, &e.text, &e.rope, e.grid)
    }

    /// Block `i`'s self-attention q, k, v [B, H, N, d] for hidden [B, N, dim] (after
    /// norm1 + modulation, projections, RMSNorm and RoPE): what its core receives.
    pub fn block_self_attention_inputs(
        &self,
        i: usize,
        hidden: &Tensor,
        timestep_proj: &Tensor,
        rope: &Rope,
    ) -> (Tensor, Tensor, Tensor) {
        self.blocks[i].self_attention_inputs(hidden, timestep_proj, rope)
    }

    /// The output head: hidden [B, N, dim] -> [B, C_out, F, H, W] (the flow prediction).
    ///
    ///   shift, scale = scale_shift_table + temb
    ///   out = unpatchify(proj_out(norm_out(h) (1 + scale) + shift))
    pub fn head(&self, hidden: &Tensor, e: &Embedded) -> Tensor {
        let kind = hidden.kind();
        // [1, 2, dim] + [B, 1, dim] -> 2 x [B, 1, dim]; fp32 when the table is (bf16 model).
        let modulation = (&self.scale_shift_table + e.temb.unsqueeze(1)).chunk(2, 1);
        let (shift, scale) = (&modulation[0], &modulation[1]);
        let normed = self.norm_out.forward(&hidden.to_kind(Kind::Float));
        let normed = (normed * (scale + 1.0) + shift).to_kind(kind);
        let patches = self.proj_out.forward(&normed);

        let [p_t, p_h, p_w] = self.config.patch_size;
        let TokenGrid { frames, height, width } = e.grid;
        let batch = hidden.size()[0];
        // [B, N, p_t p_h p_w C] -> [B, F', H', W', p_t, p_h, p_w, C]
        let patches = patches.reshape([batch, frames, height, width, p_t, p_h, p_w, -1]);
        // -> [B, C, F', p_t, H', p_h, W', p_w] -> [B, C, F' p_t, H' p_h, W' p_w]
        patches
            .permute([0, 7, 1, 4, 2, 5, 3, 6])
            .flatten(6, 7)
            .flatten(4, 5)
            .flatten(2, 3)
    }

    /// latents `[B, C_in, F, H, W]`, timestep `[B]`, text `[B, L, text_dim]` ->
    /// [B, C_out, F, H, W]: embed, every block, head.
    pub fn forward(&self, latents: &Tensor, timestep: &Tensor, text: &Tensor) -> Tensor {
        let e = self.embed(latents, timestep, text);
        let hidden = (0..self.blocks.len()).fold(e.hidden.shallow_clone(), |h, i| self.block_forward(i, &h, &e));
        self.head(&hidden, &e)
    }

    /// The post-patch grid of latents [B, C_in, F, H, W].
    ///
    /// # Panics
    /// If the latents are not 5-D with C_in channels and patch-divisible F, H, W.
    pub fn token_grid(&self, latents: &Tensor) -> TokenGrid {
        let size = latents.size();
        assert!(
            size.len() == 5 && size[1] == self.config.in_channels,
            "latents must be [B, C={}, F, H, W], got {size:?}",
            self.config.in_channels
        );
        let [p_t, p_h, p_w] = self.config.patch_size;
        assert!(
            size[2] % p_t == 0 && size[3] % p_h == 0 && size[4] % p_w == 0,
            "latent (F, H, W) = {:?} is not divisible by the patch {:?}",
            &size[2..],
            self.config.patch_size
        );
        TokenGrid {
            frames: size[2] / p_t,
            height: size[3] / p_h,
            width: size[4] / p_w,
        }
    }
}
