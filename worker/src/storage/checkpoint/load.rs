//! Finding the newest intact checkpoint: the step `latest.json` names, else older complete
//! steps, each verified file by file against its manifest before it is used.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use surgery_core::layout;

use super::manifest::{MANIFEST_FILE, Manifest, scan, sha256_hex, step_dir_name, validate_name};
use super::{CheckpointError, Checkpointer, Restored, SkippedCheckpoint};
use crate::storage::store::StorageError;

/// How many files of one checkpoint are read at once when verifying.
const READ_CONCURRENCY: usize = 4;

impl Checkpointer {
    pub(super) async fn find_latest(&self) -> Result<Option<Restored>, CheckpointError> {
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
