//! A job's artifacts, served to users (`surgeryctl previews`, the pages): only paths a
//! task of the job reported in its result, read from the object store the workers write
//! (`{object_store_url}/jobs/{job}/{path}`), so the coordinator never becomes a way to read
//! anything else in the store.

use crate::model::TaskRecord;
use bytes::Bytes;
use surgery_core::layout;
use surgery_proto::v1::{ErrorKind, ServiceError};
use surgery_store::{Storage, StorageError};

/// Chunk size of the artifact stream (gRPC's default message limit is 4 MiB).
pub const CHUNK: usize = 1 << 20;

/// Whether a task of the job reported `path` as one of its artifacts.
pub fn is_listed(tasks: &[TaskRecord], path: &str) -> bool {
    tasks
        .iter()
        .any(|t| t.result.as_ref().is_some_and(|r| r.artifacts.iter().any(|a| a == path)))
}

/// The artifact's bytes from the object store.
pub async fn read(store_url: &str, job_id: &str, path: &str) -> Result<Bytes, ServiceError> {
    let storage = Storage::from_url(store_url)
        .map_err(|e| {
            ServiceError::new(
                ErrorKind::Unavailable,
                format!("the coordinator cannot open its object store: {e}"),
            )
        })?
        .join(&layout::job_root(job_id));
    storage.get(path).await.map_err(|e| match e {
        StorageError::NotFound { .. } => ServiceError::new(
            ErrorKind::NotFound,
            format!("job {job_id} lists {path} but the object store no longer has it ({e})"),
        ),
        other => ServiceError::new(ErrorKind::Unavailable, format!("reading {path}: {other}")),
    })
}
