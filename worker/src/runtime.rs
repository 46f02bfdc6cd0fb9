//! LibTorch runtime set-up: load the CUDA backend if the machine has one, report devices;
//! and how long a computation takes on a device (synchronised, so GPU time counts).

use std::sync::OnceLock;
use std::time::Instant;
use tch::Device;

/// What [`init`] found: whether LibTorch's CUDA backend loaded, and why not if it did not.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub cuda_backend: Result<(), String>,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// Must run before any tch call. dlopen `libtorch_cuda.so` with RTLD_NOW | RTLD_GLOBAL so
/// LibTorch registers its CUDA backend (GPU.md, point 2); without it
/// `tch::Cuda::is_available()` is silently false on a GPU machine. On a CPU-only machine the
/// load fails cleanly and the same binary runs on CPU.
pub fn init() -> &'static Runtime {
    RUNTIME.get_or_init(|| Runtime {
        cuda_backend: load_cuda_backend(),
    })
}

fn load_cuda_backend() -> Result<(), String> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    // SAFETY: loading a shared library runs its initialisers; libtorch_cuda's only
    // register the CUDA backend with the already-loaded libtorch_cpu.
    match unsafe { Library::open(Some("libtorch_cuda.so"), RTLD_NOW | RTLD_GLOBAL) } {
        Ok(lib) => {
            // Keep it loaded for the life of the process: LibTorch holds pointers into it.
            std::mem::forget(lib);
            Ok(())
        }
        Err(err) => Err(err.to_string()),
    }
}

/// A one-line description of the devices LibTorch sees.
pub fn describe_devices() -> String {
    let rt = init();
    let cuda = tch::Cuda::device_count();
    match (&rt.cuda_backend, cuda) {
        (Ok(()), n) if n > 0 => format!("{n} CUDA device(s), cudnn {}", tch::Cuda::cudnn_is_available()),
        (Ok(()), _) => "CUDA backend loaded but no CUDA device visible; using CPU".to_string(),
        (Err(_), _) => "CPU only (no libtorch_cuda.so on this machine)".to_string(),
    }
}

/// A name for `device`: the GPU's (`NVIDIA H200`, from the CUDA driver) or `cpu`.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(i) => crate::kernels::device_name(i).unwrap_or_else(|| format!("cuda:{i}")),
        _ => "cpu".to_string(),
    }
}

/// Waits until every kernel queued on `device` has finished (nothing to wait for on the CPU).
pub fn synchronize(device: Device) {
    if let Device::Cuda(index) = device {
        tch::Cuda::synchronize(index as i64);
    }
}

/// The median wall-clock milliseconds of `f` on `device` over `iters` runs, after `warmup`
/// runs; each run is synchronised with the device.
pub fn median_ms(device: Device, warmup: usize, iters: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warmup {
        f();
    }
    synchronize(device);
    let mut times: Vec<f64> = (0..iters.max(1))
        .map(|_| {
            let start = Instant::now();
            f();
            synchronize(device);
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    /// A real LibTorch computation on CPU: proves the LibTorch install, the link and the
    /// rpath on a fresh machine.
    #[test]
    fn matmul_and_attention_on_cpu() {
        init();
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2]);
        let b = Tensor::from_slice(&[5.0f32, 6.0, 7.0, 8.0]).view([2, 2]);
        let c = a.matmul(&b);
        let got: Vec<f32> = Vec::try_from(c.flatten(0, -1)).unwrap();
        assert_eq!(got, vec![19.0, 22.0, 43.0, 50.0]);

        // Fused attention equals the explicit softmax(q k^T / sqrt(d)) v.
        tch::manual_seed(0);
        let opts = (Kind::Float, Device::Cpu);
        let q = Tensor::randn([1, 2, 5, 8], opts);
        let k = Tensor::randn([1, 2, 5, 8], opts);
        let v = Tensor::randn([1, 2, 5, 8], opts);
        let fused = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<&Tensor>, 0.0, false, None, false);
        let scores = q.matmul(&k.transpose(-2, -1)) / (8f64).sqrt();
        let exact = scores.softmax(-1, Kind::Float).matmul(&v);
        let max_diff = (fused - exact).abs().max().double_value(&[]);
        assert!(max_diff < 1e-5, "fused attention differs from explicit by {max_diff}");
    }

    /// The same binary runs on a machine without CUDA: the backend load fails cleanly and
    /// the description says CPU. (On a GPU machine it names the devices instead.)
    #[test]
    fn the_median_of_timed_runs() {
        let mut calls = 0;
        let ms = median_ms(Device::Cpu, 2, 5, || calls += 1);
        assert_eq!(calls, 7);
        assert!((0.0..1e3).contains(&ms), "{ms}");
    }

    #[test]
    fn describes_the_devices_it_found() {
        let text = describe_devices();
        if tch::Cuda::device_count() == 0 {
            assert!(text.contains("CPU"), "{text}");
        } else {
            assert!(text.contains("CUDA device(s)"), "{text}");
        }
    }
}
