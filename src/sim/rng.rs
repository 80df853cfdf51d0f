//! Deterministic pseudo-random numbers: xoshiro256** seeded through splitmix64.
//!
//! The simulator's output must be byte-identical for a seed on every platform and with any
//! dependency versions, so it carries its own generator instead of depending on `rand`.

use std::f64::consts::TAU;

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[derive(Clone, Debug)]
pub(crate) struct Rng {
    s: [u64; 4],
    /// Box–Muller yields two normals per draw; keeping the second halves the `ln`/`sqrt` cost.
    spare: Option<f64>,
}

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        let mut x = seed;
        let s = [
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
        ];
        Rng { s, spare: None }
    }

    /// An independent stream per (seed, purpose/device): each device draws from its own stream,
    /// so a device's telemetry does not change when the fleet around it grows.
    pub(crate) fn stream(seed: u64, stream: u64) -> Self {
        let mut x = seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
        let k = splitmix64(&mut x);
        Rng::new(k ^ stream.rotate_left(32))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub(crate) fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [a, b).
    pub(crate) fn uniform(&mut self, a: f64, b: f64) -> f64 {
        a + (b - a) * self.f64()
    }

    pub(crate) fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.f64() < p
    }

    pub(crate) fn normal(&mut self, mean: f64, sd: f64) -> f64 {
        if let Some(z) = self.spare.take() {
            return mean + sd * z;
        }
        let u1 = 1.0 - self.f64(); // (0, 1]: keeps ln finite
        let u2 = self.f64();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (TAU * u2).sin_cos();
        self.spare = Some(r * s);
        mean + sd * r * c
    }

    /// Uniform integer in [0, n); 0 when n is 0.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform integer in [a, b); `a` when the range is empty.
    pub(crate) fn range(&mut self, a: i64, b: i64) -> i64 {
        if b <= a {
            a
        } else {
            a + self.below(b.abs_diff(a)) as i64
        }
    }

    pub(crate) fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// Index drawn with the given (non-negative) weights; the last index if they sum to 0.
    pub(crate) fn weighted(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().sum();
        let mut x = self.f64() * total;
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len().saturating_sub(1)
    }

    pub(crate) fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.index(i + 1);
            xs.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4).map(|_| Rng::stream(7, 1).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(Rng::stream(7, 1).next_u64(), Rng::stream(7, 2).next_u64());
        assert_ne!(Rng::stream(7, 1).next_u64(), Rng::stream(8, 1).next_u64());
    }

    #[test]
    fn helpers_stay_in_range() {
        let mut r = Rng::new(42);
        let mut sum = 0.0;
        for _ in 0..10_000 {
            let u = r.uniform(2.0, 3.0);
            assert!((2.0..3.0).contains(&u));
            let k = r.range(-5, 5);
            assert!((-5..5).contains(&k));
            sum += r.normal(10.0, 2.0);
        }
        let mean = sum / 10_000.0;
        assert!((mean - 10.0).abs() < 0.1, "{mean}");
        assert_eq!(r.range(3, 3), 3);
        assert_eq!(r.weighted(&[0.0, 1.0, 0.0]), 1);
    }
}
