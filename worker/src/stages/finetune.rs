//! Fine-tune the whole student (METHOD.md section 4): the teacher's weights with the
//! selected layout's distilled feature maps, trained end to end with the flow-matching
//! loss (x_sigma = (1 - sigma) x0 + sigma eps, target eps - x0, t = 1000 sigma) plus the
//! optional MSE to the teacher's velocity, data-parallel over the gang.
//!
//! Determinism across gang sizes: each step takes the next `global_batch` positions of a
//! seeded sample sequence, and a sample's noise and sigma depend only on its position, so
//! rank r of W processes positions [r G/W, (r+1) G/W) of the step and the summed gradients
//! equal one worker's over all G (to fp32 reassociation). Each sample's loss is divided by
//! G before its backward, so the all-reduced sum is the global mean gradient.
//!
//! Rank 0 checkpoints every `checkpoint.every_steps`: the parameters, the fp32 masters,
//! AdamW's moments, the step and the loss curve; every rank resumes from the newest
//! complete one. Rank 0 writes the final student to `finetune/final/` and completes.

use super::TaskContext;
use super::folders::{put_json, upload_folder};
use super::gang::collective_error;
use super::model_inputs::{self, kind_of};
use super::pipeline;
use super::seeds;
use super::trainer::Trainer;
use super::training::{LoopSettings, LossCurve, Training};
use crate::collective::{Collective, Local};
use crate::model::WanTransformer;
use crate::sampler::{SeededRng, seeded_noise};
use crate::stages::task::{TaskError, TaskOutput};
use crate::storage::{Storage, tensors};
use crate::student::{ConvertedBlock, Student, SurgeryConfig};
use crate::train::{flow_matching_loss, recompute, shift_sigma, timestep_of};
use std::collections::BTreeMap;
use surgery_core::layout;
use surgery_core::rate::Rate;
use surgery_core::spec::JobSpec;
use tch::{Kind, Tensor};

const SEED_ORDER: u64 = 0xF1_0001;
const SEED_NOISE: u64 = 0xF1_0002;
const SEED_SIGMA: u64 = 0xF1_0003;

/// The environment variable of the test hook below.
pub const HANG_ENV: &str = "SURGERY_FAULT_HANG_COLLECTIVE";

/// A test hook for the gang's watchdog (never set in production):
/// `SURGERY_FAULT_HANG_COLLECTIVE=<step>` makes this worker process stop, once, on entering
/// the gradient all-reduce of that fine-tuning step, while its agent goes on heartbeating,
/// so only the peers' collective watchdog can end the attempt. It returns when the task
/// is told to stop.
fn hang_once_for_test(ctx: &TaskContext, step: u64) -> Result<(), TaskError> {
    static HUNG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let at: Option<u64> = std::env::var(HANG_ENV).ok().and_then(|v| v.parse().ok());
    if at != Some(step) || HUNG.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return Ok(());
    }
    ctx.handle
        .log("warn", format!("{HANG_ENV}: hanging in the all-reduce of step {step}"));
    loop {
        ctx.handle.check()?;
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The fine-tuning data: latents [C, F, H, W] (f32, CPU) with their prompt embeddings.
pub struct Dataset {
    latents: Vec<Tensor>,
    text: Vec<Tensor>,
}

impl Dataset {
    /// The capture stage's final latents with the prompts' embeddings (`finetune_data:
    /// capture`), or a user's latent shards (`latents` + `prompt_embeds` per file).
    pub fn load(ctx: &TaskContext, spec: &JobSpec, job: &Storage) -> Result<Dataset, TaskError> {
        let mut latents = Vec::new();
        let mut text = Vec::new();
        if spec.data.finetune_data == "capture" {
            let prompts = model_inputs::prompts(ctx, spec, 0..spec.data.train_prompts)?;
            for shard in 0..spec.capture_shards() {
                let path = layout::latents_shard(shard);
                let bytes = ctx.block_on(job.get(&path)).map_err(TaskError::retryable)?;
                let map = tensors::from_bytes(&bytes).map_err(TaskError::retryable)?;
                let (Some(l), Some(p)) = (map.get("latents"), map.get("prompt")) else {
                    return Err(TaskError::Retryable(format!("{path} lacks `latents` or `prompt`")));
                };
                for i in 0..l.size()[0] {
                    latents.push(l.get(i));
                    text.push(prompts.text(p.int64_value(&[i]) as u32).squeeze_dim(0));
                }
            }
        } else {
            let storage = Storage::from_url(&spec.data.finetune_data).map_err(TaskError::fatal)?;
            let files = ctx.block_on(storage.list("")).map_err(TaskError::retryable)?;
            for file in files.iter().filter(|f| f.ends_with(".safetensors")) {
                let bytes = ctx.block_on(storage.get(file)).map_err(TaskError::retryable)?;
                let map = tensors::from_bytes(&bytes).map_err(|e| TaskError::Fatal(format!("{file}: {e}")))?;
                let (Some(l), Some(t)) = (map.get("latents"), map.get("prompt_embeds")) else {
                    return Err(TaskError::Fatal(format!(
                        "{file} needs `latents` [n, C, F, H, W] and `prompt_embeds` [n, L, D]"
                    )));
                };
                for i in 0..l.size()[0] {
                    latents.push(l.get(i).to_kind(Kind::Float));
                    text.push(t.get(i).to_kind(Kind::Float));
                }
            }
        }
        if latents.is_empty() {
            return Err(TaskError::Fatal("the fine-tuning data set is empty".into()));
        }
        Ok(Dataset { latents, text })
    }

    pub fn len(&self) -> usize {
        self.latents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.latents.is_empty()
    }
}

/// The sample at a position of the training sequence: seeded epochs of the data set.
fn sample_index(seed: u64, position: u64, len: usize) -> usize {
    let epoch = position / len as u64;
    let order = seeds::permutation(len, seeds::seed_for(seed, SEED_ORDER, epoch, 0));
    order[(position % len as u64) as usize]
}

/// The student of the selected layout with the distilled feature maps copied in.
fn build_student(ctx: &TaskContext, spec: &JobSpec, job: &Storage) -> Result<Student, TaskError> {
    let converted: Vec<ConvertedBlock> = ctx
        .input
        .layout
        .iter()
        .copied()
        .filter(|(_, rate)| *rate != Rate::Softmax)
        .map(|(block, rate)| ConvertedBlock {
            block,
            rate,
            anchor_pattern: spec.surgery.anchor_pattern,
        })
        .collect();
    if ctx.input.layout.is_empty() {
        return Err(TaskError::Fatal(
            "the fine-tuning task came without the selected layout".into(),
        ));
    }
    let surgery = SurgeryConfig::new(spec.surgery.feature_map.clone(), converted.clone());
    let teacher_dir = pipeline::transformer_folder(ctx)?;
    let mut student = Student::from_teacher(&teacher_dir, surgery, ctx.device, kind_of(spec.teacher.dtype))
        .map_err(TaskError::fatal)?;
    for block in &converted {
        let path = layout::distill_phi(block.block, block.rate);
        let bytes = ctx.block_on(job.get(&path)).map_err(TaskError::retryable)?;
        let phi = tensors::from_bytes(&bytes).map_err(TaskError::retryable)?;
        student
            .set_tensors(phi.iter().map(|(n, t)| (n.as_str(), t)))
            .map_err(TaskError::fatal)?;
    }
    Ok(student)
}

/// One sample's loss and backward; returns the loss (already divided by G).
#[allow(clippy::too_many_arguments)]
fn sample_step(
    model: &WanTransformer,
    teacher: Option<&WanTransformer>,
    x0: &Tensor,
    text: &Tensor,
    sigma: f64,
    noise: &Tensor,
    spec: &JobSpec,
    scale: f64,
) -> f64 {
    let kind = model.compute_kind();
    let sigma_t = Tensor::from_slice(&[sigma as f32]).to_device(x0.device());
    let x_sigma = (x0 * (1.0 - sigma) + noise * sigma).to_kind(kind);
    let target = noise - x0;
    let t = timestep_of(&sigma_t);
    let weight = spec.stages.finetune.teacher_loss_weight;
    let teacher_v = teacher
        .filter(|_| weight > 0.0)
        .map(|t_model| tch::no_grad(|| t_model.forward(&x_sigma, &t, &text.to_kind(kind)).to_kind(Kind::Float)));
    let loss_of = |out: &Tensor| {
        let mut loss = flow_matching_loss(out, &target);
        if let Some(tv) = &teacher_v {
            loss += flow_matching_loss(out, tv) * weight;
        }
        loss * scale
    };
    let text = text.to_kind(kind);
    let loss = if spec.stages.finetune.activation_checkpointing {
        recompute::forward_backward(model, &x_sigma, &t, &text, loss_of)
    } else {
        let loss = loss_of(&model.forward(&x_sigma, &t, &text));
        loss.backward();
        loss.detach()
    };
    loss.double_value(&[])
}

pub fn run(ctx: &TaskContext) -> Result<TaskOutput, TaskError> {
    let spec = &ctx.input.spec;
    let job = ctx.job_storage()?;
    let ft = &spec.stages.finetune;
    let (rank, world) = ctx.gang.as_ref().map_or((0, 1), |g| (g.rank(), g.world_size()));
    let global = ft.global_batch as usize;
    if !global.is_multiple_of(world) {
        return Err(TaskError::Fatal(format!(
            "global batch {global} does not split over {world} workers"
        )));
    }
    let local = global / world;

    let student = build_student(ctx, spec, &job)?;
    let teacher = if ft.teacher_loss_weight > 0.0 {
        Some(model_inputs::teacher(ctx, spec)?.1)
    } else {
        None
    };
    let dataset = Dataset::load(ctx, spec, &job)?;
    let trainer = Trainer::new(&student.vs, ft.lr, ft.weight_decay)?;
    let mut training: Training<LossCurve> = Training::resume(ctx, &job, layout::FINETUNE_DIR, trainer)?;

    let mut collective: Box<dyn Collective> = match &ctx.gang {
        Some(gang) => gang.connect(&ctx.handle, ctx.device)?,
        None => Box::new(Local),
    };
    let settings = LoopSettings {
        total_steps: u64::from(ft.steps),
        writes_checkpoints: rank == 0,
        clip: (ft.grad_clip > 0.0).then_some(ft.grad_clip),
        activity: "fine-tuning",
        loss_name: "fine-tuning",
        lr_setting: "stages.finetune.lr",
    };
    let seed = spec.sampler.seed;
    training.run(ctx, &settings, |step, trainer| {
        let mut local_loss = 0.0;
        for j in 0..local {
            let position = step * global as u64 + (rank * local + j) as u64;
            let index = sample_index(seed, position, dataset.len());
            let x0 = dataset.latents[index].unsqueeze(0).to_device(ctx.device);
            let text = dataset.text[index].unsqueeze(0).to_device(ctx.device);
            let noise = seeded_noise(seeds::seed_for(seed, SEED_NOISE, position, 0), &x0.size(), ctx.device);
            let u = SeededRng::new(seeds::seed_for(seed, SEED_SIGMA, position, 0)).uniform_open();
            let sigma = shift_sigma(u, spec.sampler.shift);
            local_loss += sample_step(
                &student.model,
                teacher.as_ref(),
                &x0,
                &text,
                sigma,
                &noise,
                spec,
                1.0 / global as f64,
            );
        }
        // Sum gradients (and the loss, for reporting) over the gang.
        let loss_t = Tensor::from_slice(&[local_loss])
            .to_device(ctx.device)
            .to_kind(Kind::Float);
        if world > 1 {
            hang_once_for_test(ctx, step)?;
            let mut to_reduce = trainer.grads();
            to_reduce.push(loss_t.shallow_clone());
            let started = std::time::Instant::now();
            collective.all_reduce_sum(&to_reduce).map_err(collective_error)?;
            crate::metrics::collective(started.elapsed());
        }
        Ok(loss_t.double_value(&[0]))
    })?;
    collective.barrier().map_err(collective_error)?;
    if rank != 0 {
        // Rank 0 writes the student and completes the task. Until it has, this member
        // keeps its part of the lease alive (the agent heartbeats running tasks): if it
        // ended now, its lease would lapse during rank 0's upload and the coordinator
        // would requeue the finished gang. The heartbeat's stop says the task is done.
        ctx.handle
            .log("info", "done; waiting for rank 0 to write the student and complete");
        loop {
            if ctx.handle.stop_requested().is_some() {
                return Ok(TaskOutput::default());
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    // The final student, for export.
    let final_dir = layout::FINETUNE_FINAL;
    let local = tempfile::tempdir().map_err(TaskError::retryable)?;
    student.save(local.path()).map_err(TaskError::retryable)?;
    let mut artifacts = upload_folder(ctx, &job, local.path(), final_dir)?;
    let curve_path = layout::FINETUNE_LOSS_CURVE.to_string();
    put_json(ctx, &job, &curve_path, &training.meta.loss_curve)?;
    artifacts.push(curve_path);
    training.finish()?;
    let mut metrics = BTreeMap::from([
        ("steps".to_string(), training.meta.step as f64),
        ("samples".to_string(), dataset.len() as f64),
        ("workers".to_string(), world as f64),
    ]);
    if let Some(loss) = training.meta.last_loss() {
        metrics.insert("final_loss".to_string(), loss);
    }
    Ok(TaskOutput {
        metrics,
        artifacts,
        labels: BTreeMap::new(),
        report: true,
    })
}
