//! Group commit: transitions hand their [`Batch`] to the committer under the state lock
//! (so batches queue in the order the transitions happened) and get a ticket; a single
//! thread writes everything queued so far in one redb transaction, then publishes the
//! highest ticket it made durable. A caller that must not answer before its change is
//! durable waits for its ticket (most do; a heartbeat that says "carry on" does not), so
//! nothing is acted on before it is on disk, while many concurrent calls share one fsync
//! instead of queueing behind one each. Every write reports its times (the whole
//! transaction, and redb's commit with the fsync) to the metrics.
//!
//! After each commit the committed events and log lines are broadcast to live watchers.
//! A failed write stops the process: the in-memory state is then ahead of the disk, and
//! a restart from the store is the only way back to a state the world has seen.

use crate::model::{Event, LogRecord};
use crate::store::{Batch, Store, WriteTimes};
use std::sync::{Arc, Condvar, Mutex};
use tokio::sync::{broadcast, watch};

pub type Ticket = u64;

struct Queue {
    pending: Batch,
    /// The ticket of the newest batch queued.
    last_ticket: Ticket,
    closed: bool,
}

pub struct Committer {
    queue: Arc<(Mutex<Queue>, Condvar)>,
    committed: watch::Receiver<Ticket>,
    events: broadcast::Sender<Arc<Event>>,
    logs: broadcast::Sender<Arc<LogRecord>>,
    /// Held by the thread while it writes; tests hold it to keep batches off the disk.
    #[cfg_attr(not(test), allow(dead_code))]
    writing: Arc<Mutex<()>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Committer {
    pub fn start(store: Arc<Store>, on_commit: impl Fn(WriteTimes) + Send + 'static) -> Committer {
        let queue = Arc::new((
            Mutex::new(Queue {
                pending: Batch::default(),
                last_ticket: 0,
                closed: false,
            }),
            Condvar::new(),
        ));
        let (committed_tx, committed) = watch::channel(0);
        let (events, _) = broadcast::channel(4096);
        let (logs, _) = broadcast::channel(4096);
        let writing = Arc::new(Mutex::new(()));
        let thread = {
            let writing = writing.clone();
            let queue = queue.clone();
            let events = events.clone();
            let logs = logs.clone();
            std::thread::Builder::new()
                .name("store-committer".into())
                .spawn(move || {
                    let (lock, ready) = &*queue;
                    loop {
                        let (batch, ticket) = {
                            let mut q = lock.lock().expect("committer queue");
                            while q.pending.is_empty() && !q.closed {
                                q = ready.wait(q).expect("committer queue");
                            }
                            if q.pending.is_empty() && q.closed {
                                return;
                            }
                            (std::mem::take(&mut q.pending), q.last_ticket)
                        };
                        let written = {
                            let _writing = writing.lock().expect("committer write gate");
                            store.write(&batch)
                        };
                        match written {
                            Ok(times) => on_commit(times),
                            Err(err) => {
                                tracing::error!(error = %err, "writing the store failed; stopping so a restart reloads a consistent state");
                                std::process::exit(70);
                            }
                        }
                        committed_tx.send_replace(ticket);
                        for event in batch.events {
                            let _ = events.send(Arc::new(event));
                        }
                        for line in batch.logs {
                            let _ = logs.send(Arc::new(line));
                        }
                    }
                })
                .expect("spawn committer thread")
        };
        Committer {
            queue,
            committed,
            events,
            logs,
            writing,
            thread: Mutex::new(Some(thread)),
        }
    }

    /// Keeps every batch off the disk until the guard drops (tests: what answers before
    /// its change is durable, and what waits).
    #[cfg(test)]
    pub(crate) fn hold_writes(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writing.lock().expect("committer write gate")
    }

    /// Queues a batch; the ticket is durable once [`Committer::wait`] returns for it.
    /// An empty batch queues nothing and returns the newest ticket, so waiting on it
    /// still orders a read after every write queued before it.
    pub fn submit(&self, batch: Batch) -> Ticket {
        let (lock, ready) = &*self.queue;
        let mut q = lock.lock().expect("committer queue");
        if batch.is_empty() {
            return q.last_ticket;
        }
        q.pending.extend(batch);
        q.last_ticket += 1;
        ready.notify_one();
        q.last_ticket
    }

    pub async fn wait(&self, ticket: Ticket) {
        let mut committed = self.committed.clone();
        // The sender lives as long as the thread; if it is gone the process is exiting.
        let _ = committed.wait_for(|done| *done >= ticket).await;
    }

    /// A receiver that changes after every commit (long polls wait on it).
    pub fn commits(&self) -> watch::Receiver<Ticket> {
        self.committed.clone()
    }

    pub fn subscribe_events(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }

    pub fn subscribe_logs(&self) -> broadcast::Receiver<Arc<LogRecord>> {
        self.logs.subscribe()
    }

    /// Writes what is queued, then stops the thread.
    pub fn close(&self) {
        {
            let (lock, ready) = &*self.queue;
            lock.lock().expect("committer queue").closed = true;
            ready.notify_one();
        }
        if let Some(thread) = self.thread.lock().expect("committer thread").take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.close();
    }
}
