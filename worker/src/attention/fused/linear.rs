//! The fused linear part and combination, forward and backward, on CUDA tensors: cuBLAS
//! GEMMs through LibTorch with the NVRTC kernels of `kernels/attention.cu` between them. All
//! shapes [B, H, M, X] contiguous; T is the input dtype (bf16 or fp32).
//!
//! Forward, per map (phi_q on every query, phi_k on the linear keys):
//! pre = x W1 (GEMM, T) -> hid = GELU(pre + b1) (kernel) -> psi = hid W2 (GEMM, T) ->
//! phi = chunk activations of (psi + b2) (kernel). Then v_aug = [v_L, 1, 0...] (kernel),
//! S_aug = phi_k^T v_aug = [S | z] (one GEMM, fp32 out: a sum over every linear token),
//! nd = phi_q S_aug = [num | den] (GEMM, fp32 out), and
//! y = (a O + num) / (a + den + eps) (kernel, with 1 / D per row kept for backward).
//!
//! Backward from dy: g = [dy / D, -(dy . y) / D] and dO = a dy / D (kernel, a warp per
//! row); d phi_q = g S_aug^T, dS_aug = phi_q^T g, d phi_k = v_aug dS_aug^T,
//! dv_aug = phi_k dS_aug (GEMMs, fp32 out); then per map the chunk and GELU derivatives
//! (kernels) between the GEMMs for dW2 = hid^T dpsi, dhid = dpsi W2^T, dW1 = x^T dpre,
//! dx = dpre W1^T, and the bias gradients as sums. Reductions over tokens (S_aug, dS_aug,
//! the weight gradients) come out of cuBLAS in fp32.

use crate::kernels::{Arg, Module, module_of as device_module, ptr, suffix, vector_width};
use tch::{Kind, Tensor};

/// The GEMM width of v_aug: d values, the ones column, zero padding to a multiple of 8.
pub fn augmented_width(d: i64) -> i64 {
    (d + 8) / 8 * 8
}

/// What the forward needs besides tensors (crosses the C++ boundary as f64s).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// The anchors' total weight (0 at the linear rate, which has no O).
    pub a: f64,
    pub eps: f64,
    pub has_anchors: bool,
    /// Ends of power chunks 1, 2, 3 along phi's features (later ends = D' when unused).
    pub ends: [i64; 3],
}

impl Config {
    pub fn encode(&self) -> Vec<f64> {
        vec![
            self.a,
            self.eps,
            f64::from(u8::from(self.has_anchors)),
            self.ends[0] as f64,
            self.ends[1] as f64,
            self.ends[2] as f64,
        ]
    }

    pub fn decode(cfg: &[f64]) -> Result<Config, String> {
        if cfg.len() != 6 {
            return Err(format!("expected 6 configuration values, got {}", cfg.len()));
        }
        Ok(Config {
            a: cfg[0],
            eps: cfg[1],
            has_anchors: cfg[2] != 0.0,
            ends: [cfg[3] as i64, cfg[4] as i64, cfg[5] as i64],
        })
    }

    /// Chunk ends from the chunk sizes (P <= 4).
    pub fn ends_of(sizes: &[i64]) -> [i64; 3] {
        let total: i64 = sizes.iter().sum();
        let mut ends = [total; 3];
        let mut acc = 0;
        for (i, s) in sizes.iter().take(3).enumerate() {
            acc += s;
            ends[i] = acc;
        }
        ends
    }
}

/// The feature map's parameters, as given (any dtype; cast for the GEMMs).
pub struct Phi<'a> {
    pub w1: &'a Tensor,
    pub b1: &'a Tensor,
    pub w2: &'a Tensor,
    pub b2: &'a Tensor,
}

/// One map's forward intermediates (all T, [B, H, M, X]).
pub struct PhiOut {
    pub pre: Tensor,
    pub hid: Tensor,
    pub psi: Tensor,
    pub phi: Tensor,
}

/// The elements of one (batch, head) slab of a [B, H, M, width] tensor, as the kernels'
/// 32-bit slab index.
fn slab_len(rows_per_head: i64, width: i64) -> Result<Arg, String> {
    i32::try_from(rows_per_head * width)
        .map(Arg::I32)
        .map_err(|_| format!("{rows_per_head} x {width} elements per head exceed the kernels' 32-bit slab index"))
}

fn dims4(t: &Tensor) -> Result<[i64; 4], String> {
    let s = t.size();
    s.as_slice()
        .try_into()
        .map_err(|_| format!("expected a [B, H, M, X] tensor, got {s:?}"))
}

/// a @ b with an fp32 result (cuBLAS accumulates in fp32 either way); a and b [batch, m, k]
/// x [batch, k, n] of one dtype.
fn mm_f32(a: &Tensor, b: &Tensor) -> Tensor {
    if a.kind() == Kind::Float {
        return a.bmm(b);
    }
    match a.f_bmm_dtype(b, Kind::Float) {
        Ok(out) => out,
        // Older LibTorch builds lack out_dtype for this pair: compute in fp32.
        Err(_) => a.to_kind(Kind::Float).bmm(&b.to_kind(Kind::Float)),
    }
}

/// A per-head weight [H, r, c] as a batch [B H, r, c] for bmm.
fn per_batch(w: &Tensor, b: i64) -> Tensor {
    let s = w.size();
    if b == 1 {
        return w.shallow_clone();
    }
    w.unsqueeze(0)
        .expand([b, s[0], s[1], s[2]], false)
        .reshape([b * s[0], s[1], s[2]])
}

fn head_dims(x: &Tensor) -> Result<(i64, i64, i64, i64), String> {
    let [b, h, m, d] = dims4(x)?;
    Ok((b, h, m, d))
}

/// phi(x) and its intermediates; x [B, H, M, d] of dtype T.
pub fn phi_forward(m: &Module, x: &Tensor, phi: &Phi, cfg: &Config) -> Result<PhiOut, String> {
    let t = x.kind();
    let sfx = suffix(t)?;
    let (b, h, rows_per_head, _) = head_dims(x)?;
    let pre = x.matmul(&phi.w1.to_kind(t)).contiguous(); // [B, H, M, hidden]
    let hidden = pre.size()[3];
    let hid = pre.empty_like();
    let b1 = phi.b1.to_kind(Kind::Float).contiguous();
    let vw = vector_width(&[hidden]);
    m.launch_slabs(
        &format!("bias_gelu_{sfx}_v{vw}"),
        b * h,
        rows_per_head * hidden / vw,
        &mut [
            ptr(&pre),
            ptr(&b1),
            ptr(&hid),
            slab_len(rows_per_head, hidden)?,
            Arg::I32(hidden as i32),
            Arg::I32(h as i32),
        ],
    )?;
    let psi = hid.matmul(&phi.w2.to_kind(t)).contiguous(); // [B, H, M, D']
    let features = psi.size()[3];
    let out = psi.empty_like();
    let b2 = phi.b2.to_kind(Kind::Float).contiguous();
    let vw = vector_width(&[features]);
    m.launch_slabs(
        &format!("bias_chunks_{sfx}_v{vw}"),
        b * h,
        rows_per_head * features / vw,
        &mut [
            ptr(&psi),
            ptr(&b2),
            ptr(&out),
            slab_len(rows_per_head, features)?,
            Arg::I32(features as i32),
            Arg::I32(h as i32),
            Arg::I32(cfg.ends[0] as i32),
            Arg::I32(cfg.ends[1] as i32),
            Arg::I32(cfg.ends[2] as i32),
        ],
    )?;
    Ok(PhiOut {
        pre,
        hid,
        psi,
        phi: out,
    })
}

/// Everything the backward needs.
pub struct Saved {
    pub q: Tensor,
    pub kl: Tensor,
    pub v_aug: Tensor,
    pub phi_q: PhiOut,
    pub phi_k: PhiOut,
    /// [S | z] in T, [B H, D', dp].
    pub s_aug: Tensor,
    pub y: Tensor,
    /// 1 / (a + den + eps) per row, fp32 [B H N].
    pub dinv: Tensor,
    /// w1, b1, w2, b2 of phi_q, then of phi_k (as given).
    pub params: [Tensor; 8],
}

/// y = (a O + phi_q(q) S) / (a + phi_q(q) z + eps); `o` is `None` at the linear rate.
pub fn forward(
    o: Option<&Tensor>,
    q: &Tensor,
    kl: &Tensor,
    vl: &Tensor,
    phi_q: &Phi,
    phi_k: &Phi,
    cfg: &Config,
) -> Result<(Tensor, Saved), String> {
    let m = device_module(q)?;
    let t = q.kind();
    let sfx = suffix(t)?;
    if kl.kind() != t || vl.kind() != t || o.is_some_and(|o| o.kind() != t) {
        return Err("q, k, v and the anchor output must share one dtype".into());
    }
    let (b, h, n, d) = head_dims(q)?;
    let l = kl.size()[2];
    let dp = augmented_width(d);

    let fk = phi_forward(&m, kl, phi_k, cfg)?;
    let features = fk.phi.size()[3];
    let vl = vl.contiguous();
    let v_aug = Tensor::empty([b, h, l, dp], (t, q.device()));
    let vw = vector_width(&[d]);
    m.launch(
        &format!("augment_{sfx}_v{vw}"),
        b * h * l * dp / vw,
        &mut [
            ptr(&vl),
            ptr(&v_aug),
            Arg::I64(b * h * l),
            Arg::I32(d as i32),
            Arg::I32(dp as i32),
        ],
    )?;
    let s_aug = mm_f32(
        &fk.phi.view([b * h, l, features]).transpose(1, 2),
        &v_aug.view([b * h, l, dp]),
    )
    .to_kind(t); // [B H, D', dp]
    let fq = phi_forward(&m, q, phi_q, cfg)?;
    let nd = mm_f32(&fq.phi.view([b * h, n, features]), &s_aug); // [B H, N, dp] fp32

    let rows = b * h * n;
    let y = Tensor::empty([b, h, n, d], (t, q.device()));
    let dinv = Tensor::empty([rows], (Kind::Float, q.device()));
    let o = o.map(Tensor::contiguous);
    let vw = vector_width(&[d]);
    m.launch(
        &format!("combine_{sfx}_v{vw}"),
        rows * d / vw,
        &mut [
            o.as_ref().map_or(Arg::Ptr(0), ptr),
            ptr(&nd),
            Arg::F32(cfg.a as f32),
            Arg::F32(cfg.eps as f32),
            ptr(&y),
            ptr(&dinv),
            Arg::I64(rows),
            Arg::I32(d as i32),
            Arg::I32(dp as i32),
        ],
    )?;
    let params = [
        phi_q.w1.shallow_clone(),
        phi_q.b1.shallow_clone(),
        phi_q.w2.shallow_clone(),
        phi_q.b2.shallow_clone(),
        phi_k.w1.shallow_clone(),
        phi_k.b1.shallow_clone(),
        phi_k.w2.shallow_clone(),
        phi_k.b2.shallow_clone(),
    ];
    let saved = Saved {
        q: q.shallow_clone(),
        kl: kl.shallow_clone(),
        v_aug,
        phi_q: fq,
        phi_k: fk,
        s_aug,
        y: y.shallow_clone(),
        dinv,
        params,
    };
    Ok((y, saved))
}

/// Gradients of one map: (dx, dw1, db1, dw2, db2), the weights' in their own dtypes.
fn phi_backward(
    m: &Module,
    x: &Tensor,
    out: &PhiOut,
    dphi: &Tensor,
    params: &[Tensor],
    cfg: &Config,
) -> Result<[Tensor; 5], String> {
    let (w1, b1, w2, b2) = (&params[0], &params[1], &params[2], &params[3]);
    let t = x.kind();
    let sfx = suffix(t)?;
    let (b, h, rows_per_head, d) = head_dims(x)?;
    let hidden = out.hid.size()[3];
    let features = out.phi.size()[3];

    let dpsi = out.psi.empty_like();
    let b2f = b2.to_kind(Kind::Float).contiguous();
    let vw = vector_width(&[features]);
    m.launch_slabs(
        &format!("chunks_backward_{sfx}_v{vw}"),
        b * h,
        rows_per_head * features / vw,
        &mut [
            ptr(dphi),
            ptr(&out.psi),
            ptr(&b2f),
            ptr(&dpsi),
            slab_len(rows_per_head, features)?,
            Arg::I32(features as i32),
            Arg::I32(h as i32),
            Arg::I32(cfg.ends[0] as i32),
            Arg::I32(cfg.ends[1] as i32),
            Arg::I32(cfg.ends[2] as i32),
        ],
    )?;
    let db2 = dpsi.sum_dim_intlist([0i64, 2].as_slice(), false, Kind::Float);
    let dpsi3 = dpsi.view([b * h, rows_per_head, features]);
    let dw2 = mm_f32(&out.hid.view([b * h, rows_per_head, hidden]).transpose(1, 2), &dpsi3)
        .view([b, h, hidden, features])
        .sum_dim_intlist([0i64].as_slice(), false, Kind::Float);
    let w2t = per_batch(&w2.to_kind(t).transpose(1, 2), b); // [B H, D', hidden]
    let dhid = mm_f32(&dpsi3, &w2t).contiguous(); // [B H, M, hidden] fp32

    let dpre = out.pre.empty_like();
    let b1f = b1.to_kind(Kind::Float).contiguous();
    let vw = vector_width(&[hidden]);
    m.launch_slabs(
        &format!("gelu_backward_{sfx}_v{vw}"),
        b * h,
        rows_per_head * hidden / vw,
        &mut [
            ptr(&dhid),
            ptr(&out.pre),
            ptr(&b1f),
            ptr(&dpre),
            slab_len(rows_per_head, hidden)?,
            Arg::I32(hidden as i32),
            Arg::I32(h as i32),
        ],
    )?;
    let db1 = dpre.sum_dim_intlist([0i64, 2].as_slice(), false, Kind::Float);
    let dpre3 = dpre.view([b * h, rows_per_head, hidden]);
    let x3 = x.reshape([b * h, rows_per_head, d]);
    let dw1 = mm_f32(&x3.transpose(1, 2), &dpre3)
        .view([b, h, d, hidden])
        .sum_dim_intlist([0i64].as_slice(), false, Kind::Float);
    let dx = dpre.matmul(&w1.to_kind(t).transpose(1, 2)); // [B, H, M, d]
    Ok([
        dx,
        dw1.to_kind(w1.kind()),
        db1.to_kind(b1.kind()),
        dw2.to_kind(w2.kind()),
        db2.to_kind(b2.kind()),
    ])
}

/// Whether the backward for inputs of `kind` recomputes the forward in fp32 from the
/// inputs instead of using the forward's own intermediates. For bf16 it does: the
/// gradients to phi's biases and second layer are sums over every token of terms that
/// nearly cancel (scaling an exp chunk of phi_k moves num and den together), so bf16
/// intermediates (the rounded weights, pre-activations, S and y) left them 1-4% off the
/// exact gradient on the GPU test; in fp32 they are exact to fp32 rounding. It also keeps
/// only the inputs alive between forward and backward, not eight [B, H, M, X]
/// intermediates.
pub fn recomputes_in_fp32(kind: Kind) -> bool {
    kind == Kind::BFloat16 && std::env::var("SURGERY_FUSED_BF16_BACKWARD").as_deref() != Ok("saved")
}

/// The gradients of [`backward`] for bf16 inputs, from the forward's inputs (`inputs` in
/// [`backward`]'s order: O or an empty tensor, q, k_L, v_L, then the eight parameters):
/// the forward again in fp32, then the fp32 backward; gradients to O, q, k and v come back
/// in the inputs' dtype, the parameters' in their own.
pub fn backward_recomputed(inputs: &[Tensor], dy: &Tensor, cfg: &Config) -> Result<[Option<Tensor>; 12], String> {
    let [o, q, kl, vl, params @ ..] = inputs else {
        return Err(format!("expected 12 saved inputs, got {}", inputs.len()));
    };
    let t = q.kind();
    let up = |x: &Tensor| x.to_kind(Kind::Float);
    let o = cfg.has_anchors.then(|| up(o));
    let (pq, pk) = (phi_of(&params[..4]), phi_of(&params[4..]));
    let (_, saved) = forward(o.as_ref(), &up(q), &up(kl), &up(vl), &pq, &pk, cfg)?;
    let mut grads = backward(&saved, &up(dy), cfg)?;
    for g in grads.iter_mut().take(4).flatten() {
        *g = g.to_kind(t);
    }
    Ok(grads)
}

/// One map's parameters from four saved tensors (w1, b1, w2, b2).
pub fn phi_of(p: &[Tensor]) -> Phi<'_> {
    Phi {
        w1: &p[0],
        b1: &p[1],
        w2: &p[2],
        b2: &p[3],
    }
}

/// Gradients of (O, q, k_L, v_L, phi_q's w1, b1, w2, b2, phi_k's ...) from dy; dO is
/// `None` at the linear rate.
pub fn backward(saved: &Saved, dy: &Tensor, cfg: &Config) -> Result<[Option<Tensor>; 12], String> {
    let m = device_module(&saved.q)?;
    let t = saved.q.kind();
    let sfx = suffix(t)?;
    let (b, h, n, d) = head_dims(&saved.q)?;
    let l = saved.kl.size()[2];
    let dp = augmented_width(d);
    let features = saved.phi_q.phi.size()[3];
    let rows = b * h * n;

    let dy = dy.to_kind(t).contiguous();
    let g = Tensor::empty([b, h, n, dp], (t, dy.device()));
    let d_o = cfg.has_anchors.then(|| Tensor::empty([b, h, n, d], (t, dy.device())));
    let vw = vector_width(&[d]);
    m.launch(
        &format!("combine_backward_{sfx}_v{vw}"),
        rows * 32,
        &mut [
            ptr(&dy),
            ptr(&saved.y),
            ptr(&saved.dinv),
            Arg::F32(cfg.a as f32),
            d_o.as_ref().map_or(Arg::Ptr(0), ptr),
            ptr(&g),
            Arg::I64(rows),
            Arg::I32(d as i32),
            Arg::I32(dp as i32),
        ],
    )?;
    let g3 = g.view([b * h, n, dp]);
    let fq3 = saved.phi_q.phi.view([b * h, n, features]);
    let fk3 = saved.phi_k.phi.view([b * h, l, features]);
    let dfq = mm_f32(&g3, &saved.s_aug.transpose(1, 2)).contiguous(); // [B H, N, D']
    let ds = mm_f32(&fq3.transpose(1, 2), &g3).to_kind(t); // [B H, D', dp]
    let va3 = saved.v_aug.view([b * h, l, dp]);
    let dfk = mm_f32(&va3, &ds.transpose(1, 2)).contiguous(); // [B H, L, D']
    let dva = mm_f32(&fk3, &ds); // [B H, L, dp]
    let dvl = dva.narrow(2, 0, d).to_kind(t).reshape([b, h, l, d]);

    let [dq, dw1q, db1q, dw2q, db2q] = phi_backward(&m, &saved.q, &saved.phi_q, &dfq, &saved.params[..4], cfg)?;
    let [dkl, dw1k, db1k, dw2k, db2k] = phi_backward(&m, &saved.kl, &saved.phi_k, &dfk, &saved.params[4..], cfg)?;
    Ok([
        d_o,
        Some(dq),
        Some(dkl),
        Some(dvl),
        Some(dw1q),
        Some(db1q),
        Some(dw2q),
        Some(db2q),
        Some(dw1k),
        Some(db1k),
        Some(dw2k),
        Some(db2k),
    ])
}
