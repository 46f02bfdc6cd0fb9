//! The Wan2.1 diffusion transformer, a port of diffusers' `WanTransformer3DModel`
//! (diffusers 0.42.1, text-to-video) that matches it to fp32 rounding and mirrors its
//! bf16 casts. [`config`] parses and validates diffusers' `config.json`; [`weights`]
//! loads and saves diffusers-format folders (single or sharded safetensors) into a
//! `tch::nn::VarStore` whose variable names are the checkpoint keys, keeping diffusers'
//! fp32 modules fp32 in a bf16 model; [`transformer`] holds the model and its staged API
//! (`embed`, `block_forward`, `head`), built from [`embeddings`] (timestep and text
//! conditioning), [`rope`] (3-D rotary embedding), [`block`] (one transformer block with
//! its modulation), [`wan_attention`] (the self- and cross-attention layers around the
//! swappable [`crate::attention::SelfAttention`] core) and [`layers`] (norms, linear, the
//! patch Conv3d); [`fused`] runs their element-wise work as single CUDA kernels for
//! inference. Parity with diffusers is tested against committed goldens in
//! `worker/tests/parity.rs` (generator: `scripts/golden/make_golden.py`). This module owns
//! the teacher's numerics; attention cores live in [`crate::attention`], training in
//! [`crate::train`].

pub mod block;
pub mod config;
pub mod denoise;
pub mod embeddings;
pub mod fused;
pub mod layers;
pub mod rope;
pub mod transformer;
pub mod wan_attention;
pub mod weights;

pub use config::{ConfigError, WanConfig};
pub use rope::Rope;
pub use transformer::{Embedded, WanTransformer};
pub use weights::{WeightsError, load, load_into, save};
