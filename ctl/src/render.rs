//! The text (`--output table`) form of every view: key-value headers, borderless tables
//! with upper-case headers (columns two spaces apart, no trailing blanks, no wrapping,
//! so the text is the same on a terminal, in a pipe and in a test), and one-line stream
//! items. Everything is drawn from the views in [`crate::view`], never from prost types,
//! so the table and the JSON cannot disagree.

use crate::distill::{self, Grid};
use crate::format;
use crate::view::{
    CancelView, EventView, JobListView, JobView, LogView, MetricListView, ResumeView, SlotView, SpecSummaryView,
    StatusView, WorkerListView,
};
use comfy_table::{ContentArrangement, Table, presets};

/// A borderless table; `-` stands for an empty cell so columns stay countable by `awk`.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut table = Table::new();
    table
        .load_style(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().map(|title| title.to_string()).collect::<Vec<_>>());
    for row in rows {
        table.add_row(
            row.iter()
                .map(|cell| if cell.is_empty() { "-".to_string() } else { cell.clone() })
                .collect::<Vec<_>>(),
        );
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table.trim_fmt()
}

fn grid_table(grid: &Grid) -> String {
    let header: Vec<&str> = grid.header.iter().map(String::as_str).collect();
    table(&header, &grid.rows)
}

fn or_dash(value: Option<&str>) -> String {
    value.unwrap_or("-").to_string()
}

/// `waiting for 2 cuda slots (2 of 5)`: the reason with the queue place, when known.
fn pending_text(job: &JobView) -> Option<String> {
    let queue = job.queue_position.map(|position| match job.queue_length {
        Some(length) => format!("{position} of {length}"),
        None => position.to_string(),
    });
    match (&job.pending_reason, queue) {
        (Some(reason), Some(queue)) => Some(format!("{reason} ({queue})")),
        (Some(reason), None) => Some(reason.clone()),
        (None, Some(queue)) => Some(format!("queued ({queue})")),
        (None, None) => None,
    }
}

/// `Job:  id` lines; optional facts only when they hold.
pub fn job_header(job: &JobView) -> String {
    let mut lines: Vec<(&str, String)> = vec![
        ("Job", job.id.clone()),
        ("Name", job.name.clone()),
        ("State", job.state.clone()),
        ("Priority", job.priority.to_string()),
        ("Submitted", or_dash(job.submitted.as_deref())),
    ];
    if let Some(finished) = &job.finished {
        lines.push(("Finished", finished.clone()));
    }
    lines.push((
        "Progress",
        format!("{}/{} tasks succeeded", job.progress.succeeded, job.progress.total),
    ));
    if let Some(reason) = &job.pending_reason {
        lines.push(("Pending", reason.clone()));
    }
    if let Some(position) = job.queue_position {
        let length = job.queue_length.map_or(String::new(), |length| format!(" of {length}"));
        lines.push(("Queue", format!("{position}{length}")));
    }
    if let Some(failure) = &job.failure {
        lines.push(("Failure", failure.clone()));
    }
    if let Some(parent) = &job.forked_from {
        lines.push(("Forked", format!("from {parent}")));
        for note in &job.reuse_notes {
            lines.push(("Reused", note.clone()));
        }
    }
    lines
        .into_iter()
        .map(|(key, value)| format!("{:<11}{value}", format!("{key}:")))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn stage_table(job: &JobView) -> String {
    let rows: Vec<Vec<String>> = job
        .stages
        .iter()
        .map(|stage| {
            vec![
                stage.stage.clone(),
                stage.total.to_string(),
                stage.pending.to_string(),
                stage.running.to_string(),
                if stage.reused > 0 {
                    format!("{} ({} reused)", stage.succeeded, stage.reused)
                } else {
                    stage.succeeded.to_string()
                },
                stage.failed.to_string(),
                stage.cancelled.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "STAGE",
            "TOTAL",
            "PENDING",
            "RUNNING",
            "SUCCEEDED",
            "FAILED",
            "CANCELLED",
        ],
        &rows,
    )
}

pub fn task_table(status: &StatusView) -> String {
    let rows: Vec<Vec<String>> = status
        .tasks
        .iter()
        .map(|task| {
            let failure = match (&task.failure_class, &task.failure) {
                (Some(class), Some(failure)) => format!("{class}: {failure}"),
                (None, Some(failure)) => failure.clone(),
                (_, None) => String::new(),
            };
            let state = match &task.reused_from {
                Some(job) => format!("reused ({job})"),
                None => task.state.clone(),
            };
            vec![
                task.id.clone(),
                state,
                task.attempt.to_string(),
                task.holders.join(","),
                distill::task_progress(task),
                failure,
            ]
        })
        .collect();
    table(
        &["TASK", "STATE", "ATTEMPT", "HOLDERS", "PROGRESS", "LAST FAILURE"],
        &rows,
    )
}

/// The whole `status` text: header, stages, distillation grid, selected layout and, with
/// `--tasks`, every task; sections apart by a blank line.
pub fn status(status: &StatusView, with_tasks: bool) -> String {
    let mut sections = vec![job_header(&status.job)];
    if !status.job.stages.is_empty() {
        sections.push(stage_table(&status.job));
    }
    if let Some(grid) = distill::grid(&status.distill) {
        sections.push(format!(
            "Distillation (running: step/total; succeeded: held-out error):\n{}",
            grid_table(&grid)
        ));
    }
    if let Some(summary) = &status.job.selected_layout_summary {
        sections.push(format!("Selected layout: {summary}"));
    }
    if let Some(speed) = &status.student_speed {
        sections.push(format!("Speed: {speed}"));
    }
    if with_tasks {
        sections.push(task_table(status));
    }
    sections.join("\n\n")
}

pub fn job_list(list: &JobListView) -> String {
    let rows: Vec<Vec<String>> = list
        .jobs
        .iter()
        .map(|job| {
            vec![
                job.id.clone(),
                job.name.clone(),
                job.state.clone(),
                job.priority.to_string(),
                format!("{}/{}", job.progress.succeeded, job.progress.total),
                or_dash(job.submitted.as_deref()),
                pending_text(job).unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &["ID", "NAME", "STATE", "PRIORITY", "PROGRESS", "SUBMITTED", "PENDING"],
        &rows,
    )
}

/// `2x cuda NVIDIA H100 80GB, 1x cpu`: equal slots counted, in the order first seen.
pub fn slots(slots: &[SlotView]) -> String {
    let mut groups: Vec<(String, usize)> = Vec::new();
    for slot in slots {
        let name = match &slot.model {
            Some(model) => format!("{} {model}", slot.device),
            None => slot.device.clone(),
        };
        match groups.iter_mut().find(|(seen, _)| *seen == name) {
            Some((_, count)) => *count += 1,
            None => groups.push((name, 1)),
        }
    }
    groups
        .iter()
        .map(|(name, count)| format!("{count}x {name}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn worker_list(list: &WorkerListView, now_unix_ms: i64) -> String {
    let rows: Vec<Vec<String>> = list
        .workers
        .iter()
        .map(|worker| {
            vec![
                worker.id.clone(),
                worker.name.clone(),
                worker.host.clone(),
                worker.status.clone(),
                slots(&worker.slots),
                worker.tasks.join(","),
                format::ago(worker.last_seen_unix_ms, now_unix_ms),
            ]
        })
        .collect();
    table(&["ID", "NAME", "HOST", "STATUS", "SLOTS", "TASKS", "LAST SEEN"], &rows)
}

/// TASK ATTEMPT STEP then one column per metric name (sorted), 4 significant digits.
pub fn metric_list(list: &MetricListView) -> String {
    let names: std::collections::BTreeSet<&str> = list
        .points
        .iter()
        .flat_map(|p| p.metrics.keys().map(String::as_str))
        .collect();
    let header: Vec<String> = ["TASK", "ATTEMPT", "STEP"]
        .into_iter()
        .map(String::from)
        .chain(names.iter().map(|n| n.to_uppercase()))
        .collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let rows: Vec<Vec<String>> = list
        .points
        .iter()
        .map(|p| {
            let mut row = vec![p.task_id.clone(), p.attempt.to_string(), p.step.to_string()];
            row.extend(
                names
                    .iter()
                    .map(|n| p.metrics.get(*n).map_or_else(|| "-".to_string(), |v| format::sig4(*v))),
            );
            row
        })
        .collect();
    table(&header, &rows)
}

/// `TIME [task] kind: message`; the task part only for task events.
pub fn event_line(event: &EventView) -> String {
    let mut line = or_dash(event.time.as_deref());
    if let Some(task) = &event.task_id {
        line.push_str(&format!(" [{task}]"));
    }
    line.push(' ');
    line.push_str(&event.kind);
    if !event.message.is_empty() {
        line.push_str(": ");
        line.push_str(&event.message);
    }
    line
}

/// `TIME TASK WORKER LEVEL MESSAGE`, `-` for what a line does not have.
pub fn log_line(line: &LogView) -> String {
    let level = if line.level.is_empty() { "-" } else { &line.level };
    format!(
        "{} {} {} {level} {}",
        or_dash(line.time.as_deref()),
        or_dash(line.task_id.as_deref()),
        or_dash(line.worker_id.as_deref()),
        line.message
    )
}

/// `tiny-3f2a: cancelled`.
pub fn cancelled(view: &CancelView) -> String {
    format!("{}: {}", view.job.id, view.job.state)
}

/// `tiny-3f2a: running (3 tasks resumed)`.
pub fn resumed(view: &ResumeView) -> String {
    let count = view.resumed_tasks.len();
    let noun = if count == 1 { "task" } else { "tasks" };
    format!("{}: {} ({count} {noun} resumed)", view.job.id, view.job.state)
}

/// The last line of `watch`: `job tiny-3f2a succeeded`, with the failure if any.
pub fn watch_outcome(job: &JobView) -> String {
    match &job.failure {
        Some(failure) => format!("job {} {}: {failure}", job.id, job.state),
        None => format!("job {} {}", job.id, job.state),
    }
}

/// `ok: tiny (2 layers, 72 tokens per sample, 2 capture shards, 6 distill pairs,
/// finetune gang of 2)`.
pub fn valid_spec(summary: &SpecSummaryView) -> String {
    format!(
        "ok: {} ({} layers, {} tokens per sample, {} capture shards, {} distill pairs, finetune gang of {})",
        summary.name,
        summary.layers,
        summary.tokens_per_sample,
        summary.capture_shards,
        summary.distill_pairs,
        summary.finetune_workers
    )
}

#[cfg(test)]
mod tests;
