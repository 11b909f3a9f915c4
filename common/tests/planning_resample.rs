//! Resampling against nnU-Net v2's `resample_data_or_seg_to_shape` (skimage/scipy) on random arrays:
//! in-plane (separate z, 2D images), full 3D, and anisotropic with an order-0 z pass
//! (`tests/fixtures/planning/make_resample_fixtures.py`).
use nnunet_common::preprocess::resample_data_to_shape;
use serde_json::Value;

fn v<T: serde::de::DeserializeOwned>(x: &Value) -> T {
    serde_json::from_value(x.clone()).unwrap()
}

#[test]
fn resampling_matches_nnunet() {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/planning/resample_reference.json");
    let cases: Vec<Value> = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
    for c in &cases {
        let shape: [usize; 4] = v(&c["shape"]);
        let new: [usize; 3] = v(&c["new_shape"]);
        let sp: Vec<f64> = v(&c["spacing"]);
        let nsp: Vec<f64> = v(&c["new_spacing"]);
        let data: Vec<f32> = v(&c["data"]);
        let want: Vec<f64> = v(&c["data_out"]);
        let got = resample_data_to_shape(&data, shape, new, &sp, &nsp, 3, false);
        assert_eq!(got.len(), want.len());
        let err = got.iter().zip(&want).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max);
        assert!(err < 1e-4, "data {shape:?} -> {new:?}: max abs err {err}");
        let seg: Vec<f32> = v::<Vec<i64>>(&c["seg"]).into_iter().map(|x| x as f32).collect();
        let want_s: Vec<i64> = v(&c["seg_out"]);
        let got_s: Vec<i64> = resample_data_to_shape(&seg, [1, shape[1], shape[2], shape[3]], new, &sp, &nsp, 1, true)
            .into_iter()
            .map(|x| x as i64)
            .collect();
        let diff = got_s.iter().zip(&want_s).filter(|(a, b)| a != b).count();
        assert_eq!(diff, 0, "seg {shape:?} -> {new:?}: {diff} voxels differ");
    }
}
