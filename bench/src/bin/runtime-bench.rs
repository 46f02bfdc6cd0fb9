//! GPU benchmark of the worker runtime at Wan2.1-1.3B scale (random weights, bf16, 480p),
//! printing JSON lines for bench/gpu/summarize.py:
//!
//! - `capture-step`: one denoising step of the teacher with classifier-free guidance
//!   (both branches in one batch of 2) and the capture hook recording every block.
//! - `distill`: distillation steps of one block at R = 4 with the block's cache streamed
//!   from a local object store (the stage's own shard reader with prefetch), against the
//!   same steps with the samples already on the GPU.
//! - `stall`: the fine-tuning step with and without a checkpoint taken (SnapshotWriter:
//!   device copy, writer thread, background upload) - the stall is the difference.
//! - `finetune --world W`: the fine-tuning step of the 1.3B student (15 blocks at R2) with
//!   one sample per GPU over W GPUs (NCCL through the worker's collective); without
//!   `--rank` it launches W processes and forwards rank 0's line.
//!
//! `--smoke` runs every phase on the CPU at toy sizes (a test does), so the benchmark
//! cannot rot between GPU sessions.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use surgery_core::layout;
use surgery_core::rate::Rate;
use surgery_core::spec::{AnchorPattern, FeatureMapSpec};
use surgery_worker::attention::SelfAttention;
use surgery_worker::attention::hybrid::{HybridAttention, HybridConfig};
use surgery_worker::collective::{Collective, Local, Nccl};
use surgery_worker::model::{WanConfig, WanTransformer, weights};
use surgery_worker::sampler::{self, Capture, Denoiser, NoCapture};
use surgery_worker::stages::cache::BlockCache;
use surgery_worker::storage::{Checkpointer, SnapshotWriter, Storage, tensors};
use surgery_worker::train::{
    AdamW, AdamWConfig, MasterWeights, TeacherBlock, flow_matching_loss, recompute, value_distillation_loss,
};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

static SMOKE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

fn smoke() -> bool {
    *SMOKE.get().unwrap_or(&false)
}

fn device(index: usize) -> Device {
    if smoke() { Device::Cpu } else { Device::Cuda(index) }
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

fn emit(fields: serde_json::Value) {
    println!("{fields}");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn config() -> WanConfig {
    if smoke() {
        WanConfig::toy()
    } else {
        WanConfig::wan21_t2v_1_3b()
    }
}

/// (latent frames, height, width) at 480p.
fn latent() -> (i64, i64, i64) {
    if smoke() { (2, 4, 6) } else { (21, 60, 104) }
}

fn text_len() -> i64 {
    if smoke() { 8 } else { 512 }
}

fn fmap() -> FeatureMapSpec {
    let width = if smoke() { 8 } else { 256 };
    FeatureMapSpec {
        hidden: width,
        features: width,
        chunks: 2,
        eps: 1e-6,
    }
}

fn teacher(dev: Device) -> (VarStore, WanTransformer) {
    tch::manual_seed(0);
    let vs = VarStore::new(dev);
    let model = WanTransformer::new(&vs.root(), &config());
    weights::cast_like_diffusers(&vs, Kind::BFloat16);
    (vs, model)
}

struct CountCapture(usize);

impl Capture for CountCapture {
    fn active(&self) -> bool {
        true
    }
    fn block_input(&mut self, _block: usize, hidden: &Tensor, _tp: &Tensor) {
        // What the capture stage does with each block input: a copy off the device.
        let _ = hidden.to_device(Device::Cpu);
        self.0 += 1;
    }
}

fn capture_step() {
    let dev = device(0);
    let (_vs, model) = teacher(dev);
    let cfg = config();
    let (f, h, w) = latent();
    let x = Tensor::randn([2, cfg.in_channels, f, h, w], (Kind::Float, dev));
    let t = Tensor::from_slice(&[900f32, 900.0]).to_device(dev);
    let text = Tensor::randn([2, text_len(), cfg.text_dim], (Kind::BFloat16, dev));
    let mut times = BTreeMap::new();
    for (name, capturing) in [("denoise_step_ms", false), ("capture_step_ms", true)] {
        let mut runs = Vec::new();
        for i in 0..4 {
            sync(dev);
            let start = Instant::now();
            tch::no_grad(|| {
                let v = if capturing {
                    model.velocity(&x, &t, &text, &mut CountCapture(0))
                } else {
                    model.velocity(&x, &t, &text, &mut NoCapture)
                };
                let _ = sampler::guide(&v.narrow(0, 0, 1), &v.narrow(0, 1, 1), 5.0);
            });
            sync(dev);
            if i > 0 {
                runs.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        times.insert(name, median(runs));
    }
    emit(serde_json::json!({ "phase": "capture-step", "cfg_batch": 2, "ms": times }));
}

fn distill() {
    let dev = device(0);
    let (_vs, model) = teacher(dev);
    let cfg = config();
    let (f, h, w) = latent();
    let grid = model.grid_of((f, h, w));
    let rope = model.rope(grid);
    let target = TeacherBlock {
        model: &model,
        block: 0,
        rope: &rope,
        grid,
        device: dev,
    };
    // A cache of 16 samples for block 0 in 8 shards, as the capture stage writes it.
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = Storage::from_url(&dir.path().display().to_string()).unwrap();
    let tokens = grid.tokens();
    let mut resident = Vec::new();
    let shards = 8u32;
    for shard in 0..shards {
        let hidden = Tensor::randn([2, tokens, cfg.dim()], (Kind::BFloat16, Device::Cpu));
        let tp = Tensor::randn([2, 6, cfg.dim()], (Kind::Float, Device::Cpu)) * 0.1;
        let bytes = tensors::to_bytes(&[("hidden", &hidden), ("timestep_proj", &tp)]);
        runtime
            .block_on(store.put(&layout::cache_shard(0, shard), bytes))
            .unwrap();
        for i in 0..2 {
            resident.push((hidden.narrow(0, i, 1).to_device(dev), tp.narrow(0, i, 1).to_device(dev)));
        }
    }
    let vs = VarStore::new(dev);
    let hybrid = HybridAttention::new(
        &(vs.root() / "blocks" / 0 / "attn1"),
        HybridConfig::from_spec(
            &fmap(),
            cfg.num_attention_heads,
            cfg.attention_head_dim,
            Rate::Hybrid(4),
            AnchorPattern::Strided,
        ),
    );
    let named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    let masters = MasterWeights::new(named).unwrap();
    let mut optimizer = AdamW::new(masters.optimizer_params(), AdamWConfig::default()).unwrap();
    let mut train_step = |rows: &[(Tensor, Tensor)], updates: usize| {
        let b = target.batch(rows);
        for _ in 0..updates {
            let loss = value_distillation_loss(&b.target, &hybrid.forward(&b.q, &b.k, &b.v, grid));
            loss.backward();
            masters.step(&mut optimizer, None).unwrap();
            masters.zero_grad();
            let _ = loss.double_value(&[]);
        }
    };
    // One sample per batch, U = 4 updates per loaded batch (the reference config).
    let updates = 4;
    train_step(&resident[..1], 1);
    sync(dev);
    let start = Instant::now();
    for i in 0..resident.len() {
        train_step(&resident[i..i + 1], updates);
    }
    sync(dev);
    let resident_s = start.elapsed().as_secs_f64();

    // Block 0's cache as the stage reads it: 8 shards of 2 samples (every 20th held out).
    let cache = BlockCache::with_sizes(&store, 0, vec![2; shards as usize], 20);
    let order: Vec<(usize, usize)> = (0..shards as usize).flat_map(|s| (0..2).map(move |i| (s, i))).collect();
    let mut prefetch = cache.prefetch(runtime.handle().clone(), (0..shards as usize).collect(), dev);
    // Steady state: the clock starts once the first shard is in (a 2,000-step task pays
    // that once).
    prefetch.get(0).unwrap();
    sync(dev);
    let start = Instant::now();
    for (s, i) in &order {
        let shard = prefetch.get(*s).unwrap();
        let picked = [shard.rows(*i)];
        train_step(&picked, updates);
    }
    sync(dev);
    let streamed_s = start.elapsed().as_secs_f64();
    let steps = (resident.len() * updates) as f64;
    emit(serde_json::json!({
        "phase": "distill",
        "rate": "R4",
        "samples_per_batch": 1,
        "updates_per_batch": updates,
        "resident_step_ms": resident_s * 1e3 / steps,
        "streamed_step_ms": streamed_s * 1e3 / steps,
        "streamed_vs_resident_throughput": resident_s / streamed_s,
        "shard_mib": (2 * tokens * cfg.dim() * 2) as f64 / (1 << 20) as f64,
    }));
}

/// The 1.3B student with 15 blocks at R2, its masters and optimizer.
fn student(dev: Device) -> (VarStore, WanTransformer, MasterWeights, AdamW) {
    let (vs, mut model) = teacher(dev);
    let cfg = config();
    for block in 0..(cfg.num_layers / 2) as usize {
        let core = HybridAttention::new(
            &(vs.root() / "blocks" / block as i64 / "attn1"),
            HybridConfig::from_spec(
                &fmap(),
                cfg.num_attention_heads,
                cfg.attention_head_dim,
                Rate::Hybrid(2),
                AnchorPattern::Strided,
            ),
        );
        model.set_self_attention(block, SelfAttention::Hybrid(core));
    }
    weights::cast_like_diffusers(&vs, Kind::BFloat16);
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let masters = MasterWeights::new(named).unwrap();
    let optimizer = AdamW::new(
        masters.optimizer_params(),
        AdamWConfig {
            lr: 1e-5,
            ..AdamWConfig::default()
        },
    )
    .unwrap();
    (vs, model, masters, optimizer)
}

fn sample(dev: Device) -> (Tensor, Tensor, Tensor, Tensor) {
    let cfg = config();
    let (f, h, w) = latent();
    let x0 = Tensor::randn([1, cfg.in_channels, f, h, w], (Kind::Float, dev));
    let noise = Tensor::randn([1, cfg.in_channels, f, h, w], (Kind::Float, dev));
    let x = (&x0 * 0.3 + &noise * 0.7).to_kind(Kind::BFloat16);
    let text = Tensor::randn([1, text_len(), cfg.text_dim], (Kind::BFloat16, dev));
    (x, noise - x0, Tensor::from_slice(&[700f32]).to_device(dev), text)
}

/// One fine-tuning step: checkpointed forward+backward of one sample, gradient all-reduce,
/// clipping, AdamW on the masters.
fn finetune_step(
    model: &WanTransformer,
    masters: &MasterWeights,
    optimizer: &mut AdamW,
    collective: &mut dyn Collective,
    grads: &[Tensor],
    batch: &(Tensor, Tensor, Tensor, Tensor),
) {
    let (x, target, t, text) = batch;
    let loss = recompute::forward_backward(model, x, t, text, |out| flow_matching_loss(out, target));
    if collective.world_size() > 1 {
        let g: Vec<Tensor> = grads.iter().map(|p| p.grad()).filter(|g| g.defined()).collect();
        collective.all_reduce_sum(&g).expect("all-reduce");
    }
    masters.step(optimizer, Some(1.0)).expect("step");
    masters.zero_grad();
    let _ = loss.double_value(&[]);
}

fn stall() {
    let dev = device(0);
    let (vs, model, masters, mut optimizer) = student(dev);
    let grads: Vec<Tensor> = vs.variables().into_values().collect();
    let batch = sample(dev);
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = Storage::from_url(&dir.path().display().to_string()).unwrap();
    let writer = SnapshotWriter::new(Checkpointer::new(store, "ckpt", 1, runtime.handle().clone()));
    let mut local = Local;
    let timed = |masters: &MasterWeights, optimizer: &mut AdamW, local: &mut Local, checkpoint: Option<u64>| {
        sync(dev);
        let start = Instant::now();
        let mut save_ms = 0.0;
        if let Some(step) = checkpoint {
            let mut state = masters.state_dict();
            state.extend(optimizer.state_dict());
            let t = Instant::now();
            writer.save(step, "state.safetensors", &state, serde_json::json!({ "step": step }));
            save_ms = t.elapsed().as_secs_f64() * 1e3;
        }
        finetune_step(&model, masters, optimizer, local, &grads, &batch);
        sync(dev);
        (start.elapsed().as_secs_f64() * 1e3, save_ms)
    };
    timed(&masters, &mut optimizer, &mut local, None);
    let plain: Vec<f64> = (0..3)
        .map(|_| timed(&masters, &mut optimizer, &mut local, None).0)
        .collect();
    let mut with = Vec::new();
    let mut save_calls = Vec::new();
    for step in 1..=2u64 {
        let (ms, save) = timed(&masters, &mut optimizer, &mut local, Some(step));
        with.push(ms);
        save_calls.push(save);
        // Let the writer finish before the next one, as a checkpoint interval would.
        writer.flush().unwrap();
    }
    let state_bytes: i64 = masters
        .state_dict()
        .iter()
        .chain(optimizer.state_dict().iter())
        .map(|(_, t)| t.numel() as i64 * t.kind().elt_size_in_bytes() as i64)
        .sum();
    let t = Instant::now();
    writer.flush().unwrap();
    let _ = t;
    emit(serde_json::json!({
        "phase": "stall",
        "step_ms": median(plain.clone()),
        "step_with_checkpoint_ms": median(with.clone()),
        "stall_ms": median(with) - median(plain),
        "save_call_ms": median(save_calls),
        "checkpoint_gib": state_bytes as f64 / (1u64 << 30) as f64,
    }));
}

fn finetune(world: usize, rank: Option<usize>, dir: Option<PathBuf>) {
    let Some(rank) = rank else {
        // Launcher: one process per rank, a folder for the NCCL id.
        let dir = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        let children: Vec<_> = (0..world)
            .map(|r| {
                let mut cmd = std::process::Command::new(&exe);
                cmd.args([
                    "finetune",
                    "--world",
                    &world.to_string(),
                    "--rank",
                    &r.to_string(),
                    "--dir",
                ]);
                cmd.arg(dir.path());
                if smoke() {
                    cmd.arg("--smoke");
                }
                cmd.env("NCCL_NVLS_ENABLE", "0")
                    .env("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
                    .env("NVSHMEM_DISABLE_NVLS", "1")
                    .stdout(if r == 0 {
                        std::process::Stdio::inherit()
                    } else {
                        std::process::Stdio::null()
                    })
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut child in children {
            assert!(child.wait().unwrap().success(), "a rank failed");
        }
        return;
    };
    let dir = dir.expect("--dir with --rank");
    let dev = device(rank);
    let mut collective: Box<dyn Collective> = if world == 1 || smoke() {
        Box::new(Local)
    } else {
        let id_path = dir.join("nccl-id");
        let id = if rank == 0 {
            let id = Nccl::unique_id().unwrap();
            std::fs::write(dir.join("nccl-id.tmp"), id).unwrap();
            std::fs::rename(dir.join("nccl-id.tmp"), &id_path).unwrap();
            id
        } else {
            loop {
                if let Ok(bytes) = std::fs::read(&id_path) {
                    break <[u8; 128]>::try_from(bytes.as_slice()).unwrap();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        Box::new(Nccl::new(rank, rank, world, id, Duration::from_secs(300)).unwrap())
    };
    let (vs, model, masters, mut optimizer) = student(dev);
    let grads: Vec<Tensor> = {
        let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named.into_iter().map(|(_, t)| t).collect()
    };
    let batch = sample(dev);
    let mut times = Vec::new();
    for i in 0..4 {
        collective.barrier().unwrap();
        sync(dev);
        let start = Instant::now();
        finetune_step(&model, &masters, &mut optimizer, collective.as_mut(), &grads, &batch);
        sync(dev);
        if i > 0 {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    if rank == 0 {
        emit(serde_json::json!({ "phase": "finetune", "world": world, "per_gpu_batch": 1, "step_ms": median(times) }));
    }
}

fn main() {
    surgery_worker::runtime::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    SMOKE.set(args.iter().any(|a| a == "--smoke")).unwrap();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if !smoke() {
        assert!(tch::Cuda::is_available(), "runtime-bench needs CUDA (or --smoke)");
    }
    match args.first().map(String::as_str) {
        Some("capture-step") => capture_step(),
        Some("distill") => distill(),
        Some("stall") => stall(),
        Some("finetune") => finetune(
            value("--world").map_or(1, |w| w.parse().unwrap()),
            value("--rank").map(|r| r.parse().unwrap()),
            value("--dir").map(PathBuf::from),
        ),
        _ => {
            eprintln!("usage: runtime-bench [--smoke] capture-step | distill | stall | finetune [--world W]");
            std::process::exit(2);
        }
    }
}
