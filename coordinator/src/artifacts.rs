//! A job's artifacts, served to users (`surgeryctl previews`, the pages): only paths a
//! task of the job reported in its result, read from the object store the workers write
//! (`{object_store_url}/jobs/{job}/{path}`), so the coordinator never becomes a way to read
//! anything else in the store.

use crate::model::TaskRecord;
use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
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

/// The artifact's size and its bytes from the object store, as a stream of chunks of
/// [`CHUNK`] bytes (the last one shorter), so a large artifact never sits whole in the
/// coordinator's memory.
pub async fn read(
    store_url: &str,
    job_id: &str,
    path: &str,
) -> Result<(u64, BoxStream<'static, Result<Bytes, ServiceError>>), ServiceError> {
    let storage = Storage::from_url(store_url)
        .map_err(|e| {
            ServiceError::new(
                ErrorKind::Unavailable,
                format!("the coordinator cannot open its object store: {e}"),
            )
        })?
        .join(&layout::job_root(job_id));
    let (size, stream) = storage.get_stream(path).await.map_err(|e| match e {
        StorageError::NotFound { .. } => ServiceError::new(
            ErrorKind::NotFound,
            format!("job {job_id} lists {path} but the object store no longer has it ({e})"),
        ),
        other => ServiceError::new(ErrorKind::Unavailable, format!("reading {path}: {other}")),
    })?;
    let path = path.to_string();
    let chunks =
        rechunk(stream.map_err(move |e| ServiceError::new(ErrorKind::Unavailable, format!("reading {path}: {e}"))));
    Ok((size, chunks))
}

/// The bytes of `stream` regrouped into chunks of exactly [`CHUNK`] bytes (the last one
/// shorter), whatever sizes the store reads in.
fn rechunk<E: Send + 'static>(
    stream: impl Stream<Item = Result<Bytes, E>> + Send + 'static,
) -> BoxStream<'static, Result<Bytes, E>> {
    let state = (Box::pin(stream), BytesMut::new(), false);
    futures::stream::unfold(state, |(mut stream, mut buffer, mut ended)| async move {
        loop {
            if buffer.len() >= CHUNK || (ended && !buffer.is_empty()) {
                let n = buffer.len().min(CHUNK);
                let chunk = buffer.split_to(n).freeze();
                return Some((Ok(chunk), (stream, buffer, ended)));
            }
            if ended {
                return None;
            }
            match stream.next().await {
                Some(Ok(bytes)) => buffer.extend_from_slice(&bytes),
                Some(Err(e)) => return Some((Err(e), (stream, buffer, true))),
                None => ended = true,
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn chunks_are_regrouped_to_the_chunk_size() {
        let pieces: Vec<Result<Bytes, ()>> = (0..5).map(|i| Ok(Bytes::from(vec![i as u8; CHUNK / 2 + 3]))).collect();
        let total: usize = pieces.iter().map(|p| p.as_ref().unwrap().len()).sum();
        let out: Vec<Bytes> = rechunk(futures::stream::iter(pieces))
            .map(|c| c.unwrap())
            .collect()
            .await;
        assert!(out[..out.len() - 1].iter().all(|c| c.len() == CHUNK));
        assert_eq!(out.iter().map(Bytes::len).sum::<usize>(), total);
        assert!(
            rechunk(futures::stream::iter(Vec::<Result<Bytes, ()>>::new()))
                .next()
                .await
                .is_none()
        );
    }
}
