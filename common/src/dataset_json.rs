//! `dataset.json` in nnU-Net v2's form (`nnunetv2/dataset_conversion/generate_dataset_json.py::
//! generate_dataset_json`), plus nnunet-rs's extra key
//! `nnunetrs_label_mapping` that records how the user's original mask values map to labels, so
//! predictions can be written back in the user's values.
use crate::{error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DatasetJson {
    /// Channel index (as a string, "0", "1", ...) to channel name ("R", "CT", "noNorm", ...).
    pub channel_names: BTreeMap<String, String>,
    /// Label name to label value; background must be 0; values consecutive.
    pub labels: BTreeMap<String, LabelValue>,
    #[serde(rename = "numTraining")]
    pub num_training: usize,
    pub file_ending: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overwrite_image_reader_writer: Option<String>,
    /// How the user's original mask values map to labels (written by `nnunet convert`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nnunetrs_label_mapping: Option<LabelMapping>,
    /// Where each case came from, and in which format it should be written back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nnunetrs_source: Option<SourceInfo>,
    /// Any other keys, kept so nnU-Net's files round-trip.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// A label value: an int, or a list of ints for region-based training (not used by the 2D
/// pipeline, kept for round-tripping).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum LabelValue {
    One(i64),
    Region(Vec<i64>),
}

impl LabelValue {
    pub fn as_int(&self) -> Option<i64> {
        match self {
            LabelValue::One(v) => Some(*v),
            LabelValue::Region(_) => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LabelMapping {
    /// original mask value (as written in the user's files) -> label
    pub original_to_label: BTreeMap<String, i64>,
    /// label -> original value to write back
    pub label_to_original: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct SourceInfo {
    /// The user's image format, e.g. "png", "tif", "jpg", "nii.gz".
    pub image_format: String,
    /// The user's mask format.
    pub mask_format: String,
    /// "gray", "rgb", "rgba" or "volume".
    pub color: String,
    /// Bit depth of the masks as given (8 or 16), for writing predictions back.
    #[serde(default)]
    pub mask_bits: u32,
}

impl DatasetJson {
    pub fn load(path: &Path) -> Result<Self> {
        error::read_json(path)
    }
    pub fn save(&self, path: &Path) -> Result<()> {
        error::write_json(path, self)
    }
    pub fn num_channels(&self) -> usize {
        self.channel_names.len()
    }
    /// Channel names in index order.
    pub fn channel_names_ordered(&self) -> Vec<String> {
        let mut v: Vec<(usize, &String)> = self.channel_names.iter().filter_map(|(k, n)| k.parse().ok().map(|i| (i, n))).collect();
        v.sort();
        v.into_iter().map(|(_, n)| n.clone()).collect()
    }
    /// Integer labels sorted by value (regions and `ignore` excluded).
    pub fn label_values(&self) -> Vec<i64> {
        let mut v: Vec<i64> = self.labels.iter().filter(|(k, _)| k.as_str() != "ignore").filter_map(|(_, v)| v.as_int()).collect();
        v.sort();
        v
    }
    /// The ignore label, if declared.
    pub fn ignore_label(&self) -> Option<i64> {
        self.labels.get("ignore").and_then(|v| v.as_int())
    }
    /// Number of output classes of the network (background included, ignore excluded).
    pub fn num_classes(&self) -> usize {
        self.label_values().len()
    }
    /// Foreground labels (value > 0).
    pub fn foreground_labels(&self) -> Vec<i64> {
        self.label_values().into_iter().filter(|&v| v > 0).collect()
    }
}
