//! Records -> wire -> records wherever both directions exist, for every variant of every
//! enum that crosses; and the one-way conversions checked against the wire's own words.

use super::*;
use crate::command::Reject;
use surgery_proto::words;

#[test]
fn job_states_round_trip_and_unspecified_is_none() {
    for state in JobState::ALL {
        assert_eq!(job_state_from(job_state(state)), Some(state), "{state:?}");
    }
    assert_eq!(job_state_from(pb::JobState::Unspecified), None);
}

#[test]
fn failure_classes_round_trip_and_unspecified_is_refused() {
    for class in FailureClass::ALL {
        assert_eq!(failure_class_from(failure_class(class)), Ok(class), "{class:?}");
    }
    assert_eq!(
        failure_class_from(pb::FailureClass::Unspecified),
        Err(Reject::Invalid(
            "FailTask needs a failure class: retryable, preempted or fatal".into()
        ))
    );
}

#[test]
fn task_states_and_stages_read_back_through_the_wire_words() {
    for state in TaskState::ALL {
        assert_eq!(words::task_state(task_state(state)), Some(state), "{state:?}");
    }
    for s in Stage::ALL {
        assert_eq!(words::stage(stage(s)), Some(s), "{s:?}");
    }
}

#[test]
fn progress_round_trips_and_non_finite_metrics_stay_out() {
    let record = Progress {
        step: 7,
        total_steps: 60,
        metrics: BTreeMap::from([("loss".to_string(), 0.125), ("lr".to_string(), 1e-4)]),
        message: "warming up".into(),
        updated_ms: 1_700_000_000_123,
    };
    assert_eq!(progress_from(progress(&record)), record);

    let mut wire = progress(&record);
    wire.metrics.insert("grad_norm".into(), f64::NAN);
    wire.metrics.insert("scale".into(), f64::INFINITY);
    assert_eq!(progress_from(wire), record, "NaN and inf are dropped on the way in");
}

#[test]
fn results_round_trip() {
    let record = TaskResult {
        metrics: BTreeMap::from([("heldout_error".to_string(), 0.043_21)]),
        artifacts: vec!["distill/block-00/rate-2/phi.safetensors".into()],
        labels: BTreeMap::from([("speed_device".to_string(), "NVIDIA H200".to_string())]),
    };
    assert_eq!(result_from(Some(result(&record))), record);
    assert_eq!(result_from(None), TaskResult::default());
}

#[test]
fn slots_round_trip_through_a_worker() {
    let record = WorkerRecord {
        id: "w-abc123".into(),
        name: "w".into(),
        host: "gpu-7".into(),
        version: "0.1.0".into(),
        slots: vec![
            SlotInfo {
                device: "cuda".into(),
                model: "NVIDIA H200".into(),
                memory_bytes: 141 << 30,
            },
            SlotInfo {
                device: "cpu".into(),
                model: String::new(),
                memory_bytes: 0,
            },
        ],
        status: WorkerStatus::Alive,
        registered_ms: 1,
        last_seen_ms: 2,
    };
    let wire = worker(&record, vec!["j:capture/shard-0000".into()]);
    assert_eq!(slots_from(wire.slots), record.slots);
    assert_eq!(wire.tasks, ["j:capture/shard-0000"]);
    for status in [WorkerStatus::Alive, WorkerStatus::Lost, WorkerStatus::Replaced] {
        let wire = worker(
            &WorkerRecord {
                status,
                ..record.clone()
            },
            vec![],
        );
        assert_eq!(wire.status, status.name());
    }
}

#[test]
fn every_task_param_kind_reaches_the_wire() {
    use pb::task_params::Kind;
    let cases = [
        (
            TaskParams::Encode(surgery_core::spec::CaptureShard {
                shard: 1,
                first_prompt: 8,
                num_prompts: 8,
            }),
            Kind::Encode(pb::EncodeParams {
                shard: 1,
                first_prompt: 8,
                num_prompts: 8,
            }),
        ),
        (
            TaskParams::Capture(surgery_core::spec::CaptureShard {
                shard: 3,
                first_prompt: 12,
                num_prompts: 4,
            }),
            Kind::Capture(pb::CaptureParams {
                shard: 3,
                first_prompt: 12,
                num_prompts: 4,
            }),
        ),
        (
            TaskParams::Distill {
                block: 7,
                rate: Rate::Hybrid(4),
            },
            Kind::Distill(pb::DistillParams { block: 7, rate: 4 }),
        ),
        (
            TaskParams::Distill {
                block: 7,
                rate: Rate::Linear,
            },
            Kind::Distill(pb::DistillParams { block: 7, rate: 0 }),
        ),
        (TaskParams::Select, Kind::Select(pb::SelectParams {})),
        (TaskParams::Finetune, Kind::Finetune(pb::FinetuneParams {})),
        (TaskParams::Export, Kind::Export(pb::ExportParams {})),
        (TaskParams::Evaluate, Kind::Evaluate(pb::EvaluateParams {})),
    ];
    for (record, kind) in cases {
        assert_eq!(params(&record).kind, Some(kind), "{record:?}");
    }
    // The worker reads the rate back from its code.
    let wire = params(&TaskParams::Distill {
        block: 0,
        rate: Rate::Linear,
    });
    let Some(Kind::Distill(distill)) = wire.kind else {
        panic!("{wire:?}")
    };
    assert_eq!(distill.rate(), Rate::Linear);
}

#[test]
fn events_carry_their_states_both_ways() {
    for (job, task) in [
        (Some(JobState::Running), Some(TaskState::Leased)),
        (Some(JobState::Failed), None),
        (None, None),
    ] {
        let record = Event {
            seq: 9,
            job_id: "j".into(),
            task_id: task.map(|_| "select".to_string()),
            unix_ms: 5,
            kind: "leased".into(),
            message: "m".into(),
            job_state: job,
            task_state: task,
        };
        let wire = event(&record);
        assert_eq!(words::decode(wire.job_state, words::job_state), job);
        assert_eq!(words::decode(wire.task_state, words::task_state), task);
        assert_eq!(wire.task_id, record.task_id.clone().unwrap_or_default());
    }
}

#[test]
fn a_job_counts_its_tasks_by_state_and_stage() {
    let spec = include_str!("../../../configs/tiny.yaml");
    let plan = crate::planner::plan(&"j".to_string(), &surgery_core::spec::JobSpec::parse(spec).unwrap(), 0);
    let mut tasks: Vec<TaskRecord> = plan.into_iter().filter(|t| t.stage == Stage::Distill).collect();
    assert!(tasks.len() >= TaskState::ALL.len());
    for (task, state) in tasks.iter_mut().zip(TaskState::ALL) {
        task.state = state;
    }
    let record = JobRecord {
        id: "j".into(),
        name: "tiny".into(),
        request_id: "r".into(),
        spec_yaml: spec.into(),
        priority: 0,
        seq: 1,
        submitted_ms: 1,
        started_ms: Some(2),
        finished_ms: None,
        state: JobState::Running,
        failure: None,
        requirements: Requirements {
            device: "cpu".into(),
            min_memory_bytes: 0,
            max_retries: 3,
            max_interruptions: 10,
        },
        selected_layout: Some(vec![(0, Rate::Softmax), (1, Rate::Linear)]),
        forked_from: None,
        reuse_notes: Vec::new(),
    };
    let wire = job(&record, &tasks, None);
    let [distill] = wire.stages.as_slice() else {
        panic!("{:?}", wire.stages)
    };
    let others = tasks.len() as u32 - TaskState::ALL.len() as u32;
    assert_eq!(
        (
            distill.total,
            distill.pending,
            distill.running,
            distill.succeeded,
            distill.failed,
            distill.cancelled
        ),
        (tasks.len() as u32, 1 + others, 2, 1, 1, 1),
        "leased and running both count as running"
    );
    let layout: Vec<(u32, Rate)> = wire.selected_layout.iter().map(pb::BlockRate::pair).collect();
    assert_eq!(Some(layout), record.selected_layout);
    assert_eq!(words::decode(wire.state, words::job_state), Some(record.state));
}

#[test]
fn every_reject_keeps_its_kind_code_and_reason_on_the_wire() {
    use tonic::Code;
    let cases = [
        (
            Reject::NotFound("job x does not exist".into()),
            ErrorKind::NotFound,
            Code::NotFound,
        ),
        (
            Reject::Stale("attempt 1 is stale".into()),
            ErrorKind::StaleAttempt,
            Code::FailedPrecondition,
        ),
        (
            Reject::UnknownWorker("ghost".into()),
            ErrorKind::UnknownWorker,
            Code::NotFound,
        ),
        (
            Reject::Invalid("slot 3 does not exist".into()),
            ErrorKind::InvalidArgument,
            Code::InvalidArgument,
        ),
        (
            Reject::Conflict("request id reused".into()),
            ErrorKind::Conflict,
            Code::AlreadyExists,
        ),
        (
            Reject::WrongState("job j already ended (succeeded)".into()),
            ErrorKind::FailedPrecondition,
            Code::FailedPrecondition,
        ),
    ];
    for (reject, kind, code) in cases {
        let message = reject.to_string();
        let status = reject_status(reject);
        assert_eq!(status.code(), code, "{message}");
        let back = surgery_proto::error::decode(&status);
        assert_eq!((back.kind(), back.message.as_str()), (kind, message.as_str()));
    }
}

#[test]
fn reports_from_the_wire_default_the_log_level() {
    let reports = reports_from(vec![pb::TaskReport {
        task_id: "j:select".into(),
        attempt: 2,
        progress: None,
        logs: vec![
            pb::LogLine {
                level: String::new(),
                message: "a".into(),
                ..Default::default()
            },
            pb::LogLine {
                level: "warn".into(),
                message: "b".into(),
                ..Default::default()
            },
        ],
    }]);
    let levels: Vec<&str> = reports[0].logs.iter().map(|l| l.level.as_str()).collect();
    assert_eq!(levels, ["info", "warn"]);
    assert_eq!((reports[0].task_id.as_str(), reports[0].attempt), ("j:select", 2));
}
