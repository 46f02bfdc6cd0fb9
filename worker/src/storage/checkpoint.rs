//! [`Checkpointer`]: checkpoints that are saved in the background and are only ever loaded
//! whole and verified.
//!
//! Layout under a checkpoint folder `dir` (`surgery_core::layout::distill_dir` or
//! `finetune_dir`):
//!
//! ```text
//! {dir}/step-0000000200/model.safetensors     the files, uploaded first
//! {dir}/step-0000000200/optim.safetensors
//! {dir}/step-0000000200/manifest.json         then the step's manifest: step, meta, and each
//!                                             file's name, size and sha256
//! {dir}/latest.json                           then a copy of it naming the step folder
//! ```
//!
//! A step's `manifest.json` is its commit point: it is written only after every file is
//! stored, so a step folder without one is a save that did not finish and is never loaded.
//! `latest.json` is written right after and says which step to try first; readers do not
//! trust it blindly: [`Checkpointer::latest`] re-reads the step's manifest, checks every
//! file's size and sha256, and falls back to the next older complete step when anything is
//! missing, truncated or corrupted (or scans the step folders when `latest.json` is
//! missing or unreadable).
//!
//! Saving does not make training wait on the network: the caller serialises its tensors to
//! bytes (the snapshot) and [`Checkpointer::save`] hands them to a task on the tokio
//! runtime, which uploads (multipart for large files), writes the manifests, then deletes
//! checkpoints beyond the newest `keep_last`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use surgery_core::layout;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use super::store::{Storage, StorageError};

/// The name of a step's own manifest inside its folder.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The manifest format written by this code.
const FORMAT: u32 = 1;

/// How many files of one checkpoint are read at once when verifying.
const READ_CONCURRENCY: usize = 4;

/// Errors of [`Checkpointer`]; each says what to do.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// A file name passed to [`Checkpointer::save`] cannot be stored.
    #[error(
        "checkpoint step {step}: file name `{name}` {why}; use a relative name such as \
         `model.safetensors` or `optim/moments.safetensors`"
    )]
    InvalidFileName { step: u64, name: String, why: &'static str },

    /// Steps saved by one checkpointer must increase, so `latest.json` always names the newest.
    #[error(
        "checkpoint step {step} is not after step {last}, the last one saved to `{url}`; save each \
         step once, in increasing order"
    )]
    StepNotIncreasing { step: u64, last: u64, url: String },

    /// A background save failed; the step is not visible. Sticky: later saves and waits
    /// return it too, because training on while checkpoints silently fail would lose work
    /// at the next preemption.
    #[error(
        "saving checkpoint step {step} to `{url}` failed, so it is not visible: {source}. Later saves \
         are refused: fail the task, so it resumes from the last durable checkpoint"
    )]
    SaveFailed {
        step: u64,
        url: String,
        #[source]
        source: Arc<StorageError>,
    },

    /// A background save was cancelled or panicked (e.g. its tokio runtime shut down).
    #[error(
        "the background save of checkpoint step {step} to `{url}` did not finish ({reason}); keep the \
         tokio runtime alive until Checkpointer::wait returns"
    )]
    Aborted { step: u64, url: String, reason: String },

    /// Listing or reading checkpoints failed (not a bad checkpoint: the store itself).
    /// No checkpoint is chosen rather than silently falling back to an older one; retry.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

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

/// A verified checkpoint, as returned by [`Checkpointer::latest`].
#[derive(Debug, Clone)]
pub struct Restored {
    /// The training step it was saved at.
    pub step: u64,
    /// The metadata passed to [`Checkpointer::save`].
    pub meta: serde_json::Value,
    /// Every file, by name, with its verified bytes.
    pub files: BTreeMap<String, Bytes>,
    /// Newer checkpoints that were passed over, and why (empty when the newest was good).
    pub skipped: Vec<SkippedCheckpoint>,
}

/// A checkpoint [`Checkpointer::latest`] refused to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedCheckpoint {
    /// Its step; `None` when `latest.json` itself was unreadable.
    pub step: Option<u64>,
    /// Why, e.g. "file model.safetensors is corrupted: ...".
    pub reason: String,
}

struct InFlight {
    step: u64,
    handle: JoinHandle<Result<(), CheckpointError>>,
}

#[derive(Default)]
struct State {
    /// The save being uploaded, if any (at most one: see [`Checkpointer::save`]).
    in_flight: Option<InFlight>,
    /// The first background failure; sticky.
    error: Option<CheckpointError>,
    /// The last step handed to `save`.
    last_saved: Option<u64>,
}

/// Saves checkpoints of one training loop in the background, and finds the newest intact one.
///
/// The API is blocking, for the synchronous training loops on their own threads: it drives
/// the async [`Storage`] on the tokio runtime whose handle it was given. That runtime must
/// be a multi-thread runtime that outlives the checkpointer's saves. **Do not call its
/// methods from inside an async task** (tokio panics: "Cannot start a runtime from within a
/// runtime"); from async code use `tokio::task::spawn_blocking`.
///
/// `Checkpointer` is `Send + Sync`; calls from several threads are serialised.
pub struct Checkpointer {
    storage: Storage,
    dir: String,
    keep_last: usize,
    runtime: Handle,
    state: Mutex<State>,
    /// The last step whose `latest.json` this checkpointer wrote; set by the save task.
    durable: Arc<Mutex<Option<u64>>>,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer")
            .field("url", &self.url())
            .field("keep_last", &self.keep_last)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Lowercase hex sha256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

/// `step-0000000200`, the step folder's name (as `layout::checkpoint_dir` spells it).
fn step_dir_name(step: u64) -> String {
    layout::checkpoint_dir("", step).trim_start_matches('/').to_string()
}

fn parse_step_dir_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn validate_name(step: u64, name: &str, seen: &mut BTreeSet<String>) -> Result<(), CheckpointError> {
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

impl Checkpointer {
    /// A checkpointer for the checkpoint folder `dir` (relative to `storage`'s root), keeping
    /// the newest `keep_last` complete checkpoints (at least 1: the newest complete one is
    /// never deleted). `runtime` must be a multi-thread tokio runtime.
    pub fn new(storage: Storage, dir: &str, keep_last: usize, runtime: Handle) -> Checkpointer {
        Checkpointer {
            storage,
            dir: dir.trim_matches('/').to_string(),
            keep_last: keep_last.max(1),
            runtime,
            state: Mutex::new(State::default()),
            durable: Arc::new(Mutex::new(None)),
        }
    }

    /// The checkpoint folder's URL, for messages.
    pub fn url(&self) -> String {
        self.storage.join(&self.dir).url()
    }

    /// Saves checkpoint `step` in the background and returns as soon as the upload started.
    ///
    /// `files` (name relative to the step folder, bytes) are the snapshot: serialise tensors
    /// to bytes before calling (see [`super::tensors::to_bytes`]), and training may then
    /// change its tensors at once. `meta` is stored in the manifest.
    ///
    /// Backpressure: at most one save is uploading. When the previous save has not finished,
    /// this call waits for it first, so at most two snapshots are in memory (the one
    /// uploading and the caller's next) however fast the caller saves. Saves are therefore
    /// ordered: a later step's manifest is never written before an earlier one's.
    ///
    /// Errors: invalid file names, a step not after the last saved one, or an earlier
    /// background failure (sticky, see [`CheckpointError::SaveFailed`]); the upload's own
    /// failure is reported by the next `save` or [`Checkpointer::wait`].
    pub fn save(&self, step: u64, files: Vec<(String, Bytes)>, meta: serde_json::Value) -> Result<(), CheckpointError> {
        let mut seen = BTreeSet::new();
        for (name, _) in &files {
            validate_name(step, name, &mut seen)?;
        }
        let mut state = lock(&self.state);
        if let Some(last) = state.last_saved
            && step <= last
        {
            return Err(CheckpointError::StepNotIncreasing {
                step,
                last,
                url: self.url(),
            });
        }
        self.finish_in_flight(&mut state);
        if let Some(e) = &state.error {
            return Err(e.clone());
        }
        let job = SaveJob {
            storage: self.storage.clone(),
            dir: self.dir.clone(),
            keep_last: self.keep_last,
            step,
            files,
            meta,
            durable: Arc::clone(&self.durable),
        };
        let handle = self.runtime.spawn(job.run());
        state.in_flight = Some(InFlight { step, handle });
        state.last_saved = Some(step);
        Ok(())
    }

    /// Blocks until every save handed to [`Checkpointer::save`] is durable (its
    /// `latest.json` written). Call it before reporting a task complete and on preemption.
    /// Returns the first background failure, if any (again on every later call).
    pub fn wait(&self) -> Result<(), CheckpointError> {
        let mut state = lock(&self.state);
        self.finish_in_flight(&mut state);
        match &state.error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// The last step this checkpointer made durable (wrote `latest.json` for), if any.
    pub fn durable_step(&self) -> Option<u64> {
        *lock(&self.durable)
    }

    /// Joins the in-flight save, recording its failure.
    fn finish_in_flight(&self, state: &mut State) {
        let Some(InFlight { step, handle }) = state.in_flight.take() else {
            return;
        };
        let failure = match self.runtime.block_on(handle) {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(join) => Some(CheckpointError::Aborted {
                step,
                url: self.url(),
                reason: join.to_string(),
            }),
        };
        if let Some(e) = failure {
            tracing::error!(step, url = %self.url(), error = %e, "checkpoint save failed");
            state.error.get_or_insert(e);
        }
    }

    /// The newest intact checkpoint, verified, or `None` when there is none.
    ///
    /// Tries the step `latest.json` names, then older complete steps (those with a
    /// `manifest.json`), newest first; when `latest.json` is missing or unreadable, every
    /// complete step, newest first. A step is loaded only when its manifest is readable
    /// and every file it lists exists with the recorded size and sha256; each rejected step
    /// is logged and listed in [`Restored::skipped`]. A store that cannot be read is an
    /// error, not a reason to fall back.
    pub fn latest(&self) -> Result<Option<Restored>, CheckpointError> {
        // Runs the future on this thread, so hashing does not occupy the runtime's workers.
        self.runtime.block_on(self.find_latest())
    }

    /// The steps with a `manifest.json` (complete checkpoints, not yet verified), newest first.
    pub fn complete_steps(&self) -> Result<Vec<u64>, CheckpointError> {
        let steps = self.runtime.block_on(scan(&self.storage, &self.dir))?;
        Ok(steps
            .into_iter()
            .rev()
            .filter(|(_, complete)| *complete)
            .map(|(s, _)| s)
            .collect())
    }

    async fn find_latest(&self) -> Result<Option<Restored>, CheckpointError> {
        let mut skipped = Vec::new();
        let mut skip = |step: Option<u64>, reason: String| {
            tracing::warn!(url = %self.url(), step, "not loading checkpoint: {reason}");
            skipped.push(SkippedCheckpoint { step, reason });
        };
        let pointer = match self.storage.get_opt(&layout::latest_manifest(&self.dir)).await? {
            None => None,
            Some(bytes) => match serde_json::from_slice::<Manifest>(&bytes) {
                Ok(m) => Some(m.step),
                Err(e) => {
                    skip(
                        None,
                        format!("latest.json is unreadable ({e}); scanning the step folders"),
                    );
                    None
                }
            },
        };
        if let Some(step) = pointer {
            match self.verify(step).await? {
                Ok((meta, files)) => {
                    return Ok(Some(Restored {
                        step,
                        meta,
                        files,
                        skipped,
                    }));
                }
                Err(reason) => skip(Some(step), reason),
            }
        }
        // Steps newer than a readable latest.json are saves that crashed between their
        // manifest and latest.json; they were never reported durable, so they stay unseen.
        let candidates = scan(&self.storage, &self.dir)
            .await?
            .into_iter()
            .rev()
            .filter(|&(step, complete)| complete && pointer.is_none_or(|p| step < p));
        for (step, _) in candidates {
            match self.verify(step).await? {
                Ok((meta, files)) => {
                    return Ok(Some(Restored {
                        step,
                        meta,
                        files,
                        skipped,
                    }));
                }
                Err(reason) => skip(Some(step), reason),
            }
        }
        Ok(None)
    }

    /// Reads and checks one step: `Ok(Ok(..))` when intact, `Ok(Err(why))` when not,
    /// `Err` when the store failed.
    #[allow(clippy::type_complexity)]
    async fn verify(
        &self,
        step: u64,
    ) -> Result<Result<(serde_json::Value, BTreeMap<String, Bytes>), String>, StorageError> {
        let step_dir = layout::checkpoint_dir(&self.dir, step);
        let Some(bytes) = self.storage.get_opt(&format!("{step_dir}/{MANIFEST_FILE}")).await? else {
            return Ok(Err(format!(
                "{} has no {MANIFEST_FILE}: its save did not finish",
                step_dir_name(step)
            )));
        };
        let manifest: Manifest = match serde_json::from_slice(&bytes) {
            Ok(m) => m,
            Err(e) => return Ok(Err(format!("its {MANIFEST_FILE} is unreadable: {e}"))),
        };
        if manifest.step != step {
            return Ok(Err(format!("its {MANIFEST_FILE} says step {}", manifest.step)));
        }
        let mut seen = BTreeSet::new();
        for entry in &manifest.files {
            if validate_name(step, &entry.name, &mut seen).is_err() {
                return Ok(Err(format!(
                    "its {MANIFEST_FILE} lists an invalid file name `{}`",
                    entry.name
                )));
            }
        }
        let contents: Vec<Option<Bytes>> = futures::stream::iter(&manifest.files)
            .map(|entry| {
                let path = format!("{step_dir}/{}", entry.name);
                async move { self.storage.get_opt(&path).await }
            })
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        let mut files = BTreeMap::new();
        for (entry, data) in manifest.files.iter().zip(contents) {
            let Some(data) = data else {
                return Ok(Err(format!("file {} is missing", entry.name)));
            };
            if data.len() as u64 != entry.size {
                return Ok(Err(format!(
                    "file {} is truncated or overwritten: {} bytes, the manifest says {}",
                    entry.name,
                    data.len(),
                    entry.size
                )));
            }
            let sha = sha256_hex(&data);
            if sha != entry.sha256 {
                return Ok(Err(format!(
                    "file {} is corrupted: sha256 {sha}, the manifest says {}",
                    entry.name, entry.sha256
                )));
            }
            files.insert(entry.name.clone(), data);
        }
        Ok(Ok((manifest.meta, files)))
    }
}

/// Every step folder under `dir`, ascending, with whether it has a manifest (is complete).
async fn scan(storage: &Storage, dir: &str) -> Result<BTreeMap<u64, bool>, StorageError> {
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

/// One background save: upload, manifests, retention.
struct SaveJob {
    storage: Storage,
    dir: String,
    keep_last: usize,
    step: u64,
    files: Vec<(String, Bytes)>,
    meta: serde_json::Value,
    durable: Arc<Mutex<Option<u64>>>,
}

impl SaveJob {
    fn url(&self) -> String {
        self.storage.join(&self.dir).url()
    }

    async fn run(self) -> Result<(), CheckpointError> {
        let (step, url) = (self.step, self.url());
        let failed = |e: StorageError| CheckpointError::SaveFailed {
            step,
            url: url.clone(),
            source: Arc::new(e),
        };
        let step_dir = layout::checkpoint_dir(&self.dir, step);
        // Re-saving a step (after resuming past a bad one): hide the old one first, so its
        // manifest never describes a mix of old and new files.
        self.storage
            .delete(&format!("{step_dir}/{MANIFEST_FILE}"))
            .await
            .map_err(failed)?;

        let mut entries = Vec::with_capacity(self.files.len());
        for (name, data) in &self.files {
            // Hash on a blocking thread while the bytes upload, so neither waits on the other
            // and the runtime's workers stay free for I/O.
            let to_hash = data.clone();
            let hash = tokio::task::spawn_blocking(move || sha256_hex(&to_hash));
            let path = format!("{step_dir}/{name}");
            let put = self.storage.put(&path, data.clone());
            let (hash, put) = tokio::join!(hash, put);
            put.map_err(failed)?;
            let sha256 = hash.map_err(|e| CheckpointError::Aborted {
                step,
                url: url.clone(),
                reason: format!("hashing {name}: {e}"),
            })?;
            entries.push(FileEntry {
                name: name.clone(),
                size: data.len() as u64,
                sha256,
            });
        }

        let mut manifest = Manifest {
            format: FORMAT,
            step,
            meta: self.meta.clone(),
            files: entries,
            dir: None,
        };
        let json = |m: &Manifest| Bytes::from(serde_json::to_vec_pretty(m).expect("a manifest serialises"));
        // The commit point: every file is stored.
        self.storage
            .put(&format!("{step_dir}/{MANIFEST_FILE}"), json(&manifest))
            .await
            .map_err(failed)?;
        manifest.dir = Some(step_dir_name(step));
        self.storage
            .put(&layout::latest_manifest(&self.dir), json(&manifest))
            .await
            .map_err(failed)?;
        *lock(&self.durable) = Some(step);
        tracing::info!(step, url = %url, "checkpoint saved");

        // Retention failing costs storage, not correctness: log it, the next save retries.
        if let Err(e) = self.collect_garbage().await {
            tracing::warn!(step, url = %url, error = %e, "deleting old checkpoints failed");
        }
        Ok(())
    }

    /// Deletes complete checkpoints beyond the newest `keep_last`, and incomplete step
    /// folders older than the newest complete one (saves that crashed). Incomplete folders
    /// newer than that are left alone: they may be a save in progress elsewhere.
    async fn collect_garbage(&self) -> Result<(), StorageError> {
        let steps = scan(&self.storage, &self.dir).await?;
        let complete: Vec<u64> = steps.iter().rev().filter(|(_, c)| **c).map(|(s, _)| *s).collect();
        let Some(&newest) = complete.first() else {
            return Ok(());
        };
        let keep: BTreeSet<u64> = complete.iter().take(self.keep_last).copied().collect();
        for (&step, &is_complete) in &steps {
            if keep.contains(&step) || (!is_complete && step > newest) {
                continue;
            }
            let step_dir = layout::checkpoint_dir(&self.dir, step);
            // Manifest first: a reader never sees a manifest whose files are half deleted.
            self.storage.delete(&format!("{step_dir}/{MANIFEST_FILE}")).await?;
            self.storage.delete_prefix(&step_dir).await?;
            tracing::debug!(step, "deleted old checkpoint");
        }
        Ok(())
    }
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
