//! The quality testbed: procedurally generated videos whose ground truth is known, so a small
//! Wan-architecture teacher (and the hybrid student distilled from it) can be judged by numbers
//! a test computes. This module owns the generator and its measurements, the training of a
//! testbed teacher from scratch, sampling it, and the evaluation of a student against it; it
//! runs no stage (a job's stages read the folder `training` writes like any teacher).
//!
//! The generator and its measurements:
//! - [`scene`]: the attributes of a clip's objects, the [`Prompt`] naming them, the clip
//!   [`Geometry`] and the closed-form bouncing motion.
//! - [`prompts`]: seeded training and held-out [`PromptSet`]s; held-out prompts show (shape,
//!   colour) pairs training never does.
//! - [`render`](mod@render): prompt -> [`Video`] and prompt -> [`GroundTruth`], pure and deterministic.
//! - [`video`]: [`Video`], RGB frames `[3, F, H, W]` in `[-1, 1]` in plain Rust.
//! - [`embedding`]: the [`CodeBook`] turning a prompt into `[L, text_dim]` text embeddings.
//! - [`codec`]: the exact 4 x 4 space-to-depth "VAE", pixels `[3, F, H, W]` <-> latents
//!   `[48, F, H/4, W/4]` (a job's `video.latent_codec: space_to_depth`).
//! - [`metrics`]: ground-truth quality of a decoded clip against its prompt, and PSNR.
//! - [`description`]: [`GeneratorDescription`], the serde description of the generator a teacher
//!   folder and a job carry, checked against this build.
//! - [`regions`]: an object's pixels in a frame (small components dropped) and their statistics.
//!
//! The teacher and its evaluation (`surgery-worker testbed train | sample`, README):
//! - [`latent`]: [`LatentNorm`], the constant shift and scale that give the model unit-variance
//!   latents; undo it before decoding.
//! - [`selection`]: [`PromptSelection`], the teacher's training prompts and the job's prompts.
//! - [`settings`]: [`TrainSettings`] and the `cpu` / `gpu` presets.
//! - [`data`]: the training batches: freshly rendered clips, seeded by position.
//! - [`training`]: [`train`], the from-scratch training loop with checkpoints and resume.
//! - [`folder`]: the output folder (teacher, `testbed.json`, prompts, `train.json`).
//! - [`sampling`]: sampling prompts with the project's sampler from the job's noise seeds.
//! - [`evaluation`]: [`evaluate`], a pure function of sampled latents, prompts and the
//!   description: per-clip metrics of teacher and student, PSNR, the teacher's seed spread.
//!
//! How the pieces fit: a [`GeneratorDescription`] fixes the data; a [`PromptSet`] names the
//! clips. Training data for prompt `p` is `codec::encode_video(&render(&p, &geometry))`, a latent
//! `[48, F, H/4, W/4]`, normalised by the [`LatentNorm`], with text `CodeBook::embed(&p)`,
//! `[L, text_dim]`. Evaluation undoes the normalisation, decodes a sampled latent with
//! `codec::decode_video` and scores it with [`clip_metrics`] against `p` (and [`psnr`] against
//! the teacher's sample from the same noise); [`MetricsSummary`] averages.
//!
//! The generator is pure Rust apart from the codec and the embedding tensors, which use tch;
//! randomness is [`crate::sampler::SeededRng`] with fixed or given seeds, never LibTorch's
//! generator (except the training noise on CUDA, see [`data`]).

pub mod codec;
pub mod data;
pub mod description;
pub mod embedding;
pub mod evaluation;
pub mod folder;
pub mod latent;
pub mod metrics;
pub mod prompts;
pub mod regions;
pub mod render;
pub mod sampling;
pub mod scene;
pub mod selection;
pub mod settings;
pub mod training;
pub mod video;

pub use description::GeneratorDescription;
pub use embedding::CodeBook;
pub use evaluation::{ClipEvaluation, EvaluationReport, EvaluationSamples, SeedSpread, evaluate};
pub use folder::{TestbedDescription, TestbedFolder};
pub use latent::LatentNorm;
pub use metrics::{ClipMetrics, MetricsSummary, clip_metrics, psnr};
pub use prompts::{PromptSet, PromptSetSpec, Split};
pub use render::{GroundTruth, ObjectFrameTruth, ground_truth, render, render_background};
pub use sampling::{SampleReport, SampledLatents, SamplerSettings, sample_folder, sample_prompts, second_noise_seed};
pub use scene::{Background, Cell, Colour, Direction, Geometry, Prompt, PromptError, SceneObject, Shape, Speed};
pub use selection::{PromptSelection, SelectedPrompts};
pub use settings::{TestbedSize, TrainSettings};
pub use training::{Flow, Progress, TrainOptions, TrainRecord, train};
pub use video::Video;
