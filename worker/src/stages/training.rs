//! The training loop distill and finetune share, written once: resume from the newest
//! complete checkpoint (or start at step 0), then per step: honour a stop request (a
//! preemption first saves the steps taken since the resume), let the stage compute the
//! step's gradients, fail fatally on a non-finite loss, step the optimizer, record and
//! report the loss, and checkpoint every `checkpoint.every_steps`; at the end, wait until
//! every checkpoint is stored. A stage supplies only its step function and its meta.
//!
//! A checkpoint is the [`Trainer`]'s state as `state.safetensors` plus the stage's meta
//! (the step, the loss curve, whatever else it needs to resume) as JSON.

use super::TaskContext;
use super::task::{StopReason, TaskError};
use super::trainer::Trainer;
use crate::storage::{Checkpointer, SnapshotWriter, Storage, tensors};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The checkpoint's tensor file.
const STATE_FILE: &str = "state.safetensors";

/// What a training stage keeps beside the trainer's state: at least how many steps it has
/// taken and the loss of each.
pub trait TrainingMeta: Serialize + DeserializeOwned + Default {
    /// Steps taken.
    fn step(&self) -> u64;
    /// Records one more step taken, with its loss.
    fn record(&mut self, loss: f64);
}

/// The steps taken and the loss of each: the meta of a stage that needs nothing else, and
/// part of one that does (flattened, so the JSON keeps the same two fields).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LossCurve {
    pub step: u64,
    pub loss_curve: Vec<f64>,
}

impl LossCurve {
    /// The last step's loss; `None` before the first (a run of 0 steps, an ablation).
    pub fn last_loss(&self) -> Option<f64> {
        self.loss_curve.last().copied()
    }
}

impl TrainingMeta for LossCurve {
    fn step(&self) -> u64 {
        self.step
    }

    fn record(&mut self, loss: f64) {
        self.loss_curve.push(loss);
        self.step += 1;
    }
}

/// How a stage's loop runs.
#[derive(Debug, Clone)]
pub struct LoopSettings {
    pub total_steps: u64,
    /// Whether this member writes checkpoints (all but rank 0 of a gang only read them).
    pub writes_checkpoints: bool,
    /// The maximum gradient norm, if clipped.
    pub clip: Option<f64>,
    /// The progress message, e.g. `distilling`.
    pub activity: &'static str,
    /// The loss's name in the non-finite error, e.g. `distillation`.
    pub loss_name: &'static str,
    /// The setting that error tells the user to lower, e.g. `stages.distill.lr`.
    pub lr_setting: &'static str,
}

/// A stage's trainer and meta, with the checkpoints they resume from and save to.
pub struct Training<M> {
    pub trainer: Trainer,
    pub meta: M,
    checkpoints: SnapshotWriter,
    checkpoint_every: u64,
    resumed: bool,
}

impl<M: TrainingMeta> Training<M> {
    /// Restores `trainer` and the meta from the newest complete checkpoint under `dir` of
    /// the job's store `job`, or starts at step 0 when there is none.
    pub fn resume(ctx: &TaskContext, job: &Storage, dir: &str, mut trainer: Trainer) -> Result<Training<M>, TaskError> {
        let spec = &ctx.input.spec;
        let checkpoints = SnapshotWriter::new(Checkpointer::new(
            job.clone(),
            dir,
            spec.checkpoint.keep_last as usize,
            ctx.runtime.clone(),
        ));
        let mut meta = M::default();
        let mut resumed = false;
        if let Some(restored) = checkpoints.latest().map_err(TaskError::retryable)? {
            meta =
                serde_json::from_value(restored.meta).map_err(|e| TaskError::Fatal(format!("checkpoint meta: {e}")))?;
            let state = tensors::from_bytes(&restored.files[STATE_FILE]).map_err(TaskError::retryable)?;
            trainer.restore(&state)?;
            ctx.handle
                .log("info", format!("resumed from the checkpoint at step {}", meta.step()));
            resumed = true;
        }
        Ok(Training {
            trainer,
            meta,
            checkpoints,
            checkpoint_every: u64::from(spec.checkpoint.every_steps),
            resumed,
        })
    }

    /// Whether [`Training::resume`] found a checkpoint.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// Runs from the current step to `settings.total_steps`. `step(n, trainer)` computes
    /// step n's gradients (all of the gang's, reduced) and returns its loss.
    pub fn run(
        &mut self,
        ctx: &TaskContext,
        settings: &LoopSettings,
        mut step: impl FnMut(u64, &Trainer) -> Result<f64, TaskError>,
    ) -> Result<(), TaskError> {
        let total = settings.total_steps;
        let first_step = self.meta.step();
        for n in first_step..total {
            if let Some(reason) = ctx.handle.stop_requested() {
                if reason == StopReason::Preempted && settings.writes_checkpoints && self.meta.step() > first_step {
                    self.save();
                    self.finish()?;
                }
                return Err(TaskError::Stopped(reason));
            }
            let loss = step(n, &self.trainer)?;
            if !loss.is_finite() {
                return Err(TaskError::Fatal(format!(
                    "the {} loss is {loss} at step {n}; lower {}",
                    settings.loss_name, settings.lr_setting
                )));
            }
            self.trainer.step(settings.clip)?;
            self.meta.record(loss);
            let done = self.meta.step();
            ctx.handle.report(
                done,
                total,
                first_step,
                BTreeMap::from([("loss".to_string(), loss)]),
                settings.activity,
            );
            if settings.writes_checkpoints && done.is_multiple_of(self.checkpoint_every) && done < total {
                self.save();
            }
        }
        Ok(())
    }

    /// Hands the current state to the background writer.
    fn save(&self) {
        self.checkpoints.save(
            self.meta.step(),
            STATE_FILE,
            &self.trainer.state(),
            serde_json::to_value(&self.meta).expect("meta"),
        );
    }

    /// Waits until every checkpoint handed over is stored.
    pub fn finish(&self) -> Result<(), TaskError> {
        self.checkpoints.flush().map_err(TaskError::retryable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::{StageInput, StageParams, TaskHandle};
    use std::sync::Arc;
    use surgery_core::ids::TaskRef;
    use surgery_core::spec::JobSpec;
    use tch::nn::VarStore;
    use tch::{Device, Kind};

    const SPEC: &str = "version: 1\nname: loop\nteacher:\n  url: /none\n  preset: wan2.1-t2v-1.3b\ndata:\n  prompts: /none\n  train_prompts: 8\n  prompts_per_shard: 4\nvideo: {frames: 81, height: 480, width: 832}\ncheckpoint: {every_steps: 2, keep_last: 2}\n";

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    }

    fn context(runtime: &tokio::runtime::Runtime) -> TaskContext {
        TaskContext {
            input: StageInput {
                task: TaskRef::new("loop-1", "finetune"),
                attempt: 1,
                spec: JobSpec::parse(SPEC).unwrap(),
                params: StageParams::Finetune,
                layout: Vec::new(),
                dependencies: BTreeMap::new(),
                job_root: "memory://".into(),
                reused_roots: BTreeMap::new(),
                rank: 0,
                gang_size: 1,
            },
            device: Device::Cpu,
            handle: Arc::new(TaskHandle::new("loop-1:finetune".into(), 1)),
            runtime: runtime.handle().clone(),
            cache_dir: std::env::temp_dir(),
            gang: None,
        }
    }

    /// One parameter w, loss (w - 3)^2: every step's loss depends on all before it.
    fn trainer() -> (VarStore, Trainer) {
        let vs = VarStore::new(Device::Cpu);
        let _w = vs.root().zeros("w", &[1]);
        let trainer = Trainer::new(&vs, 0.1, 0.0).unwrap();
        (vs, trainer)
    }

    fn quadratic(_step: u64, trainer: &Trainer) -> Result<f64, TaskError> {
        let w = &trainer.named[0].1;
        let loss = (w - 3.0).square().sum(Kind::Float);
        loss.backward();
        Ok(loss.double_value(&[]))
    }

    fn settings(total_steps: u64) -> LoopSettings {
        LoopSettings {
            total_steps,
            writes_checkpoints: true,
            clip: None,
            activity: "testing",
            loss_name: "test",
            lr_setting: "stages.test.lr",
        }
    }

    #[test]
    fn a_run_resumed_from_a_checkpoint_repeats_the_uninterrupted_one() {
        let runtime = runtime();
        let ctx = context(&runtime);
        let (_vs, fresh) = trainer();
        let mut whole: Training<LossCurve> =
            Training::resume(&ctx, &Storage::from_url("memory://").unwrap(), "a", fresh).unwrap();
        assert!(!whole.resumed());
        whole.run(&ctx, &settings(6), quadratic).unwrap();
        whole.finish().unwrap();
        assert_eq!(whole.meta.step, 6);

        // Five steps, checkpoints at 2 and 4; a new attempt resumes at 4 and finishes.
        let job = Storage::from_url("memory://").unwrap();
        let (_vs, first) = trainer();
        let mut interrupted: Training<LossCurve> = Training::resume(&ctx, &job, "b", first).unwrap();
        interrupted.run(&ctx, &settings(5), quadratic).unwrap();
        interrupted.finish().unwrap();
        let (_vs, second) = trainer();
        let mut resumed: Training<LossCurve> = Training::resume(&ctx, &job, "b", second).unwrap();
        assert!(resumed.resumed());
        assert_eq!(resumed.meta.step, 4);
        resumed.run(&ctx, &settings(6), quadratic).unwrap();
        assert_eq!(resumed.meta, whole.meta, "bit for bit");
    }

    #[test]
    fn a_non_finite_loss_is_fatal_and_a_preemption_saves() {
        let runtime = runtime();
        let ctx = context(&runtime);
        let job = Storage::from_url("memory://").unwrap();
        let (_vs, t) = trainer();
        let mut training: Training<LossCurve> = Training::resume(&ctx, &job, "c", t).unwrap();
        let err = training.run(&ctx, &settings(3), |_, _| Ok(f64::NAN)).unwrap_err();
        assert_eq!(
            err,
            TaskError::Fatal("the test loss is NaN at step 0; lower stages.test.lr".into())
        );

        // Preempted after step 3 (between checkpoints): the three steps are saved.
        let handle = ctx.handle.clone();
        let err = training
            .run(&ctx, &settings(10), |step, trainer| {
                if step == 2 {
                    handle.request_stop(StopReason::Preempted);
                }
                quadratic(step, trainer)
            })
            .unwrap_err();
        assert_eq!(err, TaskError::Stopped(StopReason::Preempted));
        let (_vs, t) = trainer();
        let back: Training<LossCurve> = Training::resume(&ctx, &job, "c", t).unwrap();
        assert_eq!(back.meta.step, 3);
    }
}
