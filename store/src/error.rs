//! [`StorageError`]: what went wrong with a store, naming its URL and the path.

use std::path::PathBuf;
use std::sync::Arc;

/// Errors of [`Storage`](super::Storage). Each names the store's URL and the path, and says what to check.
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

    /// `SURGERY_STORE_FAULTS` (tests only) does not parse.
    #[error("{0}")]
    BadFaultPlan(String),

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

    /// A write or delete of a path another job's storage holds (a forked job's reused
    /// output): it is that job's object, read here in place, never changed from here.
    #[error("refusing to {op} `{path}` under `{url}`: it is a reused output that `{owner}` holds")]
    Linked {
        op: &'static str,
        url: String,
        path: String,
        owner: String,
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
