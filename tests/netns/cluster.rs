//! The processes of a namespace test: `nnunet serve` in the coordinator's namespace, one
//! `nnunet-worker --no-shared-fs` per worker namespace (with its own cache folder, and the
//! coordinator's folder hidden from it by a tmpfs mounted over it in the worker's mount namespace),
//! and the user's `nnunet submit/watch/status/logs` in the "ctl" namespace. Every line a process
//! prints is stamped with the seconds since the cluster started, so the test can time events.
//!
//! Children get `PR_SET_PDEATHSIG(SIGKILL)`: they die with the test process even when it is killed
//! before [`Cluster`]'s Drop runs (the namespaces are then removed by the next run or the cleanup script).
use crate::lab::{http_get, Host, Lab, COORD_NAME};
use nnunet_tests::bin;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const TOKEN: &str = "netns-token-0123456789abcdef0123456789";
pub const GRPC_PORT: u16 = 50051;
pub const METRICS_PORT: u16 = 9090;

/// A line printed by a process, with the seconds since the cluster started.
#[derive(Clone, Debug)]
pub struct Line {
    pub t: f64,
    pub text: String,
}

/// A process running in a namespace, its output stamped into `log` (and kept in memory).
pub struct Proc {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<Line>>>,
}

impl Proc {
    pub fn text(&self) -> String {
        self.lines.lock().unwrap().iter().map(|l| format!("{:8.2} {}", l.t, l.text)).collect::<Vec<_>>().join("\n")
    }
    /// The first line at or after `since` seconds that contains `pat`.
    pub fn find_after(&self, since: f64, pat: &str) -> Option<Line> {
        self.lines.lock().unwrap().iter().find(|l| l.t >= since && l.text.contains(pat)).cloned()
    }
    fn stop(&mut self) {
        // SAFETY: SIGTERM to our own child, then SIGKILL after a grace period.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(3) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Cluster {
    pub lab: Lab,
    pub work: PathBuf,
    pub start: Instant,
    pub ctl: Host,
    pub coord: Host,
    pub serve: Option<Proc>,
    pub workers: Vec<(Host, Proc)>,
    pub lease_ttl_secs: u64,
}

/// `ip netns exec <ns> <prog> args...`, dying with the test process.
fn in_ns(ns: &str, prog: &Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(prog);
    // SAFETY: prctl(2) between fork and exec, async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c
}

/// Copies a child's stdout+stderr lines, stamped, into `log` and memory; sends stdout lines to `tx`.
fn spawn_stamped(mut cmd: Command, log: PathBuf, start: Instant, tx: Option<mpsc::Sender<Line>>) -> Proc {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let lines: Arc<Mutex<Vec<Line>>> = Arc::default();
    let file = Arc::new(Mutex::new(std::fs::File::create(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()))));
    let pump = |r: Box<dyn std::io::Read + Send>, tx: Option<mpsc::Sender<Line>>| {
        let (lines, file) = (lines.clone(), file.clone());
        std::thread::spawn(move || {
            for text in BufReader::new(r).lines().map_while(Result::ok) {
                let l = Line { t: start.elapsed().as_secs_f64(), text };
                let _ = writeln!(file.lock().unwrap(), "{:8.2} {}", l.t, l.text);
                lines.lock().unwrap().push(l.clone());
                if let Some(tx) = &tx {
                    if tx.send(l).is_err() {
                        return;
                    }
                }
            }
        });
    };
    pump(Box::new(child.stdout.take().unwrap()), tx);
    pump(Box::new(child.stderr.take().unwrap()), None);
    Proc { child, lines }
}

impl Cluster {
    /// A lab with the user's machine ("ctl", .10) and the coordinator's host ("c", .2).
    pub fn new(work: &Path, lease_ttl_secs: u64) -> Cluster {
        let mut lab = Lab::new();
        let coord_addr = std::net::Ipv4Addr::new(10, 77, 0, 2);
        let ctl = lab.add_host("ctl", 10, coord_addr);
        let coord = lab.add_host("c", 2, coord_addr);
        for d in ["coord", "ctl"] {
            std::fs::create_dir_all(work.join(d)).unwrap();
            std::fs::write(work.join(d).join("token"), TOKEN).unwrap();
        }
        println!("netns lab {}: namespaces {}-*, work folder {}", lab.prefix, lab.prefix, work.display());
        Cluster { lab, work: work.to_path_buf(), start: Instant::now(), ctl, coord, serve: None, workers: vec![], lease_ttl_secs }
    }

    pub fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.work.join("coord/state")
    }

    /// Starts `nnunet serve` on `host` (the coordinator's state stays in `coord/state`).
    pub fn start_serve(&mut self, host: &Host) {
        let mut cmd = in_ns(&host.ns, &bin("nnunet"));
        cmd.args(["serve", "--listen", &format!("{}:{GRPC_PORT}", host.addr)])
            .args(["--metrics-listen", &format!("{}:{METRICS_PORT}", host.addr)])
            .args(["--lease-ttl-secs", &self.lease_ttl_secs.to_string(), "--threads", "1"])
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--token-file")
            .arg(self.work.join("coord/token"))
            .env("NNUNET_LOG", "info");
        let n = std::fs::read_dir(&self.work).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with("serve")).count();
        self.coord = host.clone();
        self.serve = Some(spawn_stamped(cmd, self.work.join(format!("serve-{n}.log")), self.start, None));
        let t = Instant::now();
        while self.metrics().is_err() {
            assert!(t.elapsed() < Duration::from_secs(30), "coordinator did not start:\n{}", self.serve.as_ref().unwrap().text());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn kill_serve(&mut self) {
        if let Some(mut s) = self.serve.take() {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
    }

    /// Adds a worker host `w<i>` (10.77.0.2x) and starts `nnunet-worker --no-shared-fs` on it.
    pub fn start_worker(&mut self) -> usize {
        let i = self.workers.len();
        let host = self.lab.add_host(&format!("w{i}"), 21 + i as u8, self.coord.addr);
        let dir = self.work.join(format!("w{i}"));
        std::fs::create_dir_all(dir.join("cache")).unwrap();
        std::fs::write(dir.join("token"), TOKEN).unwrap();
        // In the worker's own mount namespace (`ip netns exec` makes one), a tmpfs hides the
        // coordinator's folder: it cannot read the run directory even by accident.
        let mut cmd = in_ns(&host.ns, Path::new("sh"));
        cmd.args(["-c", "mount -t tmpfs -o size=64k,mode=000 nnunet-hidden \"$1\" || exit 97; shift; exec \"$@\"", "sh"])
            .arg(self.work.join("coord"))
            .arg(bin("nnunet-worker"))
            .args(["--coordinator", &format!("http://{COORD_NAME}:{GRPC_PORT}"), "--device", "cpu", "--threads", "1", "--no-shared-fs"])
            .arg("--token-file")
            .arg(dir.join("token"))
            .arg("--cache-dir")
            .arg(dir.join("cache"));
        let p = spawn_stamped(cmd, self.work.join(format!("worker-{i}.log")), self.start, None);
        self.workers.push((host, p));
        i
    }

    /// Waits until `n` workers are registered (from `/metrics`).
    pub fn wait_workers(&mut self, n: usize, timeout: Duration) {
        let t = Instant::now();
        loop {
            if self.metric("nnunet_workers_registered").unwrap_or(0.0) as usize >= n {
                return;
            }
            for (i, (_, w)) in self.workers.iter_mut().enumerate() {
                if let Ok(Some(st)) = w.child.try_wait() {
                    let why = if st.code() == Some(97) { " (could not mount a tmpfs over the coordinator's folder)" } else { "" };
                    panic!("worker {i} exited with {st}{why}:\n{}", w.text());
                }
            }
            assert!(t.elapsed() < timeout, "{n} workers did not register; worker 0:\n{}", self.workers[0].1.text());
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// `nnunet <args> --coordinator http://<name>:port --token-file ...` on the user's host.
    pub fn nnunet(&self, args: &[&str]) -> Command {
        let mut c = in_ns(&self.ctl.ns, &bin("nnunet"));
        c.args(args)
            .args(["--coordinator", &format!("http://{COORD_NAME}:{GRPC_PORT}")])
            .arg("--token-file")
            .arg(self.work.join("ctl/token"));
        c
    }

    pub fn run_ok(&self, args: &[&str]) -> String {
        let out = self.nnunet(args).output().expect("spawn nnunet");
        assert!(
            out.status.success(),
            "nnunet {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn status_json(&self, run: &str) -> serde_json::Value {
        serde_json::from_str(&self.run_ok(&["status", run, "--json"])).expect("status --json")
    }

    /// `nnunet watch RUN --lines` from the user's host, its stamped lines sent to a channel.
    pub fn watch(&self, run: &str) -> (Proc, mpsc::Receiver<Line>) {
        let (tx, rx) = mpsc::channel();
        let p = spawn_stamped(self.nnunet(&["watch", run, "--lines"]), self.work.join("watch.log"), self.start, Some(tx));
        (p, rx)
    }

    /// The coordinator's `/metrics`, fetched from the user's host.
    pub fn metrics(&self) -> Result<String, String> {
        http_get(&self.ctl.ns, (self.coord.addr, METRICS_PORT).into(), "/metrics")
    }

    /// The value of a metric, summed over its labelled series (`name{...} v`) if it has labels.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let m = self.metrics().ok()?;
        let values: Vec<f64> = m
            .lines()
            .filter_map(|l| {
                let r = l.strip_prefix(name)?;
                let r = if r.starts_with('{') { r.split_once('}')?.1 } else { r };
                r.strip_prefix(' ')?.trim().parse().ok()
            })
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    /// Which of our workers holds `worker_id` (its log names the id when it registers).
    pub fn worker_index(&self, worker_id: &str) -> usize {
        self.workers.iter().position(|(_, p)| p.text().contains(worker_id)).unwrap_or_else(|| panic!("no worker log names {worker_id}"))
    }

    /// Epoch lines (`epoch N/M ...`) a worker printed, as (time, N).
    pub fn worker_epochs(&self, i: usize) -> Vec<(f64, u32)> {
        self.workers[i].1.lines.lock().unwrap().iter().filter_map(|l| epoch_of_line(&l.text).map(|e| (l.t, e))).collect()
    }
}

/// `epoch N/M  lr ...` (the worker's per-epoch console line) -> N.
pub fn epoch_of_line(text: &str) -> Option<u32> {
    let rest = text.trim_start().strip_prefix("epoch ")?;
    let (n, m) = rest.split_once('/')?;
    m.chars().next().filter(|c| c.is_ascii_digit())?;
    n.parse().ok()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, w) in &mut self.workers {
            w.stop();
        }
        if let Some(s) = &mut self.serve {
            s.stop();
        }
        // The Lab (a field) is dropped after this: namespaces, links and /etc/netns entries go.
    }
}

/// Waits for a line matching `pred`, collecting all lines seen.
pub fn wait_line(rx: &mpsc::Receiver<Line>, seen: &mut Vec<Line>, timeout: Duration, what: &str, pred: impl Fn(&str) -> bool) -> Line {
    let t = Instant::now();
    let dump = |seen: &Vec<Line>| seen.iter().map(|l| format!("{:8.2} {}", l.t, l.text)).collect::<Vec<_>>().join("\n");
    loop {
        let Some(left) = timeout.checked_sub(t.elapsed()) else { panic!("timed out waiting for {what}; saw:\n{}", dump(seen)) };
        match rx.recv_timeout(left) {
            Ok(l) => {
                seen.push(l.clone());
                if pred(&l.text) {
                    return l;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("timed out waiting for {what}; saw:\n{}", dump(seen)),
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("watch ended before {what}; saw:\n{}", dump(seen)),
        }
    }
}

/// Collects the lines that arrive within `d`.
pub fn drain(rx: &mpsc::Receiver<Line>, seen: &mut Vec<Line>, d: Duration) {
    let t = Instant::now();
    while let Some(left) = d.checked_sub(t.elapsed()) {
        match rx.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(l) => seen.push(l),
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Err(_) => {}
        }
    }
}

/// The watch lines between two times, for the report.
pub fn excerpt(seen: &[Line], from: f64, to: f64) -> String {
    seen.iter().filter(|l| l.t >= from && l.t <= to).map(|l| format!("  {:7.2}s | {}", l.t, l.text)).collect::<Vec<_>>().join("\n")
}
