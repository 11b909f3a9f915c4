//! The processes of the chaos test: one `nnunet serve`, a few `nnunet-worker`s and a `nnunet watch`,
//! all on loopback, each killable with SIGKILL and restartable with the same state and cache folders.
use nnunet_tests::bin;
pub use nnunet_tests::run_ok;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const TOKEN: &str = "chaos-token-0123456789abcdef0123456789";

/// One worker slot: the process (when alive), its cache folder and how often it was started.
pub struct WorkerSlot {
    pub child: Option<Child>,
    pub cache: PathBuf,
    pub log: PathBuf,
    pub shared_fs: bool,
    pub starts: u32,
    /// Exit statuses of processes that ended on their own (not killed by the driver).
    pub exits: Vec<String>,
}

pub struct Cluster {
    pub work: PathBuf,
    pub port: u16,
    pub token_file: PathBuf,
    pub lease_ttl_secs: u64,
    pub serve: Option<Child>,
    pub serve_starts: u32,
    pub workers: Vec<WorkerSlot>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn append_log(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap()
}

/// Runs a command to completion, panicking with its output when it fails; returns stdout.
impl Cluster {
    pub fn new(work: &Path, n_workers: usize, lease_ttl_secs: u64) -> Self {
        let token_file = work.join("token");
        std::fs::write(&token_file, TOKEN).unwrap();
        let workers = (0..n_workers)
            .map(|i| WorkerSlot {
                child: None,
                cache: work.join(format!("cache-{i}")),
                log: work.join(format!("worker-{i}.log")),
                // The last worker downloads its inputs over gRPC; the others read the run dir in place.
                shared_fs: n_workers == 1 || i + 1 < n_workers,
                starts: 0,
                exits: vec![],
            })
            .collect();
        Cluster { work: work.to_path_buf(), port: free_port(), token_file, lease_ttl_secs, serve: None, serve_starts: 0, workers }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.work.join("state")
    }

    /// Starts (or restarts, with the same state dir and port) the coordinator and waits until it accepts.
    pub fn start_serve(&mut self) {
        let log = append_log(&self.work.join("serve.log"));
        let child = Command::new(bin("nnunet"))
            .args(["serve", "--listen", &format!("127.0.0.1:{}", self.port), "--threads", "1"])
            .args(["--lease-ttl-secs", &self.lease_ttl_secs.to_string()])
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--token-file")
            .arg(&self.token_file)
            .env("NNUNET_LOG", "info")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.serve = Some(child);
        self.serve_starts += 1;
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(st) = self.serve.as_mut().unwrap().try_wait().unwrap() {
                panic!("the coordinator exited at start ({st}); see {}", self.work.join("serve.log").display());
            }
            assert!(t.elapsed() < Duration::from_secs(60), "coordinator did not start; see {}", self.work.join("serve.log").display());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill_serve(&mut self) -> u32 {
        let mut c = self.serve.take().expect("coordinator running");
        let pid = c.id();
        c.kill().unwrap(); // SIGKILL
        c.wait().unwrap();
        pid
    }

    pub fn start_worker(&mut self, i: usize) {
        let url = self.url();
        let slot = &mut self.workers[i];
        assert!(slot.child.is_none(), "worker {i} is running");
        let log = append_log(&slot.log);
        let mut cmd = Command::new(bin("nnunet-worker"));
        cmd.args(["--coordinator", &url, "--device", "cpu", "--threads", "1", "--exit-when-idle"])
            .arg("--token-file")
            .arg(&self.token_file)
            .arg("--cache-dir")
            .arg(&slot.cache)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        if !slot.shared_fs {
            cmd.arg("--no-shared-fs");
        }
        slot.child = Some(cmd.spawn().unwrap());
        slot.starts += 1;
    }

    pub fn kill_worker(&mut self, i: usize) -> u32 {
        let mut c = self.workers[i].child.take().expect("worker running");
        let pid = c.id();
        c.kill().unwrap(); // SIGKILL
        c.wait().unwrap();
        pid
    }

    /// Workers whose process is alive; reaps (and records) those that exited on their own.
    pub fn live_workers(&mut self) -> Vec<usize> {
        let mut live = vec![];
        for (i, s) in self.workers.iter_mut().enumerate() {
            if let Some(c) = s.child.as_mut() {
                match c.try_wait().unwrap() {
                    None => live.push(i),
                    Some(st) => {
                        s.exits.push(st.to_string());
                        s.child = None;
                    }
                }
            }
        }
        live
    }

    pub fn nnunet(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin("nnunet"));
        c.args(args).args(["--coordinator", &self.url()]).arg("--token-file").arg(&self.token_file);
        c
    }

    /// `nnunet watch RUN --lines`: its stdout lines go to a channel, its stderr to `watch.err`.
    pub fn watch(&self, run: &str) -> (Child, mpsc::Receiver<String>) {
        let err = append_log(&self.work.join("watch.err"));
        let mut child = self.nnunet(&["watch", run, "--lines"]).stdout(Stdio::piped()).stderr(Stdio::from(err)).spawn().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (child, rx)
    }

    /// Waits up to `timeout` for every worker to exit on its own (`--exit-when-idle`).
    pub fn wait_workers_idle(&mut self, timeout: Duration) -> bool {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if self.live_workers().is_empty() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for s in &mut self.workers {
            if let Some(c) = s.child.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if let Some(s) = &mut self.serve {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

/// A tiny dataset: the built-in synthetic images converted with `nnunet convert` (Dataset998_Chaos).
pub fn synthetic_dataset(work: &Path, cases: usize, size: usize) -> PathBuf {
    nnunet_tests::synthetic_dataset(work, cases, size, 998, "Chaos")
}
