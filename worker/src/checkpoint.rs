//! Checkpoints: `checkpoint_{latest,best,final}.safetensors` + a JSON sidecar `checkpoint_*.json`
//! ([`CheckpointMeta`]) in the fold folder (ARCHITECTURE.md; nnU-Net's `.pth` holds the same
//! information: weights, optimizer state, grad-scaler state, logging, `_best_ema`, `current_epoch`,
//! `init_args`, `inference_allowed_mirroring_axes`; `nnUNetTrainer.save_checkpoint`).
//!
//! The safetensors file holds the network weights under the reference `state_dict` names and the SGD
//! momentum buffers under `optimizer.momentum.<param name>`. Both files are written atomically (temp
//! file, fsync, rename); the weights first, then the sidecar that carries their sha256, so a sidecar
//! never points at a partially written weights file. Loading verifies the hash.
use crate::net::PlainConvUNet;
use anyhow::{anyhow, bail, Context};
use nnunet_common::plans::Configuration2d;
use nnunet_common::train_log::EpochMetrics;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Version of the sidecar format.
pub const FORMAT_VERSION: u32 = 1;
/// Prefix of the optimizer momentum buffers inside the safetensors file.
pub const MOMENTUM_PREFIX: &str = "optimizer.momentum.";

/// What nnU-Net stores as `init_args` (+ `inference_allowed_mirroring_axes`): enough to rebuild the
/// network and run inference without the preprocessed folder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InitArgs {
    /// The plans' `2d` configuration (architecture, patch size, normalization, ...).
    pub configuration: Configuration2d,
    /// Name of the configuration (`2d`).
    #[serde(default = "default_config_name")]
    pub configuration_name: String,
    /// The dataset's `dataset.json`, verbatim.
    pub dataset_json: serde_json::Value,
    pub fold: nnunet_common::Fold,
    pub num_input_channels: i64,
    pub num_classes: i64,
    /// Test-time mirroring axes (`configure_rotation_dummyDA_mirroring_and_inital_patch_size`: `(0, 1)` for 2D).
    pub inference_allowed_mirroring_axes: Vec<usize>,
}

fn default_config_name() -> String {
    "2d".into()
}

/// Gradient-scaler state (CUDA fp16 only).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct GradScalerState {
    pub scale: f64,
    pub growth_tracker: i64,
}

/// Random state. Every batch's RNG is derived from `(seed, epoch, iteration, sample)`, so the state
/// needed to continue a run exactly is the seed plus the number of completed epochs.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct RngState {
    pub seed: u64,
    /// Epoch the next batch will be drawn for.
    pub next_epoch: usize,
}

/// The JSON sidecar of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckpointMeta {
    pub format_version: u32,
    /// `nnUNetTrainer`.
    pub trainer_name: String,
    /// `latest`, `best` or `final`.
    pub kind: String,
    /// Number of completed epochs (nnU-Net's saved `current_epoch`): training continues at this epoch.
    pub epoch: usize,
    /// Planned number of epochs of the run.
    pub epochs_total: usize,
    /// Learning rate used in the last completed epoch.
    pub lr: f64,
    /// Current EMA of the pseudo-Dice (None before the first epoch).
    pub ema_fg_dice: Option<f64>,
    /// Best EMA so far (nnU-Net `_best_ema`).
    pub best_ema: Option<f64>,
    /// Every finished epoch's metrics, in order (nnU-Net's `logging`).
    pub logging: Vec<EpochMetrics>,
    pub rng: RngState,
    pub grad_scaler: Option<GradScalerState>,
    /// File name of the weights (next to the sidecar).
    pub weights_file: String,
    /// sha256 of the weights file.
    pub sha256: String,
    pub init_args: InitArgs,
    /// The training configuration the run used (informational; resume uses the caller's).
    #[serde(default)]
    pub training_config: serde_json::Value,
}

/// Paths of a checkpoint: `(weights, sidecar)`. Accepts the `.safetensors`, the `.json`, or the stem.
pub fn checkpoint_paths(p: &Path) -> (PathBuf, PathBuf) {
    let stem = match p.extension().and_then(|e| e.to_str()) {
        Some("safetensors") | Some("json") => p.with_extension(""),
        _ => p.to_path_buf(),
    };
    let s = stem.to_string_lossy();
    (PathBuf::from(format!("{s}.safetensors")), PathBuf::from(format!("{s}.json")))
}

/// Serializes named f32 tensors to safetensors bytes (tensors are copied to the CPU).
pub fn to_safetensors_bytes(tensors: &[(String, Tensor)]) -> anyhow::Result<Vec<u8>> {
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
        let shape: Vec<usize> = t.size().iter().map(|&s| s as usize).collect();
        let n = t.numel();
        let mut bytes = vec![0u8; n * 4];
        t.copy_data_u8(&mut bytes, n);
        owned.push((name.clone(), shape, bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(n, s, b)| Ok((n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)?)))
        .collect::<Result<_, safetensors::SafeTensorError>>()
        .map_err(|e| anyhow!("building safetensors views: {e:?}"))?;
    safetensors::tensor::serialize(views, &None).map_err(|e| anyhow!("serializing safetensors: {e:?}"))
}

/// Parses safetensors bytes into CPU f32 tensors.
pub fn from_safetensors_bytes(bytes: &[u8], what: &Path) -> anyhow::Result<HashMap<String, Tensor>> {
    let st =
        safetensors::SafeTensors::deserialize(bytes).map_err(|e| anyhow!("{}: not a valid safetensors file: {e:?}", what.display()))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            bail!("{}: tensor {name} has dtype {:?}; only F32 is written by nnunet-rs", what.display(), view.dtype());
        }
        let data: Vec<f32> = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let shape: Vec<i64> = view.shape().iter().map(|&s| s as i64).collect();
        out.insert(name, Tensor::from_slice(&data).reshape(shape));
    }
    Ok(out)
}

/// Writes `weights` (+ momentum buffers) and the sidecar atomically; returns both paths.
/// `meta.sha256` and `meta.weights_file` are filled in here.
pub fn save(
    fold_dir: &Path,
    name: &str,
    params: &[(String, Tensor)],
    momentum: &[(String, Tensor)],
    meta: &mut CheckpointMeta,
) -> anyhow::Result<Vec<PathBuf>> {
    let (wpath, jpath) = checkpoint_paths(&fold_dir.join(name));
    let mut all: Vec<(String, Tensor)> = params.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
    all.extend(momentum.iter().map(|(n, t)| (format!("{MOMENTUM_PREFIX}{n}"), t.shallow_clone())));
    let bytes = to_safetensors_bytes(&all)?;
    meta.sha256 = nnunet_common::hash::sha256_bytes(&bytes);
    meta.weights_file = wpath.file_name().unwrap().to_string_lossy().into_owned();
    nnunet_common::hash::write_atomic(&wpath, &bytes).with_context(|| format!("writing checkpoint {}", wpath.display()))?;
    let json = serde_json::to_vec_pretty(meta)?;
    nnunet_common::hash::write_atomic(&jpath, &json).with_context(|| format!("writing checkpoint sidecar {}", jpath.display()))?;
    Ok(vec![wpath, jpath])
}

/// Reads a checkpoint's sidecar and tensors, verifying the weights' sha256.
pub fn load(ckpt: &Path) -> anyhow::Result<(CheckpointMeta, HashMap<String, Tensor>)> {
    let (wpath, jpath) = checkpoint_paths(ckpt);
    let meta_bytes = std::fs::read(&jpath).with_context(|| {
        format!(
            "checkpoint sidecar {} is missing or unreadable (a checkpoint is a .safetensors file plus its .json sidecar)",
            jpath.display()
        )
    })?;
    let meta: CheckpointMeta =
        serde_json::from_slice(&meta_bytes).with_context(|| format!("parsing checkpoint sidecar {}", jpath.display()))?;
    if meta.format_version > FORMAT_VERSION {
        bail!(
            "{}: checkpoint format {} is newer than this nnunet-worker supports ({FORMAT_VERSION}); upgrade nnunet-worker",
            jpath.display(),
            meta.format_version
        );
    }
    let bytes = std::fs::read(&wpath).with_context(|| format!("checkpoint weights {} are missing or unreadable", wpath.display()))?;
    let sha = nnunet_common::hash::sha256_bytes(&bytes);
    if sha != meta.sha256 {
        bail!(
            "checkpoint {} is corrupt or does not belong to its sidecar: sha256 {sha}, sidecar {} says {}; delete both files and resume from another checkpoint",
            wpath.display(),
            jpath.display(),
            meta.sha256
        );
    }
    let tensors = from_safetensors_bytes(&bytes, &wpath)?;
    Ok((meta, tensors))
}

/// Copies the named weights into the network's variables (shapes must match; every parameter must exist).
pub fn restore_weights(net: &PlainConvUNet, vs: &tch::nn::VarStore, tensors: &HashMap<String, Tensor>, what: &Path) -> anyhow::Result<()> {
    tch::no_grad(|| -> anyhow::Result<()> {
        for (name, mut var) in net.named_parameters(vs) {
            let src = tensors.get(&name).ok_or_else(|| anyhow!("{}: parameter {name} is missing from the checkpoint", what.display()))?;
            if src.size() != var.size() {
                bail!(
                    "{}: parameter {name} has shape {:?} in the checkpoint, the network built from its plans has {:?}",
                    what.display(),
                    src.size(),
                    var.size()
                );
            }
            var.copy_(src);
        }
        Ok(())
    })
}

/// Loads a trained network for inference: builds PlainConvUNet from the checkpoint's `init_args`,
/// verifies the weights' hash and copies them onto `device`. `ckpt` may name the `.safetensors`, the
/// `.json` sidecar or the common stem (`fold_0/checkpoint_final`).
pub fn load_network(ckpt: &Path, device: Device) -> anyhow::Result<(tch::nn::VarStore, PlainConvUNet, CheckpointMeta)> {
    let (meta, tensors) = load(ckpt)?;
    let arch = &meta.init_args.configuration.architecture.arch_kwargs;
    PlainConvUNet::check_arch(arch).map_err(|e| anyhow!("{}: {e}", ckpt.display()))?;
    let vs = tch::nn::VarStore::new(device);
    let net = PlainConvUNet::new(&vs.root(), arch, meta.init_args.num_input_channels, meta.init_args.num_classes);
    restore_weights(&net, &vs, &tensors, ckpt)?;
    Ok((vs, net, meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safetensors_round_trip() {
        let t = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.5, -1.0, 0.25]).reshape([2, 3]);
        let bytes = to_safetensors_bytes(&[("a.weight".into(), t.shallow_clone())]).unwrap();
        let back = from_safetensors_bytes(&bytes, Path::new("x")).unwrap();
        assert_eq!(back["a.weight"].size(), vec![2, 3]);
        assert_eq!(Vec::<f32>::try_from(back["a.weight"].flatten(0, -1)).unwrap(), vec![1.0, 2.0, 3.0, 4.5, -1.0, 0.25]);
    }

    #[test]
    fn paths_accept_any_form() {
        let want = (PathBuf::from("/f/checkpoint_final.safetensors"), PathBuf::from("/f/checkpoint_final.json"));
        assert_eq!(checkpoint_paths(Path::new("/f/checkpoint_final")), want);
        assert_eq!(checkpoint_paths(Path::new("/f/checkpoint_final.json")), want);
        assert_eq!(checkpoint_paths(Path::new("/f/checkpoint_final.safetensors")), want);
    }
}
