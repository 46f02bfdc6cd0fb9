//! The text forms, from hand-built protocol messages through the views, asserted to the
//! character: other tools and the end-to-end tests read this output.

use super::*;
use crate::view::{EventView, JobView, LogView, StatusView, WorkerView};
use surgery_proto::v1::{
    BlockRate, CaptureParams, DistillParams, FailureClass, GangMember, Job, JobEvent, JobState, LogLine, Progress,
    Slot, Stage, StageSummary, Task, TaskParams, TaskState, Worker, task_params::Kind,
};

const SUBMITTED_MS: i64 = 1_740_830_400_000; // 2025-03-01T12:00:00Z

fn stage(stage: Stage, total: u32, pending: u32, running: u32, succeeded: u32) -> StageSummary {
    StageSummary {
        stage: stage as i32,
        total,
        pending,
        running,
        succeeded,
        ..Default::default()
    }
}

fn running_job() -> Job {
    Job {
        id: "tiny-3f2a".into(),
        name: "tiny".into(),
        state: JobState::Running as i32,
        priority: 5,
        submitted_unix_ms: SUBMITTED_MS,
        stages: vec![
            stage(Stage::Capture, 2, 0, 0, 2),
            stage(Stage::Distill, 4, 1, 1, 2),
            stage(Stage::Select, 1, 1, 0, 0),
        ],
        ..Default::default()
    }
}

fn distill(block: u32, rate: u32, state: TaskState) -> Task {
    Task {
        id: format!(
            "distill/block-{block:02}/rate-{}",
            if rate == 0 { "linear".into() } else { rate.to_string() }
        ),
        stage: Stage::Distill as i32,
        state: state as i32,
        attempt: 1,
        params: Some(TaskParams {
            kind: Some(Kind::Distill(DistillParams { block, rate })),
        }),
        ..Default::default()
    }
}

fn running_tasks() -> Vec<Task> {
    let capture = Task {
        id: "capture/shard-0000".into(),
        stage: Stage::Capture as i32,
        state: TaskState::Succeeded as i32,
        attempt: 2,
        params: Some(TaskParams {
            kind: Some(Kind::Capture(CaptureParams {
                shard: 0,
                first_prompt: 0,
                num_prompts: 4,
            })),
        }),
        failure: "worker lost".into(),
        failure_class: FailureClass::Lost as i32,
        ..Default::default()
    };
    let mut done = distill(0, 2, TaskState::Succeeded);
    done.result_metrics.insert("heldout_error".into(), 0.0123456);
    let mut done_linear = distill(1, 2, TaskState::Succeeded);
    done_linear.result_metrics.insert("heldout_error".into(), 0.2);
    let mut running = distill(0, 0, TaskState::Running);
    running.holders = vec![GangMember {
        rank: 0,
        worker_id: "w-7".into(),
        ..Default::default()
    }];
    running.progress = Some(Progress {
        step: 40,
        total_steps: 60,
        ..Default::default()
    });
    vec![capture, done, running, done_linear, distill(1, 0, TaskState::Pending)]
}

#[test]
fn status_of_a_running_job() {
    let view = StatusView::new(&running_job(), &running_tasks());
    assert_eq!(
        status(&view, false),
        "\
Job:       tiny-3f2a
Name:      tiny
State:     running
Priority:  5
Submitted: 2025-03-01T12:00:00Z
Progress:  4/7 tasks succeeded

STAGE    TOTAL  PENDING  RUNNING  SUCCEEDED  FAILED  CANCELLED
capture  2      0        0        2          0       0
distill  4      1        1        2          0       0
select   1      1        0        0          0       0

Distillation (running: step/total; succeeded: held-out error):
BLOCK  R2                 linear
0      succeeded 0.01235  running 40/60
1      succeeded 0.2000   pending"
    );
}

#[test]
fn status_with_tasks_lists_every_task() {
    let view = StatusView::new(&running_job(), &running_tasks());
    let text = status(&view, true);
    let task_section = text.rsplit("\n\n").next().unwrap();
    assert_eq!(
        task_section,
        "\
TASK                          STATE      ATTEMPT  HOLDERS  PROGRESS  LAST FAILURE
capture/shard-0000            succeeded  2        -        -         lost: worker lost
distill/block-00/rate-2       succeeded  1        -        -         -
distill/block-00/rate-linear  running    1        w-7      40/60     -
distill/block-01/rate-2       succeeded  1        -        -         -
distill/block-01/rate-linear  pending    1        -        -         -"
    );
}

#[test]
fn a_waiting_job_shows_its_reason_and_queue_place() {
    let job = Job {
        id: "big-1".into(),
        name: "big".into(),
        state: JobState::Queued as i32,
        submitted_unix_ms: SUBMITTED_MS,
        pending_reason: "waiting for 8 cuda slots with 80 GiB".into(),
        queue_position: 2,
        queue_length: 5,
        ..Default::default()
    };
    let view = StatusView::new(&job, &[]);
    assert_eq!(
        status(&view, false),
        "\
Job:       big-1
Name:      big
State:     queued
Priority:  0
Submitted: 2025-03-01T12:00:00Z
Progress:  0/0 tasks succeeded
Pending:   waiting for 8 cuda slots with 80 GiB
Queue:     2 of 5"
    );
    assert_eq!(view.job.queue_position, Some(2));
    assert_eq!(view.job.queue_length, Some(5));
}

#[test]
fn a_finished_job_shows_its_failure_and_layout() {
    let job = Job {
        id: "tiny-9".into(),
        name: "tiny".into(),
        state: JobState::Failed as i32,
        submitted_unix_ms: SUBMITTED_MS,
        finished_unix_ms: SUBMITTED_MS + 3_600_000,
        failure: "finetune: loss is NaN at step 12".into(),
        selected_layout: vec![
            BlockRate { block: 0, rate: 2 },
            BlockRate { block: 3, rate: 2 },
            BlockRate { block: 5, rate: 0 },
        ],
        ..Default::default()
    };
    let text = status(&StatusView::new(&job, &[]), false);
    assert!(text.contains("\nFinished:  2025-03-01T13:00:00Z\n"), "{text}");
    assert!(text.contains("\nFailure:   finetune: loss is NaN at step 12"), "{text}");
    // No spec to count layers from: only the blocks the layout names.
    assert!(
        text.ends_with("\n\nSelected layout: blocks 0,3 at R2; block 5 at linear"),
        "{text}"
    );
}

#[test]
fn status_json_shape() {
    let view = StatusView::new(&running_job(), &running_tasks());
    let json = serde_json::to_value(&view).unwrap();
    assert_eq!(json["job"]["id"], "tiny-3f2a");
    assert_eq!(json["job"]["state"], "running");
    assert_eq!(json["job"]["submitted"], "2025-03-01T12:00:00Z");
    assert_eq!(json["job"]["finished"], serde_json::Value::Null);
    assert_eq!(json["job"]["progress"], serde_json::json!({"succeeded": 4, "total": 7}));
    assert_eq!(json["job"]["stages"][1]["stage"], "distill");
    assert_eq!(
        json["distill"][1],
        serde_json::json!({
            "block": 0, "rate": "linear", "task_id": "distill/block-00/rate-linear", "state": "running",
            "step": 40, "total_steps": 60, "heldout_error": null
        })
    );
    assert_eq!(json["distill"][0]["heldout_error"], 0.0123456);
    assert_eq!(
        json["tasks"][0]["params"],
        serde_json::json!({"kind": "capture", "shard": 0, "first_prompt": 0, "num_prompts": 4})
    );
    assert_eq!(json["tasks"][0]["failure_class"], "lost");
    assert_eq!(json["tasks"][2]["holders"], serde_json::json!(["w-7"]));
    assert_eq!(
        json["tasks"][2]["params"],
        serde_json::json!({"kind": "distill", "block": 0, "rate": "linear"})
    );
}

#[test]
fn job_list_table() {
    let mut waiting = running_job();
    waiting.id = "tiny-4b1c".into();
    waiting.state = JobState::Queued as i32;
    waiting.stages.clear();
    waiting.pending_reason = "no cpu slot free".into();
    waiting.queue_position = 1;
    waiting.queue_length = 2;
    let view = JobListView {
        jobs: vec![JobView::from(&running_job()), JobView::from(&waiting)],
    };
    assert_eq!(
        job_list(&view),
        "\
ID         NAME  STATE    PRIORITY  PROGRESS  SUBMITTED             PENDING
tiny-3f2a  tiny  running  5         4/7       2025-03-01T12:00:00Z  -
tiny-4b1c  tiny  queued   5         0/0       2025-03-01T12:00:00Z  no cpu slot free (1 of 2)"
    );
    assert_eq!(
        job_list(&JobListView { jobs: vec![] }),
        "ID  NAME  STATE  PRIORITY  PROGRESS  SUBMITTED  PENDING"
    );
}

fn slot(device: &str, model: &str) -> Slot {
    Slot {
        device: device.into(),
        model: model.into(),
        memory_bytes: 0,
    }
}

#[test]
fn worker_table_counts_slots_and_ages() {
    let now = SUBMITTED_MS + 10_000;
    let gpu = Worker {
        id: "w-1".into(),
        name: "gpu-0".into(),
        host: "node-a".into(),
        status: "alive".into(),
        slots: vec![slot("cuda", "NVIDIA H100 80GB"), slot("cuda", "NVIDIA H100 80GB")],
        tasks: vec!["distill/block-00/rate-2".into(), "distill/block-00/rate-4".into()],
        last_seen_unix_ms: now - 3_000,
        ..Default::default()
    };
    let cpu = Worker {
        id: "w-2".into(),
        name: "cpu-0".into(),
        host: "node-b".into(),
        status: "lost".into(),
        slots: vec![slot("cpu", "")],
        last_seen_unix_ms: now - 600_000,
        ..Default::default()
    };
    let view = WorkerListView {
        workers: vec![WorkerView::from(&gpu), WorkerView::from(&cpu)],
    };
    assert_eq!(
        worker_list(&view, now),
        "\
ID   NAME   HOST    STATUS  SLOTS                     TASKS                                            LAST SEEN
w-1  gpu-0  node-a  alive   2x cuda NVIDIA H100 80GB  distill/block-00/rate-2,distill/block-00/rate-4  3s ago
w-2  cpu-0  node-b  lost    1x cpu                    -                                                10m ago"
    );
    let mixed = WorkerView::from(&Worker {
        slots: vec![slot("cuda", "A"), slot("cpu", ""), slot("cuda", "A")],
        ..Default::default()
    });
    assert_eq!(slots(&mixed.slots), "2x cuda A, 1x cpu");
}

#[test]
fn event_and_log_lines() {
    let task_event = JobEvent {
        seq: 7,
        unix_ms: SUBMITTED_MS + 123,
        job_id: "tiny-3f2a".into(),
        task_id: "distill/block-00/rate-2".into(),
        kind: "task_succeeded".into(),
        message: "held-out error 0.01235".into(),
        task_state: TaskState::Succeeded as i32,
        ..Default::default()
    };
    assert_eq!(
        event_line(&EventView::from(&task_event)),
        "2025-03-01T12:00:00.123Z [distill/block-00/rate-2] task_succeeded: held-out error 0.01235"
    );
    let job_event = JobEvent {
        seq: 8,
        unix_ms: SUBMITTED_MS,
        job_id: "tiny-3f2a".into(),
        kind: "job_succeeded".into(),
        job_state: JobState::Succeeded as i32,
        ..Default::default()
    };
    let view = EventView::from(&job_event);
    assert_eq!(event_line(&view), "2025-03-01T12:00:00.000Z job_succeeded");
    assert_eq!(
        serde_json::to_string(&view).unwrap(),
        r#"{"seq":8,"time":"2025-03-01T12:00:00.000Z","job_id":"tiny-3f2a","task_id":null,"kind":"job_succeeded","message":"","job_state":"succeeded","task_state":null}"#
    );

    let log = LogLine {
        seq: 1,
        unix_ms: SUBMITTED_MS + 5,
        job_id: "tiny-3f2a".into(),
        task_id: "finetune".into(),
        worker_id: "w-1".into(),
        level: "INFO".into(),
        message: "step 10 loss 0.31".into(),
    };
    assert_eq!(
        log_line(&LogView::from(&log)),
        "2025-03-01T12:00:00.005Z finetune w-1 INFO step 10 loss 0.31"
    );
    let coordinator_line = LogLine {
        message: "job submitted".into(),
        ..Default::default()
    };
    assert_eq!(log_line(&LogView::from(&coordinator_line)), "- - - - job submitted");
}

#[test]
fn control_and_watch_lines() {
    let mut job = running_job();
    job.state = JobState::Cancelled as i32;
    assert_eq!(
        cancelled(&CancelView {
            job: JobView::from(&job)
        }),
        "tiny-3f2a: cancelled"
    );
    job.state = JobState::Running as i32;
    let resume = ResumeView {
        job: JobView::from(&job),
        resumed_tasks: vec!["finetune".into()],
    };
    assert_eq!(resumed(&resume), "tiny-3f2a: running (1 task resumed)");
    job.state = JobState::Failed as i32;
    job.failure = "finetune failed 4 times".into();
    assert_eq!(
        watch_outcome(&JobView::from(&job)),
        "job tiny-3f2a failed: finetune failed 4 times"
    );
}

fn export_task(speedup: f64, device: Option<&str>) -> Task {
    let mut task = Task {
        id: "export".into(),
        stage: Stage::Export as i32,
        state: TaskState::Succeeded as i32,
        attempt: 1,
        ..Default::default()
    };
    task.result_metrics.insert("student_speedup".into(), speedup);
    if let Some(device) = device {
        task.result_labels.insert("speed_device".into(), device.into());
    }
    task
}

#[test]
fn a_succeeded_job_shows_the_students_measured_speed() {
    let job = Job {
        id: "tiny-9".into(),
        name: "tiny".into(),
        state: JobState::Succeeded as i32,
        submitted_unix_ms: SUBMITTED_MS,
        spec_yaml: include_str!("../../../configs/tiny.yaml").into(),
        ..Default::default()
    };
    let text = status(
        &StatusView::new(&job, &[export_task(1.894, Some("NVIDIA H200"))]),
        false,
    );
    assert!(
        text.ends_with("\n\nSpeed: student 1.89x faster than the teacher at 64x96x9 on NVIDIA H200"),
        "{text}"
    );
    // A slower student says so, and a result without its device still reads.
    let view = StatusView::new(&job, &[export_task(0.8, None)]);
    assert_eq!(
        view.student_speed.as_deref(),
        Some("student 1.25x slower than the teacher at 64x96x9 on the export's device")
    );
    // Before export there is no speed line.
    let view = StatusView::new(&job, &[]);
    assert_eq!(view.student_speed, None);
    assert!(!status(&view, false).contains("Speed:"));
}
