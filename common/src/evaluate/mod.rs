//! Folder evaluation (`nnunetv2/evaluation/evaluate_predictions.py::compute_metrics_on_folder`,
//! `compute_metrics`).
//!
//! [`evaluate_folders`] compares every prediction file of a folder with the reference file of the
//! same name and writes `summary.json` in nnU-Net v2's exact layout (keys sorted, 4-space indent,
//! `NaN` for labels absent from both masks, per-case counts as ints and means as floats), so a
//! user's scripts that read nnU-Net's summaries read ours unchanged.
//!
//! - [`summary`]: the typed content of `summary.json` ([`Summary`]).
//! - [`pyjson`]: JSON exactly as Python's `json.dump` writes it.
//!
//! The cross-validation summary, which evaluates and then postprocesses, sits above both stages:
//! [`crate::crossval`].
pub mod pyjson;
pub mod summary;

pub use crate::labels::LabelOrRegion;
pub use crate::masks::{list_files, read_labels};
pub use summary::{CaseResult, LabelMetrics, MeanMetrics, Summary};

use crate::metrics;
use crate::{Error, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Evaluates one prediction against its reference (nnU-Net's `compute_metrics`).
pub fn evaluate_case(reference: &Path, prediction: &Path, labels: &[LabelOrRegion], ignore_label: Option<i64>) -> Result<CaseResult> {
    evaluate_case_with(reference, prediction, labels, ignore_label, |_, _| {})
}

/// [`evaluate_case`] with `transform` applied to the prediction (Z, X, Y) after reading it, e.g.
/// a postprocessing step evaluated in memory.
pub fn evaluate_case_with(
    reference: &Path,
    prediction: &Path,
    labels: &[LabelOrRegion],
    ignore_label: Option<i64>,
    transform: impl Fn(&mut [i32], [usize; 3]),
) -> Result<CaseResult> {
    let (rs, r) = read_labels(reference)?;
    let (ps, mut p) = read_labels(prediction)?;
    if rs != ps {
        return Err(Error::format(
            prediction,
            format!(
                "prediction has shape {ps:?} but the reference {} has {rs:?}; predictions must be in the reference's geometry",
                reference.display()
            ),
        ));
    }
    transform(&mut p, ps);
    let regions: Vec<Vec<i32>> = labels.iter().map(|l| l.members().iter().map(|&v| v as i32).collect()).collect();
    let conf = metrics::confusion_per_region(&r, &p, &regions, ignore_label.map(|l| l as i32));
    Ok(CaseResult {
        reference_file: reference.display().to_string(),
        prediction_file: prediction.display().to_string(),
        metrics: labels.iter().zip(conf).map(|(l, c)| (l.clone(), LabelMetrics::from(c))).collect(),
    })
}

/// Reference files (ending with `file_ending`) in `gt_dir` that have no prediction of the same name
/// in `pred_dir`, sorted. nnU-Net's `chill=True` evaluates only the predictions present; callers
/// report these cases (`nnunet evaluate` warns, or refuses with `--strict`).
pub fn missing_predictions(gt_dir: &Path, pred_dir: &Path, file_ending: &str) -> Result<Vec<String>> {
    let predicted = list_files(pred_dir, file_ending)?;
    Ok(list_files(gt_dir, file_ending)?.into_iter().filter(|f| predicted.binary_search(f).is_err()).collect())
}

/// nnU-Net's `compute_metrics_on_folder` with `chill=True`: every prediction file in `pred_dir`
/// (ending with `file_ending`) is compared with the file of the same name in `gt_dir`.
/// `labels` are the labels or regions to evaluate (nnU-Net passes the foreground labels, or the
/// foreground regions: `LabelManager.foreground_regions`).
/// Writes `output` (if given) and returns the summary.
pub fn compute_metrics_on_folder(
    gt_dir: &Path,
    pred_dir: &Path,
    output: Option<&Path>,
    labels: &[LabelOrRegion],
    file_ending: &str,
    ignore_label: Option<i64>,
) -> Result<Summary> {
    if labels.is_empty() {
        return Err(Error::Invalid("evaluation needs at least one label; dataset.json declares no foreground label".into()));
    }
    let files = list_files(pred_dir, file_ending)?;
    if files.is_empty() {
        return Err(Error::Invalid(format!(
            "no predictions ending with {file_ending:?} in {}; nothing to evaluate (check the folder and the file ending in dataset.json)",
            pred_dir.display()
        )));
    }
    let missing: Vec<&String> = files.iter().filter(|f| !gt_dir.join(f).is_file()).collect();
    if !missing.is_empty() {
        return Err(Error::Invalid(format!(
            "{} prediction(s) have no reference of the same name in {}: {}",
            missing.len(),
            gt_dir.display(),
            missing.iter().take(10).map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        )));
    }
    let cases =
        files.par_iter().map(|f| evaluate_case(&gt_dir.join(f), &pred_dir.join(f), labels, ignore_label)).collect::<Result<Vec<_>>>()?;
    let summary = Summary::from_cases(labels, cases);
    if let Some(out) = output {
        summary.save(out)?;
    }
    Ok(summary)
}

/// Evaluates `pred_dir` against `gt_dir` and writes `pred_dir/summary.json`.
pub fn evaluate_folders(
    gt_dir: &Path,
    pred_dir: &Path,
    labels: &[LabelOrRegion],
    file_ending: &str,
    ignore_label: Option<i64>,
) -> Result<Summary> {
    compute_metrics_on_folder(gt_dir, pred_dir, Some(&pred_dir.join("summary.json")), labels, file_ending, ignore_label)
}

/// The default location of the reference masks of a dataset for CV evaluation:
/// `nnUNet_preprocessed/<ds>/gt_segmentations`.
pub fn default_gt_dir(preprocessed_dataset_dir: &Path) -> PathBuf {
    preprocessed_dataset_dir.join("gt_segmentations")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_cases_without_a_prediction_are_listed() {
        let gt = tempfile::tempdir().unwrap();
        let pred = tempfile::tempdir().unwrap();
        for f in ["a.png", "b.png", "c.png", ".hidden.png", "notes.txt"] {
            std::fs::write(gt.path().join(f), b"x").unwrap();
        }
        std::fs::write(pred.path().join("b.png"), b"x").unwrap();
        assert_eq!(missing_predictions(gt.path(), pred.path(), ".png").unwrap(), vec!["a.png", "c.png"]);
        for f in ["a.png", "c.png"] {
            std::fs::write(pred.path().join(f), b"x").unwrap();
        }
        assert!(missing_predictions(gt.path(), pred.path(), ".png").unwrap().is_empty());
    }
}
