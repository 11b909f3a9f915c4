//! The content of `summary.json` (`nnunetv2/evaluation/evaluate_predictions.py::
//! compute_metrics_on_folder`, `save_summary_json`): per-case metrics per label, their means and
//! the foreground mean, with the conversion to and from nnU-Net's exact JSON layout ([`super::pyjson`]).
use super::pyjson::{self, Value};
use crate::labels::LabelOrRegion;
use crate::metrics::Confusion;
use crate::stats;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

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
    pub metrics: BTreeMap<LabelOrRegion, LabelMetrics>,
}

/// The content of `summary.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub foreground_mean: MeanMetrics,
    pub mean: BTreeMap<LabelOrRegion, MeanMetrics>,
    pub metric_per_case: Vec<CaseResult>,
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
    pub fn from_cases(labels: &[LabelOrRegion], cases: Vec<CaseResult>) -> Summary {
        let mut mean = BTreeMap::new();
        for l in labels {
            let per_case: Vec<LabelMetrics> = cases.iter().filter_map(|c| c.metrics.get(l).copied()).collect();
            mean.insert(l.clone(), MeanMetrics::from_fn(|f| stats::nanmean(&per_case.iter().map(f).collect::<Vec<_>>())));
        }
        // nnU-Net iterates the labels in the order given, skipping label 0 (`i != 0`: a region is never 0).
        let fg: Vec<MeanMetrics> = labels.iter().filter(|l| **l != LabelOrRegion::Label(0)).map(|l| mean[l]).collect();
        let pick = |f: fn(&MeanMetrics) -> f64| stats::mean(&fg.iter().map(f).collect::<Vec<_>>());
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
                    ("metrics".into(), Value::Dict(c.metrics.iter().map(|(l, m)| (l.key(), m.to_value())).collect())),
                    ("prediction_file".into(), Value::Str(c.prediction_file.clone())),
                    ("reference_file".into(), Value::Str(c.reference_file.clone())),
                ])
            })
            .collect();
        Value::dict([
            ("foreground_mean".into(), self.foreground_mean.to_value()),
            ("mean".into(), Value::Dict(self.mean.iter().map(|(l, m)| (l.key(), m.to_value())).collect())),
            ("metric_per_case".into(), Value::List(cases)),
        ])
    }

    /// Writes `summary.json` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        pyjson::save(path, &self.to_value())
    }

    /// Reads a `summary.json` written by us or by nnU-Net (label keys such as "1" and region keys
    /// such as "(1, 2)").
    pub fn load(path: &Path) -> Result<Summary> {
        let v = pyjson::load(path)?;
        Self::from_value(&v).map_err(|m| Error::format(path, format!("not an nnU-Net summary.json: {m}")))
    }

    fn from_value(v: &Value) -> std::result::Result<Summary, String> {
        let label_key = |k: &str| LabelOrRegion::parse(k).ok_or_else(|| format!("key {k:?} is neither a label (1) nor a region ((1, 2))"));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_aggregates_like_nnunet() {
        let lm = |tp, fp, fn_, tn| LabelMetrics::from(Confusion { tp, fp, fn_, tn });
        let cases = vec![
            CaseResult {
                reference_file: "r/a".into(),
                prediction_file: "p/a".into(),
                metrics: [(1, lm(2, 1, 1, 4)), (2, lm(0, 0, 0, 8))].into_iter().map(|(l, m)| (LabelOrRegion::Label(l), m)).collect(),
            },
            CaseResult {
                reference_file: "r/b".into(),
                prediction_file: "p/b".into(),
                metrics: [(1, lm(1, 0, 0, 7)), (2, lm(0, 0, 2, 6))].into_iter().map(|(l, m)| (LabelOrRegion::Label(l), m)).collect(),
            },
        ];
        let s = Summary::from_cases(&LabelOrRegion::labels(&[1, 2]), cases);
        let (l1, l2) = (&LabelOrRegion::Label(1), &LabelOrRegion::Label(2));
        // label 1: Dice (4/6 + 1)/2; label 2: NaN skipped, 0.0 -> 0.0
        assert!((s.mean[l1].dice - (4.0 / 6.0 + 1.0) / 2.0).abs() < 1e-15);
        assert_eq!(s.mean[l2].dice, 0.0);
        assert_eq!(s.mean[l1].tp, 1.5);
        assert!((s.foreground_mean.dice - ((4.0 / 6.0 + 1.0) / 2.0) / 2.0).abs() < 1e-15);
        let text = pyjson::to_string(&s.to_value());
        assert!(text.contains("\"Dice\": NaN"), "{text}");
        assert!(text.contains("\"TP\": 1.5"), "{text}");
        let back = Summary::from_value(&pyjson::parse(&text).unwrap()).unwrap();
        assert_eq!(back.metric_per_case[1].metrics[l2].confusion.fn_, 2);
        assert!(back.metric_per_case[0].metrics[l2].dice.is_nan());
    }
}
