//! The durable store: one redb file holding jobs, tasks, workers, submit request ids,
//! counters and the append-only events, logs and metric points. [`Store::write`] commits
//! one [`Batch`] in one transaction with immediate durability (fsync) - a coordinator
//! killed at any instant finds either all of a batch or none of it.
//!
//! Records are JSON so a newer coordinator reads an older one's file (new fields default).

use crate::cluster::{Changes, Cluster, Counters};
use crate::model::*;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;
use std::time::{Duration, Instant};

const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
const TASKS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("tasks");
const WORKERS: TableDefinition<&str, &[u8]> = TableDefinition::new("workers");
const REQUESTS: TableDefinition<&str, &str> = TableDefinition::new("requests");
const EVENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("events");
const LOGS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("logs");
const METRICS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("metrics");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const COUNTERS_KEY: &str = "counters";
const FORMAT_KEY: &str = "format";
/// Bumped when a change to the records needs more than serde defaults to read.
const FORMAT_VERSION: &[u8] = b"1";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store {path} is in use by another coordinator process")]
    InUse { path: String },
    #[error("store {path}: {source}")]
    Open { path: String, source: redb::DatabaseError },
    #[error("store: {0}")]
    Redb(#[from] redb::Error),
    #[error("store record {what} is unreadable: {source}")]
    Decode { what: String, source: serde_json::Error },
    #[error("store {path} has format {found}; this coordinator reads format 1")]
    Format { path: String, found: String },
}

macro_rules! redb_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Redb(e.into())
            }
        }
    )*};
}
redb_from!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Everything a coordinator needs to start where the last one stopped.
#[derive(Debug, Default)]
pub struct Loaded {
    pub jobs: Vec<JobRecord>,
    pub tasks: Vec<TaskRecord>,
    pub workers: Vec<WorkerRecord>,
    pub requests: Vec<(String, JobId)>,
    pub counters: Counters,
}

/// Copies of the records one or more transitions changed, in the order they happened.
#[derive(Debug, Default)]
pub struct Batch {
    pub jobs: Vec<JobRecord>,
    pub tasks: Vec<TaskRecord>,
    pub workers: Vec<WorkerRecord>,
    pub requests: Vec<(String, JobId)>,
    pub events: Vec<Event>,
    pub logs: Vec<LogRecord>,
    pub metrics: Vec<MetricPoint>,
    pub counters: Option<Counters>,
}

impl Batch {
    /// Snapshots what `changes` names from the cluster as it is now.
    pub fn capture(changes: Changes, cluster: &Cluster) -> Batch {
        Batch {
            jobs: changes
                .jobs
                .iter()
                .filter_map(|id| cluster.jobs.get(id).cloned())
                .collect(),
            tasks: changes
                .tasks
                .iter()
                .filter_map(|(job, task)| cluster.task(job, task).cloned())
                .collect(),
            workers: changes
                .workers
                .iter()
                .filter_map(|id| cluster.workers.get(id).cloned())
                .collect(),
            requests: changes.requests,
            events: changes.events,
            logs: changes.logs,
            metrics: changes.metrics,
            counters: changes.counters_changed.then(|| cluster.counters.clone()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
            && self.tasks.is_empty()
            && self.workers.is_empty()
            && self.requests.is_empty()
            && self.events.is_empty()
            && self.logs.is_empty()
            && self.metrics.is_empty()
            && self.counters.is_none()
    }

    /// Appends a later batch; its records overwrite this one's when written.
    pub fn extend(&mut self, later: Batch) {
        self.jobs.extend(later.jobs);
        self.tasks.extend(later.tasks);
        self.workers.extend(later.workers);
        self.requests.extend(later.requests);
        self.events.extend(later.events);
        self.logs.extend(later.logs);
        self.metrics.extend(later.metrics);
        if later.counters.is_some() {
            self.counters = later.counters;
        }
    }
}

pub struct Store {
    db: Database,
}

/// Where one durable write spent its time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WriteTimes {
    /// The whole transaction: serialising and inserting the records, then committing.
    pub total: Duration,
    /// The commit alone: redb writing its dirty pages and the fsync, the disk's share.
    pub commit: Duration,
}

fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialise")
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: impl FnOnce() -> String) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Decode { what: what(), source })
}

impl Store {
    /// Opens (or creates) the store file and its tables.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let shown = path.display().to_string();
        let db = Database::create(path).map_err(|source| match source {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse { path: shown.clone() },
            source => StoreError::Open {
                path: shown.clone(),
                source,
            },
        })?;
        let txn = db.begin_write()?;
        {
            txn.open_table(JOBS)?;
            txn.open_table(TASKS)?;
            txn.open_table(WORKERS)?;
            txn.open_table(REQUESTS)?;
            txn.open_table(EVENTS)?;
            txn.open_table(LOGS)?;
            txn.open_table(METRICS)?;
            let mut meta = txn.open_table(META)?;
            let found = meta.get(FORMAT_KEY)?.map(|v| v.value().to_vec());
            match found {
                None => {
                    meta.insert(FORMAT_KEY, FORMAT_VERSION)?;
                }
                Some(v) if v == FORMAT_VERSION => {}
                Some(v) => {
                    return Err(StoreError::Format {
                        path: shown,
                        found: String::from_utf8_lossy(&v).into_owned(),
                    });
                }
            }
        }
        txn.commit()?;
        Ok(Store { db })
    }

    pub fn load(&self) -> Result<Loaded, StoreError> {
        let txn = self.db.begin_read()?;
        let mut loaded = Loaded::default();
        for row in txn.open_table(JOBS)?.iter()? {
            let (key, value) = row?;
            loaded
                .jobs
                .push(decode(value.value(), || format!("job {}", key.value()))?);
        }
        for row in txn.open_table(TASKS)?.iter()? {
            let (key, value) = row?;
            let (job, task) = key.value();
            loaded
                .tasks
                .push(decode(value.value(), || format!("task {job}/{task}"))?);
        }
        for row in txn.open_table(WORKERS)?.iter()? {
            let (key, value) = row?;
            loaded
                .workers
                .push(decode(value.value(), || format!("worker {}", key.value()))?);
        }
        for row in txn.open_table(REQUESTS)?.iter()? {
            let (key, value) = row?;
            loaded
                .requests
                .push((key.value().to_string(), value.value().to_string()));
        }
        if let Some(counters) = txn.open_table(META)?.get(COUNTERS_KEY)? {
            loaded.counters = decode(counters.value(), || "counters".into())?;
        }
        Ok(loaded)
    }

    /// Writes a batch in one durable transaction, and says where the time went.
    pub fn write(&self, batch: &Batch) -> Result<WriteTimes, StoreError> {
        let started = Instant::now();
        let txn = self.db.begin_write()?;
        {
            let mut jobs = txn.open_table(JOBS)?;
            for job in &batch.jobs {
                jobs.insert(job.id.as_str(), json(job).as_slice())?;
            }
            let mut tasks = txn.open_table(TASKS)?;
            for task in &batch.tasks {
                tasks.insert((task.job_id.as_str(), task.id.as_str()), json(task).as_slice())?;
            }
            let mut workers = txn.open_table(WORKERS)?;
            for worker in &batch.workers {
                workers.insert(worker.id.as_str(), json(worker).as_slice())?;
            }
            let mut requests = txn.open_table(REQUESTS)?;
            for (request, job) in &batch.requests {
                requests.insert(request.as_str(), job.as_str())?;
            }
            let mut events = txn.open_table(EVENTS)?;
            for event in &batch.events {
                events.insert((event.job_id.as_str(), event.seq), json(event).as_slice())?;
            }
            let mut logs = txn.open_table(LOGS)?;
            for line in &batch.logs {
                logs.insert((line.job_id.as_str(), line.seq), json(line).as_slice())?;
            }
            let mut metrics = txn.open_table(METRICS)?;
            for point in &batch.metrics {
                metrics.insert((point.job_id.as_str(), point.seq), json(point).as_slice())?;
            }
            if let Some(counters) = &batch.counters {
                txn.open_table(META)?.insert(COUNTERS_KEY, json(counters).as_slice())?;
            }
        }
        let committing = Instant::now();
        txn.commit()?;
        Ok(WriteTimes {
            total: started.elapsed(),
            commit: committing.elapsed(),
        })
    }

    /// The job's events with seq > `after_seq`, oldest first, at most `limit`.
    pub fn events(&self, job_id: &str, after_seq: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.range(EVENTS, job_id, after_seq, limit, |_: &Event| true)
    }

    /// The job's log lines with seq > `after_seq` (only `task_id`'s when given).
    pub fn logs(
        &self,
        job_id: &str,
        task_id: Option<&str>,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<LogRecord>, StoreError> {
        self.range(LOGS, job_id, after_seq, limit, |l: &LogRecord| {
            task_id.is_none_or(|t| l.task_id == t)
        })
    }

    /// The job's metric points (only `task_id`'s when given), oldest first.
    pub fn metrics(&self, job_id: &str, task_id: Option<&str>) -> Result<Vec<MetricPoint>, StoreError> {
        self.range(METRICS, job_id, 0, usize::MAX, |m: &MetricPoint| {
            task_id.is_none_or(|t| m.task_id == t)
        })
    }

    fn range<T: serde::de::DeserializeOwned>(
        &self,
        table: TableDefinition<(&str, u64), &[u8]>,
        job_id: &str,
        after_seq: u64,
        limit: usize,
        keep: impl Fn(&T) -> bool,
    ) -> Result<Vec<T>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(table)?;
        let mut out = Vec::new();
        if after_seq == u64::MAX {
            return Ok(out);
        }
        for row in table.range((job_id, after_seq + 1)..=(job_id, u64::MAX))? {
            let (key, value) = row?;
            let item: T = decode(value.value(), || format!("{}/{}", job_id, key.value().1))?;
            if keep(&item) {
                out.push(item);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Timing;
    use crate::command::{Command, Outcome};
    use std::sync::Arc;
    use surgery_core::spec::JobSpec;

    #[test]
    fn a_batch_round_trips_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.redb");
        let yaml = include_str!("../../configs/tiny.yaml");
        let timing = Timing {
            lease_ttl_ms: 1,
            worker_timeout_ms: 1,
        };
        let mut cluster = Cluster::default();
        let submit = Command::Submit {
            request_id: "r1".into(),
            spec_yaml: yaml.into(),
            spec: Arc::new(JobSpec::parse(yaml).unwrap()),
            id_suffix: "abc".into(),
            fork_of: None,
        };
        let Ok(Outcome::Submitted(submitted)) = cluster.apply(5, timing, submit) else {
            panic!("submit refused");
        };
        let job = submitted.job_id;
        {
            let store = Store::open(&path).unwrap();
            let batch = Batch::capture(cluster.take_changes(), &cluster);
            assert!(!batch.is_empty());
            store.write(&batch).unwrap();
            // A second opener is refused while the first holds the file.
            assert!(matches!(Store::open(&path), Err(StoreError::InUse { .. })));
        }
        let store = Store::open(&path).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.jobs.len(), 1);
        assert_eq!(loaded.jobs[0], cluster.jobs[&job]);
        assert_eq!(loaded.tasks.len(), cluster.tasks[&job].list.len());
        assert_eq!(loaded.requests, vec![("r1".to_string(), job.clone())]);
        assert_eq!(loaded.counters, cluster.counters);
        let events = store.events(&job, 0, 100).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, "submitted");
        assert!(store.events(&job, events[0].seq, 100).unwrap().is_empty());

        let restored = Cluster::restore(
            10,
            timing,
            loaded.jobs,
            loaded.tasks,
            loaded.workers,
            loaded.requests,
            loaded.counters,
        );
        assert_eq!(restored.tasks[&job].list, cluster.tasks[&job].list);
    }

    #[test]
    fn ranges_stay_inside_one_job() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("c.redb")).unwrap();
        let line = |job: &str, seq: u64, task: &str| LogRecord {
            seq,
            job_id: job.into(),
            task_id: task.into(),
            worker_id: "w".into(),
            unix_ms: 0,
            level: "info".into(),
            message: format!("{job} {seq}"),
        };
        let batch = Batch {
            logs: vec![
                line("a", 1, "t1"),
                line("b", 2, "t1"),
                line("a", 3, "t2"),
                line("a", 4, "t1"),
            ],
            ..Batch::default()
        };
        store.write(&batch).unwrap();
        let a: Vec<u64> = store.logs("a", None, 0, 10).unwrap().iter().map(|l| l.seq).collect();
        assert_eq!(a, vec![1, 3, 4]);
        let a_t1: Vec<u64> = store
            .logs("a", Some("t1"), 1, 10)
            .unwrap()
            .iter()
            .map(|l| l.seq)
            .collect();
        assert_eq!(a_t1, vec![4]);
        assert_eq!(store.logs("a", None, 0, 2).unwrap().len(), 2);
        assert!(store.logs("c", None, 0, 10).unwrap().is_empty());
    }

    #[test]
    fn refuses_a_newer_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.redb");
        {
            let store = Store::open(&path).unwrap();
            let txn = store.db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(FORMAT_KEY, b"2".as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let err = Store::open(&path).err().unwrap();
        assert!(
            err.to_string()
                .contains("has format 2; this coordinator reads format 1"),
            "{err}"
        );
    }
}
