//! Choosing the postprocessing on the cross-validation predictions
//! (`nnunetv2/postprocessing/remove_connected_components.py::determine_postprocessing`): (a) all
//! foreground labels as one mask, accepted iff the foreground-mean Dice strictly improves and no
//! label's mean Dice gets worse; (b) with more than one label, each label on its own, starting from
//! the accepted state, accepted iff that label's mean Dice strictly improves. With regions, (a) uses
//! the foreground labels and (b) each region (the union of its labels).
use super::{apply_postprocessing_to_folder, apply_steps, KeepLargest, LCC_FN_NAME};
use crate::dataset_json::DatasetJson;
use crate::evaluate::pyjson::{self, Value};
use crate::evaluate::{self, LabelOrRegion, Summary};
use crate::masks;
use crate::{Error, Result};
use rayon::prelude::*;
use std::path::Path;

/// The outcome of [`determine_postprocessing`].
#[derive(Debug, Clone)]
pub struct PostprocessingChoice {
    /// Accepted steps, in application order (empty: postprocessing does not help).
    pub steps: Vec<KeepLargest>,
    /// Evaluation of the predictions as they are.
    pub baseline: Summary,
    /// Evaluation after the accepted steps (equals `baseline` when none was accepted).
    pub postprocessed: Summary,
}

/// What the selection evaluates against: the reference folder, the predictions and the labels.
struct Candidates<'a> {
    gt_dir: &'a Path,
    pred_dir: &'a Path,
    files: Vec<String>,
    /// What is evaluated: the foreground labels, or the regions.
    labels: Vec<LabelOrRegion>,
    /// The all-foreground step's labels (`label_manager.foreground_labels`, with regions too).
    foreground: Vec<i64>,
    ignore: Option<i64>,
}

impl Candidates<'_> {
    /// Evaluates the predictions after applying `steps` in memory.
    fn evaluate(&self, steps: &[KeepLargest]) -> Result<Summary> {
        let cases = self
            .files
            .par_iter()
            .map(|f| {
                evaluate::evaluate_case_with(&self.gt_dir.join(f), &self.pred_dir.join(f), &self.labels, self.ignore, |p, shape| {
                    apply_steps(p, shape, steps)
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Summary::from_cases(&self.labels, cases))
    }

    /// Steps (a) and (b) of the selection, starting from `baseline`; returns the accepted steps.
    fn choose(&self, baseline: &Summary) -> Result<Vec<KeepLargest>> {
        let mut steps = Vec::new();
        let fg_step = KeepLargest::all_foreground(&self.foreground);
        let pp = self.evaluate(std::slice::from_ref(&fg_step))?;
        // Python comparisons with NaN are false, so a NaN mean never blocks or enables a step.
        let some_label_worse = pp.mean.iter().any(|(l, m)| baseline.mean.get(l).is_some_and(|b| m.dice < b.dice));
        let mut current = baseline.clone();
        if pp.foreground_mean.dice > baseline.foreground_mean.dice && !some_label_worse {
            tracing::info!(
                "keeping only the largest foreground component improves the mean Dice from {:.5} to {:.5}",
                baseline.foreground_mean.dice,
                pp.foreground_mean.dice
            );
            steps.push(fg_step);
            current = pp;
        }
        if self.labels.len() > 1 {
            for l in &self.labels {
                let mut candidate = steps.clone();
                candidate.push(KeepLargest::target(l));
                let pp = self.evaluate(&candidate)?;
                if pp.mean[l].dice > current.mean[l].dice {
                    tracing::info!(
                        "keeping only the largest component of {l} improves its Dice from {:.5} to {:.5}",
                        current.mean[l].dice,
                        pp.mean[l].dice
                    );
                    steps = candidate;
                    current = pp;
                }
            }
        }
        Ok(steps)
    }
}

/// Chooses the postprocessing on the (cross-validation) predictions in `pred_dir` against
/// `gt_dir`, as nnU-Net's `determine_postprocessing` does. Writes `pred_dir/summary.json` if it is
/// missing, `pred_dir/postprocessing.json`, and `pred_dir/postprocessed/` (all predictions with the
/// accepted steps applied, plus their `summary.json`).
pub fn determine_postprocessing(pred_dir: &Path, gt_dir: &Path, dataset_json: &DatasetJson) -> Result<PostprocessingChoice> {
    let ending = &dataset_json.file_ending;
    let lm = crate::labels::LabelManager::new(dataset_json)?;
    let cands = Candidates {
        gt_dir,
        pred_dir,
        files: masks::list_files(pred_dir, ending)?,
        labels: lm.evaluation_targets(),
        foreground: lm.foreground_labels(),
        ignore: lm.ignore_label(),
    };
    if !evaluate::missing_predictions(gt_dir, pred_dir, ending)?.is_empty() {
        tracing::warn!(
            "not all reference files of {} have a prediction in {}; postprocessing should be determined on the whole dataset",
            gt_dir.display(),
            pred_dir.display()
        );
    }
    let summary_file = pred_dir.join("summary.json");
    let baseline = match summary_file.is_file() {
        true => Summary::load(&summary_file)?,
        false => evaluate::compute_metrics_on_folder(gt_dir, pred_dir, Some(&summary_file), &cands.labels, ending, cands.ignore)?,
    };
    let steps = cands.choose(&baseline)?;

    // postprocessed/: the predictions with the accepted steps, and their evaluation.
    let out_dir = pred_dir.join("postprocessed");
    if out_dir.is_dir() {
        std::fs::remove_dir_all(&out_dir).map_err(|e| Error::io(&out_dir, e))?;
    }
    apply_postprocessing_to_folder(pred_dir, &out_dir, &steps, ending)?;
    let postprocessed =
        evaluate::compute_metrics_on_folder(gt_dir, &out_dir, Some(&out_dir.join("summary.json")), &cands.labels, ending, cands.ignore)?;
    write_postprocessing_json(&pred_dir.join("postprocessing.json"), &baseline, &postprocessed, &steps)?;
    Ok(PostprocessingChoice { steps, baseline, postprocessed })
}

/// `postprocessing.json` in nnU-Net's layout: the means before and after, and the steps.
fn write_postprocessing_json(path: &Path, baseline: &Summary, postprocessed: &Summary, steps: &[KeepLargest]) -> Result<()> {
    let fg_and_mean = |s: &Summary| {
        let v = s.to_value();
        Value::dict([
            ("foreground_mean".to_string(), v.get("foreground_mean").cloned().unwrap_or(Value::Null)),
            ("mean".to_string(), v.get("mean").cloned().unwrap_or(Value::Null)),
        ])
    };
    let json = Value::dict([
        ("input_folder".to_string(), fg_and_mean(baseline)),
        ("postprocessed".to_string(), fg_and_mean(postprocessed)),
        ("postprocessing_fns".to_string(), Value::List(steps.iter().map(|_| Value::Str(LCC_FN_NAME.into())).collect())),
        ("postprocessing_kwargs".to_string(), Value::List(steps.iter().map(KeepLargest::kwargs).collect())),
    ]);
    pyjson::save(path, &json)
}
