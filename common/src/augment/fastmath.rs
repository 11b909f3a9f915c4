//! Branch-free `f32` kernels for the per-pixel work of the augmentations, written so that the compiler
//! vectorizes them with the x86-64 baseline (SSE2) and any other target: `ln`/`exp`/`pow` from range
//! reduction plus short polynomials (an atanh series for `ln`, the classic single-precision Cephes
//! polynomial for `exp`), and statistics with `f32` lane accumulators flushed into `f64` per block.
//!
//! libm's `powf` costs ~8 ns per call here and cannot be vectorized; `pow_unit` over a 512² plane is ~6x
//! faster. Accuracy (tested below against `f64`): relative error < 2e-6 over the gamma transform's domain.

/// Whether the CPU has AVX2 and FMA (checked once).
#[cfg(target_arch = "x86_64")]
pub fn has_avx2_fma() -> bool {
    use std::sync::OnceLock;
    static AVX2: OnceLock<bool> = OnceLock::new();
    *AVX2.get_or_init(|| std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"))
}

/// Defines a function whose body is compiled twice, for the baseline and for AVX2+FMA, and picks the
/// AVX2 copy at run time when the CPU has it (libtorch dispatches its CPU kernels the same way). The
/// body and the `#[inline(always)]` kernels it calls are inlined into each copy, so the same source
/// vectorizes 4-wide (SSE2) or 8-wide (AVX2).
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                if $crate::augment::fastmath::has_avx2_fma() {
                    // SAFETY: the CPU supports AVX2 and FMA (detected at run time).
                    return unsafe { avx2($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    };
}
pub(crate) use multiversion;

const LN2_HI: f32 = 0.693_359_4; // 0.693359375: exact in f32, few mantissa bits
const LN2_LO: f32 = -2.121_944_4e-4; // ln 2 - LN2_HI
const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;

/// Natural log for positive normal `x` (callers mask zero/subnormal inputs): `x = m 2^e` with `m` in
/// [sqrt(1/2), sqrt(2)), then `ln m = 2 atanh(t)`, `t = (m-1)/(m+1)` in [-0.172, 0.172], by its series to
/// t^7 (truncation < 3e-8); one division and a degree-3 polynomial in t².
#[inline(always)]
pub fn ln_pos(x: f32) -> f32 {
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 126; // x = m * 2^e with m in [0.5, 1)
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f00_0000);
    let small = m < SQRT_HALF;
    e -= small as i32;
    m = if small { m + m } else { m };
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    let t4 = t2 * t2;
    // 1 + t²/3 + t⁴/5 + t⁶/7 in Estrin form (shorter dependency chain than Horner).
    let p = (1.0 + t2 * (1.0 / 3.0)) + t4 * ((1.0 / 5.0) + t2 * (1.0 / 7.0));
    let ef = e as f32;
    (2.0 * t) * p + ef * LN2_LO + ef * LN2_HI
}

/// `floor` to an integer without libm (saturates far outside `i32`).
#[inline(always)]
pub fn floor_i32(v: f32) -> i32 {
    let t = v as i32;
    t - ((v < t as f32) as i32)
}

/// `exp` for `x` in [-87, 88]; below -87 it returns 0 (the true value is < 2^-125).
#[inline(always)]
pub fn exp_clamped(x: f32) -> f32 {
    // Round-to-nearest by the 1.5 * 2^23 trick: n = round(x / ln 2) in float and integer form, no
    // float->int conversion (Rust's saturating `as` blocks vectorization).
    const MAGIC: f32 = 12_582_912.0;
    let under = x < -87.0;
    let xc = x.clamp(-87.0, 88.0);
    let big = xc * std::f32::consts::LOG2_E + MAGIC;
    let nf = big - MAGIC;
    let n = big.to_bits() as i32 - MAGIC.to_bits() as i32;
    let r = xc - nf * LN2_HI - nf * LN2_LO;
    let z = r * r;
    // Cephes' expf polynomial, evaluated in Estrin form.
    let q0 = 0.5 + 1.666_666_5e-1 * r;
    let q1 = 4.166_579_6e-2 + 8.333_452e-3 * r;
    let q2 = 1.398_199_9e-3 + 1.987_569_1e-4 * r;
    let p = q0 + z * (q1 + z * q2);
    let y = p * z + r + 1.0;
    let scale = f32::from_bits(((n + 127) as u32) << 23);
    if under {
        0.0
    } else {
        y * scale
    }
}

/// `u^g` for `u` in [0, 1] and `g > 0` (the gamma transform's domain): exactly 0 at 0 and 1 at 1.
#[inline(always)]
pub fn pow_unit(u: f32, g: f32) -> f32 {
    let tiny = u < f32::MIN_POSITIVE;
    let v = exp_clamped(g * ln_pos(if tiny { 1.0 } else { u }));
    if tiny {
        0.0
    } else {
        v
    }
}

multiversion! {
    /// Mean, unbiased standard deviation (torch `std()`), min and max of `sign * x`.
    pub fn stats(x: &[f32], sign: f32) -> Stats {
        if x.is_empty() {
            return Stats { mean: 0.0, std: 0.0, min: f32::INFINITY, max: f32::NEG_INFINITY };
        }
        // Block by block (each block is L1-resident for its second look): one pass over memory.
        let shift = sign * x[0];
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        let mut acc = Moments::default();
        for block in x.chunks(Moments::BLOCK) {
            let (l, h) = min_max(block);
            lo = lo.min(l);
            hi = hi.max(h);
            acc.add_block(block, |v| sign * v - shift);
        }
        let (min, max) = if sign < 0.0 { (-hi, -lo) } else { (lo, hi) };
        let (mean, std) = acc.mean_std(shift);
        Stats { mean, std, min, max }
    }
}

/// Minimum and maximum (NaNs ignored). Two 8-lane folds, one reduction each: the form that LLVM
/// vectorizes cleanly both for SSE2 and AVX2 (a fused min/max lane loop is mis-vectorized for AVX2).
#[inline(always)]
pub fn min_max(x: &[f32]) -> (f32, f32) {
    const L: usize = 8;
    let lanes = x.chunks_exact(L);
    let rest = lanes.remainder();
    let mn = lanes.clone().fold([f32::INFINITY; L], |mut a, c| {
        for k in 0..L {
            a[k] = if c[k] < a[k] { c[k] } else { a[k] };
        }
        a
    });
    let mx = lanes.fold([f32::NEG_INFINITY; L], |mut a, c| {
        for k in 0..L {
            a[k] = if c[k] > a[k] { c[k] } else { a[k] };
        }
        a
    });
    let lo = mn.iter().chain(rest).copied().fold(f32::INFINITY, f32::min);
    let hi = mx.iter().chain(rest).copied().fold(f32::NEG_INFINITY, f32::max);
    (lo, hi)
}

/// Running sum and sum of squares of (already shifted) values: `f32` lanes within a block of at most
/// [`Moments::BLOCK`] values, `f64` across blocks.
#[derive(Debug, Default, Clone, Copy)]
pub struct Moments {
    n: usize,
    s: f64,
    ss: f64,
}

impl Moments {
    pub const BLOCK: usize = 4096;

    /// Adds `f(v)` for every `v` of `block` (`block.len() <= BLOCK`).
    #[inline(always)]
    pub fn add_block(&mut self, block: &[f32], f: impl Fn(f32) -> f32) {
        // Two single-reduction lane loops (a fused sum/sum-of-squares loop is mis-vectorized).
        const L: usize = 8;
        let lanes = block.chunks_exact(L);
        let rest = lanes.remainder();
        let mut bs = [0.0f32; L];
        for c in lanes.clone() {
            for (a, &v) in bs.iter_mut().zip(c) {
                *a += f(v);
            }
        }
        let mut bss = [0.0f32; L];
        for c in lanes {
            for (a, &v) in bss.iter_mut().zip(c) {
                let d = f(v);
                *a += d * d;
            }
        }
        for &v in rest {
            let d = f(v);
            bs[0] += d;
            bss[0] += d * d;
        }
        self.n += block.len();
        self.s += bs.iter().map(|&v| v as f64).sum::<f64>();
        self.ss += bss.iter().map(|&v| v as f64).sum::<f64>();
    }

    /// Mean (of the unshifted values, given the shift) and unbiased standard deviation.
    pub fn mean_std(&self, shift: f32) -> (f64, f64) {
        let nf = self.n.max(1) as f64;
        let m = self.s / nf;
        let var = ((self.ss - self.s * m) / (nf - 1.0).max(1.0)).max(0.0);
        (m + shift as f64, var.sqrt())
    }
}

/// What [`stats`] returns.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    pub mean: f64,
    pub std: f64,
    pub min: f32,
    pub max: f32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_exp_pow_match_f64() {
        let mut worst_ln = 0.0f64;
        let mut worst_exp = 0.0f64;
        let mut worst_pow = 0.0f64;
        for i in 1..200_000u32 {
            let u = i as f32 / 200_000.0;
            let l = ln_pos(u) as f64;
            worst_ln = worst_ln.max((l - (u as f64).ln()).abs() / (u as f64).ln().abs().max(1e-3));
            let x = -87.0 + 175.0 * u;
            let e = exp_clamped(x) as f64;
            worst_exp = worst_exp.max((e - (x as f64).exp()).abs() / (x as f64).exp());
            for g in [0.7f32, 1.0, 1.37, 1.5] {
                let want = (u as f64).powf(g as f64);
                worst_pow = worst_pow.max((pow_unit(u, g) as f64 - want).abs() / want);
            }
        }
        assert!(worst_ln < 1e-6, "ln rel err {worst_ln}");
        assert!(worst_exp < 1e-6, "exp rel err {worst_exp}");
        assert!(worst_pow < 2e-6, "pow rel err {worst_pow}");
        // exact end points and the masked inputs
        for g in [0.7f32, 1.0, 1.5] {
            assert_eq!(pow_unit(1.0, g), 1.0);
            assert_eq!(pow_unit(0.0, g), 0.0);
            assert_eq!(pow_unit(1e-40, g), 0.0);
        }
        assert_eq!(exp_clamped(-200.0), 0.0);
        assert_eq!(exp_clamped(0.0), 1.0);
        assert_eq!(floor_i32(-0.5), -1);
        assert_eq!(floor_i32(-1.0), -1);
        assert_eq!(floor_i32(2.999), 2);
    }

    #[test]
    fn stats_match_f64_two_pass() {
        let x: Vec<f32> = (0..10_007).map(|i| ((i as f32) * 0.731).sin() * 50.0 + 1000.0).collect();
        for sign in [1.0f32, -1.0] {
            let st = stats(&x, sign);
            let v: Vec<f64> = x.iter().map(|&a| (sign * a) as f64).collect();
            let m = v.iter().sum::<f64>() / v.len() as f64;
            let sd = (v.iter().map(|a| (a - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt();
            assert!((st.mean - m).abs() < 1e-6 * m.abs(), "{} vs {m}", st.mean);
            assert!((st.std - sd).abs() < 1e-4 * sd, "{} vs {sd}", st.std);
            let (mn, mx) = v.iter().fold((f64::MAX, f64::MIN), |(a, b), &c| (a.min(c), b.max(c)));
            assert_eq!((st.min as f64, st.max as f64), (mn, mx));
        }
        let one = stats(&[3.0], 1.0);
        assert_eq!((one.mean, one.std, one.min, one.max), (3.0, 0.0, 3.0, 3.0));
    }
}
