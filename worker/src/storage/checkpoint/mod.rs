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
//!
//! Here: [`Checkpointer`] and its errors; `manifest`: the manifest, file names and step
//! folders; `save`: the background save and retention; `load`: finding and verifying
//! the newest intact checkpoint.

mod load;
mod manifest;
mod save;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use super::store::{Storage, StorageError};
pub use manifest::{FileEntry, MANIFEST_FILE, Manifest, sha256_hex};
use manifest::{scan, validate_name};
use save::SaveJob;

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
}
