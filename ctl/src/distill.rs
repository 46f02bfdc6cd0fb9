//! The two views of the block-rate search that `status` prints: the distillation grid
//! (one row per block, one column per candidate rate, each cell the state of that
//! (block, rate) task) and a one-line summary of the layout the select stage chose.
//! Pure functions over views and messages, so they are tested from hand-built values.

use crate::format;
use crate::view::{DistillCellView, TaskView};
use std::collections::{BTreeMap, BTreeSet};
use surgery_core::rate::Rate;

/// Rows of text under a header, ready to become a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grid {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// `BLOCK | R2 | R4 | linear` with one row per block; `None` when the job has no distill
/// tasks (yet). A (block, rate) the plan does not hold (an explicit layout) reads `-`.
pub fn grid(cells: &[DistillCellView]) -> Option<Grid> {
    if cells.is_empty() {
        return None;
    }
    // Columns in rate order: ascending R, linear (the cheapest) last.
    let mut rates: Vec<(Rate, &str)> = cells
        .iter()
        .map(|cell| (cell.rate_value(), cell.rate.as_str()))
        .collect();
    rates.sort_by_key(|(rate, _)| *rate);
    rates.dedup();
    let blocks: BTreeSet<u32> = cells.iter().map(|cell| cell.block).collect();
    let by_pair: BTreeMap<(u32, Rate), &DistillCellView> = cells
        .iter()
        .map(|cell| ((cell.block, cell.rate_value()), cell))
        .collect();

    let mut header = vec!["BLOCK".to_string()];
    header.extend(rates.iter().map(|(_, label)| label.to_string()));
    let rows = blocks
        .iter()
        .map(|block| {
            let mut row = vec![block.to_string()];
            row.extend(rates.iter().map(|(rate, _)| {
                by_pair
                    .get(&(*block, *rate))
                    .map_or_else(|| "-".to_string(), |cell| cell_text(cell))
            }));
            row
        })
        .collect();
    Some(Grid { header, rows })
}

/// `running 40/60`, `succeeded 0.01235`, or the bare state.
pub fn cell_text(cell: &DistillCellView) -> String {
    match (cell.state.as_str(), cell.step, cell.total_steps, cell.heldout_error) {
        ("running", Some(step), Some(total), _) if total > 0 => format!("running {step}/{total}"),
        ("succeeded", _, _, Some(error)) => format!("succeeded {}", format::sig4(error)),
        (state, ..) => state.to_string(),
    }
}

/// The progress column of the task table: `40/60`, the progress message, or `-`.
pub fn task_progress(task: &TaskView) -> String {
    match &task.progress {
        Some(progress) if progress.total_steps > 0 => {
            let fraction = format!("{}/{}", progress.step, progress.total_steps);
            match &progress.message {
                Some(message) => format!("{fraction} {message}"),
                None => fraction,
            }
        }
        Some(progress) => progress.message.clone().unwrap_or_else(|| "-".to_string()),
        None => "-".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::StatusView;
    use surgery_proto::v1::{DistillParams, Job, Progress, Stage, Task, TaskParams, TaskState, task_params::Kind};

    fn distill_task(block: u32, rate: u32, state: TaskState) -> Task {
        Task {
            id: format!(
                "distill/block-{block:02}/rate-{}",
                if rate == 0 { "linear".into() } else { rate.to_string() }
            ),
            stage: Stage::Distill as i32,
            state: state as i32,
            params: Some(TaskParams {
                kind: Some(Kind::Distill(DistillParams { block, rate })),
            }),
            ..Default::default()
        }
    }

    fn with_progress(mut task: Task, step: u64, total_steps: u64) -> Task {
        task.progress = Some(Progress {
            step,
            total_steps,
            ..Default::default()
        });
        task
    }

    fn with_error(mut task: Task, error: f64) -> Task {
        task.result_metrics.insert("heldout_error".into(), error);
        task
    }

    #[test]
    fn one_row_per_block_one_column_per_rate() {
        let tasks = vec![
            with_error(distill_task(0, 2, TaskState::Succeeded), 0.0123456),
            with_progress(distill_task(0, 0, TaskState::Running), 40, 60),
            distill_task(0, 4, TaskState::Pending),
            distill_task(1, 4, TaskState::Failed),
            with_progress(distill_task(1, 2, TaskState::Leased), 0, 60),
            distill_task(1, 0, TaskState::Cancelled),
            Task {
                id: "select".into(),
                stage: Stage::Select as i32,
                ..Default::default()
            },
        ];
        let status = StatusView::new(&Job::default(), &tasks);
        let grid = grid(&status.distill).unwrap();
        assert_eq!(grid.header, ["BLOCK", "R2", "R4", "linear"]);
        assert_eq!(
            grid.rows,
            [
                ["0", "succeeded 0.01235", "pending", "running 40/60"],
                ["1", "leased", "failed", "cancelled"],
            ]
        );
    }

    #[test]
    fn a_pair_outside_the_plan_reads_as_a_dash() {
        let tasks = vec![
            with_error(distill_task(3, 8, TaskState::Succeeded), 1.5),
            distill_task(5, 0, TaskState::Pending),
        ];
        let status = StatusView::new(&Job::default(), &tasks);
        let grid = grid(&status.distill).unwrap();
        assert_eq!(grid.header, ["BLOCK", "R8", "linear"]);
        assert_eq!(grid.rows, [["3", "succeeded 1.500", "-"], ["5", "-", "pending"]]);
    }

    #[test]
    fn no_distill_tasks_no_grid() {
        assert_eq!(grid(&[]), None);
    }

    #[test]
    fn a_succeeded_task_without_its_metric_shows_the_state() {
        let status = StatusView::new(&Job::default(), &[distill_task(0, 2, TaskState::Succeeded)]);
        assert_eq!(cell_text(&status.distill[0]), "succeeded");
    }

    #[test]
    fn the_layout_summary_reads_the_layer_count_from_the_spec() {
        use crate::view::layout_summary;
        let job = Job {
            spec_yaml: std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/tiny.yaml")).unwrap(),
            selected_layout: vec![surgery_proto::v1::BlockRate { block: 1, rate: 2 }],
            ..Default::default()
        };
        assert_eq!(layout_summary(&job).unwrap(), "block 1 at R2; 1 softmax");
        assert_eq!(layout_summary(&Job::default()), None);
    }
}
