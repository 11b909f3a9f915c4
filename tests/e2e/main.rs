//! End-to-end tests of the whole system with real processes on loopback: `nnunet serve`, several
//! `nnunet-worker` processes training real folds with libtorch on CPU, `nnunet submit/watch`, on a
//! small downscaled subset of the real ISBI 2012 EM dataset. They kill a worker (SIGKILL) mid-fold
//! and the coordinator itself, and check that the run completes without losing work.
//!
//! Budgets are tiny (a few iterations); these tests check the plumbing and the recovery, not accuracy.
mod ignore;
mod mtls;
mod regions;

use nnunet_tests::{bin, run_ok, shared_dataset};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The end-to-end tests share 2 cores: run them one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

const TOKEN: &str = "e2e-token-0123456789abcdef0123456789";

/// Downscales `n` cases (+ `n_test` test images) of a shared dataset to `size` px into `dst`.
fn subset(src: &Path, dst: &Path, n: usize, n_test: usize, size: u32) {
    let mut names: Vec<String> =
        std::fs::read_dir(src.join("images")).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert!(names.len() >= n + n_test, "{} has only {} images", src.display(), names.len());
    for d in ["images", "masks", "test"] {
        std::fs::create_dir_all(dst.join(d)).unwrap();
    }
    for (i, name) in names.iter().take(n + n_test).enumerate() {
        let img = image::open(src.join("images").join(name)).unwrap();
        let small = img.resize_exact(size, size, image::imageops::FilterType::Triangle);
        let stem = Path::new(name).file_stem().unwrap().to_string_lossy().into_owned();
        if i < n {
            small.save(dst.join("images").join(format!("{stem}.png"))).unwrap();
            let mask_path = std::fs::read_dir(src.join("masks"))
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .find(|p| p.file_stem().unwrap().to_string_lossy() == stem)
                .expect("mask for image");
            let mask = image::open(mask_path).unwrap().resize_exact(size, size, image::imageops::FilterType::Nearest);
            mask.save(dst.join("masks").join(format!("{stem}.png"))).unwrap();
        } else {
            small.save(dst.join("test").join(format!("{stem}.png"))).unwrap();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Like [`run_ok`], returning (stdout, stderr).
fn run_ok_both(cmd: &mut Command) -> (String, String) {
    let out = cmd.output().expect("spawn");
    let (o, e) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "{cmd:?} failed:\n{o}{e}");
    (o, e)
}

struct Cluster {
    work: PathBuf,
    port: u16,
    token_file: PathBuf,
    serve: Option<Child>,
    workers: Vec<(Child, PathBuf)>,
}

impl Cluster {
    fn new(work: &Path) -> Self {
        let token_file = work.join("token");
        std::fs::write(&token_file, TOKEN).unwrap();
        Cluster { work: work.to_path_buf(), port: free_port(), token_file, serve: None, workers: vec![] }
    }
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    fn start_serve(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.work.join("serve.log")).unwrap();
        let child = Command::new(bin("nnunet"))
            .args(["serve", "--listen", &format!("127.0.0.1:{}", self.port), "--lease-ttl-secs", "4", "--threads", "1"])
            .arg("--state-dir")
            .arg(self.work.join("state"))
            .arg("--token-file")
            .arg(&self.token_file)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.serve = Some(child);
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(t.elapsed() < Duration::from_secs(30), "coordinator did not start; see {}", self.work.join("serve.log").display());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    fn start_worker(&mut self, shared_fs: bool) {
        let i = self.workers.len();
        let log_path = self.work.join(format!("worker-{i}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(bin("nnunet-worker"));
        cmd.args(["--coordinator", &self.url(), "--device", "cpu", "--threads", "1", "--exit-when-idle"])
            .arg("--token-file")
            .arg(&self.token_file)
            .arg("--cache-dir")
            .arg(self.work.join(format!("cache-{i}")))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        if !shared_fs {
            cmd.arg("--no-shared-fs");
        }
        self.workers.push((cmd.spawn().unwrap(), log_path));
    }
    fn nnunet(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin("nnunet"));
        c.args(args).args(["--coordinator", &self.url()]).arg("--token-file").arg(&self.token_file);
        c
    }
    fn status_json(&self, run: &str) -> serde_json::Value {
        serde_json::from_str(&run_ok(&mut self.nnunet(&["status", run, "--json"]))).unwrap()
    }
    /// `nnunet watch RUN --lines`, its lines sent to a channel.
    fn watch(&self, run: &str) -> (Child, mpsc::Receiver<String>) {
        let mut child = self.nnunet(&["watch", run, "--lines"]).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                println!("watch| {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (child, rx)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (w, _) in &mut self.workers {
            let _ = w.kill();
            let _ = w.wait();
        }
        if let Some(s) = &mut self.serve {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

/// Waits for a watch line matching `pred`, collecting all lines seen.
fn wait_line(rx: &mpsc::Receiver<String>, seen: &mut Vec<String>, timeout: Duration, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let t = Instant::now();
    loop {
        let left = timeout.checked_sub(t.elapsed()).unwrap_or_else(|| panic!("timed out waiting for {what}; saw:\n{}", seen.join("\n")));
        match rx.recv_timeout(left) {
            Ok(l) => {
                seen.push(l.clone());
                if pred(&l) {
                    return l;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("timed out waiting for {what}; saw:\n{}", seen.join("\n")),
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("watch ended before {what}; saw:\n{}", seen.join("\n")),
        }
    }
}

fn drain(rx: &mpsc::Receiver<String>, seen: &mut Vec<String>, timeout: Duration) {
    let t = Instant::now();
    while t.elapsed() < timeout {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(l) => seen.push(l),
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Err(_) => {}
        }
    }
}

/// Converts the subset into an nnU-Net v2 raw dataset with `nnunet convert`.
fn convert(work: &Path, data: &Path) -> PathBuf {
    let test = data.join("test");
    nnunet_tests::convert(data, &work.join("raw"), 1, "ISBI", &["--test-images".as_ref(), test.as_os_str()])
}

fn model_dir(work: &Path, run: &str) -> PathBuf {
    work.join("state/runs").join(run).join("results/Dataset001_ISBI/nnUNetTrainer__nnUNetPlans__2d")
}

#[test]
fn five_folds_on_three_workers_survive_a_killed_worker() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(src) = shared_dataset("isbi2012_em") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    subset(&src, &work.join("data"), 10, 2, 64);
    let ds = convert(work, &work.join("data"));

    let mut c = Cluster::new(work);
    c.start_serve();
    c.start_worker(true);
    c.start_worker(true);
    c.start_worker(false); // downloads its inputs over gRPC instead of reading the run directory
    let run =
        run_ok(c.nnunet(&["submit", "--epochs", "6", "--iters", "3", "--val-iters", "2", "--predict-test"]).arg("--dataset").arg(&ds))
            .trim()
            .to_string();
    assert!(run.starts_with("run-"), "submit prints the run id: {run}");
    let (mut watch, rx) = c.watch(&run);
    let mut seen = vec![];

    // Once a fold has stored a checkpoint past its first epoch, kill the worker that trains it.
    let line = wait_line(&rx, &mut seen, Duration::from_secs(600), "a stored checkpoint", |l| {
        l.contains("checkpoint") && l.contains("stored") && !l.contains("(epoch 0)") && l.contains("fold ")
    });
    let fold: i32 = line.split("fold ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    let status = c.status_json(&run);
    let task = status["tasks"].as_array().unwrap().iter().find(|t| t["kind"] == "train" && t["fold"] == fold).unwrap().clone();
    let killed: Option<usize>;
    if task["state"] == "RUNNING" {
        let worker_id = task["worker"].as_str().unwrap().to_string();
        let idx = c
            .workers
            .iter()
            .position(|(_, log)| std::fs::read_to_string(log).unwrap_or_default().contains(&worker_id))
            .expect("the worker's log names its id");
        let pid = c.workers[idx].0.id();
        println!("killing worker {idx} (pid {pid}, {worker_id}) with SIGKILL while it trains fold {fold}");
        c.workers[idx].0.kill().unwrap(); // SIGKILL
        killed = Some(idx);
        // The lease expires, another worker resumes the fold from its checkpoint (not epoch 0).
        let resumed = wait_line(&rx, &mut seen, Duration::from_secs(300), "the fold to be resumed", |l| {
            l.contains(&format!("fold {fold} train RUNNING (attempt 2"))
        });
        assert!(resumed.contains("resumes from the checkpoint of epoch"), "the re-leased fold must resume from its checkpoint: {resumed}");
        let epoch: u32 = resumed.split("epoch ").last().unwrap().trim_end_matches(|c: char| !c.is_ascii_digit()).parse().unwrap();
        assert!(epoch >= 1, "resumed from epoch {epoch}");
    } else {
        panic!("fold {fold} finished before it could be killed; the budget is too small for this machine: {task}");
    }

    wait_line(&rx, &mut seen, Duration::from_secs(900), "the run to finish", |l| l.contains("run is DONE") || l.contains("run is FAILED"));
    drain(&rx, &mut seen, Duration::from_secs(3));
    let _ = watch.wait();
    let all = seen.join("\n");
    assert!(all.contains("run is DONE"), "run did not finish:\n{all}");
    for f in 0..5 {
        assert!(all.contains(&format!("fold {f} train DONE")), "fold {f} not trained:\n{all}");
        assert!(all.contains(&format!("fold {f} validate DONE")), "fold {f} not validated:\n{all}");
    }
    assert!(all.contains("epoch 6/6"), "watch shows per-epoch metrics:\n{all}");

    // The fold's training log continues where it stopped: every epoch exactly once, in order.
    let md = model_dir(work, &run);
    let log = std::fs::read_to_string(md.join(format!("fold_{fold}/training_log.jsonl"))).unwrap();
    let epochs: Vec<u64> = log.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["epoch"].as_u64().unwrap()).collect();
    assert_eq!(epochs, (0..6).collect::<Vec<_>>(), "epochs logged for the resumed fold");
    // The CV summary and the test ensemble are written.
    let cv = md.join("crossval_results_folds_0_1_2_3_4/summary.json");
    assert!(cv.exists(), "{} missing", cv.display());
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cv).unwrap()).unwrap();
    let dice = summary["foreground_mean"]["Dice"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&dice));
    let ens: Vec<_> = std::fs::read_dir(md.join("ensemble_test")).unwrap().flatten().collect();
    assert_eq!(ens.iter().filter(|e| e.file_name().to_string_lossy().ends_with(".nii.gz")).count(), 2, "two test images ensembled");
    for f in 0..5 {
        assert!(md.join(format!("fold_{f}/checkpoint_final.safetensors")).exists());
        assert!(md.join(format!("fold_{f}/progress.png")).exists());
    }
    let st = c.status_json(&run);
    assert_eq!(st["state"], "DONE");
    assert!(st["summary"]["cv_foreground_dice"].is_number(), "status reports the CV Dice: {}", st["summary"]);
    // Worker caches: reading the run directory in place leaves no run folder behind; downloading keeps
    // the inputs for the run's next tasks (pruned later, least recently used first).
    for (i, in_place) in [(0, true), (1, true), (2, false)] {
        let worked = std::fs::read_to_string(&c.workers[i].1).unwrap_or_default().contains("leased");
        if killed == Some(i) || !worked {
            continue;
        }
        let dir = work.join(format!("cache-{i}/runs/{run}"));
        assert_eq!(dir.exists(), !in_place, "worker {i}: cache folder {} (in place: {in_place})", dir.display());
    }
}

#[test]
fn a_killed_coordinator_restarts_and_no_finished_fold_is_retrained() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(src) = shared_dataset("isbi2012_em") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    subset(&src, &work.join("data"), 10, 0, 48);
    let ds = convert(work, &work.join("data"));
    let mut c = Cluster::new(work);
    c.start_serve();
    c.start_worker(true);
    c.start_worker(true);
    let run =
        run_ok(c.nnunet(&["submit", "--epochs", "3", "--iters", "2", "--val-iters", "1", "--folds", "0,1,2"]).arg("--dataset").arg(&ds))
            .trim()
            .to_string();
    let (mut watch, rx) = c.watch(&run);
    let mut seen = vec![];
    let done = wait_line(&rx, &mut seen, Duration::from_secs(600), "a finished fold", |l| l.contains("train DONE"));
    let fold: i32 = done.split("fold ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    let serve = c.serve.as_mut().unwrap();
    println!("killing the coordinator (pid {}) after fold {fold} finished training", serve.id());
    serve.kill().unwrap();
    serve.wait().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    c.start_serve();
    // The watcher reconnects from its last event; workers retry until the coordinator is back.
    wait_line(&rx, &mut seen, Duration::from_secs(900), "the run to finish", |l| l.contains("run is DONE") || l.contains("run is FAILED"));
    let _ = watch.wait();
    let all = run_ok(&mut c.nnunet(&["logs", &run]));
    assert!(all.contains("run is DONE"), "{all}");
    let starts = all.lines().filter(|l| l.contains(&format!("fold {fold} train RUNNING"))).count();
    let dones = all.lines().filter(|l| l.contains(&format!("fold {fold} train DONE"))).count();
    assert_eq!((starts, dones), (1, 1), "fold {fold} finished before the crash and must not be trained again:\n{all}");
    let st = c.status_json(&run);
    assert_eq!(st["state"], "DONE");
}

#[test]
fn workers_without_the_token_are_refused() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(tmp.path());
    c.start_serve();
    let out = Command::new(bin("nnunet-worker"))
        .args(["--coordinator", &c.url(), "--device", "cpu", "--reconnect-timeout-secs", "5"])
        .env_remove("NNUNET_TOKEN")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "a refused worker must exit 3 (not retryable): {err}");
    assert!(err.contains("refused this worker") && err.contains("token"), "{err}");
    // a bad device is just as final, and is refused before any network call
    let out = Command::new(bin("nnunet-worker")).args(["--coordinator", &c.url(), "--device", "cuda:x"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("bad device \"cuda:x\""), "{err}");
    let out = Command::new(bin("nnunet")).args(["status", "--coordinator", &c.url()]).env_remove("NNUNET_TOKEN").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unauthenticated") || String::from_utf8_lossy(&out.stderr).contains("refused"));
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

/// The keys of a JSON object, in file order (e.g. the labels or regions a summary scores).
fn keys(v: &serde_json::Value) -> Vec<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

/// `nnunet run DS` with five folds on two CPU workers at a tiny budget, in `work/state`: checks that it
/// ends DONE with two folds training at once, and returns the run's model folder for `dataset`.
fn run_five_folds_on_two_workers(work: &Path, ds: &Path, dataset: &str) -> PathBuf {
    let out = run_ok(
        Command::new(bin("nnunet"))
            .arg("run")
            .arg(ds)
            .args(["--workers", "2", "--device", "cpu", "--epochs", "1", "--iters", "2", "--val-iters", "1"])
            .arg("--state-dir")
            .arg(work.join("state"))
            .env("RUST_LOG", "warn"),
    );
    assert!(out.contains("run is DONE"), "{out}");
    assert!(max_parallel_trains(&out) >= 2, "two workers must train folds at the same time:\n{out}");
    let run = std::fs::read_dir(work.join("state/runs")).unwrap().flatten().next().unwrap().path();
    run.join("results").join(dataset).join("nnUNetTrainer__nnUNetPlans__2d")
}

/// The largest number of train tasks RUNNING at once in `nnunet run`'s event lines.
fn max_parallel_trains(lines: &str) -> usize {
    let (mut now, mut max) = (0usize, 0usize);
    for l in lines.lines() {
        if l.contains(" train RUNNING") {
            now += 1;
            max = max.max(now);
        } else if l.contains(" train DONE") || l.contains(" train FAILED") || l.contains(" train PENDING") {
            now = now.saturating_sub(1);
        }
    }
    max
}

#[test]
fn nnunet_run_with_the_resenc_m_planner_trains_five_folds_in_parallel() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(src) = shared_dataset("isbi2012_em") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    subset(&src, &work.join("data"), 10, 0, 48);
    let ds = convert(work, &work.join("data"));
    // A planner we do not know is refused by name before anything runs.
    let out = Command::new(bin("nnunet")).arg("run").arg(&ds).args(["--planner", "ResEncXXL"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("unknown planner \"ResEncXXL\"") && err.contains("ResEncM"), "{err}");
    // No --gpus/--workers/--device: every visible GPU, or CPU workers on a machine without one.
    let (out, err) = run_ok_both(
        Command::new(bin("nnunet"))
            .arg("run")
            .arg(&ds)
            .args(["--epochs", "1", "--iters", "2", "--val-iters", "1", "--planner", "ResEncM"])
            .arg("--state-dir")
            .arg(work.join("state"))
            .env("RUST_LOG", "warn"),
    );
    assert!(out.contains("run is DONE"), "{out}");
    let chose = err.lines().find(|l| l.starts_with("workers: ")).unwrap_or_else(|| panic!("no line says which workers:\n{err}"));
    let cpu_workers: Option<usize> =
        chose.strip_prefix("workers: using ").and_then(|r| r.split(" CPU worker").next()).and_then(|n| n.parse().ok());
    match cpu_workers {
        Some(n) => {
            assert!(chose.contains("no GPU found"), "{chose}");
            assert!(max_parallel_trains(&out) >= n.min(2), "{n} CPU workers must train folds at the same time:\n{out}");
        }
        None => assert!(chose.contains("every visible GPU"), "{chose}"),
    }
    let runs: Vec<PathBuf> = std::fs::read_dir(work.join("state/runs")).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let results = runs[0].join("results/Dataset001_ISBI");
    assert!(!results.join("nnUNetTrainer__nnUNetPlans__2d").exists(), "the default model folder must not be written");
    let md = results.join("nnUNetTrainer__nnUNetResEncUNetMPlans__2d");
    let plans: serde_json::Value = serde_json::from_slice(&std::fs::read(md.join("plans.json")).unwrap()).unwrap();
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(runs[0].join("preprocessed/Dataset001_ISBI/nnUNetResEncUNetMPlans.json")).unwrap()).unwrap();
    assert_eq!(plans, written, "the model folder's plans.json is the planner's nnUNetResEncUNetMPlans.json");
    assert_eq!(plans["plans_name"], "nnUNetResEncUNetMPlans");
    let arch = &plans["configurations"]["2d"]["architecture"];
    assert_eq!(arch["network_class_name"], "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet");
    for f in 0..5 {
        let sidecar: serde_json::Value =
            serde_json::from_slice(&std::fs::read(md.join(format!("fold_{f}/checkpoint_final.json"))).unwrap()).unwrap();
        assert_eq!(
            sidecar["init_args"]["configuration"]["architecture"]["arch_kwargs"]["n_blocks_per_stage"],
            arch["arch_kwargs"]["n_blocks_per_stage"],
            "fold {f} trained the plans' ResidualEncoderUNet"
        );
        assert!(md.join(format!("fold_{f}/validation/summary.json")).is_file(), "fold {f} validated");
    }
    assert!(md.join("crossval_results_folds_0_1_2_3_4/summary.json").is_file());
}

/// Fold packing without a GPU: three CPU workers share one simulated device (the worker's hidden
/// `NNUNET_SIMULATED_DEVICE_MEMORY_MIB`) where only two folds fit. The third fold to start runs out
/// of device memory, is requeued without counting as a failure, the device takes at most two at a
/// time from then on, and the run completes with every fold.
#[test]
fn a_fold_out_of_device_memory_is_retried_with_fewer_neighbours() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let (out, err) = run_ok_both(
        Command::new(bin("nnunet"))
            .arg("run")
            .args(["--workers", "3", "--device", "cpu", "--folds", "0", "1", "2", "--epochs", "1", "--iters", "2", "--val-iters", "1"])
            .arg("--state-dir")
            .arg(work.join("state"))
            .env("NNUNET_SIMULATED_DEVICE_MEMORY_MIB", "4000")
            .env("NNUNET_SIMULATED_FOLD_MEMORY_MIB", "1500")
            .env("NNUNET_SIMULATED_DEVICE_DIR", work.join("simulated-device"))
            .env("RUST_LOG", "warn"),
    );
    assert!(out.contains("run is DONE"), "{out}\n{err}");
    assert!(
        out.contains("out of device memory with 3 tasks") && out.contains("at most 2 at a time"),
        "the third fold must run out of memory and be retried with fewer neighbours:\n{out}"
    );
    assert!(!out.contains("FAILED"), "{out}");
    let state = work.join("state");
    let runs: Vec<PathBuf> = std::fs::read_dir(state.join("runs")).unwrap().flatten().map(|e| e.path()).collect();
    let md = runs[0].join("results/Dataset999_Synthetic/nnUNetTrainer__nnUNetPlans__2d");
    for f in 0..3 {
        assert!(md.join(format!("fold_{f}/checkpoint_final.safetensors")).is_file(), "fold {f} trained");
    }
    let leftovers: Vec<_> =
        std::fs::read_dir(work.join("simulated-device")).unwrap().flatten().filter(|e| e.file_name() != ".lock").collect();
    assert!(leftovers.is_empty(), "every fold released its share of the device: {leftovers:?}");
}
