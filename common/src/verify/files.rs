//! The file listing checks: image folders hold only `{case}_{XXXX}{ending}` files
//! ([`crate::naming`]), every case has its channel files and a label file, no stray files, no case
//! ids that collide on case-insensitive file systems.
use super::VerifyReport;
use crate::naming;
use crate::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Case id -> channel indices found in an image folder.
pub(super) type ChannelFiles = BTreeMap<String, BTreeSet<usize>>;

/// What the listing found, for the content checks.
pub(super) struct Listing {
    pub cases: ChannelFiles,
    pub test_cases: ChannelFiles,
    /// Channel files each case must have (see [`files_per_case`]).
    pub files_per_case: usize,
    /// Case ids with a label file.
    pub label_files: BTreeSet<String>,
}

fn list_files(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        out.push(e.file_name().to_string_lossy().into_owned());
    }
    out.sort();
    Ok(out)
}

/// Scans an image folder: case -> channel indices found. Stray files go to `problems`.
fn scan_images(
    dir: &Path,
    ending: &str,
    problems: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Result<BTreeMap<String, BTreeSet<usize>>> {
    let folder = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut cases: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for name in list_files(dir)? {
        let p = dir.join(&name);
        if naming::is_system_file(&name) {
            warnings.push(format!("{}: hidden/system file in {folder}/ (ignored by nnU-Net); you can delete it", p.display()));
            continue;
        }
        if p.is_dir() {
            problems.push(format!("{}: unexpected folder inside {folder}/; nnU-Net wants flat folders of files: move it out", p.display()));
            continue;
        }
        match naming::split_channel_file(&name, ending) {
            Some((case, ch)) => {
                cases.entry(case.to_string()).or_default().insert(ch);
            }
            None => problems.push(format!(
                "{}: stray file in {folder}/: its name is not {{case}}_{{XXXX}}{ending} (XXXX = 4-digit channel index, file_ending = {ending:?} from dataset.json); rename it or move it out of the dataset",
                p.display()
            )),
        }
    }
    Ok(cases)
}

/// Reports ids that only differ by letter case: they collide on macOS/Windows file systems and
/// in many tools that lower-case names.
fn check_case_collisions<'a>(ids: impl Iterator<Item = &'a String>, folder: &str, problems: &mut Vec<String>) {
    let mut seen: BTreeMap<String, &String> = BTreeMap::new();
    for id in ids {
        if let Some(prev) = seen.insert(id.to_lowercase(), id) {
            problems.push(format!(
                "duplicate case id in {folder}/: {prev:?} and {id:?} differ only in letter case and collide on case-insensitive file systems; rename one of them"
            ));
        }
    }
}

/// NIfTI holds one channel per file; a natural image file may hold several (one RGB
/// `_0000.png` = 3 channels, `nnunetv2/imageio/natural_image_reader_writer.py::NaturalImage2DIO`),
/// so there the number of files per case is the largest found and the channel count is checked on
/// content.
fn files_per_case(ending: &str, n_channels: usize, cases: &ChannelFiles) -> usize {
    let one_channel_per_file = ending.ends_with(".nii") || ending.ends_with(".nii.gz");
    if one_channel_per_file {
        n_channels
    } else {
        cases.values().map(|c| c.len()).max().unwrap_or(1)
    }
}

/// Lists `imagesTr/`, `labelsTr/` and (when present) `imagesTs/` of `dir` and reports what is
/// missing or stray in `rep`.
pub(super) fn list_dataset(dir: &Path, ending: &str, n_channels: usize, num_training: usize, rep: &mut VerifyReport) -> Result<Listing> {
    let (images_tr, labels_tr, images_ts) = (dir.join("imagesTr"), dir.join("labelsTr"), dir.join("imagesTs"));
    let dj_path = dir.join("dataset.json");
    let cases = scan_images(&images_tr, ending, &mut rep.problems, &mut rep.warnings)?;
    rep.n_cases = cases.len();
    check_case_collisions(cases.keys(), "imagesTr", &mut rep.problems);
    if num_training != cases.len() {
        rep.problems.push(format!(
            "{}: numTraining is {} but imagesTr/ holds {} case(s); did not find the expected number of training cases: set numTraining to {} or add/remove cases",
            dj_path.display(),
            num_training,
            cases.len(),
            cases.len()
        ));
    }
    let files_per_case = files_per_case(ending, n_channels, &cases);
    for (case, chans) in &cases {
        for c in 0..files_per_case {
            if !chans.contains(&c) {
                let name = naming::channel_file_name(case, c, ending);
                rep.problems.push(format!(
                    "case {case}: missing channel file imagesTr/{name} (dataset.json declares {n_channels} channel(s)); add the file or fix channel_names"
                ));
            }
        }
        for &c in chans.iter().filter(|&&c| c >= files_per_case.max(n_channels)) {
            let name = naming::channel_file_name(case, c, ending);
            rep.problems.push(format!(
                "case {case}: imagesTr/{name} is channel {c} but dataset.json declares only {n_channels} channel(s) in channel_names; add the channel name or remove the file"
            ));
        }
    }
    let label_files = list_label_files(&labels_tr, ending, &cases, rep)?;
    for case in cases.keys().filter(|c| !label_files.contains(*c)) {
        rep.problems.push(format!("case {case}: label file labelsTr/{case}{ending} is missing; every training case needs a label file (or move the case to imagesTs/)"));
    }
    let test_cases = if images_ts.is_dir() {
        let t = scan_images(&images_ts, ending, &mut rep.problems, &mut rep.warnings)?;
        check_case_collisions(t.keys(), "imagesTs", &mut rep.problems);
        for (case, chans) in &t {
            for c in (0..files_per_case).filter(|c| !chans.contains(c)) {
                let name = naming::channel_file_name(case, c, ending);
                rep.problems.push(format!("test case {case}: missing channel file imagesTs/{name}; add it or fix channel_names"));
            }
        }
        t
    } else {
        BTreeMap::new()
    };
    rep.n_test_cases = test_cases.len();
    Ok(Listing { cases, test_cases, files_per_case, label_files })
}

/// The case ids of `labelsTr/` (`{case}{ending}`); stray files and labels without images are problems.
fn list_label_files(labels_tr: &Path, ending: &str, cases: &ChannelFiles, rep: &mut VerifyReport) -> Result<BTreeSet<String>> {
    let mut label_files = BTreeSet::new();
    for name in list_files(labels_tr)? {
        let p = labels_tr.join(&name);
        if naming::is_system_file(&name) {
            rep.warnings.push(format!("{}: hidden/system file in labelsTr/ (ignored by nnU-Net); you can delete it", p.display()));
            continue;
        }
        match name.strip_suffix(ending) {
            Some(case) if !p.is_dir() && !case.is_empty() => {
                if !cases.contains_key(case) {
                    rep.problems.push(format!(
                        "{}: stray label file: there is no image imagesTr/{} for it; add the images or remove the label",
                        p.display(),
                        naming::channel_file_name(case, 0, ending)
                    ));
                }
                label_files.insert(case.to_string());
            }
            _ => rep.problems.push(format!(
                "{}: stray file in labelsTr/: its name is not {{case}}{ending}; rename it or move it out of the dataset",
                p.display()
            )),
        }
    }
    Ok(label_files)
}
