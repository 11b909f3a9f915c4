//! Mask folders as the scoring stages read and write them (evaluation, postprocessing,
//! ensembling): label volumes as integers, sorted folder listings like batchgenerators'
//! `subfiles`, and writing a label volume in the format its file name says.
use crate::imageio::{self, Geometry};
use crate::{Error, Result};
use std::path::Path;

/// Reads a segmentation as integer labels with its spatial shape (Z, X, Y).
pub fn read_labels(path: &Path) -> Result<([usize; 3], Vec<i32>)> {
    let img = imageio::read_seg(path)?;
    let shape = [img.shape[1], img.shape[2], img.shape[3]];
    // nnU-Net compares float32 arrays with `seg == label`; labels are small integers, so rounding
    // is exact for every valid file and maps a stray 0.9999 the way a cast would not.
    Ok((shape, img.data.iter().map(|&v| v.round() as i32).collect()))
}

/// Files in `dir` whose names end with `file_ending` (hidden and temporary files skipped), sorted
/// like Python's `subfiles`.
pub fn list_files(dir: &Path, file_ending: &str) -> Result<Vec<String>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut out: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(file_ending) && !n.starts_with('.'))
        .collect();
    out.sort();
    Ok(out)
}

/// Writes a label volume (Z, X, Y) in the format its file name says, with `geometry` (NIfTI keeps
/// its affine). Natural formats need Z = 1; JPEG is refused (lossy: labels would change).
pub fn write_labels(path: &Path, shape: [usize; 3], labels: &[u16], geometry: &Geometry) -> Result<()> {
    match imageio::detect_format(path) {
        Some("nii") | Some("nii.gz") => imageio::write_nifti_seg(path, shape, labels, geometry),
        Some(f @ ("png" | "tif" | "bmp")) => {
            if shape[0] != 1 {
                return Err(Error::Invalid(format!(
                    "cannot write {}: a {f} mask holds one 2D slice but the prediction has {} slices; use .nii.gz",
                    path.display(),
                    shape[0]
                )));
            }
            imageio::write_seg_natural(path, shape[1], shape[2], labels, f)
        }
        Some(f) => Err(Error::Invalid(format!(
            "cannot write a mask as {f} ({}): the format is lossy or unsupported for masks; use .png or .nii.gz",
            path.display()
        ))),
        None => Err(Error::Invalid(format!("cannot write {}: unknown file ending", path.display()))),
    }
}

/// Labels as `u16` for a mask file; a value outside 0..=65535 is an error naming `path`.
pub fn to_u16(path: &Path, seg: &[i32]) -> Result<Vec<u16>> {
    seg.iter()
        .map(|&v| u16::try_from(v).map_err(|_| Error::format(path, format!("label {v} does not fit a mask file (0..=65535)"))))
        .collect()
}
