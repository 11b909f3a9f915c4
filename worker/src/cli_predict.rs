//! `nnunet-worker predict` (what `nnunet predict` runs): predicts a folder of raw images with the
//! trained folds of a model folder (nnU-Net's `nnUNetv2_predict_from_modelfolder`, `nnunetv2/inference/predict_from_raw_data.py`).
//!
//! ```text
//! nnunet-worker predict -i IN -o OUT (-m MODEL_DIR | -d DATASET [-c 2d] [-tr TRAINER] [-p PLANS]) [--folds 0 1 2 3 4] [--disable-tta]
//!     [--save-probabilities] [--device cpu|cuda:N] [--step-size 0.5] [--checkpoint checkpoint_final]
//! ```
//! and `nnunet-worker validate`: the final validation of one fold from the preprocessed data.
use crate::infer::{self, PredictOptions};
use anyhow::{Context, Result};
use nnunet_common::Fold;
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
    /// Model folder: nnUNet_results/DatasetXXX_Name/nnUNetTrainer__nnUNetPlans__2d (or give -d).
    #[arg(short = 'm', long = "model", required_unless_present = "dataset", conflicts_with = "dataset")]
    pub model: Option<PathBuf>,
    /// Dataset id or name (`501`, `Dataset501_Skin`): the model folder is
    /// $nnUNet_results/DatasetXXX_Name/<trainer>__<plans>__<configuration>, as nnUNetv2_predict -d finds it.
    #[arg(short = 'd', long = "dataset")]
    pub dataset: Option<String>,
    /// Configuration with -d (nnU-Net's -c); only 2d exists here.
    #[arg(short = 'c', long = "configuration", default_value = "2d")]
    pub configuration: String,
    /// Trainer name with -d (nnU-Net's -tr).
    #[arg(long = "trainer", default_value = nnunet_common::paths::TRAINER_NAME)]
    pub trainer: String,
    /// Plans name with -d (nnU-Net's -p), e.g. nnUNetResEncUNetMPlans.
    #[arg(short = 'p', long = "plans", default_value = nnunet_common::paths::PLANS_NAME)]
    pub plans: String,
    /// Folds to ensemble (their logits are averaged): numbers and/or `all` (the folder `fold_all`).
    #[arg(short = 'f', long = "folds", num_args = 1.., default_values = ["0", "1", "2", "3", "4"])]
    pub folds: Vec<Fold>,
    /// Disable test-time mirroring (4x faster, slightly less accurate).
    #[arg(long = "disable-tta")]
    pub disable_tta: bool,
    /// Also write {case}.npz with the softmax probabilities (key `probabilities`) for `nnunet ensemble`.
    #[arg(long = "save-probabilities")]
    pub save_probabilities: bool,
    /// auto (cuda when a GPU is visible, else cpu; nnU-Net's -device default is cuda), cpu, cuda or cuda:N.
    #[arg(long = "device", default_value = "auto")]
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
    /// nnU-Net's -npp (preprocessing processes): accepted so nnU-Net command lines run; cases are read
    /// one at a time here, so the value does not change anything.
    #[arg(long = "npp")]
    pub npp: Option<usize>,
    /// nnU-Net's -nps (export processes): accepted so nnU-Net command lines run; masks are written
    /// one at a time here, so the value does not change anything.
    #[arg(long = "nps")]
    pub nps: Option<usize>,
}

impl PredictArgs {
    /// The model folder: `-m`, or `-d` resolved under `$nnUNet_results` like
    /// `nnunetv2/inference/predict_from_raw_data.py::predict_entry_point` (`get_output_folder`).
    pub fn model_dir(&self) -> Result<PathBuf> {
        if let Some(m) = &self.model {
            return Ok(m.clone());
        }
        let spec = self.dataset.as_deref().context("give -m MODEL_DIR or -d DATASET")?;
        if self.configuration != nnunet_common::paths::CONFIGURATION {
            anyhow::bail!("configuration {:?}: only the 2d configuration exists here (-c 2d)", self.configuration);
        }
        nnunet_common::paths::check_plans_name(&self.plans)?;
        nnunet_common::paths::check_plans_name(&self.trainer).context("the trainer name (-tr)")?;
        let results = nnunet_common::paths::results_root()?;
        let name = nnunet_common::paths::resolve_dataset(&results, spec)
            .with_context(|| format!("dataset {spec:?} has no folder in $nnUNet_results ({})", results.display()))?;
        let folder = name.join(format!("{}__{}__{}", self.trainer, self.plans, self.configuration));
        if !folder.is_dir() {
            anyhow::bail!(
                "no model folder {} (from -d {spec} -tr {} -p {} -c {}): train it first, or give -m MODEL_DIR",
                folder.display(),
                self.trainer,
                self.plans,
                self.configuration
            );
        }
        Ok(folder)
    }
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
    let model = args.model_dir()?;
    let report = infer::predict_folder_with(&model, &args.folds, &args.input, &args.output, &opts, !args.no_postprocessing)
        .with_context(|| format!("predicting {} with {}", args.input.display(), model.display()))?;
    let n = report.cases.len();
    println!(
        "predicted {n} case(s) with fold(s) {} in {:.1} s ({:.2} images/s){}; masks in {}",
        report.folds.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(" "),
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
    /// The fold (a number or `all`).
    #[arg(long = "fold")]
    pub fold: Fold,
    /// auto (cuda when a GPU is visible, else cpu; nnU-Net's -device default is cuda), cpu, cuda or cuda:N.
    #[arg(long = "device", default_value = "auto")]
    pub device: String,
    /// Disable test-time mirroring (4x faster, slightly less accurate).
    #[arg(long = "disable-tta")]
    pub disable_tta: bool,
    /// Also write {case}.npz with the softmax probabilities.
    #[arg(long = "save-probabilities")]
    pub save_probabilities: bool,
    /// Checkpoint name inside the fold folder.
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
