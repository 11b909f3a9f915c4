//! NIfTI-1 reading and writing (`.nii`, `.nii.gz`), written against the NIfTI-1 header layout
//! (nifti1.h) instead of a crate so that the bytes we write are fully under our control: the
//! same input always gives the same file (gzip without a timestamp), and a 2D image becomes the
//! pseudo-3D volume nnU-Net's own conversion writes (`nnunet/utilities/file_conversions.py::
//! convert_2d_image_to_nifti`).
//!
//! Array order follows nnU-Net's SimpleITKIO: the NIfTI axes reversed, so a volume with NIfTI
//! `dim = (X, Y, Z)` becomes a C-contiguous (1, Z, Y, X) array, which is exactly the on-disk voxel
//! order, and the spacing is `pixdim[1..=3]` reversed. A 2D NIfTI becomes (1, 1, H, W) with spacing
//! `(999 * max(sp), sp_y, sp_x)` (v2: `imageio/simpleitk_reader_writer.py::read_images`).
//!
//! - [`read`] holds [`read_nifti`],
//! - [`write`] holds [`write_nifti_f32`], [`write_nifti_image`] and [`write_nifti_seg`].
mod read;
mod write;

pub use read::read_nifti;
pub use write::{write_nifti_f32, write_nifti_image, write_nifti_seg};

const HEADER_SIZE: usize = 348;
const VOX_OFFSET: usize = 352;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imageio::Geometry;

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
