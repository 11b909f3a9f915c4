//! `nnunet run` with nnU-Net's three variables set: the finished model folder lands in
//! `$nnUNet_results` in nnU-Net's layout, the preprocessed data in `$nnUNet_preprocessed`, and a
//! second run on the same dataset takes both plans and preprocessed cases from there (its log says
//! so, and its training starts sooner).
use nnunet_tests::bin;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `nnunet run 501` (1 CPU worker, fold 0, a tiny budget): (stdout, seconds until fold 0's
/// training task started, total seconds).
fn run_once(env: &[(&str, &Path)], state: &Path) -> (String, f64, f64) {
    let start = Instant::now();
    let mut cmd = Command::new(bin("nnunet"));
    cmd.args(["run", "501", "--workers", "1", "--device", "cpu", "--folds", "0", "--epochs", "1", "--iters", "2", "--val-iters", "1"])
        .arg("--state-dir")
        .arg(state)
        .env("NNUNET_WORKER_BIN", bin("nnunet-worker"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn nnunet run");
    let mut out = String::new();
    let mut to_train = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if to_train.is_none() && line.contains("train RUNNING") {
            to_train = Some(start.elapsed().as_secs_f64());
        }
        out.push_str(&line);
        out.push('\n');
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "nnunet run failed:\n{out}");
    (out, to_train.expect("fold 0 never started training"), start.elapsed().as_secs_f64())
}

/// `nnunet synth` + `nnunet convert` into `$nnUNet_raw` (from `env`): DatasetID_NAME.
pub(crate) fn convert_synthetic(env: &[(&str, &Path)], work: &Path, id: u32, name: &str, cases: usize, size: usize) {
    let synth = work.join(format!("synth{id}"));
    let ok = Command::new(bin("nnunet"))
        .args(["synth", "--cases", &cases.to_string(), "--size", &size.to_string(), "--out"])
        .arg(&synth)
        .status()
        .unwrap();
    assert!(ok.success());
    let ok = Command::new(bin("nnunet"))
        .envs(env.iter().copied())
        .args(["convert", "--id", &id.to_string(), "--name", name, "--quiet", "--images"])
        .arg(synth.join("images"))
        .arg("--masks")
        .arg(synth.join("masks"))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Bytes of the regular files under `dir`, links not followed (what the folder itself holds).
pub(crate) fn state_bytes(dir: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let md = std::fs::symlink_metadata(e.path()).unwrap();
        if md.is_dir() {
            n += state_bytes(&e.path());
        } else if md.is_file() {
            n += md.len();
        }
    }
    n
}

#[test]
fn run_twice_publishes_to_nnunet_results_and_reuses_the_preprocessed_data() {
    let t = tempfile::tempdir().unwrap();
    let (raw, pre, res) = (t.path().join("nnUNet_raw"), t.path().join("nnUNet_preprocessed"), t.path().join("nnUNet_results"));
    let env = [("nnUNet_raw", raw.as_path()), ("nnUNet_preprocessed", pre.as_path()), ("nnUNet_results", res.as_path())];
    convert_synthetic(&env, t.path(), 501, "Tiny", 30, 192);

    let (out1, train1, total1) = run_once(&env, &t.path().join("state"));
    assert!(!out1.contains("reusing the plans"), "nothing to reuse yet:\n{out1}");
    let model = res.join("Dataset501_Tiny").join("nnUNetTrainer__nnUNetPlans__2d");
    for f in
        ["plans.json", "dataset.json", "dataset_fingerprint.json", "fold_0/checkpoint_final.safetensors", "fold_0/validation/summary.json"]
    {
        assert!(model.join(f).is_file(), "{} is missing after the run", model.join(f).display());
    }
    assert!(out1.contains(&format!("results: {}", model.display())), "{out1}");
    let data = pre.join("Dataset501_Tiny");
    for f in ["nnUNetPlans.json", "splits_final.json", "dataset_fingerprint.json", "nnUNetPlans_2d/.plans_sha256", ".raw_sha256"] {
        assert!(data.join(f).is_file(), "{} is missing", data.join(f).display());
    }
    let n_cases = std::fs::read_dir(data.join("nnUNetPlans_2d"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with("_seg.npy"))
        .count();
    assert_eq!(n_cases, 30);
    let plans_mtime = std::fs::metadata(data.join("nnUNetPlans.json")).unwrap().modified().unwrap();

    // the second run, in a fresh state directory: nothing of the first run's state is visible to it
    std::thread::sleep(Duration::from_millis(50));
    let (out2, train2, total2) = run_once(&env, &t.path().join("state2"));
    assert!(out2.contains("reusing the plans and the 30 preprocessed case(s)"), "no reuse:\n{out2}");
    assert!(out2.contains("no planning, no preprocessing"), "{out2}");
    assert_eq!(std::fs::metadata(data.join("nnUNetPlans.json")).unwrap().modified().unwrap(), plans_mtime, "re-planned");
    assert!(model.join("fold_0/checkpoint_final.safetensors").is_file());
    let left: Vec<String> =
        std::fs::read_dir(res.join("Dataset501_Tiny")).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(left, ["nnUNetTrainer__nnUNetPlans__2d"], "no temporary folders left behind");
    // The run directories keep only what is the run's own: both reference the published data and model.
    for state in ["state", "state2"] {
        let run_dir = std::fs::read_dir(t.path().join(state).join("runs")).unwrap().flatten().next().unwrap().path();
        for linked in ["preprocessed/Dataset501_Tiny", "results/Dataset501_Tiny/nnUNetTrainer__nnUNetPlans__2d"] {
            let md = std::fs::symlink_metadata(run_dir.join(linked)).unwrap();
            assert!(md.file_type().is_symlink(), "{state}: {linked} is a copy, not a reference to the published folder");
        }
        let kept = state_bytes(&run_dir);
        eprintln!(
            "{state}: run directory {kept} bytes; published preprocessed data {} bytes, model folder {} bytes",
            state_bytes(&data),
            state_bytes(&model)
        );
        assert!(kept < state_bytes(&data) / 4, "{state}: the run directory holds {kept} bytes");
    }
    eprintln!("first run: training started after {train1:.1} s ({total1:.1} s total); second: {train2:.1} s ({total2:.1} s total)");
    assert!(train2 < train1, "reusing was not faster: training started after {train2:.1} s vs {train1:.1} s");
}
