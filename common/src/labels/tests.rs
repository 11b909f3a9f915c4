use super::*;

fn dj(labels: &str, order: Option<&str>) -> DatasetJson {
    let order = order.map(|o| format!(r#", "regions_class_order": {o}"#)).unwrap_or_default();
    serde_json::from_str(&format!(
        r#"{{"channel_names": {{"0": "MRI"}}, "labels": {labels}, "numTraining": 1, "file_ending": ".nii.gz"{order}}}"#
    ))
    .unwrap()
}

fn err(labels: &str, order: Option<&str>) -> String {
    LabelManager::new(&dj(labels, order)).unwrap_err().to_string()
}

#[test]
fn regions_keep_file_order_and_round_trip() {
    let d = dj(r#"{"background": 0, "whole": [1, 2], "posterior": [2]}"#, Some("[1, 2]"));
    let lm = LabelManager::new(&d).unwrap();
    assert!(lm.has_regions());
    assert_eq!(lm.foreground_regions(), &[LabelOrRegion::Region(vec![1, 2]), LabelOrRegion::Region(vec![2])]);
    assert_eq!(lm.num_segmentation_heads(), 2);
    assert_eq!(lm.all_labels(), &[0, 1, 2]);
    assert_eq!(lm.foreground_labels(), vec![1, 2]);
    // the order of labels survives a save (a BTreeMap would put "posterior" before "whole")
    let text = serde_json::to_string(&d).unwrap();
    assert!(text.contains(r#""labels":{"background":0,"whole":[1,2],"posterior":[2]}"#), "{text}");
    assert!(text.contains(r#""regions_class_order":[1,2]"#), "{text}");
    let keys: Vec<String> = lm.foreground_regions().iter().map(|r| r.key()).collect();
    assert_eq!(keys, vec!["(1, 2)", "(2,)"]);
    for k in ["(1, 2)", "(2,)", "3"] {
        assert_eq!(LabelOrRegion::parse(k).unwrap().key(), k);
    }
    // without regions: labels, softmax heads include the background
    let plain = LabelManager::new(&dj(r#"{"background": 0, "a": 1, "b": 2}"#, None)).unwrap();
    assert!(!plain.has_regions());
    assert_eq!(plain.num_segmentation_heads(), 3);
    assert_eq!(plain.evaluation_targets(), LabelOrRegion::labels(&[1, 2]));
}

#[test]
fn region_targets_are_isin_per_region() {
    let lm = LabelManager::new(&dj(r#"{"background": 0, "whole": [1, 2], "posterior": [2]}"#, Some("[1, 2]"))).unwrap();
    // seg [0, 1, 2, 2] -> whole [0, 1, 1, 1], posterior [0, 0, 1, 1]
    assert_eq!(lm.region_targets(&[0, 1, 2, 2]), vec![0, 1, 1, 1, 0, 0, 1, 1]);
}

#[test]
fn probabilities_become_labels_in_region_order() {
    let lm = LabelManager::new(&dj(r#"{"background": 0, "whole": [1, 2], "posterior": [2]}"#, Some("[1, 2]"))).unwrap();
    // 4 voxels: whole p = [0.2, 0.7, 0.9, 0.5], posterior p = [0.9, 0.1, 0.6, 0.51]
    // voxel 0: only posterior > 0.5 -> 2 (painted without whole); 1: whole -> 1; 2: both -> 2;
    // 3: whole exactly 0.5 is not > 0.5, posterior 0.51 -> 2
    let p = [0.2, 0.7, 0.9, 0.5, 0.9, 0.1, 0.6, 0.51];
    assert_eq!(lm.probabilities_to_segmentation(&p, 4), vec![2, 1, 2, 2]);
    let p = [0.2, 0.7, 0.9, 0.5, 0.1, 0.1, 0.6, 0.4];
    assert_eq!(lm.probabilities_to_segmentation(&p, 4), vec![0, 1, 2, 0]);
}

#[test]
fn bad_region_declarations_name_the_fix() {
    let e = err(r#"{"background": 0, "whole": [1, 2], "posterior": [2]}"#, None);
    assert!(e.contains("regions_class_order is missing"), "{e}");
    let e = err(r#"{"background": 0, "whole": [1, 2], "posterior": [2]}"#, Some("[1]"));
    assert!(e.contains("has 1 entries but labels declare 2 foreground regions"), "{e}");
    let e = err(r#"{"background": 0, "whole": [1, 2], "posterior": [2]}"#, Some("[1, 5]"));
    assert!(e.contains("regions_class_order names label 5"), "{e}");
    let e = err(r#"{"background": 0, "whole": [1, 2], "none": []}"#, Some("[1, 2]"));
    assert!(e.contains("empty list"), "{e}");
    let e = err(r#"{"background": 0, "whole": [1, -2]}"#, Some("[1]"));
    assert!(e.contains("integers >= 0"), "{e}");
    let e = err(r#"{"background": 0, "whole": [1, 2, 3], "ignore": 3}"#, Some("[1]"));
    assert!(e.contains("contains the ignore label"), "{e}");
    let e = err(r#"{"bg": 0, "whole": [1, 2]}"#, Some("[1]"));
    assert!(e.contains("\"background\": 0"), "{e}");
    let text = r#"{"channel_names": {"0": "x"}, "labels": {"a": 1, "a": 2}, "numTraining": 1, "file_ending": ".png"}"#;
    let e = serde_json::from_str::<DatasetJson>(text).unwrap_err().to_string();
    assert!(e.contains("appears twice"), "{e}");
}

#[test]
fn class_order_derivation() {
    let r = |v: &[&[i64]]| v.iter().enumerate().map(|(i, x)| (format!("r{i}"), x.to_vec())).collect::<Vec<_>>();
    assert_eq!(derive_regions_class_order(&r(&[&[1, 2], &[2]])).unwrap(), vec![1, 2]);
    assert_eq!(derive_regions_class_order(&r(&[&[1, 2, 3], &[2, 3], &[3]])).unwrap(), vec![1, 2, 3]);
    assert!(derive_regions_class_order(&r(&[&[1, 2], &[3]])).unwrap_err().contains("holds 2 label(s)"));
}
