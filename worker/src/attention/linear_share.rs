//! How much of a hybrid block's output comes from its linear branch (issue "quality
//! testbed": "for hybrid blocks, the share of each block's output that comes from the
//! linear branch").
//!
//! Every hybrid output is a weighted mean of values, y_i = (a O_i + phi_q(q_i).S) /
//! (a + phi_q(q_i).z + eps) (see [`hybrid`](super::hybrid)), so the linear branch's share of
//! query i is its weight in that mean, `phi_q(q_i).z / (a + phi_q(q_i).z + eps)`. The
//! teacher's counterpart is the softmax mass it puts on the same linear tokens,
//! `sum_{j in T_L} softmax(s_i)_j`: the share the linear branch would carry if phi were
//! exact. An untrained phi gives the linear tokens the weight of diffuse attention (1 - 1/R
//! under the mean normaliser); distillation moves the share toward the teacher's.
//!
//! Computed without N x N scores: the student's share from phi_q(q) and z (fp32), the
//! teacher's as one SDPA call whose values are the linear tokens' indicator.

use super::TokenGrid;
use super::anchors::anchor_mask;
use super::hybrid::{HybridAttention, Rate};
use tch::{Kind, Tensor};

/// Means over batch, heads and query tokens of one hybrid block's linear shares.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LinearShare {
    /// The student's linear-branch weight, phi_q(q_i).z / (a + phi_q(q_i).z + eps).
    pub student: f64,
    /// The teacher's softmax mass on the same linear tokens.
    pub teacher: f64,
    /// Mean over queries of |student_i - teacher_i|: averages can agree while queries do not.
    pub gap: f64,
}

/// Per-query shares [B, H, N] (student, teacher), fp32; `None` at the softmax rate (no
/// linear branch).
fn per_query(h: &HybridAttention, q: &Tensor, k: &Tensor, grid: TokenGrid) -> Option<(Tensor, Tensor)> {
    if h.rate == Rate::Softmax {
        return None;
    }
    let idx = h.token_index(grid, q.device());
    let kl = idx.select_linear(k)?;
    let fk = h.phi_k.forward(&kl).to_kind(Kind::Float); // [B, H, L, D']
    let z = fk.sum_dim_intlist(-2, true, Kind::Float); // [B, H, 1, D']
    let fq = h.phi_q.forward(q).to_kind(Kind::Float); // [B, H, N, D']
    let den = fq.matmul(&z.transpose(-2, -1)).squeeze_dim(-1); // [B, H, N]
    let a = if idx.num_anchors > 0 {
        h.normaliser.anchor_weight(idx.num_anchors)
    } else {
        0.0
    };
    let student = &den / (&den + (a + h.eps));

    // The teacher: softmax attention whose values are 1 on T_L, 0 on the anchors (every
    // column the same, so the head dimension matches q's for any SDPA backend).
    let linear: Vec<f32> = anchor_mask(grid, h.rate, h.pattern)
        .into_iter()
        .map(|anchor| if anchor { 0.0 } else { 1.0 })
        .collect();
    let indicator = Tensor::from_slice(&linear)
        .to_device(q.device())
        .to_kind(q.kind())
        .view([1, 1, -1, 1])
        .expand(q.size(), false)
        .contiguous();
    let teacher = super::softmax_attention(q, k, &indicator)
        .select(-1, 0)
        .to_kind(Kind::Float);
    Some((student, teacher))
}

/// One block's linear shares for q, k [B, H, N, d] as its core sees them (the values do
/// not enter a share); `None` at the
/// softmax rate. No gradients.
pub fn linear_share(h: &HybridAttention, q: &Tensor, k: &Tensor, grid: TokenGrid) -> Option<LinearShare> {
    tch::no_grad(|| {
        let (student, teacher) = per_query(h, q, k, grid)?;
        let mean = |t: &Tensor| t.mean(Kind::Double).double_value(&[]);
        Some(LinearShare {
            student: mean(&student),
            teacher: mean(&teacher),
            gap: mean(&(&student - &teacher).abs()),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::feature_map::FeatureMapConfig;
    use crate::attention::hybrid::{AnchorPattern, HybridConfig, Normaliser};
    use tch::{Device, nn};

    fn hybrid(rate: Rate, eps: f64) -> (nn::VarStore, HybridAttention) {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let config = HybridConfig {
            feature_map: FeatureMapConfig {
                heads: 2,
                head_dim: 8,
                hidden: 8,
                features: 8,
                chunks: 2,
            },
            eps,
            rate,
            pattern: AnchorPattern::Strided,
            normaliser: Normaliser::AnchorMean,
        };
        let h = HybridAttention::new(&vs.root(), config);
        (vs, h)
    }

    fn qkv(grid: TokenGrid, scale: f64) -> (Tensor, Tensor, Tensor) {
        tch::manual_seed(1);
        let shape = [1, 2, grid.tokens(), 8];
        let r = || Tensor::randn(shape, (Kind::Float, Device::Cpu)) * scale;
        (r(), r(), r())
    }

    const GRID: TokenGrid = TokenGrid {
        frames: 2,
        height: 3,
        width: 4,
    };

    /// The student's share is the linear weight of the exact formula: with v = 1 on the
    /// linear tokens and 0 on the anchors, the reference output is exactly that weight
    /// (up to eps's share, which carries no value).
    #[test]
    fn the_student_share_is_the_reference_formulas_linear_weight() {
        let (_vs, h) = hybrid(Rate::Hybrid(4), 1e-6);
        let (q, k, _) = qkv(GRID, 1.0);
        let mask: Vec<f32> = anchor_mask(GRID, h.rate, h.pattern)
            .into_iter()
            .map(|a| if a { 0.0 } else { 1.0 })
            .collect();
        let v = Tensor::from_slice(&mask)
            .view([1, 1, -1, 1])
            .expand([1, 2, 24, 8], false)
            .contiguous();
        let (student, _) = tch::no_grad(|| per_query(&h, &q, &k, GRID)).unwrap();
        let reference = tch::no_grad(|| h.reference(&q, &k, &v, GRID)).select(-1, 0);
        let diff = (&student - &reference).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "student share differs from the reference by {diff}");
    }

    /// The teacher's share is its softmax mass on the linear tokens, checked against explicit
    /// scores.
    #[test]
    fn the_teacher_share_is_the_softmax_mass_on_linear_tokens() {
        let (_vs, h) = hybrid(Rate::Hybrid(3), 1e-6);
        let (q, k, _) = qkv(GRID, 2.0);
        let (_, teacher) = tch::no_grad(|| per_query(&h, &q, &k, GRID)).unwrap();
        let p = (q.matmul(&k.transpose(-2, -1)) / 8f64.sqrt()).softmax(-1, Kind::Float);
        let linear: Vec<f32> = anchor_mask(GRID, h.rate, h.pattern)
            .into_iter()
            .map(|a| if a { 0.0 } else { 1.0 })
            .collect();
        let expected = p.matmul(&Tensor::from_slice(&linear).view([-1, 1])).squeeze_dim(-1);
        let diff = (&teacher - &expected).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "teacher share off by {diff}");
    }

    /// Uniform scores (q = 0) give the teacher exactly |T_L| / N; phi at its initialisation
    /// imitates diffuse attention, so the student's share is near it; a linear block has
    /// no anchors and its share is 1 up to eps; softmax has none.
    #[test]
    fn shares_at_the_extremes() {
        let (_vs, h) = hybrid(Rate::Hybrid(4), 1e-6);
        let (_, k, _) = qkv(GRID, 1.0);
        let q = k.zeros_like();
        let share = linear_share(&h, &q, &k, GRID).unwrap();
        let expected = 18.0 / 24.0; // strided R4 over 24 tokens: 6 anchors
        assert!((share.teacher - expected).abs() < 1e-6, "{share:?}");
        assert!((share.student - expected).abs() < 0.1, "{share:?}");
        // q = 0: every query sees the same scores, so every student share is the same and
        // the per-query gap is the gap of the means.
        assert!(
            (share.gap - (share.student - share.teacher).abs()).abs() < 1e-6,
            "{share:?}"
        );

        let (_vs, linear) = hybrid(Rate::Linear, 1e-6);
        let (q, k, _) = qkv(GRID, 1.0);
        let share = linear_share(&linear, &q, &k, GRID).unwrap();
        assert!(
            (share.student - 1.0).abs() < 1e-4 && (share.teacher - 1.0).abs() < 1e-6,
            "{share:?}"
        );

        let (_vs, softmax) = hybrid(Rate::Softmax, 1e-6);
        assert!(linear_share(&softmax, &q, &k, GRID).is_none());
    }
}
