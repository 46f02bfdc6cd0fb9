//! Per-stage progress for `surgeryctl watch`: how far each stage of a job is and when it
//! should end, from the tasks' own reports (a pure function of a GetJob answer, so the
//! bars and their tests agree).
//!
//! A stage's fraction is the mean over its tasks of: 1 for a succeeded task, step /
//! total_steps for a running one that has reported, 0 otherwise. Its ETA comes from the
//! rates the workers report (`steps_per_s`, `eta_s` in a task's progress metrics): the
//! slowest running task's `eta_s`, plus the tasks not yet started run in waves as wide as
//! the running set, each as long as a running task's whole run (`total_steps /
//! steps_per_s`, averaged). No running task with a rate, no ETA.

use surgery_proto::v1::{Stage, Task, TaskState};

/// One stage's progress.
#[derive(Debug, Clone, PartialEq)]
pub struct StageProgress {
    pub stage: Stage,
    pub tasks: usize,
    pub succeeded: usize,
    pub running: usize,
    pub failed: usize,
    /// 0..=1.
    pub fraction: f64,
    /// Seconds until the stage's last task should end.
    pub eta_s: Option<f64>,
}

impl StageProgress {
    /// Every task succeeded.
    pub fn done(&self) -> bool {
        self.tasks > 0 && self.succeeded == self.tasks
    }
}

fn metric(task: &Task, name: &str) -> Option<f64> {
    let value = *task.progress.as_ref()?.metrics.get(name)?;
    (value.is_finite() && value >= 0.0).then_some(value)
}

/// How far one task is, 0..=1.
fn task_fraction(task: &Task) -> f64 {
    match task.state() {
        TaskState::Succeeded => 1.0,
        TaskState::Running => match &task.progress {
            Some(p) if p.total_steps > 0 => (p.step as f64 / p.total_steps as f64).min(1.0),
            _ => 0.0,
        },
        _ => 0.0,
    }
}

/// The stages of `tasks` in pipeline order, each with its progress.
pub fn stage_progress(tasks: &[Task]) -> Vec<StageProgress> {
    let mut stages: Vec<Stage> = tasks.iter().map(|t| t.stage()).collect();
    stages.sort_by_key(|s| *s as i32);
    stages.dedup();
    stages
        .into_iter()
        .map(|stage| {
            let of_stage: Vec<&Task> = tasks.iter().filter(|t| t.stage() == stage).collect();
            let count = |state: TaskState| of_stage.iter().filter(|t| t.state() == state).count();
            // A leased task holds a slot though it has not reported yet.
            let running: Vec<&&Task> = of_stage
                .iter()
                .filter(|t| matches!(t.state(), TaskState::Running | TaskState::Leased))
                .collect();
            let waiting = count(TaskState::Pending);
            StageProgress {
                stage,
                tasks: of_stage.len(),
                succeeded: count(TaskState::Succeeded),
                running: running.len(),
                failed: count(TaskState::Failed),
                fraction: of_stage.iter().map(|t| task_fraction(t)).sum::<f64>() / of_stage.len() as f64,
                eta_s: eta(&running, waiting),
            }
        })
        .collect()
}

fn eta(running: &[&&Task], waiting: usize) -> Option<f64> {
    if running.is_empty() {
        return None;
    }
    let slowest = running
        .iter()
        .filter_map(|t| metric(t, "eta_s"))
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))?;
    if waiting == 0 {
        return Some(slowest);
    }
    let whole: Vec<f64> = running
        .iter()
        .filter_map(|t| {
            let total = t.progress.as_ref()?.total_steps as f64;
            let rate = metric(t, "steps_per_s").filter(|r| *r > 0.0)?;
            Some(total / rate)
        })
        .collect();
    if whole.is_empty() {
        return None;
    }
    let mean = whole.iter().sum::<f64>() / whole.len() as f64;
    let waves = waiting.div_ceil(running.len());
    Some(slowest + waves as f64 * mean)
}

/// `4/6 tasks, 1 running, ETA 3m 20s` (and `, 1 failed`), the text beside a stage's bar.
pub fn stage_message(p: &StageProgress) -> String {
    let mut message = format!("{}/{} tasks", p.succeeded, p.tasks);
    if p.running > 0 {
        message.push_str(&format!(", {} running", p.running));
    }
    if p.failed > 0 {
        message.push_str(&format!(", {} failed", p.failed));
    }
    if !p.done()
        && let Some(eta) = p.eta_s
    {
        let rounded = std::time::Duration::from_secs(eta.round() as u64);
        message.push_str(&format!(", ETA {}", humantime::format_duration(rounded)));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use surgery_proto::v1::Progress;

    fn task(stage: Stage, state: TaskState, step: u64, total: u64, rate: Option<f64>) -> Task {
        let mut metrics = HashMap::new();
        if let Some(rate) = rate {
            metrics.insert("steps_per_s".to_string(), rate);
            metrics.insert("eta_s".to_string(), (total - step) as f64 / rate);
        }
        let mut t = Task {
            progress: Some(Progress {
                step,
                total_steps: total,
                metrics,
                ..Default::default()
            }),
            ..Default::default()
        };
        t.set_stage(stage);
        t.set_state(state);
        t
    }

    #[test]
    fn fractions_and_counts_per_stage_in_pipeline_order() {
        let tasks = vec![
            task(Stage::Distill, TaskState::Running, 50, 200, Some(10.0)),
            task(Stage::Capture, TaskState::Succeeded, 7, 7, None),
            task(Stage::Distill, TaskState::Succeeded, 200, 200, None),
            task(Stage::Distill, TaskState::Failed, 10, 200, None),
            task(Stage::Capture, TaskState::Succeeded, 7, 7, None),
        ];
        let stages = stage_progress(&tasks);
        assert_eq!(
            stages.iter().map(|s| s.stage).collect::<Vec<_>>(),
            [Stage::Capture, Stage::Distill]
        );
        assert!(stages[0].done() && stages[0].fraction == 1.0);
        let distill = &stages[1];
        assert_eq!(
            (distill.tasks, distill.succeeded, distill.running, distill.failed),
            (3, 1, 1, 1)
        );
        // (1 + 0.25 + 0) / 3: a failed task counts as not done.
        assert!((distill.fraction - 1.25 / 3.0).abs() < 1e-12);
        assert_eq!(distill.eta_s, Some(15.0));
        assert_eq!(stage_message(distill), "1/3 tasks, 1 running, 1 failed, ETA 15s");
    }

    #[test]
    fn waiting_tasks_run_in_waves_as_wide_as_the_running_set() {
        // Two running (ETAs 10 s and 30 s; whole runs 20 s and 40 s, mean 30 s), three
        // waiting: two more waves of 30 s after the slowest finishes.
        let mut tasks = vec![
            task(Stage::Distill, TaskState::Running, 100, 200, Some(10.0)),
            task(Stage::Distill, TaskState::Running, 40, 160, Some(4.0)),
        ];
        for _ in 0..3 {
            tasks.push(task(Stage::Distill, TaskState::Pending, 0, 0, None));
        }
        let distill = &stage_progress(&tasks)[0];
        assert_eq!(distill.eta_s, Some(30.0 + 2.0 * 30.0));
        assert_eq!(stage_message(distill), "0/5 tasks, 2 running, ETA 1m 30s");
    }

    #[test]
    fn no_rate_no_eta() {
        let tasks = vec![
            task(Stage::Finetune, TaskState::Running, 0, 100, None),
            task(Stage::Export, TaskState::Pending, 0, 0, None),
        ];
        let stages = stage_progress(&tasks);
        assert_eq!(stages[0].eta_s, None);
        assert_eq!(stages[1].eta_s, None);
        assert_eq!(stage_message(&stages[1]), "0/1 tasks");
        assert!(stage_progress(&[]).is_empty());
    }
}
