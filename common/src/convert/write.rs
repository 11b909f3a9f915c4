//! Writing one case of a conversion: every channel to its own pseudo-3D NIfTI file, as nnU-Net
//! v1's `nnunet/utilities/file_conversions.py::convert_2d_image_to_nifti` writes them, and the mask
//! through the dataset-wide value -> label mapping.
use super::sources::CaseSrc;
use crate::imageio::{self, Geometry, ImageData};
use crate::naming;
use crate::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Result of converting one case.
pub(super) struct CaseOut {
    pub n_channels: usize,
    pub shape: [usize; 3],
    /// label -> voxel count
    pub counts: BTreeMap<i64, u64>,
    pub volume: bool,
}

/// The distinct values of a mask (as f64 bits, -0.0 folded into 0.0) and the mask itself.
pub(super) fn mask_values(path: &Path) -> Result<(BTreeSet<u64>, ImageData)> {
    let m = imageio::read_seg(path)?;
    let mut bits: BTreeSet<u32> = BTreeSet::new();
    for &v in &m.data {
        bits.insert(v.to_bits());
    }
    let mut out = BTreeSet::new();
    for b in bits {
        let v = f32::from_bits(b);
        if !v.is_finite() {
            return Err(Error::format(path, "the mask contains NaN or infinite values; masks must hold integer labels"));
        }
        // -0.0 and 0.0 are the same label.
        out.insert(if v == 0.0 { 0f64.to_bits() } else { (v as f64).to_bits() });
    }
    Ok((out, m))
}

/// JPEG masks are refused: lossy compression invents values along label edges.
pub(super) fn check_mask_format(p: &Path) -> Option<String> {
    match imageio::detect_format(p) {
        Some("jpg") => Some(format!(
            "{}: JPEG masks are refused: JPEG's lossy compression invents new values along every label edge (a 0/255 mask comes back with 1, 2, ..., 254), which would become extra labels or wrong pixels. Re-export the masks as PNG (or TIFF/BMP) from the original label data; do not convert the JPEG, its edges are already damaged",
            p.display()
        )),
        _ => None,
    }
}

/// Writes the channel files of `src` into `out_dir/sub` and its mask (mapped) into `labelsTr/`.
pub(super) fn write_case(
    src: &CaseSrc,
    out_dir: &Path,
    sub: &str,
    mapping: &BTreeMap<u64, i64>,
    n_channels: Option<usize>,
) -> Result<CaseOut> {
    let img = imageio::read_case_images(&src.images)?;
    let c = img.shape[0];
    if let Some(n) = n_channels {
        if n != c {
            return Err(Error::format(
                &src.images[0],
                format!(
                    "case {}: has {c} channel(s) but the dataset has {n}; all cases must have the same channels (all gray, or all RGB)",
                    src.id
                ),
            ));
        }
    }
    let shape = [img.shape[1], img.shape[2], img.shape[3]];
    let volume = img.geometry.affine.is_some() && shape[0] > 1;
    for k in 0..c {
        let p = out_dir.join(sub).join(naming::channel_file_name(&src.id, k, ".nii.gz"));
        imageio::write_nifti_image(&p, shape, img.channel(k), &img.geometry)?;
    }
    let mut counts = BTreeMap::new();
    if let Some(mp) = &src.mask {
        let m = imageio::read_seg(mp)?;
        let mshape = [m.shape[1], m.shape[2], m.shape[3]];
        if mshape != shape {
            return Err(Error::format(
                mp,
                format!(
                    "case {}: image/mask size mismatch: image {} is {:?} but the mask is {:?} (Z, H, W); the mask must have exactly the image's size",
                    src.id,
                    src.images[0].display(),
                    shape,
                    mshape
                ),
            ));
        }
        let mut labels: Vec<u16> = Vec::with_capacity(m.data.len());
        // Lookup per distinct value: masks hold few values.
        let mut cache: Option<(u32, u16)> = None;
        for &v in &m.data {
            let b = v.to_bits();
            let l = match cache {
                Some((cb, cl)) if cb == b => cl,
                _ => {
                    let key = if v == 0.0 { 0f64.to_bits() } else { (v as f64).to_bits() };
                    let l = *mapping
                        .get(&key)
                        .ok_or_else(|| Error::format(mp, format!("mask value {v} has no label (internal: mapping incomplete)")))?
                        as u16;
                    cache = Some((b, l));
                    l
                }
            };
            labels.push(l);
            *counts.entry(l as i64).or_insert(0u64) += 1;
        }
        // The mask keeps its own geometry (for NIfTI input) so verify can compare it with the image.
        let geom = if m.geometry.affine.is_some() {
            m.geometry.clone()
        } else {
            Geometry { format: m.geometry.format.clone(), ..img.geometry.clone() }
        };
        imageio::write_nifti_seg(&out_dir.join("labelsTr").join(naming::label_file_name(&src.id, ".nii.gz")), shape, &labels, &geom)?;
    }
    Ok(CaseOut { n_channels: c, shape, counts, volume })
}
