//! The four task bodies, each returning the task's result JSON: [`preprocess`], [`train`],
//! [`validate`], [`predict`].
use crate::serve::context::TaskCtx;
use anyhow::{bail, Result};
use nnunet_proto::v1 as pb;

pub mod predict;
pub mod preprocess;
pub mod train;
pub mod validate;

/// Runs the task's body.
pub fn run(ctx: &TaskCtx) -> Result<String> {
    match pb::TaskKind::try_from(ctx.task.kind).unwrap_or(pb::TaskKind::Unspecified) {
        pb::TaskKind::Preprocess => preprocess::run(ctx),
        pb::TaskKind::Train => train::run(ctx),
        pb::TaskKind::Validate => validate::run(ctx),
        pb::TaskKind::Predict => predict::run(ctx),
        pb::TaskKind::Unspecified => bail!("task {} has no kind; coordinator and worker versions differ?", ctx.task.task_id),
    }
}

/// Prediction options of a task (its budget may disable mirroring).
fn predict_options(ctx: &TaskCtx, save_probabilities: bool) -> crate::infer::PredictOptions {
    let b = ctx.task.budget.unwrap_or_default();
    crate::infer::PredictOptions { use_mirroring: !b.disable_tta, save_probabilities, device: ctx.device, ..Default::default() }
}
