//! What `forward` and `sample` share: the device flag, loading a teacher or student
//! folder, and reading named tensors with errors that say what the file lacks.

use super::ModelArgs;
use crate::model::{WanTransformer, weights};
use crate::student::{SURGERY_FILE, Student};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::Path;
use tch::nn::VarStore;
use tch::{Device, Tensor};

pub fn device(text: &str) -> Result<Device> {
    let device = match text {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(index)) => Device::Cuda(index),
            _ => bail!("--device `{other}` is not cpu, cuda or cuda:N"),
        },
    };
    if let Device::Cuda(index) = device {
        let count = tch::Cuda::device_count() as usize;
        if index >= count {
            let why = match &crate::runtime::init().cuda_backend {
                Err(reason) => format!("LibTorch's CUDA backend did not load: {reason}"),
                Ok(()) => format!("{count} CUDA device(s) visible"),
            };
            bail!("--device {text}: no such CUDA device ({why})");
        }
    }
    Ok(device)
}

/// A teacher folder, or a student folder when it holds surgery.json.
pub fn load_model(args: &ModelArgs) -> Result<(VarStore, WanTransformer)> {
    let device = device(&args.device)?;
    let kind = args.dtype.kind();
    if args.model.join(SURGERY_FILE).exists() {
        let student = Student::load(&args.model, device, kind)?;
        Ok((student.vs, student.model))
    } else {
        Ok(weights::load(&args.model, device, kind)?)
    }
}

pub struct Tensors {
    path: String,
    tensors: BTreeMap<String, Tensor>,
}

impl Tensors {
    pub fn read(path: &Path) -> Result<Tensors> {
        let tensors = weights::read_safetensors(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Tensors {
            path: path.display().to_string(),
            tensors,
        })
    }

    /// The tensor `name` with `dims` dimensions, or an error naming what the file has.
    pub fn get(&self, name: &str, dims: usize) -> Result<&Tensor> {
        let Some(tensor) = self.tensors.get(name) else {
            let have: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
            bail!("{} has no `{name}` tensor (it has: {})", self.path, have.join(", "));
        };
        if tensor.dim() != dims {
            bail!(
                "{}: `{name}` has shape {:?}; expected {dims} dimensions",
                self.path,
                tensor.size()
            );
        }
        Ok(tensor)
    }

    pub fn optional(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }
}

pub fn write(path: &Path, tensors: &[(&str, &Tensor)]) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    weights::write_safetensors(path, tensors.iter().copied(), None)?;
    Ok(())
}
