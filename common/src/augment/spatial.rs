//! Spatial augmentation (step 1 of `nnUNetTrainer.get_training_transforms`, batchgeneratorsv2
//! `transforms/spatial/spatial.py::SpatialTransform` with
//! `random_crop=False`, no elastic deformation) and mirroring (step 9).
//!
//! Geometry, read off bg2: the output grid is centred on the input centre. Output pixel `(i, j)` has
//! centred coordinates `g = (i - (P0-1)/2, j - (P1-1)/2)`, is mapped by `g' = g · (R·S)` and sampled
//! (grid_sample, `align_corners=False`) at input index `g' + (S_d - 1)/2`. The image is bilinear with
//! zero padding. The segmentation is resampled per label: each label's indicator is bilinearly
//! interpolated and the label with the highest value wins (ties go to the lower label); outside the
//! input counts as label -1 (`border_mode_seg='constant'`, `padding_value_seg=-1`: pad, then resample).
//! Without rotation and scaling the patch is a plain crop at `floor(S/2) - P/2`, padded with 0 / -1.
use super::{Image, Seg};

/// The crop used when neither rotation nor scaling fires (`crop_tensor` at the floored centre).
pub fn center_crop(image: &Image, seg: &Seg, patch: [usize; 2]) -> (Image, Seg) {
    let lo0 = (image.h / 2) as isize - (patch[0] / 2) as isize;
    let lo1 = (image.w / 2) as isize - (patch[1] / 2) as isize;
    crop(image, seg, [lo0, lo1], patch)
}

/// Copies the window `[lo, lo + patch)` (may reach outside), padding the image with 0 and the seg with -1.
pub fn crop(image: &Image, seg: &Seg, lo: [isize; 2], patch: [usize; 2]) -> (Image, Seg) {
    let (h, w) = (image.h as isize, image.w as isize);
    let mut out = Image::zeros(image.channels, patch[0], patch[1]);
    let mut sout = Seg { h: patch[0], w: patch[1], data: vec![-1; patch[0] * patch[1]] };
    // Valid column range, computed once: the inner copy is a plain memcpy.
    let j0 = (-lo[1]).clamp(0, patch[1] as isize) as usize;
    let j1 = (w - lo[1]).clamp(0, patch[1] as isize) as usize;
    if j0 >= j1 {
        return (out, sout);
    }
    let src_j0 = (lo[1] + j0 as isize) as usize;
    for i in 0..patch[0] {
        let si = lo[0] + i as isize;
        if si < 0 || si >= h {
            continue;
        }
        let si = si as usize;
        for c in 0..image.channels {
            let src = &image.channel(c)[si * image.w + src_j0..si * image.w + src_j0 + (j1 - j0)];
            out.channel_mut(c)[i * patch[1] + j0..i * patch[1] + j1].copy_from_slice(src);
        }
        let src = &seg.data[si * seg.w + src_j0..si * seg.w + src_j0 + (j1 - j0)];
        sout.data[i * patch[1] + j0..i * patch[1] + j1].copy_from_slice(src);
    }
    (out, sout)
}

/// Rotation by `angle` (radians) and isotropic scaling by `scale` about the input centre, output `patch`.
///
/// The sample position of output column `j` is affine in `j`, so each row is a walk along a line in
/// fixed point: no per-pixel matrix product, trig or float->int conversion, and one unsigned compare
/// per axis sends the (vast majority of) samples whose four neighbours are all inside down the fast path.
/// Channels are walked together in groups of up to four (positions and weights computed once per
/// pixel); the first group also resamples the labels.
pub fn rotate_scale(image: &Image, seg: &Seg, patch: [usize; 2], angle: f64, scale: f64) -> (Image, Seg) {
    assert_eq!((image.h, image.w), (seg.h, seg.w), "image and seg must have the same shape");
    let (c, s) = (angle.cos(), angle.sin());
    // A = R · diag(scale): [[s*c, -s*s'], [s*s', s*c]]; g' = g · A (row vector).
    let walk = Walk {
        a: [scale * c, -scale * s, scale * s, scale * c],
        off: [(image.h as f64 - 1.0) / 2.0, (image.w as f64 - 1.0) / 2.0],
        cen: [(patch[0] as f64 - 1.0) / 2.0, (patch[1] as f64 - 1.0) / 2.0],
        input: [image.h, image.w],
        patch,
    };
    let n_out = patch[0] * patch[1];
    let plane = image.h * image.w;
    let mut out = Image::zeros(image.channels, patch[0], patch[1]);
    let mut sout = Seg { h: patch[0], w: patch[1], data: vec![-1; n_out] };
    if image.channels == 0 || plane == 0 || n_out == 0 {
        let (zero_in, mut zero_out) = (vec![0.0; plane], vec![0.0; n_out]);
        walk.sample::<1>([&zero_in], [&mut zero_out], Some((&seg.data, &mut sout.data)));
        return (out, sout);
    }
    let srcs: Vec<&[f32]> = image.data.chunks_exact(plane).collect();
    let mut dsts: Vec<&mut [f32]> = out.data.chunks_exact_mut(n_out).collect();
    let mut first = true;
    let mut k = 0;
    while k < srcs.len() {
        let g = (srcs.len() - k).min(4);
        let sg = if first { Some((&seg.data[..], &mut sout.data[..])) } else { None };
        let d: Vec<&mut [f32]> = dsts.drain(..g).collect();
        match g {
            1 => walk.sample::<1>([srcs[k]], to_array(d), sg),
            2 => walk.sample::<2>([srcs[k], srcs[k + 1]], to_array(d), sg),
            3 => walk.sample::<3>([srcs[k], srcs[k + 1], srcs[k + 2]], to_array(d), sg),
            _ => walk.sample::<4>([srcs[k], srcs[k + 1], srcs[k + 2], srcs[k + 3]], to_array(d), sg),
        }
        first = false;
        k += g;
    }
    (out, sout)
}

fn to_array<T, const N: usize>(v: Vec<T>) -> [T; N] {
    v.try_into().unwrap_or_else(|v: Vec<T>| panic!("expected {N} planes, got {}", v.len()))
}

/// The affine sampling grid of [`rotate_scale`].
struct Walk {
    /// g' = g · A with A = [[a0, a1], [a2, a3]].
    a: [f64; 4],
    /// Input centre (index space) and output centre.
    off: [f64; 2],
    cen: [f64; 2],
    input: [usize; 2],
    patch: [usize; 2],
}

impl Walk {
    /// Bilinear resampling of `C` planes (zeros outside) and, optionally, of the label map (per-label
    /// bilinear vote, -1 outside). `dst` must be zeroed and the output labels set to -1.
    fn sample<const C: usize>(&self, src: [&[f32]; C], dst: [&mut [f32]; C], seg: Option<(&[i16], &mut [i16])>) {
        let (sd, mut so) = match seg {
            Some((a, b)) => (Some(a), Some(b)),
            None => (None, None),
        };
        let [a00, a01, a10, a11] = self.a;
        let [h, w] = self.input;
        let p1 = self.patch[1];
        let n_out = self.patch[0] * p1;
        assert!(src.iter().all(|s| s.len() == h * w) && sd.is_none_or(|sd| sd.len() == h * w), "input planes must hold h*w values");
        assert!(dst.iter().all(|d| d.len() == n_out) && so.as_ref().is_none_or(|so| so.len() == n_out), "output planes");
        let (hi, wi) = (h as isize, w as isize);
        // Inside test: y0 in [0, h-2] and x0 in [0, w-2], one unsigned compare each (negatives wrap).
        let (lim0, lim1) = (h.saturating_sub(1) as u32, w.saturating_sub(1) as u32);
        let (dy, dx) = (to_fixed(a10), to_fixed(a11));
        for i in 0..self.patch[0] {
            let g0 = i as f64 - self.cen[0];
            // Sample positions along the row in 32.32 fixed point: floor and fraction are a shift and a
            // mask (float->int conversions dominated the per-pixel cost); the step's rounding error is
            // 2^-33 px, so a 512-pixel row drifts by < 1e-7 px.
            let mut yf = to_fixed(g0 * a00 - self.cen[1] * a10 + self.off[0]);
            let mut xf = to_fixed(g0 * a01 - self.cen[1] * a11 + self.off[1]);
            let mut srow = so.as_deref_mut().map(|so| &mut so[i * p1..(i + 1) * p1]);
            for j in 0..p1 {
                let o = i * p1 + j;
                let (y0, x0) = ((yf >> 32) as i32, (xf >> 32) as i32);
                let (fy, fx) = (fixed_frac(yf), fixed_frac(xf));
                yf = yf.wrapping_add(dy);
                xf = xf.wrapping_add(dx);
                let wts = [(1.0 - fy) * (1.0 - fx), (1.0 - fy) * fx, fy * (1.0 - fx), fy * fx];
                if (y0 as u32) < lim0 && (x0 as u32) < lim1 {
                    // All four neighbours inside.
                    let p00 = y0 as usize * w + x0 as usize;
                    for c in 0..C {
                        // SAFETY: 0 <= y0 <= h-2 and 0 <= x0 <= w-2, so p00 + w + 1 <= (h-1)*w + w-1 < h*w;
                        // every input plane holds h*w values and every output plane n_out > o (asserted).
                        unsafe {
                            let s = src[c];
                            let v = wts[0] * *s.get_unchecked(p00)
                                + wts[1] * *s.get_unchecked(p00 + 1)
                                + wts[2] * *s.get_unchecked(p00 + w)
                                + wts[3] * *s.get_unchecked(p00 + w + 1);
                            *dst[c].get_unchecked_mut(o) = v;
                        }
                    }
                    if let (Some(sd), Some(so)) = (sd, &mut srow) {
                        // SAFETY: as above.
                        let l = unsafe {
                            [*sd.get_unchecked(p00), *sd.get_unchecked(p00 + 1), *sd.get_unchecked(p00 + w), *sd.get_unchecked(p00 + w + 1)]
                        };
                        so[j] = if l[0] == l[1] && l[0] == l[2] && l[0] == l[3] { l[0] } else { vote(&l, &wts) };
                    }
                    continue;
                }
                let (y0, x0) = (y0 as isize, x0 as isize);
                let pts = [(y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)];
                let mut idx = [usize::MAX; 4];
                for k in 0..4 {
                    let (py, px) = pts[k];
                    if py >= 0 && px >= 0 && py < hi && px < wi {
                        idx[k] = py as usize * w + px as usize;
                    }
                }
                if idx.iter().all(|&k| k == usize::MAX) {
                    continue; // image 0, seg -1 already
                }
                // Image: bilinear, zeros outside.
                for c in 0..C {
                    let mut v = 0.0f32;
                    for k in 0..4 {
                        if idx[k] != usize::MAX {
                            v += wts[k] * src[c][idx[k]];
                        }
                    }
                    dst[c][o] = v;
                }
                // Seg: outside counts as label -1.
                if let (Some(sd), Some(so)) = (sd, &mut srow) {
                    let l = [0, 1, 2, 3].map(|k| if idx[k] == usize::MAX { -1 } else { sd[idx[k]] });
                    so[j] = vote(&l, &wts);
                }
            }
        }
    }
}

/// A coordinate in 32.32 fixed point (positions stay within a few patch sizes of the input).
#[inline]
fn to_fixed(v: f64) -> i64 {
    (v * 4_294_967_296.0).round() as i64
}

/// The fractional part of a 32.32 fixed-point value, to 24 bits (f32's mantissa).
#[inline(always)]
fn fixed_frac(v: i64) -> f32 {
    ((v >> 8) & 0xFF_FFFF) as i32 as f32 * (1.0 / 16_777_216.0)
}

/// The label with the largest summed bilinear weight among the four neighbours (ties: lower label).
#[inline]
fn vote(labels: &[i16; 4], wts: &[f32; 4]) -> i16 {
    let mut lab = [0i16; 4];
    let mut acc = [0.0f32; 4];
    let mut n = 0usize;
    for k in 0..4 {
        match lab[..n].iter().position(|&x| x == labels[k]) {
            Some(p) => acc[p] += wts[k],
            None => {
                lab[n] = labels[k];
                acc[n] = wts[k];
                n += 1;
            }
        }
    }
    let mut best = 0usize;
    for p in 1..n {
        if acc[p] > acc[best] || (acc[p] == acc[best] && lab[p] < lab[best]) {
            best = p;
        }
    }
    lab[best]
}

/// Flips one (H, W) plane in place along `axis` (0 = rows/H, 1 = columns/W).
fn flip_plane<T>(d: &mut [T], h: usize, w: usize, axis: usize) {
    if axis == 0 {
        for i in 0..h / 2 {
            let (a, b) = d.split_at_mut((h - 1 - i) * w);
            a[i * w..(i + 1) * w].swap_with_slice(&mut b[..w]);
        }
    } else {
        d.chunks_exact_mut(w).for_each(|r| r.reverse());
    }
}

/// Flips image and seg together along `axis` (0 = rows/H, 1 = columns/W).
pub fn flip(image: &mut Image, seg: &mut Seg, axis: usize) {
    let (h, w) = (image.h, image.w);
    for c in 0..image.channels {
        flip_plane(image.channel_mut(c), h, w, axis);
    }
    flip_plane(&mut seg.data, h, w, axis);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(h: usize, w: usize) -> (Image, Seg) {
        let img = Image { channels: 1, h, w, data: (0..h * w).map(|i| i as f32).collect() };
        let seg = Seg { h, w, data: (0..h * w).map(|i| ((i % w) * 3 / w) as i16).collect() };
        (img, seg)
    }

    #[test]
    fn identity_transform_equals_center_crop() {
        let (img, seg) = ramp(10, 12);
        let (a, sa) = rotate_scale(&img, &seg, [6, 8], 0.0, 1.0);
        let (b, sb) = center_crop(&img, &seg, [6, 8]);
        assert_eq!(a.data, b.data);
        assert_eq!(sa.data, sb.data);
    }

    /// The definition, per pixel in f64 (grid_sample bilinear, zeros / label -1 outside).
    fn rotate_scale_direct(image: &Image, seg: &Seg, patch: [usize; 2], angle: f64, scale: f64) -> (Image, Seg) {
        let (c, s) = (angle.cos(), angle.sin());
        let a = [scale * c, -scale * s, scale * s, scale * c];
        let (h, w) = (image.h as isize, image.w as isize);
        let mut out = Image::zeros(image.channels, patch[0], patch[1]);
        let mut sout = Seg { h: patch[0], w: patch[1], data: vec![-1; patch[0] * patch[1]] };
        for i in 0..patch[0] {
            for j in 0..patch[1] {
                let g = [i as f64 - (patch[0] as f64 - 1.0) / 2.0, j as f64 - (patch[1] as f64 - 1.0) / 2.0];
                let y = g[0] * a[0] + g[1] * a[2] + (h as f64 - 1.0) / 2.0;
                let x = g[0] * a[1] + g[1] * a[3] + (w as f64 - 1.0) / 2.0;
                let (y0, x0) = (y.floor() as isize, x.floor() as isize);
                let (fy, fx) = ((y - y0 as f64) as f32, (x - x0 as f64) as f32);
                let wts = [(1.0 - fy) * (1.0 - fx), (1.0 - fy) * fx, fy * (1.0 - fx), fy * fx];
                let pts = [(y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)];
                let inside = |(py, px): (isize, isize)| py >= 0 && px >= 0 && py < h && px < w;
                if !pts.iter().any(|&p| inside(p)) {
                    continue;
                }
                for ch in 0..image.channels {
                    let v: f32 =
                        (0..4).filter(|&k| inside(pts[k])).map(|k| wts[k] * image.channel(ch)[(pts[k].0 * w + pts[k].1) as usize]).sum();
                    out.channel_mut(ch)[i * patch[1] + j] = v;
                }
                let l = [0, 1, 2, 3].map(|k| if inside(pts[k]) { seg.data[(pts[k].0 * w + pts[k].1) as usize] } else { -1 });
                sout.data[i * patch[1] + j] = vote(&l, &wts);
            }
        }
        (out, sout)
    }

    #[test]
    fn fixed_point_walk_matches_the_direct_definition() {
        let (h, w) = (37, 45);
        let seg = Seg { h, w, data: (0..h * w).map(|i| (((i / w) / 6 + (i % w) / 9) % 3) as i16).collect() };
        // 1..=6 channels: every channel-group size (and a second group after four).
        for (ch, (angle, scale)) in [(0.3, 1.0), (-2.1, 0.7), (1.0, 1.4), (3.0, 1.13), (0.0, 0.85), (-0.8, 1.2)].into_iter().enumerate() {
            let ch = ch + 1;
            let img = Image { channels: ch, h, w, data: (0..ch * h * w).map(|i| ((i * 7919) % 101) as f32 - 50.0).collect() };
            let (a, sa) = rotate_scale(&img, &seg, [32, 40], angle, scale);
            let (b, sb) = rotate_scale_direct(&img, &seg, [32, 40], angle, scale);
            for (x, y) in a.data.iter().zip(&b.data) {
                assert!((x - y).abs() < 1e-3, "angle {angle} scale {scale}: {x} vs {y}");
            }
            let differ = sa.data.iter().zip(&sb.data).filter(|(x, y)| x != y).count();
            assert!(differ <= 2, "angle {angle} scale {scale}: {differ} labels differ (only exact ties may)");
        }
    }

    #[test]
    fn crop_pads_with_zero_and_minus_one() {
        let (img, seg) = ramp(4, 4);
        let (a, s) = crop(&img, &seg, [-1, 2], [3, 3]);
        assert_eq!(a.data, vec![0.0, 0.0, 0.0, 2.0, 3.0, 0.0, 6.0, 7.0, 0.0]);
        assert_eq!(s.data[..3], [-1, -1, -1]);
        assert_eq!(s.data[5], -1);
    }

    #[test]
    fn rotation_by_90_degrees_permutes_pixels_and_keeps_labels_valid() {
        let (img, seg) = ramp(8, 8);
        let (r, s) = rotate_scale(&img, &seg, [8, 8], std::f64::consts::FRAC_PI_2, 1.0);
        // A 90° rotation of a square about its centre maps pixels onto pixels (up to fp rounding).
        let mut a = img.data.clone();
        let mut b: Vec<f32> = r.data.iter().map(|x| x.round()).collect();
        a.sort_by(f32::total_cmp);
        b.sort_by(f32::total_cmp);
        assert_eq!(a, b);
        assert!(s.data.iter().all(|&l| (0..3).contains(&l)));
        // rows of the rotated seg are constant (columns of the input were constant)
        assert!(s.data.chunks(8).all(|r| r.iter().all(|&x| x == r[0])));
    }

    #[test]
    fn zoom_out_pads_seg_with_minus_one() {
        let (img, seg) = ramp(8, 8);
        let (r, s) = rotate_scale(&img, &seg, [8, 8], 0.0, 1.4);
        assert_eq!(s.data[0], -1, "corner samples outside the input");
        assert!(r.data[0] < img.data[0] + 1e-6);
        assert!(s.data.iter().all(|&l| (-1..3).contains(&l)));
    }

    #[test]
    fn mirroring_flips_image_and_mask_together() {
        let (mut img, mut seg) = ramp(3, 4);
        seg.data = (0..12).map(|i| i as i16).collect();
        let (orig, oseg) = (img.clone(), seg.clone());
        flip(&mut img, &mut seg, 1);
        assert_eq!(&img.data[..4], &[3.0, 2.0, 1.0, 0.0]);
        for (x, l) in img.data.iter().zip(&seg.data) {
            assert_eq!(*x as i16, *l, "image and mask moved together");
        }
        flip(&mut img, &mut seg, 0);
        assert_eq!(&img.data[..4], &[11.0, 10.0, 9.0, 8.0]);
        for (x, l) in img.data.iter().zip(&seg.data) {
            assert_eq!(*x as i16, *l);
        }
        flip(&mut img, &mut seg, 0);
        flip(&mut img, &mut seg, 1);
        assert_eq!((img, seg), (orig, oseg));
    }
}
