//! Dataset-level planning and preprocessing: plan + preprocess a small synthetic NIfTI dataset,
//! resume after an interruption (a case without its properties file, a stale temporary file),
//! shard by case, refuse a dataset that fails verification; and, when the shared data is present,
//! the fingerprint of the 260 MSD hippocampus volumes against the reference nnU-Net's.
use nnunet_common::case::CaseFiles;
use nnunet_common::fingerprint::{self, Fingerprint};
use nnunet_common::imageio::{write_nifti_f32, write_nifti_seg, Geometry};
use nnunet_common::paths::DatasetDirs;
use nnunet_common::planners::Planner;
use nnunet_common::plans::Plans;
use nnunet_common::preprocess::{plan_dataset, preprocess_dataset};
use std::path::{Path, PathBuf};

/// 7 pseudo-3D NIfTI cases (1, 20, 24) with a zero border and a square of label 1.
fn synthetic_dataset(root: &Path) -> DatasetDirs {
    let dirs = DatasetDirs::new("Dataset990_Synth", &root.join("raw"), &root.join("pre"), &root.join("res"));
    std::fs::create_dir_all(dirs.raw.join("imagesTr")).unwrap();
    std::fs::create_dir_all(dirs.raw.join("labelsTr")).unwrap();
    let geom = Geometry { spacing: [999.0, 1.0, 1.0], ..Default::default() };
    for k in 0..7usize {
        let (h, w) = (20, 24);
        let mut img = vec![0f32; h * w];
        let mut seg = vec![0u16; h * w];
        for r in 2..h - 2 {
            for c in 1..w - 1 {
                img[r * w + c] = 10.0 + ((r * 7 + c * 3 + k) % 11) as f32;
                if (5 + k % 3..12).contains(&r) && (6..14 + k).contains(&c) {
                    seg[r * w + c] = 1;
                    img[r * w + c] += 20.0;
                }
            }
        }
        write_nifti_f32(&dirs.raw.join(format!("imagesTr/case{k}_0000.nii.gz")), [1, h, w], &img, &geom).unwrap();
        write_nifti_seg(&dirs.raw.join(format!("labelsTr/case{k}.nii.gz")), [1, h, w], &seg, &geom).unwrap();
    }
    let dj = serde_json::json!({"channel_names": {"0": "MRI"}, "labels": {"background": 0, "fg": 1}, "numTraining": 7, "file_ending": ".nii.gz"});
    std::fs::write(dirs.raw.join("dataset.json"), serde_json::to_vec_pretty(&dj).unwrap()).unwrap();
    dirs
}

#[test]
fn plan_preprocess_resume_and_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = synthetic_dataset(tmp.path());
    let plans = plan_dataset(&dirs, Planner::Default, None, 2, false).unwrap();
    for f in [dirs.plans_file(), dirs.fingerprint_file(), dirs.splits_file(), dirs.preprocessed.join("dataset.json")] {
        assert!(f.is_file(), "{} missing", f.display());
    }
    assert_eq!(Plans::load(&dirs.plans_file()).unwrap(), plans);
    let cfg = plans.config_2d().unwrap();
    assert_eq!(cfg.median_image_size_in_voxels, vec![16.0, 22.0]); // cropped to the nonzero box
    let fp = Fingerprint::load(&dirs.fingerprint_file()).unwrap();
    assert!(fp.median_relative_size_after_cropping < 0.75);
    assert_eq!(cfg.use_mask_for_norm, vec![true]);

    // a shard first: only those cases appear
    let shard = vec!["case1".to_string(), "case4".to_string()];
    let r = preprocess_dataset(&dirs, 2, Some(&shard), false).unwrap();
    assert_eq!((r.n_cases, r.n_processed, r.n_skipped), (2, 2, 0));
    assert!(!CaseFiles::new(&dirs.data_dir(), "case0").is_complete());
    // then everything: the shard's cases are skipped
    let r = preprocess_dataset(&dirs, 2, None, false).unwrap();
    assert_eq!((r.n_cases, r.n_processed, r.n_skipped), (7, 5, 2));
    let props = CaseFiles::new(&dirs.data_dir(), "case3").load_props().unwrap();
    let sha = nnunet_common::hash::sha256_file(&dirs.data_dir().join("case3.npy")).unwrap();
    assert_eq!(props.data_sha256, sha);
    assert!(!props.class_locations["1"].is_empty());
    assert!(dirs.gt_dir().join("case3.nii.gz").is_file());

    // simulate an interruption: case5 lost its properties file (the last one written) and a
    // temporary file was left behind; the rerun redoes case5 only and cleans up
    std::fs::remove_file(dirs.data_dir().join("case5.json")).unwrap();
    let stale = dirs.data_dir().join(".case5.npy.tmp-99999");
    std::fs::write(&stale, b"partial").unwrap();
    // its writer (pid 99999) is gone and it is old: stale
    let f = std::fs::File::options().write(true).open(&stale).unwrap();
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600)).unwrap();
    drop(f);
    // a fresh temp file of a live writer (this process) is left alone
    let live = dirs.data_dir().join(format!(".case6.npy.tmp-{}", std::process::id()));
    std::fs::write(&live, b"in progress").unwrap();
    let before = std::fs::metadata(dirs.data_dir().join("case2.json")).unwrap().modified().unwrap();
    let r = preprocess_dataset(&dirs, 2, None, false).unwrap();
    assert_eq!((r.n_processed, r.n_skipped), (1, 6));
    assert!(!stale.exists());
    assert!(live.exists());
    std::fs::remove_file(&live).unwrap();
    assert!(CaseFiles::new(&dirs.data_dir(), "case5").is_complete());
    assert_eq!(std::fs::metadata(dirs.data_dir().join("case2.json")).unwrap().modified().unwrap(), before);
    // plans that differ only in what training uses (batch, patch, network: another GPU memory
    // target, or a Residual Encoder preset) keep every case
    let mut p2 = Plans::load(&dirs.plans_file()).unwrap();
    let mut c2 = p2.config_2d().unwrap();
    c2.batch_size += 1;
    p2.configurations.insert("2d".into(), serde_json::to_value(&c2).unwrap());
    p2.save(&dirs.plans_file()).unwrap();
    let r = preprocess_dataset(&dirs, 2, None, false).unwrap();
    assert_eq!((r.n_processed, r.n_skipped), (0, 7));
    // plans that change the preprocessing (the target spacing) invalidate every case
    c2.spacing = c2.spacing.iter().map(|s| s * 1.5).collect();
    p2.configurations.insert("2d".into(), serde_json::to_value(&c2).unwrap());
    p2.save(&dirs.plans_file()).unwrap();
    let r = preprocess_dataset(&dirs, 2, None, false).unwrap();
    assert_eq!((r.n_processed, r.n_skipped), (7, 0));
    // an unknown case in a shard is an error naming it
    let err = preprocess_dataset(&dirs, 1, Some(&["nope".to_string()]), false).unwrap_err().to_string();
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn planning_stops_on_verification_problems() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = synthetic_dataset(tmp.path());
    std::fs::remove_file(dirs.raw.join("labelsTr/case2.nii.gz")).unwrap();
    let err = plan_dataset(&dirs, Planner::Default, None, 1, false).unwrap_err();
    assert!(matches!(err, nnunet_common::Error::Verify(_)), "{err}");
    assert!(err.to_string().contains("case2"), "{err}");
    assert!(!dirs.plans_file().exists());
}

fn shared() -> Option<PathBuf> {
    let p =
        std::env::var_os("NNUNET_SHARED").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
    p.join("datasets").is_dir().then_some(p)
}

#[test]
fn hippocampus_fingerprint_equals_reference() {
    let Some(shared) = shared() else {
        eprintln!("SKIPPED hippocampus_fingerprint_equals_reference: shared datasets not found (../shared or $NNUNET_SHARED)");
        return;
    };
    let vols = shared.join("datasets/msd_hippocampus/volumes");
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("Dataset922_Hippocampus");
    std::fs::create_dir_all(raw.join("imagesTr")).unwrap();
    std::fs::create_dir_all(raw.join("labelsTr")).unwrap();
    let mut n = 0;
    for e in std::fs::read_dir(vols.join("imagesTr")).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(case) = name.strip_suffix(".nii.gz") else { continue };
        std::os::unix::fs::symlink(e.path(), raw.join(format!("imagesTr/{case}_0000.nii.gz"))).unwrap();
        std::os::unix::fs::symlink(vols.join("labelsTr").join(&name), raw.join(format!("labelsTr/{case}.nii.gz"))).unwrap();
        n += 1;
    }
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/planning/hippocampus");
    let mut dj: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture.join("dataset.json")).unwrap()).unwrap();
    dj["numTraining"] = n.into();
    std::fs::write(raw.join("dataset.json"), serde_json::to_vec(&dj).unwrap()).unwrap();
    let ours = fingerprint::extract(&raw, 2, false).unwrap();
    let want = Fingerprint::load(&fixture.join("dataset_fingerprint.json")).unwrap();
    assert_eq!(ours.shapes_after_crop, want.shapes_after_crop);
    assert_eq!(ours.spacings, want.spacings);
    assert_eq!(ours.median_relative_size_after_cropping, want.median_relative_size_after_cropping);
    let (a, b) = (&ours.foreground_intensity_properties_per_channel["0"], &want.foreground_intensity_properties_per_channel["0"]);
    for (x, y, what) in [
        (a.mean, b.mean, "mean"),
        (a.median, b.median, "median"),
        (a.std, b.std, "std"),
        (a.min, b.min, "min"),
        (a.max, b.max, "max"),
        (a.percentile_00_5, b.percentile_00_5, "p0.5"),
        (a.percentile_99_5, b.percentile_99_5, "p99.5"),
    ] {
        assert!((x - y).abs() <= 1e-6 * y.abs().max(1.0), "{what}: ours {x} vs reference {y}");
    }
}
