//! The coordinator's whole state in memory, and every transition of it. Transitions are
//! plain methods that take the time as an argument and do no I/O: each records what it
//! touched, and [`Cluster::take_changes`] hands that to the store, which commits it in one
//! transaction before anyone is told the outcome. The decisions the scheduler takes on
//! its own (leases, expiries, lost workers) arrive as [`Decision`]s and are applied here
//! through [`Cluster::apply`].

use crate::decision::Decision;
use crate::model::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use surgery_core::ids::TaskRef;
use surgery_core::spec::JobSpec;

/// Why a request was refused; the service maps each to a typed gRPC error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("{0}")]
    NotFound(String),
    /// The caller holds an old attempt (fencing).
    #[error("{0}")]
    Stale(String),
    #[error("unknown worker `{0}`: register again")]
    UnknownWorker(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
}

/// Coordinator settings that transitions need.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub lease_ttl_ms: i64,
    pub worker_timeout_ms: i64,
}

/// A task the worker must stop, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    pub task_id: TaskId,
    pub attempt: u32,
    pub reason: String,
}

/// What a transition changed, to be persisted together.
#[derive(Debug, Default)]
pub struct Changes {
    pub jobs: BTreeSet<JobId>,
    pub tasks: BTreeSet<(JobId, TaskId)>,
    pub workers: BTreeSet<WorkerId>,
    pub requests: Vec<(String, JobId)>,
    pub events: Vec<Event>,
    pub logs: Vec<LogRecord>,
    pub metrics: Vec<MetricPoint>,
    pub counters_changed: bool,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
            && self.tasks.is_empty()
            && self.workers.is_empty()
            && self.requests.is_empty()
            && self.events.is_empty()
            && self.logs.is_empty()
            && self.metrics.is_empty()
            && !self.counters_changed
    }
}

/// Monotonic counters, persisted with the records they number.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    pub job_seq: u64,
    pub event_seq: u64,
    pub log_seq: u64,
    pub metric_seq: u64,
}

#[derive(Debug, Default)]
pub struct JobTasks {
    pub list: Vec<TaskRecord>,
    index: HashMap<TaskId, usize>,
}

impl JobTasks {
    pub fn new(list: Vec<TaskRecord>) -> JobTasks {
        let mut list = list;
        list.sort_by_key(|t| t.order);
        let index = list.iter().enumerate().map(|(i, t)| (t.id.clone(), i)).collect();
        JobTasks { list, index }
    }

    pub fn get(&self, id: &str) -> Option<&TaskRecord> {
        self.index.get(id).map(|i| &self.list[*i])
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut TaskRecord> {
        self.index.get(id).map(|i| &mut self.list[*i])
    }

    /// Stages whose every task succeeded.
    pub fn finished_stages(&self) -> BTreeSet<Stage> {
        let mut finished: BTreeSet<Stage> = self.list.iter().map(|t| t.stage).collect();
        for task in &self.list {
            if task.state != TaskState::Succeeded {
                finished.remove(&task.stage);
            }
        }
        finished
    }

    /// Pending with every prerequisite stage in `finished` (from [`Self::finished_stages`]).
    pub fn is_runnable(&self, task: &TaskRecord, finished: &BTreeSet<Stage>) -> bool {
        task.state == TaskState::Pending && task.after.iter().all(|s| finished.contains(s))
    }

    /// Pending tasks whose prerequisite stages all succeeded, in plan order.
    pub fn runnable(&self) -> impl Iterator<Item = &TaskRecord> {
        let finished = self.finished_stages();
        self.list.iter().filter(move |t| self.is_runnable(t, &finished))
    }
}

#[derive(Debug, Default)]
pub struct Cluster {
    pub jobs: BTreeMap<JobId, JobRecord>,
    pub tasks: BTreeMap<JobId, JobTasks>,
    pub workers: BTreeMap<WorkerId, WorkerRecord>,
    pub requests: HashMap<String, JobId>,
    pub counters: Counters,
    changes: Changes,
}

/// The outcome of a submit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub job_id: JobId,
    pub created: bool,
}

mod decisions;
mod gangs;
mod jobs;
mod leases;
mod workers;

pub use gangs::Rendezvous;
pub use leases::{ReportedLog, TaskReport};

impl Cluster {
    /// Rebuilds the state a store held. Leases get a fresh deadline and workers count as
    /// just seen, so a restarted coordinator gives everyone one TTL to reconnect instead
    /// of expiring work that kept running while it was down.
    pub fn restore(
        now: UnixMs,
        timing: Timing,
        jobs: Vec<JobRecord>,
        tasks: Vec<TaskRecord>,
        workers: Vec<WorkerRecord>,
        requests: Vec<(String, JobId)>,
        counters: Counters,
    ) -> Cluster {
        let mut by_job: BTreeMap<JobId, Vec<TaskRecord>> = BTreeMap::new();
        for mut task in tasks {
            if let Some(lease) = task.lease.as_mut() {
                for member in &mut lease.members {
                    member.deadline_ms = member.deadline_ms.max(now + timing.lease_ttl_ms);
                }
            }
            by_job.entry(task.job_id.clone()).or_default().push(task);
        }
        Cluster {
            jobs: jobs.into_iter().map(|j| (j.id.clone(), j)).collect(),
            tasks: by_job
                .into_iter()
                .map(|(job, list)| (job, JobTasks::new(list)))
                .collect(),
            workers: workers
                .into_iter()
                .map(|mut w| {
                    w.last_seen_ms = now;
                    (w.id.clone(), w)
                })
                .collect(),
            requests: requests.into_iter().collect(),
            counters,
            changes: Changes::default(),
        }
    }

    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    pub fn task(&self, job_id: &str, task_id: &str) -> Option<&TaskRecord> {
        self.tasks.get(job_id)?.get(task_id)
    }

    fn task_mut(&mut self, job_id: &str, task_id: &str) -> Option<&mut TaskRecord> {
        self.changes.tasks.insert((job_id.to_string(), task_id.to_string()));
        self.tasks.get_mut(job_id)?.get_mut(task_id)
    }

    fn job_mut(&mut self, job_id: &str) -> Option<&mut JobRecord> {
        self.changes.jobs.insert(job_id.to_string());
        self.jobs.get_mut(job_id)
    }

    fn event(&mut self, now: UnixMs, job_id: &str, task: Option<(&str, TaskState)>, kind: &str, message: String) {
        self.counters.event_seq += 1;
        self.changes.counters_changed = true;
        let job_state = self.jobs.get(job_id).map(|j| j.state);
        self.changes.events.push(Event {
            seq: self.counters.event_seq,
            job_id: job_id.to_string(),
            task_id: task.map(|(id, _)| id.to_string()),
            unix_ms: now,
            kind: kind.to_string(),
            message,
            job_state,
            task_state: task.map(|(_, state)| state),
        });
    }
}
