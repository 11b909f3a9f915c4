//! The Residual Encoder presets against the reference nnU-Net v2 (PyPI nnunetv2 2.8, peer venv):
//! `nnUNetv2_plan_experiment -pl nnUNetPlannerResEnc{M,L,XL}` on the three shared datasets'
//! reference fingerprints (`tests/fixtures/planning/make_resenc_reference.sh`) gives
//! `nnUNetResEncUNet{M,L,XL}Plans.json`; ours from the same fingerprint must be equal.
use nnunet_common::dataset_json::DatasetJson;
use nnunet_common::fingerprint::Fingerprint;
use nnunet_common::planners::{plan_2d_with, Planner};
use nnunet_common::plans::Plans;
use std::path::{Path, PathBuf};

fn fixture(ds: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/planning").join(ds)
}

#[test]
fn resenc_plans_equal_reference() {
    for ds in ["isbi", "ph2", "hippocampus"] {
        let dir = fixture(ds);
        let fp = Fingerprint::load(&dir.join("dataset_fingerprint.json")).unwrap();
        let dj = DatasetJson::load(&dir.join("dataset.json")).unwrap();
        for planner in [Planner::ResEncM, Planner::ResEncL, Planner::ResEncXL] {
            let reference = Plans::load(&dir.join(format!("{}.json", planner.plans_name()))).unwrap();
            let ours = plan_2d_with(planner, &fp, &dj, &reference.dataset_name).unwrap();
            assert_eq!(ours.config_2d().unwrap(), reference.config_2d().unwrap(), "{ds} {planner}: 2d configuration");
            // the whole file, key by key, as JSON (nnunet-rs plans the 2d configuration only; the
            // reference also plans 3d_fullres for volumes)
            let mut reference = reference;
            reference.configurations.retain(|name, _| name == "2d");
            let (a, b) = (serde_json::to_value(&ours).unwrap(), serde_json::to_value(&reference).unwrap());
            assert_eq!(a, b, "{ds} {planner}: plans file");
        }
    }
}

#[test]
fn default_planner_is_unchanged() {
    let dir = fixture("isbi");
    let fp = Fingerprint::load(&dir.join("dataset_fingerprint.json")).unwrap();
    let dj = DatasetJson::load(&dir.join("dataset.json")).unwrap();
    let reference = Plans::load(&dir.join("nnUNetPlans.json")).unwrap();
    let ours = plan_2d_with(Planner::Default, &fp, &dj, &reference.dataset_name).unwrap();
    assert_eq!(serde_json::to_value(&ours).unwrap(), serde_json::to_value(&reference).unwrap());
}
