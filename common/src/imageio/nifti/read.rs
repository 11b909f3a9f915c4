//! Reading NIfTI-1 (`.nii`, `.nii.gz`) into nnU-Net's array order.
use super::{HEADER_SIZE, VOX_OFFSET};
use crate::imageio::{Geometry, ImageData};
use crate::{Error, Result};
use flate2::read::MultiGzDecoder;
use std::io::Read;
use std::path::Path;

/// The NIfTI datatype codes (nifti1.h `DT_*`) that we read.
fn dtype_size(code: i16) -> Option<usize> {
    Some(match code {
        2 | 256 => 1,          // uint8, int8
        4 | 512 => 2,          // int16, uint16
        8 | 16 | 768 => 4,     // int32, float32, uint32
        64 | 1024 | 1280 => 8, // float64, int64, uint64
        _ => return None,
    })
}

struct Cursor<'a> {
    b: &'a [u8],
    le: bool,
}

impl Cursor<'_> {
    fn i16(&self, o: usize) -> i16 {
        let a = [self.b[o], self.b[o + 1]];
        if self.le {
            i16::from_le_bytes(a)
        } else {
            i16::from_be_bytes(a)
        }
    }
    fn f32(&self, o: usize) -> f32 {
        let a = [self.b[o], self.b[o + 1], self.b[o + 2], self.b[o + 3]];
        if self.le {
            f32::from_le_bytes(a)
        } else {
            f32::from_be_bytes(a)
        }
    }
}

/// Reads the whole (decompressed) file. `.gz` is detected by its magic bytes, not the name.
fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b {
        let mut out = Vec::with_capacity(raw.len() * 4);
        MultiGzDecoder::new(&raw[..]).read_to_end(&mut out).map_err(|e| Error::Image {
            path: path.into(),
            msg: format!("corrupt gzip stream ({e}); re-export or re-download the file"),
        })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// The affine nibabel's `get_best_affine` returns: sform if `sform_code > 0`, else qform if
/// `qform_code > 0`, else the diagonal of pixdim.
#[allow(clippy::needless_range_loop)] // matrix code reads best with explicit row/column indices
fn best_affine(c: &Cursor, pixdim: [f64; 4]) -> [[f64; 4]; 4] {
    let sform_code = c.i16(254);
    let qform_code = c.i16(252);
    if sform_code > 0 {
        let mut a = [[0.0; 4]; 4];
        for (r, off) in [280usize, 296, 312].iter().enumerate() {
            for k in 0..4 {
                a[r][k] = c.f32(off + 4 * k) as f64;
            }
        }
        a[3][3] = 1.0;
        return a;
    }
    if qform_code > 0 {
        let (b, cq, d) = (c.f32(256) as f64, c.f32(260) as f64, c.f32(264) as f64);
        let a0 = (1.0 - (b * b + cq * cq + d * d)).max(0.0).sqrt();
        let qfac = if pixdim[0] < 0.0 { -1.0 } else { 1.0 };
        let r = [
            [a0 * a0 + b * b - cq * cq - d * d, 2.0 * (b * cq - a0 * d), 2.0 * (b * d + a0 * cq)],
            [2.0 * (b * cq + a0 * d), a0 * a0 + cq * cq - b * b - d * d, 2.0 * (cq * d - a0 * b)],
            [2.0 * (b * d - a0 * cq), 2.0 * (cq * d + a0 * b), a0 * a0 + d * d - cq * cq - b * b],
        ];
        let s = [pixdim[1], pixdim[2], pixdim[3] * qfac];
        let off = [c.f32(268) as f64, c.f32(272) as f64, c.f32(276) as f64];
        let mut a = [[0.0; 4]; 4];
        for i in 0..3 {
            for j in 0..3 {
                a[i][j] = r[i][j] * s[j];
            }
            a[i][3] = off[i];
        }
        a[3][3] = 1.0;
        return a;
    }
    let mut a = [[0.0; 4]; 4];
    a[0][0] = pixdim[1];
    a[1][1] = pixdim[2];
    a[2][2] = pixdim[3];
    a[3][3] = 1.0;
    a
}

/// Reads a 2D or 3D NIfTI-1 file (any numeric datatype, either byte order, `scl_slope` applied)
/// into float32 (1, Z, Y, X). See the module doc for the axis and spacing conventions.
pub fn read_nifti(path: &Path) -> Result<ImageData> {
    let bytes = read_bytes(path)?;
    let bad = |msg: String| Error::Image { path: path.into(), msg };
    if bytes.len() < HEADER_SIZE {
        return Err(bad(format!("file is {} bytes, shorter than a NIfTI-1 header (348); the file is truncated or not NIfTI", bytes.len())));
    }
    let le = match (i32::from_le_bytes(bytes[0..4].try_into().unwrap()), i32::from_be_bytes(bytes[0..4].try_into().unwrap())) {
        (348, _) => true,
        (_, 348) => false,
        (540, _) | (_, 540) => return Err(bad("NIfTI-2 files are not supported; save it as NIfTI-1 (e.g. nibabel.Nifti1Image)".into())),
        _ => return Err(bad("not a NIfTI-1 file (sizeof_hdr is not 348); the file is corrupt or in another format".into())),
    };
    let c = Cursor { b: &bytes, le };
    let magic = &bytes[344..348];
    if magic != b"n+1\0" {
        return Err(bad(format!(
            "NIfTI magic is {:?}, expected \"n+1\" (single-file .nii); .hdr/.img pairs are not supported",
            String::from_utf8_lossy(magic)
        )));
    }
    let ndim = c.i16(40);
    let dim: Vec<usize> = (0..7).map(|k| c.i16(42 + 2 * k).max(0) as usize).collect();
    if !(2..=7).contains(&ndim) {
        return Err(bad(format!("NIfTI has {ndim} dimensions; only 2D and 3D images are supported")));
    }
    let nd = ndim as usize;
    if nd > 3 && dim[3..nd].iter().any(|&d| d > 1) {
        return Err(bad(format!(
            "NIfTI is {nd}D with shape {:?}; nnU-Net wants one 2D/3D file per channel: split the extra dimension into _0000, _0001, ... files",
            &dim[..nd]
        )));
    }
    let (x, y, z) = (dim[0], dim[1], if nd >= 3 { dim[2] } else { 1 });
    let datatype = c.i16(70);
    let size = dtype_size(datatype).ok_or_else(|| {
        bad(format!(
            "NIfTI datatype code {datatype} is not supported (use uint8/int8/int16/uint16/int32/uint32/int64/uint64/float32/float64)"
        ))
    })?;
    let vox_offset = c.f32(108).max(0.0) as usize;
    let vox_offset = vox_offset.max(VOX_OFFSET);
    let n = x * y * z;
    if bytes.len() < vox_offset + n * size {
        return Err(bad(format!(
            "NIfTI data is truncated: header says {x}x{y}x{z} voxels of {size} bytes from offset {vox_offset} but the file has {} bytes",
            bytes.len()
        )));
    }
    let raw = &bytes[vox_offset..vox_offset + n * size];
    let mut data = vec![0f32; n];
    macro_rules! conv {
        ($t:ty, $w:expr) => {
            for (o, ch) in data.iter_mut().zip(raw.chunks_exact($w)) {
                let a: [u8; $w] = ch.try_into().unwrap();
                *o = (if le { <$t>::from_le_bytes(a) } else { <$t>::from_be_bytes(a) }) as f32;
            }
        };
    }
    match datatype {
        2 => data.iter_mut().zip(raw).for_each(|(o, &v)| *o = v as f32),
        256 => data.iter_mut().zip(raw).for_each(|(o, &v)| *o = v as i8 as f32),
        4 => conv!(i16, 2),
        512 => conv!(u16, 2),
        8 => conv!(i32, 4),
        768 => conv!(u32, 4),
        16 => conv!(f32, 4),
        64 => conv!(f64, 8),
        1024 => conv!(i64, 8),
        1280 => conv!(u64, 8),
        _ => unreachable!(),
    }
    // nifti1.h: scl_slope == 0 means "no scaling"; NaN (written by some tools) too.
    let (slope, inter) = (c.f32(112), c.f32(116));
    if slope.is_finite() && slope != 0.0 && !(slope == 1.0 && (inter == 0.0 || !inter.is_finite())) {
        let inter = if inter.is_finite() { inter } else { 0.0 };
        data.iter_mut().for_each(|v| *v = *v * slope + inter);
    }
    let pixdim: [f64; 4] = [c.f32(76) as f64, c.f32(80) as f64, c.f32(84) as f64, c.f32(88) as f64];
    let fix = |v: f64| if v.is_finite() && v > 0.0 { v } else { 1.0 };
    let (sx, sy, sz) = (fix(pixdim[1]), fix(pixdim[2]), fix(pixdim[3]));
    let (shape, spacing) = if nd == 2 {
        // SimpleITKIO: a 2D image gets a dummy first axis whose spacing is far larger than the
        // others, so that nnU-Net never resamples or pools across it.
        ([1, 1, y, x], [999.0 * sx.max(sy), sy, sx])
    } else {
        ([1, z, y, x], [sz, sy, sx])
    };
    let format = if path.to_string_lossy().to_ascii_lowercase().ends_with(".gz") { "nii.gz" } else { "nii" };
    Ok(ImageData {
        shape,
        data,
        // A 2D file's affine has no meaningful third axis; writing it back as pseudo-3D uses the
        // default (identity-direction) affine with the 999 spacing instead.
        geometry: Geometry { spacing, affine: if nd == 2 { None } else { Some(best_affine(&c, pixdim)) }, format: format.into() },
    })
}
