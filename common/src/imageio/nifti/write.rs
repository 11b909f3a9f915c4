//! Writing NIfTI-1 byte-reproducibly (gzip without a timestamp), with a qform that agrees with
//! the sform.
use super::VOX_OFFSET;
use crate::imageio::Geometry;
use crate::{Error, Result};
use std::io::Write;
use std::path::Path;

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
