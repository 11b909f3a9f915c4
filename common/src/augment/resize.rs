//! torch-compatible 2D resizing used by the augmentations: `interpolate(mode='nearest-exact')`
//! (low-resolution simulation, deep-supervision targets) and `interpolate(mode='bilinear',
//! align_corners=False)` (low-resolution upsampling).
use super::fastmath::multiversion;
use super::Seg;

/// Python's `round` (half to even, [`crate::stats::round_half_even`]) as a size, used by bg2 for
/// output sizes (negative values become 0).
pub fn round_half_even(x: f64) -> usize {
    crate::stats::round_half_even(x).max(0.0) as usize
}

/// Source index of `nearest-exact`: `min(floor((dst + 0.5) * in/out), in - 1)`.
fn nearest_exact_index(dst: usize, n_in: usize, n_out: usize) -> usize {
    let scale = n_in as f64 / n_out as f64;
    (((dst as f64 + 0.5) * scale).floor() as usize).min(n_in - 1)
}

/// `nearest-exact` resize of one plane.
pub fn nearest_exact<T: Copy>(src: &[T], h: usize, w: usize, oh: usize, ow: usize) -> Vec<T> {
    let cols: Vec<usize> = (0..ow).map(|j| nearest_exact_index(j, w, ow)).collect();
    let mut out = Vec::with_capacity(oh * ow);
    for i in 0..oh {
        let row = &src[nearest_exact_index(i, h, oh) * w..][..w];
        out.extend(cols.iter().map(|&j| row[j]));
    }
    out
}

/// Bilinear resize (align_corners=False, torch's source-index rule with clamping at 0). Separable:
/// each output row first blends its two source rows (vectorized), then two taps per output pixel.
pub fn bilinear(src: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    let lin = |n_in: usize, n_out: usize| -> Vec<(usize, usize, f32)> {
        let scale = n_in as f64 / n_out as f64;
        (0..n_out)
            .map(|d| {
                let s = ((d as f64 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (s.floor() as usize).min(n_in - 1);
                let i1 = (i0 + 1).min(n_in - 1);
                (i0, i1, (s - i0 as f64) as f32)
            })
            .collect()
    };
    let ry = lin(h, oh);
    let rx = lin(w, ow);
    let mut out = vec![0.0f32; oh * ow];
    bilinear_rows(src, w, &ry, &rx, &mut out);
    out
}

multiversion! {
    fn bilinear_rows(src: &[f32], w: usize, ry: &[(usize, usize, f32)], rx: &[(usize, usize, f32)], out: &mut [f32]) {
        let ow = rx.len();
        let mut row = vec![0.0f32; w];
        for (i, &(y0, y1, fy)) in ry.iter().enumerate() {
            let (r0, r1) = (&src[y0 * w..(y0 + 1) * w], &src[y1 * w..(y1 + 1) * w]);
            for ((v, &a), &b) in row.iter_mut().zip(r0).zip(r1) {
                *v = a + (b - a) * fy;
            }
            let orow = &mut out[i * ow..(i + 1) * ow];
            for (o, &(x0, x1, fx)) in orow.iter_mut().zip(rx) {
                *o = row[x0] + (row[x1] - row[x0]) * fx;
            }
        }
    }
}

/// bg2 `DownsampleSegForDSTransform`: a target per scale; scale 1 is the seg itself (moved, not
/// copied), others are `nearest-exact` resized to `round(shape * scale)`.
pub fn deep_supervision_targets(seg: Seg, scales: &[Vec<f64>]) -> Vec<Seg> {
    if scales.is_empty() {
        return vec![seg];
    }
    let mut out: Vec<Option<Seg>> = scales
        .iter()
        .map(|s| {
            if s.iter().all(|&x| x == 1.0) {
                None
            } else {
                let oh = round_half_even(seg.h as f64 * s[0]);
                let ow = round_half_even(seg.w as f64 * s[s.len() - 1]);
                Some(Seg { h: oh, w: ow, data: nearest_exact(&seg.data, seg.h, seg.w, oh, ow) })
            }
        })
        .collect();
    let identity: Vec<usize> = (0..out.len()).filter(|&k| out[k].is_none()).collect();
    if let Some((&first, rest)) = identity.split_first() {
        for &k in rest {
            out[k] = Some(seg.clone());
        }
        out[first] = Some(seg);
    }
    out.into_iter().map(|t| t.expect("every scale has a target")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_exact_matches_torch() {
        // torch: F.interpolate(torch.arange(5.)[None,None,None], size=(1,2), mode='nearest-exact') -> [1, 3]
        let src: Vec<f32> = (0..5).map(|i| i as f32).collect();
        assert_eq!(nearest_exact(&src, 1, 5, 1, 2), vec![1.0, 3.0]);
        // downsampling by 2 picks the odd pixels: [0..8) -> [1, 3, 5, 7]
        let src: Vec<i16> = (0..8).collect();
        assert_eq!(nearest_exact(&src, 1, 8, 1, 4), vec![1, 3, 5, 7]);
    }

    #[test]
    fn bilinear_matches_torch() {
        // torch: F.interpolate(torch.tensor([[[[0., 1.]]]]), size=(1,4), mode='bilinear') -> [0, .25, .75, 1]
        assert_eq!(bilinear(&[0.0, 1.0], 1, 2, 1, 4), vec![0.0, 0.25, 0.75, 1.0]);
        let same: Vec<f32> = (0..6).map(|i| i as f32).collect();
        assert_eq!(bilinear(&same, 2, 3, 2, 3), same);
    }

    #[test]
    fn ds_target_shapes() {
        let seg = Seg { h: 512, w: 512, data: vec![1; 512 * 512] };
        let scales: Vec<Vec<f64>> = (0..7).map(|i| vec![1.0 / (1u32 << i) as f64; 2]).collect();
        let t = deep_supervision_targets(seg, &scales);
        let sizes: Vec<usize> = t.iter().map(|s| s.h).collect();
        assert_eq!(sizes, vec![512, 256, 128, 64, 32, 16, 8]);
        assert!(t.iter().all(|s| s.data.len() == s.h * s.w && s.data.iter().all(|&l| l == 1)));
        assert_eq!(round_half_even(2.5), 2);
        assert_eq!(round_half_even(3.5), 4);
        assert_eq!(round_half_even(3.4), 3);
    }
}
