//! Folder evaluation and the cross-validation summary (SPEC §11, §10.3;
//! `nnunetv2/evaluation/evaluate_predictions.py`, `accumulate_cv_results.py`,
//! `find_best_configuration.py`).
//!
//! [`evaluate_folders`] compares every prediction file of a folder with the reference file of the
//! same name and writes `summary.json` in nnU-Net v2's exact layout (keys sorted, 4-space indent,
//! `NaN` for labels absent from both masks, per-case counts as ints and means as floats), so a
//! user's scripts that read nnU-Net's summaries read ours unchanged.
//!
//! [`crossval_summary`] merges the folds' `validation/` predictions into
//! `crossval_results_folds_0_1_2_3_4/`, evaluates them, determines the postprocessing
//! ([`crate::postprocess`]) and writes the numbers a user reports (`cv_summary.json`).
pub mod pyjson;

use crate::dataset_json::DatasetJson;
use crate::metrics::{self, Confusion};
use crate::{Error, Result};
use pyjson::Value;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Metrics of one label in one case (`metric_per_case[i].metrics[label]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LabelMetrics {
    pub dice: f64,
    pub iou: f64,
    pub confusion: Confusion,
}

impl From<Confusion> for LabelMetrics {
    fn from(c: Confusion) -> Self {
        LabelMetrics { dice: c.dice(), iou: c.iou(), confusion: c }
    }
}

/// Means over cases (`mean[label]`, `foreground_mean`); counts become floats as in nnU-Net.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeanMetrics {
    pub dice: f64,
    pub iou: f64,
    pub tp: f64,
    pub fp: f64,
    pub fn_: f64,
    pub tn: f64,
    pub n_pred: f64,
    pub n_ref: f64,
}

/// One evaluated case. File names are the paths as they were given (nnU-Net writes
/// `join(folder, file)`).
#[derive(Debug, Clone, PartialEq)]
pub struct CaseResult {
    pub reference_file: String,
    pub prediction_file: String,
    pub metrics: BTreeMap<i64, LabelMetrics>,
}

/// The content of `summary.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub foreground_mean: MeanMetrics,
    pub mean: BTreeMap<i64, MeanMetrics>,
    pub metric_per_case: Vec<CaseResult>,
}

/// numpy's pairwise summation (`numpy/core/src/umath/loops_utils.h.src::pairwise_sum`), so our
/// means agree with `np.mean`/`np.nanmean` to the last bit on typical inputs.
fn pairwise_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        let mut res = 0.0;
        for &x in a {
            res += x;
        }
        res
    } else if n <= 128 {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - (n % 8) {
            for j in 0..8 {
                r[j] += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &x in &a[i..] {
            res += x;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
    }
}

/// `np.nanmean`: NaNs are replaced by 0 for the sum and not counted.
fn np_nanmean(values: &[f64]) -> f64 {
    let n = values.iter().filter(|v| !v.is_nan()).count();
    if n == 0 {
        return f64::NAN;
    }
    let zeroed: Vec<f64> = values.iter().map(|&v| if v.is_nan() { 0.0 } else { v }).collect();
    pairwise_sum(&zeroed) / n as f64
}

/// `np.mean`.
fn np_mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    pairwise_sum(values) / values.len() as f64
}

impl MeanMetrics {
    fn from_fn(f: impl Fn(&dyn Fn(&LabelMetrics) -> f64) -> f64) -> Self {
        MeanMetrics {
            dice: f(&|m| m.dice),
            iou: f(&|m| m.iou),
            tp: f(&|m| m.confusion.tp as f64),
            fp: f(&|m| m.confusion.fp as f64),
            fn_: f(&|m| m.confusion.fn_ as f64),
            tn: f(&|m| m.confusion.tn as f64),
            n_pred: f(&|m| m.confusion.n_pred() as f64),
            n_ref: f(&|m| m.confusion.n_ref() as f64),
        }
    }
    fn to_value(self) -> Value {
        Value::dict([
            ("Dice".into(), Value::Float(self.dice)),
            ("FN".into(), Value::Float(self.fn_)),
            ("FP".into(), Value::Float(self.fp)),
            ("IoU".into(), Value::Float(self.iou)),
            ("TN".into(), Value::Float(self.tn)),
            ("TP".into(), Value::Float(self.tp)),
            ("n_pred".into(), Value::Float(self.n_pred)),
            ("n_ref".into(), Value::Float(self.n_ref)),
        ])
    }
    fn from_value(v: &Value, ctx: &str) -> std::result::Result<Self, String> {
        let g = |k: &str| v.get(k).and_then(Value::as_f64).ok_or_else(|| format!("{ctx}: missing number '{k}'"));
        Ok(MeanMetrics {
            dice: g("Dice")?,
            iou: g("IoU")?,
            tp: g("TP")?,
            fp: g("FP")?,
            fn_: g("FN")?,
            tn: g("TN")?,
            n_pred: g("n_pred")?,
            n_ref: g("n_ref")?,
        })
    }
}

impl LabelMetrics {
    fn to_value(self) -> Value {
        let c = self.confusion;
        let int = |x: u64| Value::Int(x as i64);
        Value::dict([
            ("Dice".into(), Value::Float(self.dice)),
            ("FN".into(), int(c.fn_)),
            ("FP".into(), int(c.fp)),
            ("IoU".into(), Value::Float(self.iou)),
            ("TN".into(), int(c.tn)),
            ("TP".into(), int(c.tp)),
            ("n_pred".into(), int(c.n_pred())),
            ("n_ref".into(), int(c.n_ref())),
        ])
    }
    fn from_value(v: &Value, ctx: &str) -> std::result::Result<Self, String> {
        let g = |k: &str| v.get(k).and_then(Value::as_f64).ok_or_else(|| format!("{ctx}: missing number '{k}'"));
        Ok(LabelMetrics {
            dice: g("Dice")?,
            iou: g("IoU")?,
            confusion: Confusion { tp: g("TP")? as u64, fp: g("FP")? as u64, fn_: g("FN")? as u64, tn: g("TN")? as u64 },
        })
    }
}

impl Summary {
    /// Aggregates per-case results: `mean[l] = nanmean over cases`, `foreground_mean = mean over
    /// labels != 0 of mean[l]` (NaN propagates there, as `np.mean` does).
    pub fn from_cases(labels: &[i64], cases: Vec<CaseResult>) -> Summary {
        let mut mean = BTreeMap::new();
        for &l in labels {
            let per_case: Vec<LabelMetrics> = cases.iter().filter_map(|c| c.metrics.get(&l).copied()).collect();
            mean.insert(l, MeanMetrics::from_fn(|f| np_nanmean(&per_case.iter().map(f).collect::<Vec<_>>())));
        }
        // nnU-Net iterates the labels in the order given, skipping 0.
        let fg: Vec<MeanMetrics> = labels.iter().filter(|&&l| l != 0).map(|l| mean[l]).collect();
        let pick = |f: fn(&MeanMetrics) -> f64| np_mean(&fg.iter().map(f).collect::<Vec<_>>());
        let foreground_mean = MeanMetrics {
            dice: pick(|m| m.dice),
            iou: pick(|m| m.iou),
            tp: pick(|m| m.tp),
            fp: pick(|m| m.fp),
            fn_: pick(|m| m.fn_),
            tn: pick(|m| m.tn),
            n_pred: pick(|m| m.n_pred),
            n_ref: pick(|m| m.n_ref),
        };
        Summary { foreground_mean, mean, metric_per_case: cases }
    }

    /// The summary as nnU-Net's `save_summary_json` lays it out.
    pub fn to_value(&self) -> Value {
        let cases = self
            .metric_per_case
            .iter()
            .map(|c| {
                Value::dict([
                    ("metrics".into(), Value::Dict(c.metrics.iter().map(|(l, m)| (l.to_string(), m.to_value())).collect())),
                    ("prediction_file".into(), Value::Str(c.prediction_file.clone())),
                    ("reference_file".into(), Value::Str(c.reference_file.clone())),
                ])
            })
            .collect();
        Value::dict([
            ("foreground_mean".into(), self.foreground_mean.to_value()),
            ("mean".into(), Value::Dict(self.mean.iter().map(|(l, m)| (l.to_string(), m.to_value())).collect())),
            ("metric_per_case".into(), Value::List(cases)),
        ])
    }

    /// Writes `summary.json` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        pyjson::save(path, &self.to_value())
    }

    /// Reads a `summary.json` written by us or by nnU-Net (label keys only; region keys such as
    /// "(1, 2)" are refused).
    pub fn load(path: &Path) -> Result<Summary> {
        let v = pyjson::load(path)?;
        Self::from_value(&v).map_err(|m| Error::format(path, format!("not an nnU-Net summary.json: {m}")))
    }

    fn from_value(v: &Value) -> std::result::Result<Summary, String> {
        let label_key =
            |k: &str| k.parse::<i64>().map_err(|_| format!("label key {k:?} is not an integer (region-based summaries are not supported)"));
        let foreground_mean = MeanMetrics::from_value(v.get("foreground_mean").ok_or("no 'foreground_mean'")?, "foreground_mean")?;
        let mut mean = BTreeMap::new();
        match v.get("mean") {
            Some(Value::Dict(m)) => {
                for (k, mv) in m {
                    mean.insert(label_key(k)?, MeanMetrics::from_value(mv, &format!("mean.{k}"))?);
                }
            }
            _ => return Err("no 'mean' object".into()),
        }
        let mut metric_per_case = Vec::new();
        match v.get("metric_per_case") {
            Some(Value::List(cases)) => {
                for (i, c) in cases.iter().enumerate() {
                    let mut metrics = BTreeMap::new();
                    if let Some(Value::Dict(m)) = c.get("metrics") {
                        for (k, lv) in m {
                            metrics.insert(label_key(k)?, LabelMetrics::from_value(lv, &format!("metric_per_case[{i}].{k}"))?);
                        }
                    }
                    let s = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
                    metric_per_case.push(CaseResult {
                        reference_file: s("reference_file"),
                        prediction_file: s("prediction_file"),
                        metrics,
                    });
                }
            }
            _ => return Err("no 'metric_per_case' list".into()),
        }
        Ok(Summary { foreground_mean, mean, metric_per_case })
    }
}

/// Serializes in nnU-Net's layout (see [`Summary::to_value`]); NaN becomes `null` in serde_json.
impl serde::Serialize for Summary {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&self.to_value(), s)
    }
}

/// Reads a segmentation as integer labels with its spatial shape (Z, X, Y).
pub fn read_labels(path: &Path) -> Result<([usize; 3], Vec<i32>)> {
    let img = crate::imageio::read_seg(path)?;
    let shape = [img.shape[1], img.shape[2], img.shape[3]];
    // nnU-Net compares float32 arrays with `seg == label`; labels are small integers, so rounding
    // is exact for every valid file and maps a stray 0.9999 the way a cast would not.
    Ok((shape, img.data.iter().map(|&v| v.round() as i32).collect()))
}

/// Files in `dir` whose names end with `file_ending` (hidden and temporary files skipped), sorted
/// like Python's `subfiles`.
pub fn list_files(dir: &Path, file_ending: &str) -> Result<Vec<String>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut out: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(file_ending) && !n.starts_with('.'))
        .collect();
    out.sort();
    Ok(out)
}

/// Evaluates one prediction against its reference (nnU-Net's `compute_metrics`).
pub fn evaluate_case(reference: &Path, prediction: &Path, labels: &[i64], ignore_label: Option<i64>) -> Result<CaseResult> {
    let (rs, r) = read_labels(reference)?;
    let (ps, p) = read_labels(prediction)?;
    if rs != ps {
        return Err(Error::format(
            prediction,
            format!(
                "prediction has shape {ps:?} but the reference {} has {rs:?}; predictions must be in the reference's geometry",
                reference.display()
            ),
        ));
    }
    let labels32: Vec<i32> = labels.iter().map(|&l| l as i32).collect();
    let conf = metrics::confusion_per_label(&r, &p, &labels32, ignore_label.map(|l| l as i32));
    Ok(CaseResult {
        reference_file: reference.display().to_string(),
        prediction_file: prediction.display().to_string(),
        metrics: labels.iter().zip(conf).map(|(&l, c)| (l, LabelMetrics::from(c))).collect(),
    })
}

/// nnU-Net's `compute_metrics_on_folder` with `chill=True`: every prediction file in `pred_dir`
/// (ending with `file_ending`) is compared with the file of the same name in `gt_dir`.
/// `labels` are the labels to evaluate (nnU-Net passes the foreground labels).
/// Writes `output` (if given) and returns the summary.
pub fn compute_metrics_on_folder(
    gt_dir: &Path,
    pred_dir: &Path,
    output: Option<&Path>,
    labels: &[i64],
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
pub fn evaluate_folders(gt_dir: &Path, pred_dir: &Path, labels: &[i64], file_ending: &str, ignore_label: Option<i64>) -> Result<Summary> {
    compute_metrics_on_folder(gt_dir, pred_dir, Some(&pred_dir.join("summary.json")), labels, file_ending, ignore_label)
}

/// `crossval_results_folds_0_1_2_3_4` for folds [0, 1, 2, 3, 4] (nnU-Net's `folds_tuple_to_string`).
pub fn crossval_folder_name(folds: &[usize]) -> String {
    format!("crossval_results_folds_{}", folds.iter().map(|f| f.to_string()).collect::<Vec<_>>().join("_"))
}

fn copy_atomic(src: &Path, dst: &Path) -> Result<()> {
    let bytes = std::fs::read(src).map_err(|e| Error::io(src, e))?;
    crate::hash::write_atomic(dst, &bytes)
}

/// Merges the folds' validation predictions into `model_dir/crossval_results_folds_.../`
/// (nnU-Net's `accumulate_cv_results`), evaluates them against `gt_dir`, determines the
/// postprocessing on them (writes `postprocessing.json` and `postprocessed/`), and writes
/// `cv_summary.json` next to `summary.json`: per-fold mean foreground Dice, the CV Dice per label
/// and overall, with and without postprocessing. Returns that JSON.
pub fn crossval_summary(model_dir: &Path, folds: &[usize], gt_dir: &Path, dataset_json: &DatasetJson) -> Result<serde_json::Value> {
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
    let ending = &dataset_json.file_ending;
    let labels = dataset_json.foreground_labels();
    let ignore = dataset_json.ignore_label();
    let mut per_fold = serde_json::Map::new();
    let mut n_cases_per_fold = serde_json::Map::new();
    for &f in folds {
        let val = model_dir.join(format!("fold_{f}")).join("validation");
        if !val.is_dir() {
            return Err(Error::Invalid(format!(
                "fold {f} of {} has no validation folder {}; train (or validate) that fold first, or leave it out of --folds",
                model_dir.display(),
                val.display()
            )));
        }
        let files = list_files(&val, ending)?;
        for pf in &files {
            let dst = merged.join(pf);
            if dst.is_file() {
                return Err(Error::Invalid(format!("more than one fold has a validation prediction for case {pf}; the splits overlap")));
            }
            copy_atomic(&val.join(pf), &dst)?;
        }
        // Per-fold Dice from the fold's own summary when present, else evaluated now.
        let fold_summary = match Summary::load(&val.join("summary.json")) {
            Ok(s) => s,
            Err(_) => compute_metrics_on_folder(gt_dir, &val, None, &labels, ending, ignore)?,
        };
        per_fold.insert(f.to_string(), json_f64(fold_summary.foreground_mean.dice));
        n_cases_per_fold.insert(f.to_string(), serde_json::Value::from(files.len()));
    }
    let summary = compute_metrics_on_folder(gt_dir, &merged, Some(&merged.join("summary.json")), &labels, ending, ignore)?;
    let pp = crate::postprocess::determine_postprocessing(&merged, gt_dir, dataset_json)?;
    // `nnunet predict` applies the model folder's postprocessing.json (nnU-Net keeps its
    // postprocessing.pkl next to the folds too).
    copy_atomic(&merged.join("postprocessing.json"), &model_dir.join("postprocessing.json"))?;
    let per_label = |s: &Summary| -> serde_json::Value {
        serde_json::Value::Object(s.mean.iter().map(|(l, m)| (l.to_string(), json_f64(m.dice))).collect())
    };
    let label_names: serde_json::Map<String, serde_json::Value> = dataset_json
        .labels
        .iter()
        .filter_map(|(name, v)| v.as_int().filter(|&x| x > 0).map(|x| (x.to_string(), serde_json::Value::from(name.clone()))))
        .collect();
    let out = serde_json::json!({
        "folds": folds,
        "n_cases": summary.metric_per_case.len(),
        "n_cases_per_fold": n_cases_per_fold,
        "label_names": label_names,
        "fold_foreground_dice": per_fold,
        "cv_foreground_dice": json_f64(summary.foreground_mean.dice),
        "cv_dice_per_label": per_label(&summary),
        "cv_foreground_dice_postprocessed": json_f64(pp.postprocessed.foreground_mean.dice),
        "cv_dice_per_label_postprocessed": per_label(&pp.postprocessed),
        "postprocessing": pp.steps.iter().map(|s| s.describe()).collect::<Vec<_>>(),
        "summary_file": merged.join("summary.json").display().to_string(),
        "postprocessing_file": merged.join("postprocessing.json").display().to_string(),
    });
    crate::error::write_json(&merged.join("cv_summary.json"), &out)?;
    Ok(out)
}

/// A float for serde_json: NaN (no label anywhere) becomes null there, which JSON can carry.
fn json_f64(x: f64) -> serde_json::Value {
    serde_json::Number::from_f64(x).map(serde_json::Value::Number).unwrap_or(serde_json::Value::Null)
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
    fn pairwise_sum_matches_sequential_for_short_and_is_blocked_for_long() {
        assert_eq!(pairwise_sum(&[1.0, 2.0, 3.0]), 6.0);
        // numpy: np.sum(np.full(20, 0.1)) == 2.0000000000000004, the sequential sum is 2.0000000000000004 too,
        // but blocking differs for e.g. this sequence (checked with numpy: np.add.reduce).
        let v: Vec<f64> = (0..20).map(|i| 0.1 * i as f64).collect();
        let seq: f64 = v.iter().sum();
        assert!((pairwise_sum(&v) - seq).abs() < 1e-12);
        assert!(np_nanmean(&[f64::NAN, 1.0, 2.0]) == 1.5);
    }

    #[test]
    fn summary_aggregates_like_nnunet() {
        let lm = |tp, fp, fn_, tn| LabelMetrics::from(Confusion { tp, fp, fn_, tn });
        let cases = vec![
            CaseResult {
                reference_file: "r/a".into(),
                prediction_file: "p/a".into(),
                metrics: [(1, lm(2, 1, 1, 4)), (2, lm(0, 0, 0, 8))].into_iter().collect(),
            },
            CaseResult {
                reference_file: "r/b".into(),
                prediction_file: "p/b".into(),
                metrics: [(1, lm(1, 0, 0, 7)), (2, lm(0, 0, 2, 6))].into_iter().collect(),
            },
        ];
        let s = Summary::from_cases(&[1, 2], cases);
        // label 1: Dice (4/6 + 1)/2; label 2: NaN skipped, 0.0 -> 0.0
        assert!((s.mean[&1].dice - (4.0 / 6.0 + 1.0) / 2.0).abs() < 1e-15);
        assert_eq!(s.mean[&2].dice, 0.0);
        assert_eq!(s.mean[&1].tp, 1.5);
        assert!((s.foreground_mean.dice - ((4.0 / 6.0 + 1.0) / 2.0) / 2.0).abs() < 1e-15);
        let text = pyjson::to_string(&s.to_value());
        assert!(text.contains("\"Dice\": NaN"), "{text}");
        assert!(text.contains("\"TP\": 1.5"), "{text}");
        let back = Summary::from_value(&pyjson::parse(&text).unwrap()).unwrap();
        assert_eq!(back.metric_per_case[1].metrics[&2].confusion.fn_, 2);
        assert!(back.metric_per_case[0].metrics[&2].dice.is_nan());
    }
}
