//! `--pretrained-weights`: start training from another model's weights with nnU-Net's semantics
//! (`nnunetv2/run/load_pretrained_weights.py::load_pretrained_weights`): every parameter of the network
//! except the segmentation heads (`.seg_layers.`) must exist in the file with the same shape, otherwise
//! nothing is loaded and the error lists every mismatch; the heads keep their fresh initialization;
//! entries of the file the network does not have are ignored.
use super::nnunet_model;
use crate::checkpoint;
use crate::error::WorkerError;
use crate::net::PlainConvUNet;
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::path::Path;
use tch::Tensor;

/// Substrings of parameter names that are never transferred (nnU-Net's `skip_strings_in_pretrained`).
pub const SKIPPED: &[&str] = &[".seg_layers."];

/// Weights of a file: ours (`.safetensors`, momentum buffers dropped) or nnU-Net's (`.pth`, `network_weights`).
pub fn read_weights(path: &Path) -> Result<HashMap<String, Tensor>> {
    let is_pth = path.extension().is_some_and(|e| e == "pth" || e == "pt");
    if is_pth {
        let ck = nnunet_model::read_checkpoint(path)?;
        return Ok(ck.weights.into_iter().collect());
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading pretrained weights {}", path.display()))?;
    let mut t = checkpoint::from_safetensors_bytes(&bytes, path)?;
    t.retain(|k, _| !k.starts_with(checkpoint::MOMENTUM_PREFIX));
    Ok(t)
}

/// Copies the pretrained weights into `net`; returns a one-line summary for the log.
pub fn load_pretrained_weights(net: &PlainConvUNet, vs: &tch::nn::VarStore, path: &Path) -> Result<String> {
    // A file that cannot be decoded stays so: not retryable either.
    let pretrained = read_weights(path).map_err(crate::error::bad_input)?;
    let ours = net.named_parameters(vs);
    let mut mismatches = Vec::new();
    let mut transfer = Vec::new();
    for (name, var) in &ours {
        if SKIPPED.iter().any(|s| name.contains(s)) {
            continue;
        }
        match pretrained.get(name) {
            None => mismatches.push(format!("{name}: missing from the pretrained weights (network {:?})", var.size())),
            Some(t) if t.size() != var.size() => mismatches.push(format!("{name}: pretrained {:?}, network {:?}", t.size(), var.size())),
            Some(t) => transfer.push((var.shallow_clone(), t)),
        }
    }
    if !mismatches.is_empty() {
        // Deterministic: a distributed run fails the fold at once instead of retrying it.
        return Err(anyhow::Error::new(WorkerError::BadInput(format!(
            "pretrained weights {} do not fit this network ({} mismatching parameter(s); all but the segmentation heads must match in name and shape):\n  {}",
            path.display(),
            mismatches.len(),
            mismatches.join("\n  ")
        ))));
    }
    let n = transfer.len();
    tch::no_grad(|| {
        for (mut var, t) in transfer {
            var.copy_(&t.to_device(var.device()).to_kind(var.kind()));
        }
    });
    let heads = ours.len() - n;
    Ok(format!(
        "loaded pretrained weights from {}: {n} parameter tensors transferred, {heads} segmentation-head tensors start fresh",
        path.display()
    ))
}
