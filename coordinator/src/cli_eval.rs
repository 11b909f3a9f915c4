//! PLACEHOLDER written by the lead so the crate builds; the inference engineer replaces this file.
//! (Module of the coordinator LIBRARY: `coordinator/src/lib.rs` declares `pub mod cli_eval;`.)
#[derive(clap::Args, Debug)] pub struct EvaluateArgs {}
#[derive(clap::Args, Debug)] pub struct EnsembleArgs {}
#[derive(clap::Args, Debug)] pub struct PostprocessArgs {}
pub fn run_evaluate(_a: EvaluateArgs) -> anyhow::Result<()> { anyhow::bail!("not built yet") }
pub fn run_ensemble(_a: EnsembleArgs) -> anyhow::Result<()> { anyhow::bail!("not built yet") }
pub fn run_postprocess(_a: PostprocessArgs) -> anyhow::Result<()> { anyhow::bail!("not built yet") }
