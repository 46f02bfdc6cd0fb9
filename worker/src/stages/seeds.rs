//! The stages' seeded randomness, so a resumed task draws exactly what the uninterrupted
//! one would: independent seeds per (job seed, purpose, task, use), the one shuffle every
//! sample order is made with, and LibTorch's global generator seeded under a lock for
//! parameter initialisation. Pure functions of their arguments (no clocks, no entropy).

use crate::sampler::SeededRng;

/// A seed for (job seed, purpose, a, b): independent streams per task and use.
pub fn seed_for(job_seed: u64, purpose: u64, a: u64, b: u64) -> u64 {
    let mut rng = SeededRng::new(job_seed ^ purpose.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let x = rng.next_u64() ^ a.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    SeededRng::new(x ^ b.wrapping_mul(0x94D0_49BB_1331_11EB)).next_u64()
}

/// Fisher-Yates with `rng`: the order depends only on the items' count and the stream.
pub fn shuffle<T>(items: &mut [T], rng: &mut SeededRng) {
    for i in (1..items.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// `0..len` in the order [`shuffle`] makes with a generator seeded `seed`.
pub fn permutation(len: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    shuffle(&mut order, &mut SeededRng::new(seed));
    order
}

/// Runs `init` with LibTorch's global generator seeded: parameter initialisation draws from
/// it, and a worker runs tasks on several threads, so the seed and the draws happen under
/// one lock - the same task initialises the same way whatever ran before it.
pub fn with_torch_seed<T>(seed: u64, init: impl FnOnce() -> T) -> T {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    tch::manual_seed(seed as i64);
    init()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_are_independent_and_stable() {
        assert_eq!(seed_for(7, 1, 2, 3), seed_for(7, 1, 2, 3));
        assert_ne!(seed_for(7, 1, 2, 3), seed_for(7, 1, 3, 2));
        assert_ne!(seed_for(7, 1, 2, 3), seed_for(8, 1, 2, 3));
    }

    #[test]
    fn a_permutation_is_a_seeded_shuffle() {
        let order = permutation(10, 42);
        assert_eq!(order, permutation(10, 42));
        assert_ne!(order, permutation(10, 43));
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        let mut items: Vec<usize> = (0..10).collect();
        shuffle(&mut items, &mut SeededRng::new(42));
        assert_eq!(items, order);
        assert!(permutation(0, 1).is_empty());
    }
}
