//! numpy-compatible statistics, shared by the fingerprint, planning and evaluation so that every
//! number we write agrees with nnU-Net v2's to the last bit on typical inputs: `np.percentile`
//! (linear interpolation, numpy's `_lerp`), Python 3's `round()`, and `np.mean`/`np.nanmean`
//! with numpy's pairwise summation.

/// `np.percentile(v, q)` with the default linear interpolation.
pub fn percentile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert!(!s.is_empty(), "percentile of an empty array");
    percentile_by_rank(s.len() as u64, q, |k| s[k as usize])
}

/// The percentile of a multiset of `total` values whose k-th smallest is `kth(k)` (numpy's
/// linear interpolation between the two ranks around `q / 100 * (total - 1)`).
pub fn percentile_by_rank(total: u64, q: f64, kth: impl Fn(u64) -> f64) -> f64 {
    let idx = q / 100.0 * (total - 1) as f64;
    let lo = idx.floor() as u64;
    let hi = (lo + 1).min(total - 1);
    lerp(kth(lo), kth(hi), idx - lo as f64)
}

/// numpy's `_lerp`, which switches formula at t >= 0.5 for monotonicity.
pub fn lerp(a: f64, b: f64, t: f64) -> f64 {
    let d = b - a;
    if t >= 0.5 {
        b - d * (1.0 - t)
    } else {
        a + d * t
    }
}

/// Python 3's `round()` (banker's rounding).
pub fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 {
        2.0 * (x / 2.0).round()
    } else {
        r
    }
}

/// numpy's pairwise summation (`numpy/core/src/umath/loops_utils.h.src::pairwise_sum`), so our
/// means agree with `np.mean`/`np.nanmean` to the last bit on typical inputs.
pub fn pairwise_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        let mut res = 0.0;
        for &x in a {
            res += x;
        }
        res
    } else if n <= 128 {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - (n % 8) {
            for j in 0..8 {
                r[j] += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &x in &a[i..] {
            res += x;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
    }
}

/// `np.nanmean`: NaNs are replaced by 0 for the sum and not counted.
pub fn nanmean(values: &[f64]) -> f64 {
    let n = values.iter().filter(|v| !v.is_nan()).count();
    if n == 0 {
        return f64::NAN;
    }
    let zeroed: Vec<f64> = values.iter().map(|&v| if v.is_nan() { 0.0 } else { v }).collect();
    pairwise_sum(&zeroed) / n as f64
}

/// `np.mean` (NaN for an empty slice).
pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    pairwise_sum(values) / values.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_and_rounding_match_numpy() {
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 50.0), 2.5);
        assert!((percentile(&[5.0, 1.0, 3.0], 10.0) - 1.4).abs() < 1e-12);
        assert_eq!(round_half_even(2.5), 2.0);
        assert_eq!(round_half_even(3.5), 4.0);
        assert_eq!(round_half_even(-0.4), 0.0);
    }

    #[test]
    fn pairwise_sum_matches_sequential_for_short_and_is_blocked_for_long() {
        assert_eq!(pairwise_sum(&[1.0, 2.0, 3.0]), 6.0);
        // numpy: np.sum(np.full(20, 0.1)) == 2.0000000000000004, the sequential sum is 2.0000000000000004 too,
        // but blocking differs for e.g. this sequence (checked with numpy: np.add.reduce).
        let v: Vec<f64> = (0..20).map(|i| 0.1 * i as f64).collect();
        let seq: f64 = v.iter().sum();
        assert!((pairwise_sum(&v) - seq).abs() < 1e-12);
        assert!(nanmean(&[f64::NAN, 1.0, 2.0]) == 1.5);
    }
}
