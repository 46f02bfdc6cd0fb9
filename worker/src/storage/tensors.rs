//! Named tensors to and from safetensors bytes in memory: the snapshot format of
//! checkpoints and caches (`Checkpointer::save` takes bytes, so the copy to the host
//! happens here, before training moves on).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use safetensors::{Dtype, SafeTensors, View};
use tch::{Device, Kind, Tensor};

/// Errors of [`to_bytes`] and [`from_bytes`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TensorBytesError {
    /// The tensor's dtype has no safetensors equivalent (complex, quantized).
    #[error(
        "tensor `{name}` has dtype {kind:?}, which safetensors cannot store; convert it (e.g. to f32) \
         before saving"
    )]
    UnsupportedKind { name: String, kind: Kind },

    /// The file has a dtype LibTorch has no kind for (e.g. u16, f4).
    #[error(
        "tensor `{name}` has safetensors dtype {dtype:?}, which LibTorch cannot load; re-save it as a supported dtype"
    )]
    UnsupportedDtype { name: String, dtype: Dtype },

    /// Two tensors share a name; one would silently replace the other.
    #[error("two tensors are named `{name}`; give each tensor a unique name")]
    DuplicateName { name: String },

    /// The bytes are not a valid safetensors file (truncated or corrupted).
    #[error("invalid safetensors data: {0}; the file is truncated or corrupted, re-create it")]
    Format(#[from] safetensors::SafeTensorError),

    /// LibTorch rejected an operation.
    #[error("tensor `{name}`: {source}")]
    Torch {
        name: String,
        #[source]
        source: tch::TchError,
    },
}

/// The safetensors dtype of a LibTorch kind.
fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Bool => Dtype::BOOL,
        Kind::Uint8 => Dtype::U8,
        Kind::Int8 => Dtype::I8,
        Kind::Int16 => Dtype::I16,
        Kind::Int => Dtype::I32,
        Kind::Int64 => Dtype::I64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Float8e5m2 => Dtype::F8_E5M2,
        Kind::Float8e4m3fn => Dtype::F8_E4M3,
        Kind::Float8e5m2fnuz => Dtype::F8_E5M2FNUZ,
        Kind::Float8e4m3fnuz => Dtype::F8_E4M3FNUZ,
        _ => return None,
    })
}

/// The LibTorch kind of a safetensors dtype.
fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::BOOL => Kind::Bool,
        Dtype::U8 => Kind::Uint8,
        Dtype::I8 => Kind::Int8,
        Dtype::I16 => Kind::Int16,
        Dtype::I32 => Kind::Int,
        Dtype::I64 => Kind::Int64,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::F8_E5M2 => Kind::Float8e5m2,
        Dtype::F8_E4M3 => Kind::Float8e4m3fn,
        Dtype::F8_E5M2FNUZ => Kind::Float8e5m2fnuz,
        Dtype::F8_E4M3FNUZ => Kind::Float8e4m3fnuz,
        _ => return None,
    })
}

/// One tensor's raw bytes on the host.
struct Host {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Host {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Serialises named tensors (any device, any layout) to safetensors bytes, each tensor in
/// its own dtype, bit-exact. Each tensor is copied to the host as a contiguous buffer, so
/// the result is an independent snapshot: the caller may change its tensors afterwards.
///
/// # Panics
///
/// On a programming error: a dtype safetensors cannot store (complex, quantized) or a name
/// used twice. [`try_to_bytes`] returns those as errors instead.
pub fn to_bytes(tensors: &[(&str, &Tensor)]) -> Bytes {
    try_to_bytes(tensors).unwrap_or_else(|e| panic!("serialising tensors: {e}"))
}

/// [`to_bytes`], returning its errors instead of panicking.
pub fn try_to_bytes(tensors: &[(&str, &Tensor)]) -> Result<Bytes, TensorBytesError> {
    let mut seen = BTreeSet::new();
    let mut host = Vec::with_capacity(tensors.len());
    for &(name, tensor) in tensors {
        if !seen.insert(name) {
            return Err(TensorBytesError::DuplicateName { name: name.to_string() });
        }
        let kind = tensor.kind();
        let dtype = dtype_of(kind).ok_or_else(|| TensorBytesError::UnsupportedKind {
            name: name.to_string(),
            kind,
        })?;
        let torch = |source| TensorBytesError::Torch {
            name: name.to_string(),
            source,
        };
        let cpu = tensor
            .detach()
            .f_to_device(Device::Cpu)
            .and_then(|t| t.f_contiguous())
            .map_err(torch)?;
        let numel = cpu.numel();
        let mut data = vec![0u8; numel * kind.elt_size_in_bytes()];
        cpu.f_copy_data_u8(&mut data, numel).map_err(torch)?;
        let shape = cpu.size().iter().map(|&d| d as usize).collect();
        host.push((name, Host { dtype, shape, data }));
    }
    let bytes = safetensors::serialize(host.iter().map(|(n, h)| (*n, h)), None)?;
    Ok(Bytes::from(bytes))
}

/// Deserialises safetensors bytes into tensors on the CPU, in the file's dtypes.
pub fn from_bytes(bytes: &[u8]) -> Result<BTreeMap<String, Tensor>, TensorBytesError> {
    let file = SafeTensors::deserialize(bytes)?;
    let mut out = BTreeMap::new();
    for (name, view) in file.iter() {
        let kind = kind_of(view.dtype()).ok_or_else(|| TensorBytesError::UnsupportedDtype {
            name: name.to_string(),
            dtype: view.dtype(),
        })?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let tensor = Tensor::f_from_data_size(view.data(), &shape, kind).map_err(|source| TensorBytesError::Torch {
            name: name.to_string(),
            source,
        })?;
        out.insert(name.to_string(), tensor);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bit-exact equality: same kind, shape and raw bytes.
    fn raw(t: &Tensor) -> (Kind, Vec<i64>, Vec<u8>) {
        let c = t.to_device(Device::Cpu).contiguous();
        let numel = c.numel();
        let mut data = vec![0u8; numel * c.kind().elt_size_in_bytes()];
        c.copy_data_u8(&mut data, numel);
        (c.kind(), c.size(), data)
    }

    #[test]
    fn round_trips_every_dtype_bit_exactly() {
        let base = Tensor::randn([3, 5], (Kind::Float, Device::Cpu)) * 1000.0;
        let mut tensors: Vec<(String, Tensor)> = [
            Kind::Float,
            Kind::Double,
            Kind::Half,
            Kind::BFloat16,
            Kind::Int64,
            Kind::Int,
            Kind::Int16,
            Kind::Int8,
            Kind::Uint8,
            Kind::Bool,
        ]
        .iter()
        .map(|&k| (format!("{k:?}"), base.to_kind(k)))
        .collect();
        // Values that do not survive a float round trip: NaN payloads, -0.0, subnormals.
        let special = Tensor::from_slice(&[f32::NAN, -0.0, f32::MIN_POSITIVE / 2.0, f32::INFINITY]);
        tensors.push(("special".into(), special));
        tensors.push(("scalar".into(), Tensor::scalar_tensor(7.0, (Kind::Int64, Device::Cpu))));
        tensors.push(("empty".into(), Tensor::zeros([0, 4], (Kind::BFloat16, Device::Cpu))));

        let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let back = from_bytes(&to_bytes(&refs)).unwrap();
        assert_eq!(back.len(), tensors.len());
        for (name, t) in &tensors {
            assert_eq!(raw(&back[name]), raw(t), "{name}");
        }
    }

    #[test]
    fn non_contiguous_inputs_are_saved_as_their_values() {
        let base = Tensor::randn([4, 6], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
        let transposed = base.tr();
        let strided = base.slice(1, 0, 6, 2);
        assert!(!transposed.is_contiguous() && !strided.is_contiguous());
        let bytes = to_bytes(&[("t", &transposed), ("s", &strided)]);
        let back = from_bytes(&bytes).unwrap();
        assert_eq!(back["t"].size(), vec![6, 4]);
        assert_eq!(raw(&back["t"]), raw(&transposed.contiguous()));
        assert_eq!(raw(&back["s"]), raw(&strided.contiguous()));
    }

    #[test]
    fn the_bytes_are_a_snapshot() {
        let mut t = Tensor::ones([8], (Kind::Float, Device::Cpu));
        let bytes = to_bytes(&[("w", &t)]);
        let _ = t.fill_(5.0);
        let back = from_bytes(&bytes).unwrap();
        assert_eq!(back["w"].sum(Kind::Double).double_value(&[]), 8.0);
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        let t = Tensor::ones([2], (Kind::Float, Device::Cpu));
        assert!(matches!(
            try_to_bytes(&[("a", &t), ("a", &t)]),
            Err(TensorBytesError::DuplicateName { .. })
        ));
        let c = Tensor::ones([2], (Kind::ComplexFloat, Device::Cpu));
        assert!(matches!(
            try_to_bytes(&[("c", &c)]),
            Err(TensorBytesError::UnsupportedKind { .. })
        ));
        let bytes = to_bytes(&[("a", &t)]);
        assert!(matches!(
            from_bytes(&bytes[..bytes.len() - 1]),
            Err(TensorBytesError::Format(_))
        ));
        assert!(matches!(
            from_bytes(b"not safetensors"),
            Err(TensorBytesError::Format(_))
        ));
    }
}
