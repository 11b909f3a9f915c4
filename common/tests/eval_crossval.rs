//! The cross-validation summary: folds' validation predictions are merged, evaluated, the
//! postprocessing is chosen on them, and the numbers a user reports are written. Uses the
//! postprocessing fixture (tests/fixtures/eval/pp_*), split over two folds.
use nnunet_common::crossval::{self, CvSummary};
use nnunet_common::dataset_json::DatasetJson;
use nnunet_common::evaluate::{pyjson, Summary};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/eval")
}

#[test]
fn crossval_summary_merges_folds_and_chooses_postprocessing() {
    let fx = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("nnUNetTrainer__nnUNetPlans__2d");
    for (fold, cases) in [(0, vec!["p1", "p2"]), (1, vec!["p3"])] {
        let val = model.join(format!("fold_{fold}/validation"));
        std::fs::create_dir_all(&val).unwrap();
        for c in cases {
            std::fs::copy(fx.join(format!("pp_pred/{c}.nii.gz")), val.join(format!("{c}.nii.gz"))).unwrap();
        }
    }
    std::fs::copy(fx.join("dataset.json"), model.join("dataset.json")).unwrap();
    let dj = DatasetJson::load(&fx.join("dataset.json")).unwrap();
    let gt = fx.join("pp_gt");
    let v = crossval::crossval_summary(&model, &[0, 1], &gt, &dj).unwrap();

    let merged = model.join("crossval_results_folds_0_1");
    for c in ["p1", "p2", "p3"] {
        assert!(merged.join(format!("{c}.nii.gz")).is_file());
    }
    // The CV numbers are those of the reference's evaluation of the same predictions.
    let reference = pyjson::load(&fx.join("pp_postprocessing_ref.json")).unwrap();
    let ref_before = reference.get("input_folder").unwrap().get("foreground_mean").unwrap().get("Dice").unwrap().as_f64().unwrap();
    let ref_after = reference.get("postprocessed").unwrap().get("foreground_mean").unwrap().get("Dice").unwrap().as_f64().unwrap();
    assert!((v.cv_foreground_dice.0 - ref_before).abs() < 1e-12);
    assert!((v.cv_foreground_dice_postprocessed.0 - ref_after).abs() < 1e-12);
    assert_eq!(v.postprocessing.len(), 2);
    // Per-fold Dice: fold 1 alone (p3, predicted perfectly) is 1.0.
    assert_eq!(v.fold_foreground_dice[&1].0, 1.0);
    let s = Summary::load(&merged.join("summary.json")).unwrap();
    assert_eq!(s.metric_per_case.len(), 3);
    assert!(merged.join("postprocessing.json").is_file() && merged.join("postprocessed/p2.nii.gz").is_file());
    assert!(model.join("postprocessing.json").is_file(), "predict reads the model folder's postprocessing.json");
    // cv_summary.json holds what was returned; the JSON keys are those a user's scripts read.
    assert_eq!(CvSummary::load(&merged.join("cv_summary.json")).unwrap(), v);
    let raw: serde_json::Value = serde_json::from_slice(&std::fs::read(merged.join("cv_summary.json")).unwrap()).unwrap();
    assert_eq!(raw["fold_foreground_dice"]["1"].as_f64(), Some(1.0));
    assert_eq!(raw["n_cases"].as_u64(), Some(3));

    // Two folds predicting the same case is an error (overlapping splits).
    std::fs::copy(fx.join("pp_pred/p3.nii.gz"), model.join("fold_0/validation/p3.nii.gz")).unwrap();
    let err = crossval::crossval_summary(&model, &[0, 1], &gt, &dj).unwrap_err().to_string();
    assert!(err.contains("p3.nii.gz"), "{err}");
    std::fs::remove_file(model.join("fold_0/validation/p3.nii.gz")).unwrap();
    // A fold without validation output is reported.
    let err = crossval::crossval_summary(&model, &[0, 1, 2], &gt, &dj).unwrap_err().to_string();
    assert!(err.contains("fold 2"), "{err}");
}
