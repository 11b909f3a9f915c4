//! `nnunet convert --regions name=1,2 ...`: region-based training's `labels` and
//! `regions_class_order` (`nnunetv2/utilities/label_handling/label_handling.py::LabelManager`; nnU-Net's
//! `documentation/region_based_training.md`). Regions name the converted labels (0..K as written into
//! dataset.json, which equal the mask values when the masks already hold 0..K). They replace the
//! per-label entries of `labels`, in the order given: that order is the order of the network's
//! outputs. `regions_class_order` is given with `--regions-class-order`, or derived from nested
//! regions ([`crate::labels::derive_regions_class_order`]).
use crate::dataset_json::{LabelValue, Labels};

/// The regions of a conversion, checked against the dataset's labels.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionPlan {
    pub regions: Vec<(String, Vec<i64>)>,
    pub regions_class_order: Vec<i64>,
}

/// Parses `name=1,2` (one region per flag value).
pub fn parse_region(spec: &str) -> Result<(String, Vec<i64>), String> {
    let (name, labels) =
        spec.split_once('=').ok_or_else(|| format!("--regions {spec:?}: expected NAME=LABEL[,LABEL...], e.g. whole=1,2 or posterior=2"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("--regions {spec:?}: the region needs a name before '='"));
    }
    let labels: Result<Vec<i64>, _> = labels.split([',', '+']).map(|s| s.trim().parse::<i64>()).collect();
    let labels =
        labels.map_err(|_| format!("--regions {spec:?}: the labels after '=' must be integers separated by ',' (e.g. whole=1,2)"))?;
    Ok((name.to_string(), labels))
}

/// Checks the regions against the converted labels `label_set` (0..K, named `label_names`) and
/// decides `regions_class_order`.
pub fn plan_regions(
    regions: &[(String, Vec<i64>)],
    class_order: Option<&[i64]>,
    label_set: &[i64],
    label_names: &[String],
) -> Result<RegionPlan, String> {
    let known = || label_set.iter().zip(label_names).map(|(l, n)| format!("{l} {n}")).collect::<Vec<_>>().join(", ");
    let mut seen = std::collections::BTreeSet::new();
    for (name, r) in regions {
        if name == "background" || name == "ignore" {
            return Err(format!("--regions {name}=...: \"{name}\" is reserved in dataset.json; name the region differently"));
        }
        if !seen.insert(name) {
            return Err(format!("--regions: the name {name:?} is given twice"));
        }
        if r.is_empty() {
            return Err(format!("--regions {name}=: a region names at least one label"));
        }
        if let Some(l) = r.iter().find(|l| !label_set.contains(l) || **l == 0) {
            return Err(format!(
                "--regions {name}={}: label {l} is not a foreground label of this dataset (labels: {}); a region is a union of foreground labels",
                join(r),
                known()
            ));
        }
    }
    if !regions.iter().any(|(_, r)| r.len() > 1) {
        return Err(
            "--regions: every region has a single label, which is plain label training; a region needs two or more labels (e.g. whole=1,2)"
                .into(),
        );
    }
    let order = match class_order {
        Some(o) => o.to_vec(),
        None => crate::labels::derive_regions_class_order(regions)?,
    };
    if order.len() != regions.len() {
        return Err(format!(
            "--regions-class-order {} has {} entries for {} regions; give one label per region, in the order of --regions",
            join(&order),
            order.len(),
            regions.len()
        ));
    }
    if let Some(l) = order.iter().find(|l| !label_set.contains(l)) {
        return Err(format!("--regions-class-order names label {l}, which is not a label of this dataset (labels: {})", known()));
    }
    Ok(RegionPlan { regions: regions.to_vec(), regions_class_order: order })
}

/// `labels` of a region dataset: background, then the regions in order, then the ignore label.
pub fn region_labels(plan: &RegionPlan, ignore: Option<i64>) -> Labels {
    std::iter::once(("background".to_string(), LabelValue::One(0)))
        .chain(plan.regions.iter().map(|(n, r)| (n.clone(), LabelValue::Region(r.clone()))))
        .chain(ignore.map(|l| ("ignore".to_string(), LabelValue::One(l))))
        .collect()
}

/// "whole [1, 2] -> 1" per region, for the conversion summary.
pub fn describe(plan: &RegionPlan) -> Vec<String> {
    plan.regions.iter().zip(&plan.regions_class_order).map(|((n, r), c)| format!("{n} {r:?} -> {c}")).collect()
}

fn join(v: &[i64]) -> String {
    v.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["background".into(), "anterior".into(), "posterior".into()]
    }

    #[test]
    fn nested_regions_derive_their_class_order() {
        let r = vec![parse_region("whole=1,2").unwrap(), parse_region("posterior=2").unwrap()];
        let plan = plan_regions(&r, None, &[0, 1, 2], &names()).unwrap();
        assert_eq!(plan.regions_class_order, vec![1, 2]);
        let labels = region_labels(&plan, None);
        let text = serde_json::to_string(&labels).unwrap();
        assert_eq!(text, r#"{"background":0,"whole":[1,2],"posterior":[2]}"#);
    }

    #[test]
    fn bad_regions_are_refused_with_a_reason() {
        let whole = parse_region("whole=1,2").unwrap();
        let err = |r: Vec<(String, Vec<i64>)>, o: Option<&[i64]>| plan_regions(&r, o, &[0, 1, 2], &names()).unwrap_err();
        assert!(err(vec![whole.clone(), ("x".into(), vec![5])], None).contains("label 5 is not a foreground label of this dataset"));
        assert!(err(vec![("a".into(), vec![1]), ("b".into(), vec![2])], None).contains("single label"));
        assert!(err(vec![whole.clone()], Some(&[1, 2])).contains("has 2 entries for 1 regions"));
        assert!(err(vec![whole.clone()], Some(&[7])).contains("names label 7"));
        // [2] then [1, 2]: the second region covers the first, nothing to derive for it
        assert!(err(vec![("p".into(), vec![2]), whole.clone()], None).contains("cannot derive regions_class_order"));
        assert!(err(vec![whole.clone(), whole], None).contains("given twice"));
        assert!(parse_region("whole").unwrap_err().contains("expected NAME=LABEL"));
        assert!(parse_region("whole=1,x").unwrap_err().contains("must be integers"));
    }
}
