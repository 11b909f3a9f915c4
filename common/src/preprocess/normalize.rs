//! Per-channel intensity normalization (`nnunetv2/preprocessing/normalization/
//! default_normalization_schemes.py`: `ZScoreNormalization`, `CTNormalization`, `NoNormalization`,
//! `RescaleTo01Normalization`, `RGBTo01Normalization`).
use crate::plans::{IntensityProperties, Normalization};
use crate::{Error, Result};

/// Normalizes one channel in place (the scheme's `run(image, seg)`). Statistics are
/// accumulated in f64 and applied in f32, as numpy does with a float32 scalar.
pub fn normalize_channel(
    x: &mut [f32],
    seg: &[i16],
    scheme: Normalization,
    use_mask: bool,
    props: Option<&IntensityProperties>,
) -> Result<()> {
    const EPS: f64 = 1e-8;
    match scheme {
        Normalization::ZScore => {
            let sel = |i: usize| !use_mask || seg[i] >= 0;
            let (mut n, mut s) = (0usize, 0f64);
            for (i, &v) in x.iter().enumerate() {
                if sel(i) {
                    n += 1;
                    s += v as f64;
                }
            }
            if n == 0 {
                return Ok(());
            }
            let mean = s / n as f64;
            let mut ss = 0f64;
            for (i, &v) in x.iter().enumerate() {
                if sel(i) {
                    ss += (v as f64 - mean).powi(2);
                }
            }
            let std = (ss / n as f64).sqrt();
            let (m32, s32) = (mean as f32, std.max(EPS) as f32);
            for (i, v) in x.iter_mut().enumerate() {
                if sel(i) {
                    *v = (*v - m32) / s32;
                }
            }
        }
        Normalization::Ct => {
            let p =
                props.ok_or_else(|| Error::Invalid("CTNormalization needs the fingerprint's foreground intensity properties".into()))?;
            let (lo, hi) = (p.percentile_00_5 as f32, p.percentile_99_5 as f32);
            let (m, s) = (p.mean as f32, p.std.max(EPS) as f32);
            for v in x.iter_mut() {
                *v = (v.clamp(lo, hi) - m) / s;
            }
        }
        Normalization::NoNorm => {}
        Normalization::RescaleTo01 => {
            let mn = x.iter().cloned().fold(f32::MAX, f32::min);
            for v in x.iter_mut() {
                *v -= mn;
            }
            let mx = x.iter().cloned().fold(f32::MIN, f32::max).max(EPS as f32);
            for v in x.iter_mut() {
                *v /= mx;
            }
        }
        Normalization::RgbTo01 => {
            if x.iter().any(|&v| !(0.0..=255.0).contains(&v)) {
                return Err(Error::Invalid(
                    "RGBTo01Normalization (channel name 'rgb_to_0_1') needs values in 0..=255; this image has values outside it — rename the channel (e.g. 'R') to use z-score".into(),
                ));
            }
            for v in x.iter_mut() {
                *v /= 255.0;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zscore_with_and_without_mask() {
        let mut x = vec![1.0f32, 2.0, 3.0, 0.0];
        normalize_channel(&mut x, &[0, 0, 0, -1], Normalization::ZScore, true, None).unwrap();
        let s = (2.0f64 / 3.0).sqrt() as f32;
        assert_eq!(x, vec![-1.0 / s, 0.0, 1.0 / s, 0.0]);
        let mut y = vec![1.0f32, 3.0];
        normalize_channel(&mut y, &[0, -1], Normalization::ZScore, false, None).unwrap();
        assert_eq!(y, vec![-1.0, 1.0]);
        let mut r = vec![0.0f32, 255.0, 300.0];
        assert!(normalize_channel(&mut r, &[0, 0, 0], Normalization::RgbTo01, false, None).is_err());
    }
}
