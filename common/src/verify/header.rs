//! The `dataset.json` checks (`nnunetv2/experiment_planning/verify_dataset_integrity.py::
//! verify_dataset_integrity`, its first part): present, valid JSON, the required keys, the types,
//! channel names, and labels consecutive from background 0 with the ignore label highest.
use super::VerifyReport;
use crate::dataset_json::DatasetJson;
use std::collections::BTreeSet;
use std::path::Path;

const REQUIRED_KEYS: [&str; 4] = ["labels", "channel_names", "numTraining", "file_ending"];

/// Parses `dataset.json` as a plain value first so that missing keys are reported by name
/// (nnU-Net's assertion lists missing and unused keys), then as the typed struct. `None` (with the
/// problem in `rep`) when it cannot be used.
pub(super) fn read_dataset_json(dj_path: &Path, rep: &mut VerifyReport) -> Option<DatasetJson> {
    let value: serde_json::Value = match std::fs::read(dj_path) {
        Err(_) => {
            rep.problems.push(format!("{}: dataset.json is missing; write one with channel_names, labels, numTraining and file_ending (or create the dataset with `nnunet convert`)", dj_path.display()));
            return None;
        }
        Ok(bytes) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(v) if v.is_object() => v,
            Ok(_) => {
                rep.problems.push(format!("{}: dataset.json is not a JSON object", dj_path.display()));
                return None;
            }
            Err(e) => {
                rep.problems.push(format!("{}: dataset.json is not valid JSON ({e}); fix the syntax", dj_path.display()));
                return None;
            }
        },
    };
    let obj = value.as_object()?;
    if obj.contains_key("dataset") {
        rep.problems.push(format!(
            "{}: the optional \"dataset\" key (explicit per-case file lists) is not supported by nnunet-rs; lay the files out as imagesTr/{{case}}_{{XXXX}}{{ending}} + labelsTr/{{case}}{{ending}} and remove the key (nnunet convert --from does this)",
            dj_path.display()
        ));
        return None;
    }
    let missing: Vec<&str> = REQUIRED_KEYS.iter().copied().filter(|k| !obj.contains_key(*k)).collect();
    if !missing.is_empty() {
        let hint = if obj.contains_key("modality") {
            " (this looks like an nnU-Net v1 dataset.json: convert it with `nnunet convert --from <TaskXXX folder>`)"
        } else {
            ""
        };
        rep.problems.push(format!("{}: required key(s) {missing:?} missing from dataset.json{hint}", dj_path.display()));
        return None;
    }
    match serde_json::from_value(value) {
        Ok(d) => Some(d),
        Err(e) => {
            rep.problems.push(format!(
                "{}: dataset.json has a key of the wrong type ({e}); expected channel_names {{\"0\": \"name\"}}, labels {{\"background\": 0, ...}} (name -> int), numTraining int, file_ending string",
                dj_path.display()
            ));
            None
        }
    }
}

/// Channel names present; labels consecutive from 0 (the ignore label included), background 0,
/// the ignore label highest. Returns the declared label values.
pub(super) fn check_labels(dj: &DatasetJson, dj_path: &Path, rep: &mut VerifyReport) -> BTreeSet<i64> {
    if dj.num_channels() == 0 {
        rep.problems.push(format!(
            "{}: channel_names is empty; list one name per channel, e.g. {{\"0\": \"R\", \"1\": \"G\", \"2\": \"B\"}}",
            dj_path.display()
        ));
    }
    // The members of regions are labels too (`LabelManager.all_labels`); the ignore label joins them.
    if let Err(e) = crate::labels::LabelManager::new(dj) {
        rep.problems.push(format!("{}: {}", dj_path.display(), e.to_string().trim_start_matches("dataset.json: ")));
    }
    let mut label_vals: Vec<i64> = dj.label_values();
    label_vals.extend(dj.ignore_label());
    label_vals.sort();
    let consecutive = !label_vals.is_empty() && label_vals[0] == 0 && label_vals.windows(2).all(|w| w[1] - w[0] == 1);
    if !consecutive && dj.labels.iter().any(|(_, v)| v.as_int().is_none()) {
        // A region naming a label that does not exist leaves a gap in the labels.
        let gap = label_vals.iter().enumerate().find(|(i, &v)| v != *i as i64).map(|(_, &v)| v).unwrap_or_default();
        let names: Vec<&String> = dj.labels.iter().filter(|(_, v)| v.values().iter().any(|&x| x >= gap)).map(|(n, _)| n).collect();
        rep.problems.push(format!(
            "{}: the regions name labels {label_vals:?}, which are not consecutive from 0: {names:?} name label {gap} or higher, but no label \
             below it fills the gap; a region may only name the dataset's labels (0, 1, 2, ... as in the masks)",
            dj_path.display()
        ));
    } else if !consecutive {
        rep.problems.push(format!(
            "{}: labels must be consecutive integers starting with background = 0 (0, 1, 2, ...), found values {label_vals:?}; renumber them (nnunet convert --map OLD:NEW does this for you)",
            dj_path.display()
        ));
    }
    if let Some(ig) = dj.ignore_label() {
        if label_vals.last() != Some(&ig) {
            rep.problems.push(format!("{}: the ignore label ({ig}) must be the highest label value", dj_path.display()));
        }
    }
    label_vals.into_iter().collect()
}
