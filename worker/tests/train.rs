//! Training primitives against PyTorch's golden numbers (tests/golden_sched/{adamw,clip}.safetensors,
//! written by scripts/golden/make_scheduler_golden.py), by hand, and across a checkpoint resume.

use std::collections::BTreeMap;

use surgery_worker::sampler::SeededRng;
use surgery_worker::train::{
    AdamW, AdamWConfig, MasterWeights, SigmaSampler, TrainError, clip_grad_norm, fine_tune_loss, flow_matching_loss,
    grad_norm, noisy, read_state, shift_sigma, shift_sigmas, timestep_of, value_distillation_loss, velocity_target,
    write_state,
};
use tch::{Device, Kind, Tensor};

fn golden(name: &str) -> BTreeMap<String, Tensor> {
    let path = format!("{}/tests/golden_sched/{name}.safetensors", env!("CARGO_MANIFEST_DIR"));
    Tensor::read_safetensors(path)
        .expect("golden file")
        .into_iter()
        .collect()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_kind(Kind::Double).reshape([]).double_value(&[])
}

/// Max |a - b| / max(|b|, 1e-3) element-wise, and whether a == b bit for bit.
fn rel_diff(a: &Tensor, b: &Tensor) -> (f64, bool) {
    let (a64, b64) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    let rel = ((&a64 - &b64).abs() / b64.abs().clamp_min(1e-3))
        .max()
        .double_value(&[]);
    (rel, a.equal(b))
}

#[test]
fn adamw_matches_torch() {
    let g = golden("adamw");
    let hyper: Vec<f64> = Vec::try_from(&g["hyper"]).unwrap();
    let config = AdamWConfig {
        lr: hyper[0],
        beta1: hyper[1],
        beta2: hyper[2],
        eps: hyper[3],
        weight_decay: hyper[4],
    };
    let names = ["a", "b", "c"];
    let params: Vec<(String, Tensor)> = names
        .iter()
        .map(|n| (n.to_string(), g[&format!("init.{n}")].copy().set_requires_grad(true)))
        .collect();
    let mut opt = AdamW::new(
        params.iter().map(|(n, p)| (n.clone(), p.shallow_clone())).collect(),
        config,
    )
    .unwrap();
    for step in 0..5 {
        let grads: Vec<Option<Tensor>> = names
            .iter()
            .map(|n| g.get(&format!("grad.{step}.{n}")).map(|t| t.copy()))
            .collect();
        opt.step_with_grads(&grads).unwrap();
    }
    let mut worst: f64 = 0.0;
    let mut all_exact = true;
    for (name, param) in &params {
        let state: BTreeMap<String, Tensor> = opt.state_dict().into_iter().collect();
        for (what, got, want) in [
            ("param", param.detach(), &g[&format!("final.{name}")]),
            (
                "exp_avg",
                state[&format!("exp_avg.{name}")].shallow_clone(),
                &g[&format!("exp_avg.{name}")],
            ),
            (
                "exp_avg_sq",
                state[&format!("exp_avg_sq.{name}")].shallow_clone(),
                &g[&format!("exp_avg_sq.{name}")],
            ),
        ] {
            let (rel, exact) = rel_diff(&got, want);
            println!("adamw {what}.{name}: max relative diff {rel:e} (bit-exact {exact})");
            worst = worst.max(rel);
            all_exact &= exact;
        }
        assert_eq!(
            opt.step_count(name).unwrap() as f64,
            scalar(&g[&format!("step.{name}")]),
            "step.{name}"
        );
    }
    println!("adamw vs torch.optim.AdamW: worst relative diff {worst:e}, all bit-exact {all_exact}");
    assert!(worst <= 1e-6, "AdamW differs from PyTorch by {worst}");
    assert_eq!(
        opt.step_count("c"),
        Some(4),
        "a parameter without a gradient does not step"
    );
}

#[test]
fn clip_matches_torch() {
    let g = golden("clip");
    for case in ["clips", "keeps"] {
        let grads: Vec<Tensor> = (0..3).map(|i| g[&format!("{case}.grad_in.{i}")].copy()).collect();
        let max_norm = scalar(&g[&format!("{case}.max_norm")]);
        let total = clip_grad_norm(&grads, max_norm);
        let want_total = scalar(&g[&format!("{case}.total_norm")]);
        let norm_diff = (total - want_total).abs() / want_total;
        let mut worst: f64 = 0.0;
        let mut exact = total as f32 == want_total as f32;
        for (i, grad) in grads.iter().enumerate() {
            let (rel, e) = rel_diff(grad, &g[&format!("{case}.grad_out.{i}")]);
            worst = worst.max(rel);
            exact &= e;
        }
        println!(
            "clip {case}: total norm {total} vs torch {want_total} (relative {norm_diff:e}), grads max relative \
             diff {worst:e}, bit-exact {exact}"
        );
        assert!(norm_diff <= 1e-6 && worst <= 1e-6, "{case}");
    }
}

#[test]
fn clip_by_hand_and_non_finite() {
    // Norms 5 and 12 -> total 13.
    let a = Tensor::from_slice(&[3.0f32, 4.0]);
    let b = Tensor::from_slice(&[12.0f32]);
    assert!((grad_norm([&a, &b]) - 13.0).abs() < 1e-6);
    let total = clip_grad_norm([&a, &b], 1.0);
    assert!((total - 13.0).abs() < 1e-6);
    let coef = 1.0 / (13.0 + 1e-6);
    let got: Vec<f32> = Vec::try_from(Tensor::cat(&[&a, &b], 0)).unwrap();
    assert_eq!(got.len(), 3);
    for (x, want) in got.iter().zip([3.0 * coef, 4.0 * coef, 12.0 * coef]) {
        assert!((f64::from(*x) - want).abs() < 1e-6);
    }
    // Below the limit nothing changes.
    let c = Tensor::from_slice(&[0.1f32, 0.2]);
    let before = c.copy();
    clip_grad_norm([&c], 10.0);
    assert!(c.equal(&before));
    // bf16 gradients: norm in float32, scaled in place in bf16.
    let h = Tensor::from_slice(&[3.0f32, 4.0]).to_kind(Kind::BFloat16);
    assert!((clip_grad_norm([&h], 2.5) - 5.0).abs() < 1e-6);
    assert_eq!(h.kind(), Kind::BFloat16);
    assert!((scalar(&h.get(0)) - 1.5).abs() < 0.01);
    // NaN / inf: returned, nothing scaled.
    let bad = Tensor::from_slice(&[1.0f32, f32::NAN]);
    let fine = Tensor::from_slice(&[100.0f32]);
    assert!(clip_grad_norm([&bad, &fine], 1.0).is_nan());
    assert_eq!(scalar(&fine), 100.0);
    let inf = Tensor::from_slice(&[f32::INFINITY]);
    assert!(clip_grad_norm([&inf], 1.0).is_infinite());
    assert_eq!(clip_grad_norm(std::iter::empty::<&Tensor>(), 1.0), 0.0);
}

/// A small deterministic training problem: fit `w` so that `x w ~ y`, data from a seeded stream.
struct Problem {
    rng: SeededRng,
}

impl Problem {
    fn loss(&mut self, params: &[Tensor]) -> Tensor {
        let x = self.rng.normal_tensor(&[8, 6], Device::Cpu);
        let y = self.rng.normal_tensor(&[8, 3], Device::Cpu);
        let kind = params[0].kind();
        let pred = x.to_kind(kind).matmul(&params[0]) + &params[1];
        flow_matching_loss(&pred, &y)
    }
}

/// Runs `steps` steps of clip + AdamW (through MasterWeights) from the current state.
fn train(params: &[Tensor], master: &MasterWeights, opt: &mut AdamW, problem: &mut Problem, steps: usize) {
    for _ in 0..steps {
        master.zero_grad();
        problem.loss(params).backward();
        master.step(opt, Some(0.5)).unwrap();
    }
}

fn fresh_params(kind: Kind) -> Vec<Tensor> {
    let mut rng = SeededRng::new(99);
    vec![
        rng.normal_tensor(&[6, 3], Device::Cpu)
            .to_kind(kind)
            .set_requires_grad(true),
        rng.normal_tensor(&[3], Device::Cpu)
            .to_kind(kind)
            .set_requires_grad(true),
    ]
}

fn named(params: &[Tensor]) -> Vec<(String, Tensor)> {
    ["w", "bias"]
        .iter()
        .zip(params)
        .map(|(n, p)| (n.to_string(), p.shallow_clone()))
        .collect()
}

/// `state` holds exactly `expected` (names, in order) and `other` holds the same entries,
/// bit for bit: a missing or extra entry on either side fails rather than being skipped
/// by a `zip`.
fn assert_same_state(what: &str, expected: &[String], state: &[(String, Tensor)], other: &[(String, Tensor)]) {
    let names = |s: &[(String, Tensor)]| s.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(state), expected, "{what}: the entries of the first state");
    assert_eq!(names(other), expected, "{what}: the entries of the second state");
    for ((name, a), (_, b)) in state.iter().zip(other) {
        assert_eq!(a.size(), b.size(), "{what}: {name} shapes differ");
        assert!(a.equal(b), "{what}: {name} differs");
    }
}

/// The names of [`AdamW::state_dict`] for parameters `params`, in its order.
fn adamw_state_names(params: &[&str]) -> Vec<String> {
    params
        .iter()
        .flat_map(|p| [format!("exp_avg.{p}"), format!("exp_avg_sq.{p}"), format!("step.{p}")])
        .collect()
}

fn resume_is_bit_identical(kind: Kind) {
    let config = AdamWConfig {
        lr: 1e-2,
        ..AdamWConfig::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.safetensors");

    // Run A: 5 steps, checkpoint, 5 more.
    let params = fresh_params(kind);
    let master = MasterWeights::new(named(&params)).unwrap();
    assert_eq!(master.num_masters(), if kind == Kind::Float { 0 } else { 2 });
    let mut opt = AdamW::new(master.optimizer_params(), config).unwrap();
    let mut problem = Problem { rng: SeededRng::new(5) };
    train(&params, &master, &mut opt, &mut problem, 5);
    let mut checkpoint = named(&params);
    checkpoint.extend(master.state_dict());
    checkpoint.extend(opt.state_dict());
    checkpoint.push(("data_rng".into(), Tensor::from(problem.rng.state() as i64)));
    write_state(&path, &checkpoint).unwrap();
    train(&params, &master, &mut opt, &mut problem, 5);
    let run_a: Vec<Tensor> = params.iter().map(|p| p.detach().copy()).collect();
    let state_a = opt.state_dict();

    // Run B: a fresh process state restored from the checkpoint, 5 steps.
    let saved = read_state(&path).unwrap();
    let params_b = fresh_params(kind);
    tch::no_grad(|| {
        for (name, p) in named(&params_b) {
            let mut p = p;
            p.copy_(&saved[&name]);
        }
    });
    let mut master_b = MasterWeights::new(named(&params_b)).unwrap();
    master_b.load_state_dict(&saved).unwrap();
    let mut opt_b = AdamW::new(master_b.optimizer_params(), config).unwrap();
    opt_b.load_state_dict(&saved).unwrap();
    assert_eq!(opt_b.steps(), 5);
    let mut problem_b = Problem {
        rng: SeededRng::from_state(saved["data_rng"].int64_value(&[]) as u64),
    };
    train(&params_b, &master_b, &mut opt_b, &mut problem_b, 5);

    assert_eq!((run_a.len(), params_b.len()), (2, 2));
    for (a, b) in run_a.iter().zip(&params_b) {
        assert_eq!(a.kind(), kind);
        assert!(a.equal(&b.detach()), "{kind:?}: resumed parameters differ");
    }
    assert_same_state(
        &format!("{kind:?} optimizer"),
        &adamw_state_names(&["w", "bias"]),
        &state_a,
        &opt_b.state_dict(),
    );
    // fp32 parameters are stepped directly; bf16 ones through a float32 master each.
    let masters: Vec<String> = if kind == Kind::Float {
        vec![]
    } else {
        vec!["master.w".into(), "master.bias".into()]
    };
    assert_same_state(
        &format!("{kind:?} master weights"),
        &masters,
        &master.state_dict(),
        &master_b.state_dict(),
    );
    // And the run did train: parameters moved.
    assert!(!run_a[0].equal(&fresh_params(kind)[0].detach()));
}

#[test]
fn resume_is_bit_identical_fp32() {
    resume_is_bit_identical(Kind::Float);
}

#[test]
fn resume_is_bit_identical_bf16_with_master_weights() {
    resume_is_bit_identical(Kind::BFloat16);
}

#[test]
fn adamw_save_and_load_through_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("opt.safetensors");
    let p = Tensor::ones([2, 2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let mut opt = AdamW::new(vec![("p".into(), p.shallow_clone())], AdamWConfig::default()).unwrap();
    opt.step_with_grads(&[Some(Tensor::full([2, 2], 0.5, (Kind::Float, Device::Cpu)))])
        .unwrap();
    opt.save(&path).unwrap();
    let q = Tensor::ones([2, 2], (Kind::Float, Device::Cpu));
    let mut opt2 = AdamW::new(vec![("p".into(), q)], AdamWConfig::default()).unwrap();
    opt2.load(&path).unwrap();
    assert_eq!(opt2.step_count("p"), Some(1));
    assert_same_state(
        "optimizer through a file",
        &adamw_state_names(&["p"]),
        &opt.state_dict(),
        &opt2.state_dict(),
    );
}

#[test]
fn loading_a_mismatched_state_names_every_problem() {
    let p = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
    let r = Tensor::zeros([4], (Kind::Float, Device::Cpu));
    let mut opt = AdamW::new(vec![("p".into(), p), ("r".into(), r)], AdamWConfig::default()).unwrap();
    let mut state: BTreeMap<String, Tensor> = opt.state_dict().into_iter().collect();
    state.remove("exp_avg_sq.r");
    state.insert("exp_avg.p".into(), Tensor::zeros([3, 2], (Kind::Float, Device::Cpu)));
    state.insert("exp_avg.ghost".into(), Tensor::zeros([1], (Kind::Float, Device::Cpu)));
    state.insert("w".into(), Tensor::zeros([1], (Kind::Float, Device::Cpu))); // another prefix: ignored
    let err = opt.load_state_dict(&state).unwrap_err();
    let text = err.to_string();
    println!("{text}");
    assert!(matches!(err, TrainError::StateMismatch { .. }) && err.is_fatal());
    assert!(text.contains("`exp_avg_sq.r` is missing"), "{text}");
    assert!(
        text.contains("`exp_avg.p` has shape [3, 2], parameter [2, 3]"),
        "{text}"
    );
    assert!(text.contains("`exp_avg.ghost`"), "{text}");
    assert!(!text.contains("`w`"), "{text}");
    assert_eq!(opt.step_count("p"), Some(0), "a failed load changes nothing");

    let bf = Tensor::zeros([2], (Kind::BFloat16, Device::Cpu));
    let mut master = MasterWeights::new(vec![("bf".into(), bf)]).unwrap();
    let err = master.load_state_dict(&BTreeMap::new()).unwrap_err();
    assert!(err.to_string().contains("`master.bf` is missing"), "{err}");
}

#[test]
fn optimizer_refuses_bad_parameters_and_gradients() {
    let bf = Tensor::zeros([2], (Kind::BFloat16, Device::Cpu));
    assert!(matches!(
        AdamW::new(vec![("bf".into(), bf)], AdamWConfig::default()),
        Err(TrainError::Parameter { .. })
    ));
    let p = Tensor::zeros([2], (Kind::Float, Device::Cpu));
    let mut opt = AdamW::new(vec![("p".into(), p)], AdamWConfig::default()).unwrap();
    let wrong_shape = Tensor::zeros([3], (Kind::Float, Device::Cpu));
    assert!(matches!(
        opt.step_with_grads(&[Some(wrong_shape)]),
        Err(TrainError::Gradient { .. })
    ));
    let wrong_kind = Tensor::zeros([2], (Kind::BFloat16, Device::Cpu));
    assert!(opt.step_with_grads(&[Some(wrong_kind)]).is_err());
    assert!(opt.step_with_grads(&[]).is_err());
    assert_eq!(opt.step_count("p"), Some(0));
}

#[test]
fn master_weights_step_bf16_params_through_fp32() {
    let p = Tensor::from_slice(&[1.0f32, -2.0])
        .to_kind(Kind::BFloat16)
        .set_requires_grad(true);
    let f = Tensor::from_slice(&[0.5f32]).set_requires_grad(true);
    let master = MasterWeights::new(vec![("p".into(), p.shallow_clone()), ("f".into(), f.shallow_clone())]).unwrap();
    assert_eq!(master.num_masters(), 1);
    let kinds: Vec<Kind> = master.optimizer_params().iter().map(|(_, t)| t.kind()).collect();
    assert_eq!(kinds, vec![Kind::Float, Kind::Float]);
    let mut opt = AdamW::new(
        master.optimizer_params(),
        AdamWConfig {
            lr: 1e-3,
            ..AdamWConfig::default()
        },
    )
    .unwrap();
    // Many tiny steps: the master accumulates what bf16 alone could not hold.
    for _ in 0..3 {
        master.zero_grad();
        let loss = (p.to_kind(Kind::Float).sum(Kind::Float)) + f.sum(Kind::Float);
        loss.backward();
        let norm = master.step(&mut opt, None).unwrap();
        assert!((norm - 3f64.sqrt()).abs() < 1e-5);
    }
    let masters: BTreeMap<String, Tensor> = master.state_dict().into_iter().collect();
    let m = &masters["master.p"];
    assert_eq!(m.kind(), Kind::Float);
    assert!(
        p.detach().equal(&m.to_kind(Kind::BFloat16)),
        "the bf16 parameter is the rounded master"
    );
    assert!(
        (scalar(&m.get(0)) - (1.0 - 3e-3 - 3.0 * 1e-3 * 1e-2)).abs() < 2e-5,
        "{}",
        scalar(&m.get(0))
    );

    // A NaN gradient is refused, nothing moves.
    master.zero_grad();
    let before = m.copy();
    (p.to_kind(Kind::Float).sum(Kind::Float) * f64::NAN).backward();
    let err = master.step(&mut opt, Some(1.0)).unwrap_err();
    assert!(matches!(err, TrainError::NonFiniteGradNorm(n) if n.is_nan()) && err.is_fatal());
    assert!(m.equal(&before));
}

#[test]
fn losses_by_hand() {
    let y = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2]);
    let y_hat = Tensor::from_slice(&[1.5f32, 2.0, 2.0, 4.0]).view([2, 2]);
    assert!((scalar(&value_distillation_loss(&y, &y_hat)) - 1.5 / 4.0).abs() < 1e-7);
    // bf16 inputs: a float32 loss.
    let l = value_distillation_loss(&y.to_kind(Kind::BFloat16), &y_hat.to_kind(Kind::BFloat16));
    assert_eq!(l.kind(), Kind::Float);
    assert!((scalar(&flow_matching_loss(&y, &y_hat)) - (0.25 + 1.0) / 4.0).abs() < 1e-7);
    assert_eq!(
        flow_matching_loss(&y.to_kind(Kind::BFloat16), &y_hat).kind(),
        Kind::Float
    );

    // noisy / target / timestep with per-sample sigma.
    let x0 = Tensor::from_slice(&[1.0f32, 1.0, 2.0, 2.0]).view([2, 1, 2]);
    let noise = Tensor::from_slice(&[3.0f32, 3.0, -2.0, -2.0]).view([2, 1, 2]);
    let sigma = Tensor::from_slice(&[0.25f32, 0.5]);
    let xs: Vec<f32> = Vec::try_from(noisy(&x0, &noise, &sigma).flatten(0, -1)).unwrap();
    assert_eq!(xs, vec![1.5, 1.5, 0.0, 0.0]);
    assert_eq!(
        noisy(&x0.to_kind(Kind::BFloat16), &noise, &sigma).kind(),
        Kind::BFloat16
    );
    let v: Vec<f32> = Vec::try_from(velocity_target(&x0, &noise).flatten(0, -1)).unwrap();
    assert_eq!(v, vec![2.0, 2.0, -4.0, -4.0]);
    let t: Vec<f32> = Vec::try_from(timestep_of(&sigma)).unwrap();
    assert_eq!(t, vec![250.0, 500.0]);

    // shift: identity at 1, fixed ends, shift 5 at 0.5 -> 5/6.
    assert_eq!(shift_sigma(0.3, 1.0), 0.3);
    assert_eq!(shift_sigma(1.0, 5.0), 1.0);
    assert_eq!(shift_sigma(0.0, 5.0), 0.0);
    assert!((shift_sigma(0.5, 5.0) - 5.0 / 6.0).abs() < 1e-12);
    let shifted: Vec<f32> = Vec::try_from(shift_sigmas(&Tensor::from_slice(&[0.5f32]), 5.0)).unwrap();
    assert!((f64::from(shifted[0]) - 5.0 / 6.0).abs() < 1e-6);

    // Teacher term: total = flow + w * mse(pred, teacher), teacher detached.
    let pred = y_hat.copy().set_requires_grad(true);
    let teacher = y.copy().set_requires_grad(true);
    let terms = fine_tune_loss(&pred, &y, Some(&teacher), 0.5);
    let flow = scalar(&terms.flow);
    let teach = scalar(terms.teacher.as_ref().unwrap());
    assert!((scalar(&terms.total) - (flow + 0.5 * teach)).abs() < 1e-7);
    terms.total.backward();
    assert!(pred.grad().defined() && !teacher.grad().defined());
    let alone = fine_tune_loss(&y_hat, &y, None, 0.5);
    assert!(alone.teacher.is_none() && scalar(&alone.total) == scalar(&alone.flow));
    assert!(fine_tune_loss(&y_hat, &y, Some(&y), 0.0).teacher.is_none());
}

#[test]
fn sigma_sampler_is_seeded_shifted_and_resumable() {
    let mut a = SigmaSampler::new(17, 5.0);
    let first: Vec<f32> = Vec::try_from(a.sample(4)).unwrap();
    let state = a.state();
    let second: Vec<f32> = Vec::try_from(a.sample(4)).unwrap();
    assert_eq!(
        Vec::<f32>::try_from(SigmaSampler::new(17, 5.0).sample(4)).unwrap(),
        first
    );
    assert_eq!(
        Vec::<f32>::try_from(SigmaSampler::from_state(state, 5.0).sample(4)).unwrap(),
        second
    );
    assert_ne!(first, second);
    assert_ne!(
        Vec::<f32>::try_from(SigmaSampler::new(18, 5.0).sample(4)).unwrap(),
        first
    );

    // Shift 1 is uniform (mean 1/2); shift 5 pushes mass to high noise:
    // E[5u / (1 + 4u)] = (5/4) (1 - ln(5) / 4).
    let many = |shift: f64| -> f64 {
        let s = SigmaSampler::new(3, shift).sample(100_000);
        let min = s.min().double_value(&[]);
        let max = s.max().double_value(&[]);
        assert!(min > 0.0 && max <= 1.0);
        s.mean(Kind::Double).double_value(&[])
    };
    assert!((many(1.0) - 0.5).abs() < 0.005);
    let expected = 1.25 * (1.0 - 5f64.ln() / 4.0);
    assert!((many(5.0) - expected).abs() < 0.005, "{} vs {expected}", many(5.0));
}
