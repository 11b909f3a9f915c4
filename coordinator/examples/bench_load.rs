//! Load benchmark of one coordinator on loopback: many simulated workers (one gRPC connection each,
//! the same client endpoint settings as `nnunet-worker`) register, lease preprocessing tasks of a
//! submitted run and, without doing the work, heartbeat, report metrics and log on them, while the
//! others poll for work honouring `retry_after_ms`. The coordinator is a real `nnunet serve` process,
//! treated as a black box (its CLI and the gRPC API only).
//!
//! Reports requests/s and p50/p99 latency per call type and the coordinator's memory (VmRSS peak
//! sampled every 250 ms, VmHWM from /proc/<pid>/status); prints a table and writes the result under
//! `--label` into `--out` (other labels in the file are kept, so "before" and "after" sit side by side).
//!
//! `cargo run --release -p nnunet-coordinator --example bench_load -- --workers 500 --secs 20 --label before`
//! (scripts/bench_load.sh).
// Requests end in `..Default::default()` even where every field is set today: the .proto gains fields.
#![allow(clippy::needless_update)]
use anyhow::{bail, Context, Result};
use clap::Parser;
use nnunet_proto::v1 as pb;
use nnunet_proto::v1::monitor_client::MonitorClient;
use nnunet_proto::v1::worker_api_client::WorkerApiClient;
use nnunet_proto::wire::TokenInterceptor;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

const TOKEN: &str = "bench-load-token-0123456789abcdef0123";

#[derive(Parser, Debug, Clone)]
struct Args {
    /// Simulated workers (one connection each).
    #[arg(long, default_value_t = 500)]
    workers: usize,
    /// Seconds of measurement after every worker registered.
    #[arg(long, default_value_t = 20)]
    secs: u64,
    /// Pause of a worker holding a task between two calls (heartbeat, metrics, log), milliseconds.
    #[arg(long, default_value_t = 100)]
    think_ms: u64,
    /// Cases of the synthetic dataset (= preprocessing tasks to lease, with one shard per case).
    #[arg(long, default_value_t = 100)]
    cases: usize,
    /// Key of this measurement in the JSON file ("before", "after", ...).
    #[arg(long, default_value = "before")]
    label: String,
    #[arg(long, default_value = "bench-results/load.json")]
    out: PathBuf,
    /// The `nnunet` binary under test (default: next to this example's folder).
    #[arg(long)]
    nnunet: Option<PathBuf>,
}

type Api = WorkerApiClient<InterceptedService<Channel, TokenInterceptor>>;

/// Latencies (microseconds) and error counts per call type.
#[derive(Default)]
struct Calls {
    lat: BTreeMap<&'static str, Vec<u32>>,
    errors: BTreeMap<&'static str, u64>,
    first_error: BTreeMap<&'static str, String>,
}

impl Calls {
    fn record<T>(&mut self, call: &'static str, t: Instant, r: &Result<T, tonic::Status>) {
        match r {
            Ok(_) => self.lat.entry(call).or_default().push(t.elapsed().as_micros().min(u32::MAX as u128) as u32),
            Err(s) => {
                *self.errors.entry(call).or_default() += 1;
                self.first_error.entry(call).or_insert_with(|| format!("{:?}: {}", s.code(), s.message()));
            }
        }
    }
    fn merge(&mut self, o: Calls) {
        for (k, v) in o.lat {
            self.lat.entry(k).or_default().extend(v);
        }
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for (k, v) in o.first_error {
            self.first_error.entry(k).or_insert(v);
        }
    }
}

fn raise_fd_limit() {
    // SAFETY: plain getrlimit/setrlimit on this process's own RLIMIT_NOFILE; the struct is fully initialised.
    unsafe {
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn run_ok(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// `(VmRSS, VmHWM)` of a process, bytes.
fn rss(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        s.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            * 1024
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

/// A dataset of `cases` tiny synthetic images, converted into an nnU-Net raw folder.
fn dataset(nnunet: &Path, dir: &Path, cases: usize) -> Result<PathBuf> {
    let data = dir.join("data");
    run_ok(Command::new(nnunet).args(["synth", "--cases", &cases.to_string(), "--size", "32"]).arg("--out").arg(&data))?;
    let raw = dir.join("raw");
    run_ok(
        Command::new(nnunet)
            .arg("convert")
            .arg("--images")
            .arg(data.join("images"))
            .arg("--masks")
            .arg(data.join("masks"))
            .arg("--out")
            .arg(&raw)
            .args(["--id", "997", "--name", "Load"]),
    )?;
    Ok(raw.join("Dataset997_Load"))
}

struct Serve {
    child: Child,
    url: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_serve(nnunet: &Path, dir: &Path) -> Result<Serve> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    std::fs::write(dir.join("token"), TOKEN)?;
    let log = std::fs::File::create(dir.join("serve.log"))?;
    let child = Command::new(nnunet)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--lease-ttl-secs", "60", "--threads", "1"])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--token-file")
        .arg(dir.join("token"))
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .with_context(|| format!("starting {}", nnunet.display()))?;
    let serve = Serve { child, url: format!("http://127.0.0.1:{port}") };
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t.elapsed() > Duration::from_secs(30) {
            bail!("the coordinator did not start; see {}", dir.join("serve.log").display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(serve)
}

async fn connect(url: &str) -> Result<Channel> {
    let mut last = None;
    for _ in 0..5 {
        // A request timeout keeps the benchmark bounded when the coordinator falls behind (counted as errors).
        match nnunet_proto::endpoint(url, None)?.timeout(Duration::from_secs(10)).connect().await {
            Ok(c) => return Ok(c),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(last.unwrap().into())
}

/// One simulated worker: register, then until `end` lease (polling as the server asks) or, holding a
/// task, cycle heartbeat / metrics (every 5th call) / log (every 10th call) with `think` between calls.
async fn sim_worker(api: Api, i: usize, start: Instant, end: Instant, think: Duration) -> (Calls, Calls) {
    let mut api = api;
    let mut reg = Calls::default();
    let mut calls = Calls::default();
    let t = Instant::now();
    let r =
        api.register(pb::RegisterRequest { host: format!("sim-{i}"), device: "cpu".into(), cpu_threads: 1, ..Default::default() }).await;
    reg.record("Register", t, &r);
    let Ok(reg_reply) = r else { return (reg, calls) };
    let wid = reg_reply.into_inner().worker_id;
    tokio::time::sleep_until(start.into()).await;
    let mut held: Option<pb::Task> = None;
    let mut op = 0u64;
    while Instant::now() < end {
        match held.clone() {
            None => {
                let t = Instant::now();
                let r = api.lease(pb::LeaseRequest { worker_id: wid.clone(), ..Default::default() }).await;
                calls.record("Lease", t, &r);
                match r {
                    Ok(rep) => {
                        let rep = rep.into_inner();
                        match rep.task {
                            Some(task) => held = Some(task),
                            None => tokio::time::sleep(Duration::from_millis(rep.retry_after_ms.clamp(50, 5000) as u64)).await,
                        }
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
            Some(task) => {
                op += 1;
                let t = Instant::now();
                if op.is_multiple_of(10) {
                    let r = api
                        .log(pb::LogLines {
                            worker_id: wid.clone(),
                            task_id: task.task_id.clone(),
                            fencing_token: task.fencing_token,
                            lines: vec![format!("sim-{i}: step {op}")],
                            ..Default::default()
                        })
                        .await;
                    calls.record("Log", t, &r);
                } else if op.is_multiple_of(5) {
                    let m = pb::EpochMetrics { epoch: (op / 5) as u32, epochs: 1000, train_loss: 0.5, lr: 0.01, ..Default::default() };
                    let r = api
                        .report_metrics(pb::MetricsReport {
                            worker_id: wid.clone(),
                            task_id: task.task_id.clone(),
                            lease_id: task.lease_id,
                            fencing_token: task.fencing_token,
                            metrics: Some(m),
                            ..Default::default()
                        })
                        .await;
                    calls.record("ReportMetrics", t, &r);
                } else {
                    let r = api
                        .heartbeat(pb::HeartbeatRequest {
                            worker_id: wid.clone(),
                            task_id: task.task_id.clone(),
                            lease_id: task.lease_id,
                            fencing_token: task.fencing_token,
                            rss_bytes: 1 << 30,
                            ..Default::default()
                        })
                        .await;
                    calls.record("Heartbeat", t, &r);
                    if matches!(&r, Ok(rep) if !rep.get_ref().ok) {
                        held = None;
                    }
                }
                tokio::time::sleep(think).await;
            }
        }
    }
    (reg, calls)
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn summarize(calls: &mut Calls, secs: f64) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    let names: Vec<&'static str> = calls.lat.keys().chain(calls.errors.keys()).copied().collect();
    for name in names {
        let v = calls.lat.entry(name).or_default();
        v.sort_unstable();
        out.insert(
            name.into(),
            serde_json::json!({
                "ok": v.len(), "errors": calls.errors.get(name).copied().unwrap_or(0),
                "first_error": calls.first_error.get(name),
                "per_s": v.len() as f64 / secs,
                "p50_ms": pct(v, 0.5), "p99_ms": pct(v, 0.99), "max_ms": pct(v, 1.0),
            }),
        );
    }
    serde_json::Value::Object(out)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    raise_fd_limit();
    let nnunet = match &args.nnunet {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.parent().and_then(|p| p.parent()).context("exe folder")?.join("nnunet"),
    };
    let dir = tempfile::tempdir()?;
    let ds = dataset(&nnunet, dir.path(), args.cases)?;
    let serve = start_serve(&nnunet, dir.path())?;
    let pid = serve.child.id();
    let (rss_idle, _) = rss(pid);
    let ch = connect(&serve.url).await?;
    let mut mon = MonitorClient::with_interceptor(ch, TokenInterceptor::new(Some(TOKEN))?);
    let run = mon
        .submit_run(pb::SubmitRunRequest {
            dataset_dir: ds.to_string_lossy().into_owned(),
            preprocess_shards: args.cases as u32,
            name: "load".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let t = Instant::now();
    let n_tasks = loop {
        let info = mon.get_run(pb::GetRunRequest { run_id: run.run_id.clone() }).await?.into_inner();
        if info.state != "PLANNING" && !info.tasks.is_empty() {
            break info.tasks.iter().filter(|t| t.kind == pb::TaskKind::Preprocess as i32).count();
        }
        if t.elapsed() > Duration::from_secs(60) || matches!(info.state.as_str(), "FAILED" | "CANCELLED") {
            bail!("the run is {} after {:?}, no tasks to lease", info.state, t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("coordinator pid {pid}, run {} with {n_tasks} preprocessing tasks; connecting {} simulated workers", run.run_id, args.workers);

    let mut apis = Vec::with_capacity(args.workers);
    for _ in 0..args.workers {
        let ch = connect(&serve.url).await?;
        apis.push(WorkerApiClient::with_interceptor(ch, TokenInterceptor::new(Some(TOKEN))?));
    }
    // Every worker registers at once (a cluster starting), then the measured window begins.
    let start = Instant::now() + Duration::from_secs(2);
    let end = start + Duration::from_secs(args.secs);
    let think = Duration::from_millis(args.think_ms);
    let sampler = tokio::spawn(async move {
        let mut peak = 0u64;
        while Instant::now() < end {
            peak = peak.max(rss(pid).0);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        peak
    });
    let handles: Vec<_> = apis.into_iter().enumerate().map(|(i, api)| tokio::spawn(sim_worker(api, i, start, end, think))).collect();
    let (mut reg, mut calls) = (Calls::default(), Calls::default());
    for h in handles {
        let (r, c) = h.await?;
        reg.merge(r);
        calls.merge(c);
    }
    let rss_peak = sampler.await?;
    let (rss_end, hwm) = rss(pid);
    let listed = Instant::now();
    let runs = mon.list_runs(pb::ListRunsRequest::default()).await?.into_inner().runs;
    let list_ms = listed.elapsed().as_secs_f64() * 1000.0;
    let events = runs.iter().find(|r| r.run_id == run.run_id).map(|r| r.tasks.len()).unwrap_or(0);
    let secs = args.secs as f64;
    let total: usize = calls.lat.values().map(|v| v.len()).sum();
    let per_call = summarize(&mut calls, secs);
    let reg_sum = summarize(&mut reg, secs);
    println!("\n| call | ok | errors | req/s | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|---|");
    for (name, v) in reg_sum.as_object().unwrap().iter().chain(per_call.as_object().unwrap()) {
        let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        let rate = if name == "Register" { "(burst)".to_string() } else { format!("{:.0}", f("per_s")) };
        println!("| {name} | {} | {} | {rate} | {:.2} | {:.2} | {:.2} |", v["ok"], v["errors"], f("p50_ms"), f("p99_ms"), f("max_ms"));
    }
    println!("| all but Register | {total} | | {:.0} | | | |", total as f64 / secs);
    println!(
        "coordinator memory: VmRSS idle {:.1} MB, peak sampled {:.1} MB, at end {:.1} MB, VmHWM {:.1} MB; ListRuns after the load {list_ms:.1} ms",
        rss_idle as f64 / 1e6,
        rss_peak as f64 / 1e6,
        rss_end as f64 / 1e6,
        hwm as f64 / 1e6
    );
    for (name, e) in reg.first_error.iter().chain(&calls.first_error) {
        println!("first {name} error: {e}");
    }
    let result = serde_json::json!({
        "machine": format!("{} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)),
        "nnunet": nnunet.display().to_string(),
        "profile": if nnunet.components().any(|c| c.as_os_str() == "release") { "release" } else { "dev (dependencies at opt-level 3, workspace at 1)" },
        "when_unix_s": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs(),
        "config": {"workers": args.workers, "secs": args.secs, "think_ms": args.think_ms, "preprocess_tasks": n_tasks, "tasks_listed": events},
        "requests_per_s": total as f64 / secs,
        "calls": per_call,
        "register": reg_sum["Register"],
        "coordinator_rss_mb": {"idle": rss_idle as f64 / 1e6, "peak_sampled": rss_peak as f64 / 1e6, "end": rss_end as f64 / 1e6, "vm_hwm": hwm as f64 / 1e6},
        "list_runs_ms_after": list_ms,
    });
    let mut all: serde_json::Map<String, serde_json::Value> =
        std::fs::read_to_string(&args.out).ok().and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default();
    all.insert(args.label.clone(), result);
    if let Some(p) = args.out.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&all)? + "\n")?;
    println!("wrote {} ({})", args.out.display(), args.label);
    drop(serve);
    Ok(())
}
