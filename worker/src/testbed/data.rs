//! The testbed teacher's training data: freshly rendered clips of seeded random training
//! prompts, encoded with the codec and normalised ([`LatentNorm`]), with their prompt
//! embeddings, noise levels and (on the CPU) noise.
//!
//! Everything of sample `j` of step `s` is a function of the seed and its position
//! `p = s * batch + j` only, as in the fine-tune stage: the prompt (uniform over the teacher's
//! training prompts), whether its text is dropped to the zero embedding (probability
//! `uncond_fraction`), its sigma `shift(u)` and its noise each come from their own
//! [`SeededRng`] stream. A batch is therefore the same whichever call, thread count or resume
//! produces it. Rendering runs on `threads` threads of a producer that stays up to two batches
//! ahead of training ([`Prefetcher`]).
//!
//! Noise: on the CPU from [`SeededRng`] (exact on every machine: what makes a CPU run
//! reproducible bit for bit); on CUDA drawing 50M normals a step in Rust would stall the GPU,
//! so the trainer draws it with LibTorch's generator on the device, seeded per step
//! ([`NoiseSource`]).

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::codec::{self, latent_shape};
use super::embedding::CodeBook;
use super::latent::LatentNorm;
use super::render::render;
use super::scene::{Geometry, Prompt};
use super::settings::TrainSettings;
use crate::sampler::{SeededRng, prompt_seed};
use crate::train::shift_sigma;

/// Stream purposes, mixed into the seed.
const PURPOSE_SAMPLE: u64 = 0x7E57_0001;
const PURPOSE_NOISE: u64 = 0x7E57_0002;
/// Seeds the device generator per step on CUDA.
pub const PURPOSE_DEVICE_NOISE: u64 = 0x7E57_0003;

/// The seed of one stream: a purpose and a position under the run's seed.
pub fn stream_seed(seed: u64, purpose: u64, position: u64) -> u64 {
    prompt_seed(prompt_seed(seed, purpose), position)
}

/// Where the training noise comes from (module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoiseSource {
    /// [`SeededRng`] per sample, on the CPU: reproducible everywhere.
    Seeded,
    /// LibTorch's generator on the device, seeded per step.
    Device,
}

/// One optimiser step's data, float32 on the CPU.
#[derive(Debug)]
pub struct Batch {
    pub step: u64,
    /// `[B, 48, F, h, w]`, normalised.
    pub latents: Tensor,
    /// `[B, L, text_dim]`; zero rows where the text was dropped.
    pub text: Tensor,
    /// `[B]`.
    pub sigmas: Tensor,
    /// `[B, 48, F, h, w]` for [`NoiseSource::Seeded`].
    pub noise: Option<Tensor>,
    /// Index of each sample's prompt in the training prompts.
    pub prompts: Vec<usize>,
}

/// Makes the batches of a run (module doc).
#[derive(Debug)]
pub struct TrainingData {
    prompts: Vec<Prompt>,
    geometry: Geometry,
    code_book: CodeBook,
    norm: LatentNorm,
    seed: u64,
    batch: usize,
    sigma_shift: f64,
    uncond_fraction: f64,
    noise: NoiseSource,
}

/// Uniform in `0..n` (`n > 0`).
fn below(rng: &mut SeededRng, n: usize) -> usize {
    ((u128::from(rng.next_u64()) * n as u128) >> 64) as usize
}

impl TrainingData {
    pub fn new(
        settings: &TrainSettings,
        prompts: Vec<Prompt>,
        norm: LatentNorm,
        noise: NoiseSource,
    ) -> Result<TrainingData> {
        anyhow::ensure!(!prompts.is_empty(), "no training prompts");
        Ok(TrainingData {
            prompts,
            geometry: settings.geometry.clone(),
            code_book: CodeBook::new(settings.text_len, settings.text_dim)?,
            norm,
            seed: settings.seed,
            batch: settings.batch,
            sigma_shift: settings.sigma_shift,
            uncond_fraction: settings.uncond_fraction,
            noise,
        })
    }

    /// One clip's latent shape `[48, F, h, w]`.
    pub fn latent_shape(&self) -> [i64; 4] {
        latent_shape(self.geometry.frames, self.geometry.height, self.geometry.width)
    }

    /// The batch of `step`, rendering on `threads` threads (the result does not depend on it).
    pub fn batch(&self, step: u64, threads: usize) -> Batch {
        let positions: Vec<u64> = (0..self.batch as u64).map(|j| step * self.batch as u64 + j).collect();
        let mut prompts = Vec::with_capacity(self.batch);
        let mut dropped = Vec::with_capacity(self.batch);
        let mut sigmas = Vec::with_capacity(self.batch);
        for &position in &positions {
            let mut rng = SeededRng::new(stream_seed(self.seed, PURPOSE_SAMPLE, position));
            prompts.push(below(&mut rng, self.prompts.len()));
            dropped.push(rng.uniform_open() < self.uncond_fraction);
            sigmas.push(shift_sigma(rng.uniform_open(), self.sigma_shift) as f32);
        }

        let clip_len = 3 * self.geometry.frames * self.geometry.height * self.geometry.width;
        let mut pixels = vec![0.0f32; self.batch * clip_len];
        let threads = threads.clamp(1, self.batch);
        let per_thread = self.batch.div_ceil(threads);
        std::thread::scope(|scope| {
            for (chunk, indices) in pixels.chunks_mut(per_thread * clip_len).zip(prompts.chunks(per_thread)) {
                scope.spawn(move || {
                    for (out, &index) in chunk.chunks_mut(clip_len).zip(indices) {
                        out.copy_from_slice(render(&self.prompts[index], &self.geometry).values());
                    }
                });
            }
        });
        let [c, f, h, w] = self.latent_shape();
        let b = self.batch as i64;
        let pixels =
            Tensor::from_slice(&pixels).view([b, 3, f, self.geometry.height as i64, self.geometry.width as i64]);
        let latents = self
            .norm
            .normalise(&codec::encode(&pixels).expect("rendered clips have the codec's shape"));

        let text_len = self.code_book.text_len() * self.code_book.text_dim();
        let mut text = Vec::with_capacity(self.batch * text_len);
        for (&index, &drop) in prompts.iter().zip(&dropped) {
            if drop {
                text.resize(text.len() + text_len, 0.0);
            } else {
                text.extend(self.code_book.embed_values(&self.prompts[index]));
            }
        }
        let text =
            Tensor::from_slice(&text).view([b, self.code_book.text_len() as i64, self.code_book.text_dim() as i64]);

        let noise = (self.noise == NoiseSource::Seeded).then(|| {
            let numel = (c * f * h * w) as usize;
            let mut values = Vec::with_capacity(self.batch * numel);
            for &position in &positions {
                values.extend(SeededRng::new(stream_seed(self.seed, PURPOSE_NOISE, position)).normal_f32(numel));
            }
            Tensor::from_slice(&values).view([b, c, f, h, w])
        });
        Batch {
            step,
            latents: latents.to_kind(Kind::Float),
            text,
            sigmas: Tensor::from_slice(&sigmas),
            noise,
            prompts,
        }
    }
}

/// A producer thread that makes the batches of steps `first..last` in order, up to two ahead.
pub struct Prefetcher {
    receiver: Option<Receiver<Batch>>,
    thread: Option<JoinHandle<()>>,
}

impl Prefetcher {
    pub fn new(data: Arc<TrainingData>, first: u64, last: u64, threads: usize) -> Prefetcher {
        let (sender, receiver) = sync_channel(2);
        let thread = std::thread::Builder::new()
            .name("testbed-data".into())
            .spawn(move || {
                for step in first..last {
                    if sender.send(data.batch(step, threads)).is_err() {
                        return;
                    }
                }
            })
            .expect("spawn the data thread");
        Prefetcher {
            receiver: Some(receiver),
            thread: Some(thread),
        }
    }

    /// The next batch; `None` after the last step.
    pub fn next_batch(&self) -> Option<Batch> {
        self.receiver.as_ref()?.recv().ok()
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        // Dropping the receiver makes the producer's next send fail, so it stops.
        drop(self.receiver.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testbed::settings::TestbedSize;

    fn data(noise: NoiseSource) -> TrainingData {
        let settings = TrainSettings {
            batch: 5,
            uncond_fraction: 0.4,
            ..TrainSettings::preset(TestbedSize::Cpu)
        };
        let prompts = crate::testbed::PromptSet::generate(&crate::testbed::PromptSetSpec::new(1, 30, 1))
            .unwrap()
            .train;
        TrainingData::new(
            &settings,
            prompts,
            LatentNorm {
                shift: -0.5,
                scale: 0.4,
            },
            noise,
        )
        .unwrap()
    }

    #[test]
    fn batches_depend_on_the_step_only() {
        let data = data(NoiseSource::Seeded);
        let a = data.batch(3, 1);
        let b = data.batch(3, 4);
        assert!(a.latents.equal(&b.latents) && a.text.equal(&b.text) && a.sigmas.equal(&b.sigmas));
        assert!(a.noise.as_ref().unwrap().equal(b.noise.as_ref().unwrap()));
        assert_eq!(a.latents.size(), vec![5, 48, 8, 8, 8]);
        assert_eq!(a.text.size(), vec![5, 24, 32]);
        let c = data.batch(4, 2);
        assert!(!a.latents.equal(&c.latents));
        // The latents are the rendered clips, normalised.
        let clip = render(&data.prompts[a.prompts[2]], &data.geometry);
        let expected = data.norm.normalise(&codec::encode_video(&clip).unwrap());
        assert!(a.latents.get(2).allclose(&expected, 1e-6, 1e-6, false));
        // Sigmas are shifted uniforms; some texts are dropped to zeros over a few batches.
        let sigmas = Vec::<f32>::try_from(&a.sigmas).unwrap();
        assert!(sigmas.iter().all(|s| (0.0..=1.0).contains(s)));
        let dropped: usize = (0..10)
            .map(|s| {
                let batch = data.batch(s, 1);
                let norms = batch.text.abs().sum_dim_intlist(&[1i64, 2][..], false, Kind::Float);
                Vec::<f32>::try_from(&norms)
                    .unwrap()
                    .iter()
                    .filter(|n| **n == 0.0)
                    .count()
            })
            .sum();
        assert!((5..35).contains(&dropped), "{dropped} of 50 dropped");
        assert!(self::data(NoiseSource::Device).batch(0, 1).noise.is_none());
    }

    #[test]
    fn the_prefetcher_yields_every_step_in_order() {
        let data = Arc::new(data(NoiseSource::Seeded));
        let prefetcher = Prefetcher::new(Arc::clone(&data), 2, 5, 2);
        let steps: Vec<u64> = std::iter::from_fn(|| prefetcher.next_batch()).map(|b| b.step).collect();
        assert_eq!(steps, vec![2, 3, 4]);
        // Dropped early, it stops its producer.
        drop(Prefetcher::new(data, 0, 1000, 1));
    }
}
