//! The scoring commands of the `nnunet` CLI (nnU-Net v2's `nnunetv2/evaluation/evaluate_predictions.py`,
//! `nnunetv2/ensembling/ensemble.py`, `nnunetv2/postprocessing/remove_connected_components.py`), thin
//! wrappers over `nnunet_common::{evaluate, ensemble, postprocess, crossval}`:
//!
//! - `nnunet evaluate GT_DIR PRED_DIR [--djfile dataset.json] [-o summary.json] [--strict]`: nnU-Net's
//!   `nnUNetv2_evaluate_folder`; writes `summary.json` in nnU-Net's layout. Reference cases without
//!   a prediction are named in a warning (nnU-Net skips them silently); `--strict` refuses them.
//! - `nnunet ensemble -i DIR1 DIR2 ... -o OUT [--save-probabilities]`: `nnUNetv2_ensemble`.
//! - `nnunet postprocess determine -i PRED -r GT --djfile dataset.json` and
//!   `nnunet postprocess apply -i IN -o OUT --pp postprocessing.json`.
//! - `nnunet cv-summary -m MODEL_DIR -r GT [--folds ...]`: the cross-validation summary.
use anyhow::{bail, Context, Result};
use nnunet_common::crossval::{self, CvSummary};
use nnunet_common::dataset_json::DatasetJson;
use nnunet_common::{ensemble, evaluate, postprocess};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug, Clone)]
pub struct EvaluateArgs {
    /// Folder with the reference masks.
    pub gt_dir: PathBuf,
    /// Folder with the predicted masks (same file names).
    pub pred_dir: PathBuf,
    /// dataset.json giving the labels, the file ending and the ignore label (nnU-Net's -djfile).
    #[arg(short = 'd', long = "djfile", alias = "dataset-json")]
    pub djfile: Option<PathBuf>,
    /// Labels to evaluate when no dataset.json is given (default: every nonzero value in the references).
    #[arg(short = 'l', long = "labels", num_args = 1..)]
    pub labels: Vec<i64>,
    /// Output file (default PRED_DIR/summary.json).
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    /// Refuse to evaluate when a reference case has no prediction (default: evaluate the
    /// predictions present and name the missing cases in a warning).
    #[arg(long)]
    pub strict: bool,
}

/// The file ending of the first image file in `dir` (".png", ".nii.gz", ...).
fn detect_ending(dir: &Path) -> Result<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && nnunet_common::imageio::detect_format(Path::new(n)).is_some())
        .collect();
    names.sort();
    let first = names.first().with_context(|| format!("no mask files in {}", dir.display()))?;
    let stem = nnunet_common::imageio::strip_image_ending(first).unwrap_or(first);
    Ok(first[stem.len()..].to_string())
}

pub fn run_evaluate(args: EvaluateArgs) -> Result<()> {
    let (labels, ending, ignore) = match &args.djfile {
        Some(p) => {
            let dj = DatasetJson::load(p).with_context(|| format!("reading {}", p.display()))?;
            // the foreground regions with regions (`nnunetv2/evaluation/evaluate_predictions.py::evaluate_folder_entry_point`)
            let lm = nnunet_common::labels::LabelManager::new(&dj)?;
            (lm.evaluation_targets(), dj.file_ending.clone(), lm.ignore_label())
        }
        None => {
            let ending = detect_ending(&args.pred_dir)?;
            let labels = if args.labels.is_empty() {
                let mut set = std::collections::BTreeSet::new();
                for f in evaluate::list_files(&args.gt_dir, &ending)? {
                    let (_, v) = evaluate::read_labels(&args.gt_dir.join(&f))?;
                    set.extend(v.into_iter().filter(|&x| x != 0).map(|x| x as i64));
                }
                set.into_iter().collect()
            } else {
                args.labels.clone()
            };
            (evaluate::LabelOrRegion::labels(&labels), ending, None)
        }
    };
    if labels.is_empty() {
        bail!("no foreground labels to evaluate: give --djfile dataset.json or --labels 1 2 ...");
    }
    let missing = evaluate::missing_predictions(&args.gt_dir, &args.pred_dir, &ending)?;
    if !missing.is_empty() {
        let what = format!(
            "{} reference case(s) in {} have no prediction in {}: {}",
            missing.len(),
            args.gt_dir.display(),
            args.pred_dir.display(),
            missing.join(", ")
        );
        if args.strict {
            bail!("{what}; predict them, or evaluate without --strict to score the predictions present");
        }
        eprintln!("warning: {what}; they are not part of the summary (--strict makes this an error)");
    }
    let out = args.output.clone().unwrap_or_else(|| args.pred_dir.join("summary.json"));
    let s = evaluate::compute_metrics_on_folder(&args.gt_dir, &args.pred_dir, Some(&out), &labels, &ending, ignore)?;
    let names: Vec<String> = labels.iter().map(|l| l.key()).collect();
    println!("{} case(s), labels {}", s.metric_per_case.len(), names.join(", "));
    for (l, m) in &s.mean {
        println!("  label {l}: Dice {:.4}  IoU {:.4}", m.dice, m.iou);
    }
    println!("  foreground mean Dice {:.4}\nwrote {}", s.foreground_mean.dice, out.display());
    Ok(())
}

#[derive(clap::Args, Debug, Clone)]
pub struct EnsembleArgs {
    /// Prediction folders written with --save-probabilities.
    #[arg(short = 'i', long = "input", num_args = 2.., required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output folder for the ensembled masks.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// Also write the averaged probabilities.
    #[arg(long = "save-probabilities", alias = "save-npz")]
    pub save_probabilities: bool,
}

pub fn run_ensemble(args: EnsembleArgs) -> Result<()> {
    let n = ensemble::ensemble_folders_with(&args.inputs, &args.output, args.save_probabilities, None)?;
    println!("ensembled {n} case(s) from {} folders into {}", args.inputs.len(), args.output.display());
    Ok(())
}

#[derive(clap::Args, Debug, Clone)]
pub struct PostprocessArgs {
    #[command(subcommand)]
    pub action: PostprocessAction,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum PostprocessAction {
    /// Choose the postprocessing on (cross-validation) predictions: writes postprocessing.json and postprocessed/ in PRED.
    Determine {
        /// Folder of (cross-validation) predictions.
        #[arg(short = 'i', long = "input")]
        input: PathBuf,
        /// Reference masks.
        #[arg(short = 'r', long = "ref")]
        reference: PathBuf,
        /// dataset.json giving the labels and the file ending (nnU-Net's -djfile).
        #[arg(short = 'd', long = "djfile", alias = "dataset-json")]
        djfile: PathBuf,
    },
    /// Apply a postprocessing.json to every mask of a folder.
    Apply {
        /// Folder of masks to postprocess.
        #[arg(short = 'i', long = "input")]
        input: PathBuf,
        /// Output folder for the postprocessed masks.
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        /// postprocessing.json (ours or nnU-Net's).
        #[arg(long = "pp", alias = "pp-json")]
        pp: PathBuf,
    },
}

pub fn run_postprocess(args: PostprocessArgs) -> Result<()> {
    match args.action {
        PostprocessAction::Determine { input, reference, djfile } => {
            let dj = DatasetJson::load(&djfile).with_context(|| format!("reading {}", djfile.display()))?;
            let c = postprocess::determine_postprocessing(&input, &reference, &dj)?;
            println!(
                "mean foreground Dice {:.4} -> {:.4} with {}",
                c.baseline.foreground_mean.dice,
                c.postprocessed.foreground_mean.dice,
                if c.steps.is_empty() {
                    "no postprocessing".to_string()
                } else {
                    c.steps.iter().map(|s| s.describe()).collect::<Vec<_>>().join("; ")
                }
            );
            println!("wrote {}", input.join("postprocessing.json").display());
        }
        PostprocessAction::Apply { input, output, pp } => {
            let steps = postprocess::load_postprocessing(&pp)?;
            let ending = detect_ending(&input)?;
            let n = postprocess::apply_postprocessing_to_folder(&input, &output, &steps, &ending)?;
            println!("postprocessed {n} mask(s) into {}", output.display());
        }
    }
    Ok(())
}

#[derive(clap::Args, Debug, Clone)]
pub struct CvSummaryArgs {
    /// Model folder (nnUNet_results/DatasetXXX_Name/nnUNetTrainer__nnUNetPlans__2d).
    #[arg(short = 'm', long = "model")]
    pub model: PathBuf,
    /// Reference masks (nnUNet_preprocessed/DatasetXXX_Name/gt_segmentations).
    #[arg(short = 'r', long = "ref")]
    pub reference: PathBuf,
    /// Folds whose validation predictions are merged.
    #[arg(short = 'f', long = "folds", num_args = 1.., default_values_t = vec![0usize, 1, 2, 3, 4])]
    pub folds: Vec<usize>,
}

/// Cross-validation summary of a model folder; see [`crossval::crossval_summary`].
pub fn cv_summary(model_dir: &Path, folds: &[usize], gt_dir: &Path, dataset_json: &DatasetJson) -> Result<CvSummary> {
    Ok(crossval::crossval_summary(model_dir, folds, gt_dir, dataset_json)?)
}

pub fn run_cv_summary(args: CvSummaryArgs) -> Result<()> {
    let dj =
        DatasetJson::load(&args.model.join("dataset.json")).with_context(|| format!("{} is not a model folder", args.model.display()))?;
    let v = cv_summary(&args.model, &args.folds, &args.reference, &dj)?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nnunet_common::imageio::write_seg_natural;

    /// A reference case without a prediction is named (and left out) by default, refused with --strict.
    #[test]
    fn evaluate_reports_missing_predictions_and_strict_refuses() {
        let gt = tempfile::tempdir().unwrap();
        let pred = tempfile::tempdir().unwrap();
        let mask = [0u16, 1, 1, 0];
        for case in ["a", "b"] {
            write_seg_natural(&gt.path().join(format!("{case}.png")), 2, 2, &mask, "png").unwrap();
        }
        write_seg_natural(&pred.path().join("a.png"), 2, 2, &mask, "png").unwrap();
        let args = |strict| EvaluateArgs {
            gt_dir: gt.path().to_path_buf(),
            pred_dir: pred.path().to_path_buf(),
            djfile: None,
            labels: vec![1],
            output: None,
            strict,
        };
        let err = run_evaluate(args(true)).unwrap_err().to_string();
        assert!(err.contains("1 reference case(s)") && err.contains("b.png"), "{err}");
        assert!(!pred.path().join("summary.json").exists(), "--strict writes nothing");
        run_evaluate(args(false)).unwrap();
        let s = evaluate::Summary::load(&pred.path().join("summary.json")).unwrap();
        assert_eq!(s.metric_per_case.len(), 1);
        assert_eq!(s.foreground_mean.dice, 1.0);
    }
}
