//! The gRPC coordinator: `WorkerApi` (workers dial out to it) and `Monitor` (users watch and
//! steer runs), health checking, reflection, token authentication and optional TLS.
//!
//! The [`Coordinator`] owns the [`State`] behind a mutex (never held across an await), persists
//! every change to SQLite before answering, and fans events out to watchers through a broadcast
//! channel; a watcher that falls behind re-reads the journal instead of losing events.
use crate::pipeline;
use crate::state::{self, Budget, Effects, Event, EventBody, Refusal, Run, RunState, State, TaskState};
use crate::store::Store;
use anyhow::{bail, Context, Result};
use nnunet_proto::v1 as pb;
use nnunet_proto::v1::monitor_server::{Monitor, MonitorServer};
use nnunet_proto::v1::worker_api_server::{WorkerApi, WorkerApiServer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// Chunk size for artifact streaming.
pub const CHUNK: usize = 1 << 20;
/// Message size limit on both sides (chunks are 1 MiB; headroom for metadata).
pub const MAX_MESSAGE: usize = 16 << 20;

#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub state_dir: PathBuf,
    pub lease_ttl: Duration,
    pub heartbeat_interval: Duration,
    /// Threads used by the coordinator's own planning and finalizing.
    pub threads: usize,
}

impl CoordinatorConfig {
    pub fn new(state_dir: PathBuf) -> Self {
        CoordinatorConfig { state_dir, lease_ttl: Duration::from_secs(30), heartbeat_interval: Duration::from_secs(3), threads: 2 }
    }
}

/// Counters for `/metrics`.
#[derive(Default, Debug)]
pub struct Counters {
    pub bytes_uploaded: std::sync::atomic::AtomicU64,
    pub bytes_downloaded: std::sync::atomic::AtomicU64,
    pub refused_writes: std::sync::atomic::AtomicU64,
}

pub struct Coordinator {
    pub cfg: CoordinatorConfig,
    pub state: Mutex<State>,
    store: Mutex<Store>,
    events: broadcast::Sender<Event>,
    pub counters: Counters,
    /// Workers' heartbeat readings (RSS, NVML), for `/metrics` and the dashboard.
    pub telemetry: crate::web::Telemetry,
    hash_cache: Mutex<HashMap<PathBuf, (u64, i64, String)>>,
}

impl Coordinator {
    /// Opens (or creates) the state in `cfg.state_dir`. Leases that were running when a previous
    /// coordinator died get a fresh deadline, so their workers can reconnect and keep going.
    pub fn open(cfg: CoordinatorConfig) -> Result<Arc<Self>> {
        std::fs::create_dir_all(cfg.state_dir.join("runs")).with_context(|| format!("creating state dir {}", cfg.state_dir.display()))?;
        let store = Store::open(&cfg.state_dir.join("coordinator.db"))?;
        let mut st = store.load(cfg.lease_ttl.as_millis() as i64)?;
        let now = state::now_ms();
        for t in st.tasks.values_mut() {
            if t.state == TaskState::Running {
                t.lease_expires_ms = now + cfg.lease_ttl.as_millis() as i64 * 2;
            }
        }
        let (events, _) = broadcast::channel(4096);
        Ok(Arc::new(Coordinator {
            cfg,
            state: Mutex::new(st),
            store: Mutex::new(store),
            events,
            counters: Counters::default(),
            telemetry: Default::default(),
            hash_cache: Mutex::new(HashMap::new()),
        }))
    }

    /// Applies a state mutation, persists its effects, publishes its events.
    pub fn apply<T>(&self, f: impl FnOnce(&mut State) -> (T, Effects)) -> Result<T> {
        let mut st = self.state.lock().unwrap();
        let (out, fx) = f(&mut st);
        self.store.lock().unwrap().persist(&st, &fx)?;
        drop(st);
        for e in fx.events {
            let _ = self.events.send(e);
        }
        Ok(out)
    }

    fn apply_fenced(&self, f: impl FnOnce(&mut State) -> Result<Effects, Refusal>) -> Result<(), Status> {
        let res = self.apply(|st| match f(st) {
            Ok(fx) => (Ok(()), fx),
            Err(r) => (Err(r), Effects::default()),
        });
        match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(r)) => {
                self.counters.refused_writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Err(refusal_status(r))
            }
            Err(e) => Err(Status::internal(format!("persisting state: {e:#}"))),
        }
    }

    pub fn run_dir(&self, run_id: &str) -> PathBuf {
        self.cfg.state_dir.join("runs").join(run_id)
    }

    /// Creates a run for a raw nnU-Net dataset folder and plans it in the background.
    pub fn submit(self: &Arc<Self>, req: pb::SubmitRunRequest) -> Result<Run> {
        let raw = PathBuf::from(&req.dataset_dir);
        let raw = raw
            .canonicalize()
            .with_context(|| format!("dataset folder {} does not exist (it must be readable by the coordinator)", raw.display()))?;
        if !raw.join("dataset.json").is_file() {
            bail!("{} has no dataset.json: give an nnU-Net v2 raw dataset folder (DatasetXXX_Name), or convert images and masks first with `nnunet convert`", raw.display());
        }
        let dataset_name = raw.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let run_id = new_run_id();
        let run_dir = self.run_dir(&run_id);
        let folds = if req.folds.is_empty() { vec![0, 1, 2, 3, 4] } else { req.folds.clone() };
        let run = Run {
            id: run_id.clone(),
            name: if req.name.is_empty() { dataset_name.clone() } else { req.name.clone() },
            dataset_name: dataset_name.clone(),
            raw_dir: raw.to_string_lossy().into_owned(),
            run_dir: run_dir.to_string_lossy().into_owned(),
            state: RunState::Planning,
            budget: Budget::from_proto(req.budget.as_ref()),
            folds,
            predict_test: req.predict_test,
            preprocess_shards: req.preprocess_shards,
            created_ms: state::now_ms(),
            summary_json: None,
            error: None,
            next_seq: 0,
        };
        pipeline::prepare_run_dir(&run_dir, &run_id, &raw, &dataset_name)?;
        self.apply(|st| ((), st.add_run(run.clone())))?;
        let me = self.clone();
        let rid = run_id.clone();
        tokio::task::spawn_blocking(move || me.plan_run(&rid));
        Ok(run)
    }

    /// Verify + fingerprint + plan + splits, written once by the coordinator; then the task graph.
    fn plan_run(self: &Arc<Self>, run_id: &str) {
        let run = match self.state.lock().unwrap().runs.get(run_id).cloned() {
            Some(r) => r,
            None => return,
        };
        let res = pipeline::plan(&run, self.cfg.threads);
        let _ = match res {
            Ok(cases) => {
                let n_workers = {
                    let st = self.state.lock().unwrap();
                    let now = state::now_ms();
                    st.workers.values().filter(|w| now - w.last_seen_ms < 60_000).count()
                };
                let shards = if run.preprocess_shards > 0 { run.preprocess_shards as usize } else { n_workers.max(1) };
                self.apply(|st| ((), st.create_tasks(run_id, &cases, shards)))
            }
            Err(e) => self.apply(|st| ((), st.run_failed(run_id, format!("planning failed: {e:#}")))),
        };
    }

    /// Writes the CV summary (and the test-set ensemble) of runs whose tasks are all done.
    fn finalize_ready_runs(self: &Arc<Self>) {
        let ids = self.state.lock().unwrap().runs_to_finalize();
        for id in ids {
            let run = self.state.lock().unwrap().runs[&id].clone();
            let res = pipeline::finalize(&run).map_err(|e| format!("{e:#}"));
            let _ = self.apply(|st| ((), st.finish_run(&id, res)));
        }
    }

    /// Background housekeeping: lease expiry and finalization, every 500 ms.
    pub fn spawn_housekeeping(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                let now = state::now_ms();
                let _ = me.apply(|st| ((), st.expire_leases(now)));
                let ready = !me.state.lock().unwrap().runs_to_finalize().is_empty();
                if ready {
                    let m = me.clone();
                    let _ = tokio::task::spawn_blocking(move || m.finalize_ready_runs()).await;
                }
            }
        });
        // Runs that were planning when a previous coordinator died are planned again.
        let planning: Vec<String> =
            self.state.lock().unwrap().runs.values().filter(|r| r.state == RunState::Planning).map(|r| r.id.clone()).collect();
        for id in planning {
            let has_tasks = self.state.lock().unwrap().tasks.values().any(|t| t.run_id == id);
            if !has_tasks {
                let me = self.clone();
                tokio::task::spawn_blocking(move || me.plan_run(&id));
            }
        }
    }

    fn hash_of(&self, path: &Path) -> Result<(String, u64)> {
        let md = std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
        let mtime = md.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_nanos() as i64).unwrap_or(0);
        if let Some((size, mt, h)) = self.hash_cache.lock().unwrap().get(path) {
            if *size == md.len() && *mt == mtime {
                return Ok((h.clone(), *size));
            }
        }
        let h = nnunet_common::hash::sha256_file(path)?;
        self.hash_cache.lock().unwrap().insert(path.to_path_buf(), (md.len(), mtime, h.clone()));
        Ok((h, md.len()))
    }

    fn task_to_proto(&self, t: &state::Task, run: &Run) -> Result<pb::Task> {
        let run_dir = PathBuf::from(&run.run_dir);
        let mut inputs = Vec::new();
        for rel in pipeline::task_inputs(run, t)? {
            let (sha256, size) = self.hash_of(&run_dir.join(&rel))?;
            inputs.push(pb::ArtifactRef { path: rel, sha256, size });
        }
        Ok(pb::Task {
            task_id: t.id.clone(),
            run_id: t.run_id.clone(),
            kind: t.kind.to_proto(),
            fold: t.fold,
            lease_id: t.lease_id,
            fencing_token: t.fencing_token,
            case_ids: t.cases.clone(),
            budget: Some(run.budget.to_proto()),
            dataset_name: run.dataset_name.clone(),
            inputs,
            run_dir: run.run_dir.clone(),
            checkpoint: pipeline::task_checkpoint(run, t).unwrap_or_default(),
            attempt: t.attempt,
        })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub fn events_since(&self, run_id: &str, from: u64, limit: usize) -> Result<Vec<Event>> {
        self.store.lock().unwrap().events_since(run_id, from, limit)
    }

    pub fn run_info(&self, run_id: &str) -> Option<pb::RunInfo> {
        let st = self.state.lock().unwrap();
        let run = st.runs.get(run_id)?;
        let mut tasks: Vec<&state::Task> = st.tasks.values().filter(|t| t.run_id == run_id).collect();
        tasks.sort_by_key(|t| (t.kind, t.fold, t.id.clone()));
        Some(pb::RunInfo {
            run_id: run.id.clone(),
            name: run.name.clone(),
            dataset_name: run.dataset_name.clone(),
            state: run.state.name().into(),
            run_dir: run.run_dir.clone(),
            tasks: tasks
                .into_iter()
                .map(|t| pb::TaskInfo {
                    task_id: t.id.clone(),
                    kind: t.kind.to_proto(),
                    fold: t.fold,
                    state: t.state.name().into(),
                    worker_id: t.worker_id.clone().unwrap_or_default(),
                    attempt: t.attempt,
                    last_metrics: t.last_metrics.as_ref().map(metrics_to_proto),
                    error: t.error.clone().unwrap_or_default(),
                    result_json: t.result_json.clone().unwrap_or_default(),
                })
                .collect(),
            summary_json: run
                .summary_json
                .clone()
                .or_else(|| run.error.clone().map(|e| serde_json::json!({ "error": e }).to_string()))
                .unwrap_or_default(),
            created_ms: run.created_ms,
            budget: Some(run.budget.to_proto()),
        })
    }
}

fn new_run_id() -> String {
    use rand::Rng;
    let t = chrono_like_stamp();
    let r: u32 = rand::rng().random();
    format!("run-{t}-{:04x}", r & 0xffff)
}

/// UTC `YYYYMMDD-HHMMSS` without a date crate.
fn chrono_like_stamp() -> String {
    let secs = state::now_ms() / 1000;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // civil-from-days (H. Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}", sod / 3600, (sod % 3600) / 60, sod % 60)
}

pub use nnunet_proto::convert::{metrics_from_proto, metrics_to_proto};

pub fn event_to_proto(e: &Event) -> pb::Event {
    use pb::event::Body;
    let body = match &e.body {
        EventBody::RunState(s) => Body::RunState(s.clone()),
        EventBody::TaskState { state, worker_id, detail, kind, attempt } => Body::TaskState(pb::TaskStateChange {
            state: state.clone(),
            worker_id: worker_id.clone(),
            detail: detail.clone(),
            kind: kind.to_proto(),
            attempt: *attempt,
        }),
        EventBody::Metrics(m) => Body::Metrics(metrics_to_proto(m)),
        EventBody::Log(l) => Body::Log(l.clone()),
        EventBody::Summary(s) => Body::SummaryJson(s.clone()),
    };
    pb::Event { seq: e.seq, ts_ms: e.ts_ms, run_id: e.run_id.clone(), fold: e.fold, task_id: e.task_id.clone(), body: Some(body) }
}

fn refusal_status(r: Refusal) -> Status {
    match r {
        Refusal::UnknownTask(_) | Refusal::UnknownRun(_) => Status::not_found(r.to_string()),
        Refusal::Fenced { .. } | Refusal::NotRunning(..) => Status::failed_precondition(r.to_string()),
        Refusal::Invalid(_) => Status::invalid_argument(r.to_string()),
    }
}

fn internal(e: anyhow::Error) -> Status {
    Status::internal(format!("{e:#}"))
}

/// A relative artifact path inside a run directory: no absolute paths, no `..`.
pub fn safe_rel_path(p: &str) -> Result<PathBuf, Status> {
    let path = Path::new(p);
    if p.is_empty() || path.is_absolute() || path.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(Status::invalid_argument(format!("artifact path {p:?} must be relative to the run directory, without '..'")));
    }
    Ok(path.to_path_buf())
}

// ------------------------------------------------------------------ WorkerApi

pub struct WorkerService(pub Arc<Coordinator>);

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::ArtifactChunk, Status>> + Send>>;
type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl WorkerApi for WorkerService {
    async fn register(&self, req: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterReply>, Status> {
        let r = req.into_inner();
        let id = format!("w-{}-{}", sanitize(&r.host), {
            use rand::Rng;
            rand::rng().random::<u32>() & 0xffffff
        });
        let now = state::now_ms();
        let w = state::Worker {
            id: id.clone(),
            host: r.host,
            device: r.device,
            device_name: r.device_name,
            registered_ms: now,
            last_seen_ms: now,
        };
        self.0.apply(|st| ((), st.register_worker(w))).map_err(internal)?;
        tracing::info!(worker = %id, "worker registered");
        Ok(Response::new(pb::RegisterReply {
            worker_id: id,
            heartbeat_interval_ms: self.0.cfg.heartbeat_interval.as_millis() as i64,
            lease_ttl_ms: self.0.cfg.lease_ttl.as_millis() as i64,
        }))
    }

    async fn lease(&self, req: Request<pb::LeaseRequest>) -> Result<Response<pb::LeaseReply>, Status> {
        let worker_id = req.into_inner().worker_id;
        let known = {
            let mut st = self.0.state.lock().unwrap();
            st.touch_worker(&worker_id);
            st.workers.contains_key(&worker_id)
        };
        if !known {
            return Err(Status::not_found(format!("unknown worker {worker_id}: register again")));
        }
        let now = state::now_ms();
        let (task, shutdown) = self
            .0
            .apply(|st| {
                let (t, fx) = st.lease(&worker_id, now);
                let shutdown = t.is_none() && !st.has_active_runs();
                ((t, shutdown), fx)
            })
            .map_err(internal)?;
        let Some(task) = task else {
            return Ok(Response::new(pb::LeaseReply { task: None, retry_after_ms: 500, shutdown }));
        };
        let run = self.0.state.lock().unwrap().runs[&task.run_id].clone();
        match self.0.task_to_proto(&task, &run) {
            Ok(t) => Ok(Response::new(pb::LeaseReply { task: Some(t), retry_after_ms: 0, shutdown: false })),
            Err(e) => {
                // The inputs are not readable: give the task back and say why.
                let msg = format!("cannot prepare inputs of {}: {e:#}", task.id);
                let _ = self.0.apply(|st| ((), st.fail(&task.id, task.fencing_token, &msg, true).unwrap_or_default()));
                Err(Status::internal(msg))
            }
        }
    }

    async fn heartbeat(&self, req: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatReply>, Status> {
        let r = req.into_inner();
        let now = state::now_ms();
        self.0.telemetry.record(&r, now);
        let mut st = self.0.state.lock().unwrap();
        st.touch_worker(&r.worker_id);
        match st.heartbeat(&r.task_id, r.fencing_token, now) {
            Ok(cancel) => Ok(Response::new(pb::HeartbeatReply {
                ok: !cancel,
                reason: if cancel { "the run was cancelled or has ended".into() } else { String::new() },
                cancel,
            })),
            Err(e) => Ok(Response::new(pb::HeartbeatReply { ok: false, reason: e.to_string(), cancel: false })),
        }
    }

    async fn report_metrics(&self, req: Request<pb::MetricsReport>) -> Result<Response<pb::Ack>, Status> {
        let r = req.into_inner();
        let m = r.metrics.as_ref().map(metrics_from_proto).unwrap_or_default();
        self.0.apply_fenced(|st| st.report_metrics(&r.task_id, r.fencing_token, m))?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn log(&self, req: Request<pb::LogLines>) -> Result<Response<pb::Ack>, Status> {
        let r = req.into_inner();
        self.0.apply_fenced(|st| st.log(&r.task_id, r.fencing_token, &r.lines))?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn upload_artifact(&self, req: Request<Streaming<pb::ArtifactChunk>>) -> Result<Response<pb::UploadReply>, Status> {
        use sha2::Digest;
        use tokio::io::AsyncWriteExt;
        let mut stream = req.into_inner();
        let first = stream.message().await?.ok_or_else(|| Status::invalid_argument("empty upload"))?;
        let rel = safe_rel_path(&first.path)?;
        if !(rel.starts_with("preprocessed") || rel.starts_with("results")) {
            return Err(Status::permission_denied(format!("uploads go under preprocessed/ or results/, not {}", first.path)));
        }
        let (task_id, token) = (first.task_id.clone(), first.fencing_token);
        let run_dir = {
            let st = self.0.state.lock().unwrap();
            let t = st.check_fence(&task_id, token).map_err(|r| {
                self.0.counters.refused_writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                refusal_status(r)
            })?;
            if t.run_id != first.run_id {
                return Err(Status::invalid_argument("task does not belong to that run"));
            }
            PathBuf::from(&st.runs[&t.run_id].run_dir)
        };
        let dest = run_dir.join(&rel);
        if let Some(d) = dest.parent() {
            tokio::fs::create_dir_all(d).await.map_err(|e| Status::internal(e.to_string()))?;
        }
        let tmp = dest.with_file_name(format!(".{}.upload-{}-{}", dest.file_name().unwrap().to_string_lossy(), task_id, token));
        let mut f = tokio::fs::File::create(&tmp).await.map_err(|e| Status::internal(e.to_string()))?;
        let mut hasher = sha2::Sha256::new();
        let mut size = 0u64;
        let mut chunk = Some(first);
        let mut claimed = String::new();
        let mut saw_last = false;
        while let Some(c) = chunk {
            if c.offset != size {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(Status::invalid_argument(format!("chunk at offset {} where {size} was expected", c.offset)));
            }
            hasher.update(&c.data);
            f.write_all(&c.data).await.map_err(|e| Status::internal(e.to_string()))?;
            size += c.data.len() as u64;
            if c.last {
                claimed = c.sha256.clone();
                saw_last = true;
                break;
            }
            chunk = stream.message().await?;
        }
        f.sync_all().await.map_err(|e| Status::internal(e.to_string()))?;
        drop(f);
        let digest = hex::encode(hasher.finalize());
        if !saw_last || (!claimed.is_empty() && claimed != digest) {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(Status::data_loss(format!(
                "upload of {} incomplete or corrupted (sha256 {digest}, claimed {claimed:?})",
                rel.display()
            )));
        }
        // Check the fence again at commit time: the lease may have been lost during the transfer.
        let fence = { self.0.state.lock().unwrap().check_fence(&task_id, token).map(|_| ()) };
        if let Err(r) = fence {
            let _ = tokio::fs::remove_file(&tmp).await;
            self.0.counters.refused_writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(refusal_status(r));
        }
        tokio::fs::rename(&tmp, &dest).await.map_err(|e| Status::internal(e.to_string()))?;
        self.0.counters.bytes_uploaded.fetch_add(size, std::sync::atomic::Ordering::Relaxed);
        if let Some((ck, epoch)) = pipeline::checkpoint_from_upload(&rel, &dest) {
            self.0.apply_fenced(|st| st.checkpoint_uploaded(&task_id, token, &ck, epoch))?;
        }
        Ok(Response::new(pb::UploadReply { path: rel.to_string_lossy().into_owned(), sha256: digest, size }))
    }

    type DownloadArtifactStream = ChunkStream;

    async fn download_artifact(&self, req: Request<pb::DownloadRequest>) -> Result<Response<ChunkStream>, Status> {
        let r = req.into_inner();
        let rel = safe_rel_path(&r.path)?;
        let run_dir = {
            let st = self.0.state.lock().unwrap();
            let run = st.runs.get(&r.run_id).ok_or_else(|| Status::not_found(format!("unknown run {}", r.run_id)))?;
            PathBuf::from(&run.run_dir)
        };
        let path = run_dir.join(&rel);
        let bytes = tokio::fs::read(&path).await.map_err(|e| Status::not_found(format!("{}: {e}", rel.display())))?;
        let total = bytes.len() as u64;
        let sha = nnunet_common::hash::sha256_bytes(&bytes);
        self.0.counters.bytes_downloaded.fetch_add(total, std::sync::atomic::Ordering::Relaxed);
        let start = (r.offset as usize).min(bytes.len());
        let path_s = r.path.clone();
        let stream = async_stream_chunks(bytes, start, path_s, sha);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn complete(&self, req: Request<pb::CompleteRequest>) -> Result<Response<pb::Ack>, Status> {
        let r = req.into_inner();
        self.0.apply_fenced(|st| st.complete(&r.task_id, r.fencing_token, r.result_json.clone()))?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn fail(&self, req: Request<pb::FailRequest>) -> Result<Response<pb::Ack>, Status> {
        let r = req.into_inner();
        self.0.apply_fenced(|st| st.fail(&r.task_id, r.fencing_token, &r.error, r.retryable))?;
        Ok(Response::new(pb::Ack {}))
    }
}

fn async_stream_chunks(
    bytes: Vec<u8>,
    start: usize,
    path: String,
    sha: String,
) -> impl Stream<Item = Result<pb::ArtifactChunk, Status>> + Send {
    let header = nnunet_proto::chunks::Header { path, ..Default::default() };
    tokio_stream::iter(nnunet_proto::chunks::split(&bytes, start, CHUNK, &header, &sha).into_iter().map(Ok))
}

fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).take(40).collect()
}

// ------------------------------------------------------------------ Monitor

pub struct MonitorService(pub Arc<Coordinator>);

#[tonic::async_trait]
impl Monitor for MonitorService {
    async fn submit_run(&self, req: Request<pb::SubmitRunRequest>) -> Result<Response<pb::RunInfo>, Status> {
        let run = self.0.submit(req.into_inner()).map_err(|e| Status::invalid_argument(format!("{e:#}")))?;
        Ok(Response::new(self.0.run_info(&run.id).expect("just created")))
    }

    async fn list_runs(&self, _req: Request<pb::ListRunsRequest>) -> Result<Response<pb::ListRunsReply>, Status> {
        let mut ids: Vec<(i64, String)> = self.0.state.lock().unwrap().runs.values().map(|r| (r.created_ms, r.id.clone())).collect();
        ids.sort();
        let runs = ids.into_iter().filter_map(|(_, id)| self.0.run_info(&id)).collect();
        Ok(Response::new(pb::ListRunsReply { runs }))
    }

    async fn get_run(&self, req: Request<pb::GetRunRequest>) -> Result<Response<pb::RunInfo>, Status> {
        let id = req.into_inner().run_id;
        self.0.run_info(&id).map(Response::new).ok_or_else(|| Status::not_found(format!("unknown run {id}")))
    }

    type WatchRunStream = EventStream;

    async fn watch_run(&self, req: Request<pb::WatchRunRequest>) -> Result<Response<EventStream>, Status> {
        let r = req.into_inner();
        if self.0.run_info(&r.run_id).is_none() {
            return Err(Status::not_found(format!("unknown run {}", r.run_id)));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let coord = self.0.clone();
        tokio::spawn(async move {
            // Subscribe before replaying so nothing falls between the journal and the live feed.
            let mut live = coord.subscribe();
            let mut next = r.since_seq;
            loop {
                let batch = match coord.events_since(&r.run_id, next, 1000) {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(Status::internal(format!("{e:#}")))).await;
                        return;
                    }
                };
                if batch.is_empty() {
                    break;
                }
                for e in batch {
                    next = e.seq + 1;
                    if tx.send(Ok(event_to_proto(&e))).await.is_err() {
                        return;
                    }
                }
            }
            let terminal = |c: &Coordinator| c.state.lock().unwrap().runs.get(&r.run_id).is_none_or(|x| x.state.is_terminal());
            if !r.follow || terminal(&coord) {
                return;
            }
            loop {
                let ev = tokio::time::timeout(Duration::from_secs(2), live.recv()).await;
                match ev {
                    Ok(Ok(e)) => {
                        if e.run_id != r.run_id || e.seq < next {
                            continue;
                        }
                        if e.seq > next {
                            // A gap: re-read the journal.
                            if let Ok(batch) = coord.events_since(&r.run_id, next, 100_000) {
                                for e in batch {
                                    next = e.seq + 1;
                                    if tx.send(Ok(event_to_proto(&e))).await.is_err() {
                                        return;
                                    }
                                }
                            }
                            continue;
                        }
                        next = e.seq + 1;
                        let done = matches!(&e.body, EventBody::RunState(s) if s == "DONE" || s == "FAILED" || s == "CANCELLED");
                        if tx.send(Ok(event_to_proto(&e))).await.is_err() {
                            return;
                        }
                        if done {
                            return;
                        }
                    }
                    Ok(Err(broadcast::error::RecvError::Lagged(_))) | Err(_) => {
                        if let Ok(batch) = coord.events_since(&r.run_id, next, 100_000) {
                            for e in batch {
                                next = e.seq + 1;
                                if tx.send(Ok(event_to_proto(&e))).await.is_err() {
                                    return;
                                }
                            }
                        }
                        if terminal(&coord) {
                            return;
                        }
                    }
                    Ok(Err(broadcast::error::RecvError::Closed)) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn cancel_run(&self, req: Request<pb::CancelRunRequest>) -> Result<Response<pb::RunInfo>, Status> {
        let id = req.into_inner().run_id;
        self.0.apply_fenced(|st| st.cancel_run(&id))?;
        Ok(Response::new(self.0.run_info(&id).expect("exists")))
    }

    async fn retry_fold(&self, req: Request<pb::RetryFoldRequest>) -> Result<Response<pb::RunInfo>, Status> {
        let r = req.into_inner();
        self.0.apply_fenced(|st| st.retry_fold(&r.run_id, r.fold))?;
        Ok(Response::new(self.0.run_info(&r.run_id).expect("exists")))
    }
}

// ------------------------------------------------------------------ auth, TLS, serving

/// Checks `authorization: Bearer <token>` in constant time.
#[derive(Clone)]
pub struct AuthInterceptor {
    token: Option<Arc<String>>,
}

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.token else { return Ok(req) };
        let got = req.metadata().get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
        let ok = got.len() == expected.len() && got.bytes().zip(expected.bytes()).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0;
        if ok {
            Ok(req)
        } else if got.is_empty() {
            Err(Status::unauthenticated(
                "missing token: pass --token-file FILE or set NNUNET_TOKEN (the coordinator printed where its token is stored at start)",
            ))
        } else {
            Err(Status::unauthenticated("wrong token"))
        }
    }
}

pub struct ServeOptions {
    pub listen: SocketAddr,
    /// `None` only with `--no-auth` on a loopback address.
    pub token: Option<String>,
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
}

/// Serves both services plus health and reflection on `listener` until `shutdown` resolves.
pub async fn serve(
    coord: Arc<Coordinator>,
    listener: tokio::net::TcpListener,
    opts: ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let auth = AuthInterceptor { token: opts.token.map(Arc::new) };
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<WorkerApiServer<WorkerService>>().await;
    health_reporter.set_serving::<MonitorServer<MonitorService>>().await;
    health_reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let worker =
        WorkerApiServer::new(WorkerService(coord.clone())).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE);
    let monitor =
        MonitorServer::new(MonitorService(coord.clone())).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE);
    // Large HTTP/2 windows: artifact uploads are 1 MiB chunks; the 64 KiB default throttles them.
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20));
    if let Some((cert, key)) = opts.tls {
        let identity = tonic::transport::Identity::from_pem(cert, key);
        builder = builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity)).context("configuring TLS")?;
    }
    coord.spawn_housekeeping();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(tonic::service::interceptor::InterceptedService::new(worker, auth.clone()))
        .add_service(tonic::service::interceptor::InterceptedService::new(monitor, auth))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("gRPC server")?;
    Ok(())
}

/// Resolves the coordinator's token: `--token-file`, then `NNUNET_TOKEN`, then `<state-dir>/token`
/// (generated with 256 random bits on first start, mode 0600). Returns (token, where it came from).
pub fn resolve_token(token_file: Option<&Path>, state_dir: &Path) -> Result<(String, String)> {
    if let Some(f) = token_file {
        let t = std::fs::read_to_string(f).with_context(|| format!("reading token file {}", f.display()))?;
        let t = t.trim().to_string();
        if t.len() < 16 {
            bail!("token in {} is shorter than 16 characters; use a long random secret (e.g. `openssl rand -hex 32`)", f.display());
        }
        return Ok((t, f.display().to_string()));
    }
    if let Ok(t) = std::env::var("NNUNET_TOKEN") {
        if !t.trim().is_empty() {
            return Ok((t.trim().to_string(), "NNUNET_TOKEN".into()));
        }
    }
    let p = state_dir.join("token");
    if let Ok(t) = std::fs::read_to_string(&p) {
        return Ok((t.trim().to_string(), p.display().to_string()));
    }
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    let t = hex::encode(b);
    std::fs::create_dir_all(state_dir)?;
    nnunet_common::hash::write_atomic(&p, t.as_bytes())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
    }
    // Printed once, at generation; later starts only say where it is.
    Ok((t.clone(), format!("{} (generated on this first start: {t})", p.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn artifact_paths_cannot_escape_the_run_dir() {
        assert!(safe_rel_path("results/a/b.json").is_ok());
        assert!(safe_rel_path("../etc/passwd").is_err());
        assert!(safe_rel_path("/etc/passwd").is_err());
        assert!(safe_rel_path("results/../../x").is_err());
        assert!(safe_rel_path("").is_err());
    }
    #[test]
    fn stamp_looks_like_a_date() {
        let s = chrono_like_stamp();
        assert_eq!(s.len(), 15);
        assert!(s.starts_with("20"));
    }
}
