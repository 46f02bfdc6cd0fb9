//! What a checkpoint looks like in the store: the step folders' names, the manifest that
//! lists every file with its size and sha256, the file names a checkpoint may hold, and
//! the scan of a checkpoint folder's steps.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use surgery_core::layout;

use super::CheckpointError;
use crate::storage::store::{Storage, StorageError};

/// The name of a step's own manifest inside its folder.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The manifest format written by this code.
pub(super) const FORMAT: u32 = 1;

/// One file of a checkpoint, as recorded in its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// The path relative to the step folder.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its sha256, lowercase hex.
    pub sha256: String,
}

/// A step's `manifest.json`, and (with `dir` set) `latest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The manifest format (1).
    pub format: u32,
    /// The training step.
    pub step: u64,
    /// The caller's metadata (e.g. the data position, the loss, the RNG state).
    pub meta: serde_json::Value,
    /// Every file of the checkpoint.
    pub files: Vec<FileEntry>,
    /// Only in `latest.json`: the step folder, relative to the checkpoint folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
}

/// Lowercase hex sha256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

/// `step-0000000200`, the step folder's name (as `layout::checkpoint_dir` spells it).
pub(super) fn step_dir_name(step: u64) -> String {
    layout::checkpoint_dir("", step).trim_start_matches('/').to_string()
}

fn parse_step_dir_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub(super) fn validate_name(step: u64, name: &str, seen: &mut BTreeSet<String>) -> Result<(), CheckpointError> {
    let bad = |why: &'static str| CheckpointError::InvalidFileName {
        step,
        name: name.to_string(),
        why,
    };
    if name.is_empty() {
        return Err(bad("is empty"));
    }
    if name == MANIFEST_FILE {
        return Err(bad("is reserved for the checkpoint's manifest"));
    }
    if name.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..") {
        return Err(bad("has an empty, `.` or `..` segment, or a leading or trailing `/`"));
    }
    if object_store::path::Path::parse(name).is_err() {
        return Err(bad("is not a valid object path"));
    }
    if !seen.insert(name.to_string()) {
        return Err(bad("appears twice"));
    }
    Ok(())
}

/// Every step folder under `dir`, ascending, with whether it has a manifest (is complete).
pub(super) async fn scan(storage: &Storage, dir: &str) -> Result<BTreeMap<u64, bool>, StorageError> {
    let mut steps = BTreeMap::new();
    let prefix = format!("{dir}/");
    for path in storage.list(dir).await? {
        let Some(rel) = path.strip_prefix(&prefix) else {
            continue;
        };
        let Some((folder, rest)) = rel.split_once('/') else {
            continue;
        };
        let Some(step) = parse_step_dir_name(folder) else {
            continue;
        };
        *steps.entry(step).or_insert(false) |= rest == MANIFEST_FILE;
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_dir_names_match_the_layout() {
        assert_eq!(step_dir_name(200), "step-0000000200");
        assert_eq!(parse_step_dir_name("step-0000000200"), Some(200));
        assert_eq!(parse_step_dir_name("step-"), None);
        assert_eq!(parse_step_dir_name("step-12a"), None);
        assert_eq!(parse_step_dir_name("latest.json"), None);
    }

    #[test]
    fn file_names_are_validated() {
        let mut seen = BTreeSet::new();
        assert!(validate_name(1, "model.safetensors", &mut seen).is_ok());
        assert!(validate_name(1, "optim/m.safetensors", &mut seen).is_ok());
        for bad in [
            "",
            "manifest.json",
            "/abs",
            "a//b",
            "a/../b",
            "trailing/",
            "model.safetensors",
        ] {
            let err = validate_name(1, bad, &mut seen).unwrap_err();
            assert!(matches!(err, CheckpointError::InvalidFileName { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn sha256_is_lowercase_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
