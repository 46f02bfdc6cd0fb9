//! GPU benchmark of the model code at Wan2.1-1.3B scale with random weights, bf16. One
//! phase per process (bench/gpu/run.sh runs each with a GPU-memory probe, beside the
//! PyTorch baselines of bench/python/), each printing JSON lines:
//!
//! - `attention`: full softmax (SDPA) and hybrid attention at R = 2, 4, 8, linear, B = 1,
//!   12 heads of 128, 32,760 tokens: forward, fine-tune forward+backward (grads to q, k, v
//!   and phi), distillation (q, k, v frozen; L1 to the teacher output; grads to phi), and
//!   where the forward time goes (anchor SDPA, phi, state, readout). Also checks the fast
//!   path against the exact reference on CUDA at a small size.
//! - `teacher-forward` / `teacher-train` at `--res 480p|320x480`: the 1.3B teacher's
//!   forward, and forward+backward with block-wise activation checkpointing.
//! - `finetune-step`: one full fine-tuning step of the 1.3B student (15 blocks at R2) at
//!   480p, batch 1: checkpointed forward+backward, gradient clipping, AdamW on fp32 master
//!   weights.

use surgery_core::cost::{self, FeatureMapShape};
use surgery_core::rate::Rate;
use surgery_core::spec::{AnchorPattern, FeatureMapSpec};
use surgery_worker::attention::hybrid::{HybridAttention, HybridConfig};
use surgery_worker::attention::{TokenGrid, softmax_attention};
use surgery_worker::model::{WanConfig, WanTransformer, weights};
use surgery_worker::runtime;
use surgery_worker::train::{AdamW, AdamWConfig, MasterWeights, recompute};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// `--smoke`: the same code on the CPU at toy sizes, so CI proves every phase runs.
static SMOKE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

fn smoke() -> bool {
    *SMOKE.get().unwrap_or(&false)
}

fn dev() -> Device {
    if smoke() { Device::Cpu } else { Device::Cuda(0) }
}

/// Median milliseconds of `iters` runs after `warmup`, on the benchmark's device.
fn median_ms(warmup: usize, iters: usize, f: impl FnMut()) -> f64 {
    runtime::median_ms(dev(), warmup, iters, f)
}

fn emit(fields: &[(&str, serde_json::Value)]) {
    let object: serde_json::Map<String, serde_json::Value> =
        fields.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    println!("{}", serde_json::Value::Object(object));
}

fn rate_name(rate: Rate) -> String {
    match rate {
        Rate::Linear => "linear".into(),
        Rate::Softmax => "softmax".into(),
        Rate::Hybrid(r) => format!("R{r}"),
    }
}

fn feature_map_spec() -> FeatureMapSpec {
    let width = if smoke() { 8 } else { 256 };
    FeatureMapSpec {
        hidden: width,
        features: width,
        chunks: 2,
        eps: 1e-6,
    }
}

fn hybrid(vs: &VarStore, rate: Rate, heads: i64, d: i64) -> HybridAttention {
    let spec = feature_map_spec();
    HybridAttention::new(
        &(vs.root() / rate_name(rate)),
        HybridConfig::from_spec(&spec, heads, d, rate, AnchorPattern::Strided),
    )
}

fn attention() {
    let (heads, d) = if smoke() { (2, 16) } else { (12, 128) };
    let grid = if smoke() {
        TokenGrid {
            frames: 2,
            height: 4,
            width: 6,
        }
    } else {
        TokenGrid {
            frames: 21,
            height: 30,
            width: 52,
        }
    };
    let n = grid.tokens();
    let opts = (Kind::BFloat16, dev());
    tch::manual_seed(0);
    let q = Tensor::randn([1, heads, n, d], opts);
    let k = Tensor::randn([1, heads, n, d], opts);
    let v = Tensor::randn([1, heads, n, d], opts);
    let grad_out = Tensor::randn([1, heads, n, d], opts);
    let inject = |out: &Tensor| (out * &grad_out).sum(Kind::Float).backward();

    let fwd = median_ms(5, 20, || {
        let _ = tch::no_grad(|| softmax_attention(&q, &k, &v));
    });
    let (qg, kg, vg) = (
        q.copy().set_requires_grad(true),
        k.copy().set_requires_grad(true),
        v.copy().set_requires_grad(true),
    );
    let fb = median_ms(5, 20, || inject(&softmax_attention(&qg, &kg, &vg)));
    emit(&[
        ("phase", "attention".into()),
        ("rate", "softmax".into()),
        ("forward_ms", fwd.into()),
        ("finetune_ms", fb.into()),
    ]);
    let target = tch::no_grad(|| softmax_attention(&q, &k, &v));

    let vs = VarStore::new(dev());
    for rate in [Rate::Hybrid(2), Rate::Hybrid(4), Rate::Hybrid(8), Rate::Linear] {
        let h = hybrid(&vs, rate, heads, d);
        weights::cast_like_diffusers(&vs, Kind::BFloat16);
        let forward = median_ms(5, 20, || {
            let _ = tch::no_grad(|| h.forward(&q, &k, &v, grid));
        });
        let finetune = median_ms(5, 20, || inject(&h.forward(&qg, &kg, &vg, grid)));
        let distill = median_ms(5, 20, || {
            let out = h.forward(&q, &k, &v, grid);
            (out.to_kind(Kind::Float) - target.to_kind(Kind::Float))
                .abs()
                .mean(Kind::Float)
                .backward();
        });
        // Where the forward time goes, piece by piece, with the fast path's own ops.
        let idx = h.token_index(grid, dev());
        let anchor_ms = match (idx.select_anchors(&k), idx.select_anchors(&v)) {
            (Some(ka), Some(va)) => median_ms(5, 20, || {
                let _ = tch::no_grad(|| softmax_attention(&q, &ka, &va));
            }),
            _ => 0.0,
        };
        let (kl, vl) = (idx.select_linear(&k).unwrap(), idx.select_linear(&v).unwrap());
        let phi_ms = median_ms(5, 20, || {
            tch::no_grad(|| {
                let _ = (h.phi_k.forward(&idx.select_linear(&k).unwrap()), h.phi_q.forward(&q));
            })
        });
        let (fk, fq) = tch::no_grad(|| (h.phi_k.forward(&kl), h.phi_q.forward(&q)));
        let state_ms = median_ms(5, 20, || {
            tch::no_grad(|| {
                let _ = (
                    fk.transpose(-2, -1).matmul(&vl.to_kind(Kind::Float)),
                    fk.sum_dim_intlist(-2, true, Kind::Float),
                );
            })
        });
        let (s, z) = tch::no_grad(|| {
            (
                fk.transpose(-2, -1).matmul(&vl.to_kind(Kind::Float)),
                fk.sum_dim_intlist(-2, true, Kind::Float),
            )
        });
        let readout_ms = median_ms(5, 20, || {
            tch::no_grad(|| {
                let _ = (fq.matmul(&s) / (fq.matmul(&z.transpose(-2, -1)) + 1.0)).to_kind(Kind::BFloat16);
            })
        });
        emit(&[
            ("phase", "attention".into()),
            ("rate", rate_name(rate).into()),
            ("forward_ms", forward.into()),
            ("finetune_ms", finetune.into()),
            ("distill_ms", distill.into()),
            ("forward_vs_sdpa", (forward / fwd).into()),
            ("finetune_vs_sdpa", (finetune / fb).into()),
            ("distill_vs_sdpa", (distill / fb).into()),
            ("anchor_sdpa_ms", anchor_ms.into()),
            ("phi_ms", phi_ms.into()),
            ("state_ms", state_ms.into()),
            ("readout_ms", readout_ms.into()),
        ]);
    }

    // The fast path equals the exact reference on CUDA too (small size: the reference is O(N^2)).
    let small = TokenGrid {
        frames: 3,
        height: 6,
        width: 10,
    };
    for (kind, tol) in [(Kind::Float, 1e-4), (Kind::BFloat16, 2e-2)] {
        let vs = VarStore::new(dev());
        let h = hybrid(&vs, Rate::Hybrid(4), 4, 32);
        weights::cast_like_diffusers(&vs, kind);
        let sq = Tensor::randn([2, 4, small.tokens(), 32], (kind, dev()));
        let sk = Tensor::randn([2, 4, small.tokens(), 32], (kind, dev()));
        let sv = Tensor::randn([2, 4, small.tokens(), 32], (kind, dev()));
        let (fast, exact) = tch::no_grad(|| (h.forward(&sq, &sk, &sv, small), h.reference(&sq, &sk, &sv, small)));
        let err = (fast.to_kind(Kind::Double) - exact.to_kind(Kind::Double))
            .abs()
            .max()
            .double_value(&[])
            / exact.abs().max().to_kind(Kind::Double).double_value(&[]);
        emit(&[
            ("phase", "attention-check".into()),
            ("dtype", format!("{kind:?}").into()),
            ("max_rel_error", err.into()),
            ("ok", (err <= tol).into()),
        ]);
    }
}

/// (latent frames, height, width) of a named resolution.
fn resolution(name: &str) -> (i64, i64, i64) {
    if smoke() {
        return (2, 4, 6);
    }
    match name {
        "480p" => (21, 60, 104),
        "320x480" => (21, 40, 60),
        other => panic!("unknown resolution {other}; use 480p or 320x480"),
    }
}

fn config() -> WanConfig {
    if smoke() {
        WanConfig::toy()
    } else {
        WanConfig::wan21_t2v_1_3b()
    }
}

fn teacher() -> (VarStore, WanTransformer) {
    tch::manual_seed(0);
    let vs = VarStore::new(dev());
    let model = WanTransformer::new(&vs.root(), &config());
    weights::cast_like_diffusers(&vs, Kind::BFloat16);
    (vs, model)
}

fn inputs(res: &str) -> (Tensor, Tensor, Tensor) {
    let (f, h, w) = resolution(res);
    (
        Tensor::randn([1, 16, f, h, w], (Kind::BFloat16, dev())),
        Tensor::from_slice(&[500f32]).to_device(dev()),
        Tensor::randn(
            [1, if smoke() { 8 } else { 512 }, config().text_dim],
            (Kind::BFloat16, dev()),
        ),
    )
}

/// Useful forward FLOPs of the model at `res` with these block rates.
fn forward_flops(res: &str, rates: &[Rate]) -> f64 {
    let (f, h, w) = resolution(res);
    let shape = config().shape();
    let tokens = cost::tokens(&shape, f as u32, h as u32, w as u32);
    cost::model_forward_flops(&shape, &FeatureMapShape::paper_default(), tokens, rates)
}

/// bf16 dense peak of an H100 SXM (datasheet), for model FLOP utilisation.
const PEAK_FLOPS: f64 = 989e12;

fn teacher_forward(res: &str) {
    let (_vs, model) = teacher();
    let (x, t, text) = inputs(res);
    let ms = median_ms(2, 5, || {
        let _ = tch::no_grad(|| model.forward(&x, &t, &text));
    });
    let flops = forward_flops(res, &vec![Rate::Softmax; config().num_layers as usize]);
    emit(&[
        ("phase", "teacher-forward".into()),
        ("res", res.into()),
        ("ms", ms.into()),
        ("mfu", (flops / (ms / 1e3) / PEAK_FLOPS).into()),
    ]);
}

fn teacher_train(res: &str) {
    let (vs, model) = teacher();
    let (x, t, text) = inputs(res);
    let grad = Tensor::randn(x.size(), (Kind::BFloat16, dev()));
    let ms = median_ms(2, 5, || {
        let _ = recompute::forward_backward(&model, &x, &t, &text, |out| (out * &grad).sum(Kind::Float));
        for (_, var) in vs.variables() {
            let _ = var.grad().zero_();
        }
    });
    // Useful work: forward + backward = 3 forwards (the recomputation is overhead).
    let flops = 3.0 * forward_flops(res, &vec![Rate::Softmax; config().num_layers as usize]);
    emit(&[
        ("phase", "teacher-train".into()),
        ("res", res.into()),
        ("ms", ms.into()),
        ("mfu", (flops / (ms / 1e3) / PEAK_FLOPS).into()),
    ]);
}

fn finetune_step() {
    let (vs, mut model) = teacher();
    let spec = feature_map_spec();
    let cfg = model.config().clone();
    let converted = (cfg.num_layers / 2) as usize;
    for block in 0..converted {
        let path = vs.root() / "blocks" / block as i64 / "attn1";
        let core = HybridAttention::new(
            &path,
            HybridConfig::from_spec(
                &spec,
                cfg.num_attention_heads,
                cfg.attention_head_dim,
                Rate::Hybrid(2),
                AnchorPattern::Strided,
            ),
        );
        model.set_self_attention(block, surgery_worker::attention::SelfAttention::Hybrid(core));
    }
    weights::cast_like_diffusers(&vs, Kind::BFloat16);
    let mut params: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    let count: i64 = params.iter().map(|(_, p)| p.numel() as i64).sum();
    let masters = MasterWeights::new(params).expect("master weights");
    let mut optimizer = AdamW::new(
        masters.optimizer_params(),
        AdamWConfig {
            lr: 1e-5,
            ..AdamWConfig::default()
        },
    )
    .expect("optimizer");
    let (x0, _, text) = inputs("480p");
    let noise = Tensor::randn(x0.size(), (Kind::Float, dev()));
    let sigma = Tensor::from_slice(&[0.7f32]).to_device(dev());
    let x_sigma = surgery_worker::train::noisy(&x0.to_kind(Kind::Float), &noise, &sigma).to_kind(Kind::BFloat16);
    let target = surgery_worker::train::velocity_target(&x0.to_kind(Kind::Float), &noise);
    let t = surgery_worker::train::timestep_of(&sigma);
    let mut step = || {
        let loss = recompute::forward_backward(&model, &x_sigma, &t, &text, |out| {
            surgery_worker::train::flow_matching_loss(out, &target)
        });
        masters.step(&mut optimizer, Some(1.0)).expect("finite step");
        masters.zero_grad();
        loss
    };
    let ms = median_ms(1, 3, || {
        let _ = step();
    });
    let mut rates = vec![Rate::Hybrid(2); converted];
    rates.resize(cfg.num_layers as usize, Rate::Softmax);
    emit(&[
        ("phase", "finetune-step".into()),
        ("res", "480p".into()),
        ("params", count.into()),
        ("ms", ms.into()),
        (
            "mfu",
            (3.0 * forward_flops("480p", &rates) / (ms / 1e3) / PEAK_FLOPS).into(),
        ),
    ]);
}

fn main() {
    surgery_worker::runtime::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    SMOKE.set(args.iter().any(|a| a == "--smoke")).expect("set once");
    if !smoke() {
        assert!(
            tch::Cuda::is_available(),
            "model-bench needs a CUDA device (or --smoke): {}",
            surgery_worker::runtime::describe_devices()
        );
    }
    let res = args
        .iter()
        .position(|a| a == "--res")
        .and_then(|i| args.get(i + 1))
        .map_or("480p", String::as_str);
    match args.first().map(String::as_str) {
        Some("attention") => attention(),
        Some("teacher-forward") => teacher_forward(res),
        Some("teacher-train") => teacher_train(res),
        Some("finetune-step") => finetune_step(),
        _ => {
            eprintln!(
                "usage: model-bench [--smoke] attention | teacher-forward [--res R] | teacher-train [--res R] | finetune-step"
            );
            std::process::exit(2);
        }
    }
}
