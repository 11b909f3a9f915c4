//! Foreground locations for oversampling (`nnunetv2/preprocessing/preprocessors/
//! default_preprocessor.py::DefaultPreprocessor._sample_foreground_locations`).
use crate::np_random::NumpyRandomState;
use std::collections::{BTreeMap, BTreeSet};

/// What to collect foreground locations for: one label, or a union (a region, or the annotated
/// pixels `(-1, 0, 1, ...)` with an ignore label).
#[derive(Debug, Clone, PartialEq)]
pub enum LocationClass {
    Label(i64),
    Union(Vec<i64>),
}

impl LocationClass {
    /// The key nnU-Net's pickle would use, as Python prints it: `"1"`, `"(1, 2)"`, `"(2,)"` or `"(-1, 0, 1)"`.
    pub fn key(&self) -> String {
        match self {
            LocationClass::Label(l) => l.to_string(),
            LocationClass::Union(ls) => crate::labels::LabelOrRegion::Region(ls.clone()).key(),
        }
    }
    fn labels(&self) -> Vec<i64> {
        match self {
            LocationClass::Label(l) => vec![*l],
            LocationClass::Union(v) => v.clone(),
        }
    }
}

/// `_sample_foreground_locations`: per class, `k = max(min(10000, n), ceil(0.01 n))`
/// coordinates without replacement with one `RandomState(1234)` shared across classes; coordinates
/// (0, z, x, y) in C order within each label, labels of a union in sorted order.
pub fn sample_foreground_locations(seg: &[i16], shape_zxy: [usize; 3], classes: &[LocationClass]) -> BTreeMap<String, Vec<[i64; 4]>> {
    let mut rs = NumpyRandomState::new(1234);
    let mut per_label: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    let wanted: BTreeSet<i64> = classes.iter().flat_map(|c| c.labels()).collect();
    for (i, &l) in seg.iter().enumerate() {
        if wanted.contains(&(l as i64)) {
            per_label.entry(l as i64).or_default().push(i);
        }
    }
    let [_, x, y] = shape_zxy;
    let mut out = BTreeMap::new();
    for c in classes {
        // np.argsort(kind='stable') of the labels: ranges in ascending label order
        let mut labs = c.labels();
        labs.sort();
        labs.dedup();
        let ranges: Vec<&Vec<usize>> = labs.iter().filter_map(|l| per_label.get(l)).filter(|v| !v.is_empty()).collect();
        let total: usize = ranges.iter().map(|r| r.len()).sum();
        if total == 0 {
            out.insert(c.key(), Vec::new());
            continue;
        }
        let k = total.min(10000).max((total as f64 * 0.01).ceil() as usize);
        let picks = rs.choice_without_replacement(total, k);
        let locs = picks
            .into_iter()
            .map(|mut off| {
                let mut r = 0;
                while off >= ranges[r].len() {
                    off -= ranges[r].len();
                    r += 1;
                }
                let i = ranges[r][off];
                [0, (i / (x * y)) as i64, ((i / y) % x) as i64, (i % y) as i64]
            })
            .collect();
        out.insert(c.key(), locs);
    }
    out
}

impl From<&crate::labels::LabelOrRegion> for LocationClass {
    fn from(r: &crate::labels::LabelOrRegion) -> Self {
        match r {
            crate::labels::LabelOrRegion::Label(l) => LocationClass::Label(*l),
            crate::labels::LabelOrRegion::Region(v) => LocationClass::Union(v.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreground_locations_count_and_lie_on_label() {
        let mut seg = vec![0i16; 2 * 10 * 10];
        for i in (0..200).step_by(3) {
            seg[i] = 1;
        }
        let locs = sample_foreground_locations(&seg, [2, 10, 10], &[LocationClass::Label(1), LocationClass::Label(2)]);
        let l1 = &locs["1"];
        assert_eq!(l1.len(), 67);
        for p in l1 {
            assert_eq!(seg[(p[1] * 100 + p[2] * 10 + p[3]) as usize], 1);
        }
        assert!(locs["2"].is_empty());
    }
}
