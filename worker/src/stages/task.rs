//! What a running task shares with whoever runs it (the agent): the stop request (from the
//! coordinator or from SIGTERM), the latest progress and the log lines waiting for the next
//! heartbeat, and how a task ends. The stages write these; the agent reads them and turns
//! them into wire messages, so nothing here knows about the coordinator.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Why a task should stop early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The coordinator took the task away (cancelled job, lost lease, lost gang member):
    /// stop at once, report nothing.
    Revoked,
    /// The worker is leaving (SIGTERM): checkpoint, release the lease as a preemption.
    Preempted,
}

/// How a task ended, other than with a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskError {
    /// I/O, out of memory, a broken peer: retried, counted against the budget.
    Retryable(String),
    /// Bad input, NaN loss, shape mismatch: the job fails.
    Fatal(String),
    /// A gang peer is gone (a collective timed out or broke): retried without counting,
    /// like a lost lease; the coordinator requeues the whole gang.
    Lost(String),
    /// Stopped for a [`StopReason`].
    Stopped(StopReason),
}

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TaskError::Retryable(m) => write!(f, "{m}"),
            TaskError::Fatal(m) => write!(f, "{m}"),
            TaskError::Lost(m) => write!(f, "{m}"),
            TaskError::Stopped(StopReason::Revoked) => write!(f, "stopped: the coordinator revoked the lease"),
            TaskError::Stopped(StopReason::Preempted) => write!(f, "stopped: the worker is shutting down"),
        }
    }
}

impl TaskError {
    /// Errors from I/O and storage are retryable unless said otherwise.
    pub fn retryable(err: impl std::fmt::Display) -> TaskError {
        TaskError::Retryable(err.to_string())
    }

    pub fn fatal(err: impl std::fmt::Display) -> TaskError {
        TaskError::Fatal(err.to_string())
    }
}

/// What a finished task reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskOutput {
    pub metrics: BTreeMap<String, f64>,
    /// Object-store paths relative to the job root.
    pub artifacts: Vec<String>,
    /// Words beside the numbers (export: the device it measured speed on).
    pub labels: BTreeMap<String, String>,
    /// Only the gang's rank 0 completes a gang task; the other ranks just finish.
    pub report: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub step: u64,
    pub total_steps: u64,
    pub metrics: BTreeMap<String, f64>,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct LogLine {
    pub unix_ms: i64,
    pub level: &'static str,
    pub message: String,
}

const RUNNING: u8 = 0;
const REVOKED: u8 = 1;
const PREEMPTED: u8 = 2;

/// Shared between the task's thread and the agent's heartbeat.
pub struct TaskHandle {
    /// `job:task`.
    pub task_id: String,
    pub attempt: u32,
    stop: AtomicU8,
    progress: Mutex<Progress>,
    logs: Mutex<Vec<LogLine>>,
    started: Instant,
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl TaskHandle {
    pub fn new(task_id: String, attempt: u32) -> TaskHandle {
        TaskHandle {
            task_id,
            attempt,
            stop: AtomicU8::new(RUNNING),
            progress: Mutex::new(Progress::default()),
            logs: Mutex::new(Vec::new()),
            started: Instant::now(),
        }
    }

    /// Asks the task to stop; a revocation wins over a preemption (nothing to save).
    pub fn request_stop(&self, reason: StopReason) {
        let code = match reason {
            StopReason::Revoked => REVOKED,
            StopReason::Preempted => PREEMPTED,
        };
        let _ = self.stop.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| {
            (now != REVOKED).then_some(code)
        });
    }

    pub fn stop_requested(&self) -> Option<StopReason> {
        match self.stop.load(Ordering::SeqCst) {
            REVOKED => Some(StopReason::Revoked),
            PREEMPTED => Some(StopReason::Preempted),
            _ => None,
        }
    }

    /// `Err(Stopped)` when a stop was requested: `?` it at safe points of a loop.
    pub fn check(&self) -> Result<(), TaskError> {
        match self.stop_requested() {
            Some(reason) => Err(TaskError::Stopped(reason)),
            None => Ok(()),
        }
    }

    /// Records progress at `step` of `total`, adding throughput and ETA from the time the
    /// task started (steps per second since `first_step`, the step it resumed at).
    pub fn report(&self, step: u64, total: u64, first_step: u64, mut metrics: BTreeMap<String, f64>, message: &str) {
        let elapsed = self.started.elapsed().as_secs_f64();
        let done = step.saturating_sub(first_step);
        if done > 0 && elapsed > 0.0 {
            let rate = done as f64 / elapsed;
            metrics.insert("steps_per_s".into(), rate);
            metrics.insert("eta_s".into(), total.saturating_sub(step) as f64 / rate);
        }
        crate::metrics::task_progress(
            &self.task_id,
            step,
            metrics.get("steps_per_s").copied(),
            metrics.get("loss").copied(),
        );
        *self.progress.lock().expect("progress lock") = Progress {
            step,
            total_steps: total,
            metrics,
            message: message.to_string(),
        };
    }

    pub fn log(&self, level: &'static str, message: impl Into<String>) {
        let message = message.into();
        match level {
            "warn" => tracing::warn!(task = %self.task_id, "{message}"),
            _ => tracing::info!(task = %self.task_id, "{message}"),
        }
        self.logs.lock().expect("logs lock").push(LogLine {
            unix_ms: unix_ms(),
            level,
            message,
        });
    }

    /// The progress and the log lines since the last call (for a heartbeat).
    pub fn drain(&self) -> (Progress, Vec<LogLine>) {
        let progress = self.progress.lock().expect("progress lock").clone();
        let logs = std::mem::take(&mut *self.logs.lock().expect("logs lock"));
        (progress, logs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocation_wins_over_preemption() {
        let handle = TaskHandle::new("j:t".into(), 1);
        assert!(handle.check().is_ok());
        handle.request_stop(StopReason::Preempted);
        assert_eq!(handle.check(), Err(TaskError::Stopped(StopReason::Preempted)));
        handle.request_stop(StopReason::Revoked);
        assert_eq!(handle.stop_requested(), Some(StopReason::Revoked));
        handle.request_stop(StopReason::Preempted);
        assert_eq!(handle.stop_requested(), Some(StopReason::Revoked));
    }

    #[test]
    fn progress_and_logs_drain_once() {
        let handle = TaskHandle::new("j:t".into(), 1);
        handle.report(5, 10, 0, BTreeMap::from([("loss".to_string(), 0.5)]), "training");
        handle.log("info", "hello");
        let (progress, logs) = handle.drain();
        assert_eq!((progress.step, progress.total_steps), (5, 10));
        assert_eq!(progress.metrics["loss"], 0.5);
        assert!(progress.metrics.contains_key("eta_s"));
        assert_eq!(logs.len(), 1);
        assert!(handle.drain().1.is_empty());
    }
}
