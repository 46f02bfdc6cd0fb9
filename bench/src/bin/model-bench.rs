//! GPU benchmark of the model code at Wan2.1-1.3B scale with random weights, bf16. One
//! phase per process (bench/gpu/run.sh runs each with a GPU-memory probe, beside the
//! PyTorch baselines of bench/python/), each printing JSON lines:
//!
//! - `attention [--tokens 32760|9360]`: full softmax (SDPA) and hybrid attention at
//!   R = 2, 4, 8, 16, 32, linear, B = 1, 12 heads of 128: forward, fine-tune
//!   forward+backward (grads to q, k, v and phi), distillation (q, k, v frozen; L1 to the
//!   teacher output; grads to phi), and the anchors' SDPA alone (the rest of the forward is
//!   the linear part). Fused kernels when available; `SURGERY_FUSED_KERNELS=0` measures
//!   the eager path (each line says which). Correctness is worker/tests/fused_kernels.rs.
//! - `attention-parts [--tokens 32760|9360]`: where the fused linear part's time goes.
//! - `model-forward [--frames 81|21]`: the 1.3B teacher's forward at 480x832, then
//!   students with every block at R8 and at R16, and their speed-up over the teacher.
//! - `teacher-forward` / `teacher-train` at `--res 480p|320x480`: the 1.3B teacher's
//!   forward, and forward+backward with block-wise activation checkpointing.
//! - `finetune-step`: one full fine-tuning step of the 1.3B student (15 blocks at R2) at
//!   480p, batch 1: checkpointed forward+backward, gradient clipping, AdamW on fp32 master
//!   weights.
//! - `umt5-encode [--batch 8]`: umT5-xxl encoding a batch of prompts at 512 tokens (the
//!   encode stage's work), beside transformers' UMT5EncoderModel (bench/python/text_video.py).
//! - `vae-decode [--tiled]`: the Wan2.1 VAE decoding 480p x 81 frames, beside diffusers'
//!   AutoencoderKLWan.

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

/// Which implementation of the hybrid attention and the block's element-wise work runs:
/// `fused` (the CUDA kernels) or `eager` (LibTorch ops; `SURGERY_FUSED_KERNELS=0`).
fn kernels_label(like: &Tensor) -> &'static str {
    if surgery_worker::kernels::usable(like) {
        "fused"
    } else {
        "eager"
    }
}

/// The token grid of `--tokens`: 32,760 (480x832, 81 frames) or 9,360 (21 frames).
fn attention_grid(tokens: i64) -> TokenGrid {
    if smoke() {
        return TokenGrid {
            frames: 2,
            height: 4,
            width: 6,
        };
    }
    match tokens {
        32_760 => TokenGrid {
            frames: 21,
            height: 30,
            width: 52,
        },
        9_360 => TokenGrid {
            frames: 6,
            height: 30,
            width: 52,
        },
        other => panic!("--tokens {other}: use 32760 or 9360"),
    }
}

fn attention(tokens: i64) {
    let (heads, d) = if smoke() { (2, 16) } else { (12, 128) };
    let grid = attention_grid(tokens);
    let n = grid.tokens();
    let opts = (Kind::BFloat16, dev());
    tch::manual_seed(0);
    let q = Tensor::randn([1, heads, n, d], opts);
    let k = Tensor::randn([1, heads, n, d], opts);
    let v = Tensor::randn([1, heads, n, d], opts);
    let grad_out = Tensor::randn([1, heads, n, d], opts);
    let inject = |out: &Tensor| (out * &grad_out).sum(Kind::Float).backward();
    let kernels = kernels_label(&q);

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
        ("tokens", n.into()),
        ("kernels", kernels.into()),
        ("rate", "softmax".into()),
        ("forward_ms", fwd.into()),
        ("finetune_ms", fb.into()),
    ]);
    let target = tch::no_grad(|| softmax_attention(&q, &k, &v));

    let vs = VarStore::new(dev());
    let rates = [
        Rate::Hybrid(2),
        Rate::Hybrid(4),
        Rate::Hybrid(8),
        Rate::Hybrid(16),
        Rate::Hybrid(32),
        Rate::Linear,
    ];
    for rate in rates {
        let h = hybrid(&vs, rate, heads, d);
        weights::cast_like_diffusers(&vs, Kind::BFloat16);
        let forward = median_ms(5, 20, || {
            let _ = tch::no_grad(|| h.forward(&q, &k, &v, grid));
        });
        let finetune = median_ms(5, 20, || inject(&h.forward(&qg, &kg, &vg, grid)));
        // Distillation: q, k, v frozen, the teacher output precomputed, grads to phi.
        let distill = median_ms(5, 20, || {
            let out = h.forward(&q, &k, &v, grid);
            (out.to_kind(Kind::Float) - target.to_kind(Kind::Float))
                .abs()
                .mean(Kind::Float)
                .backward();
        });
        // The anchors' SDPA alone; the rest of the forward is the linear part.
        let idx = h.token_index(grid, dev());
        let anchor_ms = match (idx.select_anchors(&k), idx.select_anchors(&v)) {
            (Some(ka), Some(va)) => median_ms(5, 20, || {
                let _ = tch::no_grad(|| softmax_attention(&q, &ka, &va));
            }),
            _ => 0.0,
        };
        emit(&[
            ("phase", "attention".into()),
            ("tokens", n.into()),
            ("kernels", kernels.into()),
            ("rate", rate_name(rate).into()),
            ("forward_ms", forward.into()),
            ("finetune_ms", finetune.into()),
            ("distill_ms", distill.into()),
            ("forward_vs_sdpa", (forward / fwd).into()),
            ("finetune_vs_sdpa", (finetune / fb).into()),
            ("distill_vs_sdpa", (distill / fb).into()),
            ("anchor_sdpa_ms", anchor_ms.into()),
            ("linear_part_ms", (forward - anchor_ms).into()),
        ]);
    }
}

/// Where the fused linear part's time goes at `tokens` (rate linear: every key is a
/// linear token), piece by piece: each feature map, the state GEMM and the readout GEMM
/// with a bf16 and with an fp32 result, the whole forward, and the whole backward.
fn attention_parts(tokens: i64) {
    use surgery_worker::attention::fused::linear::{self, Config, Phi};
    let (heads, d) = if smoke() { (2, 16) } else { (12, 128) };
    let n = attention_grid(tokens).tokens();
    let opts = (Kind::BFloat16, dev());
    tch::manual_seed(0);
    let q = Tensor::randn([1, heads, n, d], opts);
    let k = Tensor::randn([1, heads, n, d], opts);
    let v = Tensor::randn([1, heads, n, d], opts);
    if !surgery_worker::kernels::usable(&q) {
        emit(&[
            ("phase", "attention-parts".into()),
            ("skipped", "no fused kernels".into()),
        ]);
        return;
    }
    let vs = VarStore::new(dev());
    let h = hybrid(&vs, Rate::Linear, heads, d);
    fn phi(m: &surgery_worker::attention::feature_map::FeatureMap) -> Phi<'_> {
        Phi {
            w1: &m.w1,
            b1: &m.b1,
            w2: &m.w2,
            b2: &m.b2,
        }
    }
    let (pq, pk) = (phi(&h.phi_q), phi(&h.phi_k));
    let cfg = Config {
        a: 0.0,
        eps: 1e-6,
        has_anchors: false,
        ends: Config::ends_of(&h.phi_q.config.chunk_sizes()),
    };
    let module = surgery_worker::kernels::module_of(&q).expect("module");
    let time = |f: &mut dyn FnMut()| median_ms(5, 20, f);
    let phi_ms = time(&mut || drop(linear::phi_forward(&module, &q, &pq, &cfg).expect("phi")));
    let fk = linear::phi_forward(&module, &k, &pk, &cfg).expect("phi").phi;
    let features = fk.size()[3];
    let dp = linear::augmented_width(d);
    let v_aug = Tensor::ones([heads, n, dp], opts);
    let fk3 = fk.view([heads, n, features]);
    let state_bf16 = time(&mut || drop(fk3.transpose(1, 2).bmm(&v_aug)));
    let state_f32 = time(&mut || drop(fk3.transpose(1, 2).bmm_dtype(&v_aug, Kind::Float)));
    let s = fk3.transpose(1, 2).bmm(&v_aug);
    let readout_bf16 = time(&mut || drop(fk3.bmm(&s)));
    let readout_f32 = time(&mut || drop(fk3.bmm_dtype(&s, Kind::Float)));
    let forward_ms = time(&mut || drop(linear::forward(None, &q, &k, &v, &pq, &pk, &cfg).expect("forward")));
    let (_, saved) = linear::forward(None, &q, &k, &v, &pq, &pk, &cfg).expect("forward");
    let dy = Tensor::randn([1, heads, n, d], opts);
    let backward_ms = time(&mut || drop(linear::backward(&saved, &dy, &cfg).expect("backward")));
    emit(&[
        ("phase", "attention-parts".into()),
        ("tokens", n.into()),
        ("phi_one_map_ms", phi_ms.into()),
        ("state_gemm_bf16_out_ms", state_bf16.into()),
        ("state_gemm_f32_out_ms", state_f32.into()),
        ("readout_gemm_bf16_out_ms", readout_bf16.into()),
        ("readout_gemm_f32_out_ms", readout_f32.into()),
        ("linear_forward_ms", forward_ms.into()),
        ("linear_backward_ms", backward_ms.into()),
    ]);
}

/// The whole model's forward at 480x832 and `frames` frames (81 or 21): the teacher, then
/// students with every block at R8 and at R16 (same weights plus feature maps), bf16,
/// no gradients - what sampling runs.
fn model_forward(frames: i64) {
    let res = if frames == 81 { "480p" } else { "480p-21f" };
    let (vs, mut model) = teacher();
    let (x, t, text) = inputs(res);
    let kernels = kernels_label(&x);
    let time = |model: &WanTransformer| {
        median_ms(1, 3, || {
            let _ = tch::no_grad(|| model.forward(&x, &t, &text));
        })
    };
    let teacher_ms = time(&model);
    emit(&[
        ("phase", "model-forward".into()),
        ("frames", frames.into()),
        ("kernels", kernels.into()),
        ("model", "teacher".into()),
        ("ms", teacher_ms.into()),
    ]);
    let spec = feature_map_spec();
    let cfg = model.config().clone();
    for rate in [Rate::Hybrid(8), Rate::Hybrid(16)] {
        for block in 0..cfg.num_layers as usize {
            let path = vs.root() / "students" / rate_name(rate) / block as i64 / "attn1";
            let core = HybridAttention::new(
                &path,
                HybridConfig::from_spec(
                    &spec,
                    cfg.num_attention_heads,
                    cfg.attention_head_dim,
                    rate,
                    AnchorPattern::Strided,
                ),
            );
            model.set_self_attention(block, surgery_worker::attention::SelfAttention::Hybrid(core));
        }
        weights::cast_like_diffusers(&vs, Kind::BFloat16);
        let ms = time(&model);
        emit(&[
            ("phase", "model-forward".into()),
            ("frames", frames.into()),
            ("kernels", kernels.into()),
            ("model", format!("student-all-{}", rate_name(rate)).into()),
            ("ms", ms.into()),
            ("speedup_vs_teacher", (teacher_ms / ms).into()),
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
        "480p-21f" => (6, 60, 104),
        "320x480" => (21, 40, 60),
        other => panic!("unknown resolution {other}; use 480p, 480p-21f or 320x480"),
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

/// umT5-xxl (Wan2.1's text encoder: 24 layers, d_model 4096, 64 heads, d_ff 10240) with
/// random bf16 weights encoding a batch of prompts padded to 512 tokens, half of each
/// prompt real (the mask matters for the position bias and padding).
fn umt5_encode(batch: i64) {
    use surgery_worker::text::{Umt5Config, Umt5Encoder};
    let json = if smoke() {
        r#"{"model_type": "umt5", "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4, "vocab_size": 512, "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu_new"}"#
    } else {
        r#"{"model_type": "umt5", "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64, "vocab_size": 256384, "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128, "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu_new"}"#
    };
    let config = Umt5Config::from_json(json, std::path::Path::new("umt5-xxl")).expect("a valid config");
    let vocab = config.vocab_size;
    let encoder = Umt5Encoder::random(config, dev(), Kind::BFloat16, 0);
    let len = if smoke() { 16 } else { 512 };
    let ids = Tensor::randint(vocab, [batch, len], (Kind::Int64, dev()));
    let mask = Tensor::arange(len, (Kind::Int64, dev()))
        .lt(len / 2)
        .unsqueeze(0)
        .expand([batch, len], false)
        .to_kind(Kind::Int64);
    let ms = median_ms(3, 10, || {
        tch::no_grad(|| {
            let _ = encoder.forward(&ids, &mask);
        });
    });
    emit(&[
        ("phase", "umt5-encode".into()),
        ("batch", batch.into()),
        ("tokens", len.into()),
        ("ms", ms.into()),
    ]);
}

/// The Wan2.1 VAE decoder (random weights, bf16) on one 480p x 81-frame latent
/// [16, 21, 60, 104], whole frames or in diffusers' default tiles.
fn vae_decode(tiled: bool) {
    use surgery_worker::vae::{DecodeOptions, Tiling, VaeConfig, WanVaeDecoder};
    let config = VaeConfig::from_json("{}").expect("the Wan2.1 defaults");
    tch::manual_seed(0);
    let vae = WanVaeDecoder::new(&config, dev(), Kind::BFloat16);
    let (f, h, w) = if smoke() { (2, 4, 6) } else { (21, 60, 104) };
    let latents = Tensor::randn([1, config.z_dim, f, h, w], (Kind::BFloat16, dev()));
    let options = DecodeOptions {
        tiling: tiled.then(Tiling::default),
    };
    let ms = median_ms(1, 3, || {
        let _ = vae.decode_with(&latents, &options);
    });
    emit(&[
        ("phase", "vae-decode".into()),
        ("tiled", tiled.into()),
        ("latent", format!("{}x{f}x{h}x{w}", config.z_dim).into()),
        ("ms", ms.into()),
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
    let number = |flag: &str, default: i64| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map_or(default, |v| {
                v.parse().unwrap_or_else(|_| panic!("{flag} takes a number, not {v}"))
            })
    };
    match args.first().map(String::as_str) {
        Some("attention") => attention(number("--tokens", 32_760)),
        Some("attention-parts") => attention_parts(number("--tokens", 32_760)),
        Some("model-forward") => model_forward(number("--frames", 81)),
        Some("teacher-forward") => teacher_forward(res),
        Some("teacher-train") => teacher_train(res),
        Some("finetune-step") => finetune_step(),
        Some("umt5-encode") => umt5_encode(number("--batch", 8)),
        Some("vae-decode") => vae_decode(args.iter().any(|a| a == "--tiled")),
        _ => {
            eprintln!(
                "usage: model-bench [--smoke] attention [--tokens 32760|9360] | attention-parts [--tokens N] | model-forward [--frames 81|21] | teacher-forward [--res R] | teacher-train [--res R] | finetune-step | umt5-encode [--batch N] | vae-decode [--tiled]"
            );
            std::process::exit(2);
        }
    }
}
