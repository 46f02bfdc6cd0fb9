//! [`Storage`]: one object store (local folder, memory, S3, GCS or Azure) plus a root prefix,
//! with an async API over `/`-separated paths relative to that root.
//!
//! Paths are relative strings such as `jobs/j1/cache/block-03/shard-0000.safetensors`
//! (the helpers in `surgery_core::layout` name them). Every error names the store's URL and
//! the path, so a failure in a log says where to look.

use std::fmt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use tokio::io::AsyncWriteExt;

/// Payloads larger than this go up as a multipart upload of parts this size.
///
/// 8 MiB: above S3's 5 MiB minimum part size, small enough that a few parts in flight
/// bound the memory an upload pins, large enough that a 10 GB checkpoint is ~1,300 parts
/// (S3 allows 10,000).
pub const DEFAULT_PART_SIZE: usize = 8 << 20;

/// The smallest part size [`Storage::with_part_size`] accepts: S3 rejects smaller
/// non-final parts.
pub const MIN_PART_SIZE: usize = 5 << 20;

/// How many parts of one multipart upload are in flight at once.
const PART_CONCURRENCY: usize = 4;

/// Errors of [`Storage`]. Each names the store's URL and the path, and says what to check.
///
/// Sources are behind `Arc` so the error is `Clone`: a failed background upload is reported
/// to every later caller of `Checkpointer::wait`.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The URL's scheme or shape is not one we support.
    #[error(
        "unsupported storage URL `{url}`: {reason}; use a local path, file:///abs/path, \
         file://relative/path, memory://, s3://bucket/prefix, gs://bucket/prefix or az://container/prefix"
    )]
    UnsupportedUrl { url: String, reason: String },

    /// A local store's root folder could not be created.
    #[error(
        "cannot create the local storage folder {} for `{url}`: {source}; check that the path is \
         writable, or pick another storage URL",
        path.display()
    )]
    CreateRoot {
        url: String,
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },

    /// The object store client could not be built (usually missing configuration).
    #[error("cannot open `{url}`: {source}; {hint}")]
    Open {
        url: String,
        hint: &'static str,
        #[source]
        source: Arc<object_store::Error>,
    },

    /// A path is not a valid object path.
    #[error(
        "invalid object path `{path}` under `{url}`: {source}; use a relative path of non-empty \
         `/`-separated segments, without `.` or `..`"
    )]
    InvalidPath {
        url: String,
        path: String,
        #[source]
        source: Arc<object_store::path::Error>,
    },

    /// The object does not exist.
    #[error("`{url}/{path}` does not exist; check the path, or whether the stage that writes it has run")]
    NotFound { url: String, path: String },

    /// The store refused or failed an operation (after object_store's own retries).
    #[error("{op} `{url}/{path}` failed: {source}; check the network, the credentials and the permissions for `{url}`")]
    Store {
        op: &'static str,
        url: String,
        path: String,
        #[source]
        source: Arc<object_store::Error>,
    },

    /// Writing a downloaded object to the local disk failed.
    #[error(
        "{op} local file {} (downloading `{url}/{path}`) failed: {source}; check free disk space and \
         permissions",
        local.display()
    )]
    Local {
        op: &'static str,
        url: String,
        path: String,
        local: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },

    /// Reading a local file to upload failed.
    #[error(
        "{op} local file {} (uploading to `{url}/{path}`) failed: {source}; check that the folder exists \
         and is readable",
        local.display()
    )]
    LocalRead {
        op: &'static str,
        url: String,
        path: String,
        local: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },

    /// A download ended with a different size than the store listed.
    #[error(
        "downloaded `{url}/{path}` has {got} bytes, but the store listed {expected}; the object \
         changed during the download, retry"
    )]
    SizeMismatch {
        url: String,
        path: String,
        expected: u64,
        got: u64,
    },
}

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

/// One object store plus a root prefix inside it; cheap to clone (the client is shared).
///
/// All paths given to its methods are relative to the root; [`Storage::list`] returns paths
/// relative to the root too, so they can be passed back to [`Storage::get`].
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    /// The store's own URL (bucket, folder), without `root`.
    base_url: String,
    /// A `/`-separated prefix inside the store, without leading or trailing `/`; may be empty.
    root: String,
    /// For a local store: the folder `base_url` names.
    local_dir: Option<PathBuf>,
    part_size: usize,
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storage")
            .field("url", &self.url())
            .field("part_size", &self.part_size)
            .finish()
    }
}

impl fmt::Display for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url())
    }
}

fn join_url(base: &str, root: &str) -> String {
    if root.is_empty() {
        base.to_string()
    } else if base.ends_with('/') {
        format!("{base}{root}")
    } else {
        format!("{base}/{root}")
    }
}

fn trim_slashes(s: &str) -> &str {
    s.trim_matches('/')
}

impl Storage {
    /// Opens the store a URL names:
    ///
    /// - a plain path (`/data/surgery`, `.demo/store`): a local folder;
    /// - `file:///abs/path`, or `file://relative/path` (relative to the current directory):
    ///   a local folder;
    /// - `memory://` or `memory://prefix`: a new, empty in-memory store (each call makes
    ///   its own; for tests);
    /// - `s3://bucket/prefix` (also `s3a://`): S3 or an S3-compatible store, configured from
    ///   the `AWS_*` environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
    ///   `AWS_ENDPOINT` for an S3-compatible endpoint, `AWS_ALLOW_HTTP` for plain http);
    /// - `gs://bucket/prefix`: Google Cloud Storage, from the `GOOGLE_*` environment
    ///   (`GOOGLE_SERVICE_ACCOUNT`, `GOOGLE_APPLICATION_CREDENTIALS`, ...);
    /// - `az://container/prefix` (also `abfs://`, `abfss://`, `azure://`, `adl://`, and
    ///   `abfss://container@account.dfs.core.windows.net/prefix`): Azure Blob Storage, from
    ///   the `AZURE_*` environment (`AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`, ...).
    ///
    /// Local folders are created if missing, and written with fsync so a checkpoint that
    /// was reported durable survives a power loss. Cloud clients are built here without
    /// touching the network; credentials are first used by the first request.
    pub fn from_url(url: &str) -> Result<Storage, StorageError> {
        let unsupported = |reason: &str| StorageError::UnsupportedUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let Some((scheme, rest)) = url.split_once("://") else {
            if url.is_empty() {
                return Err(unsupported("the URL is empty"));
            }
            return Self::local(url, FsPath::new(url));
        };
        let scheme = scheme.to_ascii_lowercase();
        if scheme == "file" {
            if rest.is_empty() {
                return Err(unsupported("file:// names no folder"));
            }
            // `file:///abs` leaves `/abs`; `file://rel/path` leaves `rel/path`, which the OS
            // resolves against the current directory.
            return Self::local(url, FsPath::new(rest));
        }
        if scheme == "memory" {
            return Ok(Storage::new(Arc::new(InMemory::new()), "memory://").join(rest));
        }
        // Cloud URLs: `scheme://host/prefix`, where host is the bucket or container.
        let (host, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if host.is_empty() {
            return Err(unsupported("the URL names no bucket or container"));
        }
        let base_url = format!("{scheme}://{host}");
        let open = |hint: &'static str| {
            move |e: object_store::Error| StorageError::Open {
                url: url.to_string(),
                hint,
                source: Arc::new(e),
            }
        };
        let store: Arc<dyn ObjectStore> = match scheme.as_str() {
            "s3" | "s3a" => Arc::new(
                AmazonS3Builder::from_env()
                    .with_url(format!("s3://{host}"))
                    .build()
                    .map_err(open(S3_HINT))?,
            ),
            "gs" => Arc::new(
                GoogleCloudStorageBuilder::from_env()
                    .with_url(&base_url)
                    .build()
                    .map_err(open(GCS_HINT))?,
            ),
            "az" | "abfs" | "abfss" | "azure" | "adl" => Arc::new(
                MicrosoftAzureBuilder::from_env()
                    .with_url(&base_url)
                    .build()
                    .map_err(open(AZURE_HINT))?,
            ),
            _ => return Err(unsupported(&format!("unknown scheme `{scheme}://`"))),
        };
        Ok(Storage::new(store, &base_url).join(prefix))
    }

    fn local(url: &str, path: &FsPath) -> Result<Storage, StorageError> {
        let create_err = |source: std::io::Error| StorageError::CreateRoot {
            url: url.to_string(),
            path: path.to_path_buf(),
            source: Arc::new(source),
        };
        std::fs::create_dir_all(path).map_err(create_err)?;
        let canonical = std::fs::canonicalize(path).map_err(create_err)?;
        let store = LocalFileSystem::new_with_prefix(&canonical)
            .map_err(|e| StorageError::Open {
                url: url.to_string(),
                hint: "check that the folder exists and is readable",
                source: Arc::new(e),
            })?
            // Deleting a checkpoint's last file removes its empty step folder.
            .with_automatic_cleanup(true)
            // A checkpoint reported durable must survive a crash of the machine, as it
            // would on S3.
            .with_fsync(true);
        let base_url = format!("file://{}", canonical.display());
        let mut storage = Storage::new(Arc::new(store), &base_url);
        storage.local_dir = Some(canonical);
        Ok(storage)
    }

    /// Wraps an existing object store (a custom or wrapped one, e.g. in tests); `url` is
    /// only used in messages.
    pub fn new(store: Arc<dyn ObjectStore>, url: &str) -> Storage {
        Storage {
            store,
            base_url: url.to_string(),
            root: String::new(),
            local_dir: None,
            part_size: DEFAULT_PART_SIZE,
        }
    }

    /// A storage rooted at `sub` below this one (e.g. a job's root), sharing the client.
    ///
    /// `sub` is not validated here; a bad segment surfaces as [`StorageError::InvalidPath`]
    /// on the first operation.
    pub fn join(&self, sub: &str) -> Storage {
        let sub = trim_slashes(sub);
        let root = match (self.root.is_empty(), sub.is_empty()) {
            (_, true) => self.root.clone(),
            (true, false) => sub.to_string(),
            (false, false) => format!("{}/{sub}", self.root),
        };
        Storage { root, ..self.clone() }
    }

    /// Sets the multipart part size (clamped to at least [`MIN_PART_SIZE`]).
    pub fn with_part_size(mut self, bytes: usize) -> Storage {
        self.part_size = bytes.max(MIN_PART_SIZE);
        self
    }

    /// The multipart part size.
    pub fn part_size(&self) -> usize {
        self.part_size
    }

    /// The URL of this storage's root, for messages (e.g. `s3://bucket/prefix/jobs/j1`).
    pub fn url(&self) -> String {
        join_url(&self.base_url, &self.root)
    }

    /// For a local store, the folder its root maps to (so a local model can be read in
    /// place instead of copied); `None` for other stores.
    pub fn local_root(&self) -> Option<PathBuf> {
        let dir = self.local_dir.as_ref()?;
        Some(if self.root.is_empty() {
            dir.clone()
        } else {
            dir.join(&self.root)
        })
    }

    /// The underlying object store client (shared, not rooted at [`Storage::url`]).
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The full object path of a relative path.
    fn location(&self, rel: &str) -> Result<Path, StorageError> {
        let rel = trim_slashes(rel);
        let full = match (self.root.is_empty(), rel.is_empty()) {
            (_, true) => self.root.clone(),
            (true, false) => rel.to_string(),
            (false, false) => format!("{}/{rel}", self.root),
        };
        Path::parse(&full).map_err(|e| StorageError::InvalidPath {
            url: self.url(),
            path: rel.to_string(),
            source: Arc::new(e),
        })
    }

    /// A full object path back to a path relative to the root.
    fn relative(&self, location: &Path) -> String {
        let full = location.as_ref();
        if self.root.is_empty() {
            return full.to_string();
        }
        full.strip_prefix(self.root.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .unwrap_or(full)
            .to_string()
    }

    fn store_err(&self, op: &'static str, path: &str) -> impl FnOnce(object_store::Error) -> StorageError {
        let (url, path) = (self.url(), trim_slashes(path).to_string());
        move |e| match e {
            object_store::Error::NotFound { .. } => StorageError::NotFound { url, path },
            e => StorageError::Store {
                op,
                url,
                path,
                source: Arc::new(e),
            },
        }
    }

    /// Writes `data` at `path`, replacing any object there. Payloads above the part size go
    /// up as a multipart upload with a few parts in flight; smaller ones as one put. Either
    /// way the object appears whole or not at all (a failed multipart upload is aborted).
    pub async fn put(&self, path: &str, data: Bytes) -> Result<(), StorageError> {
        let location = self.location(path)?;
        if data.len() <= self.part_size {
            self.store
                .put(&location, data.into())
                .await
                .map_err(self.store_err("put", path))?;
            return Ok(());
        }
        let upload = self
            .store
            .put_multipart(&location)
            .await
            .map_err(self.store_err("start multipart upload of", path))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.part_size);
        let mut rest = data;
        while !rest.is_empty() {
            // Bound the parts in flight (each holds a slice of `data`, not a copy).
            if let Err(e) = writer.wait_for_capacity(PART_CONCURRENCY).await {
                // Best effort: a failed abort leaves parts the store's lifecycle rules expire.
                let _ = writer.abort().await;
                return Err(self.store_err("upload a part of", path)(e));
            }
            let n = self.part_size.min(rest.len());
            writer.put(rest.split_to(n));
        }
        // `finish` aborts the upload itself when a part or the completion fails.
        writer
            .finish()
            .await
            .map_err(self.store_err("complete multipart upload of", path))?;
        Ok(())
    }

    /// Reads the object at `path`; [`StorageError::NotFound`] when it does not exist.
    pub async fn get(&self, path: &str) -> Result<Bytes, StorageError> {
        let location = self.location(path)?;
        let result = self.store.get(&location).await.map_err(self.store_err("get", path))?;
        result.bytes().await.map_err(self.store_err("read", path))
    }

    /// Reads the object at `path`; `None` when it does not exist.
    pub async fn get_opt(&self, path: &str) -> Result<Option<Bytes>, StorageError> {
        match self.get(path).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(StorageError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The size of the object at `path`; `None` when it does not exist.
    pub async fn size_opt(&self, path: &str) -> Result<Option<u64>, StorageError> {
        let location = self.location(path)?;
        match self.store.head(&location).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.store_err("head", path)(e)),
        }
    }

    /// Every object under `prefix` (recursively; `""` for the whole root) with its size,
    /// as paths relative to the root, sorted.
    ///
    /// Prefixes match whole segments: `a/b` lists `a/b/x` but not `a/bc`.
    pub async fn list_sizes(&self, prefix: &str) -> Result<Vec<(String, u64)>, StorageError> {
        let location = self.location(prefix)?;
        let prefix_arg = (!location.as_ref().is_empty()).then_some(&location);
        let metas: Vec<_> = self
            .store
            .list(prefix_arg)
            .try_collect()
            .await
            .map_err(self.store_err("list", prefix))?;
        let mut out: Vec<(String, u64)> = metas.iter().map(|m| (self.relative(&m.location), m.size)).collect();
        out.sort();
        Ok(out)
    }

    /// Every object under `prefix`, as paths relative to the root, sorted. See
    /// [`Storage::list_sizes`].
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        Ok(self.list_sizes(prefix).await?.into_iter().map(|(p, _)| p).collect())
    }

    /// Deletes the object at `path`. Deleting a missing object succeeds, so a retried or
    /// concurrent clean-up does not fail.
    pub async fn delete(&self, path: &str) -> Result<(), StorageError> {
        let location = self.location(path)?;
        match self.store.delete(&location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.store_err("delete", path)(e)),
        }
    }

    /// Deletes every object under `prefix` (whole segments, as [`Storage::list`]); returns
    /// how many were listed for deletion.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<usize, StorageError> {
        let objects = self.list(prefix).await?;
        let locations = objects
            .iter()
            .map(|p| self.location(p))
            .collect::<Result<Vec<_>, _>>()?;
        let n = locations.len();
        let results: Vec<_> = self
            .store
            .delete_stream(futures::stream::iter(locations.into_iter().map(Ok)).boxed())
            .collect()
            .await;
        for result in results {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.store_err("delete under", prefix)(e)),
            }
        }
        Ok(n)
    }

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

const S3_HINT: &str = "set AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION (plus AWS_ENDPOINT, and \
                       AWS_ALLOW_HTTP=true for plain http, for an S3-compatible store)";
const GCS_HINT: &str = "set GOOGLE_SERVICE_ACCOUNT (a key file) or GOOGLE_APPLICATION_CREDENTIALS, or run with \
                        a GCP service account";
const AZURE_HINT: &str = "set AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY (or AZURE_STORAGE_SAS_KEY, \
                          a client secret, or a managed identity)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_to_stores_and_roots() {
        let s = Storage::from_url("memory://").unwrap();
        assert_eq!(s.url(), "memory://");
        let s = Storage::from_url("memory://a/b/").unwrap();
        assert_eq!(s.url(), "memory://a/b");
        assert_eq!(s.join("jobs/j1").url(), "memory://a/b/jobs/j1");
        assert_eq!(s.location("x/y").unwrap().as_ref(), "a/b/x/y");

        // Clients are built offline; the bucket and prefix come from the URL.
        let s = Storage::from_url("s3://bucket/some/prefix").unwrap();
        assert_eq!(s.url(), "s3://bucket/some/prefix");
        assert_eq!(s.location("f").unwrap().as_ref(), "some/prefix/f");
        let s = Storage::from_url("gs://bucket").unwrap();
        assert_eq!(s.url(), "gs://bucket");

        for bad in ["", "ftp://x/y", "s3:///prefix", "file://"] {
            let err = Storage::from_url(bad).unwrap_err();
            assert!(matches!(err, StorageError::UnsupportedUrl { .. }), "{bad}: {err}");
            assert!(err.to_string().contains("s3://bucket/prefix"), "{err}");
        }
    }

    #[test]
    fn local_urls_create_their_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let abs = tmp.path().join("a/b");
        let s = Storage::from_url(&format!("file://{}", abs.display())).unwrap();
        assert!(abs.is_dir());
        assert_eq!(
            s.url(),
            format!("file://{}", std::fs::canonicalize(&abs).unwrap().display())
        );
        let plain = tmp.path().join("plain");
        Storage::from_url(plain.to_str().unwrap()).unwrap();
        assert!(plain.is_dir());

        let err = Storage::from_url("file:///proc/surgery-cannot-create-this").unwrap_err();
        assert!(matches!(err, StorageError::CreateRoot { .. }), "{err}");
    }

    #[test]
    fn bad_paths_are_typed_errors() {
        let s = Storage::from_url("memory://root").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        for bad in ["a//b", "a/../b", "a/./b"] {
            let err = rt.block_on(s.get(bad)).unwrap_err();
            assert!(matches!(err, StorageError::InvalidPath { .. }), "{bad}: {err}");
            assert!(err.to_string().contains("memory://root"), "{err}");
        }
        let err = rt.block_on(s.get("missing/file")).unwrap_err();
        assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("memory://root/missing/file"), "{err}");
    }

    #[test]
    fn a_folder_uploads_file_by_file_and_downloads_back() {
        let tmp = tempfile::tempdir().unwrap();
        let folder = tmp.path().join("student");
        std::fs::create_dir_all(folder.join("nested")).unwrap();
        std::fs::write(folder.join("config.json"), b"{}").unwrap();
        std::fs::write(folder.join("model.safetensors"), vec![7u8; 1000]).unwrap();
        std::fs::write(folder.join("nested/skipped.bin"), b"x").unwrap();
        let s = Storage::from_url("memory://root").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut written = rt.block_on(s.upload_dir("jobs/j1/export/", &folder)).unwrap();
        written.sort();
        assert_eq!(
            written,
            ["jobs/j1/export/config.json", "jobs/j1/export/model.safetensors"]
        );
        assert_eq!(
            rt.block_on(s.get("jobs/j1/export/model.safetensors")).unwrap().len(),
            1000
        );

        let back = tmp.path().join("back");
        let summary = rt.block_on(s.join("jobs/j1/export").download_dir("", &back)).unwrap();
        assert_eq!(summary.downloaded, 2);
        assert_eq!(std::fs::read(back.join("config.json")).unwrap(), b"{}");

        let err = rt.block_on(s.upload_dir("x", tmp.path().join("missing"))).unwrap_err();
        assert!(matches!(err, StorageError::LocalRead { .. }), "{err}");
    }
}
