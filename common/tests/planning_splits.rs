//! Splits and numpy RandomState draws against values produced by numpy/sklearn/nnunetv2
//! (`tests/fixtures/planning/make_split_fixtures.py`).
use nnunet_common::splits::{fallback_split, generate_splits, load_or_create, NumpyRandomState, Split};
use serde_json::Value;

fn fixture() -> Value {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/planning/splits_reference.json");
    serde_json::from_slice(&std::fs::read(p).expect("fixture")).unwrap()
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

#[test]
fn kfold_equals_sklearn() {
    let f = fixture();
    for case in f["kfold"].as_array().unwrap() {
        let ids = strs(&case["ids"]);
        let want: Vec<Split> = serde_json::from_value(case["splits"].clone()).unwrap();
        // order of the input must not matter (nnU-Net sorts)
        let mut rev = ids.clone();
        rev.reverse();
        assert_eq!(generate_splits(&rev, 5).unwrap(), want, "n = {}", ids.len());
    }
}

#[test]
fn fallback_equals_nnunet() {
    let f = fixture();
    for case in f["fallback"].as_array().unwrap() {
        let n = case["n"].as_u64().unwrap() as usize;
        let fold = case["fold"].as_u64().unwrap() as usize;
        let ids: Vec<String> = (0..n).map(|i| format!("case_{i:03}")).collect();
        let s = fallback_split(&ids, fold);
        assert_eq!(s.train, strs(&case["train"]), "n {n} fold {fold}");
        assert_eq!(s.val, strs(&case["val"]), "n {n} fold {fold}");
    }
}

#[test]
fn random_state_draws_equal_numpy() {
    let f = fixture();
    for s in f["streams"].as_array().unwrap() {
        let seed = s["seed"].as_u64().unwrap() as u32;
        let pop = s["pop"].as_u64().unwrap() as usize;
        let size = s["size"].as_u64().unwrap() as usize;
        let want: Vec<usize> = s["values"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let mut r = NumpyRandomState::new(seed);
        let got = match s["kind"].as_str().unwrap() {
            "choice_replace" => r.randint_fill(pop, size),
            _ => r.choice_without_replacement(pop, size),
        };
        assert_eq!(got, want, "{s}");
    }
}

#[test]
fn user_splits_are_respected_and_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("raw");
    let pre = tmp.path().join("pre");
    std::fs::create_dir_all(&raw).unwrap();
    let ids: Vec<String> = (0..6).map(|i| format!("c{i}")).collect();
    let user = vec![Split { train: ids[..4].to_vec(), val: ids[4..].to_vec() }];
    std::fs::write(raw.join("splits_final.json"), serde_json::to_vec(&user).unwrap()).unwrap();
    assert_eq!(load_or_create(&pre, &raw, &ids).unwrap(), user);
    assert!(pre.join("splits_final.json").is_file());
    // a user file naming unknown cases is rejected with the file named
    let raw2 = tmp.path().join("raw2");
    std::fs::create_dir_all(&raw2).unwrap();
    let bad = vec![Split { train: vec!["nope".into()], val: vec![] }];
    std::fs::write(raw2.join("splits_final.json"), serde_json::to_vec(&bad).unwrap()).unwrap();
    let err = load_or_create(&tmp.path().join("pre2"), &raw2, &ids).unwrap_err().to_string();
    assert!(err.contains("nope") && err.contains("splits_final.json"), "{err}");
    // default split when nothing is provided
    let got = load_or_create(&tmp.path().join("pre3"), &tmp.path().join("none"), &ids).unwrap();
    assert_eq!(got, generate_splits(&ids, 5).unwrap());
}
