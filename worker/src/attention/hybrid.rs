//! Hybrid softmax + linear attention (METHOD.md section 1), per head, all heads at once.
//!
//! Keys/values split into anchors T_S ([`anchors`](super::anchors): strided `i mod R == 0`
//! or diagonal `(f + h + w) mod R == 0`) and linear tokens T_L. With s_ij = q_i.k_j/sqrt(d)
//! and a shared normaliser c_i:
//!
//! ```text
//! y_i = [ sum_{j in T_S} exp(s_ij - c_i) v_j + phi_q(q_i).S ] / [ sum_{j in T_S} exp(s_ij - c_i) + phi_q(q_i).z + eps ]
//!     = ( a O_i + phi_q(q_i).S ) / ( a + phi_q(q_i).z + eps )
//! S = sum_{j in T_L} phi_k(k_j)^T v_j  [D', d]        z = sum_{j in T_L} phi_k(k_j)  [D']
//! ```
//!
//! where O_i is softmax attention over the anchors (one fused SDPA call, default
//! 1/sqrt(d) scale) and a is the anchors' total weight under c_i ([`Normaliser`]):
//! METHOD's revised **decision** c_i = LSE_{T_S}(s_i) - log |T_S| (the anchors'
//! *mean* exponential) gives a = |T_S|, so the kernel phi_q . phi_k imitates
//! exp(s_ij) / mean_{T_S} exp(s_ik), which does not depend on the token count: a phi
//! distilled at one resolution or frame count transfers to another. The first version,
//! c_i = LSE (a = 1), made the ideal kernel shrink like R / N; it is kept as
//! [`Normaliser::AnchorSum`] for comparisons only (students record their normaliser and
//! loading refuses the other). Rate 1 is exactly the teacher's [`softmax_attention`];
//! `linear` has no anchors and no c_i: y_i = phi_q(q_i).S / (phi_q(q_i).z + eps). eps
//! sits in the denominator only when there is a linear part.
//!
//! Fast path ([`HybridAttention::forward`]), free of device-to-host synchronisation:
//! strided anchors are the view `x.slice(2, 0, N, R)` handed to SDPA (no copy), diagonal
//! anchors and the linear tokens come from `index_select` on int64 indices computed
//! once per (grid, device) and cached; phi is one batched matmul per layer over the
//! heads; phi's output, S, z, the numerator and the denominator are fp32 whatever the
//! input dtype (fp64 stays fp64), and the result is cast back to q's dtype. Autograd
//! works through every piece (SDPA has a backward), so distillation (gradients to phi
//! only) and fine-tuning (gradients to q, k, v and phi) both use this path.
//!
//! [`HybridAttention::reference`] computes the first formula literally, with explicit
//! N x N scores, masks, c_i from a masked logsumexp and the per-pair kernel
//! phi_q(q_i).phi_k(k_j), in fp64: slow, for tests and benchmark checks only.
//!
//! Parameters: `<path>.phi_q.{w1,b1,w2,b2}` and `<path>.phi_k.{w1,b1,w2,b2}` (see
//! [`FeatureMap`]); the student creates them under `blocks.{i}.attn1`. phi_k starts as a
//! copy of phi_q (see [`feature_map`](super::feature_map) for the initialisation).

use super::anchors::{IndexCache, TokenIndex, anchor_mask};
use super::feature_map::{FeatureMap, FeatureMapConfig, PsiPrecision};
use super::{TokenGrid, softmax_attention};
use tch::{Device, Kind, Tensor, nn};

pub use surgery_core::rate::Rate;
pub use surgery_core::spec::AnchorPattern;

/// The shared normaliser c_i of the anchor scores (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normaliser {
    /// c_i = LSE over the anchors - log |T_S|: the anchors weigh |T_S| in total and the
    /// ideal kernel is independent of the token count (METHOD's revised decision).
    #[default]
    AnchorMean,
    /// c_i = LSE over the anchors (the first version): the anchors weigh 1 in total and
    /// the ideal kernel scales like R / N. For comparisons only.
    AnchorSum,
}

impl Normaliser {
    /// The anchors' total weight a = sum_{j in T_S} exp(s_ij - c_i) for |T_S| anchors.
    pub fn anchor_weight(self, num_anchors: i64) -> f64 {
        match self {
            Normaliser::AnchorMean => num_anchors as f64,
            Normaliser::AnchorSum => 1.0,
        }
    }

    /// What phi_q . phi_k should start at: the ideal kernel for diffuse attention,
    /// exp(s_ij - c_i) with every score equal - 1 under the mean normaliser; 1 / |T_S| =
    /// R / N under the sum, taken at the project's resolutions (about 1e-4, N = 12,600
    /// to 32,760). See [`feature_map`](super::feature_map) for how the init meets it.
    pub fn initial_kernel(self) -> f64 {
        match self {
            Normaliser::AnchorMean => 1.0,
            Normaliser::AnchorSum => 1e-4,
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            Normaliser::AnchorMean => "anchor_mean",
            Normaliser::AnchorSum => "anchor_sum",
        }
    }
}

/// Everything that defines one block's hybrid attention besides its weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HybridConfig {
    /// Shape of phi_q and phi_k.
    pub feature_map: FeatureMapConfig,
    /// Added to the shared normaliser's denominator (the spec's `feature_map.eps`).
    pub eps: f64,
    pub rate: Rate,
    pub pattern: AnchorPattern,
    pub normaliser: Normaliser,
}

impl HybridConfig {
    /// From the job spec's `surgery.feature_map` section, the model's head shape, a rate
    /// and the anchor pattern.
    pub fn from_spec(
        spec: &surgery_core::spec::FeatureMapSpec,
        heads: i64,
        head_dim: i64,
        rate: Rate,
        pattern: AnchorPattern,
    ) -> Self {
        HybridConfig {
            feature_map: FeatureMapConfig::from_spec(spec, heads, head_dim),
            eps: spec.eps,
            rate,
            pattern,
            normaliser: Normaliser::default(),
        }
    }
}

/// One block's hybrid attention core: the rate, the anchor pattern and the two maps.
#[derive(Debug)]
pub struct HybridAttention {
    pub rate: Rate,
    pub pattern: AnchorPattern,
    /// Boxed to keep [`SelfAttention`](super::SelfAttention) small; derefs to
    /// [`FeatureMap`].
    pub phi_q: Box<FeatureMap>,
    pub phi_k: Box<FeatureMap>,
    pub eps: f64,
    pub normaliser: Normaliser,
    index: IndexCache,
}

fn acc_kind(kind: Kind) -> Kind {
    if kind == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    }
}

impl HybridAttention {
    /// Creates `phi_q` and `phi_k` under `path` (checkpoint keys `<path>.phi_q.w1`, ...,
    /// `<path>.phi_k.b2`). The maps exist at every rate, softmax included, so the keys do
    /// not depend on the rate. Panics on an invalid rate (`Hybrid(0)` / `Hybrid(1)`).
    pub fn new(path: &nn::Path, config: HybridConfig) -> HybridAttention {
        assert!(config.rate.is_valid(), "invalid rate {:?}", config.rate);
        assert!(config.eps >= 0.0, "eps must be >= 0, got {}", config.eps);
        let phi_q = FeatureMap::with_initial_kernel(
            &(path / "phi_q"),
            config.feature_map,
            config.normaliser.initial_kernel(),
        );
        let phi_k = FeatureMap::new_copy_of(&(path / "phi_k"), &phi_q);
        HybridAttention {
            rate: config.rate,
            pattern: config.pattern,
            phi_q: Box::new(phi_q),
            phi_k: Box::new(phi_k),
            eps: config.eps,
            normaliser: config.normaliser,
            index: IndexCache::default(),
        }
    }

    /// Sets the dtype psi computes in, for both maps (default: the input's).
    pub fn set_psi_precision(&mut self, precision: PsiPrecision) {
        self.phi_q.precision = precision;
        self.phi_k.precision = precision;
    }

    /// The eight phi parameters (phi_q's `w1, b1, w2, b2`, then phi_k's).
    pub fn parameters(&self) -> Vec<&Tensor> {
        self.phi_q
            .parameters()
            .into_iter()
            .chain(self.phi_k.parameters())
            .collect()
    }

    /// The (cached) anchor / linear-token selection for `grid` on `device`. The first call
    /// per (grid, device, rate, pattern) builds the index tensors (a host-to-device copy);
    /// later calls are a lookup.
    pub fn token_index(&self, grid: TokenGrid, device: Device) -> TokenIndex {
        self.index.get(grid, self.rate, self.pattern, device)
    }

    fn check_inputs(q: &Tensor, k: &Tensor, v: &Tensor, grid: TokenGrid) {
        let (qs, ks, vs) = (q.size(), k.size(), v.size());
        assert!(
            qs.len() == 4 && ks.len() == 4 && vs.len() == 4,
            "q, k, v must be [B, H, N, d]"
        );
        assert_eq!(qs, ks, "q and k shapes differ");
        assert_eq!(&ks[..3], &vs[..3], "k and v shapes differ");
        assert_eq!(
            qs[2],
            grid.tokens(),
            "N = {} but the grid {grid:?} has {} tokens",
            qs[2],
            grid.tokens()
        );
    }

    /// The linear part's numerator phi_q(q).S [B, H, N, d] and denominator phi_q(q).z
    /// [B, H, N, 1], in the accumulation dtype; None at the softmax rate.
    fn linear_part(&self, q: &Tensor, k: &Tensor, v: &Tensor, idx: &TokenIndex) -> Option<(Tensor, Tensor)> {
        let kl = idx.select_linear(k)?;
        let vl = idx.select_linear(v)?;
        let acc = acc_kind(q.kind());
        let fk = self.phi_k.forward(&kl); // [B, H, L, D']
        let s = fk.transpose(-2, -1).matmul(&vl.to_kind(acc)); // [B, H, D', d]
        let z = fk.sum_dim_intlist(-2, true, acc); // [B, H, 1, D']
        let fq = self.phi_q.forward(q); // [B, H, N, D']
        let num = fq.matmul(&s);
        let den = fq.matmul(&z.transpose(-2, -1)); // [B, H, N, 1]
        Some((num, den))
    }

    /// q, k, v [B, H, N, d] (tokens in raster order over `grid`) -> [B, H, N, d] in q's
    /// dtype. The fast path; see the module documentation.
    pub fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor, grid: TokenGrid) -> Tensor {
        if self.rate == Rate::Softmax {
            return softmax_attention(q, k, v);
        }
        Self::check_inputs(q, k, v, grid);
        let idx = self.token_index(grid, q.device());
        if self.uses_fused(q) {
            match self.forward_fused(q, k, v, &idx) {
                Ok(y) => return y,
                // A kernel that cannot run must not take the task down: the eager path
                // computes the same function.
                Err(e) => tracing::error!("fused hybrid attention failed, using the eager path: {e}"),
            }
        }
        let acc = acc_kind(q.kind());
        let (num, den) = self
            .linear_part(q, k, v, &idx)
            .expect("a non-softmax rate has a linear part");
        let y = match (idx.select_anchors(k), idx.select_anchors(v)) {
            (Some(ka), Some(va)) => {
                // One fused call gives O_i; the anchors weigh a in total under c_i.
                let o = Tensor::scaled_dot_product_attention(q, &ka, &va, None::<&Tensor>, 0.0, false, None, false);
                let a = self.normaliser.anchor_weight(idx.num_anchors);
                (o.to_kind(acc) * a + num) / (den + (a + self.eps))
            }
            _ => num / (den + self.eps),
        };
        y.to_kind(q.kind())
    }

    /// Whether [`HybridAttention::forward`] runs the fused kernels for `q`: on CUDA in
    /// bf16 or fp32 with psi in the input's precision, unless turned off.
    pub fn uses_fused(&self, q: &Tensor) -> bool {
        self.phi_q.precision == PsiPrecision::Input && crate::kernels::usable(q)
    }

    /// The fused path: softmax over the anchors through SDPA (its own autograd), the
    /// linear part and the combination in [`fused`](super::fused) kernels.
    fn forward_fused(&self, q: &Tensor, k: &Tensor, v: &Tensor, idx: &TokenIndex) -> Result<Tensor, String> {
        let o = match (idx.select_anchors(k), idx.select_anchors(v)) {
            (Some(ka), Some(va)) => Some(Tensor::scaled_dot_product_attention(
                q,
                &ka,
                &va,
                None::<&Tensor>,
                0.0,
                false,
                None,
                false,
            )),
            _ => None,
        };
        let kl = idx.select_linear(k).expect("a non-softmax rate has linear tokens");
        let vl = idx.select_linear(v).expect("a non-softmax rate has linear tokens");
        let a = if o.is_some() {
            self.normaliser.anchor_weight(idx.num_anchors)
        } else {
            0.0
        };
        super::fused::hybrid(o.as_ref(), q, &kl, &vl, &self.phi_q, &self.phi_k, a, self.eps)
    }

    /// The first formula of METHOD.md section 1, literally: explicit scores
    /// s = q k^T / sqrt(d), c_i = logsumexp of s_i over the anchors (a masked logsumexp)
    /// minus log |T_S| under the mean normaliser,
    /// anchor weights exp(s_ij - c_i) masked to T_S, the linear weights
    /// phi_q(q_i).phi_k(k_j) masked to T_L, one division. fp64 internally, O(N^2) memory;
    /// returns q's dtype. Differentiable (to q, k, v and phi). For tests and checks only.
    pub fn reference(&self, q: &Tensor, k: &Tensor, v: &Tensor, grid: TokenGrid) -> Tensor {
        Self::check_inputs(q, k, v, grid);
        let dev = q.device();
        let (q64, k64, v64) = (
            q.to_kind(Kind::Double),
            k.to_kind(Kind::Double),
            v.to_kind(Kind::Double),
        );
        let d = q.size()[3];
        let mask: Vec<f64> = anchor_mask(grid, self.rate, self.pattern)
            .into_iter()
            .map(|a| if a { 1.0 } else { 0.0 })
            .collect();
        let has_anchor = mask.iter().any(|&a| a > 0.0);
        let has_linear = mask.contains(&0.0);
        let anchor = Tensor::from_slice(&mask).to_device(dev); // [N], 1 on T_S
        let linear = anchor.ones_like() - &anchor; // [N], 1 on T_L
        let not_anchor = anchor.lt(0.5); // bool [N]

        // (numerator, denominator) of the anchor part: exp(s_ij - c_i) over T_S.
        let anchor_part = has_anchor.then(|| {
            let s = q64.matmul(&k64.transpose(-2, -1)) / (d as f64).sqrt(); // [B, H, N, N]
            let s_anchor = s.masked_fill(&not_anchor, f64::NEG_INFINITY);
            let lse = s_anchor.logsumexp(-1, true); // [B, H, N, 1]
            let c = match self.normaliser {
                Normaliser::AnchorMean => lse - (mask.iter().filter(|&&a| a > 0.0).count() as f64).ln(),
                Normaliser::AnchorSum => lse,
            };
            let w = (s_anchor - c).exp(); // 0 off the anchors
            (w.matmul(&v64), w.sum_dim_intlist(-1, true, Kind::Double))
        });
        // ... and of the linear part: phi_q(q_i).phi_k(k_j) over T_L, plus eps.
        let linear_part = has_linear.then(|| {
            let kern = self
                .phi_q
                .forward(&q64)
                .matmul(&self.phi_k.forward(&k64).transpose(-2, -1)); // [B, H, N, N]
            let w = kern * &linear;
            (w.matmul(&v64), w.sum_dim_intlist(-1, true, Kind::Double) + self.eps)
        });
        let (num, den) = match (anchor_part, linear_part) {
            (Some((na, da)), Some((nl, dl))) => (na + nl, da + dl),
            (Some(part), None) | (None, Some(part)) => part,
            (None, None) => unreachable!("every token is an anchor or a linear token"),
        };
        (num / den).to_kind(q.kind())
    }
}
