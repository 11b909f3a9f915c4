//! Serve mode: the worker dials out to the coordinator, registers, leases one task at a time and
//! runs it, heartbeating all along.
//!
//! - Inputs: with a shared filesystem (the worker can read the run directory's marker file) the
//!   preprocessed data is read in place and nothing is copied; otherwise every input is downloaded
//!   once into `--cache-dir` and kept, verified by sha256.
//! - Outputs (checkpoints, logs, validation and test predictions) are written to a local scratch
//!   folder and streamed to the coordinator, which accepts them only with the task's current
//!   fencing token: a worker that lost its lease cannot overwrite anything.
//! - A lost lease (heartbeat refused) stops the task at the next iteration; SIGTERM/SIGUSR1
//!   (Kubernetes eviction, Slurm preemption) stop it too, report it as retryable and exit 143,
//!   and the coordinator re-leases it to resume from the last uploaded checkpoint.
//! - The coordinator may restart: calls are retried while it is unavailable, and running leases
//!   survive its restart.
use crate::train::{self, CheckpointKind, FoldSpec, Progress, TrainingConfig};
use anyhow::{anyhow, bail, Context, Result};
use nnunet_common::paths::DatasetDirs;
use nnunet_common::train_log::EpochMetrics;
use nnunet_proto::v1 as pb;
use nnunet_proto::v1::worker_api_client::WorkerApiClient;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

const CHUNK: usize = 1 << 20;
const MAX_MESSAGE: usize = 16 << 20;
pub const RUN_MARKER: &str = ".nnunet-run-id";

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Coordinator address, e.g. http://coordinator:50051.
    #[arg(long, env = "NNUNET_COORDINATOR")]
    pub coordinator: Option<String>,
    /// cpu, cuda or cuda:N.
    #[arg(long, env = "NNUNET_DEVICE", default_value = "cpu")]
    pub device: String,
    /// File holding the shared-secret token (else NNUNET_TOKEN).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) to verify a TLS coordinator.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
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

/// A requested process exit code (143 after SIGTERM/SIGUSR1).
#[derive(Debug)]
pub struct ExitCode(pub i32);
impl std::fmt::Display for ExitCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "worker stopped by a signal; its task goes back to the coordinator (exit {})", self.0)
    }
}
impl std::error::Error for ExitCode {}

/// An error that retrying cannot fix (a bad device, token, certificate or address): the worker exits 3,
/// which the Kubernetes pod failure policy (deploy/k8s) turns into a failed index instead of restarts.
#[derive(Debug)]
pub struct BadInput(pub String);
impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for BadInput {}

/// Marks an error as not retryable (exit 3).
pub fn bad_input(e: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(BadInput(format!("{e:#}")))
}

#[derive(Clone)]
struct TokenInterceptor(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);
impl tonic::service::Interceptor for TokenInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

type Api = WorkerApiClient<InterceptedService<Channel, TokenInterceptor>>;

/// The connection to the coordinator, with retries while it is unavailable.
#[derive(Clone)]
pub struct Conn {
    api: Api,
    worker_id: Arc<std::sync::Mutex<String>>,
    reconnect_timeout: Duration,
}

fn transient(s: &Status) -> bool {
    matches!(s.code(), Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded | Code::Aborted)
        || (s.code() == Code::Internal && s.message().contains("transport"))
}

impl Conn {
    async fn call<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, Status>
    where
        F: FnMut(Api) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let start = Instant::now();
        let mut delay = Duration::from_millis(200);
        let mut warned = false;
        loop {
            match f(self.api.clone()).await {
                Ok(r) => {
                    if warned {
                        tracing::info!("coordinator reachable again ({what})");
                    }
                    return Ok(r.into_inner());
                }
                Err(s) if transient(&s) && start.elapsed() < self.reconnect_timeout => {
                    if !warned {
                        tracing::warn!(
                            "{what}: coordinator unavailable ({}); retrying for up to {:?}",
                            s.message(),
                            self.reconnect_timeout
                        );
                        warned = true;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(s) => return Err(s),
            }
        }
    }

    fn id(&self) -> String {
        self.worker_id.lock().unwrap().clone()
    }

    async fn upload(&self, task: &pb::Task, local: &Path, rel: &str) -> Result<()> {
        let bytes = tokio::fs::read(local).await.with_context(|| format!("reading {}", local.display()))?;
        let sha = nnunet_common::hash::sha256_bytes(&bytes);
        let bytes = Arc::new(bytes);
        let (run_id, task_id, token, rel_s) = (task.run_id.clone(), task.task_id.clone(), task.fencing_token, rel.to_string());
        self.call("upload", |mut api| {
            let bytes = bytes.clone();
            let (run_id, task_id, rel_s, sha) = (run_id.clone(), task_id.clone(), rel_s.clone(), sha.clone());
            async move {
                let header = nnunet_proto::chunks::Header { run_id, task_id, fencing_token: token, path: rel_s, ..Default::default() };
                let chunks = nnunet_proto::chunks::split(&bytes, 0, CHUNK, &header, &sha);
                api.upload_artifact(tokio_stream::iter(chunks)).await
            }
        })
        .await
        .map_err(|s| anyhow!(TaskLost(format!("upload of {rel} refused: {}", s.message()))).context(format!("{:?}", s.code())))?;
        Ok(())
    }

    async fn download(&self, run_id: &str, rel: &str, dest: &Path, expect_sha: &str) -> Result<()> {
        use sha2::Digest;
        let req = pb::DownloadRequest { run_id: run_id.into(), path: rel.into(), offset: 0 };
        let data: Vec<u8> = self
            .call("download", |mut api| {
                let req = req.clone();
                async move {
                    let mut s = api.download_artifact(req).await?.into_inner();
                    let mut buf = Vec::new();
                    while let Some(c) = s.message().await? {
                        buf.extend_from_slice(&c.data);
                        if c.last {
                            break;
                        }
                    }
                    Ok(tonic::Response::new(buf))
                }
            })
            .await
            .map_err(|s| anyhow!("downloading {rel}: {}", s.message()))?;
        let got = hex::encode(sha2::Sha256::digest(&data));
        if !expect_sha.is_empty() && got != expect_sha {
            bail!("downloaded {rel} has sha256 {got}, expected {expect_sha} (changed on the coordinator during the transfer?)");
        }
        nnunet_common::hash::write_atomic(dest, &data)?;
        Ok(())
    }
}

/// The task's lease is gone (expired, fenced or cancelled): stop without reporting.
#[derive(Debug)]
pub struct TaskLost(pub String);
impl std::fmt::Display for TaskLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "lease lost: {}", self.0)
    }
}
impl std::error::Error for TaskLost {}

fn is_lost(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<TaskLost>().is_some())
}

pub fn run_serve(args: ServeArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(serve(args))
}

async fn connect(args: &ServeArgs) -> Result<Conn> {
    let addr = args.coordinator.clone().context("--coordinator URL is required")?;
    let ep = nnunet_proto::endpoint(&addr, args.tls_ca.as_deref())?.timeout(Duration::from_secs(600));
    let token = match &args.token_file {
        Some(f) => Some(std::fs::read_to_string(f).with_context(|| format!("reading token file {}", f.display()))?.trim().to_string()),
        None => std::env::var("NNUNET_TOKEN").ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()),
    };
    let meta = token.map(|t| format!("Bearer {t}").parse()).transpose().context("the token has characters not allowed in a header")?;
    let api = WorkerApiClient::with_interceptor(ep.connect_lazy(), TokenInterceptor(meta))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    Ok(Conn {
        api,
        worker_id: Arc::new(std::sync::Mutex::new(String::new())),
        reconnect_timeout: Duration::from_secs(args.reconnect_timeout_secs),
    })
}

async fn register(conn: &Conn, args: &ServeArgs) -> Result<pb::RegisterReply> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into());
    crate::nvml::select(&args.device);
    let gpu = tokio::task::spawn_blocking(crate::nvml::sample).await.ok().flatten();
    let req = pb::RegisterRequest {
        host,
        device: args.device.clone(),
        device_name: gpu.as_ref().map(|g| g.name.clone()).unwrap_or_else(|| {
            if args.device.starts_with("cuda") {
                "cuda".into()
            } else {
                "cpu".into()
            }
        }),
        device_memory_bytes: gpu.as_ref().map_or(0, |g| g.memory_total_bytes),
        cpu_threads: std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
        version: env!("CARGO_PKG_VERSION").into(),
        shared_root: String::new(),
    };
    let reply = conn
        .call("register", |mut api| {
            let req = req.clone();
            async move { api.register(req).await }
        })
        .await
        .map_err(|s| match s.code() {
            Code::Unauthenticated | Code::PermissionDenied => {
                bad_input(anyhow!("the coordinator refused this worker: {} (pass --token-file or set NNUNET_TOKEN)", s.message()))
            }
            _ => anyhow!("registering with the coordinator: {}", s.message()),
        })?;
    *conn.worker_id.lock().unwrap() = reply.worker_id.clone();
    Ok(reply)
}

async fn serve(args: ServeArgs) -> Result<()> {
    let device = crate::device::parse_device(&args.device).map_err(bad_input)?;
    if args.threads > 0 {
        tch::set_num_threads(args.threads as i32);
    }
    let stop = Arc::new(AtomicBool::new(false));
    for kind in [
        tokio::signal::unix::SignalKind::terminate(),
        tokio::signal::unix::SignalKind::user_defined1(),
        tokio::signal::unix::SignalKind::interrupt(),
    ] {
        let mut sig = tokio::signal::unix::signal(kind)?;
        let stop = stop.clone();
        tokio::spawn(async move {
            sig.recv().await;
            tracing::warn!("signal received: stopping the current task (it resumes elsewhere from its last checkpoint)");
            stop.store(true, Ordering::SeqCst);
        });
    }
    let cache = args.cache_dir.clone().unwrap_or_else(|| {
        std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp")).join(".cache").join("nnunet-rs")
    });
    let conn = connect(&args).await.map_err(bad_input)?;
    let reg = register(&conn, &args).await?;
    tracing::info!(worker = %reg.worker_id, device = %args.device, "registered with {}", args.coordinator.as_deref().unwrap_or(""));
    let hb_interval = Duration::from_millis(reg.heartbeat_interval_ms.max(200) as u64);
    loop {
        if stop.load(Ordering::SeqCst) {
            return Err(ExitCode(143).into());
        }
        let req = pb::LeaseRequest { worker_id: conn.id() };
        let reply = match conn
            .call("lease", |mut api| {
                let req = req.clone();
                async move { api.lease(req).await }
            })
            .await
        {
            Ok(r) => r,
            Err(s) if s.code() == Code::NotFound => {
                // The coordinator lost our registration (fresh state dir): register again.
                register(&conn, &args).await?;
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
            if reply.shutdown && args.exit_when_idle {
                tracing::info!("no active run left; exiting");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(reply.retry_after_ms.clamp(100, 5000) as u64)).await;
            continue;
        };
        let kind = pb::TaskKind::try_from(task.kind).unwrap_or(pb::TaskKind::Unspecified);
        tracing::info!(task = %task.task_id, ?kind, fold = task.fold, attempt = task.attempt, "leased");
        // The run's cache folder: held while the task runs; other runs' folders pruned.
        let in_place = uses_run_dir_in_place(&task, args.no_shared_fs);
        let run_cache = crate::cache::RunLease::acquire(&cache, &task.run_id).map_err(|e| tracing::warn!("cache: {e:#}")).ok();
        for p in crate::cache::prune(&cache, &task.run_id, args.cache_keep_runs.max(1)) {
            tracing::info!("cache: removed {} (least recently used run folder)", p.display());
        }
        let lost = Arc::new(AtomicBool::new(false));
        let hb = spawn_heartbeat(conn.clone(), task.clone(), lost.clone(), hb_interval);
        let ctx = TaskCtx {
            conn: conn.clone(),
            task: task.clone(),
            stop: stop.clone(),
            lost: lost.clone(),
            device,
            cache: cache.clone(),
            threads: args.threads,
            in_place,
            rt: tokio::runtime::Handle::current(),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new().name(format!("task-{}", task.task_id)).spawn(move || {
            let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_task(&ctx)));
            let res = match res {
                Ok(r) => r,
                Err(p) => Err(anyhow!(
                    "the task panicked: {}",
                    p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
                )),
            };
            let _ = tx.send(res);
        })?;
        let res = rx.await.unwrap_or_else(|_| Err(anyhow!("task thread vanished")));
        hb.abort();
        // With the run directory in place, the cache folder only held scratch copies and outputs that
        // are uploaded by now (the coordinator's checkpoint is what a retry resumes from).
        if let (true, Some(rc)) = (in_place, run_cache) {
            rc.release_and_remove();
        }
        let (wid, tid, lease_id, token) = (conn.id(), task.task_id.clone(), task.lease_id, task.fencing_token);
        match res {
            Ok(result_json) => {
                let req = pb::CompleteRequest { worker_id: wid, task_id: tid, lease_id, fencing_token: token, result_json };
                match conn
                    .call("complete", |mut api| {
                        let req = req.clone();
                        async move { api.complete(req).await }
                    })
                    .await
                {
                    Ok(_) => tracing::info!(task = %task.task_id, "done"),
                    Err(s) => tracing::warn!(task = %task.task_id, "completion refused: {}", s.message()),
                }
            }
            Err(e) if is_lost(&e) || lost.load(Ordering::SeqCst) => {
                tracing::warn!(task = %task.task_id, "stopped: {e:#}");
            }
            Err(e) => {
                let signalled = stop.load(Ordering::SeqCst);
                let msg = if signalled { "worker stopped by a signal (preemption or eviction)".to_string() } else { format!("{e:#}") };
                tracing::error!(task = %task.task_id, "failed: {msg}");
                let req = pb::FailRequest { worker_id: wid, task_id: tid, lease_id, fencing_token: token, error: msg, retryable: true };
                let _ = conn
                    .call("fail", |mut api| {
                        let req = req.clone();
                        async move { api.fail(req).await }
                    })
                    .await;
                if signalled {
                    return Err(ExitCode(143).into());
                }
            }
        }
    }
}

fn spawn_heartbeat(conn: Conn, task: pb::Task, lost: Arc<AtomicBool>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
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
            match conn
                .call("heartbeat", |mut api| {
                    let req = req.clone();
                    async move { api.heartbeat(req).await }
                })
                .await
            {
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

/// Whether the run directory is visible here (its marker names the task's run): then inputs are read
/// in place instead of downloaded.
fn uses_run_dir_in_place(task: &pb::Task, no_shared_fs: bool) -> bool {
    !no_shared_fs && std::fs::read_to_string(Path::new(&task.run_dir).join(RUN_MARKER)).map(|s| s.trim() == task.run_id).unwrap_or(false)
}

/// Everything a task needs, usable from its own OS thread.
struct TaskCtx {
    conn: Conn,
    task: pb::Task,
    stop: Arc<AtomicBool>,
    lost: Arc<AtomicBool>,
    device: tch::Device,
    cache: PathBuf,
    threads: usize,
    /// Whether the run directory is read in place ([`uses_run_dir_in_place`], decided once per task).
    in_place: bool,
    rt: tokio::runtime::Handle,
}

struct Workspace {
    /// Where inputs are read: the run directory itself (shared filesystem) or the local mirror.
    root: PathBuf,
    /// Local mirror of the run directory: outputs are written here before upload.
    scratch: PathBuf,
    shared: bool,
}

impl TaskCtx {
    fn dirs(&self, root: &Path) -> DatasetDirs {
        DatasetDirs::new(&self.task.dataset_name, &root.join("raw"), &root.join("preprocessed"), &root.join("results"))
    }

    fn rel(&self, ws: &Workspace, p: &Path) -> String {
        p.strip_prefix(&ws.scratch).or_else(|_| p.strip_prefix(&ws.root)).unwrap_or(p).to_string_lossy().into_owned()
    }

    fn check_stop(&self) -> Result<()> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(TaskLost("the coordinator took the task back".into()).into());
        }
        if self.stop.load(Ordering::SeqCst) {
            bail!("stopped by a signal");
        }
        Ok(())
    }

    /// Makes every input available: in place on a shared filesystem (results/ files are copied to
    /// scratch, since they are worked on), else downloaded into the cache (kept across tasks).
    fn workspace(&self) -> Result<Workspace> {
        let run_dir = PathBuf::from(&self.task.run_dir);
        let shared = self.in_place;
        let scratch = self.cache.join("runs").join(&self.task.run_id);
        std::fs::create_dir_all(&scratch).with_context(|| format!("creating cache {}", scratch.display()))?;
        let root = if shared { run_dir.clone() } else { scratch.clone() };
        let mut fetched = 0usize;
        let mut bytes = 0u64;
        for a in &self.task.inputs {
            self.check_stop()?;
            let dest = scratch.join(&a.path);
            if shared {
                if a.path.starts_with("results") {
                    std::fs::create_dir_all(dest.parent().unwrap())?;
                    std::fs::copy(run_dir.join(&a.path), &dest).with_context(|| format!("copying {}", a.path))?;
                }
                continue;
            }
            if !crate::cache::cached_input(&dest, a.size, &a.sha256) {
                self.rt.block_on(self.conn.download(&self.task.run_id, &a.path, &dest, &a.sha256))?;
                crate::cache::remember_verified(&dest, &a.sha256);
                fetched += 1;
                bytes += a.size;
            }
        }
        if !shared && fetched > 0 {
            tracing::info!("downloaded {fetched} input file(s), {:.1} MB", bytes as f64 / 1e6);
        }
        Ok(Workspace { root, scratch, shared })
    }

    fn upload(&self, ws: &Workspace, local: &Path) -> Result<()> {
        self.check_stop()?;
        let rel = self.rel(ws, local);
        self.rt.block_on(self.conn.upload(&self.task, local, &rel))
    }

    fn upload_dir(&self, ws: &Workspace, dir: &Path) -> Result<usize> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file() && !p.file_name().unwrap().to_string_lossy().starts_with('.'))
            .collect();
        // Data before the JSON that marks it complete.
        files.sort_by_key(|p| (p.extension().is_some_and(|e| e == "json"), p.clone()));
        for f in &files {
            self.upload(ws, f)?;
        }
        Ok(files.len())
    }

    fn log(&self, line: String) {
        let req = pb::LogLines {
            worker_id: self.conn.id(),
            task_id: self.task.task_id.clone(),
            fencing_token: self.task.fencing_token,
            lines: vec![line],
        };
        let _ = self.rt.block_on(self.conn.call("log", |mut api| {
            let req = req.clone();
            async move { api.log(req).await }
        }));
    }
}

fn run_task(ctx: &TaskCtx) -> Result<String> {
    match pb::TaskKind::try_from(ctx.task.kind).unwrap_or(pb::TaskKind::Unspecified) {
        pb::TaskKind::Preprocess => run_preprocess(ctx),
        pb::TaskKind::Train => run_train(ctx),
        pb::TaskKind::Validate => run_validate(ctx),
        pb::TaskKind::Predict => run_predict(ctx),
        pb::TaskKind::Unspecified => bail!("task {} has no kind; coordinator and worker versions differ?", ctx.task.task_id),
    }
}

fn threads(ctx: &TaskCtx) -> usize {
    let b = ctx.task.budget.clone().unwrap_or_default();
    if ctx.threads > 0 {
        ctx.threads
    } else if b.num_threads > 0 {
        b.num_threads as usize
    } else {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    }
}

fn run_preprocess(ctx: &TaskCtx) -> Result<String> {
    let ws = ctx.workspace()?;
    let dirs = ctx.dirs(&ws.root);
    let out_dirs = if ws.shared { dirs.clone() } else { ctx.dirs(&ws.scratch) };
    let report = nnunet_common::preprocess::preprocess_dataset(&out_dirs, threads(ctx), Some(&ctx.task.case_ids), false)
        .with_context(|| format!("preprocessing {} case(s)", ctx.task.case_ids.len()))?;
    if !ws.shared {
        let ending = nnunet_common::dataset_json::DatasetJson::load(&dirs.raw.join("dataset.json"))?.file_ending;
        for c in &ctx.task.case_ids {
            let f = nnunet_common::case::CaseFiles::new(&out_dirs.data_dir(), c);
            for p in [&f.data, &f.seg, &f.props] {
                ctx.upload(&ws, p)?;
            }
            let gt = out_dirs.gt_dir().join(format!("{c}{ending}"));
            if gt.exists() {
                ctx.upload(&ws, &gt)?;
            }
        }
    }
    ctx.log(format!("preprocessed {} case(s)", ctx.task.case_ids.len()));
    Ok(serde_json::json!({ "cases": ctx.task.case_ids.len(), "report": format!("{report:?}") }).to_string())
}

struct GrpcProgress<'a> {
    ctx: &'a TaskCtx,
    ws: &'a Workspace,
    fold_dir: PathBuf,
    uploader: Uploader,
}

/// Streams checkpoints to the coordinator from a background thread, so training never waits for
/// the network. One pending slot per checkpoint kind: a newer `latest` (or `best`) replaces one
/// that has not started uploading yet, so a slow link costs freshness, not training time. The
/// final checkpoint is always uploaded, and the task completes only after everything is flushed.
struct Uploader {
    shared: Arc<(std::sync::Mutex<UploadQueue>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct UploadQueue {
    /// Pending jobs by priority (0 final, 1 latest, 2 best): the staged folder and its files.
    pending: std::collections::BTreeMap<u8, (PathBuf, Vec<(PathBuf, String)>)>,
    closed: bool,
    error: Option<String>,
}

impl Uploader {
    fn new(conn: Conn, task: pb::Task, rt: tokio::runtime::Handle) -> Self {
        let shared: Arc<(std::sync::Mutex<UploadQueue>, std::sync::Condvar)> = Arc::default();
        let sh = shared.clone();
        let thread = std::thread::spawn(move || loop {
            let job = {
                let (lock, cv) = &*sh;
                let mut q = lock.lock().unwrap();
                while q.pending.is_empty() && !q.closed {
                    q = cv.wait(q).unwrap();
                }
                match q.pending.pop_first() {
                    Some((_, job)) => job,
                    None => return,
                }
            };
            let (staged, files) = job;
            let t = Instant::now();
            let mut bytes = 0;
            let mut res = Ok(());
            for (local, rel) in &files {
                bytes += std::fs::metadata(local).map(|m| m.len()).unwrap_or(0);
                res = rt.block_on(conn.upload(&task, local, rel));
                if res.is_err() {
                    break;
                }
            }
            let _ = std::fs::remove_dir_all(&staged);
            match res {
                Ok(()) => tracing::info!(
                    "checkpoint streamed to the coordinator: {:.1} MB in {:.2}s",
                    bytes as f64 / 1e6,
                    t.elapsed().as_secs_f64()
                ),
                Err(e) => {
                    let (lock, _) = &*sh;
                    let mut q = lock.lock().unwrap();
                    q.error = Some(format!("{e:#}"));
                    for (_, (dir, _)) in std::mem::take(&mut q.pending) {
                        let _ = std::fs::remove_dir_all(dir);
                    }
                    return;
                }
            }
        });
        Uploader { shared, thread: Some(thread) }
    }

    fn submit(&self, priority: u8, staged: PathBuf, files: Vec<(PathBuf, String)>) -> Result<()> {
        let (lock, cv) = &*self.shared;
        let mut q = lock.lock().unwrap();
        if let Some(e) = &q.error {
            return Err(anyhow!(TaskLost(format!("checkpoint upload failed: {e}"))));
        }
        if let Some((old, _)) = q.pending.insert(priority, (staged, files)) {
            let _ = std::fs::remove_dir_all(old); // superseded before it started
        }
        if priority == 0 {
            // The final checkpoint supersedes any latest one not yet sent.
            if let Some((old, _)) = q.pending.remove(&1) {
                let _ = std::fs::remove_dir_all(old);
            }
        }
        cv.notify_all();
        Ok(())
    }

    /// Uploads what is pending and stops; the first upload error, if any.
    fn flush(&mut self) -> Result<()> {
        {
            let (lock, cv) = &*self.shared;
            lock.lock().unwrap().closed = true;
            cv.notify_all();
        }
        if let Some(t) = self.thread.take() {
            t.join().map_err(|_| anyhow!("checkpoint upload thread panicked"))?;
        }
        match self.shared.0.lock().unwrap().error.take() {
            Some(e) => Err(anyhow!(TaskLost(format!("checkpoint upload failed: {e}")))),
            None => Ok(()),
        }
    }
}

impl Progress for GrpcProgress<'_> {
    fn on_epoch(&mut self, m: &EpochMetrics) -> Result<()> {
        let ctx = self.ctx;
        let req = pb::MetricsReport {
            worker_id: ctx.conn.id(),
            task_id: ctx.task.task_id.clone(),
            lease_id: ctx.task.lease_id,
            fencing_token: ctx.task.fencing_token,
            metrics: Some(nnunet_proto::convert::metrics_to_proto(m)),
        };
        ctx.rt
            .block_on(ctx.conn.call("metrics", |mut api| {
                let req = req.clone();
                async move { api.report_metrics(req).await }
            }))
            .map_err(|s| anyhow!(TaskLost(format!("metrics refused: {}", s.message()))))?;
        Ok(())
    }

    fn on_checkpoint(&mut self, kind: CheckpointKind, files: &[PathBuf]) -> Result<()> {
        // Weights first, then logs and plot, the JSON sidecar last: the coordinator records the
        // checkpoint when the sidecar lands. Files are hard-linked into a staging folder
        // (checkpoints are replaced by rename, never rewritten, so the link keeps this version).
        let mut files: Vec<PathBuf> = files.to_vec();
        for extra in ["progress.png", "training_log.jsonl", "training_log.txt"] {
            let p = self.fold_dir.join(extra);
            if p.exists() && !files.contains(&p) {
                files.push(p);
            }
        }
        // TensorBoard event files (nnunet_common::tensorboard) travel with the logs.
        for e in std::fs::read_dir(&self.fold_dir)?.flatten() {
            if e.file_name().to_string_lossy().contains(nnunet_common::tensorboard::FILE_MARKER) && !files.contains(&e.path()) {
                files.push(e.path());
            }
        }
        files.sort_by_key(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            (n.starts_with("checkpoint") && n.ends_with(".json"), !n.ends_with(".safetensors"), n)
        });
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let staged = self.fold_dir.join(format!(".outbox-{kind:?}-{}", SEQ.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&staged)?;
        let mut jobs = Vec::new();
        for f in &files {
            let link = staged.join(f.file_name().unwrap());
            if std::fs::hard_link(f, &link).is_err() {
                std::fs::copy(f, &link)?;
            }
            jobs.push((link, self.ctx.rel(self.ws, f)));
        }
        let priority = match kind {
            CheckpointKind::Final => 0,
            CheckpointKind::Latest => 1,
            CheckpointKind::Best => 2,
        };
        self.uploader.submit(priority, staged, jobs)
    }

    fn log(&mut self, line: &str) {
        self.ctx.log(line.to_string());
    }

    fn should_stop(&self) -> bool {
        self.ctx.stop.load(Ordering::SeqCst) || self.ctx.lost.load(Ordering::SeqCst)
    }
}

fn fold_dir(ctx: &TaskCtx, root: &Path) -> PathBuf {
    ctx.dirs(root).fold_dir(ctx.task.fold as usize)
}

fn run_train(ctx: &TaskCtx) -> Result<String> {
    let scratch = ctx.cache.join("runs").join(&ctx.task.run_id);
    let fd = fold_dir(ctx, &scratch);
    // The coordinator's last checkpoint is the truth: local leftovers of an earlier attempt go.
    if fd.exists() {
        for e in std::fs::read_dir(&fd)?.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("checkpoint_") || n.starts_with("training_log") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let ws = ctx.workspace()?;
    std::fs::create_dir_all(&fd)?;
    let b = ctx.task.budget.clone().unwrap_or_default();
    let mut config = TrainingConfig::nnunet_v2();
    config.epochs = b.epochs as usize;
    config.iterations_per_epoch = b.iterations_per_epoch as usize;
    config.val_iterations_per_epoch = b.val_iterations_per_epoch as usize;
    config.save_every = b.save_every.max(1) as usize;
    config.seed = b.seed.wrapping_add(ctx.task.fold as u64);
    config.torch_threads = threads(ctx);
    let resume_from = if ctx.task.checkpoint.is_empty() { None } else { Some(ctx.task.checkpoint.clone()) };
    if let Some(ck) = &resume_from {
        let epoch = std::fs::read(scratch.join(ck).with_extension("json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v.get("epoch").and_then(|e| e.as_u64()));
        let line = format!(
            "resuming fold {} from checkpoint at epoch {}",
            ctx.task.fold,
            epoch.map(|e| e.to_string()).unwrap_or_else(|| "?".into())
        );
        tracing::info!("{line}");
        ctx.log(line);
    } else {
        ctx.log(format!("training fold {} from scratch on {}", ctx.task.fold, crate::device::device_string(ctx.device)));
    }
    let spec = FoldSpec {
        preprocessed_dir: ctx.dirs(&ws.root).preprocessed,
        fold: ctx.task.fold as usize,
        fold_dir: fd.clone(),
        device: ctx.device,
        config,
        resume: true,
    };
    let uploader = Uploader::new(ctx.conn.clone(), ctx.task.clone(), ctx.rt.clone());
    let mut progress = GrpcProgress { ctx, ws: &ws, fold_dir: fd.clone(), uploader };
    let outcome = train::train_fold(&spec, &mut progress);
    let flushed = progress.uploader.flush();
    let outcome = outcome?;
    flushed?;
    if outcome.stopped_early {
        ctx.check_stop()?;
        bail!("training stopped early");
    }
    Ok(serde_json::json!({ "epochs_run": outcome.epochs_run, "best_ema": outcome.best_ema }).to_string())
}

fn predict_options(ctx: &TaskCtx, save_probabilities: bool) -> crate::infer::PredictOptions {
    let b = ctx.task.budget.clone().unwrap_or_default();
    crate::infer::PredictOptions {
        use_mirroring: !b.disable_tta,
        step_size: 0.5,
        save_probabilities,
        device: ctx.device,
        checkpoint_name: "checkpoint_final".into(),
    }
}

fn run_validate(ctx: &TaskCtx) -> Result<String> {
    let ws = ctx.workspace()?;
    let fd = fold_dir(ctx, &ws.scratch);
    let val_dir = fd.join("validation");
    if val_dir.exists() {
        std::fs::remove_dir_all(&val_dir)?;
    }
    let summary = crate::infer::validate_fold(&ctx.dirs(&ws.root).preprocessed, ctx.task.fold as usize, &fd, &predict_options(ctx, false))?;
    let n = ctx.upload_dir(&ws, &val_dir)?;
    let v = serde_json::to_value(&summary)?;
    let dice = v.pointer("/foreground_mean/Dice").cloned().unwrap_or(serde_json::Value::Null);
    ctx.log(format!("fold {} validation: {n} file(s), mean foreground Dice {dice}", ctx.task.fold));
    Ok(serde_json::json!({ "dice": dice, "files": n }).to_string())
}

fn run_predict(ctx: &TaskCtx) -> Result<String> {
    let ws = ctx.workspace()?;
    let model_dir = ctx.dirs(&ws.scratch).model_dir();
    // plans.json, dataset.json and the checkpoint came with the results/ inputs (copied to scratch
    // on a shared filesystem); the test images are read from `ws.root`.
    let input = ctx.dirs(&ws.root).raw.join("imagesTs");
    let out = model_dir.join("test_predictions").join(format!("fold_{}", ctx.task.fold));
    if out.exists() {
        std::fs::remove_dir_all(&out)?;
    }
    let report = crate::infer::predict_folder(&model_dir, &[ctx.task.fold as usize], &input, &out, &predict_options(ctx, true))?;
    let n = ctx.upload_dir(&ws, &out)?;
    Ok(serde_json::json!({ "files": n, "report": format!("{report:?}") }).to_string())
}
