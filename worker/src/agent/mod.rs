//! The worker agent: registers its slots with the coordinator, leases tasks (one long
//! poll per idle slot), runs each on a thread of its own, heartbeats every running task's
//! progress and log lines, and reports how each ended. Workers are cattle: everything a
//! task needs to resume is in object storage, so the agent keeps no state.
//!
//! - A stop the coordinator answers a heartbeat with (cancelled job, lost lease, lost gang
//!   member) reaches the task at its next check; nothing is reported for it.
//! - SIGTERM: every running task checkpoints and its lease is released as a preemption
//!   (not counted against the retry budget); then the agent exits.
//! - A coordinator that restarts is a few failed calls: the channel reconnects, calls are
//!   retried; a coordinator that no longer knows this worker gets a new registration, and
//!   the tasks that ran under the old one stop (their leases were requeued).

pub mod assignment;
pub mod client;
pub mod http;
pub mod rendezvous;
pub mod slots;

use crate::collective::gang_token;
use crate::stages::gang::Member;
use crate::stages::task::{StopReason, TaskError, TaskHandle, TaskOutput};
use crate::stages::{self, Gang, TaskContext};
use client::{Client, retrying};
use rendezvous::CoordinatorRendezvous;
use slots::SlotSpec;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use surgery_proto::error::decode;
use surgery_proto::v1 as pb;
use surgery_proto::v1::ErrorKind;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub coordinator: String,
    pub token: Option<String>,
    /// Stable name (the pod name); registering it again ends the earlier incarnation.
    pub name: String,
    pub host: String,
    /// Address other gang members reach this worker's CPU collective on.
    pub advertise_host: String,
    pub slots: Vec<SlotSpec>,
    /// Local cache of downloaded models and data.
    pub cache_dir: PathBuf,
    /// A collective that makes no progress for this long fails the gang's attempt.
    pub collective_timeout: Duration,
    /// How long a LeaseTask long poll may wait.
    pub lease_wait: Duration,
    /// Where to serve /metrics and /healthz (`None`: not served).
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// How long reports and registrations keep trying while the coordinator is away.
const PATIENCE: Duration = Duration::from_secs(300);

struct Agent {
    config: AgentConfig,
    client: Client,
    worker_id: RwLock<String>,
    heartbeat: Mutex<Duration>,
    running: Mutex<HashMap<String, Arc<TaskHandle>>>,
    stopping: AtomicBool,
    shutdown: tokio::sync::Notify,
}

impl Agent {
    fn worker_id(&self) -> String {
        self.worker_id.read().expect("worker id lock").clone()
    }

    async fn register(&self) -> anyhow::Result<()> {
        let request = pb::RegisterRequest {
            name: self.config.name.clone(),
            host: self.config.host.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            slots: self.config.slots.iter().map(|s| s.info.clone()).collect(),
        };
        let response = retrying("Register", PATIENCE, || {
            let mut client = self.client.clone();
            let request = request.clone();
            async move { client.register(request).await }
        })
        .await
        .map_err(|status| {
            anyhow::anyhow!(
                "registering with {}: {}",
                self.config.coordinator,
                decode(&status).render()
            )
        })?
        .into_inner();
        tracing::info!(worker = %response.worker_id, slots = self.config.slots.len(), "registered");
        *self.worker_id.write().expect("worker id lock") = response.worker_id;
        *self.heartbeat.lock().expect("heartbeat lock") =
            Duration::from_millis(u64::from(response.heartbeat_interval_ms.max(100)));
        Ok(())
    }

    /// Stops every running task as revoked (their leases belong to an old registration).
    fn revoke_all(&self) {
        for handle in self.running.lock().expect("running lock").values() {
            handle.request_stop(StopReason::Revoked);
        }
    }

    async fn heartbeat_once(&self) {
        let handles: Vec<Arc<TaskHandle>> = self.running.lock().expect("running lock").values().cloned().collect();
        let reports = handles
            .iter()
            .map(|h| {
                let (progress, logs) = h.drain();
                pb::TaskReport {
                    task_id: h.task_id.clone(),
                    attempt: h.attempt,
                    progress: Some(pb::Progress {
                        step: progress.step,
                        total_steps: progress.total_steps,
                        metrics: progress.metrics.into_iter().collect(),
                        message: progress.message,
                        updated_unix_ms: 0,
                    }),
                    logs: logs
                        .into_iter()
                        .map(|l| pb::LogLine {
                            unix_ms: l.unix_ms,
                            level: l.level.into(),
                            message: l.message,
                            ..Default::default()
                        })
                        .collect(),
                }
            })
            .collect();
        let request = pb::HeartbeatRequest {
            worker_id: self.worker_id(),
            tasks: reports,
        };
        match self.client.clone().heartbeat(request).await {
            Ok(response) => {
                for stop in response.into_inner().stop {
                    if let Some(handle) = handles
                        .iter()
                        .find(|h| h.task_id == stop.task_id && h.attempt == stop.attempt)
                    {
                        handle.log("warn", format!("stopping: {}", stop.reason));
                        handle.request_stop(StopReason::Revoked);
                    }
                }
            }
            Err(status) if decode(&status).kind() == ErrorKind::UnknownWorker => {
                tracing::warn!("the coordinator no longer knows this worker; registering again");
                self.revoke_all();
                if let Err(err) = self.register().await {
                    tracing::error!("{err:#}");
                }
            }
            Err(status) => tracing::debug!(error = %status.message(), "heartbeat failed; retrying next interval"),
        }
    }

    async fn heartbeat_loop(self: Arc<Self>) {
        loop {
            let interval = *self.heartbeat.lock().expect("heartbeat lock");
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = self.shutdown.notified() => {}
            }
            self.heartbeat_once().await;
            if self.stopping.load(Ordering::SeqCst) && self.running.lock().expect("running lock").is_empty() {
                return;
            }
        }
    }

    /// Reports a finished task; retries while the coordinator is away.
    async fn report(&self, assignment: &pb::TaskAssignment, outcome: Result<TaskOutput, TaskError>) {
        let worker_id = self.worker_id();
        let task_id = assignment.task_id.clone();
        let attempt = assignment.attempt;
        let result = match outcome {
            Ok(output) if !output.report => return,
            Ok(output) => {
                let request = pb::CompleteTaskRequest {
                    worker_id,
                    task_id: task_id.clone(),
                    attempt,
                    result: Some(pb::TaskResult {
                        metrics: output.metrics.into_iter().collect(),
                        artifacts: output.artifacts,
                        labels: output.labels.into_iter().collect(),
                    }),
                };
                retrying("CompleteTask", PATIENCE, || {
                    let mut client = self.client.clone();
                    let request = request.clone();
                    async move { client.complete_task(request).await.map(|_| ()) }
                })
                .await
            }
            Err(TaskError::Stopped(StopReason::Revoked)) => return,
            Err(err) => {
                let class = match &err {
                    TaskError::Retryable(_) => pb::FailureClass::Retryable,
                    TaskError::Fatal(_) => pb::FailureClass::Fatal,
                    TaskError::Lost(_) => pb::FailureClass::Lost,
                    TaskError::Stopped(_) => pb::FailureClass::Preempted,
                };
                let request = pb::FailTaskRequest {
                    worker_id,
                    task_id: task_id.clone(),
                    attempt,
                    class: class as i32,
                    message: err.to_string(),
                };
                retrying("FailTask", PATIENCE, || {
                    let mut client = self.client.clone();
                    let request = request.clone();
                    async move { client.fail_task(request).await.map(|_| ()) }
                })
                .await
            }
        };
        if let Err(status) = result {
            tracing::warn!(task = %task_id, attempt, "report refused: {}", decode(&status).render());
        }
    }

    async fn slot_loop(self: Arc<Self>, slot: u32) {
        let spec = self.config.slots[slot as usize].clone();
        while !self.stopping.load(Ordering::SeqCst) {
            let request = pb::LeaseTaskRequest {
                worker_id: self.worker_id(),
                slot,
                wait_ms: self.config.lease_wait.as_millis() as u32,
            };
            let mut client = self.client.clone();
            let leased = tokio::select! {
                leased = client.lease_task(request) => leased,
                _ = self.shutdown.notified() => return,
            };
            let assignment = match leased {
                Ok(response) => match response.into_inner().assignment {
                    Some(a) => a,
                    None => continue,
                },
                Err(status) => {
                    if decode(&status).kind() == ErrorKind::UnknownWorker {
                        // The heartbeat loop registers again; wait for it.
                        self.revoke_all();
                        if let Err(err) = self.register().await {
                            tracing::error!("{err:#}");
                        }
                    } else {
                        tracing::debug!(error = %status.message(), "lease failed");
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            self.run_task(assignment, &spec).await;
        }
    }

    /// The gang a task's members meet in, through the coordinator (`None` outside one).
    fn gang(&self, assignment: &pb::TaskAssignment) -> Option<Gang> {
        (assignment.gang_size > 1).then(|| {
            let rendezvous = CoordinatorRendezvous {
                client: self.client.clone(),
                runtime: tokio::runtime::Handle::current(),
                worker_id: self.worker_id(),
                task_id: assignment.task_id.clone(),
                attempt: assignment.attempt,
            };
            let member = Member {
                rank: assignment.rank,
                world: assignment.gang_size,
                token: gang_token(&assignment.task_id, assignment.attempt),
                advertise_host: self.config.advertise_host.clone(),
                timeout: self.config.collective_timeout,
            };
            Gang::new(Box::new(rendezvous), member)
        })
    }

    async fn run_task(self: &Arc<Self>, assignment: pb::TaskAssignment, slot: &SlotSpec) {
        let handle = Arc::new(TaskHandle::new(assignment.task_id.clone(), assignment.attempt));
        handle.log(
            "info",
            format!(
                "attempt {} started on {:?} (rank {} of {})",
                assignment.attempt,
                slot.device,
                assignment.rank,
                assignment.gang_size.max(1)
            ),
        );
        self.running
            .lock()
            .expect("running lock")
            .insert(assignment.task_id.clone(), handle.clone());
        crate::metrics::task_started();
        if self.stopping.load(Ordering::SeqCst) {
            handle.request_stop(StopReason::Preempted);
        }
        let outcome = match assignment::stage_input(&assignment) {
            Ok(input) => {
                let context = TaskContext {
                    gang: self.gang(&assignment),
                    input,
                    device: slot.device,
                    handle: handle.clone(),
                    runtime: tokio::runtime::Handle::current(),
                    cache_dir: self.config.cache_dir.clone(),
                };
                tokio::task::spawn_blocking(move || stages::run(&context))
                    .await
                    .unwrap_or_else(|panic| Err(TaskError::Retryable(format!("the task panicked: {panic}"))))
            }
            Err(err) => Err(err),
        };
        match &outcome {
            Ok(_) => handle.log("info", "finished"),
            Err(err) => handle.log("warn", format!("ended: {err}")),
        }
        // One last heartbeat carries the final progress and log lines.
        self.heartbeat_once().await;
        self.running.lock().expect("running lock").remove(&assignment.task_id);
        let ended = match &outcome {
            Ok(_) => "succeeded",
            Err(TaskError::Stopped(StopReason::Preempted)) => "preempted",
            Err(TaskError::Stopped(_)) => "stopped",
            Err(_) => "failed",
        };
        crate::metrics::task_finished(&assignment.task_id, ended);
        self.report(&assignment, outcome).await;
    }
}

/// Runs the agent until `shutdown` resolves (SIGTERM), then preempts running tasks,
/// reports them and returns.
pub async fn run(config: AgentConfig, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.cache_dir)
        .map_err(|e| anyhow::anyhow!("cannot create the cache folder {}: {e}", config.cache_dir.display()))?;
    let client = client::client(&config.coordinator, config.token.as_deref())?;
    let agent = Arc::new(Agent {
        client,
        worker_id: RwLock::new(String::new()),
        heartbeat: Mutex::new(Duration::from_secs(2)),
        running: Mutex::new(HashMap::new()),
        stopping: AtomicBool::new(false),
        shutdown: tokio::sync::Notify::new(),
        config,
    });
    if let Some(addr) = agent.config.metrics_addr {
        let registered = agent.clone();
        http::serve(addr, move || !registered.worker_id().is_empty()).await?;
    }
    agent.register().await?;
    let heartbeat = tokio::spawn(agent.clone().heartbeat_loop());
    let slots: Vec<_> = (0..agent.config.slots.len() as u32)
        .map(|slot| tokio::spawn(agent.clone().slot_loop(slot)))
        .collect();
    shutdown.await;
    tracing::info!("shutting down: checkpointing running tasks and releasing their leases");
    agent.stopping.store(true, Ordering::SeqCst);
    for handle in agent.running.lock().expect("running lock").values() {
        handle.request_stop(StopReason::Preempted);
    }
    agent.shutdown.notify_waiters();
    for slot in slots {
        let _ = slot.await;
    }
    agent.shutdown.notify_waiters();
    let _ = heartbeat.await;
    Ok(())
}
