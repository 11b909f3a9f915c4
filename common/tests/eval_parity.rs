//! Parity of `nnunet evaluate` with the reference `nnUNetv2_evaluate_folder` on a fixed fixture
//! pair of folders (tests/fixtures/eval, see its README.md): same keys, same structure, numbers
//! within 1e-9, NaN where the reference has NaN.
use nnunet_common::evaluate::{
    self,
    pyjson::{self, Value},
    LabelOrRegion,
};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/eval")
}

/// Compares two JSON trees: identical keys and list lengths, equal strings (file names compared by
/// base name since the folders differ), numbers within 1e-9, NaN matching NaN, int vs float kept.
fn assert_same(ours: &Value, reference: &Value, at: &str) {
    match (ours, reference) {
        (Value::Dict(a), Value::Dict(b)) => {
            let ka: Vec<&String> = a.keys().collect();
            let kb: Vec<&String> = b.keys().collect();
            assert_eq!(ka, kb, "keys differ at {at}");
            for (k, v) in a {
                assert_same(v, &b[k], &format!("{at}.{k}"));
            }
        }
        (Value::List(a), Value::List(b)) => {
            assert_eq!(a.len(), b.len(), "list length differs at {at}");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_same(x, y, &format!("{at}[{i}]"));
            }
        }
        (Value::Str(a), Value::Str(b)) => {
            let base = |s: &str| Path::new(s).file_name().unwrap().to_string_lossy().into_owned();
            assert_eq!(base(a), base(b), "file differs at {at}");
        }
        (Value::Int(a), Value::Int(b)) => assert_eq!(a, b, "count differs at {at}"),
        (Value::Float(a), Value::Float(b)) => {
            if b.is_nan() {
                assert!(a.is_nan(), "{at}: reference NaN, ours {a}");
            } else {
                assert!((a - b).abs() <= 1e-9, "{at}: ours {a}, reference {b}");
            }
        }
        (a, b) => panic!("type differs at {at}: ours {a:?}, reference {b:?}"),
    }
}

fn check(gt: &str, pred: &str, ending: &str, reference: &str) {
    let dir = fixtures();
    let out = tempfile::tempdir().unwrap();
    let summary_file = out.path().join("summary.json");
    let summary = evaluate::compute_metrics_on_folder(
        &dir.join(gt),
        &dir.join(pred),
        Some(&summary_file),
        &LabelOrRegion::labels(&[1, 2]),
        ending,
        None,
    )
    .unwrap();
    let ours = pyjson::load(&summary_file).unwrap();
    let theirs = pyjson::load(&dir.join(reference)).unwrap();
    assert_same(&ours, &theirs, "summary");
    // Byte-identical to the reference's file once the folder prefixes of the file names are dropped:
    // same key order, indentation, float formatting and NaN tokens.
    fn basenames(v: &Value) -> Value {
        match v {
            Value::Dict(m) => Value::Dict(m.iter().map(|(k, x)| (k.clone(), basenames(x))).collect()),
            Value::List(l) => Value::List(l.iter().map(basenames).collect()),
            Value::Str(s) => Value::Str(Path::new(s).file_name().unwrap().to_string_lossy().into_owned()),
            other => other.clone(),
        }
    }
    let ours_text = std::fs::read_to_string(&summary_file).unwrap();
    assert_eq!(pyjson::to_string(&pyjson::parse(&ours_text).unwrap()), ours_text, "our file is in json.dump layout");
    assert_eq!(pyjson::to_string(&basenames(&ours)), pyjson::to_string(&basenames(&theirs)));
    let their_text = std::fs::read_to_string(dir.join(reference)).unwrap();
    assert_eq!(pyjson::to_string(&theirs), their_text, "the reference file re-serializes to itself");
    // The fixture has a label absent from both masks (NaN) and one predicted where the reference is empty.
    assert!(summary.metric_per_case.iter().any(|c| c.metrics[&LabelOrRegion::Label(2)].dice.is_nan()));
    assert!(std::fs::read_to_string(&summary_file).unwrap().contains("\"Dice\": NaN"));
    // Loading our own file gives back the same numbers.
    let back = evaluate::Summary::load(&summary_file).unwrap();
    assert_eq!(back.metric_per_case.len(), summary.metric_per_case.len());
    assert_eq!(back.mean[&LabelOrRegion::Label(1)].tp, summary.mean[&LabelOrRegion::Label(1)].tp);
}

#[test]
fn nifti_summary_matches_nnunetv2_evaluate_folder() {
    check("gt", "pred", ".nii.gz", "summary_ref_nifti.json");
}

#[test]
fn png_summary_matches_nnunetv2_evaluate_folder() {
    check("gt_png", "pred_png", ".png", "summary_ref_png.json");
}

#[test]
fn missing_reference_is_reported_by_name() {
    let dir = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(dir.join("pred_png/case_a.png"), tmp.path().join("not_in_gt.png")).unwrap();
    let err = evaluate::compute_metrics_on_folder(&dir.join("gt_png"), tmp.path(), None, &LabelOrRegion::labels(&[1, 2]), ".png", None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not_in_gt.png"), "{err}");
}
