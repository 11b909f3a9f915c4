//! Ensembling of saved probabilities (`nnunetv2/ensembling/ensemble.py::ensemble_folders`).
//!
//! `nnunet predict --save-probabilities` writes, next to each mask, `{case}.npz` with the member
//! `probabilities` (float32, (K, Z, X, Y) in the original geometry, readable by `numpy.load`) and a
//! sidecar `{case}.json` ([`ProbabilitiesSidecar`]) that replaces nnU-Net's `.pkl`: the geometry
//! and format needed to write the merged mask back, and the label value to write for each class.
//! [`ensemble_folders`] averages the probabilities of the cases present in every folder (in
//! float32, like nnU-Net) and writes the argmax.
use crate::imageio::Geometry;
use crate::{npy, Error, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What is needed to turn saved probabilities back into a mask file (our `.pkl`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProbabilitiesSidecar {
    /// Geometry of the input image (format, spacing, NIfTI affine).
    pub geometry: Geometry,
    /// File name ending of the mask written for this case (".png", ".nii.gz", ...).
    pub mask_ending: String,
    /// Value written to the mask for class index k (the user's original values, e.g. [0, 255]);
    /// with regions, for label value k.
    pub class_values: Vec<f64>,
    /// With regions: the probabilities are per-region sigmoids and become labels by painting
    /// `regions_class_order[i]` where channel i exceeds 0.5 (`LabelManager.convert_probabilities_to_segmentation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regions_class_order: Option<Vec<i64>>,
}

impl ProbabilitiesSidecar {
    pub fn path_for(npz: &Path) -> PathBuf {
        npz.with_extension("json")
    }
}

/// Averages the `probabilities` members of several `.npz` files (float32 mean, as nnU-Net's
/// `average_probabilities`). All must have the same shape.
pub fn average_probabilities(files: &[PathBuf]) -> Result<(Vec<usize>, Vec<f32>)> {
    let first = files.first().ok_or_else(|| Error::Invalid("average_probabilities: no files given".into()))?;
    let (shape, mut acc) = npy::read_npz_member::<f32>(first, "probabilities")?;
    for f in &files[1..] {
        let (s, d) = npy::read_npz_member::<f32>(f, "probabilities")?;
        if s != shape {
            return Err(Error::format(
                f,
                format!("probabilities have shape {s:?} but {} has {shape:?}; the folders do not hold the same cases", first.display()),
            ));
        }
        for (a, b) in acc.iter_mut().zip(&d) {
            *a += b;
        }
    }
    let n = files.len() as f32;
    for a in &mut acc {
        *a /= n;
    }
    Ok((shape, acc))
}

pub use crate::labels::{argmax_channels, regions_to_labels};

/// Maps class indices to the values written to the mask file.
pub fn class_to_values(classes: &[u16], class_values: &[f64]) -> Vec<u16> {
    classes.iter().map(|&c| class_values.get(c as usize).map(|&v| v as u16).unwrap_or(c)).collect()
}

/// Merges the cases of several prediction folders that were written with saved probabilities
/// (`nnunet predict --save-probabilities`): writes the masks of the averaged probabilities to
/// `output`. `dataset_json` is the model's; its label count is checked against the files.
/// Returns the number of cases.
pub fn ensemble_folders(inputs: &[PathBuf], output: &Path, dataset_json: &crate::dataset_json::DatasetJson) -> Result<usize> {
    let heads = crate::labels::LabelManager::new(dataset_json)?.num_segmentation_heads();
    ensemble_folders_with(inputs, output, false, Some(heads))
}

/// [`ensemble_folders`] with options: every folder must hold the same `.npz` files; writes
/// `{case}{mask_ending}` (and, with `save_probabilities`, the averaged `.npz` + sidecar) to
/// `output`; `n_classes`, when given, must match the probabilities' first axis.
pub fn ensemble_folders_with(inputs: &[PathBuf], output: &Path, save_probabilities: bool, n_classes: Option<usize>) -> Result<usize> {
    if inputs.len() < 2 {
        return Err(Error::Invalid("ensembling needs at least two input folders".into()));
    }
    let list = |d: &Path| -> Result<Vec<String>> {
        let mut v = crate::masks::list_files(d, ".npz")?;
        v.sort();
        Ok(v)
    };
    let first = list(&inputs[0])?;
    if first.is_empty() {
        return Err(Error::Invalid(format!(
            "{} holds no .npz probabilities; predict with --save-probabilities to ensemble",
            inputs[0].display()
        )));
    }
    for d in &inputs[1..] {
        let other = list(d)?;
        if other != first {
            let missing: Vec<&String> =
                first.iter().filter(|f| !other.contains(f)).chain(other.iter().filter(|f| !first.contains(f))).collect();
            return Err(Error::Invalid(format!(
                "not all folders contain the same probability files: {} and {} differ in {} file(s), e.g. {:?}; give only folders predicted on the same images",
                inputs[0].display(),
                d.display(),
                missing.len(),
                missing.iter().take(5).collect::<Vec<_>>()
            )));
        }
    }
    std::fs::create_dir_all(output).map_err(|e| Error::io(output, e))?;
    first
        .par_iter()
        .map(|name| {
            let files: Vec<PathBuf> = inputs.iter().map(|d| d.join(name)).collect();
            let sidecar_path = ProbabilitiesSidecar::path_for(&files[0]);
            let sidecar: ProbabilitiesSidecar = crate::error::read_json(&sidecar_path)?;
            let (shape, probs) = average_probabilities(&files)?;
            if shape.len() != 4 {
                return Err(Error::format(&files[0], format!("probabilities have shape {shape:?}; expected (K, Z, X, Y)")));
            }
            if let Some(k) = n_classes {
                if shape[0] != k {
                    return Err(Error::format(
                        &files[0],
                        format!("probabilities have {} classes but the model's dataset.json declares {k}", shape[0]),
                    ));
                }
            }
            let classes = match &sidecar.regions_class_order {
                Some(order) if order.len() == shape[0] => regions_to_labels(order, &probs),
                Some(order) => {
                    return Err(Error::format(
                        &sidecar_path,
                        format!(
                            "regions_class_order {order:?} has {} entries but the probabilities have {} channels",
                            order.len(),
                            shape[0]
                        ),
                    ))
                }
                None => argmax_channels(shape[0], &probs),
            };
            let case = name.trim_end_matches(".npz");
            let mask = output.join(format!("{case}{}", sidecar.mask_ending));
            crate::masks::write_labels(
                &mask,
                [shape[1], shape[2], shape[3]],
                &class_to_values(&classes, &sidecar.class_values),
                &sidecar.geometry,
            )?;
            if save_probabilities {
                let npz = output.join(name);
                npy::write_npz_f32(&npz, &[("probabilities", &shape, &probs)])?;
                crate::error::write_json(&ProbabilitiesSidecar::path_for(&npz), &sidecar)?;
            }
            Ok(())
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(first.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_first_max_wins() {
        // K=3, 4 voxels: class planes
        let v = [0.2, 0.5, 0.1, 0.3, /**/ 0.7, 0.5, 0.1, 0.3, /**/ 0.1, 0.0, 0.8, 0.3];
        assert_eq!(argmax_channels(3, &v), vec![1, 0, 2, 0]);
        assert_eq!(class_to_values(&[0, 1, 1], &[0.0, 255.0]), vec![0, 255, 255]);
    }

    #[test]
    fn ensemble_averages_in_float32_and_writes_masks() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, out) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("out"));
        let sidecar = ProbabilitiesSidecar {
            geometry: Geometry { spacing: [999.0, 1.0, 1.0], affine: None, format: "png".into() },
            mask_ending: ".png".into(),
            class_values: vec![0.0, 255.0],
            regions_class_order: None,
        };
        // voxel 0: a says fg 0.9, b says fg 0.2 -> mean 0.55 -> fg; voxel 1: 0.6 / 0.3 -> 0.45 -> bg
        for (d, p) in [(&a, [0.1f32, 0.4, 0.9, 0.6]), (&b, [0.8, 0.7, 0.2, 0.3])] {
            npy::write_npz_f32(&d.join("c1.npz"), &[("probabilities", &[2, 1, 1, 2], &p)]).unwrap();
            crate::error::write_json(&d.join("c1.json"), &sidecar).unwrap();
        }
        assert_eq!(ensemble_folders_with(&[a.clone(), b.clone()], &out, true, Some(2)).unwrap(), 1);
        let (_, avg) = npy::read_npz_member::<f32>(&out.join("c1.npz"), "probabilities").unwrap();
        assert_eq!(avg, vec![(0.1 + 0.8) / 2.0, (0.4 + 0.7) / 2.0, (0.9 + 0.2) / 2.0, (0.6 + 0.3) / 2.0]);
        let mask = crate::imageio::read_seg(&out.join("c1.png")).unwrap();
        assert_eq!(mask.data, vec![255.0, 0.0]);
        // a folder missing a case is refused with a message naming the difference
        npy::write_npz_f32(&a.join("c2.npz"), &[("probabilities", &[2, 1, 1, 2], &[0.0; 4])]).unwrap();
        let err = ensemble_folders_with(&[a, b], &out, false, None).unwrap_err().to_string();
        assert!(err.contains("c2.npz"), "{err}");
    }
}
