//! numpy's legacy `RandomState` (MT19937 seeded by `init_genrand`, `random_interval` with mask
//! rejection, Fisher-Yates from the end): nnU-Net's seeded draws (the k-fold shuffle of
//! `nnunetv2/utilities/crossval_split.py::generate_crossval_split`, the fingerprint's intensity
//! samples, the foreground locations, the 80:20 fallback split) come out bit-identical.

const N: usize = 624;
const M: usize = 397;

/// numpy's legacy `RandomState` (MT19937). Only the draws nnU-Net uses are provided.
#[derive(Clone)]
pub struct NumpyRandomState {
    mt: [u32; N],
    pos: usize,
}

impl NumpyRandomState {
    /// `np.random.RandomState(seed)` for an int seed: numpy's `_legacy_seeding` calls
    /// `mt19937_seed` (= Matsumoto's `init_genrand`), not `init_by_array`.
    pub fn new(seed: u32) -> Self {
        let mut mt = [0u32; N];
        mt[0] = seed;
        for i in 1..N {
            mt[i] = 1812433253u32.wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30)).wrapping_add(i as u32);
        }
        NumpyRandomState { mt, pos: N }
    }

    fn generate(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        const MATRIX_A: u32 = 0x9908_b0df;
        #[inline(always)]
        fn twist(a: u32, b: u32, m: u32) -> u32 {
            let y = (a & UPPER) | (b & LOWER);
            m ^ (y >> 1) ^ (if y & 1 == 1 { MATRIX_A } else { 0 })
        }
        // the reference's three loops (no modulo in the hot path)
        for i in 0..N - M {
            self.mt[i] = twist(self.mt[i], self.mt[i + 1], self.mt[i + M]);
        }
        for i in N - M..N - 1 {
            self.mt[i] = twist(self.mt[i], self.mt[i + 1], self.mt[i + M - N]);
        }
        self.mt[N - 1] = twist(self.mt[N - 1], self.mt[0], self.mt[M - 1]);
        self.pos = 0;
    }

    /// `mt19937_next32` (genrand_int32 with tempering).
    pub fn next_u32(&mut self) -> u32 {
        if self.pos >= N {
            self.generate();
        }
        let mut y = self.mt[self.pos];
        self.pos += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    fn next_u64(&mut self) -> u64 {
        let hi = self.next_u32() as u64;
        let lo = self.next_u32() as u64;
        (hi << 32) | lo
    }

    /// numpy `random_interval(max)`: uniform in [0, max] by masked rejection.
    pub fn random_interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        mask |= mask >> 1;
        mask |= mask >> 2;
        mask |= mask >> 4;
        mask |= mask >> 8;
        mask |= mask >> 16;
        mask |= mask >> 32;
        if max <= 0xffff_ffff {
            loop {
                let v = (self.next_u32() as u64) & mask;
                if v <= max {
                    return v;
                }
            }
        } else {
            loop {
                let v = self.next_u64() & mask;
                if v <= max {
                    return v;
                }
            }
        }
    }

    /// `RandomState.shuffle` of a 1-d array: Fisher-Yates from the end.
    pub fn shuffle<T>(&mut self, x: &mut [T]) {
        let n = x.len();
        for i in (1..n).rev() {
            let j = self.random_interval(i as u64) as usize;
            x.swap(i, j);
        }
    }

    /// `RandomState.permutation(n)`.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).collect();
        self.shuffle(&mut v);
        v
    }

    /// `RandomState.choice(n, size, replace=False)` = `permutation(n)[:size]`.
    pub fn choice_without_replacement(&mut self, n: usize, size: usize) -> Vec<usize> {
        let mut p = self.permutation(n);
        p.truncate(size);
        p
    }

    /// `RandomState.randint(0, n, size)` (legacy: masked rejection on 32 bits when n-1 fits),
    /// which is what `RandomState.choice(a, size, replace=True)` draws its indices with.
    pub fn randint_fill(&mut self, n: usize, size: usize) -> Vec<usize> {
        assert!(n > 0, "randint over an empty range");
        let rng = (n - 1) as u64;
        (0..size).map(|_| self.bounded_masked(rng) as usize).collect()
    }

    /// Like [`Self::randint_fill`], lazily.
    pub fn randint_fill_iter(&mut self, n: usize, size: usize) -> impl Iterator<Item = usize> + '_ {
        assert!(n > 0, "randint over an empty range");
        let rng = (n - 1) as u64;
        (0..size).map(move |_| self.bounded_masked(rng) as usize)
    }

    fn bounded_masked(&mut self, rng: u64) -> u64 {
        if rng == 0 {
            return 0;
        }
        if rng == 0xffff_ffff {
            return self.next_u32() as u64;
        }
        // random_bounded_uint64_fill: the same masked rejection as random_interval.
        self.random_interval(rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_matches_reference_stream() {
        // First outputs of init_genrand(5489) from Matsumoto & Nishimura's mt19937ar.out
        // (the canonical MT19937 test vector; numpy's RandomState(5489) gives the same).
        let mut r = NumpyRandomState::new(5489);
        let got: Vec<u32> = (0..5).map(|_| r.next_u32()).collect();
        assert_eq!(got, vec![3499211612, 581869302, 3890346734, 3586334585, 545404204]);
    }
}
