//! `nnunet-worker predict` (what `nnunet predict` runs): predicts a folder of raw images with the
//! trained folds of a model folder (nnU-Net's `nnUNetv2_predict_from_modelfolder`, `nnunetv2/inference/predict_from_raw_data.py`).
//!
//! ```text
//! nnunet-worker predict -i IN -o OUT -m MODEL_DIR [--folds 0 1 2 3 4] [--disable-tta]
//!     [--save-probabilities] [--device cpu|cuda:N] [--step-size 0.5] [--checkpoint checkpoint_final]
//! ```
//! and `nnunet-worker validate`: the final validation of one fold from the preprocessed data.
use crate::infer::{self, PredictOptions};
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct PredictArgs {
    /// Input folder: your own images (PNG/TIFF/JPEG/BMP/NIfTI, gray or RGB, one file per case) or an
    /// nnU-Net imagesTs folder ({case}_0000.nii.gz ...).
    #[arg(short = 'i', long = "input")]
    pub input: PathBuf,
    /// Output folder: one mask per case, in the input's format (JPEG inputs get PNG masks), with
    /// your original label values.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// Model folder: nnUNet_results/DatasetXXX_Name/nnUNetTrainer__nnUNetPlans__2d.
    #[arg(short = 'm', long = "model")]
    pub model: PathBuf,
    /// Folds to ensemble (their logits are averaged).
    #[arg(short = 'f', long = "folds", num_args = 1.., default_values_t = vec![0usize, 1, 2, 3, 4])]
    pub folds: Vec<usize>,
    /// Disable test-time mirroring (4x faster, slightly less accurate).
    #[arg(long = "disable-tta")]
    pub disable_tta: bool,
    /// Also write {case}.npz with the softmax probabilities (key `probabilities`) for `nnunet ensemble`.
    #[arg(long = "save-probabilities")]
    pub save_probabilities: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long = "device", default_value = "cpu")]
    pub device: String,
    /// Sliding-window step as a fraction of the patch size.
    #[arg(long = "step-size", default_value_t = 0.5)]
    pub step_size: f64,
    /// Checkpoint name inside each fold folder.
    #[arg(long = "checkpoint", default_value = "checkpoint_final")]
    pub checkpoint: String,
    /// Do not apply the postprocessing chosen on the cross-validation (MODEL_DIR/postprocessing.json).
    #[arg(long = "no-postprocessing")]
    pub no_postprocessing: bool,
}

pub fn run_predict(args: PredictArgs) -> Result<()> {
    let device = crate::device::parse_device(&args.device)?;
    let opts = PredictOptions {
        use_mirroring: !args.disable_tta,
        step_size: args.step_size,
        save_probabilities: args.save_probabilities,
        device,
        checkpoint_name: args.checkpoint.trim_end_matches(".safetensors").trim_end_matches(".pth").to_string(),
    };
    let report = infer::predict_folder_with(&args.model, &args.folds, &args.input, &args.output, &opts, !args.no_postprocessing)
        .with_context(|| format!("predicting {} with {}", args.input.display(), args.model.display()))?;
    let n = report.cases.len();
    println!(
        "predicted {n} case(s) with fold(s) {:?} in {:.1} s ({:.2} images/s){}; masks in {}",
        report.folds,
        report.seconds,
        n as f64 / report.seconds.max(1e-9),
        if report.postprocessing.is_empty() { String::new() } else { format!("; postprocessing: {}", report.postprocessing.join(", ")) },
        args.output.display()
    );
    Ok(())
}

#[derive(clap::Args, Debug, Clone)]
pub struct ValidateArgs {
    /// Preprocessed dataset folder: nnUNet_preprocessed/DatasetXXX_Name.
    #[arg(long = "preprocessed")]
    pub preprocessed: PathBuf,
    /// Fold folder holding the checkpoint (validation/ is written inside it).
    #[arg(long = "fold-dir")]
    pub fold_dir: PathBuf,
    #[arg(long = "fold")]
    pub fold: usize,
    #[arg(long = "device", default_value = "cpu")]
    pub device: String,
    #[arg(long = "disable-tta")]
    pub disable_tta: bool,
    #[arg(long = "save-probabilities")]
    pub save_probabilities: bool,
    #[arg(long = "checkpoint", default_value = "checkpoint_final")]
    pub checkpoint: String,
}

pub fn run_validate(args: ValidateArgs) -> Result<()> {
    let opts = PredictOptions {
        use_mirroring: !args.disable_tta,
        step_size: 0.5,
        save_probabilities: args.save_probabilities,
        device: crate::device::parse_device(&args.device)?,
        checkpoint_name: args.checkpoint,
    };
    let s = infer::validate_fold(&args.preprocessed, args.fold, &args.fold_dir, &opts)?;
    println!("fold {}: mean validation Dice {:.4}", args.fold, s.foreground_mean.dice);
    Ok(())
}
