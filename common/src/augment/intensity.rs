//! Intensity augmentations of batchgeneratorsv2 used by nnU-Net v2 (steps 2-8 of
//! `nnUNetTrainer.get_training_transforms`), per channel, in place.
use super::fastmath::{ln_pos, multiversion, pow_unit, stats, Moments};
use super::resize::{bilinear, nearest_exact, round_half_even};
use super::Image;

/// Standard normal samples by Box-Muller, branch-free so that it vectorizes. The uniforms come from a
/// counter-based generator keyed by `key` (two words the caller draws from its RNG, so a sample is
/// reproducible from its seed): word `n` is a two-round keyed `lowbias32` hash of the counter `n` (distinct counters
/// for the radius and the angle of every pair). `r = sqrt(-2 ln u1)` with [`ln_pos`] on 24-bit
/// `u1` in (0, 1] (tails reach 5.8 sigma); the angle's quadrant comes from two bits of the second word
/// and sin/cos of the remaining [0, π/2) from short Taylor polynomials about π/4 (error < 4e-7).
pub fn fill_standard_normal(out: &mut [f32], key: [u32; 2]) {
    let mut sin_part = vec![0.0f32; out.len().div_ceil(2)];
    box_muller(key, out, &mut sin_part);
}

/// Chris Wellons' `lowbias32` integer hash (a bijection with low avalanche bias).
#[inline(always)]
fn lowbias32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

multiversion! {
    /// [`fill_standard_normal`]'s transform; `sin_part` is ceil(n/2) scratch.
    fn box_muller(key: [u32; 2], out: &mut [f32], sin_part: &mut [f32]) {
        const U24: f32 = 1.0 / 16_777_216.0;
        let half = sin_part.len();
        let (lo, hi) = out.split_at_mut(half);
        for (i, (o, sp)) in lo.iter_mut().zip(sin_part.iter_mut()).enumerate() {
            let n = (i as u32).wrapping_mul(2);
            let w1 = lowbias32(lowbias32(n.wrapping_add(key[0])) ^ key[1]);
            let w2 = lowbias32(lowbias32(n.wrapping_add(1).wrapping_add(key[0])) ^ key[1]);
            let u1 = ((w1 >> 8) + 1) as f32 * U24; // (0, 1]
            let r = (-2.0 * ln_pos(u1)).sqrt();
            let q = w2 >> 30;
            let x = ((w2 & 0x3fff_ffff) >> 6) as f32 * (U24 * std::f32::consts::FRAC_PI_2) - std::f32::consts::FRAC_PI_4;
            let x2 = x * x;
            let sx = x * (1.0 + x2 * (-1.0 / 6.0 + x2 * (1.0 / 120.0 - x2 * (1.0 / 5040.0))));
            let cx = 1.0 + x2 * (-0.5 + x2 * (1.0 / 24.0 + x2 * (-1.0 / 720.0 + x2 * (1.0 / 40320.0))));
            // angle = π/4 + x in [0, π/2), then the quadrant q adds q·π/2.
            let (c, s) = ((cx - sx) * std::f32::consts::FRAC_1_SQRT_2, (sx + cx) * std::f32::consts::FRAC_1_SQRT_2);
            let (c, s) = if q & 1 == 1 { (-s, c) } else { (c, s) };
            let (c, s) = if q & 2 == 2 { (-c, -s) } else { (c, s) };
            *o = r * c;
            *sp = r * s;
        }
        let n_hi = hi.len();
        hi.copy_from_slice(&sin_part[..n_hi]);
    }
}

/// `GaussianNoiseTransform`: adds an own N(0, sigma²) field to every channel, channel `c` drawn
/// with `keys[c]` (see [`fill_standard_normal`]).
pub fn gaussian_noise(img: &mut Image, sigma: f32, keys: &[[u32; 2]]) {
    let mut noise = vec![0.0f32; img.h * img.w];
    for (c, &key) in keys.iter().enumerate().take(img.channels) {
        fill_standard_normal(&mut noise, key);
        for (x, n) in img.channel_mut(c).iter_mut().zip(&noise) {
            *x += sigma * n;
        }
    }
}

/// bg2 `_build_kernel(sigma, truncate=6)`: size = nearest odd of `6 sigma + 0.5`, normalized Gaussian.
pub fn gaussian_kernel(sigma: f64) -> Vec<f32> {
    let n = sigma * 6.0 + 0.5;
    let r = n.round();
    let ks = if (r as i64) % 2 == 1 {
        r as usize
    } else if n - r >= 0.0 {
        r as usize + 1
    } else {
        r as usize - 1
    };
    let half = (ks as f64 - 1.0) * 0.5;
    let k: Vec<f64> = (0..ks).map(|i| (-0.5 * ((i as f64 - half) / sigma).powi(2)).exp()).collect();
    let s: f64 = k.iter().sum();
    k.iter().map(|v| (v / s) as f32).collect()
}

/// torch `pad(mode='reflect')` index (the edge pixel is not repeated); `n >= 2` or the index is 0.
#[inline]
fn reflect(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let mut m = i.rem_euclid(period);
    if m >= n as isize {
        m = period - m;
    }
    m as usize
}

/// Separable Gaussian blur of one channel with per-axis sigmas, reflect padding.
pub fn gaussian_blur_channel(img: &mut Image, c: usize, sigmas: [f64; 2]) {
    let (h, w) = (img.h, img.w);
    blur_plane(img.channel_mut(c), h, w, sigmas);
}

multiversion! {
fn blur_plane(plane: &mut [f32], h: usize, w: usize, sigmas: [f64; 2]) {
    let mut tmp = vec![0.0f32; h * w];
    // Axis 0 (rows): out[i, j] = Σ_k k[t] in[reflect(i + t - r), j]
    let k0 = gaussian_kernel(sigmas[0]);
    let r0 = (k0.len() / 2) as isize;
    for i in 0..h {
        let orow = &mut tmp[i * w..(i + 1) * w];
        for (t, &kv) in k0.iter().enumerate() {
            let si = reflect(i as isize + t as isize - r0, h);
            let srow = &plane[si * w..(si + 1) * w];
            for (o, &s) in orow.iter_mut().zip(srow) {
                *o += kv * s;
            }
        }
    }
    // Axis 1 (columns), from tmp back into the plane.
    let k1 = gaussian_kernel(sigmas[1]);
    let r1 = (k1.len() / 2) as isize;
    let pad = r1 as usize;
    let mut padded = vec![0.0f32; w + 2 * pad];
    // Source index of each padded position that falls outside the row (the interior is a plain copy).
    let border: Vec<(usize, usize)> = (0..pad).chain(w + pad..w + 2 * pad).map(|p| (p, reflect(p as isize - r1, w))).collect();
    for i in 0..h {
        let src = &tmp[i * w..(i + 1) * w];
        padded[pad..pad + w].copy_from_slice(src);
        for &(p, q) in &border {
            padded[p] = src[q];
        }
        let orow = &mut plane[i * w..(i + 1) * w];
        orow.fill(0.0);
        // Tap-major (an axpy per tap) so the row vectorizes.
        for (t, &kv) in k1.iter().enumerate() {
            for (o, &v) in orow.iter_mut().zip(&padded[t..t + w]) {
                *o += kv * v;
            }
        }
    }
}
}

/// `MultiplicativeBrightnessTransform` on one channel: `x *= m`.
pub fn brightness(x: &mut [f32], m: f32) {
    x.iter_mut().for_each(|v| *v *= m);
}

/// `ContrastTransform(preserve_range=True)`: `x = (x - mean) * f + mean`, clamped to the original range.
pub fn contrast(x: &mut [f32], f: f32) {
    let st = stats(x, 1.0);
    contrast_map(x, st.mean as f32, f, st.min, st.max);
}

multiversion! {
    fn contrast_map(x: &mut [f32], mean: f32, f: f32, mn: f32, mx: f32) {
        for v in x.iter_mut() {
            *v = ((*v - mean) * f + mean).clamp(mn, mx);
        }
    }
}

/// `SimulateLowResolutionTransform` on one channel: nearest-exact down to `round(shape * s)`, bilinear back up.
pub fn simulate_low_resolution(img: &mut Image, c: usize, s: f64) {
    let (h, w) = (img.h, img.w);
    let (dh, dw) = (round_half_even(h as f64 * s).max(1), round_half_even(w as f64 * s).max(1));
    let plane = img.channel_mut(c);
    let small = nearest_exact(plane, h, w, dh, dw);
    let up = bilinear(&small, dh, dw, h, w);
    plane.copy_from_slice(&up);
}

/// `GammaTransform` on one channel: optional inversion, `((x - min)/range)^g * range + min`, and
/// (retain_stats) restoring the mean and std of before. Three passes (stats; power with the new
/// moments; restore), the inversion folded into them; the power is [`pow_unit`] (vectorized, relative
/// error < 2e-6).
pub fn gamma(x: &mut [f32], g: f32, invert: bool, retain_stats: bool) {
    const EPS: f32 = 1e-7;
    let sign = if invert { -1.0f32 } else { 1.0 };
    let before = stats(x, sign);
    let (mn, rng) = (before.min, before.max - before.min);
    let inv = 1.0 / rng.max(EPS);
    // The new values lie in [mn, mn + rng]: moments shifted by mn are well conditioned.
    let after = gamma_map(x, GammaMap { sign, mn, inv, rng, g, moments: retain_stats });
    let (shift, f, mean) = if retain_stats {
        let (m2, s2) = after.mean_std(mn);
        (m2 as f32, (before.std / s2.max(EPS as f64)) as f32, before.mean as f32)
    } else {
        (0.0, 1.0, 0.0)
    };
    if retain_stats || invert {
        x.iter_mut().for_each(|v| *v = sign * ((*v - shift) * f + mean));
    }
}

/// The per-pixel part of [`gamma`].
#[derive(Clone, Copy)]
struct GammaMap {
    sign: f32,
    mn: f32,
    inv: f32,
    rng: f32,
    g: f32,
    moments: bool,
}

multiversion! {
    /// `x = ((sign x - mn) inv)^g rng + mn`, and (when asked) the moments of the result shifted by `mn`.
    fn gamma_map(x: &mut [f32], m: GammaMap) -> Moments {
        let mut after = Moments::default();
        for block in x.chunks_mut(Moments::BLOCK) {
            for v in block.iter_mut() {
                *v = pow_unit(((m.sign * *v - m.mn) * m.inv).min(1.0), m.g) * m.rng + m.mn;
            }
            if m.moments {
                after.add_block(block, |v| v - m.mn);
            }
        }
        after
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngCore, SeedableRng};

    fn mean_min_max(x: &[f32]) -> (f32, f32) {
        let st = stats(x, 1.0);
        (st.min, st.max)
    }

    fn mean_std(x: &[f32]) -> (f64, f64) {
        let st = stats(x, 1.0);
        (st.mean, st.std)
    }

    fn img(data: Vec<f32>, h: usize, w: usize) -> Image {
        Image { channels: 1, h, w, data }
    }

    #[test]
    fn gamma_keeps_the_range_without_retain_stats_and_the_stats_with() {
        let x0: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin() * 3.0 + 1.0).collect();
        let (mn, mx) = mean_min_max(&x0);
        for g in [0.7f32, 1.5] {
            let mut x = x0.clone();
            gamma(&mut x, g, false, false);
            let (a, b) = mean_min_max(&x);
            assert!((a - mn).abs() < 1e-5 && (b - mx).abs() < 1e-5, "range kept");
            assert!(x != x0, "gamma {g} changed the values");
            // the mapping itself, against f64
            for (&o, &n) in x0.iter().zip(&x) {
                let want = (((o - mn) / (mx - mn)) as f64).powf(g as f64) * (mx - mn) as f64 + mn as f64;
                assert!((n as f64 - want).abs() < 1e-5, "{n} vs {want}");
            }
            let mut y = x0.clone();
            gamma(&mut y, g, true, true);
            let (m0, s0) = mean_std(&x0);
            let (m1, s1) = mean_std(&y);
            assert!((m0 - m1).abs() < 1e-4 && (s0 - s1).abs() < 1e-4, "stats retained");
            // inverted: 1 - ((1 - u)^g) on the unit range, before the stats restore
            let mut z = x0.clone();
            gamma(&mut z, g, true, false);
            for (&o, &n) in x0.iter().zip(&z) {
                let u = ((mx - o) / (mx - mn)) as f64;
                let want = -(u.powf(g as f64) * (mx - mn) as f64 - mx as f64);
                assert!((n as f64 - want).abs() < 1e-5, "inverted {n} vs {want}");
            }
        }
    }

    #[test]
    fn noise_changes_the_stats_by_sigma() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut im = img(vec![0.0; 256 * 256], 256, 256);
        gaussian_noise(&mut im, 0.1, &[[rng.next_u32(), rng.next_u32()]]);
        let (m, s) = mean_std(&im.data);
        assert!(m.abs() < 2e-3, "mean {m}");
        assert!((s - 0.1).abs() < 2e-3, "std {s}");
    }

    #[test]
    fn standard_normal_has_the_gaussian_shape() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut z = vec![0.0f32; 200_001]; // odd length: the last sample comes from a half-used pair
        fill_standard_normal(&mut z, [rng.next_u32(), rng.next_u32()]);
        let n = z.len() as f64;
        let within = |k: f32| z.iter().filter(|v| v.abs() < k).count() as f64 / n;
        assert!((within(1.0) - 0.6827).abs() < 0.005, "P(|z|<1) = {}", within(1.0));
        assert!((within(2.0) - 0.9545).abs() < 0.003, "P(|z|<2) = {}", within(2.0));
        assert!((within(3.0) - 0.9973).abs() < 0.001, "P(|z|<3) = {}", within(3.0));
        let kurt = z.iter().map(|&v| (v as f64).powi(4)).sum::<f64>() / n;
        assert!((kurt - 3.0).abs() < 0.1, "fourth moment {kurt}");
        // the two halves (cos and sin parts) are uncorrelated
        let h = z.len() / 2;
        let corr = (0..h).map(|i| z[i] as f64 * z[h + i] as f64).sum::<f64>() / h as f64;
        assert!(corr.abs() < 0.01, "cos/sin parts correlated: {corr}");
        assert!(z.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn blur_kernel_and_effect() {
        // bg2: sigma 1 -> round_to_nearest_odd(6.5) = 7 taps; sigma 0.5 -> 3.5 -> 3
        assert_eq!(gaussian_kernel(1.0).len(), 7);
        assert_eq!(gaussian_kernel(0.5).len(), 3);
        assert!((gaussian_kernel(0.8).iter().sum::<f32>() - 1.0).abs() < 1e-6);
        let mut im = img(vec![0.0; 81], 9, 9);
        im.data[40] = 1.0;
        gaussian_blur_channel(&mut im, 0, [1.0, 0.5]);
        assert!((im.data.iter().sum::<f32>() - 1.0).abs() < 1e-5, "mass preserved away from borders");
        assert!(im.data[40] < 1.0 && im.data[31] > 0.0 && im.data[39] > 0.0);
        assert!(im.data[31] > im.data[39], "sigma along rows is larger");
        // constant image stays constant (reflect padding)
        let mut c = img(vec![2.0; 30], 5, 6);
        gaussian_blur_channel(&mut c, 0, [1.0, 1.0]);
        assert!(c.data.iter().all(|&v| (v - 2.0).abs() < 1e-5));
    }

    #[test]
    fn contrast_preserves_range_and_low_res_keeps_constant() {
        let mut x: Vec<f32> = (0..50).map(|i| i as f32).collect();
        contrast(&mut x, 1.25);
        let (a, b) = mean_min_max(&x);
        assert!(a >= 0.0 && b <= 49.0);
        let mut im = img((0..64).map(|i| i as f32).collect(), 8, 8);
        let before = im.data.clone();
        simulate_low_resolution(&mut im, 0, 0.5);
        assert_ne!(im.data, before);
        let mut k = img(vec![3.0; 64], 8, 8);
        simulate_low_resolution(&mut k, 0, 0.6);
        assert!(k.data.iter().all(|&v| (v - 3.0).abs() < 1e-6));
    }

    #[test]
    fn brightness_scales_every_value_and_keeps_zero() {
        let mut x = vec![-2.0f32, 0.0, 0.5, 3.0];
        brightness(&mut x, 1.25);
        assert_eq!(x, vec![-2.5, 0.0, 0.625, 3.75]);
        let (m0, s0) = mean_std(&[-2.0, 0.0, 0.5, 3.0]);
        let (m1, s1) = mean_std(&x);
        assert!((m1 - 1.25 * m0).abs() < 1e-6 && (s1 - 1.25 * s0).abs() < 1e-6, "mean and std scale by m");
    }

    #[test]
    fn reflect_indices_match_torch() {
        // torch reflect pad of [a b c d] by 2: [c b a b c d c b]
        let idx: Vec<usize> = (-2..6).map(|i| reflect(i, 4)).collect();
        assert_eq!(idx, vec![2, 1, 0, 1, 2, 3, 2, 1]);
    }
}
