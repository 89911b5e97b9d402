//! A small deterministic random number generator for jitter.
//!
//! The scheduling core must be reproducible under test (same seed, same
//! schedule), must not read the clock or the operating system's entropy, and
//! needs only a few uniform draws per delivery attempt. SplitMix64 (Steele,
//! Lea and Flood, "Fast splittable pseudorandom number generators", OOPSLA
//! 2014) is enough: 64 bits of state, full period, good equidistribution, and
//! no dependency. It is not cryptographic and is never used for anything an
//! attacker could exploit.

/// SplitMix64. See the module documentation for why it exists.
#[derive(Clone, Debug)]
pub struct Rng {
    /// The generator state; advanced by the golden-ratio increment per draw.
    state: u64,
}

impl Rng {
    /// A generator whose sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Rng { state: seed }
    }

    /// The next 64 uniformly distributed bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform number in `[0, 1)`, from the top 53 bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform integer in `[0, n)`; 0 when `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // Lemire's multiply-shift; the bias is below 2^-64 * n, irrelevant here.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A uniform factor in `[-spread, +spread]`, e.g. ±0.10 for ±10% jitter.
    pub fn symmetric(&mut self, spread: f64) -> f64 {
        (self.unit() * 2.0 - 1.0) * spread
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_in_range() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..1000 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        let mut r = Rng::new(1);
        for _ in 0..10_000 {
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
            assert!(r.below(10) < 10);
            let s = r.symmetric(0.1);
            assert!((-0.1..=0.1).contains(&s));
        }
        assert_eq!(r.below(0), 0);
    }
}
