//! Parity of the postprocessing selection with `nnUNetv2_determine_postprocessing` on a fixture
//! (tests/fixtures/eval/pp_*, see its README.md): the same steps are chosen, `postprocessing.json`
//! has the same keys and numbers, and the postprocessed masks are identical.
use nnunet_common::dataset_json::DatasetJson;
use nnunet_common::evaluate::pyjson::{self, Value};
use nnunet_common::postprocess::{self, KeepLargest};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/eval")
}

fn assert_close(a: &Value, b: &Value, at: &str) {
    match (a, b) {
        (Value::Dict(x), Value::Dict(y)) => {
            assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>(), "keys differ at {at}");
            for (k, v) in x {
                assert_close(v, &y[k], &format!("{at}.{k}"));
            }
        }
        (Value::List(x), Value::List(y)) => {
            assert_eq!(x.len(), y.len(), "length differs at {at}");
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                assert_close(u, v, &format!("{at}[{i}]"));
            }
        }
        (Value::Float(x), Value::Float(y)) => assert!((x - y).abs() <= 1e-9 || (x.is_nan() && y.is_nan()), "{at}: {x} vs {y}"),
        (x, y) => assert_eq!(x, y, "{at}"),
    }
}

#[test]
fn determine_postprocessing_matches_nnunetv2() {
    let fx = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let pred = tmp.path().join("pred");
    std::fs::create_dir_all(&pred).unwrap();
    for e in std::fs::read_dir(fx.join("pp_pred")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), pred.join(e.file_name())).unwrap();
    }
    let dj = DatasetJson::load(&fx.join("dataset.json")).unwrap();
    let choice = postprocess::determine_postprocessing(&pred, &fx.join("pp_gt"), &dj).unwrap();
    assert_eq!(choice.steps, vec![KeepLargest::all_foreground(&[1, 2]), KeepLargest::label(1)]);
    let ours = pyjson::load(&pred.join("postprocessing.json")).unwrap();
    let theirs = pyjson::load(&fx.join("pp_postprocessing_ref.json")).unwrap();
    assert_close(&ours, &theirs, "postprocessing");
    for case in ["p1", "p2", "p3"] {
        let a = nnunet_common::imageio::read_seg(&pred.join("postprocessed").join(format!("{case}.nii.gz"))).unwrap();
        let b = nnunet_common::imageio::read_seg(&fx.join("pp_postprocessed_ref").join(format!("{case}.nii.gz"))).unwrap();
        assert_eq!(a.shape, b.shape);
        assert_eq!(a.data, b.data, "{case}: postprocessed mask differs from the reference's");
    }
    // The file round-trips into the same steps, and applying them reproduces postprocessed/.
    assert_eq!(postprocess::load_postprocessing(&fx.join("pp_postprocessing_ref.json")).unwrap(), choice.steps);
    let out = tmp.path().join("applied");
    postprocess::apply_postprocessing_to_folder(&pred, &out, &choice.steps, ".nii.gz").unwrap();
    let a = nnunet_common::imageio::read_seg(&out.join("p2.nii.gz")).unwrap();
    let b = nnunet_common::imageio::read_seg(&fx.join("pp_postprocessed_ref/p2.nii.gz")).unwrap();
    assert_eq!(a.data, b.data);
}
