//! Object storage and checkpoints (DESIGN.md, "Object store layout").
//!
//! - [`store`]: [`Storage`], one object store (a local folder by default; `s3://`, `gs://`,
//!   `az://` with their standard credential environment; `memory://` for tests) plus a root
//!   prefix, with an async API: put (multipart when large), get, list, delete, and
//!   download of a whole prefix to a local folder.
//! - [`checkpoint`]: [`Checkpointer`], background checkpoint saves from a snapshot (training
//!   does not wait on the network), made visible by a manifest written last, verified by
//!   sha256 on load with fallback to the previous checkpoint, and keep-last-K retention.
//! - [`tensors`]: named tensors to and from safetensors bytes, the snapshot format.
//! - [`snapshot`]: [`SnapshotWriter`], a device-side copy of the training state handed to a
//!   writer thread, so a checkpoint costs the training loop a copy, not a host transfer.

pub mod checkpoint;
pub mod snapshot;
/// The object store by URL lives in its own crate (surgery-store), which the coordinator
/// shares to serve a job's artifacts.
pub use surgery_store as store;
pub mod tensors;

pub use checkpoint::{CheckpointError, Checkpointer, FileEntry, MANIFEST_FILE, Manifest, Restored, SkippedCheckpoint};
pub use snapshot::SnapshotWriter;
pub use store::{DEFAULT_PART_SIZE, DownloadSummary, Links, MIN_PART_SIZE, Storage, StorageError};
pub use tensors::{TensorBytesError, from_bytes, to_bytes, try_to_bytes};
