//! NIfTI-1 reading and writing (`.nii`, `.nii.gz`), written against the NIfTI-1 header layout
//! (nifti1.h) instead of a crate so that the bytes we write are fully under our control: the
//! same input always gives the same file (gzip without a timestamp), and a 2D image becomes the
//! pseudo-3D volume nnU-Net's own conversion writes (SPEC §1.1, §1.2).
//!
//! Array order follows nnU-Net's SimpleITKIO: the NIfTI axes reversed, so a volume with NIfTI
//! `dim = (X, Y, Z)` becomes a C-contiguous (1, Z, Y, X) array, which is exactly the on-disk voxel
//! order, and the spacing is `pixdim[1..=3]` reversed. A 2D NIfTI becomes (1, 1, H, W) with spacing
//! `(999 * max(sp), sp_y, sp_x)` (v2: `imageio/simpleitk_reader_writer.py::read_images`).
use super::{Geometry, ImageData};
use crate::{Error, Result};
use flate2::read::MultiGzDecoder;
use std::io::{Read, Write};
use std::path::Path;

const HEADER_SIZE: usize = 348;
const VOX_OFFSET: usize = 352;

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

/// nifti1_io.c `nifti_mat44_to_quatern`: the quaternion, offsets and qfac of an affine, so the
/// qform we write agrees with the sform (SimpleITK and ITK-SNAP read the qform first).
fn mat44_to_quatern(a: &[[f64; 4]; 4]) -> ([f64; 3], [f64; 3], f64) {
    let mut r = [[0.0f64; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            r[i][j] = a[i][j];
        }
    }
    // Normalise the columns (remove the voxel sizes).
    for j in 0..3 {
        let n = (r[0][j] * r[0][j] + r[1][j] * r[1][j] + r[2][j] * r[2][j]).sqrt();
        let n = if n == 0.0 { 1.0 } else { n };
        for row in r.iter_mut() {
            row[j] /= n;
        }
    }
    let det = r[0][0] * (r[1][1] * r[2][2] - r[1][2] * r[2][1]) - r[0][1] * (r[1][0] * r[2][2] - r[1][2] * r[2][0])
        + r[0][2] * (r[1][0] * r[2][1] - r[1][1] * r[2][0]);
    let qfac = if det < 0.0 {
        for row in r.iter_mut() {
            row[2] = -row[2];
        }
        -1.0
    } else {
        1.0
    };
    let (r11, r12, r13) = (r[0][0], r[0][1], r[0][2]);
    let (r21, r22, r23) = (r[1][0], r[1][1], r[1][2]);
    let (r31, r32, r33) = (r[2][0], r[2][1], r[2][2]);
    let mut aq = r11 + r22 + r33 + 1.0;
    let (b, c, d);
    if aq > 0.5 {
        aq = 0.5 * aq.sqrt();
        b = 0.25 * (r32 - r23) / aq;
        c = 0.25 * (r13 - r31) / aq;
        d = 0.25 * (r21 - r12) / aq;
    } else {
        let xd = 1.0 + r11 - (r22 + r33);
        let yd = 1.0 + r22 - (r11 + r33);
        let zd = 1.0 + r33 - (r11 + r22);
        let (mut bb, mut cc, mut dd);
        if xd > 1.0 {
            bb = 0.5 * xd.sqrt();
            cc = 0.25 * (r12 + r21) / bb;
            dd = 0.25 * (r13 + r31) / bb;
            aq = 0.25 * (r32 - r23) / bb;
        } else if yd > 1.0 {
            cc = 0.5 * yd.sqrt();
            bb = 0.25 * (r12 + r21) / cc;
            dd = 0.25 * (r23 + r32) / cc;
            aq = 0.25 * (r13 - r31) / cc;
        } else {
            dd = 0.5 * zd.sqrt();
            bb = 0.25 * (r13 + r31) / dd;
            cc = 0.25 * (r23 + r32) / dd;
            aq = 0.25 * (r21 - r12) / dd;
        }
        if aq < 0.0 {
            bb = -bb;
            cc = -cc;
            dd = -dd;
        }
        b = bb;
        c = cc;
        d = dd;
    }
    ([b, c, d], [a[0][3], a[1][3], a[2][3]], qfac)
}

/// The affine SimpleITK writes for an image with identity direction and zero origin: ITK works in
/// LPS, NIfTI in RAS, so the first two axes are negated. nnU-Net's own 2D conversion
/// (`convert_2d_image_to_nifti`) produces exactly this.
fn default_affine(spacing_zyx: [f64; 3]) -> [[f64; 4]; 4] {
    [[-spacing_zyx[2], 0.0, 0.0, 0.0], [0.0, -spacing_zyx[1], 0.0, 0.0], [0.0, 0.0, spacing_zyx[0], 0.0], [0.0, 0.0, 0.0, 1.0]]
}

/// NIfTI datatypes we write.
#[derive(Clone, Copy)]
enum OutType {
    F32,
    U8,
    I16,
    U16,
}

#[allow(clippy::needless_range_loop)] // matrix code reads best with explicit row/column indices
fn build_header(shape_zyx: [usize; 3], geom: &Geometry, t: OutType) -> Vec<u8> {
    let mut h = vec![0u8; VOX_OFFSET];
    let put_i16 = |h: &mut Vec<u8>, o: usize, v: i16| h[o..o + 2].copy_from_slice(&v.to_le_bytes());
    let put_f32 = |h: &mut Vec<u8>, o: usize, v: f32| h[o..o + 4].copy_from_slice(&v.to_le_bytes());
    h[0..4].copy_from_slice(&348i32.to_le_bytes());
    h[38] = b'r'; // "regular", as nibabel and ITK write it
    let [z, y, x] = shape_zyx;
    let dims = [3i16, x as i16, y as i16, z as i16, 1, 1, 1, 1];
    for (k, d) in dims.iter().enumerate() {
        put_i16(&mut h, 40 + 2 * k, *d);
    }
    let (code, bitpix) = match t {
        OutType::F32 => (16i16, 32i16),
        OutType::U8 => (2, 8),
        OutType::I16 => (4, 16),
        OutType::U16 => (512, 16),
    };
    put_i16(&mut h, 70, code);
    put_i16(&mut h, 72, bitpix);
    let sp = geom.spacing;
    let sp = if sp.iter().all(|v| *v > 0.0 && v.is_finite()) { sp } else { [1.0, 1.0, 1.0] };
    let affine = geom.affine.unwrap_or_else(|| default_affine(sp));
    let (quat, offset, qfac) = mat44_to_quatern(&affine);
    let pixdim = [qfac as f32, sp[2] as f32, sp[1] as f32, sp[0] as f32, 1.0, 1.0, 1.0, 1.0];
    for (k, p) in pixdim.iter().enumerate() {
        put_f32(&mut h, 76 + 4 * k, *p);
    }
    put_f32(&mut h, 108, VOX_OFFSET as f32);
    put_f32(&mut h, 112, 1.0); // scl_slope: identity scaling, stated explicitly
    h[123] = 2; // xyzt_units: mm
    let descrip = b"nnunet-rs";
    h[148..148 + descrip.len()].copy_from_slice(descrip);
    put_i16(&mut h, 252, 1); // qform_code: scanner
    put_i16(&mut h, 254, 1); // sform_code: scanner
    for k in 0..3 {
        put_f32(&mut h, 256 + 4 * k, quat[k] as f32);
        put_f32(&mut h, 268 + 4 * k, offset[k] as f32);
    }
    for r in 0..3 {
        for k in 0..4 {
            put_f32(&mut h, 280 + 16 * r + 4 * k, affine[r][k] as f32);
        }
    }
    h[344..348].copy_from_slice(b"n+1\0");
    // Bytes 348..352: the extension flag, all zero (no extensions).
    h
}

fn write_file(path: &Path, header: Vec<u8>, body: Vec<u8>) -> Result<()> {
    let gz = path.to_string_lossy().to_ascii_lowercase().ends_with(".gz");
    crate::hash::write_atomic_with(path, |w| {
        if gz {
            // GzBuilder without filename or mtime: identical input gives identical bytes.
            // Level 1, as nibabel's default: images are mostly incompressible float32 anyway.
            let mut enc = flate2::GzBuilder::new().mtime(0).write(&mut *w, flate2::Compression::new(1));
            enc.write_all(&header)?;
            enc.write_all(&body)?;
            enc.finish()?;
            Ok(())
        } else {
            w.write_all(&header)?;
            w.write_all(&body)
        }
    })
}

fn check_len(path: &Path, shape_zyx: [usize; 3], n: usize) -> Result<()> {
    let want = shape_zyx.iter().product::<usize>();
    if want != n || shape_zyx.iter().any(|&d| d == 0 || d > i16::MAX as usize) {
        return Err(Error::Invalid(format!(
            "cannot write {}: shape {shape_zyx:?} ({want} voxels, each side 1..=32767) does not fit {n} values",
            path.display()
        )));
    }
    Ok(())
}

/// Writes a float32 NIfTI-1 volume of numpy shape (Z, Y, X) = `shape_zxy` (C-contiguous `data`).
/// `geom.spacing` is in numpy order; `geom.affine` (if any) is written as sform and qform so that a
/// file read with [`read_nifti`] and written back keeps its orientation. Without an affine the
/// file gets SimpleITK's identity-direction affine, as nnU-Net's 2D conversion does: use
/// `shape_zxy = [1, H, W]` and spacing (999, 1, 1) for a 2D image. `.gz` compresses.
pub fn write_nifti_f32(path: &Path, shape_zxy: [usize; 3], data: &[f32], geom: &Geometry) -> Result<()> {
    check_len(path, shape_zxy, data.len())?;
    let header = build_header(shape_zxy, geom, OutType::F32);
    let mut body = Vec::with_capacity(data.len() * 4);
    for v in data {
        body.extend_from_slice(&v.to_le_bytes());
    }
    write_file(path, header, body)
}

/// Writes an image in the smallest NIfTI datatype that holds every value exactly: uint8, int16 or
/// uint16 when all values are integers in range (an 8-bit PNG gives uint8, as nnU-Net v1's
/// `convert_2d_image_to_nifti` keeps the source dtype), float32 otherwise (NaN included). Readers,
/// ours and nnU-Net's, cast to float32, so the choice changes file size and speed, not values.
pub fn write_nifti_image(path: &Path, shape_zxy: [usize; 3], data: &[f32], geom: &Geometry) -> Result<()> {
    check_len(path, shape_zxy, data.len())?;
    let integral = data.iter().all(|v| v.fract() == 0.0);
    let (lo, hi) = data.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let t = if !integral || data.is_empty() {
        OutType::F32
    } else if lo >= 0.0 && hi <= 255.0 {
        OutType::U8
    } else if lo >= -32768.0 && hi <= 32767.0 {
        OutType::I16
    } else if lo >= 0.0 && hi <= 65535.0 {
        OutType::U16
    } else {
        OutType::F32
    };
    let body: Vec<u8> = match t {
        OutType::U8 => data.iter().map(|&v| v as u8).collect(),
        OutType::I16 => data.iter().flat_map(|&v| (v as i16).to_le_bytes()).collect(),
        OutType::U16 => data.iter().flat_map(|&v| (v as u16).to_le_bytes()).collect(),
        OutType::F32 => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
    };
    write_file(path, build_header(shape_zxy, geom, t), body)
}

/// Writes a segmentation (labels as u16, C-contiguous (Z, Y, X)) as uint8 when every label is at
/// most 255, else uint16, like nnU-Net's writers. Geometry as in [`write_nifti_f32`].
pub fn write_nifti_seg(path: &Path, shape_zxy: [usize; 3], data: &[u16], geom: &Geometry) -> Result<()> {
    check_len(path, shape_zxy, data.len())?;
    let max = data.iter().copied().max().unwrap_or(0);
    let (t, body) = if max <= 255 {
        (OutType::U8, data.iter().map(|&v| v as u8).collect::<Vec<u8>>())
    } else {
        let mut b = Vec::with_capacity(data.len() * 2);
        for v in data {
            b.extend_from_slice(&v.to_le_bytes());
        }
        (OutType::U16, b)
    };
    write_file(path, build_header(shape_zxy, geom, t), body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_3d_roundtrip_keeps_values_spacing_and_default_affine() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.nii.gz");
        let data: Vec<f32> = (0..12).map(|v| v as f32 * 0.5 - 1.0).collect();
        let g = Geometry { spacing: [999.0, 1.0, 1.0], affine: None, format: "png".into() };
        write_nifti_f32(&p, [1, 3, 4], &data, &g).unwrap();
        let back = read_nifti(&p).unwrap();
        assert_eq!(back.shape, [1, 1, 3, 4]);
        assert_eq!(back.data, data);
        assert_eq!(back.geometry.spacing, [999.0, 1.0, 1.0]);
        let a = back.geometry.affine.unwrap();
        assert_eq!((a[0][0], a[1][1], a[2][2]), (-1.0, -1.0, 999.0));
        // Same input, same bytes (no gzip timestamp).
        let p2 = dir.path().join("b.nii.gz");
        write_nifti_f32(&p2, [1, 3, 4], &data, &g).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(&p2).unwrap());
    }

    #[test]
    fn seg_dtype_follows_max_label_and_affine_roundtrips() {
        let dir = tempfile::tempdir().unwrap();
        let affine = [[0.0, 0.0, 2.0, 10.0], [-1.5, 0.0, 0.0, -3.0], [0.0, 1.0, 0.0, 7.0], [0.0, 0.0, 0.0, 1.0]];
        let g = Geometry { spacing: [2.0, 1.0, 1.5], affine: Some(affine), format: "nii.gz".into() };
        let small: Vec<u16> = vec![0, 1, 2, 255, 0, 1];
        let big: Vec<u16> = vec![0, 1, 2, 256, 0, 1000];
        for (name, labels, bytes_per) in [("s.nii", &small, 1usize), ("b.nii", &big, 2)] {
            let p = dir.path().join(name);
            write_nifti_seg(&p, [1, 2, 3], labels, &g).unwrap();
            assert_eq!(std::fs::metadata(&p).unwrap().len() as usize, 352 + 6 * bytes_per);
            let back = read_nifti(&p).unwrap();
            assert_eq!(back.data, labels.iter().map(|&v| v as f32).collect::<Vec<_>>());
            assert_eq!(back.geometry.spacing, [2.0, 1.0, 1.5]);
            let a = back.geometry.affine.unwrap();
            for i in 0..4 {
                for j in 0..4 {
                    assert!((a[i][j] - affine[i][j]).abs() < 1e-6, "{a:?}");
                }
            }
        }
    }

    #[test]
    fn image_writer_picks_the_smallest_exact_dtype() {
        let dir = tempfile::tempdir().unwrap();
        let g = Geometry { spacing: [999.0, 1.0, 1.0], affine: None, format: String::new() };
        for (vals, code) in [
            (vec![0.0f32, 255.0], 2i16),
            (vec![-5.0, 300.0], 4),
            (vec![0.0, 60000.0], 512),
            (vec![0.5, 1.0], 16),
            (vec![f32::NAN, 1.0], 16),
            (vec![0.0, 70000.0], 16),
        ] {
            let p = dir.path().join("i.nii");
            write_nifti_image(&p, [1, 1, 2], &vals, &g).unwrap();
            let b = std::fs::read(&p).unwrap();
            assert_eq!(i16::from_le_bytes([b[70], b[71]]), code, "{vals:?}");
            let back = read_nifti(&p).unwrap().data;
            assert_eq!(back[1], vals[1]);
            assert!(back[0] == vals[0] || (back[0].is_nan() && vals[0].is_nan()));
        }
    }

    #[test]
    fn truncated_and_non_nifti_files_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.nii");
        std::fs::write(&p, b"hello").unwrap();
        let e = read_nifti(&p).unwrap_err().to_string();
        assert!(e.contains("shorter than a NIfTI-1 header"), "{e}");
        let g = Geometry { spacing: [1.0, 1.0, 1.0], affine: None, format: String::new() };
        write_nifti_f32(&p, [2, 2, 2], &[0.0; 8], &g).unwrap();
        let mut b = std::fs::read(&p).unwrap();
        b.truncate(360);
        std::fs::write(&p, &b).unwrap();
        let e = read_nifti(&p).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
    }
}
