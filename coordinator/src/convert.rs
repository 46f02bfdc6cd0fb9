//! Conversions between the coordinator's records and the wire types of surgery.v1, in
//! one place (Ballista's from_proto/to_proto habit), so prost types stay at the edge.

use crate::cluster::Cluster;
use crate::command::{Reject, ReportedLog, Stop, TaskReport};
use crate::model::*;
use crate::scheduler::Waiting;
use std::collections::BTreeMap;
use surgery_core::ids::TaskRef;
use surgery_proto::v1 as pb;
use surgery_proto::v1::{ErrorKind, ServiceError};

impl From<Reject> for ServiceError {
    fn from(reject: Reject) -> ServiceError {
        let kind = match &reject {
            Reject::NotFound(_) => ErrorKind::NotFound,
            Reject::Stale(_) => ErrorKind::StaleAttempt,
            Reject::UnknownWorker(_) => ErrorKind::UnknownWorker,
            Reject::Invalid(_) => ErrorKind::InvalidArgument,
            Reject::Conflict(_) => ErrorKind::Conflict,
            Reject::WrongState(_) => ErrorKind::FailedPrecondition,
        };
        ServiceError::new(kind, reject.to_string())
    }
}

pub fn reject_status(reject: Reject) -> tonic::Status {
    ServiceError::from(reject).into_status()
}

pub fn job_state(state: JobState) -> pb::JobState {
    state.into()
}

pub fn job_state_from(state: pb::JobState) -> Option<JobState> {
    surgery_proto::words::job_state(state)
}

pub fn task_state(state: TaskState) -> pb::TaskState {
    state.into()
}

pub fn stage(stage: Stage) -> pb::Stage {
    stage.into()
}

pub fn failure_class(class: FailureClass) -> pb::FailureClass {
    class.into()
}

/// Workers may report retryable, preempted or fatal; `lost` is the coordinator's word.
pub fn failure_class_from(class: pb::FailureClass) -> Result<FailureClass, Reject> {
    match class {
        pb::FailureClass::Retryable => Ok(FailureClass::Retryable),
        pb::FailureClass::Preempted => Ok(FailureClass::Preempted),
        pb::FailureClass::Fatal => Ok(FailureClass::Fatal),
        pb::FailureClass::Lost => Ok(FailureClass::Lost),
        pb::FailureClass::Unspecified => Err(Reject::Invalid(
            "FailTask needs a failure class: retryable, preempted or fatal".into(),
        )),
    }
}

pub fn params(params: &TaskParams) -> pb::TaskParams {
    use pb::task_params::Kind;
    let kind = match params {
        TaskParams::Capture(capture) => Kind::Capture(pb::CaptureParams {
            shard: capture.shard,
            first_prompt: capture.first_prompt,
            num_prompts: capture.num_prompts,
        }),
        TaskParams::Distill { block, rate } => Kind::Distill(pb::DistillParams {
            block: *block,
            rate: rate.code(),
        }),
        TaskParams::Select => Kind::Select(pb::SelectParams {}),
        TaskParams::Finetune => Kind::Finetune(pb::FinetuneParams {}),
        TaskParams::Export => Kind::Export(pb::ExportParams {}),
        TaskParams::Evaluate => Kind::Evaluate(pb::EvaluateParams {}),
        TaskParams::Encode(encode) => Kind::Encode(pb::EncodeParams {
            shard: encode.shard,
            first_prompt: encode.first_prompt,
            num_prompts: encode.num_prompts,
        }),
    };
    pb::TaskParams { kind: Some(kind) }
}

pub fn progress(p: &Progress) -> pb::Progress {
    pb::Progress {
        step: p.step,
        total_steps: p.total_steps,
        metrics: p.metrics.clone().into_iter().collect(),
        message: p.message.clone(),
        updated_unix_ms: p.updated_ms,
    }
}

pub fn progress_from(p: pb::Progress) -> Progress {
    Progress {
        step: p.step,
        total_steps: p.total_steps,
        metrics: p.metrics.into_iter().filter(|(_, v)| v.is_finite()).collect(),
        message: p.message,
        updated_ms: p.updated_unix_ms,
    }
}

fn members(lease: Option<&Lease>) -> Vec<pb::GangMember> {
    lease.map(|l| gang_members(&l.members)).unwrap_or_default()
}

pub fn gang_members(list: &[Member]) -> Vec<pb::GangMember> {
    list.iter()
        .map(|m| pb::GangMember {
            rank: m.rank,
            worker_id: m.worker_id.clone(),
            slot: m.slot,
            endpoint: m.endpoint.clone().unwrap_or_default(),
        })
        .collect()
}

pub fn task(task: &TaskRecord, pending_reason: &str) -> pb::Task {
    let failure = task.last_failure.as_ref();
    let result = task.result.clone().unwrap_or_default();
    pb::Task {
        job_id: task.job_id.clone(),
        id: task.id.clone(),
        stage: stage(task.stage) as i32,
        state: task_state(task.state) as i32,
        attempt: task.attempt,
        retries_used: task.retries_used,
        interruptions: task.interruptions,
        after_stages: task.after.iter().map(|s| stage(*s) as i32).collect(),
        holders: if task.state.is_active() {
            members(task.lease.as_ref())
        } else {
            Vec::new()
        },
        lease_deadline_unix_ms: task
            .lease
            .as_ref()
            .filter(|_| task.state.is_active())
            .map_or(0, |l| l.deadline_ms()),
        progress: task.progress.as_ref().map(progress),
        params: Some(params(&task.params)),
        failure: failure.map(|f| f.message.clone()).unwrap_or_default(),
        failure_class: failure.map_or(pb::FailureClass::Unspecified, |f| failure_class(f.class)) as i32,
        result_metrics: result.metrics.into_iter().collect(),
        result_artifacts: result.artifacts,
        result_labels: result.labels.into_iter().collect(),
        pending_reason: pending_reason.to_string(),
        gang_size: task.gang_size,
        reused_from: task.reused_from.clone().unwrap_or_default(),
    }
}

pub fn job(job: &JobRecord, tasks: &[TaskRecord], waiting: Option<&Waiting>) -> pb::Job {
    let mut stages: BTreeMap<Stage, pb::StageSummary> = BTreeMap::new();
    for task in tasks {
        let summary = stages.entry(task.stage).or_insert_with(|| pb::StageSummary {
            stage: stage(task.stage) as i32,
            ..Default::default()
        });
        summary.total += 1;
        match task.state {
            TaskState::Pending => summary.pending += 1,
            TaskState::Leased | TaskState::Running => summary.running += 1,
            TaskState::Succeeded => {
                summary.succeeded += 1;
                summary.reused += u32::from(task.reused_from.is_some());
            }
            TaskState::Failed => summary.failed += 1,
            TaskState::Cancelled => summary.cancelled += 1,
        }
    }
    pb::Job {
        id: job.id.clone(),
        name: job.name.clone(),
        state: job_state(job.state) as i32,
        priority: job.priority,
        submitted_unix_ms: job.submitted_ms,
        finished_unix_ms: job.finished_ms.unwrap_or(0),
        spec_yaml: job.spec_yaml.clone(),
        stages: stages.into_values().collect(),
        pending_reason: waiting.map(|w| w.reason.clone()).unwrap_or_default(),
        queue_position: waiting.map_or(0, |w| w.position),
        queue_length: waiting.map_or(0, |w| w.length),
        failure: job.failure.clone().unwrap_or_default(),
        selected_layout: job
            .selected_layout
            .iter()
            .flatten()
            .map(|pair| pb::BlockRate::from(*pair))
            .collect(),
        request_id: job.request_id.clone(),
        forked_from: job.forked_from.clone().unwrap_or_default(),
        reuse_notes: job.reuse_notes.clone(),
    }
}

/// What a worker needs to run one task (for gang members, its rank's copy).
pub fn assignment(
    job: &JobRecord,
    task: &TaskRecord,
    rank: u32,
    cluster: &Cluster,
    store_url: &str,
) -> pb::TaskAssignment {
    let inputs = cluster.tasks[&job.id]
        .list
        .iter()
        .filter(|dep| task.after.contains(&dep.stage))
        .filter_map(|dep| Some((dep.id.clone(), result(dep.result.as_ref()?))))
        .collect();
    let root_of = |job_id: &str| {
        format!(
            "{}/{}",
            store_url.trim_end_matches('/'),
            surgery_core::layout::job_root(job_id)
        )
    };
    let reused_roots = cluster.tasks[&job.id]
        .list
        .iter()
        .filter_map(|t| Some((t.id.clone(), root_of(t.reused_from.as_deref()?))))
        .collect();
    pb::TaskAssignment {
        job_id: job.id.clone(),
        task_id: TaskRef::new(&job.id, &task.id).to_string(),
        attempt: task.attempt,
        stage: stage(task.stage) as i32,
        params: Some(params(&task.params)),
        spec_yaml: job.spec_yaml.clone(),
        gang_size: task.gang_size,
        rank,
        lease_deadline_unix_ms: task.lease.as_ref().map_or(0, |l| l.deadline_ms()),
        layout: job
            .selected_layout
            .iter()
            .flatten()
            .map(|pair| pb::BlockRate::from(*pair))
            .collect(),
        job_root_url: root_of(&job.id),
        inputs,
        reused_roots,
    }
}

pub fn event(e: &Event) -> pb::JobEvent {
    pb::JobEvent {
        seq: e.seq,
        unix_ms: e.unix_ms,
        job_id: e.job_id.clone(),
        task_id: e.task_id.clone().unwrap_or_default(),
        kind: e.kind.clone(),
        message: e.message.clone(),
        job_state: e.job_state.map_or(pb::JobState::Unspecified, job_state) as i32,
        task_state: e.task_state.map_or(pb::TaskState::Unspecified, task_state) as i32,
    }
}

pub fn log_line(l: &LogRecord) -> pb::LogLine {
    pb::LogLine {
        seq: l.seq,
        unix_ms: l.unix_ms,
        job_id: l.job_id.clone(),
        task_id: l.task_id.clone(),
        worker_id: l.worker_id.clone(),
        level: l.level.clone(),
        message: l.message.clone(),
    }
}

pub fn metric_point(m: &MetricPoint) -> pb::MetricPoint {
    pb::MetricPoint {
        task_id: m.task_id.clone(),
        attempt: m.attempt,
        step: m.step,
        unix_ms: m.unix_ms,
        metrics: m.metrics.clone().into_iter().collect(),
    }
}

pub fn worker(w: &WorkerRecord, tasks: Vec<String>) -> pb::Worker {
    pb::Worker {
        id: w.id.clone(),
        name: w.name.clone(),
        host: w.host.clone(),
        version: w.version.clone(),
        slots: w.slots.iter().map(slot).collect(),
        status: w.status.name().to_string(),
        last_seen_unix_ms: w.last_seen_ms,
        registered_unix_ms: w.registered_ms,
        tasks,
    }
}

pub fn stop(stop: Stop) -> pb::StopTask {
    pb::StopTask {
        task_id: stop.task_id,
        attempt: stop.attempt,
        reason: stop.reason,
    }
}

pub fn slot(s: &SlotInfo) -> pb::Slot {
    pb::Slot {
        device: s.device.clone(),
        model: s.model.clone(),
        memory_bytes: s.memory_bytes,
    }
}

pub fn slots_from(slots: Vec<pb::Slot>) -> Vec<SlotInfo> {
    slots
        .into_iter()
        .map(|s| SlotInfo {
            device: s.device,
            model: s.model,
            memory_bytes: s.memory_bytes,
        })
        .collect()
}

pub fn reports_from(reports: Vec<pb::TaskReport>) -> Vec<TaskReport> {
    reports
        .into_iter()
        .map(|r| TaskReport {
            task_id: r.task_id,
            attempt: r.attempt,
            progress: r.progress.map(progress_from),
            logs: r
                .logs
                .into_iter()
                .map(|l| ReportedLog {
                    unix_ms: l.unix_ms,
                    level: if l.level.is_empty() { "info".into() } else { l.level },
                    message: l.message,
                })
                .collect(),
        })
        .collect()
}

pub fn result(result: &TaskResult) -> pb::TaskResult {
    pb::TaskResult {
        metrics: result.metrics.clone().into_iter().collect(),
        artifacts: result.artifacts.clone(),
        labels: result.labels.clone().into_iter().collect(),
    }
}

pub fn result_from(result: Option<pb::TaskResult>) -> TaskResult {
    let result = result.unwrap_or_default();
    TaskResult {
        metrics: result.metrics.into_iter().collect(),
        artifacts: result.artifacts,
        labels: result.labels.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests;
