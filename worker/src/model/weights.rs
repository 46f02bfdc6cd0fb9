//! Reading and writing diffusers-format model folders: `config.json` plus either one
//! `diffusion_pytorch_model.safetensors` or shards listed by
//! `diffusion_pytorch_model.safetensors.index.json` (`weight_map`: tensor -> file). The
//! index wins when both exist, as in diffusers.
//!
//! Loading checks every header first (missing, unexpected and mis-shaped tensors,
//! unsupported dtypes) before reading any tensor data, so a bad checkpoint fails fast
//! with a message naming what is wrong, then reads one file at a time. Tensors of any
//! float dtype in the file are converted to the requested one; with a reduced-precision
//! request the modules diffusers keeps in fp32 (`_keep_in_fp32_modules`) stay fp32.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorInfo;
use safetensors::{Dtype, SafeTensors, View};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::config::{ConfigError, WanConfig};
use super::transformer::WanTransformer;

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";
pub const INDEX_FILE: &str = "diffusion_pytorch_model.safetensors.index.json";

/// diffusers' `WanTransformer3DModel._keep_in_fp32_modules`: a parameter whose dotted
/// name has one of these as a component stays fp32 when the model is loaded in bf16/fp16.
pub const KEEP_IN_FP32: [&str; 6] = ["rope", "time_embedder", "scale_shift_table", "norm1", "norm2", "norm3"];

/// diffusers' `_keys_to_ignore_on_load_unexpected`: checkpoint tensors (by name component)
/// that may be present without the model having them.
pub const IGNORED_UNEXPECTED: [&str; 1] = ["norm_added_q"];

/// How many names an error lists before "and N more".
const LISTED: usize = 5;

/// Why a model folder could not be read or written. Paths are as given by the caller.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error(
        "{dir} has no {CONFIG_FILE}: not a diffusers model folder (expected the transformer's folder, e.g. <model>/transformer)"
    )]
    MissingConfig { dir: PathBuf },
    #[error("{path}: {source}")]
    Config { path: PathBuf, source: ConfigError },
    #[error("{dir} has neither {WEIGHTS_FILE} nor {INDEX_FILE}")]
    NoWeights { dir: PathBuf },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid safetensors file ({reason}); re-download or re-save it")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path} is not a valid shard index ({reason})")]
    BadIndex { path: PathBuf, reason: String },
    #[error("{name} is stored twice, in {first} and {second}")]
    Duplicate {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("checkpoint {dir} lacks {count} tensor(s) the model needs: {}", listed(names, *count))]
    MissingTensors {
        dir: PathBuf,
        count: usize,
        names: Vec<String>,
    },
    #[error("checkpoint {dir} has {count} tensor(s) the model does not: {} (a different architecture or config?)", listed(names, *count))]
    UnexpectedTensors {
        dir: PathBuf,
        count: usize,
        names: Vec<String>,
    },
    #[error(
        "{name} in {file} has shape {found:?}, the model expects {expected:?} (does config.json match the weights?)"
    )]
    ShapeMismatch {
        name: String,
        file: PathBuf,
        expected: Vec<i64>,
        found: Vec<i64>,
    },
    #[error("{name} in {file} has dtype {dtype}; only F32, F16, BF16 and F64 are supported")]
    UnsupportedDtype { name: String, file: PathBuf, dtype: String },
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

fn listed(names: &[String], count: usize) -> String {
    let mut text = names.join(", ");
    if count > names.len() {
        text += &format!(" and {} more", count - names.len());
    }
    text
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> WeightsError + '_ {
    move |source| WeightsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether diffusers keeps parameter `name` in fp32 in a reduced-precision model.
pub fn keeps_fp32(name: &str) -> bool {
    name.split('.').any(|component| KEEP_IN_FP32.contains(&component))
}

/// The dtype parameter `name` gets in a model loaded as `kind`.
pub fn param_kind(name: &str, kind: Kind) -> Kind {
    if kind != Kind::Float && keeps_fp32(name) {
        Kind::Float
    } else {
        kind
    }
}

/// Casts every floating-point variable to `kind`, except those diffusers keeps fp32.
/// For a freshly built model (e.g. a student) that is not loaded from a folder.
pub fn cast_like_diffusers(vs: &VarStore, kind: Kind) {
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            if var.is_floating_point() {
                let target = param_kind(&name, kind);
                if var.kind() != target {
                    // set_data swaps the storage under every handle on this variable,
                    // including the ones the model's layers hold.
                    var.set_data(&var.to_kind(target));
                }
            }
        }
    })
}

/// Reads and validates `<dir>/config.json`.
pub fn read_config(dir: &Path) -> Result<WanConfig, WeightsError> {
    let path = dir.join(CONFIG_FILE);
    if !path.is_file() {
        return Err(WeightsError::MissingConfig { dir: dir.to_path_buf() });
    }
    let text = std::fs::read_to_string(&path).map_err(io_error(&path))?;
    WanConfig::from_json(&text).map_err(|source| WeightsError::Config { path, source })
}

/// Builds the model from `<dir>/config.json` on `device` and loads its weights as `kind`
/// (`Kind::Float` or `Kind::BFloat16`; see [`load_into`]).
pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<(VarStore, WanTransformer), WeightsError> {
    let cfg = read_config(dir)?;
    let vs = VarStore::new(device);
    let model = WanTransformer::new(&vs.root(), &cfg);
    load_into(&vs, dir, kind)?;
    Ok((vs, model))
}

/// Which tensors of a checkpoint a model may leave unread, and which of its parameters
/// stay fp32 in a reduced-precision model: what differs between the models this crate
/// loads from diffusers folders.
#[derive(Debug, Clone, Copy)]
pub struct LoadRules {
    /// Whether parameter `name` stays fp32 when the model is loaded in bf16/fp16.
    pub keeps_fp32: fn(&str) -> bool,
    /// Whether checkpoint tensor `name`, which the model does not have, is skipped
    /// rather than refused.
    pub skips_unexpected: fn(&str) -> bool,
}

/// The transformer's rules: [`KEEP_IN_FP32`] and [`IGNORED_UNEXPECTED`].
pub const TRANSFORMER_RULES: LoadRules = LoadRules {
    keeps_fp32,
    skips_unexpected: |name| name.split('.').any(|c| IGNORED_UNEXPECTED.contains(&c)),
};

/// Fills every variable of `vs` from the checkpoint in `dir`, by name. Each becomes
/// [`param_kind`]`(name, kind)` on the store's device. Fails, before reading any tensor
/// data, if the checkpoint lacks a variable, has one with another shape, or has tensors
/// the store does not (other than [`IGNORED_UNEXPECTED`]).
pub fn load_into(vs: &VarStore, dir: &Path, kind: Kind) -> Result<(), WeightsError> {
    load_into_with(vs, dir, kind, &TRANSFORMER_RULES)
}

/// [`load_into`] under another model's [`LoadRules`]: a variable becomes fp32 where
/// `rules.keeps_fp32` says so and `kind` otherwise; checkpoint tensors the store lacks
/// are refused unless `rules.skips_unexpected` accepts them (they are then never read).
pub fn load_into_with(vs: &VarStore, dir: &Path, kind: Kind, rules: &LoadRules) -> Result<(), WeightsError> {
    let kind_for = |name: &str| {
        if kind != Kind::Float && (rules.keeps_fp32)(name) {
            Kind::Float
        } else {
            kind
        }
    };
    let files = weight_files(dir)?;
    let mut headers = Vec::with_capacity(files.len());
    for path in &files {
        headers.push(read_header(path)?);
    }

    // Where each checkpoint tensor lives.
    let location = locate(&headers).map_err(|(name, first, second)| WeightsError::Duplicate {
        name,
        first: files[first].clone(),
        second: files[second].clone(),
    })?;

    let mut variables: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let missing: Vec<&String> = variables
        .keys()
        .filter(|name| !location.contains_key(name.as_str()))
        .collect();
    if !missing.is_empty() {
        return Err(WeightsError::MissingTensors {
            dir: dir.to_path_buf(),
            count: missing.len(),
            names: missing.iter().take(LISTED).map(|s| s.to_string()).collect(),
        });
    }
    let unexpected: Vec<&str> = location
        .keys()
        .copied()
        .filter(|name| !variables.contains_key(*name))
        .filter(|name| !(rules.skips_unexpected)(name))
        .collect();
    if !unexpected.is_empty() {
        return Err(WeightsError::UnexpectedTensors {
            dir: dir.to_path_buf(),
            count: unexpected.len(),
            names: unexpected.iter().take(LISTED).map(|s| s.to_string()).collect(),
        });
    }
    for (name, var) in &variables {
        let (file, info) = location[name.as_str()];
        let found: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        if found != var.size() {
            return Err(WeightsError::ShapeMismatch {
                name: name.clone(),
                file: files[file].clone(),
                expected: var.size(),
                found,
            });
        }
        kind_of(info.dtype).ok_or_else(|| WeightsError::UnsupportedDtype {
            name: name.clone(),
            file: files[file].clone(),
            dtype: format!("{:?}", info.dtype),
        })?;
    }

    // Headers are consistent: read one file at a time and move its tensors in.
    let device = vs.device();
    for path in &files {
        let bytes = std::fs::read(path).map_err(io_error(path))?;
        let file = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(path, e))?;
        tch::no_grad(|| -> Result<(), WeightsError> {
            for (name, view) in file.iter() {
                let Some(var) = variables.get_mut(name) else { continue }; // ignored key
                let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
                let source_kind = kind_of(view.dtype()).expect("dtypes checked above");
                let host = Tensor::f_from_data_size(view.data(), &shape, source_kind).map_err(|e| corrupt(path, e))?;
                // set_data replaces the storage (and dtype) under every handle on the variable.
                var.set_data(&host.to_device_(device, kind_for(name), false, false));
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// The shard files of a sharded checkpoint's index (`*.safetensors.index.json`, its text)
/// in `dir`, or why the index is unusable: shared by every loader of sharded folders
/// (diffusers' and transformers' write the same index).
pub fn index_shards(dir: &Path, text: &str) -> Result<Vec<PathBuf>, String> {
    let json: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| "no weight_map object".to_string())?;
    let mut shards = BTreeSet::new();
    for (name, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| format!("weight_map[{name:?}] is not a file name"))?;
        if file.contains('/') || file.contains('\\') || file.contains("..") {
            return Err(format!("shard name {file:?} is not a plain file name"));
        }
        shards.insert(file.to_string());
    }
    if shards.is_empty() {
        return Err("weight_map is empty".into());
    }
    let files: Vec<PathBuf> = shards.iter().map(|f| dir.join(f)).collect();
    if let Some(absent) = files.iter().find(|f| !f.is_file()) {
        return Err(format!("lists {}, which does not exist", absent.display()));
    }
    Ok(files)
}

/// The weight files of a folder: the index's shards, else the single file.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, WeightsError> {
    if !dir.join(CONFIG_FILE).is_file() {
        return Err(WeightsError::MissingConfig { dir: dir.to_path_buf() });
    }
    let index = dir.join(INDEX_FILE);
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(io_error(&index))?;
        let bad = |reason: String| WeightsError::BadIndex {
            path: index.clone(),
            reason,
        };
        return index_shards(dir, &text).map_err(bad);
    }
    let single = dir.join(WEIGHTS_FILE);
    if single.is_file() {
        Ok(vec![single])
    } else {
        Err(WeightsError::NoWeights { dir: dir.to_path_buf() })
    }
}

fn corrupt(path: &Path, reason: impl std::fmt::Display) -> WeightsError {
    WeightsError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// A safetensors file's header (name -> dtype, shape, offsets) without its data, checked
/// against the file's size so a truncated file is caught before loading. Also used by the
/// text encoder's loader ([`crate::text::umt5`]).
/// Where each tensor of a checkpoint's files lives (name -> file index and its entry), from
/// the files' headers; a name stored in two files is `(name, first file, second file)`.
#[allow(clippy::type_complexity)]
pub fn locate(
    headers: &[BTreeMap<String, TensorInfo>],
) -> Result<BTreeMap<&str, (usize, &TensorInfo)>, (String, usize, usize)> {
    let mut location = BTreeMap::new();
    for (file, header) in headers.iter().enumerate() {
        for (name, info) in header {
            if let Some((other, _)) = location.insert(name.as_str(), (file, info)) {
                return Err((name.clone(), other, file));
            }
        }
    }
    Ok(location)
}

pub fn read_header(path: &Path) -> Result<BTreeMap<String, TensorInfo>, WeightsError> {
    let mut file = File::open(path).map_err(io_error(path))?;
    let file_len = file.metadata().map_err(io_error(path))?.len();
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes)
        .map_err(|_| corrupt(path, "shorter than the 8-byte header length"))?;
    let header_len = u64::from_le_bytes(len_bytes);
    // safetensors' own limit on header size.
    if header_len > 100_000_000 || 8 + header_len > file_len {
        return Err(corrupt(
            path,
            format!("header length {header_len} does not fit a {file_len}-byte file"),
        ));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(io_error(path))?;
    let json: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| corrupt(path, format!("header: {e}")))?;
    let data_len = (file_len - 8 - header_len) as usize;
    let mut tensors = BTreeMap::new();
    for (name, value) in json {
        if name == "__metadata__" {
            continue;
        }
        let info: TensorInfo = serde_json::from_value(value).map_err(|e| corrupt(path, format!("{name}: {e}")))?;
        let (start, end) = info.data_offsets;
        let bytes = info
            .shape
            .iter()
            .try_fold(info.dtype.bitsize(), |n, &d| n.checked_mul(d))
            .map(|bits| bits / 8);
        if start > end || end > data_len || bytes != Some(end - start) {
            return Err(corrupt(
                path,
                format!(
                    "{name}: offsets {:?} do not match its shape and dtype",
                    info.data_offsets
                ),
            ));
        }
        tensors.insert(name, info);
    }
    Ok(tensors)
}

/// The tch dtype of a safetensors float dtype; `None` for the dtypes models are not stored in.
pub fn kind_of(dtype: Dtype) -> Option<Kind> {
    match dtype {
        Dtype::F32 => Some(Kind::Float),
        Dtype::BF16 => Some(Kind::BFloat16),
        Dtype::F16 => Some(Kind::Half),
        Dtype::F64 => Some(Kind::Double),
        _ => None,
    }
}

fn dtype_of(kind: Kind) -> Option<Dtype> {
    match kind {
        Kind::Float => Some(Dtype::F32),
        Kind::BFloat16 => Some(Dtype::BF16),
        Kind::Half => Some(Dtype::F16),
        Kind::Double => Some(Dtype::F64),
        Kind::Int64 => Some(Dtype::I64),
        Kind::Int => Some(Dtype::I32),
        _ => None,
    }
}

/// A tensor's bytes on the host, for the safetensors writer.
struct HostTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl HostTensor {
    fn new(name: &str, tensor: &Tensor, path: &Path) -> Result<Self, WeightsError> {
        let dtype = dtype_of(tensor.kind()).ok_or_else(|| WeightsError::Write {
            path: path.to_path_buf(),
            reason: format!("{name} has dtype {:?}, which is not saved", tensor.kind()),
        })?;
        let host = tensor.detach().to_device(Device::Cpu).contiguous();
        let numel = host.numel();
        let mut bytes = vec![0u8; numel * host.kind().elt_size_in_bytes()];
        host.copy_data_u8(&mut bytes, numel);
        Ok(HostTensor {
            dtype,
            shape: host.size().iter().map(|&d| d as usize).collect(),
            bytes,
        })
    }
}

impl View for &HostTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Writes named tensors (any device, each in its own dtype) to one safetensors file.
pub fn write_safetensors<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
    metadata: Option<HashMap<String, String>>,
) -> Result<(), WeightsError> {
    let host: Vec<(&str, HostTensor)> = tensors
        .into_iter()
        .map(|(name, t)| HostTensor::new(name, t, path).map(|h| (name, h)))
        .collect::<Result<_, _>>()?;
    safetensors::serialize_to_file(host.iter().map(|(n, h)| (*n, h)), metadata, path).map_err(|e| WeightsError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Reads every tensor of a safetensors file onto the CPU, in the file's dtypes.
pub fn read_safetensors(path: &Path) -> Result<BTreeMap<String, Tensor>, WeightsError> {
    let bytes = std::fs::read(path).map_err(io_error(path))?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(path, e))?;
    let mut out = BTreeMap::new();
    for (name, view) in file.iter() {
        let kind = kind_of(view.dtype()).ok_or_else(|| WeightsError::UnsupportedDtype {
            name: name.to_string(),
            file: path.to_path_buf(),
            dtype: format!("{:?}", view.dtype()),
        })?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        out.insert(
            name.to_string(),
            Tensor::f_from_data_size(view.data(), &shape, kind).map_err(|e| corrupt(path, e))?,
        );
    }
    Ok(out)
}

/// Saves named tensors as a diffusers model folder: `config.json` and one
/// `diffusion_pytorch_model.safetensors` (each tensor in its own dtype). A stale shard
/// index in `dir` is removed so the folder loads as what was just written.
pub fn save_tensors<'a>(
    dir: &Path,
    cfg: &WanConfig,
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
) -> Result<(), WeightsError> {
    let write_err = |path: PathBuf| {
        move |e: std::io::Error| WeightsError::Write {
            path,
            reason: e.to_string(),
        }
    };
    std::fs::create_dir_all(dir).map_err(write_err(dir.to_path_buf()))?;
    let index = dir.join(INDEX_FILE);
    if index.exists() {
        std::fs::remove_file(&index).map_err(write_err(index.clone()))?;
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors(&dir.join(WEIGHTS_FILE), tensors, Some(metadata))?;
    let config = dir.join(CONFIG_FILE);
    std::fs::write(&config, cfg.to_json()).map_err(write_err(config.clone()))
}

/// Saves a model's variables as a diffusers model folder (see [`save_tensors`]).
pub fn save(vs: &VarStore, cfg: &WanConfig, dir: &Path) -> Result<(), WeightsError> {
    let variables = vs.variables();
    save_tensors(dir, cfg, variables.iter().map(|(n, t)| (n.as_str(), t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tensor_in_two_shards_is_named_with_both() {
        let info = || TensorInfo {
            dtype: safetensors::Dtype::F32,
            shape: vec![2],
            data_offsets: (0, 8),
        };
        let shard = |names: &[&str]| -> BTreeMap<String, TensorInfo> {
            names.iter().map(|n| (n.to_string(), info())).collect()
        };
        let headers = [shard(&["a", "b"]), shard(&["c"])];
        let found = locate(&headers).unwrap();
        assert_eq!(found["c"].0, 1);
        assert_eq!(found.len(), 3);
        let headers = [shard(&["a"]), shard(&["c"]), shard(&["a"])];
        assert_eq!(locate(&headers).unwrap_err(), ("a".to_string(), 0, 2));
    }

    #[test]
    fn fp32_modules_match_by_component() {
        assert!(keeps_fp32("blocks.3.norm2.weight"));
        assert!(keeps_fp32("blocks.0.scale_shift_table"));
        assert!(keeps_fp32("scale_shift_table"));
        assert!(keeps_fp32("condition_embedder.time_embedder.linear_1.weight"));
        assert!(!keeps_fp32("condition_embedder.time_proj.weight"));
        assert!(!keeps_fp32("blocks.0.attn1.norm_q.weight"));
        assert_eq!(
            param_kind("blocks.0.attn1.norm_q.weight", Kind::BFloat16),
            Kind::BFloat16
        );
        assert_eq!(param_kind("blocks.0.norm2.bias", Kind::BFloat16), Kind::Float);
        assert_eq!(param_kind("blocks.0.norm2.bias", Kind::Float), Kind::Float);
    }

    #[test]
    fn missing_config_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_config(dir.path()).unwrap_err();
        assert!(matches!(err, WeightsError::MissingConfig { .. }), "{err}");
        assert!(err.to_string().contains("config.json"));
    }
}
