//! Intensity augmentations of bg2 used by nnU-Net v2 (SPEC §8.1 steps 2-8), per channel, in place.
use super::resize::{bilinear, nearest_exact, round_half_even};
use super::Image;
use rand::Rng;

/// Standard normal samples (Marsaglia's polar method in f32: one `ln` and one `sqrt` per pair, no trig).
pub fn fill_standard_normal<R: Rng + ?Sized>(out: &mut [f32], rng: &mut R) {
    const SCALE: f32 = 1.0 / (1u32 << 23) as f32;
    let mut i = 0;
    while i < out.len() {
        let r = rng.next_u64();
        // Two uniforms in (-1, 1) from the 23 high bits of each half.
        let u = ((r >> 41) as f32) * SCALE * 2.0 - 1.0;
        let v = (((r >> 9) & 0x7f_ffff) as f32) * SCALE * 2.0 - 1.0;
        let s = u * u + v * v;
        if s >= 1.0 || s == 0.0 {
            continue;
        }
        let f = (-2.0 * s.ln() / s).sqrt();
        out[i] = u * f;
        if i + 1 < out.len() {
            out[i + 1] = v * f;
        }
        i += 2;
    }
}

/// `GaussianNoiseTransform`: adds an own N(0, sigma²) field to every channel.
pub fn gaussian_noise<R: Rng + ?Sized>(img: &mut Image, sigma: f32, rng: &mut R) {
    let mut noise = vec![0.0f32; img.h * img.w];
    for c in 0..img.channels {
        fill_standard_normal(&mut noise, rng);
        for (x, n) in img.channel_mut(c).iter_mut().zip(&noise) {
            *x += sigma * n;
        }
    }
}

/// bg2 `_build_kernel(sigma, truncate=6)`: size = nearest odd of `6 sigma + 0.5`, normalized Gaussian.
pub fn gaussian_kernel(sigma: f64) -> Vec<f32> {
    let n = sigma * 6.0 + 0.5;
    let r = n.round();
    let ks = if (r as i64) % 2 == 1 { r as usize } else if n - r >= 0.0 { r as usize + 1 } else { r as usize - 1 };
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
    let plane = img.channel_mut(c);
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
    let mut padded = vec![0.0f32; w + 2 * r1 as usize];
    for i in 0..h {
        let src = &tmp[i * w..(i + 1) * w];
        for (p, v) in padded.iter_mut().enumerate() {
            *v = src[reflect(p as isize - r1, w)];
        }
        let orow = &mut plane[i * w..(i + 1) * w];
        for (j, o) in orow.iter_mut().enumerate() {
            let win = &padded[j..j + k1.len()];
            *o = win.iter().zip(&k1).map(|(a, b)| a * b).sum();
        }
    }
}

fn mean_min_max(x: &[f32]) -> (f32, f32, f32) {
    let (mut s, mut mn, mut mx) = (0.0f64, f32::INFINITY, f32::NEG_INFINITY);
    for &v in x {
        s += v as f64;
        mn = mn.min(v);
        mx = mx.max(v);
    }
    ((s / x.len().max(1) as f64) as f32, mn, mx)
}

/// torch `std()` (unbiased) and mean.
fn mean_std(x: &[f32]) -> (f64, f64) {
    // One pass over shifted values (shift = first element) keeps the sum of squares well conditioned.
    let n = x.len() as f64;
    let shift = x.first().copied().unwrap_or(0.0);
    let (mut s, mut ss) = (0.0f64, 0.0f64);
    for &v in x {
        let d = (v - shift) as f64;
        s += d;
        ss += d * d;
    }
    let m = s / n;
    let var = ((ss - s * m) / (n - 1.0).max(1.0)).max(0.0);
    (m + shift as f64, var.sqrt())
}

/// `ContrastTransform(preserve_range=True)`: `x = (x - mean) * f + mean`, clamped to the original range.
pub fn contrast(x: &mut [f32], f: f32) {
    let (mean, mn, mx) = mean_min_max(x);
    for v in x.iter_mut() {
        *v = ((*v - mean) * f + mean).clamp(mn, mx);
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
/// (retain_stats) restoring the mean and std of before.
pub fn gamma(x: &mut [f32], g: f32, invert: bool, retain_stats: bool) {
    const EPS: f64 = 1e-7;
    if invert {
        x.iter_mut().for_each(|v| *v = -*v);
    }
    let (mean, std) = if retain_stats { mean_std(x) } else { (0.0, 0.0) };
    let (_, mn, mx) = mean_min_max(x);
    let rng = mx - mn;
    let denom = rng.max(EPS as f32);
    for v in x.iter_mut() {
        *v = ((*v - mn) / denom).powf(g) * rng + mn;
    }
    if retain_stats {
        let (m2, s2) = mean_std(x);
        let f = (std / s2.max(EPS)) as f32;
        let (m2, mean) = (m2 as f32, mean as f32);
        x.iter_mut().for_each(|v| *v = (*v - m2) * f + mean);
    }
    if invert {
        x.iter_mut().for_each(|v| *v = -*v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn img(data: Vec<f32>, h: usize, w: usize) -> Image {
        Image { channels: 1, h, w, data }
    }

    #[test]
    fn gamma_keeps_the_range_without_retain_stats_and_the_stats_with() {
        let x0: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin() * 3.0 + 1.0).collect();
        let (_, mn, mx) = mean_min_max(&x0);
        for g in [0.7f32, 1.5] {
            let mut x = x0.clone();
            gamma(&mut x, g, false, false);
            let (_, a, b) = mean_min_max(&x);
            assert!((a - mn).abs() < 1e-5 && (b - mx).abs() < 1e-5, "range kept");
            assert!(x != x0, "gamma {g} changed the values");
            let mut y = x0.clone();
            gamma(&mut y, g, true, true);
            let (m0, s0) = mean_std(&x0);
            let (m1, s1) = mean_std(&y);
            assert!((m0 - m1).abs() < 1e-4 && (s0 - s1).abs() < 1e-4, "stats retained");
        }
    }

    #[test]
    fn noise_changes_the_stats_by_sigma() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut im = img(vec![0.0; 256 * 256], 256, 256);
        gaussian_noise(&mut im, 0.1, &mut rng);
        let (m, s) = mean_std(&im.data);
        assert!(m.abs() < 2e-3, "mean {m}");
        assert!((s - 0.1).abs() < 2e-3, "std {s}");
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
        let (_, a, b) = mean_min_max(&x);
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
    fn reflect_indices_match_torch() {
        // torch reflect pad of [a b c d] by 2: [c b a b c d c b]
        let idx: Vec<usize> = (-2..6).map(|i| reflect(i, 4)).collect();
        assert_eq!(idx, vec![2, 1, 0, 1, 2, 3, 2, 1]);
    }
}
