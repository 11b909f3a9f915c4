//! The ignore label through `nnunet run`: masks with ~70% of their pixels unannotated (a value that
//! `nnunet convert --ignore-value` makes nnU-Net's ignore label) train five folds on two workers,
//! validate, cross-validate and predict; the ignore label is never scored and never predicted.
use super::{json, keys, run_ok, SERIAL};
use nnunet_common::imageio::{detect_format, read_seg, write_seg_natural};
use nnunet_tests::bin;
use std::path::Path;
use std::process::Command;

const UNANNOTATED: u16 = 127;

/// `nnunet synth` cases whose masks keep 3 of every 10 16x16 tiles annotated; the rest is UNANNOTATED.
fn sparse_synthetic(data: &Path) {
    run_ok(Command::new(bin("nnunet")).args(["synth", "--cases", "10", "--size", "64"]).arg("--out").arg(data));
    for e in std::fs::read_dir(data.join("masks")).unwrap().flatten() {
        let m = read_seg(&e.path()).unwrap();
        let (h, w) = (m.shape[m.shape.len() - 2], m.shape[m.shape.len() - 1]);
        let labels: Vec<u16> = (0..h * w)
            .map(|i| {
                let tile = (i / w / 16) * 4 + (i % w) / 16;
                if (tile * 7) % 10 < 3 {
                    m.data[i] as u16
                } else {
                    UNANNOTATED
                }
            })
            .collect();
        write_seg_natural(&e.path(), h, w, &labels, "png").unwrap();
    }
}

#[test]
fn nnunet_run_trains_five_folds_with_an_ignore_label() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    sparse_synthetic(&work.join("data"));
    let ignore = UNANNOTATED.to_string();
    let extra = ["--ignore-value".as_ref(), ignore.as_ref(), "--quiet".as_ref()];
    let ds = nnunet_tests::convert(&work.join("data"), &work.join("raw"), 3, "Sparse", &extra);
    let dj = json(&ds.join("dataset.json"));
    // `nnunet synth` masks have two foreground classes: 0, 1, 2 stay classes, the unannotated value becomes 3.
    assert_eq!(dj["labels"]["ignore"], 3, "the unannotated value is the ignore label, above the classes: {dj}");

    let md = super::run_five_folds_on_two_workers(work, &ds, "Dataset003_Sparse");
    for f in 0..5 {
        let sidecar = json(&md.join(format!("fold_{f}/checkpoint_final.json")));
        assert_eq!(sidecar["init_args"]["num_classes"], 3, "fold {f}: background and two classes, no ignore output");
        let s = json(&md.join(format!("fold_{f}/validation/summary.json")));
        assert_eq!(keys(&s["mean"]), vec!["1", "2"], "fold {f}: only the classes are scored");
        let mut checked = 0;
        for e in std::fs::read_dir(md.join(format!("fold_{f}/validation"))).unwrap().flatten() {
            if detect_format(&e.path()).is_some() {
                let p = read_seg(&e.path()).unwrap();
                assert!(
                    p.data.iter().all(|&v| v == 0.0 || v == 1.0 || v == 2.0),
                    "{}: the ignore label is never predicted",
                    e.path().display()
                );
                checked += 1;
            }
        }
        assert!(checked > 0, "fold {f} wrote validation predictions");
    }
    let cv = md.join("crossval_results_folds_0_1_2_3_4");
    assert_eq!(keys(&json(&cv.join("summary.json"))["mean"]), vec!["1", "2"]);
    assert!(cv.join("postprocessing.json").is_file());
}
