//! The training cases of a raw nnU-Net dataset (`imagesTr/` + `labelsTr/`), as the fingerprint,
//! planning and preprocessing stages read them (`nnunetv2/utilities/utils.py::
//! get_filenames_of_train_images_and_targets`), and the structural checks planning cannot run
//! without. The full check is [`crate::verify`].
use crate::dataset_json::DatasetJson;
use crate::naming;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One training case of a raw dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct RawCase {
    pub id: String,
    /// Channel files `{id}_{XXXX}{ending}`, sorted.
    pub images: Vec<PathBuf>,
    pub label: PathBuf,
}

/// Case ids from `imagesTr/` (file names minus `_XXXX` + file ending, see [`naming`]), sorted;
/// labels in `labelsTr/{id}{ending}`. Hidden files and names that do not follow the rule are
/// skipped (`nnunet verify` reports them).
pub fn raw_training_cases(raw_dataset_dir: &Path, dataset_json: &DatasetJson) -> Result<Vec<RawCase>> {
    let ending = &dataset_json.file_ending;
    let img_dir = raw_dataset_dir.join("imagesTr");
    let rd = std::fs::read_dir(&img_dir).map_err(|e| Error::io(&img_dir, e))?;
    let mut by_case: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if let Some((id, _)) = naming::split_channel_file(&name, ending) {
            by_case.entry(id.to_string()).or_default().push(e.path());
        }
    }
    let mut out = Vec::with_capacity(by_case.len());
    for (id, mut images) in by_case {
        images.sort();
        let label = raw_dataset_dir.join("labelsTr").join(naming::label_file_name(&id, ending));
        out.push(RawCase { id, images, label });
    }
    if out.is_empty() {
        return Err(Error::Invalid(format!(
            "no training images ending in {ending:?} found in {}; is this an nnU-Net raw dataset (imagesTr/CASE_0000{ending})?",
            img_dir.display()
        )));
    }
    Ok(out)
}

/// The structural checks planning cannot run without (`nnunetv2/experiment_planning/
/// verify_dataset_integrity.py::verify_dataset_integrity`, its first checks): every case has a
/// label and the case count equals `numTraining`. The full check is `nnunet verify`.
pub fn basic_verify(raw: &Path, dj: &DatasetJson) -> Result<()> {
    let cases = raw_training_cases(raw, dj)?;
    let mut problems = Vec::new();
    if cases.len() != dj.num_training {
        problems.push(format!(
            "Did not find the expected number of training cases ({}). Found {} instead (dataset.json numTraining vs {}/imagesTr)",
            dj.num_training,
            cases.len(),
            raw.display()
        ));
    }
    let missing: Vec<&str> = cases.iter().filter(|c| !c.label.is_file()).map(|c| c.id.as_str()).collect();
    if !missing.is_empty() {
        problems.push(format!("not all training cases have a label file in labelsTr. Fix that. Missing: {missing:?}"));
    }
    let nch = dj.num_channels();
    for c in &cases {
        if c.images.len() > nch {
            problems.push(format!("case {} has {} channel files but dataset.json declares {nch} channel(s)", c.id, c.images.len()));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Verify(problems))
    }
}
