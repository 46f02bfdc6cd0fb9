//! The fused hybrid-attention kernels (worker/src/attention/fused, kernels/attention.cu)
//! against the exact
//! reference (`HybridAttention::reference`, fp64, explicit scores).
//!
//! On any machine: the kernels compile with NVRTC (setup installs LibTorch's NVRTC, so
//! CI checks the CUDA source without a GPU). On a GPU machine: forward and every gradient
//! (to q, k, v and both feature maps) over odd token counts, 1 to 24 heads, head dims 64
//! and 128, every rate (2, 4, 8, 16, 32, linear), both anchor patterns, bf16 (<= 1e-2)
//! and fp32 (<= 1e-5), errors relative in the Frobenius norm (the worst element's error
//! against the largest value is printed beside it). Without a GPU those tests say so and
//! pass; docs/BENCHMARKS.md records the GPU run and its command:
//!
//!     cargo test --release -p surgery-worker --test fused_kernels -- --nocapture

use std::sync::Mutex;
use surgery_worker::attention::TokenGrid;
use surgery_worker::attention::feature_map::FeatureMapConfig;
use surgery_worker::attention::hybrid::{AnchorPattern, HybridAttention, HybridConfig, Normaliser, Rate};
use surgery_worker::kernels;
use surgery_worker::model::{WanConfig, WanTransformer, fused as block_fused, weights};
use tch::{Device, Kind, Tensor, nn};

static GPU: Mutex<()> = Mutex::new(());

#[test]
fn kernels_compile_with_nvrtc() {
    surgery_worker::runtime::init();
    for arch in ["compute_80", "compute_90"] {
        let ptx = kernels::compile(arch).unwrap_or_else(|e| panic!("{arch}: {e}"));
        for name in kernels::kernel_names() {
            assert!(
                ptx.contains(&format!(".entry {name}(")),
                "{arch}: no kernel {name} in the PTX"
            );
        }
    }
}

fn cuda() -> Option<Device> {
    surgery_worker::runtime::init();
    if tch::Cuda::is_available() {
        Some(Device::Cuda(0))
    } else {
        println!("no CUDA device: the fused kernels are checked on a GPU machine (see the module doc)");
        None
    }
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().to_kind(Kind::Double).double_value(&[])
}

/// ||a - reference|| / ||reference|| (Frobenius): the error of the whole tensor, as a
/// gradient's accuracy is judged.
fn rel_err(a: &Tensor, reference: &Tensor) -> f64 {
    let a = a.to_kind(Kind::Double);
    let b = reference.to_kind(Kind::Double);
    (&a - &b).norm().double_value(&[]) / b.norm().double_value(&[]).max(1e-300)
}

/// max |a - reference| / max |reference|: the worst element against the scale.
fn max_rel_err(a: &Tensor, reference: &Tensor) -> f64 {
    let a = a.to_kind(Kind::Double);
    let b = reference.to_kind(Kind::Double);
    max_abs(&(&a - &b)) / max_abs(&b).max(1e-30)
}

struct Case {
    heads: i64,
    head_dim: i64,
    grid: TokenGrid,
    rate: Rate,
    pattern: AnchorPattern,
    kind: Kind,
}

const GRADS: [&str; 11] = [
    "q", "k", "v", "phi_q.w1", "phi_q.b1", "phi_q.w2", "phi_q.b2", "phi_k.w1", "phi_k.b1", "phi_k.w2", "phi_k.b2",
];

/// (forward error, each gradient's error in [`GRADS`] order, the worst element-wise
/// error of them all) of one case.
fn check(case: &Case, device: Device) -> (f64, Vec<f64>, f64) {
    let vs = nn::VarStore::new(device);
    let att = HybridAttention::new(
        &(vs.root() / "attn1"),
        HybridConfig {
            feature_map: FeatureMapConfig {
                heads: case.heads,
                head_dim: case.head_dim,
                hidden: 64,
                features: 64,
                chunks: 2,
            },
            eps: 1e-6,
            rate: case.rate,
            pattern: case.pattern,
            normaliser: Normaliser::default(),
        },
    );
    assert!(
        att.uses_fused(&Tensor::zeros([1], (case.kind, device))),
        "the fused path is not in use"
    );
    let n = case.grid.tokens();
    let shape = [1, case.heads, n, case.head_dim];
    let make = |scale: f64| (Tensor::randn(shape, (Kind::Float, device)) * scale).to_kind(case.kind);
    let (q, k, v) = (make(1.5), make(1.5), make(1.0));
    let dy = make(1.0);

    let inputs = |t: &Tensor| t.detach().set_requires_grad(true);
    let params = att.parameters();
    let run = |reference: bool| -> (Tensor, Vec<Tensor>) {
        let (q, k, v) = (inputs(&q), inputs(&k), inputs(&v));
        for p in &params {
            p.shallow_clone().zero_grad();
        }
        let y = if reference {
            att.reference(
                &q.to_kind(Kind::Double),
                &k.to_kind(Kind::Double),
                &v.to_kind(Kind::Double),
                case.grid,
            )
        } else {
            att.forward(&q, &k, &v, case.grid)
        };
        (y.to_kind(Kind::Double) * dy.to_kind(Kind::Double))
            .sum(Kind::Double)
            .backward();
        let mut grads = vec![q.grad(), k.grad(), v.grad()];
        grads.extend(params.iter().map(|p| p.grad().copy()));
        (y.detach(), grads)
    };
    let (y_ref, g_ref) = run(true);
    let (y, g) = run(false);
    assert_eq!(y.kind(), case.kind);
    assert_eq!(g.len(), GRADS.len());
    let errors = g.iter().zip(&g_ref).map(|(a, b)| rel_err(a, b)).collect();
    let worst_element = g
        .iter()
        .zip(&g_ref)
        .map(|(a, b)| max_rel_err(a, b))
        .fold(max_rel_err(&y, &y_ref), f64::max);
    (rel_err(&y, &y_ref), errors, worst_element)
}

fn grids() -> Vec<TokenGrid> {
    [(3, 5, 7), (2, 9, 13), (5, 7, 9)]
        .into_iter()
        .map(|(frames, height, width)| TokenGrid { frames, height, width })
        .collect()
}

const RATES: [Rate; 6] = [
    Rate::Hybrid(2),
    Rate::Hybrid(4),
    Rate::Hybrid(8),
    Rate::Hybrid(16),
    Rate::Hybrid(32),
    Rate::Linear,
];

fn sweep(kind: Kind, tolerance: f64) {
    let Some(device) = cuda() else { return };
    let _gpu = GPU.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(0);
    let mut worst_fwd = 0.0f64;
    let mut worst_grad = [0.0f64; GRADS.len()];
    let mut failures = Vec::new();
    let mut worst_element = 0.0f64;
    let mut cases = 0;
    for heads in [1, 12, 24] {
        for head_dim in [64, 128] {
            for grid in grids() {
                for rate in RATES {
                    for pattern in [AnchorPattern::Strided, AnchorPattern::Diagonal] {
                        let case = Case {
                            heads,
                            head_dim,
                            grid,
                            rate,
                            pattern,
                            kind,
                        };
                        let (fwd, grads, element) = check(&case, device);
                        worst_element = worst_element.max(element);
                        let label = format!("{kind:?} H{heads} d{head_dim} N{} {rate} {pattern:?}", grid.tokens());
                        // NaN fails too.
                        if fwd.is_nan() || fwd > tolerance {
                            failures.push(format!("{label}: forward rel err {fwd:e}"));
                        }
                        for (i, e) in grads.iter().enumerate() {
                            if e.is_nan() || *e > tolerance {
                                failures.push(format!("{label}: gradient of {} rel err {e:e}", GRADS[i]));
                            }
                            worst_grad[i] = worst_grad[i].max(*e);
                        }
                        worst_fwd = worst_fwd.max(fwd);
                        cases += 1;
                    }
                }
            }
        }
    }
    println!(
        "{kind:?}: {cases} cases, limit {tolerance:e}; worst forward rel err {worst_fwd:.2e}; worst gradient rel err:"
    );
    for (name, e) in GRADS.iter().zip(worst_grad) {
        println!("    {name:9} {e:.2e}");
    }
    assert!(
        failures.is_empty(),
        "{} failures, the first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(12)]
    );
}

#[test]
fn bf16_kernels_match_the_exact_reference() {
    sweep(Kind::BFloat16, 1e-2);
}

#[test]
fn fp32_kernels_match_the_exact_reference() {
    sweep(Kind::Float, 1e-5);
}

#[test]
fn the_switch_and_the_cpu_keep_the_eager_path() {
    surgery_worker::runtime::init();
    let err = kernels::availability(Device::Cpu, Kind::Float).unwrap_err();
    assert!(err.contains("CPU uses the eager path"), "{err}");
    let err = kernels::availability(Device::Cuda(0), Kind::Half).unwrap_err();
    assert!(
        err.contains("bf16 or fp32") || err.contains(kernels::SWITCH_ENV),
        "{err}"
    );
}

/// The block kernels one by one against the eager formulas they replace (bf16 and fp32),
/// then a whole bf16 model's forward with them (no gradients recorded) against the same
/// forward through LibTorch's ops (parameters requiring gradients keep the eager path).
#[test]
fn block_kernels_match_the_eager_ops() {
    let Some(device) = cuda() else { return };
    let _gpu = GPU.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(1);
    for (kind, tolerance) in [(Kind::BFloat16, 1e-2), (Kind::Float, 1e-5)] {
        let (b, n, dim, head_dim) = (2, 37, 96, 32);
        let x = (Tensor::randn([b, n, dim], (Kind::Float, device)) * 2.0 + 0.5).to_kind(kind);
        let scale = Tensor::randn([b, 1, dim], (Kind::Float, device)) * 0.1;
        let shift = Tensor::randn([b, 1, dim], (Kind::Float, device)) * 0.1;
        let (w, bias) = (
            Tensor::randn([dim], (Kind::Float, device)),
            Tensor::randn([dim], (Kind::Float, device)),
        );
        let fused =
            tch::no_grad(|| block_fused::layer_norm_modulate(&x, None, Some((&scale, &shift)), 1e-6)).expect("served");
        let eager = (x
            .to_kind(Kind::Float)
            .layer_norm([dim], None::<Tensor>, None::<Tensor>, 1e-6, true)
            * (&scale + 1.0)
            + &shift)
            .to_kind(kind);
        let e = rel_err(&fused, &eager);
        assert!(e <= tolerance, "{kind:?} layer norm + modulation: {e:e}");
        let fused =
            tch::no_grad(|| block_fused::layer_norm_modulate(&x, Some((&w, &bias)), None, 1e-6)).expect("served");
        let eager = x
            .to_kind(Kind::Float)
            .layer_norm([dim], Some(&w), Some(&bias), 1e-6, true)
            .to_kind(kind);
        assert!(rel_err(&fused, &eager) <= tolerance, "{kind:?} affine layer norm");

        let y = Tensor::randn([b, n, dim], (Kind::Float, device)).to_kind(kind);
        let gate = Tensor::randn([b, 1, dim], (Kind::Float, device));
        let fused = tch::no_grad(|| block_fused::gated_residual(&x, &y, &gate)).expect("served");
        let eager = (x.to_kind(Kind::Float) + y.to_kind(Kind::Float) * &gate).to_kind(kind);
        assert!(rel_err(&fused, &eager) <= tolerance, "{kind:?} gated residual");

        let weight = Tensor::randn([dim], (Kind::Float, device)).to_kind(kind);
        let cos = Tensor::rand([n, head_dim], (Kind::Float, device));
        let sin = Tensor::rand([n, head_dim], (Kind::Float, device));
        // Tables hold each angle twice (repeat-interleaved), as Rope builds them.
        let (cos, sin) = (
            cos.slice(1, 0, None, 2).repeat_interleave_self_int(2, 1, None::<i64>),
            sin.slice(1, 0, None, 2).repeat_interleave_self_int(2, 1, None::<i64>),
        );
        let rope = surgery_worker::model::Rope {
            cos: cos.shallow_clone(),
            sin: sin.shallow_clone(),
        };
        let fused =
            tch::no_grad(|| block_fused::rms_rope(&x, &weight, Some((&cos, &sin)), head_dim, 1e-6)).expect("served");
        let normed = x.rms_norm([dim], Some(&weight), 1e-6);
        let eager = rope.rotate(&normed.unflatten(2, [-1, head_dim])).flatten(2, 3);
        let e = rel_err(&fused, &eager);
        assert!(e <= tolerance, "{kind:?} rms norm + rope: {e:e}");
        println!("{kind:?} block kernels: layer norm + modulation, gated residual, rms + rope within {tolerance:e}");
    }

    // A whole model: fused (no gradients) against eager (parameters require them).
    let cfg = WanConfig {
        num_layers: 2,
        num_attention_heads: 4,
        attention_head_dim: 32,
        ffn_dim: 256,
        text_dim: 64,
        freq_dim: 32,
        ..WanConfig::wan21_t2v_1_3b()
    };
    let vs = nn::VarStore::new(device);
    let model = WanTransformer::new(&vs.root(), &cfg);
    weights::cast_like_diffusers(&vs, Kind::BFloat16);
    let latents = Tensor::randn([1, 16, 3, 10, 14], (Kind::Float, device)).to_kind(Kind::BFloat16);
    let t = Tensor::from_slice(&[500f32]).to_device(device);
    let text = Tensor::randn([1, 12, 64], (Kind::Float, device)).to_kind(Kind::BFloat16);
    let fused = tch::no_grad(|| model.forward(&latents, &t, &text));
    let eager = model.forward(&latents, &t, &text).detach();
    let e = rel_err(&fused, &eager);
    println!("bf16 model forward, fused block kernels vs eager: rel err {e:.2e}");
    assert!(e <= 2e-2, "model forward: {e:e}");
}
