//! Image reading and writing behind one type, [`ImageData`]: PNG (8/16-bit), TIFF (8/16-bit,
//! float32), BMP, JPEG, gray/RGB/RGBA, and NIfTI 2D/3D. Arrays are (C, Z, X, Y) in nnU-Net's
//! numpy order (SimpleITK's reversed axes), float32, as nnU-Net's readers return them (SPEC §1.2).
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
