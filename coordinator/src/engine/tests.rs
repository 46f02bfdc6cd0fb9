//! The engine in-process on a fake clock: a real store in a temporary folder, commands
//! as the services send them, time advanced by hand, and what is durable checked by
//! reopening the store. No sleeps decide anything; the one short wait checks that a call
//! is still blocked on the disk.

use super::*;
use crate::command::{ReportedLog, Stop, TaskReport};
use crate::store::Loaded;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use surgery_core::ids::TaskRef;
use surgery_core::spec::JobSpec;

const TTL_MS: i64 = 10_000;
const WORKER_TIMEOUT_MS: i64 = 30_000;

/// A clock the test moves by hand.
struct FakeClock(AtomicI64);

impl Clock for FakeClock {
    fn now_ms(&self) -> UnixMs {
        self.0.load(Ordering::SeqCst)
    }
}

struct Harness {
    dir: tempfile::TempDir,
    clock: Arc<FakeClock>,
    /// `None` while closed (between a close and a reopen).
    engine: Option<Arc<Engine>>,
}

fn config(dir: &std::path::Path) -> Config {
    Config {
        data_dir: dir.to_path_buf(),
        lease_ttl: Duration::from_millis(TTL_MS as u64),
        worker_timeout: Duration::from_millis(WORKER_TIMEOUT_MS as u64),
        ..Config::default()
    }
}

impl Harness {
    fn new() -> Harness {
        let mut h = Harness {
            dir: tempfile::tempdir().unwrap(),
            clock: Arc::new(FakeClock(AtomicI64::new(1_000_000))),
            engine: None,
        };
        h.reopen();
        h
    }

    fn engine(&self) -> &Arc<Engine> {
        self.engine.as_ref().expect("the engine is open")
    }

    fn advance(&self, ms: i64) {
        self.clock.0.fetch_add(ms, Ordering::SeqCst);
    }

    fn now(&self) -> UnixMs {
        self.clock.now_ms()
    }

    /// Closes the engine (flushing what is queued) and releases the store file.
    fn close(&mut self) {
        let engine = self.engine.take().expect("the engine is open");
        engine.close();
        assert_eq!(Arc::strong_count(&engine), 1, "nothing else holds the engine");
    }

    /// A (re)start: a new engine on the store at the clock's time.
    fn reopen(&mut self) {
        let engine = Engine::open(config(self.dir.path()), self.clock.clone(), Metrics::new()).unwrap();
        self.engine = Some(Arc::new(engine));
    }

    /// Closes the engine and reads the store as a fresh process would.
    fn durable(&mut self) -> (Loaded, Store) {
        self.close();
        let store = Store::open(&config(self.dir.path()).store_path()).unwrap();
        (store.load().unwrap(), store)
    }

    async fn submit(&self) -> JobId {
        let yaml = include_str!("../../../configs/tiny.yaml");
        let command = Command::Submit {
            request_id: "r1".into(),
            spec_yaml: yaml.into(),
            spec: Arc::new(JobSpec::parse(yaml).unwrap()),
            id_suffix: "e1".into(),
            fork_of: None,
        };
        match self.engine().run(command).await.unwrap() {
            Outcome::Submitted(s) => s.job_id,
            other => panic!("{other:?}"),
        }
    }

    async fn register(&self, name: &str) -> WorkerId {
        let command = Command::Register {
            name: name.into(),
            host: "host".into(),
            version: "test".into(),
            slots: vec![SlotInfo {
                device: "cpu".into(),
                model: String::new(),
                memory_bytes: 0,
            }],
            id_suffix: "x".into(),
        };
        match self.engine().run(command).await.unwrap() {
            Outcome::Registered(id) => id,
            other => panic!("{other:?}"),
        }
    }

    async fn lease(&self, worker: &str) -> pb::TaskAssignment {
        self.engine()
            .lease(worker, 0, Duration::from_secs(5))
            .await
            .unwrap()
            .expect("a task")
    }

    async fn task(&self, job: &str, task: &str) -> TaskRecord {
        self.engine()
            .read(|state, _| state.cluster.task(job, task).cloned())
            .await
            .expect("task exists")
    }
}

fn beat(worker: &str, task: &pb::TaskAssignment, step: u64) -> Command {
    Command::Heartbeat {
        worker_id: worker.into(),
        reports: vec![TaskReport {
            task_id: task.task_id.clone(),
            attempt: task.attempt,
            progress: Some(Progress {
                step,
                total_steps: 10,
                metrics: BTreeMap::from([("loss".to_string(), 1.0 / (step as f64 + 1.0))]),
                message: String::new(),
                updated_ms: 0,
            }),
            logs: vec![ReportedLog {
                unix_ms: 0,
                level: "info".into(),
                message: format!("step {step}"),
            }],
        }],
    }
}

fn complete(worker: &str, task: &pb::TaskAssignment) -> Command {
    Command::Complete {
        worker_id: worker.into(),
        task: task.task_id.clone(),
        attempt: task.attempt,
        result: TaskResult::default(),
    }
}

fn task_name(assignment: &pb::TaskAssignment) -> String {
    TaskRef::parse(&assignment.task_id).unwrap().task
}

#[tokio::test]
async fn lease_heartbeat_complete_and_everything_is_durable() {
    let mut h = Harness::new();
    let job = h.submit().await;
    let w = h.register("w").await;
    let task = h.lease(&w).await;
    assert_eq!((task_name(&task).as_str(), task.attempt), ("capture/shard-0000", 1));
    assert_eq!(task.lease_deadline_unix_ms, h.now() + TTL_MS);

    h.advance(1_000);
    let answer = h.engine().run(beat(&w, &task, 3)).await.unwrap();
    assert_eq!(
        answer,
        Outcome::Heartbeat {
            stops: vec![],
            lease_deadline_ms: h.now() + TTL_MS
        }
    );
    assert_eq!(h.task(&job, "capture/shard-0000").await.state, TaskState::Running);
    assert_eq!(h.engine().run(complete(&w, &task)).await.unwrap(), Outcome::Completed);

    let (durable, store) = h.durable();
    let stored = durable.tasks.iter().find(|t| t.id == "capture/shard-0000").unwrap();
    assert_eq!((stored.state, stored.attempt), (TaskState::Succeeded, 1));
    assert_eq!(stored.progress.as_ref().unwrap().step, 3);
    assert_eq!(durable.jobs[0].state, JobState::Running);
    assert_eq!(durable.workers[0].id, w);
    let kinds: Vec<String> = store
        .events(&job, 0, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, ["submitted", "leased", "running", "succeeded"]);
    assert_eq!(
        store.metrics(&job, None).unwrap().len(),
        1,
        "the heartbeat's metric point"
    );
    assert_eq!(store.logs(&job, None, 0, 10).unwrap()[0].message, "step 3");
}

#[tokio::test]
async fn an_expired_lease_is_requeued_on_the_tick_and_the_old_attempt_fenced() {
    let h = Harness::new();
    let job = h.submit().await;
    let w1 = h.register("w1").await;
    let first = h.lease(&w1).await;
    h.engine().run(beat(&w1, &first, 1)).await.unwrap();

    // One millisecond short of the deadline nothing happens; one past it, the tick acts.
    h.advance(TTL_MS);
    h.engine().tick().await;
    assert_eq!(h.task(&job, &task_name(&first)).await.state, TaskState::Running);
    h.advance(1);
    h.engine().tick().await;
    let requeued = h.task(&job, &task_name(&first)).await;
    assert_eq!(requeued.state, TaskState::Pending);
    assert_eq!(requeued.last_failure.as_ref().unwrap().class, FailureClass::Lost);

    // The task goes out again as attempt 2; attempt 1's completion is refused.
    let w2 = h.register("w2").await;
    let second = h.lease(&w2).await;
    assert_eq!((second.task_id.as_str(), second.attempt), (first.task_id.as_str(), 2));
    assert!(matches!(
        h.engine().run(complete(&w1, &first)).await,
        Err(Reject::Stale(_))
    ));
    let Outcome::Heartbeat { stops, .. } = h.engine().run(beat(&w1, &first, 2)).await.unwrap() else {
        panic!("a heartbeat answers a heartbeat")
    };
    assert_eq!(stops.len(), 1, "the old holder is told to stop");
}

#[tokio::test]
// The write gate is held across awaits on purpose: it blocks the committer thread.
#[allow(clippy::await_holding_lock)]
async fn a_heartbeat_answers_before_its_commit_and_a_decision_waits_for_it() {
    let mut h = Harness::new();
    let job = h.submit().await;
    let w = h.register("w").await;
    let task = h.lease(&w).await;

    let held = h.engine().committer().hold_writes();
    // Carry on: answered while its batch cannot reach the disk.
    let beat_answer = tokio::time::timeout(Duration::from_secs(5), h.engine().run(beat(&w, &task, 4)))
        .await
        .expect("a heartbeat does not wait for the disk");
    assert!(matches!(beat_answer, Ok(Outcome::Heartbeat { ref stops, .. }) if stops.is_empty()));

    // A completion is a decision: it is not answered until it is durable.
    let completing = {
        let engine = h.engine().clone();
        let command = complete(&w, &task);
        tokio::spawn(async move { engine.run(command).await })
    };
    // A heartbeat that tells the worker to stop may stem from that decision: it waits too.
    let stopping = {
        let engine = h.engine().clone();
        let command = beat(&w, &task, 5);
        tokio::spawn(async move { engine.run(command).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!completing.is_finished() && !stopping.is_finished());

    drop(held);
    assert_eq!(completing.await.unwrap(), Ok(Outcome::Completed));
    let Ok(Outcome::Heartbeat { stops, .. }) = stopping.await.unwrap() else {
        panic!("a heartbeat answers a heartbeat")
    };
    assert_eq!(
        stops,
        vec![Stop {
            task_id: task.task_id.clone(),
            attempt: 1,
            reason: "task capture/shard-0000 already succeeded (attempt 1)".into(),
        }]
    );

    // The early heartbeat's progress, log line and metric point reached the store.
    let (durable, store) = h.durable();
    let stored = durable.tasks.iter().find(|t| t.id == "capture/shard-0000").unwrap();
    assert_eq!(stored.state, TaskState::Succeeded);
    assert_eq!(stored.progress.as_ref().unwrap().step, 4);
    let points = store.metrics(&job, None).unwrap();
    assert_eq!(points.iter().map(|p| p.step).collect::<Vec<_>>(), [4]);
}

#[tokio::test]
// The write gate is held across awaits on purpose: it blocks the committer thread.
#[allow(clippy::await_holding_lock)]
async fn a_grant_reaches_its_worker_only_once_durable() {
    let mut h = Harness::new();
    let w = h.register("w").await;
    // The slot parks first: nothing to do yet.
    let leasing = {
        let engine = h.engine().clone();
        let w = w.clone();
        tokio::spawn(async move { engine.lease(&w, 0, Duration::from_secs(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!leasing.is_finished());
    // The submit's scheduling pass grants the parked slot a task while the disk is held.
    let held = h.engine().committer().hold_writes();
    let submitting = {
        let engine = h.engine().clone();
        let yaml = include_str!("../../../configs/tiny.yaml");
        let command = Command::Submit {
            request_id: "r1".into(),
            spec_yaml: yaml.into(),
            spec: Arc::new(JobSpec::parse(yaml).unwrap()),
            id_suffix: "e1".into(),
            fork_of: None,
        };
        tokio::spawn(async move { engine.run(command).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!submitting.is_finished(), "the submit is not on disk yet");
    assert!(!leasing.is_finished(), "the grant is not on disk yet");
    drop(held);
    let task = leasing.await.unwrap().unwrap().expect("a task");
    let Ok(Outcome::Submitted(submitted)) = submitting.await.unwrap() else {
        panic!("a submit answers a submit")
    };
    // What the worker was handed is what a restart finds.
    let (durable, _) = h.durable();
    let stored = durable.tasks.iter().find(|t| t.id == task_name(&task)).unwrap();
    assert_eq!((stored.state, stored.attempt), (TaskState::Leased, task.attempt));
    assert_eq!(stored.lease.as_ref().unwrap().members[0].worker_id, w);
    assert_eq!(durable.jobs[0].id, submitted.job_id);
}

#[tokio::test]
async fn a_restart_gives_every_lease_one_ttl_and_keeps_the_work() {
    let mut h = Harness::new();
    let job = h.submit().await;
    let w = h.register("w").await;
    let done = h.lease(&w).await;
    h.engine().run(complete(&w, &done)).await.unwrap();
    let running = h.lease(&w).await;
    h.engine().run(beat(&w, &running, 2)).await.unwrap();

    // Down for a minute: past the lease TTL and the worker timeout.
    h.close();
    h.advance(60_000);
    h.reopen();
    let task = h.task(&job, &task_name(&running)).await;
    assert_eq!((task.state, task.attempt), (TaskState::Running, 1));
    assert_eq!(task.lease.as_ref().unwrap().deadline_ms(), h.now() + TTL_MS);
    assert_eq!(h.task(&job, &task_name(&done)).await.state, TaskState::Succeeded);
    h.engine().tick().await;
    let (status, active) = h
        .engine()
        .read(|state, _| (state.cluster.workers[&w].status, state.cluster.leases_of(&w).len()))
        .await;
    assert_eq!((status, active), (WorkerStatus::Alive, 1), "nothing expired on restart");

    // The worker carries on under its old id and attempt.
    let Outcome::Heartbeat { stops, .. } = h.engine().run(beat(&w, &running, 3)).await.unwrap() else {
        panic!("a heartbeat answers a heartbeat")
    };
    assert!(stops.is_empty(), "{stops:?}");
    assert_eq!(
        h.engine().run(complete(&w, &running)).await.unwrap(),
        Outcome::Completed
    );
    // The submit request id still names the job after the restart.
    assert_eq!(h.submit().await, job);
}
