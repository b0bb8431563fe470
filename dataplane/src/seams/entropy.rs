//! Seeded randomness for choices that change behaviour: endpoint picks, jitter, splits.
//!
//! Crypto randomness (keys, nonces) stays the operating system's; it never steers behaviour.

use std::sync::{Arc, Mutex, PoisonError};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A shared, seeded generator. Clones draw from the same sequence.
#[derive(Debug, Clone)]
pub struct Entropy {
    rng: Arc<Mutex<StdRng>>,
}

impl Entropy {
    pub fn seeded(seed: u64) -> Self {
        Entropy {
            rng: Arc::new(Mutex::new(StdRng::seed_from_u64(seed))),
        }
    }

    /// A uniformly chosen index below `len` (`len` must be non-zero).
    pub fn index(&self, len: usize) -> usize {
        let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
        rng.random_range(0..len)
    }

    /// A raw 64-bit draw, for identifiers such as trace ids.
    pub fn next_u64(&self) -> u64 {
        let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
        rng.random()
    }

    /// Picks an index with probability proportional to its weight; `None` when all are zero.
    pub fn weighted_index(&self, weights: &[u32]) -> Option<usize> {
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        if total == 0 {
            return None;
        }
        let mut point = {
            let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
            rng.random_range(0..total)
        };
        for (i, w) in weights.iter().enumerate() {
            let w = u64::from(*w);
            if point < w {
                return Some(i);
            }
            point -= w;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let a = Entropy::seeded(7);
        let b = Entropy::seeded(7);
        let xs: Vec<usize> = (0..32).map(|_| a.index(1000)).collect();
        let ys: Vec<usize> = (0..32).map(|_| b.index(1000)).collect();
        assert_eq!(xs, ys);
        let c = Entropy::seeded(8);
        let zs: Vec<usize> = (0..32).map(|_| c.index(1000)).collect();
        assert_ne!(xs, zs);
    }

    #[test]
    fn weighted_index_never_picks_zero_weight() {
        let e = Entropy::seeded(1);
        for _ in 0..500 {
            let i = e.weighted_index(&[0, 3, 0, 1]).unwrap();
            assert!(i == 1 || i == 3);
        }
        assert_eq!(e.weighted_index(&[0, 0]), None);
        assert_eq!(e.weighted_index(&[]), None);
    }
}
