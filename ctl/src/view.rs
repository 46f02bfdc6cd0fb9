//! The shapes `--output json` and `--output yaml` print, and the table output is drawn
//! from: plain serde structs converted from the protocol's messages, so scripts see
//! stable, readable names (`"state": "running"`, RFC 3339 times, `null` for "not set")
//! however prost spells the wire types. Field order is the printed order; fields are
//! only ever added.

use crate::format;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use surgery_core::rate::Rate;
use surgery_core::results::HELDOUT_ERROR;
use surgery_core::select::describe_layout;
use surgery_core::spec::{CaptureShard, JobSpec};
use surgery_proto::v1::{self as pb, FailureClass, JobState, Stage, TaskState, task_params::Kind as ParamsKind};
use surgery_proto::words;

/// A job state's word (`queued`, ...; `unknown` if unset). The words are surgery-core's.
pub fn job_state_word(state: JobState) -> &'static str {
    words::job_state(state).map_or("unknown", |s| s.word())
}

/// A task state's word (`pending`, `leased`, ...; `unknown` if unset).
pub fn task_state_word(state: TaskState) -> &'static str {
    words::task_state(state).map_or("unknown", |s| s.word())
}

pub fn stage_word(stage: Stage) -> &'static str {
    words::stage(stage).map_or("unknown", |s| s.word())
}

fn failure_class_word(class: FailureClass) -> Option<&'static str> {
    words::failure_class(class).map(|c| c.word())
}

/// The export task's speed-up in words, with the job's video size from its spec.
pub fn student_speed(job: &pb::Job, tasks: &[pb::Task]) -> Option<String> {
    let export = tasks
        .iter()
        .find(|t| t.id == surgery_core::ids::EXPORT_TASK && t.state() == TaskState::Succeeded)?;
    let speedup = *export.result_metrics.get(surgery_core::results::STUDENT_SPEEDUP)?;
    let device = export
        .result_labels
        .get(surgery_core::results::SPEED_DEVICE)
        .map_or("the export's device", String::as_str);
    let resolution = JobSpec::parse(&job.spec_yaml)
        .map(|s| s.video.size())
        .unwrap_or_else(|_| "the job's resolution".into());
    Some(surgery_core::results::speed_sentence(speedup, &resolution, device))
}

/// The summary of a job's selected layout; `None` before the select stage ran. The layout
/// may list only the blocks it changed; the spec says how many there are.
pub fn layout_summary(job: &pb::Job) -> Option<String> {
    if job.selected_layout.is_empty() {
        return None;
    }
    let layers = JobSpec::parse(&job.spec_yaml)
        .ok()
        .map(|spec| spec.model_shape().layers);
    let layout: Vec<(u32, Rate)> = job.selected_layout.iter().map(pb::BlockRate::pair).collect();
    Some(describe_layout(&layout, layers))
}

/// The protocol's empty string is "not set"; JSON says `null`.
fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_string())
}

fn non_zero(value: u32) -> Option<u32> {
    (value != 0).then_some(value)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    pub id: String,
    pub name: String,
    pub state: String,
    pub priority: i32,
    pub request_id: Option<String>,
    pub submitted: Option<String>,
    pub finished: Option<String>,
    /// Why the job is not progressing; `null` while its tasks run.
    pub pending_reason: Option<String>,
    /// 1-based place among waiting jobs; `null` when not waiting.
    pub queue_position: Option<u32>,
    pub queue_length: Option<u32>,
    pub failure: Option<String>,
    pub progress: ProgressCount,
    pub stages: Vec<StageView>,
    pub selected_layout: Vec<BlockRateView>,
    /// `blocks 0,3 at R2; block 5 at linear; 27 softmax`; `null` before select ran.
    pub selected_layout_summary: Option<String>,
    /// The job this one was forked from; `null` for a fresh job.
    #[serde(default)]
    pub forked_from: Option<String>,
    /// What the fork reused, a line per stage.
    #[serde(default)]
    pub reuse_notes: Vec<String>,
}

/// Tasks succeeded out of all tasks of the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressCount {
    pub succeeded: u32,
    pub total: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageView {
    pub stage: String,
    pub total: u32,
    pub pending: u32,
    pub running: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub cancelled: u32,
    /// Of the succeeded: reused from the job this one was forked from.
    #[serde(default)]
    pub reused: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRateView {
    pub block: u32,
    /// `R2`, `linear` or `softmax`.
    pub rate: String,
}

impl From<&pb::Job> for JobView {
    fn from(job: &pb::Job) -> Self {
        let stages: Vec<StageView> = job.stages.iter().map(StageView::from).collect();
        let progress = ProgressCount {
            succeeded: stages.iter().map(|stage| stage.succeeded).sum(),
            total: stages.iter().map(|stage| stage.total).sum(),
        };
        let queue_position = non_zero(job.queue_position);
        JobView {
            id: job.id.clone(),
            name: job.name.clone(),
            state: job_state_word(job.state()).to_string(),
            priority: job.priority,
            request_id: non_empty(&job.request_id),
            submitted: format::time_seconds(job.submitted_unix_ms),
            finished: format::time_seconds(job.finished_unix_ms),
            pending_reason: non_empty(&job.pending_reason),
            queue_position,
            queue_length: queue_position.and(non_zero(job.queue_length)),
            failure: non_empty(&job.failure),
            progress,
            stages,
            selected_layout: job
                .selected_layout
                .iter()
                .map(|entry| BlockRateView {
                    block: entry.block,
                    rate: entry.pair().1.to_string(),
                })
                .collect(),
            selected_layout_summary: layout_summary(job),
            forked_from: non_empty(&job.forked_from),
            reuse_notes: job.reuse_notes.clone(),
        }
    }
}

impl From<&pb::StageSummary> for StageView {
    fn from(summary: &pb::StageSummary) -> Self {
        StageView {
            stage: stage_word(summary.stage()).to_string(),
            total: summary.total,
            pending: summary.pending,
            running: summary.running,
            succeeded: summary.succeeded,
            failed: summary.failed,
            cancelled: summary.cancelled,
            reused: summary.reused,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    pub id: String,
    pub stage: String,
    pub state: String,
    pub attempt: u32,
    pub retries_used: u32,
    pub interruptions: u32,
    pub gang_size: u32,
    /// Worker ids holding the current lease, rank order.
    pub holders: Vec<String>,
    pub lease_deadline: Option<String>,
    pub params: Option<ParamsView>,
    pub progress: Option<ProgressView>,
    pub pending_reason: Option<String>,
    pub failure: Option<String>,
    /// `retryable`, `preempted`, `fatal` or `lost`; `null` when the task has not failed.
    pub failure_class: Option<String>,
    pub result_metrics: BTreeMap<String, f64>,
    pub result_artifacts: Vec<String>,
    /// Stages whose every task must succeed first.
    pub after_stages: Vec<String>,
    /// The job that ran this task and holds its outputs, when it was reused by a fork.
    #[serde(default)]
    pub reused_from: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ParamsView {
    Encode(CaptureShard),
    Capture(CaptureShard),
    Distill { block: u32, rate: String },
    Select,
    Finetune,
    Export,
    Evaluate,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressView {
    pub step: u64,
    pub total_steps: u64,
    pub message: Option<String>,
    pub metrics: BTreeMap<String, f64>,
    pub updated: Option<String>,
}

impl From<&pb::Task> for TaskView {
    fn from(task: &pb::Task) -> Self {
        TaskView {
            id: task.id.clone(),
            stage: stage_word(task.stage()).to_string(),
            state: task_state_word(task.state()).to_string(),
            attempt: task.attempt,
            retries_used: task.retries_used,
            interruptions: task.interruptions,
            gang_size: task.gang_size,
            holders: task.holders.iter().map(|member| member.worker_id.clone()).collect(),
            lease_deadline: format::time_seconds(task.lease_deadline_unix_ms),
            params: task
                .params
                .as_ref()
                .and_then(|params| params.kind.as_ref())
                .map(ParamsView::from),
            progress: task.progress.as_ref().map(ProgressView::from),
            pending_reason: non_empty(&task.pending_reason),
            failure: non_empty(&task.failure),
            failure_class: failure_class_word(task.failure_class()).map(str::to_string),
            result_metrics: task.result_metrics.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            result_artifacts: task.result_artifacts.clone(),
            after_stages: task.after_stages().map(|s| stage_word(s).to_string()).collect(),
            reused_from: non_empty(&task.reused_from),
        }
    }
}

impl From<&ParamsKind> for ParamsView {
    fn from(kind: &ParamsKind) -> Self {
        match kind {
            ParamsKind::Encode(encode) => ParamsView::Encode(CaptureShard {
                shard: encode.shard,
                first_prompt: encode.first_prompt,
                num_prompts: encode.num_prompts,
            }),
            ParamsKind::Capture(capture) => ParamsView::Capture(CaptureShard {
                shard: capture.shard,
                first_prompt: capture.first_prompt,
                num_prompts: capture.num_prompts,
            }),
            ParamsKind::Distill(distill) => ParamsView::Distill {
                block: distill.block,
                rate: distill.rate().to_string(),
            },
            ParamsKind::Select(_) => ParamsView::Select,
            ParamsKind::Finetune(_) => ParamsView::Finetune,
            ParamsKind::Export(_) => ParamsView::Export,
            ParamsKind::Evaluate(_) => ParamsView::Evaluate,
        }
    }
}

impl From<&pb::Progress> for ProgressView {
    fn from(progress: &pb::Progress) -> Self {
        ProgressView {
            step: progress.step,
            total_steps: progress.total_steps,
            message: non_empty(&progress.message),
            metrics: progress.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            updated: format::time_seconds(progress.updated_unix_ms),
        }
    }
}

/// One cell of the distillation table: the task training one block at one rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistillCellView {
    pub block: u32,
    /// `R2`, `R4`, ..., `linear`.
    pub rate: String,
    pub task_id: String,
    pub state: String,
    /// Training progress while the task runs; `null` otherwise.
    pub step: Option<u64>,
    pub total_steps: Option<u64>,
    /// e_br, once the task succeeded.
    pub heldout_error: Option<f64>,
}

impl DistillCellView {
    /// The cell's rate (its `rate` text is the rate's display form).
    pub fn rate_value(&self) -> Rate {
        self.rate.parse().unwrap_or(Rate::Linear)
    }

    /// The cell of a distill task; `None` for a task of another stage.
    pub fn of_task(task: &pb::Task) -> Option<Self> {
        let Some(ParamsKind::Distill(distill)) = task.params.as_ref().and_then(|params| params.kind.as_ref()) else {
            return None;
        };
        let state = task.state();
        let running = state == TaskState::Running;
        let progress = task.progress.as_ref().filter(|_| running);
        Some(DistillCellView {
            block: distill.block,
            rate: distill.rate().to_string(),
            task_id: task.id.clone(),
            state: task_state_word(state).to_string(),
            step: progress.map(|progress| progress.step),
            total_steps: progress.map(|progress| progress.total_steps),
            heldout_error: (state == TaskState::Succeeded)
                .then(|| task.result_metrics.get(HELDOUT_ERROR).copied())
                .flatten(),
        })
    }
}

/// What `surgeryctl status` prints: the job, its distillation cells and every task
/// (always all of them here; `--tasks` only adds the task table to the text output).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    pub job: JobView,
    pub distill: Vec<DistillCellView>,
    pub tasks: Vec<TaskView>,
    /// The export's measured speed-up in words (`student 1.90x faster than the teacher at
    /// 480x832x81 on NVIDIA H100`); `null` before export.
    #[serde(default)]
    pub student_speed: Option<String>,
}

impl StatusView {
    pub fn new(job: &pb::Job, tasks: &[pb::Task]) -> Self {
        let mut distill: Vec<DistillCellView> = tasks.iter().filter_map(DistillCellView::of_task).collect();
        distill.sort_by_key(|cell| (cell.block, cell.rate_value()));
        StatusView {
            job: JobView::from(job),
            distill,
            tasks: tasks.iter().map(TaskView::from).collect(),
            student_speed: student_speed(job, tasks),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobListView {
    pub jobs: Vec<JobView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmitView {
    pub job: JobView,
    /// False when the request id had already created this job.
    pub created: bool,
    pub request_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancelView {
    pub job: JobView,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResumeView {
    pub job: JobView,
    pub resumed_tasks: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerView {
    pub id: String,
    pub name: String,
    pub host: String,
    pub version: String,
    /// `alive`, `lost` or `replaced`.
    pub status: String,
    pub slots: Vec<SlotView>,
    pub tasks: Vec<String>,
    pub last_seen: Option<String>,
    pub registered: Option<String>,
    /// For "3s ago" in the table.
    #[serde(skip)]
    pub last_seen_unix_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotView {
    /// `cuda` or `cpu`.
    pub device: String,
    pub model: Option<String>,
    pub memory_bytes: u64,
}

impl From<&pb::Worker> for WorkerView {
    fn from(worker: &pb::Worker) -> Self {
        WorkerView {
            id: worker.id.clone(),
            name: worker.name.clone(),
            host: worker.host.clone(),
            version: worker.version.clone(),
            status: worker.status.clone(),
            slots: worker
                .slots
                .iter()
                .map(|slot| SlotView {
                    device: slot.device.clone(),
                    model: non_empty(&slot.model),
                    memory_bytes: slot.memory_bytes,
                })
                .collect(),
            tasks: worker.tasks.clone(),
            last_seen: format::time_seconds(worker.last_seen_unix_ms),
            registered: format::time_seconds(worker.registered_unix_ms),
            last_seen_unix_ms: worker.last_seen_unix_ms,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerListView {
    pub workers: Vec<WorkerView>,
}

/// One reported training step of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricPointView {
    pub task_id: String,
    pub attempt: u32,
    pub step: u64,
    pub time: Option<String>,
    pub metrics: std::collections::BTreeMap<String, f64>,
}

impl From<&pb::MetricPoint> for MetricPointView {
    fn from(point: &pb::MetricPoint) -> Self {
        MetricPointView {
            task_id: point.task_id.clone(),
            attempt: point.attempt,
            step: point.step,
            time: format::time_millis(point.unix_ms),
            metrics: point.metrics.clone().into_iter().collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricListView {
    pub points: Vec<MetricPointView>,
}

/// One line of `watch` (JSON Lines with `--output json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventView {
    pub seq: u64,
    pub time: Option<String>,
    pub job_id: String,
    pub task_id: Option<String>,
    pub kind: String,
    pub message: String,
    pub job_state: Option<String>,
    pub task_state: Option<String>,
}

impl From<&pb::JobEvent> for EventView {
    fn from(event: &pb::JobEvent) -> Self {
        EventView {
            seq: event.seq,
            time: format::time_millis(event.unix_ms),
            job_id: event.job_id.clone(),
            task_id: non_empty(&event.task_id),
            kind: event.kind.clone(),
            message: event.message.clone(),
            job_state: (event.job_state() != JobState::Unspecified).then(|| job_state_word(event.job_state()).into()),
            task_state: (event.task_state() != TaskState::Unspecified)
                .then(|| task_state_word(event.task_state()).into()),
        }
    }
}

/// One line of `logs` (JSON Lines with `--output json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogView {
    pub seq: u64,
    pub time: Option<String>,
    pub job_id: String,
    pub task_id: Option<String>,
    pub worker_id: Option<String>,
    pub level: String,
    pub message: String,
}

impl From<&pb::LogLine> for LogView {
    fn from(line: &pb::LogLine) -> Self {
        LogView {
            seq: line.seq,
            time: format::time_millis(line.unix_ms),
            job_id: line.job_id.clone(),
            task_id: non_empty(&line.task_id),
            worker_id: non_empty(&line.worker_id),
            level: line.level.clone(),
            message: line.message.clone(),
        }
    }
}

/// One problem with a spec, wherever it was found (locally or by the coordinator).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldErrorView {
    /// Dotted path, `surgery.rates[1]`; empty for the whole document.
    pub path: String,
    /// 1-based; 0 when unknown.
    pub line: u32,
    /// 1-based; 0 when unknown.
    pub column: u32,
    pub message: String,
}

impl FieldErrorView {
    /// `job.yaml:14:5: surgery.rates[1]: message`, leaving out a position that is 0, so
    /// editors and CI annotators can jump to the line.
    pub fn compiler_line(&self, file: &str) -> String {
        let position = match (self.line, self.column) {
            (0, _) => String::new(),
            (line, 0) => format!(":{line}"),
            (line, column) => format!(":{line}:{column}"),
        };
        let path = if self.path.is_empty() { "(document)" } else { &self.path };
        format!("{file}{position}: {path}: {}", self.message)
    }
}

impl From<&surgery_core::spec::FieldError> for FieldErrorView {
    fn from(error: &surgery_core::spec::FieldError) -> Self {
        FieldErrorView {
            path: error.path.clone(),
            line: error.line,
            column: error.column,
            message: error.message.clone(),
        }
    }
}

impl From<&pb::FieldError> for FieldErrorView {
    fn from(error: &pb::FieldError) -> Self {
        FieldErrorView {
            path: error.path.clone(),
            line: error.line,
            column: error.column,
            message: error.message.clone(),
        }
    }
}

/// What `surgeryctl validate --output json` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidateView {
    pub valid: bool,
    pub errors: Vec<FieldErrorView>,
    /// `null` when the spec is invalid.
    pub summary: Option<SpecSummaryView>,
}

/// What a valid spec will make, as far as the spec alone tells (the plan itself is the
/// coordinator's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecSummaryView {
    pub name: String,
    pub layers: u32,
    pub tokens_per_sample: u64,
    pub capture_shards: u32,
    pub distill_pairs: usize,
    pub finetune_workers: u32,
}

impl From<&surgery_core::spec::JobSpec> for SpecSummaryView {
    fn from(spec: &surgery_core::spec::JobSpec) -> Self {
        SpecSummaryView {
            name: spec.name.clone(),
            layers: spec.model_shape().layers,
            tokens_per_sample: spec.tokens(),
            capture_shards: spec.capture_shards(),
            distill_pairs: spec.distill_pairs().len(),
            finetune_workers: spec.resources.finetune_workers,
        }
    }
}
