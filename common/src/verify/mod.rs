//! `nnunet verify`: checks an nnU-Net v2 raw dataset folder before any planning or GPU time is
//! spent, and reports EVERY problem found in one run, each naming the case and file, what is
//! wrong and what to do.
//!
//! It runs all of nnU-Net v2's integrity checks
//! (`nnunetv2/experiment_planning/verify_dataset_integrity.py::verify_dataset_integrity`): `dataset.json` and the folders exist, the
//! required keys are present, `numTraining` matches, every case has a label file, labels are
//! consecutive from 0, label files hold only declared labels, no NaN, image and label shapes and
//! spacings agree, and the channel count matches `channel_names`; an affine mismatch is only a
//! warning, as there. On top of that (from v1's `sanity_checks.py` and common 2D pitfalls): missing
//! channel files, stray files, case ids that collide, masks with several channels, infinite
//! values, unreadable or corrupt files, and test images with missing channels.
mod content;
mod files;
mod header;

use crate::imageio;
use crate::naming;
use crate::{Error, Result};
use rayon::prelude::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// What verification found. `problems` make the dataset unusable; `warnings` are reported
/// but do not fail (nnU-Net also only warns about them).
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub dataset_dir: PathBuf,
    /// Number of training cases found in `imagesTr/`.
    pub n_cases: usize,
    /// Number of test cases found in `imagesTs/`.
    pub n_test_cases: usize,
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
    /// `Err(Error::Verify(problems))` when anything is wrong.
    pub fn into_result(self) -> Result<()> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Verify(self.problems))
        }
    }
}

/// Verifies the nnU-Net v2 raw dataset in `dir`. `Err` only when the folder itself cannot be
/// read; everything wrong with its content is collected in the report.
pub fn verify_dataset(dir: &Path) -> Result<VerifyReport> {
    let mut rep = VerifyReport { dataset_dir: dir.to_path_buf(), ..Default::default() };
    if !dir.is_dir() {
        rep.problems.push(format!("{}: not a folder; pass the DatasetXXX_Name folder (the one holding dataset.json)", dir.display()));
        return Ok(rep);
    }
    let dj_path = dir.join("dataset.json");
    let (images_tr, labels_tr) = (dir.join("imagesTr"), dir.join("labelsTr"));
    for (d, what) in [(&images_tr, "imagesTr"), (&labels_tr, "labelsTr")] {
        if !d.is_dir() {
            rep.problems.push(format!(
                "{}: the {what}/ folder is missing; an nnU-Net v2 dataset needs imagesTr/ and labelsTr/ next to dataset.json",
                d.display()
            ));
        }
    }
    let Some(dj) = header::read_dataset_json(&dj_path, &mut rep) else { return Ok(rep) };
    let allowed = header::check_labels(&dj, &dj_path, &mut rep);
    if !images_tr.is_dir() || !labels_tr.is_dir() {
        return Ok(rep);
    }
    let ending = dj.file_ending.clone();
    let listing = files::list_dataset(dir, &ending, dj.num_channels(), dj.num_training, &mut rep)?;
    if imageio::detect_format(Path::new(&format!("x{ending}"))).is_none() {
        rep.problems
            .push(format!("{}: file_ending {ending:?} is not one nnunet-rs reads (.nii.gz, .nii, .png, .tif, .bmp)", dj_path.display()));
        return Ok(rep);
    }
    check_contents(dir, &ending, dj.num_channels(), &allowed, &listing, &mut rep);
    Ok(rep)
}

/// The content checks, one case per task, over the cases whose files are all there.
fn check_contents(dir: &Path, ending: &str, n_channels: usize, allowed: &BTreeSet<i64>, listing: &files::Listing, rep: &mut VerifyReport) {
    let complete = |chans: &BTreeSet<usize>| (0..listing.files_per_case).all(|k| chans.contains(&k));
    let channel_paths = |sub: &str, case: &str, chans: &BTreeSet<usize>| -> Vec<PathBuf> {
        chans.iter().map(|&k| dir.join(sub).join(naming::channel_file_name(case, k, ending))).collect()
    };
    let train: Vec<(&String, &BTreeSet<usize>)> =
        listing.cases.iter().filter(|(c, ch)| complete(ch) && listing.label_files.contains(*c)).collect();
    let test: Vec<(&String, &BTreeSet<usize>)> = listing.test_cases.iter().filter(|(_, ch)| complete(ch)).collect();
    let results: Vec<content::Findings> = train
        .par_iter()
        .map(|(case, chans)| {
            let label = dir.join("labelsTr").join(naming::label_file_name(case, ending));
            content::check_case(case, &channel_paths("imagesTr", case, chans), Some(&label), n_channels, allowed)
        })
        .chain(
            test.par_iter()
                .map(|(case, chans)| content::check_case(case, &channel_paths("imagesTs", case, chans), None, n_channels, allowed)),
        )
        .collect();
    for f in results {
        rep.problems.extend(f.problems);
        rep.warnings.extend(f.warnings);
    }
}
