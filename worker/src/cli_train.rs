//! (being written by its owner; placeholder so the crate builds meanwhile)
#[derive(clap::Args, Debug)]
pub struct TrainArgs {}
pub fn run_train(_a: TrainArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
