//! The student's speed-up, measured: its forward against the teacher's at the job's
//! resolution, on the device the export runs on, with the same kernels sampling uses
//! (fused on CUDA), bf16 or the spec's dtype, no gradients. One warm-up run (kernel
//! compilation, cuDNN plans), then the median of three.

use crate::model::WanTransformer;
use crate::runtime;
use serde::{Deserialize, Serialize};
use surgery_core::spec::JobSpec;
use tch::Tensor;

/// What report.json says about speed (and `surgeryctl status` shows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Speed {
    /// The GPU's name (`NVIDIA H200`) or `cpu`.
    pub device: String,
    /// Pixels and frames of the job's videos: `480x832x81`.
    pub resolution: String,
    pub teacher_ms: f64,
    pub student_ms: f64,
    /// teacher_ms / student_ms.
    pub speedup: f64,
}

/// Times one forward of each model on `latent` noise with the first prompt's `text`.
pub fn measure(
    student: &WanTransformer,
    teacher: &WanTransformer,
    spec: &JobSpec,
    text: &Tensor,
    latent: [i64; 5],
) -> Speed {
    let device = text.device();
    let x = Tensor::randn(latent, (tch::Kind::Float, device));
    let t = Tensor::from_slice(&[500f32]).to_device(device);
    let time = |model: &WanTransformer| {
        let (x, text) = (x.to_kind(model.compute_kind()), text.to_kind(model.compute_kind()));
        runtime::median_ms(device, 1, 3, || {
            let _ = tch::no_grad(|| model.forward(&x, &t, &text));
        })
    };
    let teacher_ms = time(teacher);
    let student_ms = time(student);
    Speed {
        device: runtime::device_name(device),
        resolution: spec.video.size(),
        teacher_ms,
        student_ms,
        speedup: teacher_ms / student_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn device_names() {
        assert_eq!(runtime::device_name(Device::Cpu), "cpu");
    }
}
