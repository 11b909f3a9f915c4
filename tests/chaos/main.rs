//! Chaos test of the distributed runner, with real processes on loopback: a five-fold run of a tiny
//! synthetic dataset on CPU workers while a seeded driver kills workers and the coordinator with
//! SIGKILL at random moments and restarts them (the coordinator on the same state dir and port, a
//! worker on the same cache dir). Afterwards it checks the invariants:
//!
//! 1. the run completes (DONE, every fold trained and validated, a CV summary);
//! 2. no fold's final training history (`training_log.jsonl`, the final checkpoint's `logging`) has
//!    an epoch twice or missing;
//! 3. fencing tokens never go backwards (every task's token, followed in the coordinator's database
//!    across restarts) and each fold's task is leased with growing attempt numbers (the journal);
//! 4. every artifact's sha256 matches its content (checkpoint sidecars, preprocessed case files), in
//!    the run directory and in the worker caches;
//! 5. no temporary file is left in the state dir or the worker caches;
//! 6. no event is lost for a watcher: one `nnunet watch` started before the first kill, reconnecting
//!    by itself, sees the journal's sequence numbers 0..N without a gap or a duplicate, and the same
//!    lines as `nnunet logs`.
//!
//! Found with it on the code before issue 12's hardening (each reported as a violation when hit;
//! whether a run hits them depends on where the kills land):
//! - A coordinator killed during a checkpoint upload leaves the upload's temp file
//!   (`fold_K/.checkpoint_*.safetensors.upload-<task>-<token>`, ~15 MB here) in the run dir for good:
//!   a restarted coordinator does not sweep them.
//! - Weights and sidecar are two uploads that replace `checkpoint_latest.{safetensors,json}` in place:
//!   a kill between the weights of epoch N+1 and their sidecar leaves new weights next to the old
//!   sidecar; every later attempt fails "checkpoint ... is corrupt or does not belong to its sidecar"
//!   and the run FAILS after the last attempt (3 of the first 6 runs here: short seed 7, long seeds 1 and 2).
//! - Writes for a task of a run that already FAILED are still accepted and journaled after the
//!   terminal event, which no watcher receives.
//!
//! The default is a short run for CI (a few kills, about a minute on 2 cores); `scripts/chaos_long.sh`
//! runs it with more kills and epochs. Knobs (environment): CHAOS_SEED, CHAOS_KILLS, CHAOS_EPOCHS,
//! CHAOS_ITERS, CHAOS_WORKERS, CHAOS_GAP_MIN_S, CHAOS_GAP_MAX_S, CHAOS_CASES, CHAOS_SIZE,
//! CHAOS_TIMEOUT_S, CHAOS_KEEP (keep the work folder and print where it is).
mod cluster;
mod fence;
mod invariants;

use cluster::{run_ok, Cluster};
use std::time::{Duration, Instant};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// splitmix64: a seeded, dependency-free source of the driver's random choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Victim {
    Coordinator,
    Worker(usize),
}

struct Config {
    seed: u64,
    kills: usize,
    epochs: u32,
    iters: u32,
    workers: usize,
    gap: (f64, f64),
    cases: usize,
    size: usize,
    timeout: Duration,
}

impl Config {
    fn from_env() -> Self {
        Config {
            seed: env("CHAOS_SEED", 7),
            kills: env("CHAOS_KILLS", 3),
            epochs: env("CHAOS_EPOCHS", 16),
            iters: env("CHAOS_ITERS", 2),
            workers: env("CHAOS_WORKERS", 2),
            gap: (env("CHAOS_GAP_MIN_S", 1.5), env("CHAOS_GAP_MAX_S", 4.0)),
            cases: env("CHAOS_CASES", 10),
            size: env("CHAOS_SIZE", 48),
            timeout: Duration::from_secs(env("CHAOS_TIMEOUT_S", 600)),
        }
    }
}

/// Which process each kill hits: about a third the coordinator, at least one of each kind.
fn kill_plan(rng: &mut Rng, kills: usize) -> Vec<bool> {
    let n_coord = if kills >= 2 { (kills / 3).max(1) } else { 0 };
    let mut plan: Vec<bool> = (0..kills).map(|i| i < n_coord).collect();
    for i in (1..plan.len()).rev() {
        let j = rng.below(i + 1);
        plan.swap(i, j);
    }
    // The first two kills hit one of each kind, so a run that ends early has still survived both.
    if kills >= 2 && plan[0] == plan[1] {
        let other = plan.iter().position(|&p| p != plan[0]).expect("both kinds planned");
        plan.swap(1, other);
    }
    plan
}

struct Kill {
    at_s: f64,
    victim: Victim,
    pid: u32,
    /// The last event line the watcher had seen: where in the run the kill landed.
    during: String,
}

/// Runs the kill schedule until the run ends; returns the kills and every line the watcher printed.
fn drive(
    c: &mut Cluster,
    cfg: &Config,
    rng: &mut Rng,
    watch: &mut std::process::Child,
    rx: &std::sync::mpsc::Receiver<String>,
) -> (Vec<Kill>, Vec<String>) {
    let plan = kill_plan(rng, cfg.kills);
    let start = Instant::now();
    let mut next_kill = start + Duration::from_secs_f64(rng.uniform(cfg.gap.0, cfg.gap.1));
    let mut restarts: Vec<(Instant, Victim)> = vec![];
    let mut kills: Vec<Kill> = vec![];
    let mut seen: Vec<String> = vec![];
    let mut ended = false;
    loop {
        while let Ok(l) = rx.try_recv() {
            ended |= ["DONE", "FAILED", "CANCELLED"].iter().any(|s| l.contains(&format!("run is {s}")));
            seen.push(l);
        }
        if ended || watch.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            start.elapsed() < cfg.timeout,
            "the run did not finish within {:?} under chaos; last events:\n{}",
            cfg.timeout,
            seen.iter().rev().take(30).rev().cloned().collect::<Vec<_>>().join("\n")
        );
        let now = Instant::now();
        for (when, v) in std::mem::take(&mut restarts) {
            if when > now {
                restarts.push((when, v));
                continue;
            }
            match v {
                Victim::Coordinator => c.start_serve(),
                Victim::Worker(i) => c.start_worker(i),
            }
            println!("chaos: t={:.1}s restarted {v:?}", start.elapsed().as_secs_f64());
        }
        let live = c.live_workers();
        if kills.len() < plan.len() && now >= next_kill {
            let victim = if plan[kills.len()] {
                c.serve.is_some().then_some(Victim::Coordinator)
            } else if live.is_empty() {
                None
            } else {
                Some(Victim::Worker(live[rng.below(live.len())]))
            };
            match victim {
                None => next_kill = now + Duration::from_millis(500),
                Some(v) => {
                    let pid = match v {
                        Victim::Coordinator => c.kill_serve(),
                        Victim::Worker(i) => c.kill_worker(i),
                    };
                    let at_s = start.elapsed().as_secs_f64();
                    let during = seen.last().cloned().unwrap_or_default();
                    println!("chaos: t={at_s:.1}s SIGKILL {v:?} (pid {pid}) after: {during}");
                    kills.push(Kill { at_s, victim: v, pid, during });
                    restarts.push((now + Duration::from_secs_f64(rng.uniform(0.3, 2.0)), v));
                    next_kill = now + Duration::from_secs_f64(rng.uniform(cfg.gap.0, cfg.gap.1));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // A coordinator killed just before the end must come back for the checks; workers need not.
    if restarts.iter().any(|(_, v)| *v == Victim::Coordinator) {
        c.start_serve();
    }
    (kills, seen)
}

#[test]
fn five_fold_run_survives_random_kills_of_workers_and_coordinator() {
    let cfg = Config::from_env();
    let mut rng = Rng(cfg.seed);
    let tmp = tempfile::tempdir().unwrap();
    let work = if std::env::var_os("CHAOS_KEEP").is_some() { tmp.keep() } else { tmp.path().to_path_buf() };
    println!(
        "chaos: seed {} kills {} epochs {}x{} workers {} work {}",
        cfg.seed,
        cfg.kills,
        cfg.epochs,
        cfg.iters,
        cfg.workers,
        work.display()
    );
    let t0 = Instant::now();
    let ds = cluster::synthetic_dataset(&work, cfg.cases, cfg.size);
    let mut c = Cluster::new(&work, cfg.workers, 3);
    c.start_serve();
    for i in 0..cfg.workers {
        c.start_worker(i);
    }
    let fence = fence::FencePoller::start(c.state_dir().join("coordinator.db"), Duration::from_millis(200));
    let run = run_ok(
        c.nnunet(&["submit", "--epochs", &cfg.epochs.to_string(), "--iters", &cfg.iters.to_string(), "--val-iters", "1"])
            .args(["--save-every", "1", "--seed", &cfg.seed.to_string()])
            .arg("--dataset")
            .arg(&ds),
    )
    .trim()
    .to_string();
    assert!(run.starts_with("run-"), "submit prints the run id: {run}");
    let (mut watch, rx) = c.watch(&run);

    let (kills, mut seen) = drive(&mut c, &cfg, &mut rng, &mut watch, &rx);
    let t_end = Instant::now() + Duration::from_secs(60);
    let watch_status = loop {
        while let Ok(l) = rx.try_recv() {
            seen.push(l);
        }
        if let Some(st) = watch.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > t_end {
            let _ = watch.kill();
            panic!("`nnunet watch` did not end after the run ended");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_millis(300));
    while let Ok(l) = rx.try_recv() {
        seen.push(l);
    }
    let workers_idle = c.wait_workers_idle(Duration::from_secs(60));
    let journal = run_ok(&mut c.nnunet(&["logs", &run]));
    let status: serde_json::Value = serde_json::from_str(&run_ok(&mut c.nnunet(&["status", &run, "--json"]))).unwrap();
    let fence = fence.finish();
    let wall = t0.elapsed().as_secs_f64();

    let mut violations: Vec<String> = vec![];
    let mut checked: Vec<String> = vec![];
    // 1. the run completes
    if status["state"] != "DONE" || !watch_status.success() {
        violations.push(format!("the run ended {} (`nnunet watch` exit {watch_status}); tasks: {}", status["state"], status["tasks"]));
    }
    for f in 0..5 {
        for kind in ["train", "validate"] {
            let done =
                status["tasks"].as_array().into_iter().flatten().any(|t| t["kind"] == kind && t["fold"] == f && t["state"] == "DONE");
            if !done {
                violations.push(format!("fold {f} {kind} is not DONE"));
            }
        }
    }
    let run_dir = c.state_dir().join("runs").join(&run);
    let model_dir = run_dir.join("results/Dataset998_Chaos/nnUNetTrainer__nnUNetPlans__2d");
    if !model_dir.join("crossval_results_folds_0_1_2_3_4/summary.json").is_file() {
        violations.push("no cross-validation summary".into());
    }
    if !workers_idle {
        violations.push("workers still running 60 s after the run ended (--exit-when-idle)".into());
    }
    for (i, w) in c.workers.iter().enumerate() {
        for e in w.exits.iter().filter(|e| *e != "exit status: 0") {
            violations.push(format!("worker {i} exited by itself with {e} (see {})", w.log.display()));
        }
    }
    checked.push(format!("run completes: {} after {} kills; no worker died by itself", status["state"], kills.len()));
    // 2. training histories
    let n = invariants::training_histories(&model_dir, &[0, 1, 2, 3, 4], cfg.epochs as u64, &mut violations);
    checked
        .push(format!("training histories without a duplicate or missing epoch: {n} (training_log.jsonl + checkpoint_final of 5 folds)"));
    // 3. fencing
    violations.extend(fence.violations.iter().cloned());
    if fence.samples < 5 || fence.max_token.is_empty() {
        violations.push(format!("could not follow fencing tokens ({} reads; last error: {:?})", fence.samples, fence.last_error));
    }
    let leases = invariants::attempts_grow(&journal, &mut violations);
    checked.push(format!(
        "fencing tokens never backwards: {} reads of {} tasks' tokens across {} coordinator lifetimes (highest token {}); {leases} fold leases with growing attempts",
        fence.samples,
        fence.max_token.len(),
        c.serve_starts,
        fence.max_token.values().max().copied().unwrap_or(0)
    ));
    // 4. hashes, 5. temp files
    let caches: Vec<_> = c.workers.iter().map(|w| w.cache.clone()).collect();
    let mut roots = vec![run_dir.clone()];
    roots.extend(caches.iter().cloned());
    let n = invariants::artifact_hashes(&roots, &mut violations);
    if n == 0 {
        violations.push("no artifact with a content hash was found to verify".into());
    }
    checked.push(format!("artifacts whose sha256 matches their sidecar/case file: {n}"));
    let mut roots = vec![c.state_dir()];
    roots.extend(caches);
    let n = invariants::no_temp_files(&roots, &mut violations);
    checked.push(format!("files scanned for leftover temporaries (state dir + {} worker caches): {n}", c.workers.len()));
    // 6. the watcher
    let reconnects =
        std::fs::read_to_string(work.join("watch.err")).unwrap_or_default().lines().filter(|l| l.contains("reconnecting")).count();
    let n = invariants::watcher_saw_everything(&seen, &journal, &mut violations);
    checked.push(format!("events seen by one reconnecting watcher, gapless and equal to the journal: {n} ({reconnects} reconnects)"));

    let resumed = journal.lines().filter(|l| l.contains("resumes from the checkpoint of epoch")).count();
    let n_coord = kills.iter().filter(|k| k.victim == Victim::Coordinator).count();
    println!("\n== chaos summary (seed {}, {:.0} s wall)", cfg.seed, wall);
    println!(
        "kills survived: {} of {} planned ({} worker, {} coordinator); worker starts {:?}; {resumed} training resumes from a checkpoint",
        kills.len(),
        cfg.kills,
        kills.len() - n_coord,
        n_coord,
        c.workers.iter().map(|w| w.starts).collect::<Vec<_>>()
    );
    for k in &kills {
        println!("  t={:>6.1}s SIGKILL {:?} pid {} after: {}", k.at_s, k.victim, k.pid, k.during);
    }
    println!("invariants checked:");
    for line in &checked {
        println!("  - {line}");
    }
    if violations.is_empty() {
        println!("nothing lost: all invariants hold");
    } else {
        println!("VIOLATIONS ({}):", violations.len());
        for v in &violations {
            println!("  ! {v}");
        }
    }
    assert!(violations.is_empty(), "chaos invariants violated (work folder {}):\n{}", work.display(), violations.join("\n"));
    let min = cfg.kills.min(2);
    assert!(
        kills.len() >= min,
        "only {} of the {} planned kills happened before the run ended: the budget is too small for the kill schedule (raise CHAOS_EPOCHS)",
        kills.len(),
        cfg.kills
    );
    if cfg.kills >= 2 {
        assert!(n_coord >= 1 && kills.len() > n_coord, "the run must survive both a worker and a coordinator kill");
    }
}
