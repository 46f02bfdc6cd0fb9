//! The engine joins the pure parts to the world: the [`Cluster`] behind one lock, the
//! slots parked in LeaseTask long polls, and the [`Committer`]. Every [`Command`] takes
//! the same path - lock, [`Cluster::apply`], let the scheduler decide and apply its
//! decisions, queue the batch of what changed, unlock - and answers once what it must
//! make durable is durable (command.rs says which): every command but a heartbeat that
//! says "carry on" waits for its commit, and a lease reaches its worker only after its
//! grant is on disk, so a coordinator killed at any instant has told nobody a decision
//! the store does not hold. Reads wait for everything queued before them, heartbeats
//! included, so nobody reads state that a crash could take back.
//!
//! Tests: engine/tests.rs drives it in-process on a fake clock.

use crate::cluster::{Cluster, Timing};
use crate::command::{Command, Outcome, Reject};
use crate::committer::{Committer, Ticket};
use crate::config::Config;
use crate::convert;
use crate::decision::{Decision, WaitingSlot};
use crate::metrics::Metrics;
use crate::model::*;
use crate::scheduler::{self, Schedule};
use crate::store::{Batch, Store, StoreError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use surgery_proto::v1 as pb;
use tokio::sync::oneshot;

/// Wall-clock milliseconds; injected so tests of the engine can run on a fake clock.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> UnixMs;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> UnixMs {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

struct Waiter {
    slot: WaitingSlot,
    id: u64,
    reply: oneshot::Sender<pb::TaskAssignment>,
}

pub struct State {
    pub cluster: Cluster,
    waiters: Vec<Waiter>,
    next_waiter: u64,
}

/// A queued batch and the leases decided with it, delivered once it is durable.
#[must_use]
struct Pending {
    ticket: Ticket,
    grants: Vec<(oneshot::Sender<pb::TaskAssignment>, pb::TaskAssignment)>,
}

pub struct Engine {
    state: Mutex<State>,
    committer: Committer,
    pub store: Arc<Store>,
    pub timing: Timing,
    pub config: Config,
    clock: Arc<dyn Clock>,
    pub metrics: Metrics,
}

/// Short random suffixes for job and worker ids.
pub fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..6].to_string()
}

impl Engine {
    pub fn open(config: Config, clock: Arc<dyn Clock>, metrics: Metrics) -> Result<Engine, StoreError> {
        let store = Arc::new(Store::open(&config.store_path())?);
        let loaded = store.load()?;
        let timing = Timing {
            lease_ttl_ms: config.lease_ttl.as_millis() as i64,
            worker_timeout_ms: config.worker_timeout.as_millis() as i64,
        };
        let now = clock.now_ms();
        let cluster = Cluster::restore(
            now,
            timing,
            loaded.jobs,
            loaded.tasks,
            loaded.workers,
            loaded.requests,
            loaded.counters,
        );
        tracing::info!(
            jobs = cluster.jobs.len(),
            workers = cluster.workers.len(),
            path = %config.store_path().display(),
            "store loaded"
        );
        let observed = metrics.clone();
        let committer = Committer::start(store.clone(), move |took| observed.observe_commit(took));
        Ok(Engine {
            state: Mutex::new(State {
                cluster,
                waiters: Vec::new(),
                next_waiter: 0,
            }),
            committer,
            store,
            timing,
            config,
            clock,
            metrics,
        })
    }

    pub fn now(&self) -> UnixMs {
        self.clock.now_ms()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("coordinator state lock poisoned")
    }

    /// Applies a command and answers once what it must make durable is durable.
    pub async fn run(&self, command: Command) -> Result<Outcome, Reject> {
        let (outcome, pending) = self.execute(command);
        if pending.grants.is_empty() && outcome.as_ref().is_ok_and(Outcome::may_answer_before_durable) {
            // Queued: the committer writes it with its next group; the answer does not wait.
            drop(pending);
        } else {
            self.finish(pending).await;
        }
        outcome
    }

    /// Applies `command` again after every commit until its outcome is `done` or `wait`
    /// passes, and answers with the last outcome (a rendezvous waits for the other
    /// members this way).
    pub async fn run_until(
        &self,
        command: Command,
        wait: Duration,
        done: impl Fn(&Outcome) -> bool,
    ) -> Result<Outcome, Reject> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut commits = self.committer.commits();
        loop {
            commits.borrow_and_update();
            let outcome = self.run(command.clone()).await?;
            if done(&outcome) || tokio::time::timeout_at(deadline, commits.changed()).await.is_err() {
                return Ok(outcome);
            }
        }
    }

    /// Lock, apply, schedule (unless the command cannot open an opportunity), queue.
    fn execute(&self, command: Command) -> (Result<Outcome, Reject>, Pending) {
        let mut state = self.lock();
        let now = self.clock.now_ms();
        let schedule = command.reschedules();
        let outcome = state.cluster.apply(now, self.timing, command);
        let pending = self.queue(&mut state, now, schedule);
        (outcome, pending)
    }

    /// With `schedule`, lets the scheduler act; then queues everything the state lock's
    /// holder changed as one batch. The returned [`Pending`] must be
    /// [`Engine::finish`]ed before anyone acts on it.
    fn queue(&self, state: &mut State, now: UnixMs, schedule: bool) -> Pending {
        let grants = if schedule {
            self.run_scheduler(state, now)
        } else {
            Vec::new()
        };
        let changes = state.cluster.take_changes();
        let batch = Batch::capture(changes, &state.cluster);
        let ticket = self.committer.submit(batch);
        Pending { ticket, grants }
    }

    /// Waits until the batch is durable, then delivers its leases. A lease whose worker
    /// has gone away meanwhile is revoked at once instead of waiting to expire.
    async fn finish(&self, pending: Pending) {
        self.committer.wait(pending.ticket).await;
        let mut undelivered = Vec::new();
        for (reply, assignment) in pending.grants {
            if let Err(assignment) = reply.send(assignment) {
                undelivered.push(assignment);
            }
        }
        if !undelivered.is_empty() {
            let pending = {
                let mut state = self.lock();
                let now = self.clock.now_ms();
                for a in undelivered {
                    let revoke = Command::Revoke {
                        task: a.task_id,
                        attempt: a.attempt,
                    };
                    // A revoke is never refused; it does nothing when the lease moved on.
                    let _ = state.cluster.apply(now, self.timing, revoke);
                }
                self.queue(&mut state, now, true)
            };
            Box::pin(self.finish(pending)).await;
        }
    }

    /// A read sees only durable state: wait for everything queued before it.
    pub async fn read<R>(&self, f: impl FnOnce(&State, UnixMs) -> R) -> R {
        let (result, ticket) = {
            let state = self.lock();
            let now = self.clock.now_ms();
            (f(&state, now), self.committer.submit(Batch::default()))
        };
        self.committer.wait(ticket).await;
        result
    }

    /// Decide-and-apply until the scheduler has nothing more to do (a select that runs
    /// here can make the next stage runnable in the same pass).
    fn run_scheduler(
        &self,
        state: &mut State,
        now: UnixMs,
    ) -> Vec<(oneshot::Sender<pb::TaskAssignment>, pb::TaskAssignment)> {
        state.waiters.retain(|w| !w.reply.is_closed());
        let mut grants = Vec::new();
        for _ in 0..64 {
            let slots: Vec<WaitingSlot> = state.waiters.iter().map(|w| w.slot.clone()).collect();
            let schedule = scheduler::decide(now, &state.cluster, &slots, self.timing);
            if schedule.decisions.is_empty() {
                break;
            }
            for decision in schedule.decisions {
                self.metrics.count_decision(&decision);
                let command = Command::Decision(decision.clone());
                // Decisions are never refused: the scheduler decided on this very state.
                let _ = state.cluster.apply(now, self.timing, command);
                match &decision {
                    Decision::Grant { job_id, task_id, slots } => {
                        let task = state
                            .cluster
                            .task(job_id, task_id)
                            .expect("granted task exists")
                            .clone();
                        let job = &state.cluster.jobs[job_id];
                        for (rank, slot) in slots.iter().enumerate() {
                            let pos = state
                                .waiters
                                .iter()
                                .position(|w| w.slot.worker_id == slot.worker_id && w.slot.slot == slot.slot)
                                .expect("granted slot is waiting");
                            let waiter = state.waiters.remove(pos);
                            let assignment = convert::assignment(
                                job,
                                &task,
                                rank as u32,
                                &state.cluster,
                                &self.config.object_store_url,
                            );
                            grants.push((waiter.reply, assignment));
                        }
                    }
                    Decision::Expire { reason, task_id, .. } => {
                        tracing::warn!(task = %task_id, %reason, "lease expired");
                    }
                    Decision::WorkerLost { worker_id } => tracing::warn!(worker = %worker_id, "worker lost"),
                    Decision::RunSelect { job_id, .. } => tracing::info!(job = %job_id, "select stage ran"),
                }
            }
        }
        grants
    }

    /// The scheduler's view without acting: why each waiting job waits.
    pub fn explain(&self, state: &State, now: UnixMs) -> Schedule {
        let slots: Vec<WaitingSlot> = state
            .waiters
            .iter()
            .filter(|w| !w.reply.is_closed())
            .map(|w| w.slot.clone())
            .collect();
        scheduler::decide(now, &state.cluster, &slots, self.timing)
    }

    /// The periodic pass that finds expired leases and lost workers.
    pub async fn tick(&self) {
        let pending = {
            let mut state = self.lock();
            let now = self.clock.now_ms();
            self.metrics.observe_state(&state.cluster, state.waiters.len());
            self.queue(&mut state, now, true)
        };
        self.finish(pending).await;
    }

    /// LeaseTask: park the slot until the scheduler gives it a task or `wait` passes.
    pub async fn lease(
        &self,
        worker_id: &str,
        slot: u32,
        wait: Duration,
    ) -> Result<Option<pb::TaskAssignment>, Reject> {
        let (tx, mut rx) = oneshot::channel();
        let (parked, pending) = {
            let mut state = self.lock();
            let now = self.clock.now_ms();
            let poll = Command::Poll {
                worker_id: worker_id.to_string(),
                slot,
            };
            let parked = state.cluster.apply(now, self.timing, poll).map(|_| {
                // A newer poll for the same slot replaces an older one (a client retry).
                state
                    .waiters
                    .retain(|w| !(w.slot.worker_id == worker_id && w.slot.slot == slot));
                state.next_waiter += 1;
                let id = state.next_waiter;
                state.waiters.push(Waiter {
                    slot: WaitingSlot {
                        worker_id: worker_id.to_string(),
                        slot,
                        since_ms: now,
                    },
                    id,
                    reply: tx,
                });
                id
            });
            (parked, self.queue(&mut state, now, true))
        };
        self.finish(pending).await;
        let waiter_id = parked?;
        match tokio::time::timeout(wait, &mut rx).await {
            Ok(Ok(assignment)) => Ok(Some(assignment)),
            Ok(Err(_)) => Ok(None),
            Err(_) => {
                let still_parked = {
                    let mut state = self.lock();
                    let before = state.waiters.len();
                    state.waiters.retain(|w| w.id != waiter_id);
                    state.waiters.len() != before
                };
                if still_parked {
                    Ok(None)
                } else {
                    // Granted just as the poll timed out: the lease is on its way.
                    Ok(rx.await.ok())
                }
            }
        }
    }

    /// Answers every parked LeaseTask with "no task" (shutdown).
    pub fn release_waiters(&self) {
        self.lock().waiters.clear();
    }

    pub fn committer(&self) -> &Committer {
        &self.committer
    }

    /// Flushes the store and stops the committer (graceful shutdown).
    pub fn close(&self) {
        self.committer.close();
    }
}

#[cfg(test)]
mod tests;
