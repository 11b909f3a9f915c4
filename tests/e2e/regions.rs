//! Region-based training through `nnunet run`: a hippocampus dataset whose labels become the regions
//! whole = (1, 2) and posterior = (2,) trains five folds on two workers, validates, cross-validates
//! and predicts per region; bad region declarations are refused with their reason.
use super::{json, keys, SERIAL};
use nnunet_tests::{bin, shared_dataset};
use std::path::Path;
use std::process::Command;

/// 20 slices of hippocampus case 001 (both labels present) as images/ + masks/, 3 more as test/.
fn hippocampus_slices(src: &Path, dst: &Path) {
    for d in ["images", "masks", "test"] {
        std::fs::create_dir_all(dst.join(d)).unwrap();
    }
    for z in 8..31 {
        let name = format!("hippocampus_001_z{z:03}.png");
        if z < 28 {
            std::fs::copy(src.join("images").join(&name), dst.join("images").join(&name)).unwrap();
            std::fs::copy(src.join("masks").join(&name), dst.join("masks").join(&name)).unwrap();
        } else {
            std::fs::copy(src.join("images").join(&name), dst.join("test").join(&name)).unwrap();
        }
    }
}

fn convert(work: &Path, regions: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(bin("nnunet"));
    cmd.arg("convert").arg("--images").arg(work.join("data/images")).arg("--masks").arg(work.join("data/masks"));
    cmd.arg("--test-images").arg(work.join("data/test")).arg("--out").arg(work.join("raw"));
    cmd.args(["--id", "2", "--name", "Hippo", "--overwrite", "--quiet"]);
    for r in regions {
        cmd.args(["--regions", r]);
    }
    cmd.output().unwrap()
}

#[test]
fn nnunet_run_trains_five_folds_on_regions() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(src) = shared_dataset("msd_hippocampus") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    hippocampus_slices(&src, &work.join("data"));
    // A region naming a label the masks do not have is refused by convert.
    let out = convert(work, &["whole=1,5"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("label 5 is not a foreground label of this dataset"), "{err}");
    let out = convert(work, &["whole=1,2", "posterior=2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ds = work.join("raw/Dataset002_Hippo");
    // The regions keep their order (the order of the network's outputs) in the file.
    let text = std::fs::read_to_string(ds.join("dataset.json")).unwrap();
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    assert!(compact.contains(r#""labels":{"background":0,"whole":[1,2],"posterior":[2]}"#), "{text}");
    assert!(compact.contains(r#""regions_class_order":[1,2]"#), "{text}");
    // A hand-edited dataset.json without regions_class_order is refused by `nnunet run` before anything trains.
    std::fs::write(ds.join("dataset.json"), text.replace("\"regions_class_order\"", "\"regions_order_typo\"")).unwrap();
    let out = Command::new(bin("nnunet"))
        .arg("run")
        .arg(&ds)
        .args(["--device", "cpu"])
        .arg("--state-dir")
        .arg(work.join("bad"))
        .output()
        .unwrap();
    let err = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success() && err.contains("regions_class_order is missing"), "{err}");
    std::fs::write(ds.join("dataset.json"), &text).unwrap();

    let md = super::run_five_folds_on_two_workers(work, &ds, "Dataset002_Hippo");
    for f in 0..5 {
        let sidecar = json(&md.join(format!("fold_{f}/checkpoint_final.json")));
        assert_eq!(sidecar["init_args"]["num_classes"], 2, "fold {f}: one output per region");
        let s = json(&md.join(format!("fold_{f}/validation/summary.json")));
        assert_eq!(keys(&s["mean"]), vec!["(1, 2)", "(2,)"], "fold {f} is scored per region");
    }
    let cv = md.join("crossval_results_folds_0_1_2_3_4");
    assert_eq!(keys(&json(&cv.join("summary.json"))["mean"]), vec!["(1, 2)", "(2,)"]);
    let cvs = json(&cv.join("cv_summary.json"));
    assert_eq!(keys(&cvs["cv_dice_per_label"]), vec!["(1, 2)", "(2,)"]);
    assert_eq!(cvs["label_names"]["(1, 2)"], "whole");
    assert!(cv.join("postprocessing.json").is_file());
    // Test predictions: per-region sigmoids, painted with regions_class_order, so only labels 0, 1, 2 appear.
    let sidecar = json(&md.join("test_predictions/fold_0/hippocampus_001_z028.json"));
    assert_eq!(sidecar["regions_class_order"], serde_json::json!([1, 2]));
    let ens = md.join("ensemble_test");
    let masks: Vec<_> =
        std::fs::read_dir(&ens).unwrap().flatten().map(|e| e.path()).filter(|p| p.to_string_lossy().ends_with(".nii.gz")).collect();
    assert_eq!(masks.len(), 3, "{masks:?}");
    for m in masks {
        let img = nnunet_common::imageio::read_seg(&m).unwrap();
        assert!(img.data.iter().all(|&v| v == 0.0 || v == 1.0 || v == 2.0), "{}: values outside the labels", m.display());
    }
}
