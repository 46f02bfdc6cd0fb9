//! One background save: the files uploaded (hashed while they upload), then the step's
//! manifest (the commit point), then `latest.json`, then retention.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use surgery_core::layout;

use super::manifest::{FORMAT, FileEntry, MANIFEST_FILE, Manifest, scan, sha256_hex, step_dir_name};
use super::{CheckpointError, lock};
use crate::storage::store::{Storage, StorageError};

/// One background save: upload, manifests, retention.
pub(super) struct SaveJob {
    pub(super) storage: Storage,
    pub(super) dir: String,
    pub(super) keep_last: usize,
    pub(super) step: u64,
    pub(super) files: Vec<(String, Bytes)>,
    pub(super) meta: serde_json::Value,
    pub(super) durable: Arc<Mutex<Option<u64>>>,
}

impl SaveJob {
    fn url(&self) -> String {
        self.storage.join(&self.dir).url()
    }

    pub(super) async fn run(self) -> Result<(), CheckpointError> {
        let (step, url) = (self.step, self.url());
        let failed = |e: StorageError| CheckpointError::SaveFailed {
            step,
            url: url.clone(),
            source: Arc::new(e),
        };
        let step_dir = layout::checkpoint_dir(&self.dir, step);
        let started = std::time::Instant::now();
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
        let bytes = manifest.files.iter().map(|f| f.size).sum();
        crate::metrics::checkpoint_saved(bytes, started.elapsed());

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
