//! Folders of files between object storage and the worker's disk: a model named by URL
//! (cached across tasks), a fresh copy of a folder of the job (a student), and a local
//! folder written into the job; and a JSON document written into the job. The stages'
//! only folder and report transfers.

use super::TaskContext;
use super::task::TaskError;
use crate::storage::Storage;
use std::path::{Path, PathBuf};

/// A local folder holding the model at `url`: the folder itself for a local URL, else a
/// copy in the worker's cache (files already there with the right size are kept).
pub fn model_folder(ctx: &TaskContext, url: &str) -> Result<PathBuf, TaskError> {
    let storage = Storage::from_url(url).map_err(TaskError::fatal)?;
    if let Some(path) = storage.local_root() {
        return Ok(path);
    }
    let name: String = url
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let local = ctx.cache_dir.join("models").join(name);
    ctx.block_on(storage.download_dir("", &local))
        .map_err(TaskError::retryable)?;
    Ok(local)
}

/// A fresh local copy of the job's folder `dir`, at `{cache}/{purpose}/{job}` (whatever an
/// earlier attempt left there is removed first).
pub fn download_folder(ctx: &TaskContext, job: &Storage, dir: &str, purpose: &str) -> Result<PathBuf, TaskError> {
    let local = ctx.cache_dir.join(purpose).join(ctx.input.task.job.replace('/', "_"));
    let _ = std::fs::remove_dir_all(&local);
    ctx.block_on(job.join(dir).download_dir("", &local))
        .map_err(TaskError::retryable)?;
    Ok(local)
}

/// Writes the files of the local folder `local` to the job's folder `dir`; returns their
/// paths in the job (the task's artifacts).
pub fn upload_folder(ctx: &TaskContext, job: &Storage, local: &Path, dir: &str) -> Result<Vec<String>, TaskError> {
    ctx.block_on(job.upload_dir(dir, local)).map_err(TaskError::retryable)
}

/// Writes `value` as pretty JSON to the job's `path` (a report or a result).
pub fn put_json(ctx: &TaskContext, job: &Storage, path: &str, value: &impl serde::Serialize) -> Result<(), TaskError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| TaskError::fatal(format!("{path}: {e}")))?;
    ctx.block_on(job.put(path, bytes.into())).map_err(TaskError::retryable)
}
