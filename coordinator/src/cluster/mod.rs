//! The coordinator's whole state in memory, and every transition of it. Every mutation
//! arrives as a [`Command`] through [`Cluster::apply`], which hands it to the transition
//! in the module named for its concern: `jobs` (submit, cancel, resume, settling a job),
//! `workers` (register, poll, being heard from, the end of an incarnation), `leases`
//! (the holder check, heartbeat, complete, fail, interrupt, revoke), `gangs`
//! (rendezvous), `forks` (what a forked job takes over from its parent) and `decisions` (the scheduler's grants, expiries and lost workers, and
//! the select stage). Transitions take the time as an argument and do no I/O: each
//! records what it touched, and [`Cluster::take_changes`] hands that to the store.

use crate::command::{Command, Outcome, Reject};
use crate::model::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use surgery_core::spec::JobSpec;

/// Coordinator settings that transitions need.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub lease_ttl_ms: i64,
    pub worker_timeout_ms: i64,
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
    /// Each job's spec, parsed once (at submit, or when the store is restored) and kept
    /// beside its record; an error when a stored spec no longer parses.
    pub specs: HashMap<JobId, Result<Arc<JobSpec>, String>>,
    changes: Changes,
}

mod decisions;
mod forks;
mod gangs;
mod jobs;
mod leases;
mod workers;

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
        let specs = jobs
            .iter()
            .map(|j| {
                let spec = JobSpec::parse(&j.spec_yaml)
                    .map(Arc::new)
                    .map_err(|e| format!("the job's stored spec no longer parses: {e}"));
                (j.id.clone(), spec)
            })
            .collect();
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
            specs,
            changes: Changes::default(),
        }
    }

    /// Applies one command: the only way the state changes.
    pub fn apply(&mut self, now: UnixMs, timing: Timing, command: Command) -> Result<Outcome, Reject> {
        match command {
            Command::Submit {
                request_id,
                spec_yaml,
                spec,
                id_suffix,
                fork_of,
            } => self
                .submit(now, &request_id, &spec_yaml, spec, &id_suffix, fork_of.as_deref())
                .map(Outcome::Submitted),
            Command::Cancel { job_id, reason } => self.cancel_job(now, &job_id, &reason).map(|()| Outcome::Cancelled),
            Command::Resume { job_id } => self.resume_job(now, &job_id).map(Outcome::Resumed),
            Command::Register {
                name,
                host,
                version,
                slots,
                id_suffix,
            } => self
                .register(now, &name, &host, &version, slots, &id_suffix)
                .map(Outcome::Registered),
            Command::Poll { worker_id, slot } => self.poll(now, &worker_id, slot).map(|()| Outcome::Polled),
            Command::Heartbeat { worker_id, reports } => {
                self.heartbeat(now, timing, &worker_id, reports)
                    .map(|stops| Outcome::Heartbeat {
                        stops,
                        lease_deadline_ms: now + timing.lease_ttl_ms,
                    })
            }
            Command::Complete {
                worker_id,
                task,
                attempt,
                result,
            } => self
                .complete(now, &worker_id, &task, attempt, result)
                .map(|()| Outcome::Completed),
            Command::Fail {
                worker_id,
                task,
                attempt,
                class,
                message,
            } => self
                .fail(now, &worker_id, &task, attempt, class, &message)
                .map(Outcome::Failed),
            Command::Rendezvous {
                worker_id,
                task,
                attempt,
                rank,
                endpoint,
                nccl_unique_id,
            } => self
                .rendezvous(
                    now,
                    timing,
                    &worker_id,
                    &task,
                    attempt,
                    rank,
                    &endpoint,
                    &nccl_unique_id,
                )
                .map(Outcome::Rendezvous),
            Command::Revoke { task, attempt } => {
                self.revoke(now, &task, attempt);
                Ok(Outcome::Applied)
            }
            Command::Decision(decision) => {
                self.decide(now, timing, &decision);
                Ok(Outcome::Applied)
            }
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
