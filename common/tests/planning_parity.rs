//! Parity with the reference nnU-Net v2 (PyPI nnunetv2 2.8, peer venv) on the three shared datasets:
//! ISBI 2012 (gray PNG, 512²), PH2 (RGB PNG, downscaled to 256 px by the peer harness) and the MSD
//! hippocampus volumes (NIfTI). Fixtures: `tests/fixtures/planning/{isbi,ph2,hippocampus}/`, made by
//! `make_reference.sh` + `extract_reference.py` (see the README there).
//! - the 2d plan we compute from the reference fingerprint equals the reference plan,
//! - our 5-fold split over the reference's case ids equals nnU-Net's,
//! - preprocessing the raw input files of a few cases gives the reference arrays: data within 1e-4
//!   (max abs), seg exactly, the same crop bbox/shapes and the same sampled foreground locations.
use nnunet_common::dataset_json::DatasetJson;
use nnunet_common::fingerprint::Fingerprint;
use nnunet_common::imageio;
use nnunet_common::plans::Plans;
use nnunet_common::preprocess::preprocess_case;
use nnunet_common::splits::{generate_splits, Split};
use std::path::{Path, PathBuf};

fn fixture(ds: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/planning").join(ds)
}

const DATASETS: [&str; 3] = ["isbi", "ph2", "hippocampus"];

#[test]
fn plan_2d_equals_reference() {
    for ds in DATASETS {
        let dir = fixture(ds);
        let reference = Plans::load(&dir.join("nnUNetPlans.json")).unwrap();
        let fp = Fingerprint::load(&dir.join("dataset_fingerprint.json")).unwrap();
        let dj = DatasetJson::load(&dir.join("dataset.json")).unwrap();
        let ours = nnunet_common::planning::plan_2d(&fp, &dj, &reference.dataset_name, 8.0).unwrap();
        assert_eq!(ours.config_2d().unwrap(), reference.config_2d().unwrap(), "{ds}: 2d configuration");
        assert_eq!(ours.transpose_forward, reference.transpose_forward, "{ds}");
        assert_eq!(ours.transpose_backward, reference.transpose_backward, "{ds}");
        assert_eq!(ours.original_median_spacing_after_transp, reference.original_median_spacing_after_transp, "{ds}");
        assert_eq!(ours.original_median_shape_after_transp, reference.original_median_shape_after_transp, "{ds}");
        assert_eq!(ours.image_reader_writer, reference.image_reader_writer, "{ds}");
        assert_eq!(ours.foreground_intensity_properties_per_channel, reference.foreground_intensity_properties_per_channel);
    }
}

#[test]
fn splits_equal_reference() {
    for ds in DATASETS {
        let dir = fixture(ds);
        let want: Vec<Split> = serde_json::from_slice(&std::fs::read(dir.join("splits_final.json")).unwrap()).unwrap();
        let ids: Vec<String> = want[0].train.iter().chain(&want[0].val).cloned().collect();
        assert_eq!(generate_splits(&ids, 5).unwrap(), want, "{ds}");
    }
}

#[derive(serde::Deserialize)]
struct RefMeta {
    spacing: Vec<f64>,
    shape_before_cropping: Vec<usize>,
    bbox_used_for_cropping: Vec<[usize; 2]>,
    shape_after_cropping_and_before_resampling: Vec<usize>,
    n_class_locations: std::collections::BTreeMap<String, usize>,
    data_shape: Vec<usize>,
}

#[test]
fn preprocessed_cases_equal_reference() {
    let mut checked = 0;
    for ds in DATASETS {
        let dir = fixture(ds);
        let plans = Plans::load(&dir.join("nnUNetPlans.json")).unwrap();
        let cfg = plans.config_2d().unwrap();
        let dj = DatasetJson::load(&dir.join("dataset.json")).unwrap();
        let fe = dj.file_ending.clone();
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(case) = name.strip_prefix("ref_").and_then(|n| n.strip_suffix(".json")) else { continue };
            let meta: RefMeta = serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
            let npz = dir.join(format!("ref_{case}.npz"));
            let mut images: Vec<PathBuf> = std::fs::read_dir(dir.join("raw/imagesTr"))
                .unwrap()
                .flatten()
                .map(|f| f.path())
                .filter(|p| {
                    let n = p.file_name().unwrap().to_string_lossy().into_owned();
                    n.starts_with(&format!("{case}_")) && n.len() == case.len() + 5 + fe.len()
                })
                .collect();
            images.sort();
            let img = imageio::read_case_images(&images).unwrap();
            let seg = imageio::read_seg(&dir.join("raw/labelsTr").join(format!("{case}{fe}"))).unwrap();
            let (data, shape, seg8, props) = preprocess_case(&plans, &cfg, &dj, img, Some(seg)).unwrap();

            assert_eq!(shape.to_vec(), meta.data_shape, "{ds}/{case} shape");
            assert_eq!(props.spacing, meta.spacing, "{ds}/{case}");
            assert_eq!(props.shape_before_cropping, meta.shape_before_cropping, "{ds}/{case}");
            assert_eq!(props.bbox_used_for_cropping, meta.bbox_used_for_cropping, "{ds}/{case}");
            assert_eq!(props.shape_after_cropping_and_before_resampling, meta.shape_after_cropping_and_before_resampling);

            let (_, want) = nnunet_common::npy::read_npz_member::<f32>(&npz, "data").unwrap();
            let err = data.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(err <= 1e-4, "{ds}/{case}: data max abs error {err}");
            let (_, want_seg) = nnunet_common::npy::read_npz_member::<i8>(&npz, "seg").unwrap();
            assert!(seg8 == want_seg, "{ds}/{case}: seg differs");

            for (label, n) in &meta.n_class_locations {
                let got = &props.class_locations[label];
                assert_eq!(got.len(), *n, "{ds}/{case} label {label}");
                if *n > 0 {
                    let (_, want_loc) = nnunet_common::npy::read_npz_member::<i64>(&npz, &format!("loc_{label}")).unwrap();
                    let flat: Vec<i64> = got.iter().flatten().copied().collect();
                    assert!(flat == want_loc, "{ds}/{case} label {label}: foreground locations differ");
                }
            }
            eprintln!("{ds}/{case}: shape {shape:?}, data max abs err {err:e}, seg and locations identical");
            checked += 1;
        }
    }
    assert_eq!(checked, 4);
}
