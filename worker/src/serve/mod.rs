//! Serve mode: the worker dials out to the coordinator, registers, leases one task at a time and
//! runs it, heartbeating all along.
//!
//! - Inputs: with a shared filesystem (the worker can read the run directory's marker file) the
//!   preprocessed data is read in place and nothing is copied; otherwise every input is downloaded
//!   once into `--cache-dir` and kept, verified by sha256 ([`staging`], [`transfer`]).
//! - Outputs (checkpoints, logs, validation and test predictions) are written to a local scratch
//!   folder and streamed to the coordinator, which accepts them only with the task's current
//!   fencing token: a worker that lost its lease cannot overwrite anything ([`uploader`]).
//! - Every id and path of a task is checked before use ([`untrusted`]); a task that fails the checks
//!   is failed back as not retryable and nothing is written for it.
//! - A lost lease (heartbeat refused) stops the task at the next iteration; SIGTERM/SIGUSR1
//!   (Kubernetes eviction, Slurm preemption) stop it too, report it as retryable and exit 143,
//!   and the coordinator re-leases it to resume from the last uploaded checkpoint.
//! - The coordinator may restart: calls are retried while it is unavailable ([`connection`]), and
//!   running leases survive its restart.
pub mod connection;
pub mod context;
pub mod reports;
pub mod staging;
pub mod tasks;
pub mod transfer;
pub mod untrusted;
pub mod uploader;

use crate::error::{bad_input, is_lease_lost, WorkerError};
use anyhow::{anyhow, bail, Context, Result};
use connection::{Conn, ConnectOptions};
use context::TaskCtx;
use nnunet_common::Fold;
use nnunet_proto::v1 as pb;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Coordinator address, e.g. http://coordinator:50051.
    #[arg(long, env = "NNUNET_COORDINATOR")]
    pub coordinator: Option<String>,
    /// auto (cuda when a GPU is visible, else cpu), cpu, cuda or cuda:N.
    #[arg(long, env = "NNUNET_DEVICE", default_value = "auto")]
    pub device: String,
    /// File holding the shared-secret token (else NNUNET_TOKEN).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) to verify a TLS coordinator.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for a coordinator that requires one (mTLS); with --tls-key.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Where downloaded inputs and local outputs are kept (default ~/.cache/nnunet-rs).
    #[arg(long, env = "NNUNET_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// How many run folders to keep in the cache (the current one included) when inputs are
    /// downloaded; older ones not in use are removed. With a shared filesystem a run's folder goes as
    /// soon as its last task on this host ends.
    #[arg(long, env = "NNUNET_CACHE_KEEP_RUNS", default_value_t = 2)]
    pub cache_keep_runs: usize,
    /// Exit when the coordinator has no active run left.
    #[arg(long)]
    pub exit_when_idle: bool,
    /// libtorch intra-op threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Never read the run directory in place, even when it is visible: download every input.
    #[arg(long)]
    pub no_shared_fs: bool,
    /// How long to keep retrying while the coordinator is unreachable.
    #[arg(long, default_value_t = 900)]
    pub reconnect_timeout_secs: u64,
}

impl ServeArgs {
    fn connect_options(&self) -> Result<ConnectOptions> {
        Ok(ConnectOptions {
            address: self.coordinator.clone().context("--coordinator URL is required")?,
            token_file: self.token_file.clone(),
            tls_ca: self.tls_ca.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            reconnect_timeout: Duration::from_secs(self.reconnect_timeout_secs),
        })
    }

    fn cache(&self) -> PathBuf {
        self.cache_dir.clone().unwrap_or_else(|| {
            std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp")).join(".cache").join("nnunet-rs")
        })
    }
}

/// `nnunet-worker serve`: runs the serve loop on a small tokio runtime.
pub fn run_serve(args: ServeArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(serve(args))
}

/// Sets `stop` on SIGTERM, SIGUSR1 or SIGINT.
fn watch_signals(stop: &Arc<AtomicBool>) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    for kind in [SignalKind::terminate(), SignalKind::user_defined1(), SignalKind::interrupt()] {
        let mut sig = signal(kind)?;
        let stop = stop.clone();
        tokio::spawn(async move {
            sig.recv().await;
            tracing::warn!("signal received: stopping the current task (it resumes elsewhere from its last checkpoint)");
            stop.store(true, Ordering::SeqCst);
        });
    }
    Ok(())
}

/// Runs blocking work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.context("a blocking helper panicked")
}

/// What the serve loop shares with each task.
struct Worker {
    args: ServeArgs,
    conn: Conn,
    device: tch::Device,
    cache: PathBuf,
    stop: Arc<AtomicBool>,
    heartbeat_every: Duration,
}

async fn serve(mut args: ServeArgs) -> Result<()> {
    args.device = crate::device::resolve(&args.device);
    let device = crate::device::parse_device(&args.device).map_err(bad_input)?;
    if args.threads > 0 {
        tch::set_num_threads(args.threads as i32);
    }
    let stop = Arc::new(AtomicBool::new(false));
    watch_signals(&stop)?;
    let cache = args.cache();
    let root = cache.clone();
    let swept = blocking(move || transfer::sweep_stale_parts(&root) + crate::cache::remove_torn_checkpoints(&root.join("runs"))).await?;
    if swept > 0 {
        tracing::info!("cache: removed {swept} leftover(s) of earlier worker processes (partial downloads, temp files, torn checkpoints)");
    }
    let conn = Conn::new(&args.connect_options()?).map_err(bad_input)?;
    let reg = conn.register(&args.device).await?;
    tracing::info!(worker = %reg.worker_id, device = %args.device, "registered with {}", args.coordinator.as_deref().unwrap_or(""));
    let heartbeat_every = Duration::from_millis(reg.heartbeat_interval_ms.max(200) as u64);
    let w = Worker { args, conn, device, cache, stop, heartbeat_every };
    loop {
        if w.stop.load(Ordering::SeqCst) {
            return Err(WorkerError::Stopped.into());
        }
        let req = pb::LeaseRequest { worker_id: w.conn.id() };
        let reply = match w
            .conn
            .call("lease", |mut api| {
                let req = req.clone();
                async move { api.lease(req).await }
            })
            .await
        {
            Ok(r) => r,
            Err(s) if s.code() == Code::NotFound => {
                // The coordinator lost our registration (fresh state dir): register again.
                w.conn.register(&w.args.device).await?;
                continue;
            }
            Err(s) if s.code() == Code::Internal => {
                tracing::warn!("lease: {}", s.message());
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
            Err(s) => bail!("leasing work: {}", s.message()),
        };
        let Some(task) = reply.task else {
            if reply.shutdown && w.args.exit_when_idle {
                tracing::info!("no active run left; exiting");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(reply.retry_after_ms.clamp(100, 5000) as u64)).await;
            continue;
        };
        match untrusted::check_task(&task) {
            Ok(fold) => w.run_task(task, fold).await?,
            Err(e) => w.refuse(&task, e).await,
        }
    }
}

impl Worker {
    /// Fails a task that did not pass [`untrusted::check_task`], as not retryable; nothing was written for it.
    async fn refuse(&self, task: &pb::Task, e: WorkerError) {
        let task_id: String = task.task_id.chars().take(untrusted::MAX_ID_LEN).collect();
        tracing::error!(task = %task_id, "{e}");
        let req = pb::FailRequest {
            worker_id: self.conn.id(),
            task_id: task.task_id.clone(),
            lease_id: task.lease_id,
            fencing_token: task.fencing_token,
            error: format!("worker {e}"),
            retryable: false,
            out_of_memory: false,
        };
        self.send_fail(&task_id, req).await;
    }

    async fn send_fail(&self, task_id: &str, req: pb::FailRequest) {
        let res = self
            .conn
            .call("fail", |mut api| {
                let req = req.clone();
                async move { api.fail(req).await }
            })
            .await;
        if let Err(s) = res {
            tracing::warn!(task = %task_id, "the coordinator did not take the failure report: {}", s.message());
        }
    }

    /// Runs one checked task on its own OS thread and reports how it ended. Errors only when the
    /// worker itself must stop (a signal).
    async fn run_task(&self, task: pb::Task, fold: Fold) -> Result<()> {
        let kind = pb::TaskKind::try_from(task.kind).unwrap_or(pb::TaskKind::Unspecified);
        tracing::info!(task = %task.task_id, ?kind, %fold, attempt = task.attempt, "leased");
        let (cache, run_id, run_dir, inputs) = (self.cache.clone(), task.run_id.clone(), task.run_dir.clone(), task.inputs.clone());
        let (keep, no_shared_fs) = (self.args.cache_keep_runs.max(1), self.args.no_shared_fs);
        // The run's cache folder: held while the task runs; other runs' folders pruned.
        let (in_place, run_cache) = blocking(move || {
            let mut in_place = staging::uses_run_dir_in_place(&run_dir, &run_id, no_shared_fs);
            if let Some(missing) = staging::first_invisible_input(&run_dir, &inputs).filter(|_| in_place) {
                tracing::info!("the run directory is shared but {missing} is not readable here: downloading this task's inputs");
                in_place = false;
            }
            let lease = crate::cache::RunLease::acquire(&cache, &run_id);
            for p in crate::cache::prune(&cache, &run_id, keep) {
                tracing::info!("cache: removed {} (least recently used run folder)", p.display());
            }
            (in_place, lease)
        })
        .await?;
        let run_cache = run_cache.map_err(|e| tracing::warn!("cache: {e:#}")).ok();
        let lost = Arc::new(AtomicBool::new(false));
        let hb = spawn_heartbeat(self.conn.clone(), task.clone(), lost.clone(), self.heartbeat_every);
        let rt = tokio::runtime::Handle::current();
        let (reports, sender) = reports::Reports::start(self.conn.clone(), task.clone(), lost.clone(), &rt);
        let ctx = TaskCtx {
            conn: self.conn.clone(),
            task: task.clone(),
            fold,
            stop: self.stop.clone(),
            lost: lost.clone(),
            device: self.device,
            cache: self.cache.clone(),
            threads: self.args.threads,
            in_place,
            rt,
            reports: reports.clone(),
        };
        let res = run_on_thread(ctx).await;
        // Metrics and logs reach the coordinator before the task's end does.
        if !lost.load(Ordering::SeqCst) && !reports.flush(Duration::from_secs(self.args.reconnect_timeout_secs)).await {
            tracing::warn!(task = %task.task_id, "some metrics or log lines were not delivered before the task ended");
        }
        sender.abort();
        hb.abort();
        // With the run directory in place, the cache folder only held scratch copies and outputs that
        // are uploaded by now (the coordinator's checkpoint is what a retry resumes from).
        if let (true, Some(rc)) = (in_place, run_cache) {
            blocking(move || rc.release_and_remove()).await?;
        }
        self.report(&task, res, lost.load(Ordering::SeqCst)).await
    }

    /// Completes or fails the task on the coordinator.
    async fn report(&self, task: &pb::Task, res: Result<String>, lost: bool) -> Result<()> {
        let (wid, tid, lease_id, token) = (self.conn.id(), task.task_id.clone(), task.lease_id, task.fencing_token);
        let e = match res {
            Ok(result_json) => {
                let req = pb::CompleteRequest { worker_id: wid, task_id: tid, lease_id, fencing_token: token, result_json };
                let res = self
                    .conn
                    .call("complete", |mut api| {
                        let req = req.clone();
                        async move { api.complete(req).await }
                    })
                    .await;
                match res {
                    Ok(_) => tracing::info!(task = %task.task_id, "done"),
                    Err(s) => tracing::warn!(task = %task.task_id, "completion refused: {}", s.message()),
                }
                return Ok(());
            }
            Err(e) => e,
        };
        if is_lease_lost(&e) || lost {
            tracing::warn!(task = %task.task_id, "stopped: {e:#}");
            return Ok(());
        }
        let signalled = self.stop.load(Ordering::SeqCst);
        // Refused tasks and bad input (e.g. pretrained weights that do not fit) fail the same way on every worker.
        let refused = matches!(crate::error::classify(&e), Some(WorkerError::Refused(_) | WorkerError::BadInput(_)));
        let oom = !signalled && crate::error::is_out_of_memory(&e);
        let msg = if signalled { "worker stopped by a signal (preemption or eviction)".to_string() } else { format!("{e:#}") };
        tracing::error!(task = %task.task_id, out_of_memory = oom, "failed: {msg}");
        let req = pb::FailRequest {
            worker_id: wid,
            task_id: tid,
            lease_id,
            fencing_token: token,
            error: msg.clone(),
            retryable: !refused,
            out_of_memory: oom,
        };
        self.send_fail(&task.task_id, req).await;
        if signalled {
            return Err(WorkerError::Stopped.into());
        }
        if oom && self.device.is_cuda() {
            // libtorch's caching allocator keeps what it reserved: exit so the device gets it back
            // (a supervisor restarts the worker; its task was requeued by the coordinator).
            tracing::warn!("out of device memory: exiting to free the memory this process cached");
            return Err(WorkerError::OutOfMemory(msg).into());
        }
        Ok(())
    }
}

/// Runs the task body on its own OS thread (libtorch's grad mode and autocast are thread-local), a
/// panic turned into an error.
async fn run_on_thread(ctx: TaskCtx) -> Result<String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let name = format!("task-{}", ctx.task.task_id);
    std::thread::Builder::new().name(name).spawn(move || {
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| tasks::run(&ctx))).unwrap_or_else(|p| {
            let what = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            Err(anyhow!("the task panicked: {what}"))
        });
        if tx.send(res).is_err() {
            tracing::warn!("the serve loop stopped waiting for the task");
        }
    })?;
    rx.await.unwrap_or_else(|_| Err(anyhow!("task thread vanished")))
}

fn spawn_heartbeat(conn: Conn, task: pb::Task, lost: Arc<AtomicBool>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // The first beat goes out at once (the coordinator learns the worker's readings even for short
        // tasks), then one every `every`.
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let gpu = tokio::task::spawn_blocking(crate::nvml::sample).await.ok().flatten();
            let req = pb::HeartbeatRequest {
                worker_id: conn.id(),
                task_id: task.task_id.clone(),
                lease_id: task.lease_id,
                fencing_token: task.fencing_token,
                rss_bytes: crate::device::rss_bytes(),
                device_memory_used_bytes: gpu.as_ref().map_or(0, |g| g.memory_used_bytes),
                device_name: gpu.as_ref().map(|g| g.name.clone()).unwrap_or_default(),
                device_memory_total_bytes: gpu.as_ref().map(|g| g.memory_total_bytes),
                gpu_utilization_percent: gpu.as_ref().and_then(|g| g.utilization_percent),
            };
            let res = conn
                .call("heartbeat", |mut api| {
                    let req = req.clone();
                    async move { api.heartbeat(req).await }
                })
                .await;
            match res {
                Ok(r) if r.ok => {}
                Ok(r) => {
                    tracing::warn!(task = %task.task_id, "lease gone: {}", r.reason);
                    lost.store(true, Ordering::SeqCst);
                    return;
                }
                Err(s) => tracing::warn!("heartbeat failed: {}", s.message()),
            }
        }
    })
}
