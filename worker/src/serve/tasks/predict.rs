//! PREDICT: predicts the run's test images with the task's fold (probabilities saved for the
//! ensemble) and uploads them.
use crate::serve::context::TaskCtx;
use crate::serve::staging;
use anyhow::{Context, Result};

pub fn run(ctx: &TaskCtx) -> Result<String> {
    let ws = staging::prepare(ctx)?;
    let model_dir = ctx.dirs(&ws.scratch).model_dir();
    // plans.json, dataset.json and the checkpoint came with the results/ inputs (copied to scratch
    // on a shared filesystem); the test images are read from `ws.root`.
    let input = ctx.dirs(&ws.root).raw.join("imagesTs");
    let out = model_dir.join("test_predictions").join(ctx.fold.dir_name());
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("removing the earlier {}", out.display()))?;
    }
    let report = crate::infer::predict_folder(&model_dir, &[ctx.fold], &input, &out, &super::predict_options(ctx, true))?;
    let n = ctx.upload_dir(&ws, &out)?;
    Ok(serde_json::json!({ "files": n, "report": format!("{report:?}") }).to_string())
}
