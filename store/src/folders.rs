//! Whole folders between a store and the local disk: a prefix downloaded into a local
//! folder (resumable: files already there with the right size are kept), and the files of
//! a local folder uploaded under a prefix.

use std::path::Path as FsPath;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use tokio::io::AsyncWriteExt;

use super::{Storage, StorageError, trim_slashes};

/// What [`Storage::download_dir`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DownloadSummary {
    /// Objects fetched.
    pub downloaded: usize,
    /// Objects skipped because a local file of the same size was already there.
    pub skipped: usize,
    /// Bytes fetched.
    pub bytes: u64,
}

impl Storage {
    /// Copies every object under `prefix` into `local_dir`, keeping the relative layout
    /// (`{prefix}/a/b.bin` becomes `{local_dir}/a/b.bin`), e.g. a teacher model folder.
    ///
    /// A local file whose size already matches the object's is skipped: the folder is a
    /// cache of immutable objects, so an interrupted download resumes where it stopped.
    /// Each file is streamed to `{name}.part` and renamed when complete, so a partial file
    /// never has the final name. Fails with [`StorageError::NotFound`] when nothing is
    /// under `prefix` (almost always a wrong path).
    pub async fn download_dir(
        &self,
        prefix: &str,
        local_dir: impl AsRef<FsPath>,
    ) -> Result<DownloadSummary, StorageError> {
        let local_dir = local_dir.as_ref();
        let prefix = trim_slashes(prefix);
        let objects = self.list_sizes(prefix).await?;
        if objects.is_empty() {
            return Err(StorageError::NotFound {
                url: self.url(),
                path: prefix.to_string(),
            });
        }
        let mut summary = DownloadSummary::default();
        for (path, size) in objects {
            let rel = if prefix.is_empty() {
                path.as_str()
            } else {
                path.strip_prefix(prefix)
                    .and_then(|r| r.strip_prefix('/'))
                    .unwrap_or(&path)
            };
            let dest = local_dir.join(rel);
            if std::fs::metadata(&dest)
                .map(|m| m.is_file() && m.len() == size)
                .unwrap_or(false)
            {
                summary.skipped += 1;
                continue;
            }
            self.download_file(&path, size, &dest).await?;
            summary.downloaded += 1;
            summary.bytes += size;
        }
        Ok(summary)
    }

    /// Writes every file directly in `local_dir` to `{prefix}/{file name}`, one after
    /// another in the folder's listing order (sub-folders are not descended into), e.g. a
    /// model folder; returns the paths written, relative to the root.
    pub async fn upload_dir(&self, prefix: &str, local_dir: impl AsRef<FsPath>) -> Result<Vec<String>, StorageError> {
        let local_dir = local_dir.as_ref();
        let prefix = trim_slashes(prefix);
        let read_err = |op: &'static str, local: &FsPath, path: &str| {
            let (url, path, local) = (self.url(), path.to_string(), local.to_path_buf());
            move |e: std::io::Error| StorageError::LocalRead {
                op,
                url,
                path,
                local,
                source: Arc::new(e),
            }
        };
        let mut entries = tokio::fs::read_dir(local_dir)
            .await
            .map_err(read_err("list", local_dir, prefix))?;
        let mut written = Vec::new();
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(read_err("list", local_dir, prefix))?
        {
            let local = entry.path();
            let kind = entry.file_type().await.map_err(read_err("stat", &local, prefix))?;
            if !kind.is_file() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let bytes = tokio::fs::read(&local).await.map_err(read_err("read", &local, &path))?;
            self.put(&path, bytes.into()).await?;
            written.push(path);
        }
        Ok(written)
    }

    async fn download_file(&self, path: &str, size: u64, dest: &FsPath) -> Result<(), StorageError> {
        let local_err = |op: &'static str, local: &FsPath| {
            let (url, path, local) = (self.url(), path.to_string(), local.to_path_buf());
            move |e: std::io::Error| StorageError::Local {
                op,
                url,
                path,
                local,
                source: Arc::new(e),
            }
        };
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(local_err("create the folder of", dest))?;
        }
        let mut part_name = dest.file_name().unwrap_or_default().to_os_string();
        part_name.push(".part");
        let part = dest.with_file_name(part_name);

        let location = self.location(path)?;
        let result = self.store.get(&location).await.map_err(self.store_err("get", path))?;
        let mut stream = result.into_stream();
        let mut file = tokio::fs::File::create(&part)
            .await
            .map_err(local_err("create", &part))?;
        let mut got = 0u64;
        while let Some(chunk) = stream.try_next().await.map_err(self.store_err("read", path))? {
            file.write_all(&chunk).await.map_err(local_err("write", &part))?;
            got += chunk.len() as u64;
        }
        file.flush().await.map_err(local_err("flush", &part))?;
        drop(file);
        if got != size {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(StorageError::SizeMismatch {
                url: self.url(),
                path: path.to_string(),
                expected: size,
                got,
            });
        }
        tokio::fs::rename(&part, dest)
            .await
            .map_err(local_err("rename into", dest))?;
        Ok(())
    }
}
