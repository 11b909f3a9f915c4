//! Content checks of one case, run in parallel over the cases
//! (`nnunetv2/experiment_planning/verify_dataset_integrity.py::check_cases`, `verify_labels`):
//! every file readable, channel count, no NaN/inf, label values declared, image and mask shapes
//! and spacings agree (an affine mismatch is only a warning, as there).
use crate::imageio::{self, ImageData};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// What one case check found.
#[derive(Debug, Default)]
pub(super) struct Findings {
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
}

fn nonfinite(img: &ImageData) -> (usize, usize) {
    let nan = img.data.iter().filter(|v| v.is_nan()).count();
    let inf = img.data.iter().filter(|v| v.is_infinite()).count();
    (nan, inf)
}

/// Reads one case and checks its content.
pub(super) fn check_case(case: &str, files: &[PathBuf], seg_path: Option<&Path>, n_channels: usize, allowed: &BTreeSet<i64>) -> Findings {
    let mut out = Findings::default();
    let images = check_images(case, files, n_channels, &mut out.problems);
    let Some(seg_path) = seg_path else { return out };
    let seg = match imageio::read_image(seg_path) {
        Ok(s) => s,
        Err(e) => {
            out.problems.push(format!("case {case}: {}: unreadable or corrupt label file ({e}); re-export it", seg_path.display()));
            return out;
        }
    };
    check_seg_values(case, seg_path, &seg, allowed, &mut out.problems);
    if let Some((f0, i0)) = images.first() {
        check_alignment(case, (f0, i0), (seg_path, &seg), &mut out);
    }
    out
}

/// Reads each channel file separately so a corrupt file is named exactly; checks the channel
/// count, non-finite values and that all channels share a size. Returns the images read.
fn check_images(case: &str, files: &[PathBuf], n_channels: usize, problems: &mut Vec<String>) -> Vec<(PathBuf, ImageData)> {
    let mut images: Vec<(PathBuf, ImageData)> = Vec::new();
    for f in files {
        match imageio::read_image(f) {
            Ok(img) => images.push((f.clone(), img)),
            Err(e) => problems.push(format!("case {case}: {}: unreadable or corrupt ({e}); re-export the file", f.display())),
        }
    }
    let total_channels: usize = images.iter().map(|(_, i)| i.shape[0]).sum();
    if images.len() == files.len() && total_channels != n_channels {
        let per: Vec<String> =
            images.iter().map(|(f, i)| format!("{} has {}", f.file_name().unwrap().to_string_lossy(), i.shape[0])).collect();
        problems.push(format!(
            "case {case}: unexpected number of channels: read {total_channels} ({}) but dataset.json declares {n_channels} in channel_names; an RGB PNG holds 3 channels in one file: make channel_names match, or save the images as gray",
            per.join(", ")
        ));
    }
    for (f, img) in &images {
        let (nan, inf) = nonfinite(img);
        if nan + inf > 0 {
            problems.push(format!(
                "case {case}: {}: contains {nan} NaN and {inf} infinite value(s); nnU-Net cannot normalise them: replace them (e.g. with 0 or the image minimum) before training",
                f.display()
            ));
        }
        if let Some((f0, i0)) = images.first() {
            if img.shape[1..] != i0.shape[1..] {
                problems.push(format!(
                    "case {case}: {}: size {:?} differs from {:?} of {}; all channels of a case must have the same size",
                    f.display(),
                    &img.shape[1..],
                    &i0.shape[1..],
                    f0.display()
                ));
            }
        }
    }
    images
}

/// The mask: one channel, finite, only declared label values.
fn check_seg_values(case: &str, seg_path: &Path, seg: &ImageData, allowed: &BTreeSet<i64>, problems: &mut Vec<String>) {
    if seg.shape[0] != 1 {
        problems.push(format!(
            "case {case}: {}: the mask has {} channels (RGB/RGBA?); masks must be single-channel label maps: save it as 8/16-bit grayscale where each pixel value is the label",
            seg_path.display(),
            seg.shape[0]
        ));
    }
    let (nan, inf) = nonfinite(seg);
    if nan + inf > 0 {
        problems.push(format!(
            "case {case}: {}: the mask contains {nan} NaN and {inf} infinite value(s); masks must hold integer labels only",
            seg_path.display()
        ));
    }
    let mut bad: BTreeSet<String> = BTreeSet::new();
    let mut seen_fractional = false;
    let mut uniq: BTreeSet<u32> = BTreeSet::new();
    for &v in seg.channel(0) {
        uniq.insert(v.to_bits());
    }
    for bits in uniq {
        let v = f32::from_bits(bits);
        if !v.is_finite() {
            continue;
        }
        if v.fract() != 0.0 {
            seen_fractional = true;
            bad.insert(format!("{v}"));
        } else if !allowed.contains(&(v as i64)) {
            bad.insert(format!("{}", v as i64));
        }
    }
    if !bad.is_empty() {
        let allowed_s: Vec<String> = allowed.iter().map(|v| v.to_string()).collect();
        problems.push(format!(
            "case {case}: {}: unexpected label value(s) {{{}}} not declared in dataset.json labels {{{}}}{}; remap the mask values (nnunet convert does this: e.g. 0/255 -> 0/1) or declare the labels",
            seg_path.display(),
            bad.into_iter().collect::<Vec<_>>().join(", "),
            allowed_s.join(", "),
            if seen_fractional { " (non-integer values: a resampled or lossy-compressed mask?)" } else { "" }
        ));
    }
}

/// Image and mask agree in shape and spacing; a differing affine is a warning.
fn check_alignment(case: &str, image: (&PathBuf, &ImageData), mask: (&Path, &ImageData), out: &mut Findings) {
    let ((f0, i0), (seg_path, seg)) = (image, mask);
    if seg.shape[1..] != i0.shape[1..] {
        out.problems.push(format!(
            "case {case}: image/mask size mismatch: {} is {:?} but {} is {:?} (Z, Y, X); the mask must have exactly the image's size: re-export or resample the mask",
            f0.display(),
            &i0.shape[1..],
            seg_path.display(),
            &seg.shape[1..]
        ));
    }
    let (a, b) = (i0.geometry.spacing, seg.geometry.spacing);
    if a.iter().zip(b.iter()).any(|(x, y)| (x - y).abs() > 1e-8 + 1e-5 * y.abs()) {
        out.problems.push(format!(
            "case {case}: spacing mismatch: {} has spacing {a:?} but {} has {b:?}; image and mask must share the voxel spacing",
            f0.display(),
            seg_path.display()
        ));
    }
    if let (Some(x), Some(y)) = (i0.geometry.affine, seg.geometry.affine) {
        let differs = x.iter().flatten().zip(y.iter().flatten()).any(|(p, q)| (p - q).abs() > 1e-4 * (1.0 + q.abs()));
        if differs {
            out.warnings.push(format!(
                "case {case}: the affine (origin/direction) of {} differs from {}; nnU-Net only warns about this, but check that image and mask are aligned",
                f0.display(),
                seg_path.display()
            ));
        }
    }
}
