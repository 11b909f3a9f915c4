//! VALIDATE: the final sliding-window validation of the task's fold; uploads `validation/`.
use crate::serve::context::TaskCtx;
use crate::serve::staging;
use anyhow::{Context, Result};

pub fn run(ctx: &TaskCtx) -> Result<String> {
    let ws = staging::prepare(ctx)?;
    let fd = ctx.fold_dir(&ws.scratch);
    let val_dir = fd.join("validation");
    if val_dir.exists() {
        std::fs::remove_dir_all(&val_dir).with_context(|| format!("removing the earlier {}", val_dir.display()))?;
    }
    let summary = crate::infer::validate_fold(&ctx.dirs(&ws.root).preprocessed, ctx.fold, &fd, &super::predict_options(ctx, false))?;
    let n = ctx.upload_dir(&ws, &val_dir)?;
    let dice = summary.foreground_mean.dice;
    ctx.log(format!("fold {} validation: {n} file(s), mean foreground Dice {dice}", ctx.fold));
    Ok(serde_json::json!({ "dice": dice, "files": n }).to_string())
}
