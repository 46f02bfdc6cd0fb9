//! The Wan2.1 video VAE's decoder, a port of the decoder half of diffusers'
//! `AutoencoderKLWan` (diffusers 0.42.1) that matches it to fp32 rounding: the
//! transformer's normalised latents [B, 16, T, h, w] to video [B, 3, 1 + 4 (T - 1), 8h, 8w]
//! in [-1, 1], with WanPipeline's un-normalisation (`latents / (1 / std) + mean`) in front
//! and its clamp behind. [`config`] parses and validates the VAE's `config.json` (Wan2.2's
//! options are refused); [`weights`] reads the decoder's tensors of a diffusers folder
//! (single or sharded, fp32 or bf16, encoder tensors ignored) through the transformer's
//! loader; [`layers`] holds the causal 3-D convolution with its per-chunk feature cache,
//! the RMS norm, the residual, attention and up-sampling blocks; [`decoder`] the decoder
//! and diffusers' frame-by-frame decode loop; [`tiling`] the optional spatial tiling;
//! [`autoencoder`] the [`WanVaeDecoder`] API; [`video`] the conversion to 8-bit frames.
//!
//! Memory: the decode runs one latent frame at a time (the first gives 1 frame, each
//! later one 4), carrying the two frames each causal convolution needs from one chunk to
//! the next, so activations do not grow with the video's length; the decoded video is
//! written into one preallocated tensor. With [`DecodeOptions::tiling`] the activations
//! are further bounded by the tile's area instead of the frame's (see [`tiling`] for what
//! stays proportional to the video).
//!
//! Parity with diffusers is tested against committed goldens in `worker/tests/vae.rs`
//! (generator: `scripts/golden/make_vae_golden.py`). This module owns the decoder's
//! numerics only; the encoder is not ported, and writing video files is the caller's.

pub mod autoencoder;
pub mod config;
pub mod decoder;
pub mod layers;
pub mod tiling;
pub mod video;
pub mod weights;

pub use autoencoder::{DecodeOptions, WanVaeDecoder};
pub use config::{VaeConfig, VaeConfigError};
pub use tiling::Tiling;
pub use video::to_u8_frames;
pub use weights::VaeError;
