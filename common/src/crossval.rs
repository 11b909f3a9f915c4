//! The cross-validation summary, above both evaluation and postprocessing
//! (`nnunetv2/evaluation/accumulate_cv_results.py::accumulate_cv_results`, and the postprocessing
//! step of `nnunetv2/evaluation/find_best_configuration.py::find_best_configuration`).
//!
//! [`crossval_summary`] merges the folds' `validation/` predictions into
//! `crossval_results_folds_0_1_2_3_4/`, evaluates them ([`crate::evaluate`]), determines the
//! postprocessing on them ([`crate::postprocess`]) and writes the numbers a user reports
//! ([`CvSummary`], `cv_summary.json`).
use crate::dataset_json::DatasetJson;
use crate::evaluate::{self, Summary};
use crate::{error, hash, masks, postprocess};
use crate::{Error, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::path::Path;

/// A score that may be NaN (a label absent from every reference and prediction): `null` in JSON.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score(pub f64);

impl Serialize for Score {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if self.0.is_finite() {
            s.serialize_f64(self.0)
        } else {
            s.serialize_none()
        }
    }
}

impl<'de> Deserialize<'de> for Score {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(Score(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN)))
    }
}

/// `cv_summary.json`: what a user reports after a five-fold run. Fields are in alphabetical order,
/// as the file lays them out. Maps are keyed by fold index, or by label or region as `summary.json`
/// keys them ("1", "(1, 2)").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CvSummary {
    /// Mean Dice per foreground label (or region) over all merged validation cases.
    pub cv_dice_per_label: BTreeMap<String, Score>,
    /// The same after the chosen postprocessing.
    pub cv_dice_per_label_postprocessed: BTreeMap<String, Score>,
    /// Mean over labels of [`Self::cv_dice_per_label`] (nnU-Net's `foreground_mean`).
    pub cv_foreground_dice: Score,
    pub cv_foreground_dice_postprocessed: Score,
    /// Foreground-mean Dice of each fold's own validation cases.
    pub fold_foreground_dice: BTreeMap<usize, Score>,
    pub folds: Vec<usize>,
    /// Foreground label value (or region key) -> name from dataset.json.
    pub label_names: BTreeMap<String, String>,
    /// Validation cases over all folds.
    pub n_cases: usize,
    pub n_cases_per_fold: BTreeMap<usize, usize>,
    /// The chosen postprocessing steps, described in words (empty: none helps).
    pub postprocessing: Vec<String>,
    pub postprocessing_file: String,
    pub summary_file: String,
}

impl CvSummary {
    pub fn load(path: &Path) -> Result<Self> {
        error::read_json(path)
    }
}

/// `crossval_results_folds_0_1_2_3_4` for folds [0, 1, 2, 3, 4] (nnU-Net's `folds_tuple_to_string`).
pub fn crossval_folder_name(folds: &[usize]) -> String {
    format!("crossval_results_folds_{}", folds.iter().map(|f| f.to_string()).collect::<Vec<_>>().join("_"))
}

fn copy_atomic(src: &Path, dst: &Path) -> Result<()> {
    let bytes = std::fs::read(src).map_err(|e| Error::io(src, e))?;
    hash::write_atomic(dst, &bytes)
}

/// The number of validation cases and the foreground-mean Dice of each fold.
struct FoldScores {
    n_cases: BTreeMap<usize, usize>,
    dice: BTreeMap<usize, Score>,
}

/// Copies every fold's validation predictions into `merged` (an overlap is an error) and scores
/// each fold from its own `summary.json` when present, else by evaluating it now.
fn merge_folds(model_dir: &Path, folds: &[usize], merged: &Path, gt_dir: &Path, dataset_json: &DatasetJson) -> Result<FoldScores> {
    let ending = &dataset_json.file_ending;
    let labels = crate::labels::LabelManager::new(dataset_json)?.evaluation_targets();
    let mut scores = FoldScores { n_cases: BTreeMap::new(), dice: BTreeMap::new() };
    for &f in folds {
        let val = model_dir.join(format!("fold_{f}")).join("validation");
        if !val.is_dir() {
            return Err(Error::Invalid(format!(
                "fold {f} of {} has no validation folder {}; train (or validate) that fold first, or leave it out of --folds",
                model_dir.display(),
                val.display()
            )));
        }
        let files = masks::list_files(&val, ending)?;
        for pf in &files {
            let dst = merged.join(pf);
            if dst.is_file() {
                return Err(Error::Invalid(format!("more than one fold has a validation prediction for case {pf}; the splits overlap")));
            }
            copy_atomic(&val.join(pf), &dst)?;
        }
        let fold_summary = match Summary::load(&val.join("summary.json")) {
            Ok(s) => s,
            Err(_) => evaluate::compute_metrics_on_folder(gt_dir, &val, None, &labels, ending, dataset_json.ignore_label())?,
        };
        scores.dice.insert(f, Score(fold_summary.foreground_mean.dice));
        scores.n_cases.insert(f, files.len());
    }
    Ok(scores)
}

/// Merges the folds' validation predictions into `model_dir/crossval_results_folds_.../`
/// (nnU-Net's `accumulate_cv_results`), evaluates them against `gt_dir`, determines the
/// postprocessing on them (writes `postprocessing.json` and `postprocessed/`), and writes
/// `cv_summary.json` next to `summary.json`: per-fold mean foreground Dice, the CV Dice per label
/// and overall, with and without postprocessing. Returns that summary.
pub fn crossval_summary(model_dir: &Path, folds: &[usize], gt_dir: &Path, dataset_json: &DatasetJson) -> Result<CvSummary> {
    let merged = model_dir.join(crossval_folder_name(folds));
    if merged.is_dir() {
        std::fs::remove_dir_all(&merged).map_err(|e| Error::io(&merged, e))?;
    }
    std::fs::create_dir_all(&merged).map_err(|e| Error::io(&merged, e))?;
    for name in ["dataset.json", "plans.json"] {
        let src = model_dir.join(name);
        if src.is_file() {
            copy_atomic(&src, &merged.join(name))?;
        }
    }
    let fold_scores = merge_folds(model_dir, folds, &merged, gt_dir, dataset_json)?;
    let lm = crate::labels::LabelManager::new(dataset_json)?;
    let (ending, labels) = (&dataset_json.file_ending, lm.evaluation_targets());
    let summary = evaluate::compute_metrics_on_folder(
        gt_dir,
        &merged,
        Some(&merged.join("summary.json")),
        &labels,
        ending,
        dataset_json.ignore_label(),
    )?;
    let pp = postprocess::determine_postprocessing(&merged, gt_dir, dataset_json)?;
    // `nnunet predict` applies the model folder's postprocessing.json (nnU-Net keeps its
    // postprocessing.pkl next to the folds too).
    copy_atomic(&merged.join("postprocessing.json"), &model_dir.join("postprocessing.json"))?;
    let per_label = |s: &Summary| s.mean.iter().map(|(l, m)| (l.key(), Score(m.dice))).collect();
    let out = CvSummary {
        cv_dice_per_label: per_label(&summary),
        cv_dice_per_label_postprocessed: per_label(&pp.postprocessed),
        cv_foreground_dice: Score(summary.foreground_mean.dice),
        cv_foreground_dice_postprocessed: Score(pp.postprocessed.foreground_mean.dice),
        fold_foreground_dice: fold_scores.dice,
        folds: folds.to_vec(),
        label_names: label_names(dataset_json, &lm),
        n_cases: summary.metric_per_case.len(),
        n_cases_per_fold: fold_scores.n_cases,
        postprocessing: pp.steps.iter().map(|s| s.describe()).collect(),
        postprocessing_file: merged.join("postprocessing.json").display().to_string(),
        summary_file: merged.join("summary.json").display().to_string(),
    };
    error::write_json(&merged.join("cv_summary.json"), &out)?;
    Ok(out)
}

/// Foreground label (or region) key -> its name in dataset.json.
fn label_names(dataset_json: &DatasetJson, lm: &crate::labels::LabelManager) -> BTreeMap<String, String> {
    use crate::dataset_json::LabelValue;
    use crate::labels::LabelOrRegion;
    dataset_json
        .labels
        .iter()
        .filter(|(name, _)| name.as_str() != "ignore")
        .filter_map(|(name, v)| {
            let key = match v {
                LabelValue::One(x) => LabelOrRegion::Label(*x),
                LabelValue::Region(r) if lm.has_regions() => LabelOrRegion::Region(r.clone()),
                LabelValue::Region(_) => return None,
            };
            (!key.is_background()).then(|| (key.key(), name.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_scores_are_null_and_read_back_as_nan() {
        let text = serde_json::to_string(&[Score(0.5), Score(f64::NAN)]).unwrap();
        assert_eq!(text, "[0.5,null]");
        let back: Vec<Score> = serde_json::from_str(&text).unwrap();
        assert_eq!(back[0], Score(0.5));
        assert!(back[1].0.is_nan());
        assert_eq!(crossval_folder_name(&[0, 1, 2, 3, 4]), "crossval_results_folds_0_1_2_3_4");
    }
}
