//! `nnunet submit` sends the submitter's nnU-Net folders (`--results`, `$nnUNet_preprocessed`) and
//! pretrained weights: a coordinator (`nnunet serve`, none of nnU-Net's variables set) refuses at
//! submit a folder it is not allowed to write, publishes an accepted run into the submitter's
//! folders, and a second run reuses that preprocessed data by reference, downloaded over gRPC by a
//! worker without the shared filesystem, starting from the first run's weights.
use super::results::{convert_synthetic, state_bytes};
use nnunet_tests::bin;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "submit-dirs-test-token-0123456789";

struct Serve {
    child: Child,
    url: String,
    work: PathBuf,
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Err(e) = self.child.kill() {
            eprintln!("stopping the coordinator: {e}");
        }
        self.child.wait().ok();
    }
}

impl Serve {
    fn start(work: &Path, allow: &Path) -> Serve {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        std::fs::write(work.join("token"), TOKEN).unwrap();
        let log = std::fs::File::create(work.join("serve.log")).unwrap();
        let child = Command::new(bin("nnunet"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--threads", "1", "--allow-output-under"])
            .arg(allow)
            .arg("--state-dir")
            .arg(work.join("state"))
            .arg("--token-file")
            .arg(work.join("token"))
            .env_remove("nnUNet_results")
            .env_remove("nnUNet_preprocessed")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t.elapsed() < Duration::from_secs(30), "the coordinator did not start; see {}/serve.log", work.display());
            std::thread::sleep(Duration::from_millis(100));
        }
        Serve { child, url: format!("http://127.0.0.1:{port}"), work: work.to_path_buf() }
    }

    fn nnunet(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin("nnunet"));
        c.args(args).args(["--coordinator", &self.url]).arg("--token-file").arg(self.work.join("token"));
        c
    }

    /// Runs one worker until the coordinator has nothing left, and waits for the run to finish.
    fn work_on(&self, run: &str, shared_fs: bool, name: &str) -> String {
        let log = self.work.join(format!("{name}.log"));
        let mut w = Command::new(bin("nnunet-worker"));
        w.args(["--coordinator", &self.url, "--device", "cpu", "--threads", "1", "--exit-when-idle"])
            .arg("--token-file")
            .arg(self.work.join("token"))
            .arg("--cache-dir")
            .arg(self.work.join(format!("cache-{name}")))
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
        if !shared_fs {
            w.arg("--no-shared-fs");
        }
        let mut worker = w.spawn().unwrap();
        let out = self.nnunet(&["watch", run, "--lines"]).output().unwrap();
        worker.wait().ok();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let wlog = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(out.status.success(), "run {run} did not finish:\n{text}\nworker log:\n{wlog}");
        text + &wlog
    }
}

fn submit(s: &Serve, env: &[(&str, &Path)], raw: &Path, extra: &[&str]) -> (bool, String) {
    let raw = raw.to_str().unwrap();
    let mut args = vec!["submit", "--folds", "0", "--epochs", "1", "--iters", "2", "--val-iters", "1", "--dataset", raw];
    args.extend_from_slice(extra);
    let out = s.nnunet(&args).env_remove("nnUNet_results").env_remove("nnUNet_preprocessed").envs(env.iter().copied()).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn submit_publishes_into_the_submitters_folders_when_the_coordinator_may_write_them() {
    let t = tempfile::tempdir().unwrap();
    let raw_root = t.path().join("nnUNet_raw");
    convert_synthetic(&[("nnUNet_raw", raw_root.as_path())], t.path(), 503, "Sub", 16, 96);
    let raw = raw_root.join("Dataset503_Sub");
    let allowed = t.path().join("shared");
    let (res, pre) = (allowed.join("nnUNet_results"), allowed.join("nnUNet_preprocessed"));
    let s = Serve::start(t.path(), &allowed);

    // A folder the coordinator may not write: refused at submit, nothing created.
    let elsewhere = t.path().join("elsewhere").join("results");
    let (ok, out) = submit(&s, &[], &raw, &["--results", elsewhere.to_str().unwrap()]);
    assert!(!ok && out.contains("may not write") && out.contains("--allow-output-under"), "{out}");
    assert!(!elsewhere.exists());
    let runs = t.path().join("state").join("runs");
    assert_eq!(std::fs::read_dir(&runs).unwrap().count(), 0, "a refused submit leaves no run directory");

    // The submitter's $nnUNet_results and $nnUNet_preprocessed: the run is published there.
    let env = [("nnUNet_results", res.as_path()), ("nnUNet_preprocessed", pre.as_path())];
    let (ok, out) = submit(&s, &env, &raw, &[]);
    assert!(ok, "{out}");
    let run1 = out.trim().to_string();
    s.work_on(&run1, true, "worker1");
    let model = res.join("Dataset503_Sub").join("nnUNetTrainer__nnUNetPlans__2d");
    assert!(model.join("fold_0").join("checkpoint_final.safetensors").is_file(), "not published to the submitter's --results");
    assert!(pre.join("Dataset503_Sub").join("nnUNetPlans_2d").join(".plans_sha256").is_file(), "preprocessed data not published");

    // Again, from the first run's weights, on a worker that downloads everything: the preprocessed
    // data is reused by reference and served from where it lives.
    let weights = t.path().join("first.safetensors");
    std::fs::copy(model.join("fold_0").join("checkpoint_final.safetensors"), &weights).unwrap();
    let (ok, out) = submit(&s, &env, &raw, &["--pretrained-weights", weights.to_str().unwrap()]);
    assert!(ok, "{out}");
    let run2 = out.trim().to_string();
    let text = s.work_on(&run2, false, "worker2");
    assert!(text.contains("reusing the plans"), "the second run did not reuse the preprocessed data:\n{text}");
    assert!(text.contains("loaded pretrained weights"), "the second run did not start from the weights:\n{text}");
    assert!(text.contains("downloaded"), "the worker without the shared filesystem downloaded nothing:\n{text}");
    let run_dir = runs.join(&run2);
    assert!(std::fs::symlink_metadata(run_dir.join("preprocessed").join("Dataset503_Sub")).unwrap().file_type().is_symlink());
    let weights_copy = std::fs::metadata(run_dir.join("inputs").join("pretrained_weights.safetensors")).unwrap().len();
    let kept = state_bytes(&run_dir);
    eprintln!("run directory of the second run: {kept} bytes, {weights_copy} of them the copy of its pretrained weights");
    assert!(kept - weights_copy < 1 << 20, "the run directory holds more than its own files: {kept} bytes");
}
