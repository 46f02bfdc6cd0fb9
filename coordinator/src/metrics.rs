//! Prometheus metrics of the coordinator, served at /metrics: RPC counts and latencies,
//! scheduler decisions, store commits (whole transaction and fsync), and gauges of jobs, tasks, workers and parked
//! slots by state.

use crate::cluster::Cluster;
use crate::decision::Decision;
use crate::model::{TaskState, WorkerStatus};
use crate::store::WriteTimes;
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub rpc_seconds: HistogramVec,
    pub rpc_errors: IntCounterVec,
    pub decisions: IntCounterVec,
    pub store_commits: IntCounter,
    pub store_commit_seconds: prometheus::Histogram,
    pub store_fsync_seconds: prometheus::Histogram,
    pub tasks: IntGaugeVec,
    pub jobs_active: IntGauge,
    pub workers: IntGaugeVec,
    pub parked_slots: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("surgery".into()), None).expect("valid prefix");
        let rpc_seconds = HistogramVec::new(
            HistogramOpts::new(
                "rpc_seconds",
                "gRPC handling time, including the durable commit where the call waits for one",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0,
            ]),
            &["method"],
        )
        .expect("metric");
        let rpc_errors = IntCounterVec::new(
            Opts::new("rpc_errors_total", "gRPC calls answered with an error"),
            &["method", "code"],
        )
        .expect("metric");
        let decisions = IntCounterVec::new(
            Opts::new("scheduler_decisions_total", "Scheduler decisions applied"),
            &["kind"],
        )
        .expect("metric");
        let store_commits = IntCounter::new("store_commits_total", "Durable store transactions").expect("metric");
        // Fine buckets (12% apart, 50 us to 1.8 s), so the benchmark can read percentiles.
        let store_buckets = prometheus::exponential_buckets(0.000_05, 1.25, 48).expect("buckets");
        let store_commit_seconds = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "store_commit_seconds",
                "Time to write one group-commit transaction: records, pages and fsync",
            )
            .buckets(store_buckets.clone()),
        )
        .expect("metric");
        let store_fsync_seconds = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "store_fsync_seconds",
                "Time in the durable commit of a group-commit transaction: redb writing its pages and the fsync",
            )
            .buckets(store_buckets),
        )
        .expect("metric");
        let tasks = IntGaugeVec::new(Opts::new("tasks", "Tasks by state"), &["state"]).expect("metric");
        let jobs_active = IntGauge::new("jobs_active", "Jobs queued or running").expect("metric");
        let workers = IntGaugeVec::new(Opts::new("workers", "Workers by status"), &["status"]).expect("metric");
        let parked_slots = IntGauge::new("parked_slots", "Worker slots waiting in LeaseTask").expect("metric");
        for collector in [
            Box::new(rpc_seconds.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(rpc_errors.clone()),
            Box::new(decisions.clone()),
            Box::new(store_commits.clone()),
            Box::new(store_commit_seconds.clone()),
            Box::new(store_fsync_seconds.clone()),
            Box::new(tasks.clone()),
            Box::new(jobs_active.clone()),
            Box::new(workers.clone()),
            Box::new(parked_slots.clone()),
        ] {
            registry.register(collector).expect("register metric");
        }
        Metrics {
            registry,
            rpc_seconds,
            rpc_errors,
            decisions,
            store_commits,
            store_commit_seconds,
            store_fsync_seconds,
            tasks,
            jobs_active,
            workers,
            parked_slots,
        }
    }

    pub fn observe_commit(&self, times: WriteTimes) {
        self.store_commits.inc();
        self.store_commit_seconds.observe(times.total.as_secs_f64());
        self.store_fsync_seconds.observe(times.commit.as_secs_f64());
    }

    pub fn count_decision(&self, decision: &Decision) {
        let kind = match decision {
            Decision::Grant { .. } => "grant",
            Decision::Expire { .. } => "expire",
            Decision::WorkerLost { .. } => "worker_lost",
            Decision::RunSelect { .. } => "run_select",
        };
        self.decisions.with_label_values(&[kind]).inc();
    }

    /// Refreshes the gauges. Cheap enough per mutation: counts, no allocation per task.
    pub fn observe_state(&self, cluster: &Cluster, parked: usize) {
        let mut counts = [0i64; 6];
        for tasks in cluster.tasks.values() {
            for task in &tasks.list {
                counts[task.state as usize] += 1;
            }
        }
        for (state, count) in [
            TaskState::Pending,
            TaskState::Leased,
            TaskState::Running,
            TaskState::Succeeded,
            TaskState::Failed,
            TaskState::Cancelled,
        ]
        .iter()
        .zip(counts)
        {
            self.tasks.with_label_values(&[state.word()]).set(count);
        }
        self.jobs_active
            .set(cluster.jobs.values().filter(|j| !j.state.is_terminal()).count() as i64);
        for status in [WorkerStatus::Alive, WorkerStatus::Lost, WorkerStatus::Replaced] {
            let n = cluster.workers.values().filter(|w| w.status == status).count();
            self.workers.with_label_values(&[status.name()]).set(n as i64);
        }
        self.parked_slots.set(parked as i64);
    }

    pub fn render(&self) -> String {
        let encoder = prometheus::TextEncoder::new();
        encoder.encode_to_string(&self.registry.gather()).unwrap_or_default()
    }
}
