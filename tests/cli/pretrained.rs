//! `nnunet run --pretrained-weights` (nnU-Net's `-pretrained_weights`): a run on a tiny dataset
//! starts its fold from the weights of a previous tiny run (its training log says it loaded them),
//! and a file that does not fit the network fails the run at once, not retried, with the list of
//! mismatching parameters in the error the user sees. Also measures what the run's state
//! directory keeps when the data and results live in the nnU-Net folders.
use super::results::{convert_synthetic, state_bytes};
use nnunet_tests::bin;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// `nnunet run 502` on fold 0 with a tiny budget and `extra` flags: (success, stdout + stderr, seconds).
fn run(env: &[(&str, &Path)], state: &Path, extra: &[&str]) -> (bool, String, f64) {
    let start = Instant::now();
    let out = Command::new(bin("nnunet"))
        .args(["run", "502", "--workers", "1", "--device", "cpu", "--folds", "0", "--epochs", "1", "--iters", "2", "--val-iters", "1"])
        .arg("--state-dir")
        .arg(state)
        .args(extra)
        .env("NNUNET_WORKER_BIN", bin("nnunet-worker"))
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("spawn nnunet run");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text, start.elapsed().as_secs_f64())
}

/// A valid safetensors file holding one tensor that no 2d network of this dataset has in that shape.
fn mismatched_weights(path: &Path) {
    let header = br#"{"encoder.stages.0.0.convs.0.conv.weight":{"dtype":"F32","shape":[2,1,3,3],"data_offsets":[0,72]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0u8; 72]);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn run_starts_from_pretrained_weights_and_a_mismatched_file_fails_the_run_at_once() {
    let t = tempfile::tempdir().unwrap();
    let (raw, pre, res) = (t.path().join("nnUNet_raw"), t.path().join("nnUNet_preprocessed"), t.path().join("nnUNet_results"));
    let env = [("nnUNet_raw", raw.as_path()), ("nnUNet_preprocessed", pre.as_path()), ("nnUNet_results", res.as_path())];
    convert_synthetic(&env, t.path(), 502, "Pre", 16, 96);

    let (ok, out1, _) = run(&env, &t.path().join("state1"), &[]);
    assert!(ok, "the first run failed:\n{out1}");
    let model = res.join("Dataset502_Pre").join("nnUNetTrainer__nnUNetPlans__2d");
    let weights = t.path().join("previous.safetensors");
    std::fs::copy(model.join("fold_0").join("checkpoint_final.safetensors"), &weights).unwrap();
    let run1 = std::fs::read_dir(t.path().join("state1").join("runs")).unwrap().flatten().next().unwrap().path();
    eprintln!("state directory after a run (data and model published to the nnU-Net folders): {} bytes", state_bytes(&run1));
    for linked in ["preprocessed/Dataset502_Pre", "results/Dataset502_Pre/nnUNetTrainer__nnUNetPlans__2d"] {
        let md = std::fs::symlink_metadata(run1.join(linked)).unwrap();
        assert!(md.file_type().is_symlink(), "{linked} in the run directory should reference the published folder");
    }

    let (ok, out2, _) = run(&env, &t.path().join("state2"), &["--pretrained-weights", weights.to_str().unwrap()]);
    assert!(ok, "the run from pretrained weights failed:\n{out2}");
    assert!(out2.contains("loaded pretrained weights"), "the run's log does not say it loaded the weights:\n{out2}");
    let log = std::fs::read_to_string(model.join("fold_0").join("training_log.txt")).unwrap();
    assert!(log.contains("loaded pretrained weights") && log.contains("segmentation-head tensors start fresh"), "{log}");
    let run2 = std::fs::read_dir(t.path().join("state2").join("runs")).unwrap().flatten().next().unwrap().path();
    let copied = std::fs::read(run2.join("inputs").join("pretrained_weights.safetensors")).unwrap();
    assert_eq!(copied, std::fs::read(&weights).unwrap(), "the weights are copied into the run");

    let bad = t.path().join("other_network.safetensors");
    mismatched_weights(&bad);
    let (ok, out3, secs) = run(&env, &t.path().join("state3"), &["-pretrained_weights", bad.to_str().unwrap()]);
    assert!(!ok, "a run with weights of another network succeeded:\n{out3}");
    for want in [
        "do not fit this network",
        "encoder.stages.0.0.convs.0.conv.weight: pretrained [2, 1, 3, 3]",
        "missing from the pretrained weights",
    ] {
        assert!(out3.contains(want), "the error does not say {want:?}:\n{out3}");
    }
    assert!(out3.contains("failed after 1 attempt(s)"), "a mismatch must not be retried:\n{out3}");
    assert!(!out3.contains("RETRYING"), "{out3}");
    eprintln!("the mismatched run failed after {secs:.1} s");

    let (ok, out4, _) = run(&env, &t.path().join("state4"), &["--pretrained-weights", t.path().join("nope.pth").to_str().unwrap()]);
    assert!(!ok && out4.contains("not readable by the coordinator"), "{out4}");
}
