//! (being written by its owner; placeholder so the crate builds meanwhile)
#[derive(clap::Args, Debug)]
pub struct PredictArgs {}
pub fn run_predict(_a: PredictArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
