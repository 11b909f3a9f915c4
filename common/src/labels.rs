//! Labels or regions: what the network predicts and what is evaluated
//! (`nnunetv2/utilities/label_handling/label_handling.py::LabelManager`).
//!
//! A dataset has regions when an entry of `labels` is a list of more than one label
//! (`{"background": 0, "whole": [1, 2], "posterior": [2]}`). Then every non-background entry is a
//! region, in `labels` order: the network has one sigmoid output per region, trained with BCE + Dice
//! against `isin(seg, region)` (`ConvertSegmentationToRegionsTransform`), and a prediction becomes a
//! label map by painting `regions_class_order[i]` wherever region `i`'s probability exceeds 0.5, in
//! region order, so later regions win (`convert_probabilities_to_segmentation`). Evaluation and
//! postprocessing then work per region (`evaluate_predictions.py::region_or_label_to_mask`), keyed
//! in `summary.json` as Python prints the tuple: `"(1, 2)"`, `"(2,)"`.
use crate::dataset_json::{DatasetJson, LabelValue};
use crate::{Error, Result};

/// A label (`1`) or a region (`(1, 2)`): what one Dice in `summary.json` is computed for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LabelOrRegion {
    Label(i64),
    Region(Vec<i64>),
}

impl LabelOrRegion {
    /// The labels of `v`, one entry each.
    pub fn labels(v: &[i64]) -> Vec<LabelOrRegion> {
        v.iter().map(|&l| LabelOrRegion::Label(l)).collect()
    }
    /// `str(label_or_region)` (`evaluate_predictions.py::label_or_region_to_key`): `1`, `(1, 2)`, `(2,)`.
    pub fn key(&self) -> String {
        match self {
            LabelOrRegion::Label(l) => l.to_string(),
            LabelOrRegion::Region(r) if r.len() == 1 => format!("({},)", r[0]),
            LabelOrRegion::Region(r) => format!("({})", r.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(", ")),
        }
    }
    /// `key_to_label_or_region`: the inverse of [`Self::key`].
    pub fn parse(key: &str) -> Option<LabelOrRegion> {
        if let Ok(l) = key.trim().parse::<i64>() {
            return Some(LabelOrRegion::Label(l));
        }
        let inner = key.trim().strip_prefix('(')?.strip_suffix(')')?;
        let v: Option<Vec<i64>> = inner.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.parse().ok()).collect();
        v.filter(|v| !v.is_empty()).map(LabelOrRegion::Region)
    }
    /// The label values whose union it is.
    pub fn members(&self) -> &[i64] {
        match self {
            LabelOrRegion::Label(l) => std::slice::from_ref(l),
            LabelOrRegion::Region(r) => r,
        }
    }
    /// Whether a voxel of label `v` belongs to it (`region_or_label_to_mask`).
    pub fn contains(&self, v: i64) -> bool {
        self.members().contains(&v)
    }
    /// Background: label 0, or a region of only 0 (`LabelManager.filter_background`).
    pub fn is_background(&self) -> bool {
        self.members().iter().all(|&l| l == 0)
    }
}

impl std::fmt::Display for LabelOrRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key())
    }
}

/// The labels, regions and ignore label of a dataset, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelManager {
    /// Foreground regions in `labels` order; `None` without regions.
    regions: Option<Vec<LabelOrRegion>>,
    /// One label per region (empty without regions).
    regions_class_order: Vec<i64>,
    /// Every label, sorted, region members included, ignore excluded.
    all_labels: Vec<i64>,
    ignore_label: Option<i64>,
}

impl LabelManager {
    /// Reads and checks `labels` / `regions_class_order` of a dataset.json. Every problem is named
    /// with what to write instead.
    pub fn new(dj: &DatasetJson) -> Result<LabelManager> {
        let bad = |m: String| Error::Invalid(format!("dataset.json: {m}"));
        // `LabelManager.__init__`: regions iff some entry is a list of more than one label.
        let has_regions = dj.labels.iter().any(|(_, v)| matches!(v, LabelValue::Region(r) if r.len() > 1));
        let ignore_label = match dj.labels.get("ignore") {
            None => None,
            Some(LabelValue::One(v)) => Some(*v),
            Some(LabelValue::Region(r)) => return Err(bad(format!("the ignore label must be one integer, not a list ({r:?})"))),
        };
        for (name, v) in &dj.labels {
            if let LabelValue::Region(r) = v {
                if r.is_empty() {
                    return Err(bad(format!("label {name:?} is an empty list; a region names at least one label, e.g. [1, 2]")));
                }
            }
            if let Some(&x) = v.values().iter().find(|&&x| x < 0) {
                return Err(bad(format!("label {name:?} names {x}; label values are integers >= 0")));
            }
            if let Some(ig) = ignore_label.filter(|ig| name != "ignore" && v.values().contains(ig)) {
                return Err(bad(format!(
                    "label {name:?} contains the ignore label {ig}; the ignore label has a value of its own (the highest), and regions are made of annotated labels"
                )));
            }
        }
        let all_labels = dj.label_values();
        if !has_regions {
            return Ok(LabelManager { regions: None, regions_class_order: Vec::new(), all_labels, ignore_label });
        }
        match dj.labels.get("background") {
            Some(LabelValue::One(0)) => {}
            other => {
                return Err(bad(format!(
                    "with regions, labels needs \"background\": 0 (found {other:?}); the regions are the other entries"
                )))
            }
        }
        let regions: Vec<(String, LabelOrRegion)> = dj
            .labels
            .iter()
            .filter(|(k, _)| k.as_str() != "ignore")
            .map(|(k, v)| {
                let r = match v {
                    LabelValue::One(l) => LabelOrRegion::Label(*l),
                    LabelValue::Region(r) => LabelOrRegion::Region(r.clone()),
                };
                (k.clone(), r)
            })
            .filter(|(_, r)| !r.is_background())
            .collect();
        let names = regions.iter().map(|(n, r)| format!("{n} {r}")).collect::<Vec<_>>().join(", ");
        let order = dj.regions_class_order.clone().ok_or_else(|| {
            bad(format!(
                "labels declare regions ({names}) but regions_class_order is missing; add \"regions_class_order\": [...] with one label \
                 per region in labels order: the label written where that region is predicted, later regions over earlier ones \
                 (for nested regions such as whole=[1, 2], posterior=[2]: [1, 2])"
            ))
        })?;
        if order.len() != regions.len() {
            return Err(bad(format!(
                "regions_class_order {order:?} has {} entries but labels declare {} foreground regions ({names}); give one label per region",
                order.len(),
                regions.len()
            )));
        }
        if let Some(c) = order.iter().find(|c| !all_labels.contains(c)) {
            return Err(bad(format!("regions_class_order names label {c}, which no entry of labels contains (labels: {all_labels:?})")));
        }
        Ok(LabelManager {
            regions: Some(regions.into_iter().map(|(_, r)| r).collect()),
            regions_class_order: order,
            all_labels,
            ignore_label,
        })
    }

    pub fn has_regions(&self) -> bool {
        self.regions.is_some()
    }
    pub fn ignore_label(&self) -> Option<i64> {
        self.ignore_label
    }
    /// Every label, sorted, region members included, ignore excluded.
    pub fn all_labels(&self) -> &[i64] {
        &self.all_labels
    }
    pub fn foreground_labels(&self) -> Vec<i64> {
        self.all_labels.iter().copied().filter(|&l| l != 0).collect()
    }
    /// The foreground regions in `labels` order (empty without regions).
    pub fn foreground_regions(&self) -> &[LabelOrRegion] {
        self.regions.as_deref().unwrap_or(&[])
    }
    pub fn regions_class_order(&self) -> &[i64] {
        &self.regions_class_order
    }
    /// What is evaluated and postprocessed: the foreground regions, or the foreground labels.
    pub fn evaluation_targets(&self) -> Vec<LabelOrRegion> {
        match &self.regions {
            Some(r) => r.clone(),
            None => LabelOrRegion::labels(&self.foreground_labels()),
        }
    }
    /// The network's outputs: one per region, or one per label (background included).
    pub fn num_segmentation_heads(&self) -> usize {
        match &self.regions {
            Some(r) => r.len(),
            None => self.all_labels.len(),
        }
    }

    /// `ConvertSegmentationToRegionsTransform` on one label map: (R, N) bytes, 1 where the pixel's
    /// label belongs to region r.
    pub fn region_targets(&self, seg: &[i16]) -> Vec<u8> {
        let regions = self.foreground_regions();
        let mut out = vec![0u8; regions.len() * seg.len()];
        for (r, reg) in regions.iter().enumerate() {
            for (o, &s) in out[r * seg.len()..(r + 1) * seg.len()].iter_mut().zip(seg) {
                *o = reg.contains(s as i64) as u8;
            }
        }
        out
    }

    /// `convert_probabilities_to_segmentation` for channel-first probabilities (K, N): with regions,
    /// 0 then `regions_class_order[i]` where `p[i] > 0.5`, in order; else the argmax (first maximum).
    pub fn probabilities_to_segmentation(&self, probs: &[f32], n: usize) -> Vec<u16> {
        let k = self.num_segmentation_heads();
        assert_eq!(probs.len(), k * n, "probabilities must be (heads, voxels)");
        match &self.regions {
            Some(_) => regions_to_labels(&self.regions_class_order, probs),
            None => argmax_channels(k, probs),
        }
    }
}

/// Class index of the maximum over the first axis of (K, ...) values; the first maximum wins, as
/// `np.argmax` / `torch.argmax` on CPU do.
pub fn argmax_channels(n_classes: usize, values: &[f32]) -> Vec<u16> {
    assert!(n_classes > 0 && values.len().is_multiple_of(n_classes), "values must be (K, ...) with K > 0");
    let n = values.len() / n_classes;
    let mut best = vec![0u16; n];
    let mut best_v: Vec<f32> = values[..n].to_vec();
    for k in 1..n_classes {
        let plane = &values[k * n..(k + 1) * n];
        for i in 0..n {
            if plane[i] > best_v[i] {
                best_v[i] = plane[i];
                best[i] = k as u16;
            }
        }
    }
    best
}

/// Region probabilities (R, ...) to labels: 0, then `order[i]` where channel i exceeds 0.5, in
/// region order (later regions win).
pub fn regions_to_labels(order: &[i64], values: &[f32]) -> Vec<u16> {
    assert!(!order.is_empty() && values.len().is_multiple_of(order.len()), "values must be (R, ...) with one channel per region");
    let n = values.len() / order.len();
    let mut seg = vec![0u16; n];
    for (i, &c) in order.iter().enumerate() {
        for (s, &p) in seg.iter_mut().zip(&values[i * n..(i + 1) * n]) {
            if p > 0.5 {
                *s = c as u16;
            }
        }
    }
    seg
}

/// `regions_class_order` derived from nested regions: region `i` writes the one label it holds
/// that no later region holds (whole=[1, 2], posterior=[2] gives [1, 2]; BraTS-like
/// [1, 2, 3], [2, 3], [3] gives [1, 2, 3]). Fails when a region has zero or several such labels.
pub fn derive_regions_class_order(regions: &[(String, Vec<i64>)]) -> std::result::Result<Vec<i64>, String> {
    let mut order = Vec::new();
    for (i, (name, r)) in regions.iter().enumerate() {
        let mut own: Vec<i64> = r.iter().copied().filter(|l| !regions[i + 1..].iter().any(|(_, later)| later.contains(l))).collect();
        own.sort();
        own.dedup();
        if own.len() != 1 {
            return Err(format!(
                "cannot derive regions_class_order: region {name} {r:?} holds {} label(s) {own:?} that no later region holds (one is needed); \
                 give it with --regions-class-order (one label per region)",
                own.len()
            ));
        }
        order.push(own[0]);
    }
    Ok(order)
}

#[cfg(test)]
mod tests;
