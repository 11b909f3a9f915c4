//! `nnunet-worker export-model` / `import-model` (what `nnunet export-model` / `import-model` run).
//!
//! ```text
//! nnunet-worker export-model -m MODEL_DIR -o model.zip [--folds 0 1 ...] [--checkpoint checkpoint_final]
//! nnunet-worker import-model model.zip -o MODEL_DIR
//! ```
use super::model_zip;
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct ExportArgs {
    /// Our model folder (…/DatasetXXX_Name/nnUNetTrainer__nnUNetPlans__2d).
    #[arg(short = 'm', long = "model")]
    pub model: PathBuf,
    /// Output zip, installable with nnUNetv2_install_pretrained_model_from_zip.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// Folds to export (default: every fold with the checkpoint).
    #[arg(short = 'f', long = "folds", num_args = 1..)]
    pub folds: Vec<usize>,
    /// Checkpoint to export as each fold's checkpoint_final.pth.
    #[arg(long = "checkpoint", default_value = "checkpoint_final")]
    pub checkpoint: String,
}

pub fn run_export(a: ExportArgs) -> Result<()> {
    let ck = a.checkpoint.trim_end_matches(".safetensors").to_string();
    let entries = model_zip::export_model(&a.model, Some(&a.folds), &ck, &a.output)?;
    for e in &entries {
        println!("  {e}");
    }
    println!(
        "wrote {} ({} files); install with: nnUNetv2_install_pretrained_model_from_zip {}",
        a.output.display(),
        entries.len(),
        a.output.display()
    );
    Ok(())
}

#[derive(clap::Args, Debug, Clone)]
pub struct ImportArgs {
    /// nnU-Net model zip (as nnUNetv2_export_model_to_zip writes it).
    pub zip: PathBuf,
    /// New model folder to create (ready for `nnunet predict -m`).
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
}

pub fn run_import(a: ImportArgs) -> Result<()> {
    let r = model_zip::import_model(&a.zip, &a.output)?;
    println!(
        "imported {} (trainer {}, folds {:?}) into {}; predict with: nnunet predict -m {} -f {} -i IN -o OUT",
        r.model_folder_in_zip,
        r.trainer_name,
        r.folds,
        a.output.display(),
        a.output.display(),
        r.folds.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(" ")
    );
    Ok(())
}
