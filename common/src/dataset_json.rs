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
    /// Label name to label value (an int, or a list of ints: a region), in the file's order
    /// (the order of the regions is the order of the network's outputs); background must be 0.
    pub labels: Labels,
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
    /// With regions: the label written where each region's sigmoid exceeds 0.5, one per region in
    /// `labels` order, later regions painted over earlier ones
    /// (`nnunetv2/utilities/label_handling/label_handling.py::LabelManager.convert_probabilities_to_segmentation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regions_class_order: Option<Vec<i64>>,
    /// Any other keys, kept so nnU-Net's files round-trip.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// A label value: an int, or a list of ints (a region, for region-based training; see
/// [`crate::labels::LabelManager`]).
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
    /// The label values it names (one for an int).
    pub fn values(&self) -> Vec<i64> {
        match self {
            LabelValue::One(v) => vec![*v],
            LabelValue::Region(r) => r.clone(),
        }
    }
}

/// `labels` of dataset.json: name -> value in the file's order (a JSON object; duplicate names
/// are refused). The order matters for regions: it is the order of the network's outputs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Labels(Vec<(String, LabelValue)>);

impl Labels {
    pub fn get(&self, name: &str) -> Option<&LabelValue> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
    /// Sets `name` (in place when present, else appended).
    pub fn insert(&mut self, name: impl Into<String>, v: LabelValue) {
        let name = name.into();
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(e) => e.1 = v,
            None => self.0.push((name, v)),
        }
    }
    pub fn iter(&self) -> impl Iterator<Item = (&String, &LabelValue)> {
        self.0.iter().map(|(n, v)| (n, v))
    }
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(n, _)| n)
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a> IntoIterator for &'a Labels {
    type Item = (&'a String, &'a LabelValue);
    type IntoIter =
        std::iter::Map<std::slice::Iter<'a, (String, LabelValue)>, fn(&'a (String, LabelValue)) -> (&'a String, &'a LabelValue)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(n, v)| (n, v))
    }
}

impl<S: Into<String>> FromIterator<(S, LabelValue)> for Labels {
    fn from_iter<I: IntoIterator<Item = (S, LabelValue)>>(it: I) -> Self {
        let mut l = Labels::default();
        for (n, v) in it {
            l.insert(n, v);
        }
        l
    }
}

impl Serialize for Labels {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (n, v) in &self.0 {
            m.serialize_entry(n, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Labels;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of label name -> int or list of ints")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> std::result::Result<Labels, A::Error> {
                let mut out = Vec::new();
                while let Some((n, v)) = a.next_entry::<String, LabelValue>()? {
                    if out.iter().any(|(m, _): &(String, LabelValue)| *m == n) {
                        return Err(serde::de::Error::custom(format!("label name {n:?} appears twice in labels")));
                    }
                    out.push((n, v));
                }
                Ok(Labels(out))
            }
        }
        d.deserialize_map(V)
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
    /// Every label value, sorted and unique, the members of regions included and `ignore`
    /// excluded (`LabelManager._get_all_labels`).
    pub fn label_values(&self) -> Vec<i64> {
        let mut v: Vec<i64> = self.labels.iter().filter(|(k, _)| k.as_str() != "ignore").flat_map(|(_, v)| v.values()).collect();
        v.sort();
        v.dedup();
        v
    }
    /// The ignore label, if declared.
    pub fn ignore_label(&self) -> Option<i64> {
        self.labels.get("ignore").and_then(|v| v.as_int())
    }
    /// Number of labels, background included, ignore excluded. The network's number of outputs is
    /// [`crate::labels::LabelManager::num_segmentation_heads`] (the number of regions with regions).
    pub fn num_classes(&self) -> usize {
        self.label_values().len()
    }
    /// Foreground labels (value > 0).
    pub fn foreground_labels(&self) -> Vec<i64> {
        self.label_values().into_iter().filter(|&v| v > 0).collect()
    }
}
