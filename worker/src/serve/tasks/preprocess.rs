//! PREPROCESS: preprocesses the task's cases; without a shared filesystem the outputs are uploaded.
use crate::serve::context::TaskCtx;
use crate::serve::staging;
use anyhow::{Context, Result};

pub fn run(ctx: &TaskCtx) -> Result<String> {
    let ws = staging::prepare(ctx)?;
    let dirs = ctx.dirs(&ws.root);
    let out_dirs = if ws.shared { dirs.clone() } else { ctx.dirs(&ws.scratch) };
    let n = ctx.task.case_ids.len();
    let report = nnunet_common::preprocess::preprocess_dataset(&out_dirs, ctx.threads(), Some(&ctx.task.case_ids), false)
        .with_context(|| format!("preprocessing {n} case(s)"))?;
    if !ws.shared {
        let ending = nnunet_common::dataset_json::DatasetJson::load(&dirs.raw.join("dataset.json"))?.file_ending;
        for c in &ctx.task.case_ids {
            let f = nnunet_common::case::CaseFiles::new(&out_dirs.data_dir(), c);
            for p in [&f.data, &f.seg, &f.props] {
                ctx.upload(&ws, p)?;
            }
            let gt = out_dirs.gt_dir().join(format!("{c}{ending}"));
            if gt.exists() {
                ctx.upload(&ws, &gt)?;
            }
        }
    }
    ctx.log(format!("preprocessed {n} case(s)"));
    Ok(serde_json::json!({ "cases": n, "report": format!("{report:?}") }).to_string())
}
