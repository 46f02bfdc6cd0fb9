//! The worker's Prometheus metrics, served by the agent at `/metrics` on a port of its own
//! (`surgery-worker run --metrics-addr`, beside `/healthz`): what an operator of a long
//! job wants per worker without reading logs. One process-wide registry, because the
//! things measured happen in every layer (stages report steps and losses, the checkpointer
//! uploads, the gang all-reduces); each records through the functions here.
//!
//! - `surgery_worker_tasks{state}`: tasks running now; `surgery_worker_tasks_finished_total{outcome}`
//!   (succeeded, failed, preempted, stopped);
//! - `surgery_worker_task_steps_per_second{task}`, `surgery_worker_task_loss{task}`,
//!   `surgery_worker_task_step{task}`: the latest report of each running task;
//! - `surgery_worker_checkpoint_bytes_total`, `surgery_worker_checkpoint_upload_seconds`
//!   (histogram): checkpoints made durable;
//! - `surgery_worker_collective_seconds_total`: time inside the gang's all-reduce;
//! - `surgery_worker_gpu_memory_used_bytes{gpu}`: read from nvidia-smi when scraped (absent
//!   on machines without it).

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::OnceLock;
use std::time::Duration;

pub struct WorkerMetrics {
    registry: Registry,
    tasks: IntGaugeVec,
    finished: IntCounterVec,
    steps_per_second: GaugeVec,
    loss: GaugeVec,
    step: GaugeVec,
    checkpoint_bytes: IntCounter,
    checkpoint_seconds: Histogram,
    collective_seconds: prometheus::Counter,
    gpu_memory: GaugeVec,
}

fn registered<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    registry.register(Box::new(metric.clone())).expect("each metric once");
    metric
}

impl WorkerMetrics {
    fn new() -> WorkerMetrics {
        let registry = Registry::new_custom(Some("surgery_worker".into()), None).expect("valid prefix");
        let r = &registry;
        WorkerMetrics {
            tasks: registered(
                r,
                IntGaugeVec::new(Opts::new("tasks", "Tasks on this worker by state"), &["state"]).expect("metric"),
            ),
            finished: registered(
                r,
                IntCounterVec::new(
                    Opts::new("tasks_finished_total", "Tasks this worker ended, by outcome"),
                    &["outcome"],
                )
                .expect("metric"),
            ),
            steps_per_second: registered(
                r,
                GaugeVec::new(
                    Opts::new("task_steps_per_second", "The latest step rate of each running task"),
                    &["task"],
                )
                .expect("metric"),
            ),
            loss: registered(
                r,
                GaugeVec::new(
                    Opts::new("task_loss", "The latest loss of each running task"),
                    &["task"],
                )
                .expect("metric"),
            ),
            step: registered(
                r,
                GaugeVec::new(
                    Opts::new("task_step", "The latest step of each running task"),
                    &["task"],
                )
                .expect("metric"),
            ),
            checkpoint_bytes: registered(
                r,
                IntCounter::new("checkpoint_bytes_total", "Bytes of checkpoints made durable").expect("metric"),
            ),
            checkpoint_seconds: registered(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "checkpoint_upload_seconds",
                        "Time from a checkpoint's first byte to its manifest",
                    )
                    .buckets(vec![0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0]),
                )
                .expect("metric"),
            ),
            collective_seconds: registered(
                r,
                prometheus::Counter::new("collective_seconds_total", "Time inside the gang's gradient all-reduce")
                    .expect("metric"),
            ),
            gpu_memory: registered(
                r,
                GaugeVec::new(
                    Opts::new("gpu_memory_used_bytes", "GPU memory in use (nvidia-smi, when scraped)"),
                    &["gpu"],
                )
                .expect("metric"),
            ),
            registry,
        }
    }

    /// The Prometheus text format of every metric, GPU memory read now.
    pub fn render(&self) -> String {
        self.gpu_memory.reset();
        for (gpu, bytes) in gpu_memory_used() {
            self.gpu_memory.with_label_values(&[&gpu.to_string()]).set(bytes as f64);
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// The process's metrics.
pub fn global() -> &'static WorkerMetrics {
    static METRICS: OnceLock<WorkerMetrics> = OnceLock::new();
    METRICS.get_or_init(WorkerMetrics::new)
}

/// A task started running on this worker.
pub fn task_started() {
    global().tasks.with_label_values(&["running"]).inc();
}

/// A task ended with `outcome`; its per-task series go away.
pub fn task_finished(task: &str, outcome: &str) {
    let m = global();
    m.tasks.with_label_values(&["running"]).dec();
    m.finished.with_label_values(&[outcome]).inc();
    for vec in [&m.steps_per_second, &m.loss, &m.step] {
        let _ = vec.remove_label_values(&[task]);
    }
}

/// A task's progress report: its step and, when it has them, rate and loss.
pub fn task_progress(task: &str, step: u64, steps_per_second: Option<f64>, loss: Option<f64>) {
    let m = global();
    m.step.with_label_values(&[task]).set(step as f64);
    if let Some(rate) = steps_per_second.filter(|r| r.is_finite()) {
        m.steps_per_second.with_label_values(&[task]).set(rate);
    }
    if let Some(loss) = loss.filter(|l| l.is_finite()) {
        m.loss.with_label_values(&[task]).set(loss);
    }
}

/// A checkpoint of `bytes` became durable after `took`.
pub fn checkpoint_saved(bytes: u64, took: Duration) {
    let m = global();
    m.checkpoint_bytes.inc_by(bytes);
    m.checkpoint_seconds.observe(took.as_secs_f64());
}

/// Time spent in one all-reduce.
pub fn collective(took: Duration) {
    global().collective_seconds.inc_by(took.as_secs_f64());
}

/// (GPU index, bytes used) from nvidia-smi; empty when it is missing or fails.
fn gpu_memory_used() -> Vec<(u32, u64)> {
    let Ok(out) = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=index,memory.used", "--format=csv,noheader,nounits"])
        .output()
    else {
        return Vec::new();
    };
    if !out.status.success() {
        return Vec::new();
    }
    parse_nvidia_smi(&String::from_utf8_lossy(&out.stdout))
}

/// `0, 1234\n1, 56` (MiB) -> [(0, 1234 MiB in bytes), (1, ...)]; bad lines skipped.
fn parse_nvidia_smi(text: &str) -> Vec<(u32, u64)> {
    text.lines()
        .filter_map(|line| {
            let (index, mib) = line.split_once(',')?;
            Some((index.trim().parse().ok()?, mib.trim().parse::<u64>().ok()? << 20))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_smi_lines_become_bytes() {
        assert_eq!(
            parse_nvidia_smi("0, 1024\n1, 3\nnot a line\n"),
            [(0, 1024 << 20), (1, 3 << 20)]
        );
    }

    #[test]
    fn a_task_has_series_while_it_runs() {
        task_started();
        task_progress("j:distill/block-00/rate-4", 7, Some(2.5), Some(0.125));
        let text = global().render();
        assert!(
            text.contains("surgery_worker_task_loss{task=\"j:distill/block-00/rate-4\"} 0.125"),
            "{text}"
        );
        assert!(
            text.contains("surgery_worker_task_step{task=\"j:distill/block-00/rate-4\"} 7"),
            "{text}"
        );
        task_finished("j:distill/block-00/rate-4", "succeeded");
        let text = global().render();
        assert!(!text.contains("j:distill/block-00/rate-4"), "{text}");
        assert!(
            text.contains("surgery_worker_tasks_finished_total{outcome=\"succeeded\"}"),
            "{text}"
        );
        checkpoint_saved(1000, Duration::from_millis(20));
        assert!(global().render().contains("surgery_worker_checkpoint_bytes_total"));
    }
}
