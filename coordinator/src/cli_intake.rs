//! PLACEHOLDER written by the lead so the crate builds; the intake engineer replaces this file.
//! (Module of the coordinator LIBRARY: `coordinator/src/lib.rs` declares `pub mod cli_intake;`.)
use std::path::{Path, PathBuf};
#[derive(clap::Args, Debug)] pub struct ConvertArgs {}
#[derive(clap::Args, Debug)] pub struct VerifyArgs {}
#[derive(clap::Args, Debug)] pub struct SynthArgs {}
pub fn run_convert(_a: ConvertArgs) -> anyhow::Result<()> { anyhow::bail!("not built yet") }
pub fn run_verify(_a: VerifyArgs) -> anyhow::Result<()> { anyhow::bail!("not built yet") }
pub fn run_synth(_a: SynthArgs) -> anyhow::Result<()> { anyhow::bail!("not built yet") }
/// Converts an images folder + masks folder (+ optional test images) into `raw_root/DatasetNNN_name`,
/// verifies it, and returns the dataset folder. Used by `nnunet run --images --masks` and the default dataset.
pub fn convert_images_masks(_images: &Path, _masks: &Path, _test: Option<&Path>, _raw_root: &Path, _id: u32, _name: &str, _binarize: bool) -> anyhow::Result<PathBuf> { anyhow::bail!("not built yet") }
