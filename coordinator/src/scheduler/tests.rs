//! Every scheduler decision and task transition, driven with a synthetic clock: no
//! sleeps, no threads, no store.

use super::*;
use crate::command::{Command, GangReady, Outcome, Reject, ReportedLog, Stop, Submitted, TaskReport};
use crate::decision::{Decision, WaitingSlot};
use surgery_core::ids::TaskRef;

fn full_task_id(job: &str, task: &str) -> String {
    TaskRef::new(job, task).to_string()
}
use std::sync::Arc;
use surgery_core::spec::JobSpec;

const TTL: i64 = 10_000;
const WORKER_TIMEOUT: i64 = 30_000;

fn tiny_yaml(name: &str, priority: i32, extra: &str) -> String {
    include_str!("../../../configs/tiny.yaml")
        .replace("name: tiny", &format!("name: {name}"))
        .replace("priority: 0", &format!("priority: {priority}"))
        + extra
}

struct Sim {
    now: UnixMs,
    cluster: Cluster,
    waiting: Vec<WaitingSlot>,
    timing: Timing,
    next_id: u32,
}

impl Sim {
    fn new() -> Sim {
        Sim {
            now: 1_000_000,
            cluster: Cluster::default(),
            waiting: Vec::new(),
            timing: Timing {
                lease_ttl_ms: TTL,
                worker_timeout_ms: WORKER_TIMEOUT,
            },
            next_id: 0,
        }
    }

    fn suffix(&mut self) -> String {
        self.next_id += 1;
        format!("{:04}", self.next_id)
    }

    fn submit(&mut self, yaml: &str) -> JobId {
        let suffix = self.suffix();
        let request = format!("req-{suffix}");
        self.submit_as(&request, yaml, &suffix).unwrap().job_id
    }

    /// Applies a command at the simulated time.
    fn apply(&mut self, command: Command) -> Result<Outcome, Reject> {
        self.cluster.apply(self.now, self.timing, command)
    }

    fn submit_as(&mut self, request_id: &str, yaml: &str, suffix: &str) -> Result<Submitted, Reject> {
        let command = Command::Submit {
            request_id: request_id.into(),
            spec_yaml: yaml.into(),
            spec: Arc::new(JobSpec::parse(yaml).unwrap()),
            id_suffix: suffix.into(),
            fork_of: None,
        };
        match self.apply(command)? {
            Outcome::Submitted(submitted) => Ok(submitted),
            other => panic!("{other:?}"),
        }
    }

    fn fork(&mut self, parent: &str, yaml: &str) -> Result<JobId, Reject> {
        let suffix = self.suffix();
        let command = Command::Submit {
            request_id: format!("req-{suffix}"),
            spec_yaml: yaml.into(),
            spec: Arc::new(JobSpec::parse(yaml).unwrap()),
            id_suffix: suffix,
            fork_of: Some(parent.into()),
        };
        match self.apply(command)? {
            Outcome::Submitted(submitted) => Ok(submitted.job_id),
            other => panic!("{other:?}"),
        }
    }

    fn cancel(&mut self, job: &str) -> Result<(), Reject> {
        let command = Command::Cancel {
            job_id: job.into(),
            reason: String::new(),
        };
        self.apply(command).map(|o| assert_eq!(o, Outcome::Cancelled))
    }

    fn resume(&mut self, job: &str) -> Result<Vec<TaskId>, Reject> {
        match self.apply(Command::Resume { job_id: job.into() })? {
            Outcome::Resumed(tasks) => Ok(tasks),
            other => panic!("{other:?}"),
        }
    }

    /// A worker heard from without reporting any task.
    fn touch(&mut self, worker: &str) -> Result<(), Reject> {
        self.beat(worker, vec![]).map(|_| ())
    }

    fn beat(&mut self, worker: &str, reports: Vec<TaskReport>) -> Result<Vec<Stop>, Reject> {
        let command = Command::Heartbeat {
            worker_id: worker.into(),
            reports,
        };
        match self.apply(command)? {
            Outcome::Heartbeat { stops, .. } => Ok(stops),
            other => panic!("{other:?}"),
        }
    }

    fn worker(&mut self, name: &str, device: &str, slots: u32) -> WorkerId {
        let suffix = self.suffix();
        let slots = (0..slots)
            .map(|_| SlotInfo {
                device: device.into(),
                model: String::new(),
                memory_bytes: 80 << 30,
            })
            .collect();
        let command = Command::Register {
            name: name.into(),
            host: "host".into(),
            version: "test".into(),
            slots,
            id_suffix: suffix,
        };
        match self.apply(command).unwrap() {
            Outcome::Registered(id) => id,
            other => panic!("{other:?}"),
        }
    }

    fn wait(&mut self, worker: &str, slot: u32) {
        self.waiting.push(WaitingSlot {
            worker_id: worker.into(),
            slot,
            since_ms: self.now,
        });
    }

    /// Decides and applies until nothing more happens; granted slots stop waiting.
    fn tick(&mut self) -> Vec<Decision> {
        let mut all = Vec::new();
        loop {
            let schedule = decide(self.now, &self.cluster, &self.waiting, self.timing);
            if schedule.decisions.is_empty() {
                return all;
            }
            for d in &schedule.decisions {
                self.apply(Command::Decision(d.clone())).unwrap();
                if let Decision::Grant { slots, .. } = d {
                    self.waiting
                        .retain(|w| !slots.iter().any(|s| s.worker_id == w.worker_id && s.slot == w.slot));
                }
            }
            all.extend(schedule.decisions);
        }
    }

    fn waiting_info(&self) -> BTreeMap<JobId, Waiting> {
        decide(self.now, &self.cluster, &self.waiting, self.timing).waiting
    }

    fn task(&self, job: &str, task: &str) -> &TaskRecord {
        self.cluster.task(job, task).unwrap()
    }

    fn heartbeat(&mut self, worker: &str, job: &str, task: &str, attempt: u32, step: u64) -> Result<Vec<Stop>, Reject> {
        let report = TaskReport {
            task_id: full_task_id(job, task),
            attempt,
            progress: Some(Progress {
                step,
                total_steps: 100,
                metrics: BTreeMap::from([("loss".to_string(), 1.0 / (step as f64 + 1.0))]),
                message: String::new(),
                updated_ms: 0,
            }),
            logs: vec![ReportedLog {
                unix_ms: 0,
                level: "info".into(),
                message: format!("step {step}"),
            }],
        };
        self.beat(worker, vec![report])
    }

    fn complete(&mut self, worker: &str, job: &str, task: &str, attempt: u32) -> Result<(), Reject> {
        self.complete_with(worker, job, task, attempt, TaskResult::default())
    }

    fn complete_with(
        &mut self,
        worker: &str,
        job: &str,
        task: &str,
        attempt: u32,
        result: TaskResult,
    ) -> Result<(), Reject> {
        let command = Command::Complete {
            worker_id: worker.into(),
            task: full_task_id(job, task),
            attempt,
            result,
        };
        self.apply(command).map(|o| assert_eq!(o, Outcome::Completed))
    }

    fn fail(
        &mut self,
        worker: &str,
        job: &str,
        task: &str,
        attempt: u32,
        class: FailureClass,
    ) -> Result<String, Reject> {
        let command = Command::Fail {
            worker_id: worker.into(),
            task: full_task_id(job, task),
            attempt,
            class,
            message: "boom".into(),
        };
        match self.apply(command)? {
            Outcome::Failed(outcome) => Ok(outcome),
            other => panic!("{other:?}"),
        }
    }

    /// `worker` checks in to the job's finetune gang at attempt 1.
    fn rendezvous(
        &mut self,
        worker: &str,
        job: &str,
        rank: u32,
        endpoint: &str,
        nccl_unique_id: &[u8],
    ) -> Result<Option<GangReady>, Reject> {
        let command = Command::Rendezvous {
            worker_id: worker.into(),
            task: full_task_id(job, "finetune"),
            attempt: 1,
            rank,
            endpoint: endpoint.into(),
            nccl_unique_id: nccl_unique_id.to_vec(),
        };
        match self.apply(command)? {
            Outcome::Rendezvous(ready) => Ok(ready),
            other => panic!("{other:?}"),
        }
    }

    /// Runs every task of `stage` to success on `worker`'s slot 0, one after another.
    fn finish_stage(&mut self, job: &str, stage: Stage, worker: &str) {
        loop {
            let pending = self.cluster.tasks[job]
                .list
                .iter()
                .any(|t| t.stage == stage && !t.state.is_terminal());
            if !pending {
                // Let the coordinator run what became runnable (select).
                self.tick();
                return;
            }
            self.wait(worker, 0);
            let granted = self.tick();
            let Some(Decision::Grant { task_id, .. }) =
                granted.into_iter().find(|d| matches!(d, Decision::Grant { .. }))
            else {
                panic!("nothing granted while finishing {stage:?}");
            };
            let attempt = self.task(job, &task_id).attempt;
            if let TaskParams::Distill { block, rate } = self.task(job, &task_id).params {
                let metrics = BTreeMap::from([
                    (
                        surgery_core::results::HELDOUT_ERROR.to_string(),
                        0.1 * (block + 1) as f64 + rate.code() as f64 * 0.01,
                    ),
                    (surgery_core::results::ATTENTION_MS.to_string(), 5.0),
                    (surgery_core::results::SOFTMAX_ATTENTION_MS.to_string(), 11.0),
                ]);
                let result = TaskResult {
                    metrics,
                    ..TaskResult::default()
                };
                self.complete_with(worker, job, &task_id, attempt, result).unwrap();
            } else {
                self.complete(worker, job, &task_id, attempt).unwrap();
            }
        }
    }
}

fn grants(decisions: &[Decision]) -> Vec<(String, Vec<String>)> {
    decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Grant { task_id, slots, .. } => Some((
                task_id.clone(),
                slots.iter().map(|s| format!("{}/{}", s.worker_id, s.slot)).collect(),
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn a_fork_takes_over_only_what_succeeded_in_its_parent() {
    let mut sim = Sim::new();
    let w = sim.worker("w", "cpu", 1);
    let parent = sim.submit(&tiny_yaml("a", 0, ""));
    sim.finish_stage(&parent, Stage::Capture, &w);
    // One distill task done, the rest not yet.
    sim.wait(&w, 0);
    let granted = grants(&sim.tick());
    let first = granted[0].0.clone();
    sim.complete(&w, &parent, &first, 1).unwrap();

    let yaml = tiny_yaml("b", 0, "").replace("budget: 0.8", "budget: 0.6");
    let child = sim.fork(&parent, &yaml).unwrap();
    let reused: Vec<&str> = sim.cluster.tasks[&child]
        .list
        .iter()
        .filter(|t| t.reused_from.is_some())
        .map(|t| t.id.as_str())
        .collect();
    assert_eq!(reused, ["capture/shard-0000", "capture/shard-0001", first.as_str()]);
    let task = sim.task(&child, &first);
    assert_eq!(task.state, TaskState::Succeeded);
    assert_eq!(task.result, sim.task(&parent, &first).result);
    assert_eq!(task.attempt, 0);
    let job = &sim.cluster.jobs[&child];
    assert_eq!(job.forked_from.as_deref(), Some(parent.as_str()));
    assert_eq!(
        job.reuse_notes,
        [
            "capture: 2 of 2 reused",
            "distill: 1 of 6 reused; 5 not finished in the parent"
        ]
    );
    // The child's next grant is a distill task the parent had not finished.
    sim.wait(&w, 0);
    let next = grants(&sim.tick());
    assert!(next[0].0.starts_with("distill/") && next[0].0 != first, "{next:?}");

    // A fork of the fork names the job that ran each task.
    let grandchild = sim.fork(&child, &yaml).unwrap();
    let task = sim.task(&grandchild, "capture/shard-0001");
    assert_eq!(task.reused_from.as_deref(), Some(parent.as_str()));

    assert_eq!(
        sim.fork("nope-0000", &yaml),
        Err(Reject::NotFound(
            "cannot fork job `nope-0000`: there is no such job (surgeryctl list shows the jobs)".into()
        ))
    );
}

#[test]
fn lease_heartbeat_complete() {
    let mut sim = Sim::new();
    let job = sim.submit(&tiny_yaml("a", 0, ""));
    let w = sim.worker("w", "cpu", 1);
    assert!(sim.tick().is_empty(), "no slot waits yet");
    sim.wait(&w, 0);
    let decisions = sim.tick();
    assert_eq!(
        grants(&decisions),
        vec![("capture/shard-0000".to_string(), vec![format!("{w}/0")])]
    );
    let task = sim.task(&job, "capture/shard-0000");
    assert_eq!((task.state, task.attempt), (TaskState::Leased, 1));
    assert_eq!(task.lease.as_ref().unwrap().deadline_ms(), sim.now + TTL);
    assert_eq!(sim.cluster.jobs[&job].state, JobState::Queued);

    sim.now += 5_000;
    assert_eq!(sim.heartbeat(&w, &job, "capture/shard-0000", 1, 3).unwrap(), vec![]);
    let task = sim.task(&job, "capture/shard-0000");
    assert_eq!(task.state, TaskState::Running);
    assert_eq!(task.progress.as_ref().unwrap().step, 3);
    assert_eq!(
        task.lease.as_ref().unwrap().deadline_ms(),
        sim.now + TTL,
        "heartbeat renews the lease"
    );
    assert_eq!(sim.cluster.jobs[&job].state, JobState::Running);
    let changes = sim.cluster.take_changes();
    assert_eq!(changes.metrics.len(), 1);
    assert_eq!(changes.logs.len(), 1);
    assert_eq!(changes.logs[0].message, "step 3");

    // A non-finite result is refused; the worker must report a failure instead.
    let nan = TaskResult {
        metrics: BTreeMap::from([("loss".to_string(), f64::NAN)]),
        ..TaskResult::default()
    };
    assert_eq!(
        sim.complete_with(&w, &job, "capture/shard-0000", 1, nan),
        Err(Reject::Invalid(
            "result metric `loss` is NaN; report a failure instead of a non-finite result".into()
        ))
    );
    assert_eq!(sim.task(&job, "capture/shard-0000").state, TaskState::Running);
    sim.complete(&w, &job, "capture/shard-0000", 1).unwrap();
    assert_eq!(sim.task(&job, "capture/shard-0000").state, TaskState::Succeeded);
    // Completing again (a retried RPC) is harmless.
    sim.complete(&w, &job, "capture/shard-0000", 1).unwrap();
}

#[test]
fn expired_lease_requeues_with_the_next_attempt_and_fences_the_old_one() {
    let mut sim = Sim::new();
    let job = sim.submit(&tiny_yaml("a", 0, ""));
    let w1 = sim.worker("w1", "cpu", 1);
    let w2 = sim.worker("w2", "cpu", 1);
    sim.wait(&w1, 0);
    sim.tick();
    sim.heartbeat(&w1, &job, "capture/shard-0000", 1, 1).unwrap();

    // w1 keeps heartbeating as a worker but stops reporting the task: its lease lapses.
    sim.now += TTL + 1;
    sim.touch(&w1).unwrap();
    let decisions = sim.tick();
    assert!(
        matches!(&decisions[..], [Decision::Expire { task_id, attempt: 1, reason, .. }] if task_id == "capture/shard-0000" && reason.contains("expired 1 ms ago")),
        "{decisions:?}"
    );
    let task = sim.task(&job, "capture/shard-0000");
    assert_eq!(
        (task.state, task.attempt, task.interruptions, task.retries_used),
        (TaskState::Pending, 1, 1, 0)
    );
    assert_eq!(task.last_failure.as_ref().unwrap().class, FailureClass::Lost);

    sim.wait(&w2, 0);
    sim.tick();
    assert_eq!(sim.task(&job, "capture/shard-0000").attempt, 2);

    // The old holder is fenced off: complete, fail and heartbeat all refuse attempt 1.
    let stale = sim.complete(&w1, &job, "capture/shard-0000", 1).unwrap_err();
    assert_eq!(
        stale,
        Reject::Stale("attempt 1 of task capture/shard-0000 is stale; the task is leased at attempt 2".into())
    );
    assert!(matches!(
        sim.fail(&w1, &job, "capture/shard-0000", 1, FailureClass::Retryable),
        Err(Reject::Stale(_))
    ));
    let stops = sim.heartbeat(&w1, &job, "capture/shard-0000", 1, 2).unwrap();
    assert_eq!(stops.len(), 1);
    assert!(stops[0].reason.contains("is stale"), "{}", stops[0].reason);
    // The new holder is unaffected.
    sim.complete(&w2, &job, "capture/shard-0000", 2).unwrap();
}

#[test]
fn failure_classes_and_the_retry_budget() {
    let mut sim = Sim::new();
    let job = sim.submit(&tiny_yaml("a", 0, "").replace("max_retries: 3", "max_retries: 1"));
    let w = sim.worker("w", "cpu", 1);
    let t = "capture/shard-0000";

    sim.wait(&w, 0);
    sim.tick();
    let outcome = sim.fail(&w, &job, t, 1, FailureClass::Preempted).unwrap();
    assert_eq!(outcome, "requeued; the next lease is attempt 2");
    assert_eq!(
        (sim.task(&job, t).retries_used, sim.task(&job, t).interruptions),
        (0, 1)
    );

    sim.wait(&w, 0);
    sim.tick();
    sim.fail(&w, &job, t, 2, FailureClass::Retryable).unwrap();
    assert_eq!(sim.task(&job, t).retries_used, 1);
    assert_eq!(sim.task(&job, t).state, TaskState::Pending);

    sim.wait(&w, 0);
    sim.tick();
    let outcome = sim.fail(&w, &job, t, 3, FailureClass::Retryable).unwrap();
    assert_eq!(outcome, "task failed (retry budget spent (1 retries)); the job fails");
    assert_eq!(sim.task(&job, t).state, TaskState::Failed);
    let record = &sim.cluster.jobs[&job];
    assert_eq!(record.state, JobState::Failed);
    assert!(
        record
            .failure
            .as_ref()
            .unwrap()
            .starts_with("task capture/shard-0000 failed: w-"),
        "{:?}",
        record.failure
    );
    // Every other task of the job is cancelled.
    assert!(
        sim.cluster.tasks[&job]
            .list
            .iter()
            .filter(|x| x.id != t)
            .all(|x| x.state == TaskState::Cancelled)
    );
}

#[test]
fn fatal_failure_fails_the_job_and_stops_its_running_tasks() {
    let mut sim = Sim::new();
    let job = sim.submit(&tiny_yaml("a", 0, ""));
    let w = sim.worker("w", "cpu", 2);
    sim.wait(&w, 0);
    sim.wait(&w, 1);
    sim.tick();
    sim.heartbeat(&w, &job, "capture/shard-0001", 1, 1).unwrap();
    sim.fail(&w, &job, "capture/shard-0000", 1, FailureClass::Fatal)
        .unwrap();
    assert_eq!(sim.cluster.jobs[&job].state, JobState::Failed);
    let stops = sim.heartbeat(&w, &job, "capture/shard-0001", 1, 2).unwrap();
    assert_eq!(stops[0].reason, "task capture/shard-0001 was cancelled");
}

#[test]
fn cancel_reaches_running_tasks_at_their_next_heartbeat() {
    let mut sim = Sim::new();
    let job = sim.submit(&tiny_yaml("a", 0, ""));
    let w = sim.worker("w", "cpu", 1);
    sim.wait(&w, 0);
    sim.tick();
    sim.heartbeat(&w, &job, "capture/shard-0000", 1, 1).unwrap();
    sim.cancel(&job).unwrap();
    assert_eq!(sim.cluster.jobs[&job].state, JobState::Cancelled);
    let stops = sim.heartbeat(&w, &job, "capture/shard-0000", 1, 2).unwrap();
    assert_eq!(stops[0].reason, "task capture/shard-0000 was cancelled");
    assert!(matches!(
        sim.complete(&w, &job, "capture/shard-0000", 1),
        Err(Reject::Stale(_))
    ));
    // Nothing of a cancelled job is leased again.
    sim.wait(&w, 0);
    assert!(sim.tick().is_empty());
    assert_eq!(
        sim.cancel(&job),
        Err(Reject::WrongState(format!("job {job} already ended (cancelled)")))
    );
}

#[test]
fn resume_reruns_failed_and_cancelled_tasks_with_a_fresh_budget() {
    let mut sim = Sim::new();
    let job = sim.submit(&tiny_yaml("a", 0, "").replace("max_retries: 3", "max_retries: 0"));
    let w = sim.worker("w", "cpu", 1);
    sim.finish_stage(&job, Stage::Capture, &w);
    sim.wait(&w, 0);
    sim.tick();
    sim.fail(&w, &job, "distill/block-00/rate-2", 1, FailureClass::Retryable)
        .unwrap();
    assert_eq!(sim.cluster.jobs[&job].state, JobState::Failed);

    let resumed = sim.resume(&job).unwrap();
    assert_eq!(
        resumed.len(),
        sim.cluster.tasks[&job].list.len() - 2,
        "all but the two captures"
    );
    assert_eq!(sim.cluster.jobs[&job].state, JobState::Running);
    let task = sim.task(&job, "distill/block-00/rate-2");
    assert_eq!(
        (task.state, task.retries_used, task.attempt),
        (TaskState::Pending, 0, 1)
    );
    assert_eq!(
        sim.task(&job, "capture/shard-0000").state,
        TaskState::Succeeded,
        "succeeded work is kept"
    );
    sim.wait(&w, 0);
    sim.tick();
    assert_eq!(sim.task(&job, "distill/block-00/rate-2").attempt, 2);
    assert_eq!(
        sim.resume(&job),
        Err(Reject::WrongState(format!(
            "job {job} is running; only failed or cancelled jobs resume"
        )))
    );
}

#[test]
fn priority_then_fifo_and_queue_positions() {
    let mut sim = Sim::new();
    let low = sim.submit(&tiny_yaml("low", 0, ""));
    let high = sim.submit(&tiny_yaml("high", 5, ""));
    let low2 = sim.submit(&tiny_yaml("low2", 0, ""));
    let w = sim.worker("w", "cpu", 1);

    let waiting = sim.waiting_info();
    assert_eq!(waiting[&high].position, 1);
    assert_eq!(waiting[&low].position, 2);
    assert_eq!(waiting[&low2].position, 3);
    assert_eq!(waiting[&low2].length, 3);
    assert_eq!(
        waiting[&high].reason,
        "waiting for an idle cpu slot (all 1 busy or held for jobs ahead)"
    );

    sim.wait(&w, 0);
    let decisions = sim.tick();
    assert!(matches!(&decisions[0], Decision::Grant { job_id, .. } if *job_id == high));
    sim.complete(&w, &high, "capture/shard-0000", 1).unwrap();
    sim.wait(&w, 0);
    let decisions = sim.tick();
    assert!(
        matches!(&decisions[0], Decision::Grant { job_id, .. } if *job_id == high),
        "high still has work"
    );
    sim.complete(&w, &high, "capture/shard-0001", 1).unwrap();
    // High now waits on nothing of capture; its distill tasks are runnable and go first.
    sim.cancel(&high).unwrap();
    sim.wait(&w, 0);
    let decisions = sim.tick();
    assert!(
        matches!(&decisions[0], Decision::Grant { job_id, .. } if *job_id == low),
        "FIFO among equals"
    );
}

#[test]
fn gang_is_all_or_nothing_and_reserves_idle_slots() {
    let mut sim = Sim::new();
    let gang_job = sim.submit(&tiny_yaml("gang", 5, ""));
    let w1 = sim.worker("w1", "cpu", 1);
    let w2 = sim.worker("w2", "cpu", 1);
    sim.finish_stage(&gang_job, Stage::Capture, &w1);
    sim.finish_stage(&gang_job, Stage::Distill, &w1);
    assert_eq!(
        sim.task(&gang_job, "select").state,
        TaskState::Succeeded,
        "select ran in the coordinator"
    );
    assert!(sim.cluster.jobs[&gang_job].selected_layout.is_some());

    let other = sim.submit(&tiny_yaml("other", 0, ""));
    // One idle slot: the gang of 2 cannot start, and the slot is held for it rather
    // than given to the lower-priority job.
    sim.wait(&w1, 0);
    assert!(sim.tick().is_empty());
    let waiting = sim.waiting_info();
    assert_eq!(
        waiting[&gang_job].reason,
        "task finetune waits for a gang of 2 idle cpu slots (2 on alive workers, the rest busy)"
    );
    assert_eq!(waiting[&other].position, 2);

    sim.wait(&w2, 0);
    let decisions = sim.tick();
    assert_eq!(
        grants(&decisions),
        vec![("finetune".to_string(), vec![format!("{w1}/0"), format!("{w2}/0")])]
    );
    let lease = sim.task(&gang_job, "finetune").lease.clone().unwrap();
    assert_eq!(lease.members.iter().map(|m| m.rank).collect::<Vec<_>>(), vec![0, 1]);
}

#[test]
fn gang_bigger_than_the_cluster_reserves_nothing() {
    let mut sim = Sim::new();
    let big = sim.submit(&tiny_yaml("big", 5, "").replace("finetune_workers: 2", "finetune_workers: 4"));
    let w1 = sim.worker("w1", "cpu", 1);
    sim.finish_stage(&big, Stage::Capture, &w1);
    sim.finish_stage(&big, Stage::Distill, &w1);
    let other = sim.submit(&tiny_yaml("other", 0, ""));
    sim.wait(&w1, 0);
    let decisions = sim.tick();
    assert!(matches!(&decisions[0], Decision::Grant { job_id, .. } if *job_id == other));
    assert_eq!(
        sim.waiting_info()[&big].reason,
        "task finetune needs 4 cpu slots at once but alive workers offer only 1"
    );
}

#[test]
fn lost_gang_member_requeues_the_whole_gang() {
    let mut sim = Sim::new();
    let job = sim.submit(&tiny_yaml("gang", 0, ""));
    let w1 = sim.worker("w1", "cpu", 1);
    let w2 = sim.worker("w2", "cpu", 1);
    sim.finish_stage(&job, Stage::Capture, &w1);
    sim.finish_stage(&job, Stage::Distill, &w1);
    sim.wait(&w1, 0);
    sim.wait(&w2, 0);
    sim.tick();
    // Rendezvous: rank 1 arrives first and waits for rank 0's NCCL id.
    let r1 = sim.rendezvous(&w2, &job, 1, "w2:9000", &[]).unwrap();
    assert_eq!(r1, None);
    let wrong_rank = sim.rendezvous(&w2, &job, 0, "", &[]);
    assert!(matches!(wrong_rank, Err(Reject::Invalid(m)) if m.contains("holds rank 1")));
    // Only rank 0 brings the NCCL id, and it has NCCL's 128 bytes.
    assert_eq!(
        sim.rendezvous(&w2, &job, 1, "w2:9000", &[7; 128]),
        Err(Reject::Invalid("only rank 0 brings the NCCL unique id".into()))
    );
    assert_eq!(
        sim.rendezvous(&w1, &job, 0, "w1:9000", &[7; 16]),
        Err(Reject::Invalid("an NCCL unique id has 128 bytes, not 16".into()))
    );
    let r0 = sim.rendezvous(&w1, &job, 0, "w1:9000", &[7; 128]).unwrap().unwrap();
    assert_eq!(r0.nccl_unique_id, vec![7; 128]);
    assert_eq!(r0.members[1].endpoint.as_deref(), Some("w2:9000"));

    // w2 goes silent; w1 keeps heartbeating.
    for _ in 0..3 {
        sim.now += TTL / 2;
        sim.heartbeat(&w1, &job, "finetune", 1, 1).unwrap();
        sim.tick();
    }
    let task = sim.task(&job, "finetune");
    assert_eq!(task.state, TaskState::Pending);
    assert!(
        task.last_failure
            .as_ref()
            .unwrap()
            .message
            .contains("rank 1 of a gang of 2; the whole gang is requeued")
    );
    let stops = sim.heartbeat(&w1, &job, "finetune", 1, 2).unwrap();
    assert!(
        stops[0]
            .reason
            .starts_with("attempt 1 of task finetune is over; the task was requeued"),
        "{}",
        stops[0].reason
    );
}

#[test]
fn silent_worker_is_lost_and_its_leases_requeued() {
    let mut sim = Sim::new();
    let job = sim.submit(&tiny_yaml("a", 0, ""));
    let w1 = sim.worker("w1", "cpu", 1);
    let w2 = sim.worker("w2", "cpu", 2);
    sim.wait(&w1, 0);
    sim.tick();
    // w2 sits in a long poll the whole time: parked workers are not lost.
    sim.wait(&w2, 0);
    sim.waiting.retain(|w| w.worker_id == w2);
    sim.now += WORKER_TIMEOUT + 1;
    let decisions = sim.tick();
    assert!(
        decisions.contains(&Decision::WorkerLost { worker_id: w1.clone() }),
        "{decisions:?}"
    );
    assert!(!decisions.contains(&Decision::WorkerLost { worker_id: w2.clone() }));
    assert_eq!(sim.cluster.workers[&w1].status, WorkerStatus::Lost);
    let task = sim.task(&job, "capture/shard-0000");
    assert_eq!((task.state, task.interruptions), (TaskState::Pending, 1));
    // The parked worker got the other shard; when it asks again it gets attempt 2.
    assert_eq!(
        sim.task(&job, "capture/shard-0001").lease.as_ref().unwrap().members[0].worker_id,
        w2
    );
    sim.wait(&w2, 1);
    sim.tick();
    let task = sim.task(&job, "capture/shard-0000");
    assert_eq!(task.attempt, 2);
    assert_eq!(task.lease.as_ref().unwrap().members[0].worker_id, w2);
    // w1 comes back: it is alive again, and told to stop its old attempt.
    let stops = sim.heartbeat(&w1, &job, "capture/shard-0000", 1, 5).unwrap();
    assert_eq!(sim.cluster.workers[&w1].status, WorkerStatus::Alive);
    assert!(stops[0].reason.contains("is stale"), "{}", stops[0].reason);
}

#[test]
fn reregistering_a_name_ends_the_old_incarnation() {
    let mut sim = Sim::new();
    let job = sim.submit(&tiny_yaml("a", 0, ""));
    let old = sim.worker("pod-7", "cpu", 1);
    sim.wait(&old, 0);
    sim.tick();
    let new = sim.worker("pod-7", "cpu", 1);
    assert_ne!(old, new);
    assert_eq!(sim.cluster.workers[&old].status, WorkerStatus::Replaced);
    let task = sim.task(&job, "capture/shard-0000");
    assert_eq!(
        (task.state, task.interruptions, task.retries_used),
        (TaskState::Pending, 1, 0)
    );
    assert!(matches!(sim.touch(&old), Err(Reject::UnknownWorker(_))));
}

#[test]
fn device_and_memory_requirements() {
    let mut sim = Sim::new();
    let job = sim.submit(&tiny_yaml("gpu", 0, "").replace("device: cpu", "device: cuda\n  min_gpu_memory_gib: 90"));
    let cpu = sim.worker("cpu", "cpu", 1);
    let gpu = sim.worker("gpu", "cuda", 1); // 80 GiB
    sim.wait(&cpu, 0);
    sim.wait(&gpu, 0);
    assert!(sim.tick().is_empty());
    assert_eq!(
        sim.waiting_info()[&job].reason,
        "no alive worker offers a cuda slot with at least 90 GiB; start workers that do"
    );
}

#[test]
fn unknown_worker_and_task() {
    let mut sim = Sim::new();
    let job = sim.submit(&tiny_yaml("a", 0, ""));
    assert_eq!(
        sim.heartbeat("ghost", &job, "select", 1, 1),
        Err(Reject::UnknownWorker("ghost".into()))
    );
    let w = sim.worker("w", "cpu", 1);
    let stops = sim.beat(
        &w,
        vec![TaskReport {
            task_id: "nope:x".into(),
            attempt: 1,
            progress: None,
            logs: vec![],
        }],
    );
    assert_eq!(stops.unwrap()[0].reason, "no such task");
    assert!(matches!(sim.complete(&w, &job, "nope", 1), Err(Reject::NotFound(_))));
}

#[test]
fn idempotent_submit_and_conflicting_reuse() {
    let mut sim = Sim::new();
    let yaml = tiny_yaml("a", 0, "");
    let first = sim.submit_as("r1", &yaml, "x1").unwrap();
    let again = sim.submit_as("r1", &yaml, "x2").unwrap();
    assert!(first.created && !again.created);
    assert_eq!(first.job_id, again.job_id);
    assert_eq!(sim.cluster.jobs.len(), 1);
    let other = tiny_yaml("b", 0, "");
    let err = sim.submit_as("r1", &other, "x3");
    assert!(matches!(err, Err(Reject::Conflict(m)) if m.contains("different spec")));
}

#[test]
fn select_failure_fails_the_job_with_the_reason() {
    let mut sim = Sim::new();
    let job = sim.submit(&tiny_yaml("a", 0, "").replace("budget: 0.8", "budget: 0.01"));
    let w = sim.worker("w", "cpu", 1);
    sim.finish_stage(&job, Stage::Capture, &w);
    sim.finish_stage(&job, Stage::Distill, &w);
    let record = &sim.cluster.jobs[&job];
    assert_eq!(record.state, JobState::Failed);
    assert!(
        record.failure.as_ref().unwrap().contains("infeasible"),
        "{:?}",
        record.failure
    );
}

#[test]
fn whole_job_succeeds() {
    let mut sim = Sim::new();
    let job = sim.submit(&tiny_yaml("a", 0, "").replace("finetune_workers: 2", "finetune_workers: 1"));
    let w = sim.worker("w", "cpu", 1);
    for stage in [
        Stage::Capture,
        Stage::Distill,
        Stage::Finetune,
        Stage::Export,
        Stage::Evaluate,
    ] {
        sim.finish_stage(&job, stage, &w);
    }
    assert_eq!(sim.cluster.jobs[&job].state, JobState::Succeeded);
    assert!(sim.waiting_info().is_empty());
}

#[test]
fn restore_gives_leases_one_ttl_to_reconnect() {
    let mut sim = Sim::new();
    let job = sim.submit(&tiny_yaml("a", 0, ""));
    let w = sim.worker("w", "cpu", 1);
    sim.wait(&w, 0);
    sim.tick();
    let jobs = sim.cluster.jobs.values().cloned().collect();
    let tasks = sim.cluster.tasks.values().flat_map(|t| t.list.clone()).collect();
    let workers = sim.cluster.workers.values().cloned().collect();
    let later = sim.now + 60_000;
    let restored = Cluster::restore(
        later,
        sim.timing,
        jobs,
        tasks,
        workers,
        vec![],
        sim.cluster.counters.clone(),
    );
    let task = restored.task(&job, "capture/shard-0000").unwrap();
    assert_eq!(task.lease.as_ref().unwrap().deadline_ms(), later + TTL);
    assert_eq!(restored.workers[&w].last_seen_ms, later);
    let schedule = decide(later, &restored, &[], sim.timing);
    assert!(schedule.decisions.is_empty(), "{:?}", schedule.decisions);
}
