//! The learnable polynomial feature map phi of the hybrid attention (METHOD.md section 1),
//! one per head, all heads at once.
//!
//! psi is a per-head 2-layer MLP d -> hidden -> D' run as batched matmuls over the heads:
//!
//! ```text
//! psi(x) = GELU(x W1[h] + b1[h]) W2[h] + b2[h]         x: [B, H, N, d] -> [B, H, N, D']
//! ```
//!
//! Its output is split along the features into P chunks (sizes D'/P, the first D' mod P
//! chunks one wider) and chunk p is raised element-wise to the p-th power:
//!
//! ```text
//! phi(x) = [ softplus(psi_1), psi_2^2, softplus(psi_3)^3, psi_4^4, ... ]
//! ```
//!
//! Every feature is non-negative, so phi_q . phi_k >= 0 and the shared normaliser's
//! denominator stays positive (METHOD's **decision**: a = softplus on chunk 1). Even
//! powers are non-negative already; odd powers p >= 3 go through softplus first for the
//! same reason (the chunk is then softplus(psi_p)^p).
//!
//! Choices (documented here because the paper is silent):
//! * activation between the two layers: exact (erf) GELU, the usual transformer MLP
//!   non-linearity; smooth, so phi is smooth in q and k.
//! * initialisation: w1, b1, w2 as `torch.nn.Linear` does by default (uniform
//!   +-1/sqrt(fan_in)); the power chunks' (p >= 2) columns of w2 are scaled by
//!   [`INIT_POWER_GAIN`] = 0.1 and their biases start at 0 (even p); the softplus
//!   chunks' biases (chunk 1, odd p >= 3) start at b = softplus^-1(sqrt(kappa / n1)),
//!   n1 the width of chunk 1 ([`init_softplus_bias`]). Derivation: with those weights
//!   psi_1(x) = b + noise of std ~0.2, so every feature of chunk 1 is ~softplus(b) and
//!   the initial per-pair kernel phi_q . phi_k ~ n1 softplus(b)^2 = kappa (the power
//!   chunks add ~1e-6). kappa is the kernel the shared normaliser asks for when
//!   attention is diffuse ([`Normaliser::initial_kernel`](super::hybrid::Normaliser)):
//!   exp(s_ij - c_i) with equal scores, i.e. 1 under METHOD's revised normaliser
//!   c_i = LSE - log |T_S| (b = -2.4 at the paper's D' = 256, n1 = 128), so the
//!   untrained hybrid starts as softmax over the anchors plus a linear part of about
//!   the right weight at every resolution. (Under the first normaliser, c_i = LSE, the
//!   ideal kernel is R / N, about 1e-4 at Wan's resolutions: b = -7.) For b well below
//!   0, softplus(x) ~ exp(x): chunk 1 is then positive random features exp(psi_1(x)),
//!   the Performer-style approximation of an exponential kernel, which learns at a
//!   normal rate in log space. The plain default initialisation would start near 60
//!   per pair, a linear part hundreds of times too heavy.
//!   [`HybridAttention`](super::hybrid::HybridAttention) starts phi_k as an exact copy of
//!   phi_q: the untrained kernel is then symmetric and positive semi-definite in the space
//!   where the teacher takes q . k and grows with q . k (correlation of log kernel with
//!   s = q.k/sqrt(d) about 0.1 on random inputs; 0 for two independent draws).
//! * dtypes: psi's two matmuls and the GELU run in the input's dtype (the weights are
//!   cast to it when they differ, autocast-style, so fp32 master weights work with bf16
//!   activations; cuBLAS accumulates bf16 products in fp32), or in fp32 when
//!   [`FeatureMap::precision`] is [`PsiPrecision::Fp32`]. The second matmul's output
//!   is cast to fp32 (fp64 stays fp64) before b2 is added (the -7 initial bias would lose
//!   0.016 absolute, 1.6% of exp(psi), in bf16) and before the non-negative activation
//!   and the powers, so phi returns fp32 for bf16/fp16/fp32 inputs.
//! * phi sees q and k exactly as given (after RMSNorm and RoPE), with no 1/sqrt(d)
//!   scaling: the MLP's first layer absorbs any scale.
//!
//! Parameters (checkpoint keys under the map's path, e.g.
//! `blocks.{i}.attn1.phi_q.w1`): `w1` [H, d, hidden], `b1` [H, hidden],
//! `w2` [H, hidden, D'], `b2` [H, D']: H (d hidden + hidden + hidden D' + D') in all,
//! 1,185,792 at the Wan shape (12 heads, d = 128, hidden = D' = 256), METHOD's "about
//! 1.2M per map per block".

use tch::{Kind, Tensor, nn};

/// Initial bias of psi's softplus chunks (chunk 1 and odd p >= 3) for an initial per-pair
/// kernel `kernel` with chunk 1 `chunk1_width` wide: softplus^-1(sqrt(kernel / n1)) (see
/// the module documentation).
pub fn init_softplus_bias(kernel: f64, chunk1_width: i64) -> f64 {
    assert!(
        kernel > 0.0 && chunk1_width >= 1,
        "bad initial kernel {kernel} or width {chunk1_width}"
    );
    (kernel / chunk1_width as f64).sqrt().exp_m1().ln()
}

/// Initial gain on psi's second-layer weights of the power chunks p >= 2 (their biases
/// start at 0 for even p): small, so the polynomial terms start below chunk 1.
pub const INIT_POWER_GAIN: f64 = 0.1;

/// Shape of one feature map (all heads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureMapConfig {
    /// H: attention heads.
    pub heads: i64,
    /// d: head dimension (phi's input width).
    pub head_dim: i64,
    /// Hidden width of psi.
    pub hidden: i64,
    /// D': width of phi's output (all chunks together).
    pub features: i64,
    /// P: number of power chunks (1..=4).
    pub chunks: i64,
}

impl FeatureMapConfig {
    /// The paper's map at the Wan2.1 1.3B shape: 12 heads of 128, hidden = D' = 256, P = 2.
    pub fn wan() -> Self {
        FeatureMapConfig {
            heads: 12,
            head_dim: 128,
            hidden: 256,
            features: 256,
            chunks: 2,
        }
    }

    /// From the job spec's `feature_map` section and the model's head shape.
    pub fn from_spec(spec: &surgery_core::spec::FeatureMapSpec, heads: i64, head_dim: i64) -> Self {
        FeatureMapConfig {
            heads,
            head_dim,
            hidden: i64::from(spec.hidden),
            features: i64::from(spec.features),
            chunks: i64::from(spec.chunks),
        }
    }

    /// Parameters of one map: H (d hidden + hidden + hidden D' + D').
    pub fn params(&self) -> i64 {
        self.heads * (self.head_dim * self.hidden + self.hidden + self.hidden * self.features + self.features)
    }

    /// Widths of the P chunks: D'/P each, the first D' mod P one wider.
    pub fn chunk_sizes(&self) -> Vec<i64> {
        let p = self.chunks;
        (0..p)
            .map(|i| self.features / p + i64::from(i < self.features % p))
            .collect()
    }
}

/// The dtype psi's matmuls and GELU run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PsiPrecision {
    /// The input's dtype (bf16 matmuls for bf16 activations): the fast default. On bf16
    /// inputs the rounding of the weights, the pre-activation and the hidden layer moves
    /// the hybrid output by up to about 1% of its scale (the tests measure it).
    #[default]
    Input,
    /// fp32 whatever the input (about 10x the matmul time on a GPU without TF32).
    Fp32,
}

/// One feature map phi (phi_q or phi_k) for all heads.
#[derive(Debug)]
pub struct FeatureMap {
    pub config: FeatureMapConfig,
    /// What psi computes in (not a parameter; not in checkpoints).
    pub precision: PsiPrecision,
    /// [H, d, hidden]
    pub w1: Tensor,
    /// [H, hidden]
    pub b1: Tensor,
    /// [H, hidden, D']
    pub w2: Tensor,
    /// [H, D']
    pub b2: Tensor,
}

fn check(config: &FeatureMapConfig) {
    assert!(
        config.heads >= 1 && config.head_dim >= 1 && config.hidden >= 1,
        "feature map: bad shape {config:?}"
    );
    assert!(
        (1..=4).contains(&config.chunks),
        "feature map: chunks must be 1..=4, got {}",
        config.chunks
    );
    assert!(
        config.features >= config.chunks,
        "feature map: features ({}) must be >= chunks ({})",
        config.features,
        config.chunks
    );
}

impl FeatureMap {
    /// Creates `w1`, `b1`, `w2`, `b2` under `path` with the initialisation of the module
    /// documentation for an initial kernel of 1 (METHOD's mean normaliser).
    pub fn new(path: &nn::Path, config: FeatureMapConfig) -> FeatureMap {
        Self::with_initial_kernel(path, config, 1.0)
    }

    /// [`FeatureMap::new`] with the softplus biases set for an initial per-pair kernel
    /// phi_q . phi_k of about `kernel`.
    pub fn with_initial_kernel(path: &nn::Path, config: FeatureMapConfig, kernel: f64) -> FeatureMap {
        check(&config);
        let FeatureMapConfig {
            heads: h,
            head_dim: d,
            hidden,
            features,
            ..
        } = config;
        let u = |fan_in: i64| {
            let b = 1.0 / (fan_in as f64).sqrt();
            nn::Init::Uniform { lo: -b, up: b }
        };
        let map = FeatureMap {
            config,
            precision: PsiPrecision::default(),
            w1: path.var("w1", &[h, d, hidden], u(d)),
            b1: path.var("b1", &[h, hidden], u(d)),
            w2: path.var("w2", &[h, hidden, features], u(hidden)),
            b2: path.var("b2", &[h, features], u(hidden)),
        };
        let softplus_bias = init_softplus_bias(kernel, config.chunk_sizes()[0]);
        tch::no_grad(|| {
            let mut start = 0;
            for (i, size) in config.chunk_sizes().into_iter().enumerate() {
                let p = i as i64 + 1;
                let _ = map
                    .b2
                    .narrow(-1, start, size)
                    .fill_(if p % 2 == 1 { softplus_bias } else { 0.0 });
                if p >= 2 {
                    let _ = map.w2.narrow(-1, start, size).g_mul_scalar_(INIT_POWER_GAIN);
                }
                start += size;
            }
        });
        map
    }

    /// Creates the parameters under `path` as copies of `other`'s current values (same
    /// shape, independent trainable variables).
    pub fn new_copy_of(path: &nn::Path, other: &FeatureMap) -> FeatureMap {
        FeatureMap {
            config: other.config,
            precision: other.precision,
            w1: path.var_copy("w1", &other.w1),
            b1: path.var_copy("b1", &other.b1),
            w2: path.var_copy("w2", &other.w2),
            b2: path.var_copy("b2", &other.b2),
        }
    }

    /// The parameters, in checkpoint-key order (`w1`, `b1`, `w2`, `b2`).
    pub fn parameters(&self) -> [&Tensor; 4] {
        [&self.w1, &self.b1, &self.w2, &self.b2]
    }

    /// psi(x): x [B, H, N, d] -> [B, H, N, D'], the raw MLP output, fp32 (fp64 for fp64
    /// x). The matmuls and GELU run in x's dtype ([`PsiPrecision::Input`]) or fp32; the
    /// second layer's output is cast to fp32 before its bias is added, so a large
    /// initial softplus bias (-7 under the first normaliser, where a bf16 ulp is 0.03)
    /// costs no precision.
    pub fn psi(&self, x: &Tensor) -> Tensor {
        let acc = if x.kind() == Kind::Double {
            Kind::Double
        } else {
            Kind::Float
        };
        let kind = match self.precision {
            PsiPrecision::Input => x.kind(),
            PsiPrecision::Fp32 => acc,
        };
        let cast = |t: &Tensor, k: Kind| if t.kind() == k { t.shallow_clone() } else { t.to_kind(k) };
        let x = cast(x, kind);
        // [B, H, N, d] @ [H, d, hidden] broadcasts over the batch: one batched matmul.
        let hdn = (x.matmul(&cast(&self.w1, kind)) + cast(&self.b1, kind).unsqueeze(1)).gelu("none");
        hdn.matmul(&cast(&self.w2, kind)).to_kind(acc) + cast(&self.b2, acc).unsqueeze(1)
    }

    /// phi(x): x [B, H, N, d] -> [B, H, N, D'], every entry >= 0; fp32 unless x is fp64.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let psi = self.psi(x);
        let sizes = self.config.chunk_sizes();
        if sizes.len() == 1 {
            return psi.softplus();
        }
        let chunks = psi.split_with_sizes(&sizes, -1);
        let parts: Vec<Tensor> = chunks
            .iter()
            .enumerate()
            .map(|(i, c)| match i + 1 {
                1 => c.softplus(),
                p if p % 2 == 0 => c.pow_tensor_scalar(p as i64),
                p => c.softplus().pow_tensor_scalar(p as i64),
            })
            .collect();
        Tensor::cat(&parts, -1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn wan_parameter_count() {
        let cfg = FeatureMapConfig::wan();
        assert_eq!(cfg.params(), 1_185_792);
        let vs = nn::VarStore::new(Device::Cpu);
        let _m = FeatureMap::new(&(vs.root() / "phi_q"), cfg);
        let total: i64 = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
        assert_eq!(total, 1_185_792);
        let mut names: Vec<String> = vs.variables().into_keys().collect();
        names.sort();
        assert_eq!(names, ["phi_q.b1", "phi_q.b2", "phi_q.w1", "phi_q.w2"]);
    }

    #[test]
    fn chunk_sizes_cover_features() {
        for p in 1..=4 {
            for f in [4, 7, 256, 257] {
                let cfg = FeatureMapConfig {
                    heads: 1,
                    head_dim: 2,
                    hidden: 3,
                    features: f,
                    chunks: p,
                };
                let s = cfg.chunk_sizes();
                assert_eq!(s.len() as i64, p);
                assert_eq!(s.iter().sum::<i64>(), f);
                assert!(s.iter().max().unwrap() - s.iter().min().unwrap() <= 1);
            }
        }
    }

    #[test]
    fn non_negative_for_every_chunk_count() {
        tch::manual_seed(0);
        for p in 1..=4 {
            let vs = nn::VarStore::new(Device::Cpu);
            let cfg = FeatureMapConfig {
                heads: 3,
                head_dim: 8,
                hidden: 16,
                features: 12,
                chunks: p,
            };
            let m = FeatureMap::new(&vs.root(), cfg);
            let x = Tensor::randn([2, 3, 10, 8], (Kind::Float, Device::Cpu)) * 3.0;
            let y = m.forward(&x);
            assert_eq!(y.size(), [2, 3, 10, 12]);
            assert_eq!(y.kind(), Kind::Float);
            assert!(y.min().double_value(&[]) >= 0.0, "P = {p}");
        }
    }

    #[test]
    fn bf16_input_gives_fp32_features() {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = FeatureMap::new(
            &vs.root(),
            FeatureMapConfig {
                heads: 2,
                head_dim: 4,
                hidden: 8,
                features: 6,
                chunks: 2,
            },
        );
        let x = Tensor::randn([1, 2, 5, 4], (Kind::BFloat16, Device::Cpu));
        let y = m.forward(&x);
        assert_eq!(y.kind(), Kind::Float);
        let y32 = m.forward(&x.to_kind(Kind::Float));
        let err = (&y - &y32).abs().max().double_value(&[]);
        let scale = y32.abs().max().double_value(&[]);
        assert!(err <= 2e-2 * scale, "bf16 phi error {err} vs scale {scale}");
    }

    #[test]
    fn initial_kernel_is_what_the_normaliser_asks_for() {
        tch::manual_seed(3);
        for (kernel, bias) in [(1.0, -2.38), (1e-4, -7.03)] {
            assert!((init_softplus_bias(kernel, 128) - bias).abs() < 0.01, "{kernel}");
        }
        for kernel in [1.0, 1e-4] {
            let vs = nn::VarStore::new(Device::Cpu);
            let m = FeatureMap::with_initial_kernel(&vs.root(), FeatureMapConfig::wan(), kernel);
            let q = Tensor::randn([1, 12, 64, 128], (Kind::Float, Device::Cpu));
            let k = Tensor::randn([1, 12, 64, 128], (Kind::Float, Device::Cpu));
            let mean = m
                .forward(&q)
                .matmul(&m.forward(&k).transpose(-2, -1))
                .mean(Kind::Float)
                .double_value(&[]);
            assert!(
                mean > 0.5 * kernel && mean < 2.0 * kernel,
                "kernel {kernel}: mean {mean}"
            );
        }
    }
}
