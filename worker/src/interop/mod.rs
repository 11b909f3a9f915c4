//! Interoperability with nnU-Net v2 model folders.
//!
//! - [`pickle`]: a safe pickle reader/writer (nothing is imported or executed).
//! - [`pth`]: PyTorch's zip checkpoint container, read and written without Python.
//! - [`nnunet_model`]: nnU-Net trainer folders (`plans.json`, `dataset.json`, `fold_K/checkpoint_*.pth`)
//!   loaded into our PlainConvUNet, with named refusals (3D, other architectures, other trainers).
//! - [`model_zip`]: `export-model` (ours -> the zip `nnUNetv2_install_pretrained_model_from_zip` takes) and
//!   `import-model` (that zip -> our model folder).
//! - [`pretrained`]: `--pretrained-weights` with nnU-Net's `load_pretrained_weights` semantics.
//! - [`cli`]: the worker subcommands.
pub mod cli;
pub mod model_zip;
pub mod nnunet_model;
pub mod pickle;
pub mod pickle_out;
pub mod pretrained;
pub mod pth;

use crate::checkpoint::{self, CheckpointMeta};
use crate::net::PlainConvUNet;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// `{stem}.pth` for a checkpoint stem such as `fold_0/checkpoint_final`.
pub fn pth_path(stem: &Path) -> PathBuf {
    PathBuf::from(format!("{}.pth", stem.to_string_lossy()))
}

/// Whether `stem` names an nnU-Net checkpoint only (a `.pth` and no `.safetensors` of ours).
pub fn is_nnunet_checkpoint(stem: &Path) -> bool {
    !checkpoint::checkpoint_paths(stem).0.is_file() && pth_path(stem).is_file()
}

/// Loads fold `fold` for inference from our checkpoint (`{stem}.safetensors` + sidecar) or, when only
/// `{stem}.pth` exists, from an nnU-Net checkpoint with `model_dir`'s plans.json and dataset.json.
pub fn load_network_any(
    model_dir: &Path,
    fold: nnunet_common::Fold,
    stem: &Path,
    device: tch::Device,
) -> Result<(tch::nn::VarStore, PlainConvUNet, CheckpointMeta)> {
    if is_nnunet_checkpoint(stem) {
        let l = nnunet_model::load_fold(model_dir, fold, &pth_path(stem), device)
            .with_context(|| format!("loading nnU-Net checkpoint {}", pth_path(stem).display()))?;
        return Ok((l.vs, l.net, l.meta));
    }
    checkpoint::load_network(stem, device)
}
