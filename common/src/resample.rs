//! Resampling as nnU-Net v2 does it (`nnunetv2/preprocessing/resampling/default_resampling.py`):
//! `resample_data_or_seg_to_shape` with the separate-z rule, data through skimage
//! `resize(order, mode='edge', anti_aliasing=False, clip=True)`, segmentations through
//! batchgenerators' `resize_segmentation` (per-label one-hot, order 1, >= 0.5), z through
//! `map_coordinates(order_z=0, mode='nearest')`.
//!
//! skimage's resize is `scipy.ndimage.zoom(grid_mode=True, mode='nearest')`: for order > 1 the input
//! is padded by 12 voxels (edge), B-spline prefiltered (mirror-symmetric "reflect" initialization, the
//! one scipy uses for mode 'nearest'), and sampled at `(i + 0.5) * in/out - 0.5`,
//! `[0, n-1]`. Tensor-product B-splines are separable, so we prefilter and interpolate one axis at a
//! time (same result up to float rounding). Everything runs in f64 like skimage.

use crate::stats::round_half_even;

/// Spacing ratio above which an axis is resampled separately (`nnunetv2/configuration.py::ANISO_THRESHOLD`).
pub const ANISO_THRESHOLD: f64 = 3.0;

/// `default_resampling.py::compute_new_shape`: `round(old_spacing / new_spacing * old_shape)`
/// (Python's round: half to even).
pub fn compute_new_shape(old_shape: &[usize], old_spacing: &[f64], new_spacing: &[f64]) -> Vec<usize> {
    old_shape.iter().zip(old_spacing).zip(new_spacing).map(|((&k, &i), &j)| round_half_even(i / j * k as f64) as usize).collect()
}

/// 3D array (Z, X, Y) in f64, C order.
#[derive(Clone, Debug)]
struct Vol {
    shape: [usize; 3],
    v: Vec<f64>,
}

fn strides(shape: [usize; 3]) -> [usize; 3] {
    [shape[1] * shape[2], shape[2], 1]
}

/// Applies `f(line_in) -> line_out (len new_len)` to every 1-d line along `axis`.
#[allow(clippy::needless_range_loop)] // index arithmetic over three axes reads best with explicit indices
fn map_lines(a: &Vol, axis: usize, new_len: usize, mut f: impl FnMut(&[f64], &mut [f64])) -> Vol {
    let mut shape = a.shape;
    shape[axis] = new_len;
    let sin = strides(a.shape);
    let sout = strides(shape);
    let mut out = vec![0.0; shape.iter().product()];
    let n = a.shape[axis];
    let mut line = vec![0.0; n];
    let mut res = vec![0.0; new_len];
    let others: Vec<usize> = (0..3).filter(|&d| d != axis).collect();
    for i in 0..a.shape[others[0]] {
        for j in 0..a.shape[others[1]] {
            let bin = i * sin[others[0]] + j * sin[others[1]];
            let bout = i * sout[others[0]] + j * sout[others[1]];
            for k in 0..n {
                line[k] = a.v[bin + k * sin[axis]];
            }
            f(&line, &mut res);
            for k in 0..new_len {
                out[bout + k * sout[axis]] = res[k];
            }
        }
    }
    Vol { shape, v: out }
}

const NPAD: usize = 12;

/// scipy `spline_filter1d` for order 3 on an already padded line (reflect initialization).
fn cubic_prefilter(c: &mut [f64]) {
    let n = c.len();
    if n == 1 {
        return;
    }
    let z: f64 = 3f64.sqrt() - 2.0;
    let lambda = (1.0 - z) * (1.0 - 1.0 / z);
    for x in c.iter_mut() {
        *x *= lambda;
    }
    // _init_causal_reflect
    let z_n = z.powi(n as i32);
    let c0 = c[0];
    let mut acc = c[0] + z_n * c[n - 1];
    let mut z_i = z;
    for i in 1..n {
        acc += z_i * (c[i] + z_n * c[n - 1 - i]);
        z_i *= z;
    }
    c[0] = acc * z / (1.0 - z_n * z_n) + c0;
    for i in 1..n {
        c[i] += z * c[i - 1];
    }
    // _init_anticausal_reflect
    c[n - 1] *= z / (z - 1.0);
    for i in (0..n - 1).rev() {
        c[i] = z * (c[i + 1] - c[i]);
    }
}

/// One line of `ndimage.zoom(grid_mode=True, mode='nearest')` with `order` in {0, 1, 3}.
fn zoom_line(input: &[f64], out: &mut [f64], order: u32) {
    let n = input.len();
    let m = out.len();
    let zoom = n as f64 / m as f64;
    // no clamping: scipy evaluates the spline on the 12-voxel edge padding beyond the border
    let coord = |i: usize| (i as f64 + 0.5) * zoom - 0.5;
    let at = |k: i64| input[k.clamp(0, n as i64 - 1) as usize];
    match order {
        0 => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = at((coord(i) + 0.5).floor() as i64);
            }
        }
        1 => {
            for (i, o) in out.iter_mut().enumerate() {
                let c = coord(i);
                let lo = c.floor();
                let t = c - lo;
                *o = at(lo as i64) * (1.0 - t) + at(lo as i64 + 1) * t;
            }
        }
        _ => {
            let mut p = Vec::with_capacity(n + 2 * NPAD);
            p.extend(std::iter::repeat_n(input[0], NPAD));
            p.extend_from_slice(input);
            p.extend(std::iter::repeat_n(input[n - 1], NPAD));
            cubic_prefilter(&mut p);
            let pl = p.len() as i64;
            for (i, o) in out.iter_mut().enumerate() {
                let c = coord(i) + NPAD as f64;
                let f = c.floor();
                let t = c - f;
                let start = f as i64 - 1;
                let w = [
                    (1.0 - t).powi(3) / 6.0,
                    (3.0 * t * t * t - 6.0 * t * t + 4.0) / 6.0,
                    (-3.0 * t * t * t + 3.0 * t * t + 3.0 * t + 1.0) / 6.0,
                    t * t * t / 6.0,
                ];
                let mut s = 0.0;
                for (k, wk) in w.iter().enumerate() {
                    let idx = (start + k as i64).clamp(0, pl - 1) as usize;
                    s += wk * p[idx];
                }
                *o = s;
            }
        }
    }
}

/// skimage `resize(img, new_shape, order, mode='edge', clip=True, anti_aliasing=False)` on a 3D
/// (or, with a singleton axis left alone, 2D) volume.
#[allow(clippy::needless_range_loop)] // index arithmetic over three axes reads best with explicit indices
fn resize(a: &Vol, new_shape: [usize; 3], order: u32) -> Vol {
    let (mn, mx) = a.v.iter().fold((f64::MAX, f64::MIN), |(l, h), &x| (l.min(x), h.max(x)));
    let mut cur = a.clone();
    for axis in 0..3 {
        if cur.shape[axis] == new_shape[axis] {
            continue; // zoom factor 1 samples the spline at the knots: the identity
        }
        cur = map_lines(&cur, axis, new_shape[axis], |l, o| zoom_line(l, o, order));
    }
    if order > 0 {
        for x in cur.v.iter_mut() {
            *x = x.clamp(mn, mx);
        }
    }
    cur
}

/// Order-1 `ndimage.zoom(grid_mode=True, mode='nearest')` evaluated the way scipy's C loop does
/// (non-separable: per output voxel, the sum over the 2^3 corners in C order of
/// `value * w_z * w_x * w_y`, last weight `1 - w0`), so thresholds at 0.5 tie-break bit-identically.
#[allow(clippy::needless_range_loop)] // index arithmetic over three axes reads best with explicit indices
fn zoom_order1_exact(a: &Vol, new_shape: [usize; 3]) -> Vol {
    let per_axis = |d: usize| -> Vec<(i64, [f64; 2])> {
        let (n, m) = (a.shape[d], new_shape[d]);
        let zoom = n as f64 / m as f64;
        (0..m)
            .map(|i| {
                let c = (i as f64 + 0.5) * zoom - 0.5;
                let f = c.floor();
                let w0 = 1.0 - (c - f);
                (f as i64, [w0, 1.0 - w0])
            })
            .collect()
    };
    let (wz, wx, wy) = (per_axis(0), per_axis(1), per_axis(2));
    let cl = |k: i64, n: usize| k.clamp(0, n as i64 - 1) as usize;
    let [z, x, y] = a.shape;
    let mut out = Vec::with_capacity(new_shape.iter().product());
    for (sz, wzv) in &wz {
        for (sx, wxv) in &wx {
            for (sy, wyv) in &wy {
                let mut t = 0.0;
                for i in 0..2 {
                    let zi = cl(sz + i as i64, z);
                    for j in 0..2 {
                        let xi = cl(sx + j as i64, x);
                        for k in 0..2 {
                            let yi = cl(sy + k as i64, y);
                            let mut coeff = a.v[(zi * x + xi) * y + yi];
                            coeff *= wzv[i];
                            coeff *= wxv[j];
                            coeff *= wyv[k];
                            t += coeff;
                        }
                    }
                }
                out.push(t);
            }
        }
    }
    Vol { shape: new_shape, v: out }
}

/// batchgenerators (>= 0.25.5) `resize_segmentation(seg, new_shape, order)`: each label's indicator is
/// resized and the per-voxel argmax over labels wins (`_resample_seg_by_argmax`, seg_tiebreak
/// 'nearest': an exact tie is settled by the nearest-neighbour label when it is among the tied
/// ones). Older batchgenerators used `indicator >= 0.5`, later labels overwriting; the
/// reference we compare with ships the argmax version.
fn resize_segmentation(a: &Vol, new_shape: [usize; 3], order: u32) -> Vol {
    if order == 0 {
        return resize(a, new_shape, 0);
    }
    let mut labels: Vec<f64> = a.v.clone();
    labels.sort_by(|x, y| x.partial_cmp(y).unwrap());
    labels.dedup();
    let nvox: usize = new_shape.iter().product();
    if labels.len() == 1 {
        return Vol { shape: new_shape, v: vec![labels[0]; nvox] };
    }
    let nn = resize(a, new_shape, 0);
    let nn_idx: Vec<usize> = nn.v.iter().map(|v| labels.iter().position(|l| l == v).unwrap_or(usize::MAX)).collect();
    let mut best: Vec<f64> = Vec::new();
    let mut win = vec![0usize; nvox];
    let mut nn_top = vec![false; nvox];
    for (li, &l) in labels.iter().enumerate() {
        let mask = Vol { shape: a.shape, v: a.v.iter().map(|&x| if x == l { 1.0 } else { 0.0 }).collect() };
        let score = if order == 1 { zoom_order1_exact(&mask, new_shape).v } else { resize(&mask, new_shape, order).v };
        if li == 0 {
            for k in 0..nvox {
                nn_top[k] = nn_idx[k] == 0 && score[k] > 0.0;
            }
            best = score;
            continue;
        }
        for k in 0..nvox {
            let is_nn = nn_idx[k] == li;
            if score[k] == best[k] && score[k] > 0.0 && is_nn {
                nn_top[k] = true;
            }
            if score[k] > best[k] {
                nn_top[k] = is_nn;
                win[k] = li;
                best[k] = score[k];
            }
        }
    }
    let v = (0..nvox).map(|k| if nn_top[k] { labels[nn_idx[k]] } else { labels[win[k]] }).collect();
    Vol { shape: new_shape, v }
}

/// `determine_do_sep_z_and_axis` with `force_separate_z=None`: separate z when max/min spacing > 3
/// for the current (else the target) spacing; the low-res axis is the unique max-spacing axis
/// (none when two or three axes tie).
pub fn separate_z_axis(spacing: &[f64], new_spacing: &[f64]) -> Option<usize> {
    let lowres = |sp: &[f64]| -> Option<Option<usize>> {
        let mx = sp.iter().cloned().fold(f64::MIN, f64::max);
        let mn = sp.iter().cloned().fold(f64::MAX, f64::min);
        if mx / mn > ANISO_THRESHOLD {
            let axes: Vec<usize> = (0..sp.len()).filter(|&i| mx / sp[i] == 1.0).collect();
            Some(if axes.len() == 1 { Some(axes[0]) } else { None })
        } else {
            None
        }
    };
    match lowres(spacing) {
        Some(a) => a,
        None => lowres(new_spacing).flatten(),
    }
}

/// nnU-Net's `resample_data_or_seg_to_shape(data, new_shape, spacing, new_spacing, is_seg, order,
/// order_z=0, force_separate_z=None)` for a (C, Z, X, Y) array. Returns the data unchanged when the
/// shape does not change.
pub fn resample_data_to_shape(
    data: &[f32],
    shape_czxy: [usize; 4],
    new_shape_zxy: [usize; 3],
    spacing: &[f64],
    new_spacing: &[f64],
    order: u32,
    is_seg: bool,
) -> Vec<f32> {
    let old = [shape_czxy[1], shape_czxy[2], shape_czxy[3]];
    if old == new_shape_zxy {
        return data.to_vec();
    }
    let axis = separate_z_axis(spacing, new_spacing);
    let n_old: usize = old.iter().product();
    let mut out = Vec::with_capacity(shape_czxy[0] * new_shape_zxy.iter().product::<usize>());
    for c in 0..shape_czxy[0] {
        let vol = Vol { shape: old, v: data[c * n_old..(c + 1) * n_old].iter().map(|&x| x as f64).collect() };
        let res = match axis {
            Some(ax) => {
                // in-plane resize slice by slice (the low-res axis kept), then order-0 z
                let mut inplane = new_shape_zxy;
                inplane[ax] = old[ax];
                let mut r = resize_per_slice(&vol, ax, inplane, order, is_seg);
                if old[ax] != new_shape_zxy[ax] {
                    // map_coordinates(order_z=0, mode='nearest'): nearest neighbour on the same grid
                    r = map_lines(&r, ax, new_shape_zxy[ax], |l, o| zoom_line(l, o, 0));
                }
                r
            }
            None => {
                if is_seg {
                    resize_segmentation(&vol, new_shape_zxy, order)
                } else {
                    resize(&vol, new_shape_zxy, order)
                }
            }
        };
        out.extend(res.v.iter().map(|&x| x as f32));
    }
    out
}

/// Resizes every slice orthogonal to `axis` (each slice's own clip range, as skimage clips per call).
fn resize_per_slice(vol: &Vol, axis: usize, target: [usize; 3], order: u32, is_seg: bool) -> Vol {
    let st = strides(vol.shape);
    let others: Vec<usize> = (0..3).filter(|&d| d != axis).collect();
    let mut out = Vol { shape: target, v: vec![0.0; target.iter().product()] };
    let sto = strides(target);
    for s in 0..vol.shape[axis] {
        let mut sl = Vol { shape: [1, vol.shape[others[0]], vol.shape[others[1]]], v: Vec::new() };
        for i in 0..vol.shape[others[0]] {
            for j in 0..vol.shape[others[1]] {
                sl.v.push(vol.v[s * st[axis] + i * st[others[0]] + j * st[others[1]]]);
            }
        }
        let ns = [1, target[others[0]], target[others[1]]];
        let r = if is_seg { resize_segmentation(&sl, ns, order) } else { resize(&sl, ns, order) };
        let mut k = 0;
        for i in 0..ns[1] {
            for j in 0..ns[2] {
                out.v[s * sto[axis] + i * sto[others[0]] + j * sto[others[1]]] = r.v[k];
                k += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_shape_is_identity() {
        let d: Vec<f32> = (0..12).map(|x| x as f32).collect();
        assert_eq!(resample_data_to_shape(&d, [1, 1, 3, 4], [1, 3, 4], &[999.0, 1.0, 1.0], &[999.0, 1.0, 1.0], 3, false), d);
    }

    #[test]
    fn cubic_matches_skimage_row() {
        // skimage.transform.resize(tile(arange(8), (8, 1)), (8, 16), order=3, mode='edge',
        // anti_aliasing=False)[0], printed by the peer venv
        let want = [
            0.0, 0.17342309, 0.70775067, 1.27046452, 1.76122248, 2.24471883, 2.74735942, 3.25066015, 3.74933985, 4.25264058, 4.75528117,
            5.23877752, 5.72953548, 6.29224933, 6.82657691, 7.0,
        ];
        let d: Vec<f32> = (0..64).map(|x| (x % 8) as f32).collect();
        let r = resample_data_to_shape(&d, [1, 1, 8, 8], [1, 8, 16], &[999.0, 1.0, 1.0], &[999.0, 1.0, 0.5], 3, false);
        for (j, (&v, &w)) in r[..16].iter().zip(&want).enumerate() {
            assert!((v as f64 - w).abs() < 1e-6, "{j}: {v} vs {w}");
        }
    }

    #[test]
    fn seg_resize_keeps_labels() {
        let d = vec![0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0, -1.0, 2.0, 2.0, 2.0];
        let r = resample_data_to_shape(&d, [1, 1, 4, 4], [1, 8, 8], &[999.0, 1.0, 1.0], &[999.0, 0.5, 0.5], 1, true);
        assert!(r.iter().all(|v| [-1.0, 0.0, 1.0, 2.0].contains(v)));
        assert_eq!(r[0], 0.0);
        assert_eq!(r[7], 1.0);
        assert_eq!(r[63], 2.0);
    }
}
