//! Attention-score distillation (METHOD.md section 2, the option next to the default L1
//! value distillation): log(1 + ||exp(q k^T) - phi_q phi_k^T||^2).
//!
//! Interpretation (the paper gives only that expression):
//! * Only the linear tokens' keys count: the columns j in T_L are what phi must imitate;
//!   the anchors are handled exactly by softmax. At rate `linear` every key counts.
//! * The target is normalised per query. [`ScoreNormaliser::Forward`] (default) uses the
//!   forward pass's own normaliser, t_ij = exp(s_ij - c_i) with s = q k^T / sqrt(d) and
//!   c_i the hybrid's ([`Normaliser`]: logsumexp of s_i over the anchors minus
//!   log |T_S| by default; over all keys at rate `linear`, where the target is then the
//!   softmax probabilities, in [0, 1]). This is the one target for which a perfect fit
//!   makes the hybrid output equal the teacher's softmax exactly. Under the mean
//!   normaliser each row sums to |T_S| (softmax mass on T_L) / (softmax mass on T_S),
//!   about |T_L| for diffuse attention (entries about 1).
//!   [`ScoreNormaliser::RowMax`] is the literal stabilised form exp(s_ij - max_j s_ij)
//!   (max over all keys), in (0, 1]; it does not match the forward pass's normaliser, so
//!   a perfect fit of it still leaves a per-query error in the anchor/linear balance.
//!   The target is computed without gradient (the teacher's q, k are frozen here).
//! * Per (batch, head) the squared Frobenius norm of (target - phi_q(q) phi_k(k_L)^T)
//!   over the sampled queries and all linear keys, multiplied by N / N_sampled so a
//!   query subsample estimates the full norm; then log1p; then the mean over batch and
//!   heads. fp32 (fp64 for fp64 inputs).
//! * Memory is O(N_sampled x |T_L|) per (batch, head): N^2 without subsampling.
//!   `query_stride = m` keeps every m-th query (raster order, a strided view, no copy);
//!   at 480p (N = 32,760, 12 heads) m = 64 needs about 0.7 GB per sample for the
//!   target and as much for the kernel. m = 1 is the full loss.

use super::TokenGrid;
use super::hybrid::{HybridAttention, Normaliser};
use tch::{Kind, Tensor};

/// How the score target is normalised per query (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScoreNormaliser {
    /// exp(s_ij - c_i), c_i the forward pass's normaliser (the hybrid's [`Normaliser`]
    /// over the anchors; logsumexp over all keys at rate `linear`).
    #[default]
    Forward,
    /// exp(s_ij - max over all keys of s_i).
    RowMax,
}

/// log(1 + ||exp(s - c) - phi_q phi_k^T||_F^2) over linear keys, averaged over batch and
/// heads, with the default normaliser. q, k: [B, H, N, d]; `query_stride` >= 1.
pub fn attention_score_loss(
    att: &HybridAttention,
    q: &Tensor,
    k: &Tensor,
    grid: TokenGrid,
    query_stride: i64,
) -> Tensor {
    attention_score_loss_with(att, q, k, grid, query_stride, ScoreNormaliser::Forward)
}

/// [`attention_score_loss`] with an explicit normaliser. At the softmax rate there are no
/// linear keys and the loss is a constant 0 (no gradient).
pub fn attention_score_loss_with(
    att: &HybridAttention,
    q: &Tensor,
    k: &Tensor,
    grid: TokenGrid,
    query_stride: i64,
    normaliser: ScoreNormaliser,
) -> Tensor {
    assert!(query_stride >= 1, "query_stride must be >= 1, got {query_stride}");
    let size = q.size();
    assert_eq!(size.len(), 4, "q must be [B, H, N, d]");
    assert_eq!(size, k.size(), "q and k shapes differ");
    let (n, d) = (size[2], size[3]);
    assert_eq!(
        n,
        grid.tokens(),
        "N = {n} but the grid {grid:?} has {} tokens",
        grid.tokens()
    );
    let acc = if q.kind() == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    };
    let idx = att.token_index(grid, q.device());
    let Some(kl) = idx.select_linear(k) else {
        return Tensor::zeros([], (acc, q.device()));
    };
    let qs = q.slice(2, 0, n, query_stride);
    let nq = (n + query_stride - 1) / query_stride;
    let scale = 1.0 / (d as f64).sqrt();

    let target = tch::no_grad(|| {
        let qa = qs.detach().to_kind(acc);
        let scores = |keys: &Tensor| qa.matmul(&keys.detach().to_kind(acc).transpose(-2, -1)) * scale;
        let s_lin = scores(&kl); // [B, H, nq, L]
        let s_anchor = idx.select_anchors(k).map(|ka| scores(&ka)); // [B, H, nq, A]
        let c = match (normaliser, &s_anchor) {
            (ScoreNormaliser::Forward, Some(sa)) => match att.normaliser {
                Normaliser::AnchorMean => sa.logsumexp(-1, true) - (idx.num_anchors as f64).ln(),
                Normaliser::AnchorSum => sa.logsumexp(-1, true),
            },
            (ScoreNormaliser::Forward, None) => s_lin.logsumexp(-1, true),
            (ScoreNormaliser::RowMax, Some(sa)) => s_lin.amax(-1, true).maximum(&sa.amax(-1, true)),
            (ScoreNormaliser::RowMax, None) => s_lin.amax(-1, true),
        };
        (s_lin - c).exp()
    });

    let kern = att.phi_q.forward(&qs).matmul(&att.phi_k.forward(&kl).transpose(-2, -1)); // [B, H, nq, L]
    let sq = (kern - target)
        .square()
        .sum_dim_intlist([-2i64, -1].as_slice(), false, acc);
    (sq * (n as f64 / nq as f64)).log1p().mean(acc)
}
