//! Cropping to the nonzero region and its inverse, and the spatial transpose: the array steps the
//! fingerprint, preprocessing and inference share (`nnunetv2/preprocessing/cropping/cropping.py::
//! crop_to_nonzero`, `create_nonzero_mask`; the inverse is the bbox insert of
//! `nnunetv2/inference/export_prediction.py::convert_predicted_logits_to_segmentation_with_correct_shape`).
use crate::case::CaseProperties;
use crate::imageio::ImageData;
use crate::{Error, Result};

/// Result of [`crop_to_nonzero`].
#[derive(Debug, Clone)]
pub struct Cropped {
    /// (C, Z, X, Y) cropped data.
    pub data: Vec<f32>,
    pub data_shape: [usize; 4],
    /// (Z, X, Y) cropped seg; -1 where the seg was 0 outside the (hole-filled) nonzero mask, or, when
    /// no seg was given, 0 inside the mask and -1 outside.
    pub seg: Vec<i16>,
    /// Half-open [lo, hi) per spatial axis.
    pub bbox: [[usize; 2]; 3],
    pub shape_before: [usize; 3],
}

/// `create_nonzero_mask`: OR over channels of `!= 0`, then `scipy.ndimage.binary_fill_holes` (3D,
/// 6-connectivity, the array border counts as outside — so a (1, H, W) image gets no holes filled:
/// every pixel touches the border along Z).
pub fn nonzero_mask(data: &[f32], shape: [usize; 4]) -> Vec<bool> {
    let [c, z, x, y] = shape;
    let n = z * x * y;
    let mut mask = vec![false; n];
    for ch in 0..c {
        for (m, &v) in mask.iter_mut().zip(&data[ch * n..(ch + 1) * n]) {
            *m |= v != 0.0;
        }
    }
    fill_holes(&mut mask, [z, x, y]);
    mask
}

/// `binary_fill_holes` with the default (cross) structure.
pub fn fill_holes(mask: &mut [bool], shape: [usize; 3]) {
    let [z, x, y] = shape;
    let mut outside = vec![false; mask.len()];
    let mut stack = Vec::new();
    let idx = |a: usize, b: usize, c: usize| (a * x + b) * y + c;
    for a in 0..z {
        for b in 0..x {
            for c in 0..y {
                let on_border = a == 0 || a + 1 == z || b == 0 || b + 1 == x || c == 0 || c + 1 == y;
                let i = idx(a, b, c);
                if on_border && !mask[i] {
                    outside[i] = true;
                    stack.push((a, b, c));
                }
            }
        }
    }
    while let Some((a, b, c)) = stack.pop() {
        let mut visit = |a2: usize, b2: usize, c2: usize, stack: &mut Vec<(usize, usize, usize)>| {
            let j = idx(a2, b2, c2);
            if !mask[j] && !outside[j] {
                outside[j] = true;
                stack.push((a2, b2, c2));
            }
        };
        if a > 0 {
            visit(a - 1, b, c, &mut stack)
        }
        if a + 1 < z {
            visit(a + 1, b, c, &mut stack)
        }
        if b > 0 {
            visit(a, b - 1, c, &mut stack)
        }
        if b + 1 < x {
            visit(a, b + 1, c, &mut stack)
        }
        if c > 0 {
            visit(a, b, c - 1, &mut stack)
        }
        if c + 1 < y {
            visit(a, b, c + 1, &mut stack)
        }
    }
    for (m, o) in mask.iter_mut().zip(&outside) {
        *m = !*o;
    }
}

/// `cropping.py::crop_to_nonzero(data, seg)`. An all-zero image keeps its full extent.
pub fn crop_to_nonzero(image: &ImageData, seg: Option<&ImageData>) -> Cropped {
    let [c, z, x, y] = image.shape;
    let mask = nonzero_mask(&image.data, image.shape);
    let mut lo = [usize::MAX; 3];
    let mut hi = [0usize; 3];
    for a in 0..z {
        for b in 0..x {
            for cc in 0..y {
                if mask[(a * x + b) * y + cc] {
                    for (d, v) in [a, b, cc].into_iter().enumerate() {
                        lo[d] = lo[d].min(v);
                        hi[d] = hi[d].max(v + 1);
                    }
                }
            }
        }
    }
    if lo[0] == usize::MAX {
        lo = [0; 3];
        hi = [z, x, y];
    }
    let ns = [hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]];
    let n = ns[0] * ns[1] * ns[2];
    let mut data = Vec::with_capacity(c * n);
    let mut segc = Vec::with_capacity(n);
    for ch in 0..c {
        for a in lo[0]..hi[0] {
            for b in lo[1]..hi[1] {
                let s = ((ch * z + a) * x + b) * y;
                data.extend_from_slice(&image.data[s + lo[2]..s + hi[2]]);
            }
        }
    }
    for a in lo[0]..hi[0] {
        for b in lo[1]..hi[1] {
            for cc in lo[2]..hi[2] {
                let i = (a * x + b) * y + cc;
                let inside = mask[i];
                let v = match seg {
                    Some(s) => {
                        let l = s.data[i] as i16;
                        if l == 0 && !inside {
                            -1
                        } else {
                            l
                        }
                    }
                    None => {
                        if inside {
                            0
                        } else {
                            -1
                        }
                    }
                };
                segc.push(v);
            }
        }
    }
    Cropped {
        data,
        data_shape: [c, ns[0], ns[1], ns[2]],
        seg: segc,
        bbox: [[lo[0], hi[0]], [lo[1], hi[1]], [lo[2], hi[2]]],
        shape_before: [z, x, y],
    }
}

/// Permutes the spatial axes of a (C, Z, X, Y) array: output axis d is input axis `perm[d]`.
pub fn transpose_spatial<T: Copy>(data: &[T], shape: [usize; 4], perm: &[usize]) -> (Vec<T>, [usize; 4]) {
    if perm == [0, 1, 2] {
        return (data.to_vec(), shape);
    }
    let sp = [shape[1], shape[2], shape[3]];
    let ns = [sp[perm[0]], sp[perm[1]], sp[perm[2]]];
    let st = [sp[1] * sp[2], sp[2], 1];
    let n = sp[0] * sp[1] * sp[2];
    let mut out = Vec::with_capacity(data.len());
    for c in 0..shape[0] {
        for a in 0..ns[0] {
            for b in 0..ns[1] {
                for d in 0..ns[2] {
                    let mut src = [0usize; 3];
                    src[perm[0]] = a;
                    src[perm[1]] = b;
                    src[perm[2]] = d;
                    out.push(data[c * n + src[0] * st[0] + src[1] * st[1] + src[2] * st[2]]);
                }
            }
        }
    }
    (out, [shape[0], ns[0], ns[1], ns[2]])
}

/// Puts a (C, Z, X, Y) array defined on the cropped region back into `shape_before_cropping`
/// (transposed axes) at `bbox`, filling outside with `fill[c]` per channel (inference export:
/// probabilities get background = 1, other classes 0; segmentations 0).
pub fn revert_cropping(data: &[f32], shape_czxy: [usize; 4], props: &CaseProperties, fill: &[f32]) -> Result<(Vec<f32>, [usize; 4])> {
    let b = &props.bbox_used_for_cropping;
    let full = &props.shape_before_cropping;
    let inner = [b[0][1] - b[0][0], b[1][1] - b[1][0], b[2][1] - b[2][0]];
    if inner != [shape_czxy[1], shape_czxy[2], shape_czxy[3]] || fill.len() != shape_czxy[0] {
        return Err(Error::Invalid(format!(
            "revert_cropping: array {:?} does not match bbox {:?} (or {} fill values for {} channels)",
            shape_czxy,
            b,
            fill.len(),
            shape_czxy[0]
        )));
    }
    let (z, x, y) = (full[0], full[1], full[2]);
    let mut out = Vec::with_capacity(shape_czxy[0] * z * x * y);
    for (c, &f) in fill.iter().enumerate() {
        let base = out.len();
        out.resize(base + z * x * y, f);
        for a in 0..inner[0] {
            for bb in 0..inner[1] {
                let src = ((c * inner[0] + a) * inner[1] + bb) * inner[2];
                let dst = base + ((a + b[0][0]) * x + bb + b[1][0]) * y + b[2][0];
                out[dst..dst + inner[2]].copy_from_slice(&data[src..src + inner[2]]);
            }
        }
    }
    Ok((out, [shape_czxy[0], z, x, y]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imageio::Geometry;
    use std::collections::BTreeMap;

    fn img(shape: [usize; 4], data: Vec<f32>) -> ImageData {
        ImageData { shape, data, geometry: Geometry { spacing: [999.0, 1.0, 1.0], ..Default::default() } }
    }

    #[test]
    fn crop_marks_outside_and_keeps_bbox() {
        // 1x4x4, nonzero block at rows 1..3, cols 1..4
        let mut d = vec![0.0; 16];
        for r in 1..3 {
            for c in 1..4 {
                d[r * 4 + c] = 1.0;
            }
        }
        d[2 * 4 + 2] = 0.0; // a hole: not filled in a (1, H, W) image
        let seg = img([1, 1, 4, 4], vec![0.0; 16]);
        let c = crop_to_nonzero(&img([1, 1, 4, 4], d), Some(&seg));
        assert_eq!(c.bbox, [[0, 1], [1, 3], [1, 4]]);
        assert_eq!(c.data_shape, [1, 1, 2, 3]);
        assert_eq!(c.seg, vec![0, 0, 0, 0, -1, 0]);
    }

    #[test]
    fn holes_are_filled_in_3d() {
        let mut m = vec![true; 27];
        m[13] = false; // centre of a 3x3x3 cube
        m[0] = false; // a corner touching the border
        fill_holes(&mut m, [3, 3, 3]);
        assert!(m[13] && !m[0]);
    }

    #[test]
    fn revert_cropping_round_trips() {
        let d: Vec<f32> = (0..16).map(|v| v as f32 + 1.0).collect();
        let mut d2 = d.clone();
        d2[0] = 0.0;
        d2[3] = 0.0;
        let c = crop_to_nonzero(&img([1, 1, 4, 4], d2.clone()), None);
        let props = CaseProperties {
            spacing: vec![999.0, 1.0, 1.0],
            shape_before_cropping: c.shape_before.to_vec(),
            bbox_used_for_cropping: c.bbox.to_vec(),
            shape_after_cropping_and_before_resampling: vec![],
            class_locations: BTreeMap::new(),
            raw_geometry: None,
            data_sha256: String::new(),
            seg_sha256: String::new(),
        };
        let (back, shape) = revert_cropping(&c.data, c.data_shape, &props, &[0.0]).unwrap();
        assert_eq!((back, shape), (d2, [1, 1, 4, 4]));
    }

    #[test]
    fn transpose_permutes_axes() {
        let d: Vec<u8> = (0..6).collect(); // (1, 1, 2, 3)
        let (t, s) = transpose_spatial(&d, [1, 1, 2, 3], &[2, 0, 1]);
        assert_eq!(s, [1, 3, 1, 2]);
        assert_eq!(t, vec![0, 3, 1, 4, 2, 5]);
    }
}
