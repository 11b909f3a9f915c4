//! Image reading and writing behind one type, [`ImageData`]: PNG (8/16-bit), TIFF (8/16-bit,
//! float32), BMP, JPEG, gray/RGB/RGBA, and NIfTI 2D/3D. Arrays are (C, Z, X, Y) in nnU-Net's
//! numpy order (SimpleITK's reversed axes), float32, as nnU-Net's readers return them
//! (`nnunetv2/imageio/simpleitk_reader_writer.py::SimpleITKIO.read_images`).
use serde::{Deserialize, Serialize};

/// Geometry of a raw file, kept to write predictions back in the user's format.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Geometry {
    /// Spacing in (Z, X, Y) numpy order; (999, 1, 1) for natural 2D images.
    pub spacing: [f64; 3],
    /// NIfTI affine (sform rows) when the source is NIfTI.
    #[serde(default)]
    pub affine: Option<[[f64; 4]; 4]>,
    /// File format the case came in ("png", "tif", "nii.gz", ...).
    #[serde(default)]
    pub format: String,
}

/// An image or a segmentation: `data` is C-contiguous (C, Z, X, Y).
#[derive(Debug, Clone)]
pub struct ImageData {
    pub shape: [usize; 4],
    pub data: Vec<f32>,
    pub geometry: Geometry,
}

mod natural;
mod nifti;

pub use natural::{read_natural, read_png_palette_indices, write_seg_natural};
pub use nifti::{read_nifti, write_nifti_f32, write_nifti_image, write_nifti_seg};

use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// The file endings nnunet-rs reads, longest first so `.nii.gz` wins over `.gz`.
const ENDINGS: &[(&str, &str)] = &[
    (".nii.gz", "nii.gz"),
    (".nii", "nii"),
    (".png", "png"),
    (".tiff", "tif"),
    (".tif", "tif"),
    (".jpeg", "jpg"),
    (".jpg", "jpg"),
    (".bmp", "bmp"),
];

/// The format of a file from its name (case-insensitive): "png", "tif", "jpg", "bmp", "nii.gz"
/// or "nii"; `None` for anything else.
pub fn detect_format(path: &Path) -> Option<&'static str> {
    let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
    ENDINGS.iter().find(|(end, _)| name.ends_with(end)).map(|(_, f)| *f)
}

/// The file name without its image ending (`case_1.nii.gz` -> `case_1`); `None` when the name
/// has no ending [`detect_format`] knows.
pub fn strip_image_ending(name: &str) -> Option<&str> {
    let lower = name.to_ascii_lowercase();
    ENDINGS.iter().find(|(end, _)| lower.ends_with(end)).map(|(end, _)| &name[..name.len() - end.len()])
}

/// Reads any supported image: NIfTI through [`read_nifti`], the rest through [`read_natural`].
pub fn read_image(path: &Path) -> Result<ImageData> {
    match detect_format(path) {
        Some("nii") | Some("nii.gz") => read_nifti(path),
        Some(_) => read_natural(path),
        None => Err(Error::Image {
            path: path.into(),
            msg: "unknown file ending; supported: .png .tif/.tiff .bmp .jpg/.jpeg .nii .nii.gz".into(),
        }),
    }
}

/// Reads the channel files of one case and concatenates them along C (each file may itself hold
/// several channels, e.g. one RGB PNG), as nnU-Net's readers do. All files must have the same
/// spatial shape; the geometry is the first file's.
pub fn read_case_images(files: &[PathBuf]) -> Result<ImageData> {
    let first = files.first().ok_or_else(|| Error::Invalid("read_case_images: no files given".into()))?;
    let mut out = read_image(first)?;
    for f in &files[1..] {
        let img = read_image(f)?;
        if img.shape[1..] != out.shape[1..] {
            return Err(Error::format(
                f,
                format!(
                    "spatial shape {:?} differs from {:?} of {}; all channel files of a case must have the same size",
                    &img.shape[1..],
                    &out.shape[1..],
                    first.display()
                ),
            ));
        }
        out.shape[0] += img.shape[0];
        out.data.extend_from_slice(&img.data);
    }
    Ok(out)
}

/// Reads a segmentation; it must have exactly one channel (a gray PNG, one NIfTI volume).
///
/// A palette (indexed-color) PNG is read as its indices, which is what a label map saved that
/// way means (see [`read_png_palette_indices`]).
pub fn read_seg(path: &Path) -> Result<ImageData> {
    if detect_format(path) == Some("png") {
        if let Some(img) = read_png_palette_indices(path)? {
            return Ok(img);
        }
    }
    let img = read_image(path)?;
    if img.shape[0] != 1 {
        return Err(Error::format(
            path,
            format!(
                "segmentation has {} channels (an RGB/RGBA or gray+alpha image?); masks must be single-channel label maps: save it as 8/16-bit grayscale where each pixel value is the label",
                img.shape[0]
            ),
        ));
    }
    Ok(img)
}

impl ImageData {
    /// Number of voxels per channel.
    pub fn n_voxels(&self) -> usize {
        self.shape[1] * self.shape[2] * self.shape[3]
    }
    /// Channel `c` as a slice of (Z, X, Y).
    pub fn channel(&self, c: usize) -> &[f32] {
        let n = self.n_voxels();
        &self.data[c * n..(c + 1) * n]
    }
}
