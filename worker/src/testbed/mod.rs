//! The quality testbed: procedurally generated videos whose ground truth is known, so a small
//! Wan-architecture teacher (and the hybrid student distilled from it) can be judged by numbers
//! a test computes. This module owns the generator and its measurements; it trains nothing and
//! runs no stage.
//!
//! - [`scene`]: the attributes of a clip's objects, the [`Prompt`] naming them, the clip
//!   [`Geometry`] and the closed-form bouncing motion.
//! - [`prompts`]: seeded training and held-out [`PromptSet`]s; held-out prompts show (shape,
//!   colour) pairs training never does.
//! - [`render`](mod@render): prompt -> [`Video`] and prompt -> [`GroundTruth`], pure and deterministic.
//! - [`video`]: [`Video`], RGB frames `[3, F, H, W]` in `[-1, 1]` in plain Rust.
//! - [`embedding`]: the [`CodeBook`] turning a prompt into `[L, text_dim]` text embeddings.
//! - [`codec`]: the exact 4 x 4 space-to-depth "VAE", pixels `[3, F, H, W]` <-> latents
//!   `[48, F, H/4, W/4]`.
//! - [`metrics`]: ground-truth quality of a decoded clip against its prompt, and PSNR.
//! - [`description`]: [`GeneratorDescription`], the serde description of the generator a teacher
//!   folder and a job carry, checked against this build.
//! - [`regions`]: an object's pixels in a frame (small components dropped) and their statistics.
//!
//! How the pieces fit: a [`GeneratorDescription`] fixes the data; a [`PromptSet`] names the
//! clips. Training data for prompt `p` is `codec::encode_video(&render(&p, &geometry))`, a latent
//! `[48, F, H/4, W/4]`, with text `CodeBook::embed(&p)`, `[L, text_dim]`. Evaluation decodes a
//! sampled latent with `codec::decode_video` and scores it with [`clip_metrics`] against `p`
//! (and [`psnr`] against the teacher's sample from the same noise); [`MetricsSummary`] averages.
//!
//! Everything here is pure Rust apart from the codec and the embedding tensors, which use tch;
//! randomness is [`crate::sampler::SeededRng`] with fixed or given seeds, never LibTorch's generator.

pub mod codec;
pub mod description;
pub mod embedding;
pub mod metrics;
pub mod prompts;
pub mod regions;
pub mod render;
pub mod scene;
pub mod video;

pub use description::GeneratorDescription;
pub use embedding::CodeBook;
pub use metrics::{ClipMetrics, MetricsSummary, clip_metrics, psnr};
pub use prompts::{PromptSet, PromptSetSpec, Split};
pub use render::{GroundTruth, ObjectFrameTruth, ground_truth, render, render_background};
pub use scene::{Background, Cell, Colour, Direction, Geometry, Prompt, PromptError, SceneObject, Shape, Speed};
pub use video::Video;
