//! Seeded randomness that does not touch LibTorch's global generator.
//!
//! tch 0.24 exposes no `torch.Generator`: `Tensor::randn` draws from LibTorch's process-wide
//! generator and `tch::manual_seed` resets it for everyone, so two tasks (or two threads) sharing
//! a process would disturb each other's streams. Everything random that must be reproducible
//! (the initial noise of a sampled prompt, the training noise, the training sigmas) comes from
//! [`SeededRng`] instead: a SplitMix64 counter stream in plain Rust, drawn on the CPU and then
//! moved to the device. The numbers depend only on the seed and the order of draws, not on the
//! device, the thread count or the LibTorch version.
//!
//! The values are *not* those of `torch.randn(generator=torch.Generator().manual_seed(s))`;
//! to compare a trajectory with the diffusers pipeline, hand the same noise tensor to both.
//!
//! Per prompt: `seeded_noise(prompt_seed(job_seed, prompt_index), shape, device)`, so a prompt's
//! noise does not depend on which shard or worker sampled it, or in what order.

use tch::{Device, Tensor};

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function (Steele, Lea, Flood 2014): a bijective 64-bit mixer.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of one prompt of a job: a mix of the job seed and the prompt's index, so every
/// prompt has its own stream, whatever shard or order it is sampled in.
pub fn prompt_seed(job_seed: u64, prompt_index: u64) -> u64 {
    mix64(job_seed ^ mix64(prompt_index.wrapping_add(GOLDEN_GAMMA)))
}

/// A small seeded generator (SplitMix64). Its whole state is one `u64` ([`SeededRng::state`]),
/// so a training checkpoint can store it and a resumed run draws the same numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeededRng {
    state: u64,
}

impl SeededRng {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// Restores a generator from [`SeededRng::state`].
    pub fn from_state(state: u64) -> Self {
        Self { state }
    }

    /// The whole state: save it to resume the stream exactly.
    pub fn state(&self) -> u64 {
        self.state
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        mix64(self.state)
    }

    /// Uniform in the open interval (0, 1), 53 bits: never exactly 0 or 1.
    pub fn uniform_open(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal pairs by Box-Muller in f64.
    fn normal_pair(&mut self) -> (f64, f64) {
        let u1 = self.uniform_open();
        let u2 = self.uniform_open();
        let radius = (-2.0 * u1.ln()).sqrt();
        let angle = std::f64::consts::TAU * u2;
        (radius * angle.cos(), radius * angle.sin())
    }

    /// `n` standard normal values as f32 (each drawn in f64, then rounded).
    pub fn normal_f32(&mut self, n: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let (a, b) = self.normal_pair();
            out.push(a as f32);
            out.push(b as f32);
        }
        out.truncate(n);
        out
    }

    /// A float32 standard-normal tensor of `shape`, drawn on the CPU, moved to `device`.
    pub fn normal_tensor(&mut self, shape: &[i64], device: Device) -> Tensor {
        let numel: i64 = shape.iter().product();
        let values = self.normal_f32(usize::try_from(numel).expect("non-negative shape"));
        Tensor::from_slice(&values).view(shape).to_device(device)
    }
}

/// The initial noise of one sample: float32 standard normal of `shape` (for Wan, `[1, 16, F, H, W]`)
/// from its own seed, drawn on the CPU and moved to `device`. Same seed, same tensor, bit for bit.
pub fn seeded_noise(seed: u64, shape: &[i64], device: Device) -> Tensor {
    SeededRng::new(seed).normal_tensor(shape, device)
}
