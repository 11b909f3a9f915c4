//! PLACEHOLDER written by the lead so the crate builds; the planning engineer replaces this file.
//! (Module of the coordinator LIBRARY: `coordinator/src/lib.rs` declares `pub mod cli_plan;`.)
#[derive(clap::Args, Debug)] pub struct PlanArgs {}
#[derive(clap::Args, Debug)] pub struct PreprocessArgs {}
#[derive(clap::Args, Debug)] pub struct PlanAndPreprocessArgs {}
pub fn run_plan(_a: PlanArgs) -> anyhow::Result<()> { anyhow::bail!("not built yet") }
pub fn run_preprocess(_a: PreprocessArgs) -> anyhow::Result<()> { anyhow::bail!("not built yet") }
pub fn run_plan_and_preprocess(_a: PlanAndPreprocessArgs) -> anyhow::Result<()> { anyhow::bail!("not built yet") }
