//! Loading the folds of a model folder (checked to come from the same plans) and the sliding-window
//! parameters they imply.
use super::options::PredictOptions;
use super::sliding_window::WindowParams;
use crate::checkpoint::{self, CheckpointMeta};
use crate::net::PlainConvUNet;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// One loaded fold.
pub(crate) struct Fold {
    pub fold: nnunet_common::Fold,
    pub _vs: tch::nn::VarStore,
    pub net: PlainConvUNet,
    pub meta: CheckpointMeta,
}

/// Loads `model_dir/fold_k/{checkpoint}` for every requested fold, with clear errors for a missing
/// fold (listing the folds that exist) and for a checkpoint whose hash does not match.
pub(crate) fn load_folds(model_dir: &Path, folds: &[nnunet_common::Fold], opts: &PredictOptions) -> Result<Vec<Fold>> {
    if folds.is_empty() {
        bail!("no folds given; pass e.g. --folds 0 1 2 3 4");
    }
    let available = |name: &str| -> Vec<nnunet_common::Fold> {
        let mut v: Vec<nnunet_common::Fold> = std::fs::read_dir(model_dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().to_string_lossy().strip_prefix("fold_").and_then(|f| f.parse().ok()))
                    .filter(|f: &nnunet_common::Fold| {
                        let stem = model_dir.join(f.dir_name()).join(name);
                        checkpoint::checkpoint_paths(&stem).0.is_file() || crate::interop::pth_path(&stem).is_file()
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let mut out = Vec::new();
    for &f in folds {
        let stem = model_dir.join(f.dir_name()).join(&opts.checkpoint_name);
        let (weights, sidecar) = checkpoint::checkpoint_paths(&stem);
        if (!weights.is_file() || !sidecar.is_file()) && !crate::interop::is_nnunet_checkpoint(&stem) {
            let have = available(&opts.checkpoint_name);
            bail!(
                "fold {f} is missing from model folder {}: {} {} not found; folds with a {} there: {}; train the fold or pass only those with --folds",
                model_dir.display(),
                if weights.is_file() { sidecar.display() } else { weights.display() },
                if weights.is_file() { "(checkpoint sidecar)" } else { "(checkpoint weights)" },
                opts.checkpoint_name,
                if have.is_empty() { "none".to_string() } else { have.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(" ") }
            );
        }
        let (vs, net, meta) = crate::interop::load_network_any(model_dir, f, &stem, opts.device)
            .with_context(|| format!("loading fold {f} from {}", stem.display()))?;
        out.push(Fold { fold: f, _vs: vs, net, meta });
    }
    let first = &out[0].meta.init_args;
    for f in &out[1..] {
        let a = &f.meta.init_args;
        if a.configuration.patch_size != first.configuration.patch_size
            || a.num_classes != first.num_classes
            || a.num_input_channels != first.num_input_channels
        {
            bail!(
                "fold {} does not match fold {} (patch {:?} vs {:?}, classes {} vs {}, channels {} vs {}); all folds must come from the same plans",
                f.fold,
                out[0].fold,
                a.configuration.patch_size,
                first.configuration.patch_size,
                a.num_classes,
                first.num_classes,
                a.num_input_channels,
                first.num_input_channels
            );
        }
    }
    Ok(out)
}

pub(crate) fn window_params(folds: &[Fold], opts: &PredictOptions) -> Result<WindowParams> {
    let a = &folds[0].meta.init_args;
    let patch = match a.configuration.patch_size.as_slice() {
        [x, y] => [*x, *y],
        other => bail!("patch size {other:?} is not 2D; only the 2d configuration is supported"),
    };
    if !(opts.step_size > 0.0 && opts.step_size <= 1.0) {
        bail!("--step-size {} must be in (0, 1]", opts.step_size);
    }
    let mirror = if opts.use_mirroring { a.inference_allowed_mirroring_axes.clone() } else { vec![] };
    Ok(WindowParams::new(patch, opts.step_size, mirror, opts.device))
}
