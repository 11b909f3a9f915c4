//! The web dashboard with real processes: `nnunet serve` (dashboard on its `--http-listen`
//! listener), one CPU `nnunet-worker`, a tiny synthetic dataset, headless Chromium driven over the
//! DevTools protocol. Checks the login, that the run, its five folds and chart points appear and
//! grow while training runs, the workers page on a machine without NVML, `/metrics`, the TensorBoard
//! event files (read back by the `tensorboard` package), and that nothing but health is served
//! without the token.
mod cdp;
mod http;

use http::{get, request};
use nnunet_tests::bin;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
const TOKEN: &str = "dash-token-0123456789abcdef0123456789";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Procs(Vec<Child>);
impl Procs {
    /// Starts `cmd` with its stdout and stderr in `log`; killed when `Procs` drops.
    fn spawn(&mut self, cmd: &mut Command, log: &Path) {
        let log = std::fs::File::create(log).unwrap();
        self.0.push(cmd.stdout(Stdio::from(log.try_clone().unwrap())).stderr(Stdio::from(log)).spawn().unwrap());
    }
}
impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `nnunet serve` with the dashboard; returns (gRPC url, HTTP address).
fn serve(work: &Path, procs: &mut Procs) -> (String, String) {
    std::fs::write(work.join("token"), TOKEN).unwrap();
    let (grpc, web) = (free_port(), free_port());
    procs.spawn(
        Command::new(bin("nnunet"))
            .args(["serve", "--listen", &format!("127.0.0.1:{grpc}"), "--http-listen", &format!("127.0.0.1:{web}"), "--threads", "1"])
            .arg("--state-dir")
            .arg(work.join("state"))
            .arg("--token-file")
            .arg(work.join("token")),
        &work.join("serve.log"),
    );
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", web)).is_err() || std::net::TcpStream::connect(("127.0.0.1", grpc)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(30), "coordinator did not start; see {}", work.join("serve.log").display());
        std::thread::sleep(Duration::from_millis(100));
    }
    (format!("http://127.0.0.1:{grpc}"), format!("127.0.0.1:{web}"))
}

fn dataset(work: &Path) -> PathBuf {
    nnunet_tests::synthetic_dataset(work, 12, 64, 7, "Dash")
}

fn js_points(b: &mut cdp::Browser) -> Vec<u64> {
    let v = b.eval("[...document.querySelectorAll('section.fold')].map(s => +s.dataset.points)");
    v.as_array().map(|a| a.iter().filter_map(|x| x.as_u64()).collect()).unwrap_or_default()
}

#[test]
fn dashboard_follows_a_five_fold_run_and_tensorboard_reads_every_epoch() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let ds = dataset(work);
    let mut procs = Procs(vec![]);
    let (grpc, web) = serve(work, &mut procs);
    let out = Command::new(bin("nnunet"))
        .args(["submit", "--coordinator", &grpc, "--epochs", "4", "--iters", "2", "--val-iters", "1"])
        .arg("--token-file")
        .arg(work.join("token"))
        .arg("--dataset")
        .arg(&ds)
        .output()
        .unwrap();
    assert!(out.status.success(), "submit: {}", String::from_utf8_lossy(&out.stderr));
    let run = String::from_utf8_lossy(&out.stdout).trim().to_string();

    let mut b = cdp::Browser::start(&work.join("chromium.log"));
    // Not logged in: the page sends the browser to the login form.
    b.navigate(&format!("http://{web}/"));
    b.wait_for("location.pathname === '/login' && !!document.getElementById('token')", Duration::from_secs(20));
    b.eval(&format!("document.getElementById('token').value = '{TOKEN}'; document.getElementById('login').submit(); true"));
    b.wait_for(&format!("!!document.querySelector('tr[data-run=\"{run}\"]')"), Duration::from_secs(30));
    assert_eq!(b.eval("document.cookie.includes('nnunet_session')"), serde_json::json!(false), "the session cookie is HttpOnly");

    b.navigate(&format!("http://{web}/run/{run}"));
    b.wait_for("document.querySelectorAll('section.fold').length === 5", Duration::from_secs(30));
    let folds = b.eval("[...document.querySelectorAll('section.fold')].map(s => +s.dataset.fold)");
    assert_eq!(folds, serde_json::json!([0, 1, 2, 3, 4]));
    // The worker starts only now, with the page open on a run that has not trained yet: the first
    // chart point arrives while the page watches, so there is always a later one to wait for (a
    // browser that starts slowly, as on a fresh machine, must not miss the whole run).
    assert_eq!(js_points(&mut b).iter().sum::<u64>(), 0, "no epoch before a worker exists");
    procs.spawn(
        Command::new(bin("nnunet-worker"))
            .args(["--coordinator", &grpc, "--device", "cpu", "--threads", "1", "--exit-when-idle"])
            .arg("--token-file")
            .arg(work.join("token"))
            .arg("--cache-dir")
            .arg(work.join("cache")),
        &work.join("worker.log"),
    );
    b.wait_for("[...document.querySelectorAll('section.fold')].some(s => +s.dataset.points >= 1)", Duration::from_secs(600));
    let first: u64 = js_points(&mut b).iter().sum();
    assert!(first < 20, "the page saw the first epochs only once all 20 (5 folds x 4) were trained");
    assert!(b.eval("document.querySelectorAll('section.fold canvas').length >= 10") == serde_json::json!(true), "two charts per fold");
    // Epochs keep arriving over the event stream while the page stays open.
    b.wait_for(
        &format!("[...document.querySelectorAll('section.fold')].reduce((a, s) => a + +s.dataset.points, 0) > {first}"),
        Duration::from_secs(600),
    );
    let later: u64 = js_points(&mut b).iter().sum();
    println!("chart points: {first} at first sight, {later} later, without reloading");
    assert!(
        b.eval("document.querySelectorAll('#tasks tr').length >= 11") == serde_json::json!(true),
        "task table: 1+ preprocess, 5 train, 5 validate"
    );
    assert!(b.eval("document.querySelectorAll('#log li').length > 3") == serde_json::json!(true), "event log");

    // The run finishes: every fold has all its epochs plotted and the CV table appears.
    b.wait_for("!!document.querySelector('#cv')", Duration::from_secs(900));
    b.wait_for("[...document.querySelectorAll('section.fold')].every(s => +s.dataset.points === 4)", Duration::from_secs(30));
    // Into the build's temp folder, not the source tree; NNUNET_SCREENSHOT=$PWD/docs/dashboard.png refreshes the README image.
    let shot = std::env::var_os("NNUNET_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png"));
    if let Some(dir) = shot.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).unwrap();
    }
    b.screenshot(&shot);
    assert!(std::fs::read(&shot).unwrap().starts_with(b"\x89PNG"), "a PNG screenshot at {}", shot.display());

    // Workers page on a CPU worker: device shown, GPU values absent (no NVML), never an error.
    b.navigate(&format!("http://{web}/workers"));
    b.wait_for("document.querySelectorAll('tr[data-worker]').length === 1", Duration::from_secs(20));
    let row = b.eval("document.querySelector('tr[data-worker]').innerText");
    assert!(row.as_str().unwrap().contains("cpu"), "{row}");

    let metrics = get(&web, "/metrics", &[]).2;
    assert!(metrics.contains("nnunet_worker_rss_bytes{"), "worker RSS is exported");
    assert!(metrics.contains("nnunet_fold_pseudo_dice_class{"), "per-class pseudo-Dice is exported");
    assert!(metrics.contains("nnunet_fold_dataloader_wait_seconds{"));
    assert!(!metrics.contains("nnunet_worker_gpu_utilization_percent{"), "no NVML on a CPU worker: no GPU values, not zeros");

    check_tensorboard(&work.join("state/runs").join(&run).join("results/Dataset007_Dash/nnUNetTrainer__nnUNetPlans__2d"));
}

/// The `tensorboard` package's own event reader must find every epoch's scalars in each fold.
fn check_tensorboard(model_dir: &Path) {
    let py = std::env::var_os("NNUNET_TB_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"));
    let script = r#"
import glob, json, os, sys
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
out = {}
for fold in sorted(glob.glob(os.path.join(sys.argv[1], "fold_*"))):
    scal = {}
    for f in sorted(glob.glob(os.path.join(fold, "events.out.tfevents.*"))):
        for ev in EventFileLoader(f).Load():
            for v in ev.summary.value:
                val = v.simple_value if v.HasField("simple_value") else None
                if val is None and v.HasField("tensor"):
                    import numpy as np
                    from tensorboard.util import tensor_util
                    val = float(tensor_util.make_ndarray(v.tensor))
                scal.setdefault(v.tag, {})[str(ev.step)] = val
    out[os.path.basename(fold)] = scal
print(json.dumps(out))
"#;
    let out = Command::new(&py).arg("-c").arg(script).arg(model_dir).output().unwrap_or_else(|e| {
        panic!("{} not runnable ({e}): run scripts/setup.sh (it installs tensorboard into .venv) or set NNUNET_TB_PYTHON", py.display())
    });
    assert!(
        out.status.success(),
        "reading the event files with tensorboard failed (scripts/setup.sh installs it into .venv):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for k in 0..5 {
        let fold = format!("fold_{k}");
        let log = nnunet_common::train_log::read_jsonl(&model_dir.join(&fold).join("training_log.jsonl")).unwrap();
        assert_eq!(log.len(), 4, "{fold} trained 4 epochs");
        for m in &log {
            let step = m.epoch.to_string();
            for (tag, want) in nnunet_common::tensorboard::epoch_scalars(m) {
                let v = &got[&fold][&tag][&step];
                let ok = match v.as_f64() {
                    Some(x) => (x as f32 == want) || (want.is_nan() && x.is_nan()),
                    None => want.is_nan(), // NaN arrives as JSON NaN or null
                };
                assert!(ok, "{fold} epoch {step} {tag}: tensorboard read {v}, the training log says {want}");
            }
        }
    }
    println!("tensorboard read {} scalar tags of 4 epochs in each of 5 folds", got["fold_0"].as_object().map_or(0, |o| o.len()));
}

#[test]
fn without_the_token_only_health_is_served() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let mut procs = Procs(vec![]);
    let (_, web) = serve(tmp.path(), &mut procs);
    assert_eq!(get(&web, "/healthz", &[]).0, 200);
    let (code, headers, body) = get(&web, "/", &[]);
    assert_eq!(code, 303, "{body}");
    assert!(headers.to_lowercase().contains("location: /login"), "{headers}");
    assert!(!body.contains("app.js"));
    for p in ["/api/runs", "/api/workers", "/api/live", "/api/runs/x/events", "/api/me"] {
        assert_eq!(get(&web, p, &[]).0, 401, "{p} without a token");
        assert_eq!(get(&web, p, &[("authorization", "Bearer wrong-token-0123456789")]).0, 401, "{p} with a wrong token");
        assert_eq!(get(&web, p, &[("cookie", "nnunet_session=forged")]).0, 401, "{p} with a forged session");
    }
    assert_eq!(get(&web, "/assets/app.js", &[]).0, 303, "assets need a login too");
    // A wrong login sets no cookie.
    let (code, headers, _) = request(&web, "POST", "/login", &[("content-type", "application/x-www-form-urlencoded")], b"token=nope");
    assert_eq!(code, 303);
    assert!(!headers.to_lowercase().contains("set-cookie"), "{headers}");
    // The right one does: HttpOnly, SameSite=Strict; the cookie then opens the page and the stream.
    let (code, headers, _) =
        request(&web, "POST", "/login", &[("content-type", "application/x-www-form-urlencoded")], format!("token={TOKEN}").as_bytes());
    assert_eq!(code, 303);
    let cookie_line = headers.lines().find(|l| l.to_lowercase().starts_with("set-cookie:")).expect("a session cookie");
    assert!(cookie_line.contains("HttpOnly") && cookie_line.contains("SameSite=Strict"), "{cookie_line}");
    let session = cookie_line.split(':').nth(1).unwrap().split(';').next().unwrap().trim().to_string();
    assert!(!session.contains(TOKEN), "the cookie holds a session id, not the token");
    assert_eq!(get(&web, "/", &[("cookie", &session)]).0, 200);
    let (code, headers, _) = http::get_head(&web, "/api/live", &[("cookie", &session)]);
    assert_eq!(code, 200);
    assert!(headers.contains("text/event-stream"), "{headers}");
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(get(&web, "/api/runs", &[("authorization", &bearer)]).0, 200);
    // Steering: needs the steer header (no cross-site form can send it), then a known run.
    let (code, _, body) = request(&web, "POST", "/api/runs/nope/cancel", &[("cookie", &session)], b"");
    assert_eq!(code, 403, "{body}");
    assert_eq!(request(&web, "POST", "/api/runs/nope/cancel", &[("cookie", &session), ("x-nnunet-steer", "1")], b"").0, 404);
    assert_eq!(request(&web, "POST", "/api/runs/nope/cancel", &[("x-nnunet-steer", "1")], b"").0, 401);

    // In a browser: the event stream is refused too (EventSource gives up on a 401).
    let mut b = cdp::Browser::start(&tmp.path().join("chromium.log"));
    b.navigate(&format!("http://{web}/login"));
    b.eval("window.__es = new EventSource('/api/live'); window.__state = 'open'; __es.onerror = () => { window.__state = __es.readyState; }; __es.onmessage = () => { window.__state = 'data'; }; true");
    b.wait_for("window.__state === EventSource.CLOSED", Duration::from_secs(20));
    b.navigate(&format!("http://{web}/run/anything"));
    b.wait_for("location.pathname === '/login'", Duration::from_secs(20));
}
