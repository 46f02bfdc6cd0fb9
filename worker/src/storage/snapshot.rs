//! Checkpoints that barely stall training: [`SnapshotWriter::save`] copies the state on
//! its own device (a device-to-device copy, milliseconds for gigabytes on a GPU) and hands
//! the copy to a writer thread, which moves it to the host, serialises it and gives it to
//! the [`Checkpointer`] (which uploads in the background and makes it visible with its
//! manifest). The training loop only waits when the writer is still busy with the previous
//! snapshot (at most one snapshot waits, so memory stays bounded).

use super::checkpoint::{CheckpointError, Checkpointer, Restored};
use super::tensors;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use tch::Tensor;

enum Message {
    Save {
        step: u64,
        file: String,
        tensors: Vec<(String, Tensor)>,
        meta: serde_json::Value,
    },
    Flush(SyncSender<Result<(), CheckpointError>>),
}

pub struct SnapshotWriter {
    tx: Option<SyncSender<Message>>,
    thread: Option<JoinHandle<()>>,
    checkpoints: std::sync::Arc<Checkpointer>,
}

fn writer(checkpoints: std::sync::Arc<Checkpointer>, rx: Receiver<Message>) {
    let mut failed: Option<CheckpointError> = None;
    for message in rx {
        match message {
            Message::Save {
                step,
                file,
                tensors,
                meta,
            } => {
                if failed.is_some() {
                    continue;
                }
                let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
                let bytes = tensors::to_bytes(&refs);
                drop(tensors);
                if let Err(err) = checkpoints.save(step, vec![(file, bytes)], meta) {
                    failed = Some(err);
                }
            }
            Message::Flush(reply) => {
                let result = match &failed {
                    Some(err) => Err(err.clone()),
                    None => checkpoints.wait(),
                };
                let _ = reply.send(result);
            }
        }
    }
}

impl SnapshotWriter {
    pub fn new(checkpoints: Checkpointer) -> SnapshotWriter {
        let checkpoints = std::sync::Arc::new(checkpoints);
        let (tx, rx) = sync_channel(1);
        let thread = {
            let checkpoints = checkpoints.clone();
            std::thread::Builder::new()
                .name("checkpoint-writer".into())
                .spawn(move || writer(checkpoints, rx))
                .expect("spawn the checkpoint writer")
        };
        SnapshotWriter {
            tx: Some(tx),
            thread: Some(thread),
            checkpoints,
        }
    }

    /// Snapshots `state` (copies on its device) as checkpoint `step`, one file named `file`;
    /// returns as soon as the copy is queued. Errors of earlier saves surface in [`flush`].
    ///
    /// [`flush`]: SnapshotWriter::flush
    pub fn save(&self, step: u64, file: &str, state: &[(String, Tensor)], meta: serde_json::Value) {
        let tensors = tch::no_grad(|| state.iter().map(|(n, t)| (n.clone(), t.copy())).collect());
        let message = Message::Save {
            step,
            file: file.to_string(),
            tensors,
            meta,
        };
        if let Some(tx) = &self.tx {
            let _ = tx.send(message);
        }
    }

    /// Waits until every snapshot handed over is durable; the first failure, if any.
    pub fn flush(&self) -> Result<(), CheckpointError> {
        let (reply, answer) = sync_channel(1);
        if let Some(tx) = &self.tx {
            let _ = tx.send(Message::Flush(reply));
        }
        answer.recv().unwrap_or(Ok(()))
    }

    pub fn latest(&self) -> Result<Option<Restored>, CheckpointError> {
        self.checkpoints.latest()
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Storage;
    use tch::{Device, Kind};

    #[test]
    fn snapshots_are_taken_at_save_time_and_flushed_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let storage = Storage::from_url(&dir.path().display().to_string()).unwrap();
        let writer = SnapshotWriter::new(Checkpointer::new(storage, "ckpt", 2, runtime.handle().clone()));
        let mut weight = Tensor::zeros([4], (Kind::Float, Device::Cpu));
        for step in 1..=3u64 {
            let _ = weight.fill_(step as f64);
            writer.save(
                step,
                "state.safetensors",
                &[("w".to_string(), weight.shallow_clone())],
                serde_json::json!({ "step": step }),
            );
            // Training goes on and changes the tensor right away.
            let _ = weight.fill_(-1.0);
        }
        writer.flush().unwrap();
        let latest = writer.latest().unwrap().unwrap();
        assert_eq!(latest.step, 3);
        let saved = crate::storage::tensors::from_bytes(&latest.files["state.safetensors"]).unwrap();
        assert_eq!(Vec::<f32>::try_from(&saved["w"]).unwrap(), vec![3.0; 4]);
    }
}
