//! From logits to files: [`export_case`] (nnU-Net's `convert_predicted_logits_to_segmentation_with_correct_shape`,
//! `nnunetv2/inference/export_prediction.py`) and [`write_outputs`] (mask, probabilities, sidecar).
use anyhow::{bail, Context, Result};
use nnunet_common::case::CaseProperties;
use nnunet_common::dataset_json::DatasetJson;
use nnunet_common::ensemble::{argmax_channels, regions_to_labels, ProbabilitiesSidecar};
use nnunet_common::imageio::Geometry;
use nnunet_common::plans::{Configuration2d, Plans};
use nnunet_common::postprocess::{self, KeepLargest};
use nnunet_common::{npy, preprocess};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Result of [`export_case`]: arrays in the raw file's orientation.
pub struct Exported {
    /// Class index (= label value) per voxel, (Z, X, Y) of the raw image.
    pub classes: Vec<u16>,
    pub shape: [usize; 3],
    /// Softmax probabilities (K, Z, X, Y), background 1 outside the crop, when asked for; with
    /// regions, the per-region sigmoids, 0 outside the crop.
    pub probabilities: Option<Vec<f32>>,
    /// The network's outputs (K).
    pub channels: usize,
    /// With regions: how the probabilities became labels.
    pub regions_class_order: Option<Vec<i64>>,
}

/// nnU-Net's `convert_predicted_logits_to_segmentation_with_correct_shape`: logits (K, Z, X, Y) in
/// the preprocessed geometry -> class map (and probabilities) in the raw image's geometry. With
/// `regions_class_order` (region-based training) the outputs are sigmoids and become labels as
/// `LabelManager.convert_probabilities_to_segmentation` does; else softmax and argmax.
pub fn export_case(
    logits: &Tensor,
    props: &CaseProperties,
    plans: &Plans,
    config: &Configuration2d,
    with_probabilities: bool,
    regions_class_order: Option<&[i64]>,
) -> Result<Exported> {
    let size: Vec<usize> = logits.size().iter().map(|&s| s as usize).collect();
    let k = size[0];
    let mut shape = [size[0], size[1], size[2], size[3]];
    let mut data: Vec<f32> = Vec::<f32>::try_from(logits.to_kind(Kind::Float).contiguous().flatten(0, -1))?;
    // Resample to the shape after cropping (a no-op for natural images, whose spacing is kept).
    let sa = &props.shape_after_cropping_and_before_resampling;
    let target = [sa[0], sa[1], sa[2]];
    if target != [shape[1], shape[2], shape[3]] {
        let mut current = vec![props.spacing[0]];
        current.extend_from_slice(&config.spacing);
        data = preprocess::resample_data_to_shape(
            &data,
            shape,
            target,
            &current,
            &props.spacing,
            config.resampling_fn_probabilities_kwargs.order,
            false,
        );
        shape = [k, target[0], target[1], target[2]];
    }
    let n = shape[1] * shape[2] * shape[3];
    let (classes, probabilities) = match regions_class_order {
        Some(order) => {
            if order.len() != k {
                bail!("the network has {k} outputs but dataset.json declares {} regions", order.len());
            }
            // `apply_inference_nonlin`: sigmoid per region, in f32
            let p: Vec<f32> = data.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect();
            (regions_to_labels(order, &p), with_probabilities.then_some(p))
        }
        None => {
            let probabilities = with_probabilities.then(|| softmax_channels(k, n, &data));
            (argmax_channels(k, probabilities.as_deref().unwrap_or(&data)), probabilities)
        }
    };
    let classes_f: Vec<f32> = classes.iter().map(|&c| c as f32).collect();
    let (full, full_shape) = preprocess::revert_cropping(&classes_f, [1, shape[1], shape[2], shape[3]], props, &[0.0])?;
    let (full, full_shape) = preprocess::transpose_spatial(&full, full_shape, &plans.transpose_backward);
    let probabilities = match probabilities {
        Some(p) => {
            // `LabelManager.revert_cropping_on_probabilities`: background 1 outside the crop, regions 0.
            let mut fill = vec![0.0f32; k];
            if regions_class_order.is_none() {
                fill[0] = 1.0;
            }
            let (pf, ps) = preprocess::revert_cropping(&p, shape, props, &fill)?;
            Some(preprocess::transpose_spatial(&pf, ps, &plans.transpose_backward).0)
        }
        None => None,
    };
    Ok(Exported {
        classes: full.iter().map(|&c| c as u16).collect(),
        shape: [full_shape[1], full_shape[2], full_shape[3]],
        probabilities,
        channels: k,
        regions_class_order: regions_class_order.map(<[i64]>::to_vec),
    })
}

/// Softmax over the classes of (K, N) values, per voxel, in f32.
fn softmax_channels(k: usize, n: usize, data: &[f32]) -> Vec<f32> {
    let mut p = data.to_vec();
    for i in 0..n {
        let m = (0..k).map(|c| p[c * n + i]).fold(f32::NEG_INFINITY, f32::max);
        let mut s = 0.0f32;
        for c in 0..k {
            let e = (p[c * n + i] - m).exp();
            p[c * n + i] = e;
            s += e;
        }
        for c in 0..k {
            p[c * n + i] /= s;
        }
    }
    p
}

/// Label value written for each class index: the dataset's label values (consecutive 0..K-1), mapped
/// to the user's original mask values when `nnunetrs_label_mapping` is present.
pub fn class_values(dj: &DatasetJson, original: bool) -> Vec<f64> {
    let labels = dj.label_values();
    labels
        .iter()
        .map(|&l| {
            if original {
                if let Some(v) = dj.nnunetrs_label_mapping.as_ref().and_then(|m| m.label_to_original.get(&l.to_string())) {
                    return *v;
                }
            }
            l as f64
        })
        .collect()
}

fn values_to_u16(classes: &[u16], values: &[f64], what: &Path) -> Result<Vec<u16>> {
    classes
        .iter()
        .map(|&c| {
            let v = values.get(c as usize).copied().unwrap_or(c as f64);
            if !(0.0..=65535.0).contains(&v) || v.fract() != 0.0 {
                bail!("{}: label value {v} cannot be written to a mask file (must be an integer 0..=65535)", what.display());
            }
            Ok(v as u16)
        })
        .collect()
}

/// Mask file ending for an input format: the same format, except lossy JPEG, which becomes PNG.
pub(crate) fn mask_ending(format: &str) -> &'static str {
    match format {
        "nii.gz" => ".nii.gz",
        "nii" => ".nii",
        "tif" => ".tif",
        "bmp" => ".bmp",
        _ => ".png",
    }
}

/// One case's outputs and how to write them.
pub(crate) struct CaseOutput<'a> {
    pub case: &'a str,
    pub exported: &'a Exported,
    pub geometry: &'a Geometry,
    /// Mask file ending (with the dot).
    pub ending: &'a str,
    /// Label value per class index.
    pub values: &'a [f64],
    pub pp_steps: &'a [KeepLargest],
    pub save_probabilities: bool,
}

/// Writes one case's outputs: the mask (atomic), and optionally probabilities + sidecar.
pub(crate) fn write_outputs(out_dir: &Path, o: &CaseOutput) -> Result<PathBuf> {
    let CaseOutput { case, exported, geometry, ending, values, pp_steps, save_probabilities } = *o;
    let mask = out_dir.join(format!("{case}{ending}"));
    let mut classes = exported.classes.clone();
    if !pp_steps.is_empty() {
        // Postprocessing works on label values (= class indices); the user's values come after.
        let mut seg: Vec<i32> = classes.iter().map(|&c| c as i32).collect();
        postprocess::apply_steps(&mut seg, exported.shape, pp_steps);
        classes = seg.iter().map(|&c| c as u16).collect();
    }
    let labels = values_to_u16(&classes, values, &mask)?;
    postprocess::write_labels(&mask, exported.shape, &labels, geometry).with_context(|| format!("writing {}", mask.display()))?;
    if save_probabilities {
        if let Some(p) = &exported.probabilities {
            let npz = out_dir.join(format!("{case}.npz"));
            let shape = [exported.channels, exported.shape[0], exported.shape[1], exported.shape[2]];
            npy::write_npz_f32(&npz, &[("probabilities", &shape, p)])?;
            let sidecar = ProbabilitiesSidecar {
                geometry: geometry.clone(),
                mask_ending: ending.to_string(),
                class_values: values.to_vec(),
                regions_class_order: exported.regions_class_order.clone(),
            };
            nnunet_common::error::write_json(&ProbabilitiesSidecar::path_for(&npz), &sidecar)?;
        }
    }
    Ok(mask)
}
