//! Which keys are softmax *anchors* (T_S) and which are *linear* tokens (T_L) at a rate R
//! (METHOD.md section 1), and the device index tensors the fast path uses.
//!
//! * `strided` (the paper's rule): flattened raster index i with i mod R == 0.
//! * `diagonal` (**decision**): token (f, h, w) with (f + h + w) mod R == 0, so a width
//!   divisible by R does not turn the anchors into vertical stripes.
//!
//! Rate 1 (softmax) makes every token an anchor, `linear` none. The index lists are
//! computed on the host once per (grid, device, rate, pattern) and copied to the device
//! once ([`IndexCache`]); the forward pass never inspects them on the host, so it has no
//! device-to-host synchronisation.

use super::TokenGrid;
use std::sync::Mutex;
use surgery_core::rate::Rate;
use surgery_core::spec::AnchorPattern;
use tch::{Device, Kind, Tensor};

/// True for anchor tokens, in raster order (length N = grid.tokens()).
pub fn anchor_mask(grid: TokenGrid, rate: Rate, pattern: AnchorPattern) -> Vec<bool> {
    let n = grid.tokens().max(0) as usize;
    let r = match rate {
        Rate::Softmax => return vec![true; n],
        Rate::Linear => return vec![false; n],
        Rate::Hybrid(r) => i64::from(r.max(1)),
    };
    match pattern {
        AnchorPattern::Strided => (0..n as i64).map(|i| i % r == 0).collect(),
        AnchorPattern::Diagonal => {
            let mut mask = Vec::with_capacity(n);
            for f in 0..grid.frames {
                for h in 0..grid.height {
                    for w in 0..grid.width {
                        mask.push((f + h + w) % r == 0);
                    }
                }
            }
            mask
        }
    }
}

/// Raster indices of the anchor tokens T_S, ascending.
pub fn anchor_indices(grid: TokenGrid, rate: Rate, pattern: AnchorPattern) -> Vec<i64> {
    let mask = anchor_mask(grid, rate, pattern);
    (0..mask.len() as i64).filter(|&i| mask[i as usize]).collect()
}

/// Raster indices of the linear tokens T_L, ascending.
pub fn linear_indices(grid: TokenGrid, rate: Rate, pattern: AnchorPattern) -> Vec<i64> {
    let mask = anchor_mask(grid, rate, pattern);
    (0..mask.len() as i64).filter(|&i| !mask[i as usize]).collect()
}

/// How the fast path picks the anchor keys/values.
#[derive(Debug)]
pub enum AnchorSelect {
    /// No anchors (linear rate).
    None,
    /// Every token (softmax rate).
    All,
    /// `x.slice(2, 0, N, R)`: a strided view, no copy (strided pattern).
    Stride(i64),
    /// `x.index_select(2, index)` (diagonal pattern).
    Index(Tensor),
}

/// How the fast path picks the linear-token keys/values.
#[derive(Debug)]
pub enum LinearSelect {
    /// No linear tokens (softmax rate).
    None,
    /// Every token (linear rate).
    All,
    /// `x.index_select(2, index)` with a precomputed int64 index on the device.
    Index(Tensor),
}

/// The device-side selection for one (grid, device, rate, pattern). Cheap to copy with
/// [`TokenIndex::shallow_clone`] (the index tensors are shared, not copied).
#[derive(Debug)]
pub struct TokenIndex {
    pub anchors: AnchorSelect,
    pub linear: LinearSelect,
    /// |T_S| and |T_L|, known on the host.
    pub num_anchors: i64,
    pub num_linear: i64,
}

fn index_tensor(idx: &[i64], device: Device) -> Tensor {
    Tensor::from_slice(idx).to_kind(Kind::Int64).to_device(device)
}

impl TokenIndex {
    /// Another handle on the same index tensors.
    pub fn shallow_clone(&self) -> TokenIndex {
        TokenIndex {
            anchors: match &self.anchors {
                AnchorSelect::None => AnchorSelect::None,
                AnchorSelect::All => AnchorSelect::All,
                AnchorSelect::Stride(r) => AnchorSelect::Stride(*r),
                AnchorSelect::Index(t) => AnchorSelect::Index(t.shallow_clone()),
            },
            linear: match &self.linear {
                LinearSelect::None => LinearSelect::None,
                LinearSelect::All => LinearSelect::All,
                LinearSelect::Index(t) => LinearSelect::Index(t.shallow_clone()),
            },
            num_anchors: self.num_anchors,
            num_linear: self.num_linear,
        }
    }

    pub fn build(grid: TokenGrid, rate: Rate, pattern: AnchorPattern, device: Device) -> TokenIndex {
        let n = grid.tokens();
        match rate {
            Rate::Softmax => TokenIndex {
                anchors: AnchorSelect::All,
                linear: LinearSelect::None,
                num_anchors: n,
                num_linear: 0,
            },
            Rate::Linear => TokenIndex {
                anchors: AnchorSelect::None,
                linear: LinearSelect::All,
                num_anchors: 0,
                num_linear: n,
            },
            Rate::Hybrid(r) => {
                let lin = linear_indices(grid, rate, pattern);
                let num_linear = lin.len() as i64;
                let anchors = match pattern {
                    AnchorPattern::Strided => AnchorSelect::Stride(i64::from(r.max(1))),
                    AnchorPattern::Diagonal => {
                        AnchorSelect::Index(index_tensor(&anchor_indices(grid, rate, pattern), device))
                    }
                };
                TokenIndex {
                    anchors,
                    linear: LinearSelect::Index(index_tensor(&lin, device)),
                    num_anchors: n - num_linear,
                    num_linear,
                }
            }
        }
    }

    /// The anchor tokens of x [B, H, N, d] along dim 2, or None for the linear rate.
    pub fn select_anchors(&self, x: &Tensor) -> Option<Tensor> {
        match &self.anchors {
            AnchorSelect::None => None,
            AnchorSelect::All => Some(x.shallow_clone()),
            AnchorSelect::Stride(r) => {
                let n = x.size()[2];
                Some(x.slice(2, 0, n, *r))
            }
            AnchorSelect::Index(idx) => Some(x.index_select(2, idx)),
        }
    }

    /// The linear tokens of x [B, H, N, d] along dim 2, or None for the softmax rate.
    pub fn select_linear(&self, x: &Tensor) -> Option<Tensor> {
        match &self.linear {
            LinearSelect::None => None,
            LinearSelect::All => Some(x.shallow_clone()),
            LinearSelect::Index(idx) => Some(x.index_select(2, idx)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CacheKey {
    frames: i64,
    height: i64,
    width: i64,
    device: Device,
    rate: Rate,
    pattern: AnchorPattern,
}

/// A small cache of [`TokenIndex`] per (grid, device, rate, pattern). A model sees a
/// handful of grids (one per resolution), so a linear scan is enough.
#[derive(Debug, Default)]
pub struct IndexCache {
    entries: Mutex<Vec<(CacheKey, TokenIndex)>>,
}

impl IndexCache {
    /// The entry for (grid, rate, pattern, device), built on first use; a shallow clone
    /// (shared index tensors).
    pub fn get(&self, grid: TokenGrid, rate: Rate, pattern: AnchorPattern, device: Device) -> TokenIndex {
        let key = CacheKey {
            frames: grid.frames,
            height: grid.height,
            width: grid.width,
            device,
            rate,
            pattern,
        };
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, idx)) = entries.iter().find(|(k, _)| *k == key) {
            return idx.shallow_clone();
        }
        let idx = TokenIndex::build(grid, rate, pattern, device);
        let out = idx.shallow_clone();
        entries.push((key, idx));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(frames: i64, height: i64, width: i64) -> TokenGrid {
        TokenGrid { frames, height, width }
    }

    #[test]
    fn strided_is_every_rth_token() {
        let a = anchor_indices(g(1, 2, 5), Rate::Hybrid(3), AnchorPattern::Strided);
        assert_eq!(a, vec![0, 3, 6, 9]);
        let l = linear_indices(g(1, 2, 5), Rate::Hybrid(3), AnchorPattern::Strided);
        assert_eq!(l, vec![1, 2, 4, 5, 7, 8]);
    }

    #[test]
    fn rates_16_and_32_keep_one_token_in_r_and_partition_the_grid() {
        // 21 x 30 x 52 = 32,760 tokens: Wan2.1's 480p x 81 frames.
        let grid = g(21, 30, 52);
        for rate in [16, 32] {
            for pattern in [AnchorPattern::Strided, AnchorPattern::Diagonal] {
                let a = anchor_indices(grid, Rate::Hybrid(rate), pattern);
                let l = linear_indices(grid, Rate::Hybrid(rate), pattern);
                let expected = 32_760f64 / f64::from(rate);
                let share = a.len() as f64;
                assert!(
                    (share - expected).abs() / expected < 0.01,
                    "R{rate} {pattern:?}: {} anchors",
                    a.len()
                );
                let mut all: Vec<i64> = a.iter().chain(&l).copied().collect();
                all.sort_unstable();
                assert_eq!(all, (0..32_760).collect::<Vec<i64>>(), "R{rate} {pattern:?}");
            }
        }
    }

    #[test]
    fn diagonal_follows_f_plus_h_plus_w() {
        // grid 2 x 2 x 4, R = 2: anchor where f + h + w is even.
        let a = anchor_indices(g(2, 2, 4), Rate::Hybrid(2), AnchorPattern::Diagonal);
        // f=0,h=0: w 0,2 -> 0,2; f=0,h=1: w 1,3 -> 5,7; f=1,h=0: w 1,3 -> 9,11; f=1,h=1: w 0,2 -> 12,14
        assert_eq!(a, vec![0, 2, 5, 7, 9, 11, 12, 14]);
    }

    #[test]
    fn softmax_and_linear_extremes() {
        let grid = g(2, 3, 3);
        assert!(
            anchor_mask(grid, Rate::Softmax, AnchorPattern::Diagonal)
                .iter()
                .all(|&b| b)
        );
        assert!(
            anchor_mask(grid, Rate::Linear, AnchorPattern::Strided)
                .iter()
                .all(|&b| !b)
        );
    }

    #[test]
    fn cache_returns_the_same_entry() {
        let c = IndexCache::default();
        let ptr = |t: &TokenIndex| match &t.linear {
            LinearSelect::Index(i) => i.data_ptr(),
            _ => panic!("hybrid rates select linear tokens by index"),
        };
        let a = c.get(g(1, 3, 4), Rate::Hybrid(2), AnchorPattern::Strided, Device::Cpu);
        let b = c.get(g(1, 3, 4), Rate::Hybrid(2), AnchorPattern::Strided, Device::Cpu);
        assert_eq!(ptr(&a), ptr(&b));
        let d = c.get(g(1, 3, 5), Rate::Hybrid(2), AnchorPattern::Strided, Device::Cpu);
        assert_ne!(ptr(&a), ptr(&d));
        assert_eq!(d.num_anchors + d.num_linear, 15);
        assert_eq!(d.num_anchors, 8);
    }
}
