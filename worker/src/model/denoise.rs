//! The transformer as the sampler's [`Denoiser`]: one forward per step, block by block so
//! the capture hook sees each block's input (stage 1's cache).

use super::WanTransformer;
use crate::sampler::{Capture, Denoiser};
use tch::Tensor;

impl Denoiser for WanTransformer {
    fn velocity(&self, latents: &Tensor, timestep: &Tensor, text: &Tensor, capture: &mut dyn Capture) -> Tensor {
        let kind = self.compute_kind();
        let latents = latents.to_kind(kind);
        let text = text.to_kind(kind);
        let embedded = self.embed(&latents, timestep, &text);
        let mut hidden = embedded.hidden.shallow_clone();
        for block in 0..self.num_blocks() {
            if capture.active() {
                capture.block_input(block, &hidden, &embedded.timestep_proj);
            }
            hidden = self.block_forward(block, &hidden, &embedded);
        }
        self.head(&hidden, &embedded)
    }
}

#[cfg(test)]
mod tests {
    use crate::model::weights;
    use crate::sampler::{Capture, Denoiser, NoCapture};
    use std::path::Path;
    use tch::{Device, Kind, Tensor};

    struct Record(Vec<(usize, Vec<i64>, Vec<i64>)>);

    impl Capture for Record {
        fn active(&self) -> bool {
            true
        }
        fn block_input(&mut self, block: usize, hidden: &Tensor, timestep_proj: &Tensor) {
            self.0.push((block, hidden.size(), timestep_proj.size()));
        }
    }

    #[test]
    fn velocity_is_the_forward_and_captures_every_block() {
        crate::runtime::init();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/tiny_a");
        let (_vs, model) = weights::load(&dir, Device::Cpu, Kind::Float).unwrap();
        tch::manual_seed(5);
        let latents = Tensor::randn([1, 4, 3, 8, 12], (Kind::Float, Device::Cpu));
        let t = Tensor::from_slice(&[500f32]);
        let text = Tensor::randn([1, 8, 16], (Kind::Float, Device::Cpu));
        let plain = model.forward(&latents, &t, &text);
        let v = model.velocity(&latents, &t, &text, &mut NoCapture);
        assert!(plain.equal(&v));
        let mut record = Record(Vec::new());
        let _ = model.velocity(&latents, &t, &text, &mut record);
        let expected: Vec<_> = (0..2).map(|b| (b, vec![1, 72, 32], vec![1, 6, 32])).collect();
        assert_eq!(record.0, expected);
    }
}
