//! The ignore label through `nnunet run`: masks with ~70% of their pixels unannotated (a value that
//! `nnunet convert --ignore-value` makes nnU-Net's ignore label) train five folds on two workers,
//! validate, cross-validate and predict; the ignore label is never scored and never predicted.
use super::{run_ok, SERIAL};
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

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

#[test]
fn nnunet_run_trains_five_folds_with_an_ignore_label() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    sparse_synthetic(&work.join("data"));
    run_ok(
        Command::new(bin("nnunet"))
            .arg("convert")
            .arg("--images")
            .arg(work.join("data/images"))
            .arg("--masks")
            .arg(work.join("data/masks"))
            .arg("--out")
            .arg(work.join("raw"))
            .args(["--id", "3", "--name", "Sparse", "--ignore-value", &UNANNOTATED.to_string(), "--quiet"]),
    );
    let ds = work.join("raw/Dataset003_Sparse");
    let dj = json(&ds.join("dataset.json"));
    // `nnunet synth` masks have two foreground classes: 0, 1, 2 stay classes, the unannotated value becomes 3.
    assert_eq!(dj["labels"]["ignore"], 3, "the unannotated value is the ignore label, above the classes: {dj}");

    let out = run_ok(
        Command::new(bin("nnunet"))
            .arg("run")
            .arg(&ds)
            .args(["--workers", "2", "--device", "cpu", "--epochs", "1", "--iters", "2", "--val-iters", "1"])
            .arg("--state-dir")
            .arg(work.join("state"))
            .env("RUST_LOG", "warn"),
    );
    assert!(out.contains("run is DONE"), "{out}");
    assert!(super::max_parallel_trains(&out) >= 2, "two workers must train folds at the same time:\n{out}");
    let run = std::fs::read_dir(work.join("state/runs")).unwrap().flatten().next().unwrap().path();
    let md = run.join("results/Dataset003_Sparse/nnUNetTrainer__nnUNetPlans__2d");
    let keys = |v: &serde_json::Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
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
