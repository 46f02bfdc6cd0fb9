//! [`Storage`]: one object store (local folder, memory, S3, GCS or Azure) plus a root prefix,
//! with an async API over `/`-separated paths relative to that root.
//!
//! Paths are relative strings such as `jobs/j1/cache/block-03/shard-0000.safetensors`
//! (the helpers in `surgery_core::layout` name them). Every error names the store's URL and
//! the path, so a failure in a log says where to look.
//!
//! Here: [`Storage`], its URLs and single objects; `error`: [`StorageError`]; `folders`:
//! whole folders to and from the local disk.

mod error;
pub mod faults;
mod folders;
mod links;
#[cfg(test)]
mod tests;

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

pub use error::StorageError;
pub use folders::DownloadSummary;
pub use links::Links;

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
    /// Paths read from other roots (a forked job's reused outputs); never written here.
    links: Option<Arc<Links>>,
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
        Self::open(url)?.with_env_faults()
    }

    /// Wraps the store in [`faults::FaultyStore`] when `SURGERY_STORE_FAULTS` asks for it
    /// (tests only); a local store then stops offering its folder, so every read goes
    /// through the faults too.
    fn with_env_faults(self) -> Result<Storage, StorageError> {
        let Ok(text) = std::env::var(faults::FAULTS_ENV) else {
            return Ok(self);
        };
        let plan = faults::FaultPlan::parse(&text).map_err(StorageError::BadFaultPlan)?;
        let faulty = faults::FaultyStore::new(self.store.clone(), plan);
        Ok(Storage {
            store: Arc::new(faulty),
            local_dir: None,
            ..self
        })
    }

    fn open(url: &str) -> Result<Storage, StorageError> {
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
            links: None,
        }
    }

    /// This storage, reading the paths `links` names from their own roots. Writing or
    /// deleting a linked path is refused: those objects belong to another job.
    pub fn with_links(mut self, links: Links) -> Storage {
        self.links = (!links.is_empty()).then(|| Arc::new(links));
        self
    }

    /// The storage a read of `path` goes to when `path` is linked.
    fn linked(&self, path: &str) -> Option<&Storage> {
        self.links.as_ref()?.target(trim_slashes(path))
    }

    /// Refuses a write or delete of a linked path.
    fn own(&self, op: &'static str, path: &str) -> Result<(), StorageError> {
        match self.linked(path) {
            Some(owner) => Err(StorageError::Linked {
                op,
                url: self.url(),
                path: trim_slashes(path).to_string(),
                owner: owner.url(),
            }),
            None => Ok(()),
        }
    }

    /// A storage rooted at `sub` below this one (e.g. a job's root), sharing the client.
    ///
    /// `sub` is not validated here; a bad segment surfaces as [`StorageError::InvalidPath`]
    /// on the first operation.
    pub fn join(&self, sub: &str) -> Storage {
        let sub = trim_slashes(sub);
        if let Some(owner) = self.linked(sub) {
            return owner.join(sub);
        }
        let root = match (self.root.is_empty(), sub.is_empty()) {
            (_, true) => self.root.clone(),
            (true, false) => sub.to_string(),
            (false, false) => format!("{}/{sub}", self.root),
        };
        // Links name paths relative to this root; below it they would not match.
        Storage {
            root,
            links: None,
            ..self.clone()
        }
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
        self.own("write", path)?;
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
        if let Some(owner) = self.linked(path) {
            return Box::pin(owner.get(path)).await;
        }
        let location = self.location(path)?;
        let result = self.store.get(&location).await.map_err(self.store_err("get", path))?;
        result.bytes().await.map_err(self.store_err("read", path))
    }

    /// The object at `path` as its size and a stream of its bytes, for objects too large
    /// to hold in memory at once (an artifact served to a user).
    pub async fn get_stream(
        &self,
        path: &str,
    ) -> Result<(u64, futures::stream::BoxStream<'static, Result<Bytes, StorageError>>), StorageError> {
        if let Some(owner) = self.linked(path) {
            return Box::pin(owner.get_stream(path)).await;
        }
        let location = self.location(path)?;
        let result = self.store.get(&location).await.map_err(self.store_err("get", path))?;
        let size = result.meta.size;
        let (url, rel) = (self.url(), trim_slashes(path).to_string());
        let stream = result
            .into_stream()
            .map_err(move |e| StorageError::Store {
                op: "read",
                url: url.clone(),
                path: rel.clone(),
                source: Arc::new(e),
            })
            .boxed();
        Ok((size, stream))
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
        if let Some(owner) = self.linked(path) {
            return Box::pin(owner.size_opt(path)).await;
        }
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
        if let Some(owner) = self.linked(prefix) {
            return Box::pin(owner.list_sizes(prefix)).await;
        }
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
        self.own("delete", path)?;
        let location = self.location(path)?;
        match self.store.delete(&location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.store_err("delete", path)(e)),
        }
    }

    /// Deletes every object under `prefix` (whole segments, as [`Storage::list`]); returns
    /// how many were listed for deletion.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<usize, StorageError> {
        self.own("delete", prefix)?;
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
}

const S3_HINT: &str = "set AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION (plus AWS_ENDPOINT, and \
                       AWS_ALLOW_HTTP=true for plain http, for an S3-compatible store)";
const GCS_HINT: &str = "set GOOGLE_SERVICE_ACCOUNT (a key file) or GOOGLE_APPLICATION_CREDENTIALS, or run with \
                        a GCP service account";
const AZURE_HINT: &str = "set AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY (or AZURE_STORAGE_SAS_KEY, \
                          a client secret, or a managed identity)";
