//! The dataset-wide mask value -> label mapping and the label and channel names: one mapping for
//! the whole dataset (0/255 becomes 0/1, {0, 128, 255} becomes {0, 1, 2}), `--map`, `--binarize`
//! and `--labels` change it; labels come out consecutive 0..K as nnU-Net requires
//! (`nnunetv2/experiment_planning/verify_dataset_integrity.py::verify_labels`).
use super::sources::Declared;
use super::ConvertOptions;
use std::collections::{BTreeMap, BTreeSet};

/// A mask value as dataset.json text: integers without a decimal point.
pub(super) fn value_key(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Decides the dataset-wide value -> label mapping from the set of values found in all masks.
pub(super) fn decide_mapping(
    values: &BTreeSet<u64>,
    opts: &ConvertOptions,
    declared: Option<&Declared>,
) -> std::result::Result<BTreeMap<u64, i64>, Vec<String>> {
    let vals: Vec<f64> = values.iter().map(|&b| f64::from_bits(b)).collect();
    let mut map: BTreeMap<u64, i64> = BTreeMap::new();
    let mut problems = Vec::new();
    if opts.binarize {
        for &v in &vals {
            map.insert(v.to_bits(), if v != 0.0 { 1 } else { 0 });
        }
        return Ok(map);
    }
    if !opts.map.is_empty() {
        let explicit: BTreeMap<u64, i64> = opts.map.iter().map(|(o, l)| ((*o).to_bits(), *l)).collect();
        for &v in &vals {
            match explicit.get(&v.to_bits()) {
                Some(&l) => {
                    map.insert(v.to_bits(), l);
                }
                None if v == 0.0 => {
                    map.insert(v.to_bits(), 0);
                }
                None => problems.push(format!(
                    "mask value {} occurs in the masks but --map does not say which label it gets; add --map {}:LABEL (or use --binarize)",
                    value_key(v),
                    value_key(v)
                )),
            }
        }
        return if problems.is_empty() { Ok(map) } else { Err(problems) };
    }
    let non_integer: Vec<String> = vals.iter().filter(|v| v.fract() != 0.0).map(|v| value_key(*v)).collect();
    if !non_integer.is_empty() {
        problems.push(format!(
            "the masks contain non-integer values {non_integer:?} (a float or resampled mask?); pass --binarize to map every nonzero value to 1, or --map VALUE:LABEL for each value"
        ));
        return Err(problems);
    }
    // Identity when the values already are nnU-Net labels: an existing nnU-Net dataset, or
    // integers that fit the declared label names (a class may be absent from every mask).
    let n_named = declared.map(|d| d.labels.len()).or(opts.label_names.as_ref().map(|l| l.len()));
    let identity = match n_named {
        Some(n) => vals.iter().all(|&v| v >= 0.0 && (v as usize) < n),
        None => false,
    };
    if identity {
        for &v in &vals {
            map.insert(v.to_bits(), v as i64);
        }
        return Ok(map);
    }
    if declared.is_some() {
        let bad: Vec<String> = vals
            .iter()
            .filter(|&&v| v < 0.0 || declared.map(|d| !d.labels.contains_key(&(v as i64))).unwrap_or(true))
            .map(|v| value_key(*v))
            .collect();
        problems.push(format!(
            "the label files contain values {bad:?} that dataset.json does not declare as labels; fix the labels or pass --map VALUE:LABEL"
        ));
        return Err(problems);
    }
    // Sorted order across the whole dataset: the same value always gets the same label.
    for (i, &v) in vals.iter().enumerate() {
        map.insert(v.to_bits(), i as i64);
    }
    Ok(map)
}

/// Channel names when neither the user nor the input names them.
pub(super) fn default_channel_names(c: usize, volume: bool) -> Vec<String> {
    match c {
        1 if volume => vec!["image".into()],
        1 => vec!["gray".into()],
        2 => vec!["gray".into(), "A".into()],
        3 => vec!["R".into(), "G".into(), "B".into()],
        4 => vec!["R".into(), "G".into(), "B".into(), "A".into()],
        n => (0..n).map(|k| format!("channel_{k}")).collect(),
    }
}
