//! The [`Coordinator`]: owns the [`State`] behind a mutex (never held across an await), persists
//! every change to SQLite before it becomes visible, and fans events out to watchers through a
//! broadcast channel; a watcher that falls behind re-reads the journal instead of losing events.
//!
//! Persist first: a mutation runs on the blocking pool, is written in one transaction, and only
//! then answered and published. When writing fails (a full disk), the touched rows are reloaded
//! from the database, so memory never runs ahead of what a restart would see (fencing tokens and
//! attempts never go backwards); the caller gets the error and it is logged.
mod artifacts;
mod background;
mod pairs;
pub mod run_inputs;
mod submit;
mod sweep;

pub use artifacts::{open_download, safe_rel_path, upload_allowed, Download, UploadError, UploadSink};
pub use pairs::{checkpoint_part, sidecar_weights, Part};
pub use submit::validate_spec;

use crate::clock::{Clock, SystemClock};
use crate::domain::{Role, RunId, TaskKind};
use crate::state::{Effects, Event, Refusal, Run, RunState, State, Task, TaskState};
use crate::store::Store;
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::broadcast;

/// How long finished runs are kept (both limits apply; `None`: no limit).
#[derive(Debug, Clone, Default)]
pub struct Retention {
    /// Keep at most this many finished runs (the newest).
    pub keep_finished: Option<usize>,
    /// Delete finished runs older than this.
    pub max_age: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub state_dir: PathBuf,
    pub lease_ttl: Duration,
    pub heartbeat_interval: Duration,
    /// Threads used by the coordinator's own planning and finalizing.
    pub threads: usize,
    /// Largest artifact a worker may upload.
    pub max_upload_bytes: u64,
    /// Workers silent for this long (and holding no lease) are forgotten.
    pub worker_idle_prune: Duration,
    pub retention: Retention,
    /// Caps the database file (SQLite `max_page_count`); writes beyond it fail like a full disk.
    pub max_db_bytes: Option<u64>,
    /// `$nnUNet_preprocessed` / `$nnUNet_results` to reuse preprocessed data from and publish finished runs to.
    pub user_dirs: crate::user_dirs::UserDirs,
}

impl CoordinatorConfig {
    pub fn new(state_dir: PathBuf) -> Self {
        CoordinatorConfig {
            state_dir,
            lease_ttl: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(3),
            threads: 2,
            max_upload_bytes: 8 << 30,
            worker_idle_prune: Duration::from_secs(3600),
            retention: Retention::default(),
            max_db_bytes: None,
            user_dirs: crate::user_dirs::UserDirs::default(),
        }
    }
}

/// Counters for `/metrics`.
#[derive(Default, Debug)]
pub struct Counters {
    pub bytes_uploaded: AtomicU64,
    pub bytes_downloaded: AtomicU64,
    /// Refused worker writes by call (`heartbeat`, `metrics`, `log`, `upload`, `complete`, `fail`, ...).
    pub fenced: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
    pub persist_failures: AtomicU64,
}

impl Counters {
    /// Counts a refused write of `call` (a mutation's name; `checkpoint` is an upload's last step).
    pub fn fenced(&self, call: &'static str) {
        let call = if call == "checkpoint" { "upload" } else { call };
        *lock(&self.fenced).entry(call).or_insert(0) += 1;
    }

    /// The refused writes by call.
    pub fn fenced_by_call(&self) -> Vec<(&'static str, u64)> {
        lock(&self.fenced).iter().map(|(k, v)| (*k, *v)).collect()
    }
}

/// Why a change did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// Writing the database failed; nothing changed.
    #[error("the coordinator could not persist the change (nothing was changed): {0}")]
    Persist(String),
    /// A leased task could not be prepared (its inputs are unreadable); it went back to the queue.
    #[error("{0}")]
    Prepare(String),
}

/// A run and its tasks, for display.
#[derive(Debug, Clone)]
pub struct RunView {
    pub run: Run,
    pub tasks: Vec<Task>,
}

/// A leased task with what the worker needs: input files (with sha256) and its starting checkpoint.
#[derive(Debug, Clone)]
pub struct TaskOrder {
    pub task: Task,
    pub run: Run,
    pub inputs: Vec<InputFile>,
    pub checkpoint: Option<String>,
    /// TRAIN from scratch: the run's pretrained weights (relative to the run dir, also an input).
    pub pretrained: Option<String>,
}

#[derive(Debug, Clone)]
pub struct InputFile {
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

struct TokenCache {
    /// When (coordinator clock, ms) the roles were read.
    loaded: Option<i64>,
    roles: HashMap<String, Role>,
}

pub struct Coordinator {
    pub cfg: CoordinatorConfig,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    store: Mutex<Store>,
    events: broadcast::Sender<Event>,
    pub counters: Counters,
    /// Workers' latest process and device readings (RSS, NVML), for `/metrics` and the dashboard.
    pub telemetry: crate::telemetry::Telemetry,
    hash_cache: Mutex<HashMap<PathBuf, (u64, i64, String)>>,
    poisoned: AtomicBool,
    tokens: Mutex<TokenCache>,
    /// Runs a previous coordinator left in PLANNING without tasks: planned again at start.
    replan: Mutex<Vec<RunId>>,
    /// Checkpoint weights waiting for their sidecar, by destination ([`pairs`]).
    held: Mutex<HashMap<PathBuf, pairs::HeldWeights>>,
    /// Mutations on the blocking pool at once ([`Coordinator::apply`]). They serialize on the state
    /// lock anyway; unbounded, 500 workers' calls grew the pool to its 512 threads (and the RSS by ~50 MB).
    apply_slots: tokio::sync::Semaphore,
}

/// [`Coordinator::apply_slots`]: enough to overlap a persist with the next call's wait for the lock.
const APPLY_SLOTS: usize = 4;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Coordinator {
    pub fn open(cfg: CoordinatorConfig) -> Result<Arc<Self>> {
        Self::open_with_clock(cfg, Arc::new(SystemClock))
    }

    /// Opens (or creates) the state in `cfg.state_dir`. Leases that were running when a previous
    /// coordinator died get a fresh deadline, so their workers can reconnect and keep going.
    pub fn open_with_clock(cfg: CoordinatorConfig, clock: Arc<dyn Clock>) -> Result<Arc<Self>> {
        std::fs::create_dir_all(cfg.state_dir.join("runs")).with_context(|| format!("creating state dir {}", cfg.state_dir.display()))?;
        let store = Store::open(&cfg.state_dir.join("coordinator.db"))?;
        if let Some(b) = cfg.max_db_bytes {
            store.limit_size(b)?;
        }
        let mut st = store.load(cfg.lease_ttl.as_millis() as i64)?;
        // Uploads and writes a killed coordinator cut short never complete: remove their temps.
        let runs_dir = cfg.state_dir.join("runs");
        let mut roots = vec![runs_dir.clone()];
        roots.extend(st.runs.values().map(|r| PathBuf::from(&r.run_dir)).filter(|d| !d.starts_with(&runs_dir)));
        for root in roots {
            let (n, bytes) = sweep::remove_stale_temps(&root);
            if n > 0 {
                tracing::info!("removed {n} temp file(s) ({:.1} MB) of cut-short uploads under {}", bytes as f64 / 1e6, root.display());
            }
        }
        let now = clock.now_ms();
        for t in st.tasks.values_mut() {
            if t.state == TaskState::Running {
                t.lease_expires_ms = now + cfg.lease_ttl.as_millis() as i64 * 2;
            }
        }
        let replan = st
            .runs
            .values()
            .filter(|r| r.state == RunState::Planning && !st.tasks.values().any(|t| t.run_id == r.id))
            .map(|r| r.id.clone())
            .collect();
        let (events, _) = broadcast::channel(4096);
        Ok(Arc::new(Coordinator {
            cfg,
            clock,
            state: Mutex::new(st),
            store: Mutex::new(store),
            events,
            counters: Counters::default(),
            telemetry: Default::default(),
            hash_cache: Mutex::new(HashMap::new()),
            poisoned: AtomicBool::new(false),
            tokens: Mutex::new(TokenCache { loaded: None, roles: HashMap::new() }),
            replan: Mutex::new(replan),
            held: Mutex::new(HashMap::new()),
            apply_slots: tokio::sync::Semaphore::new(APPLY_SLOTS),
        }))
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Reads the state.
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&lock(&self.state))
    }

    /// Applies a mutation on the blocking pool (see [`Coordinator::apply_blocking`]).
    pub async fn apply<T: Send + 'static>(
        self: &Arc<Self>,
        what: &'static str,
        f: impl FnOnce(&mut State, i64) -> Result<(T, Effects), Refusal> + Send + 'static,
    ) -> Result<T, ApplyError> {
        let _slot = self.apply_slots.acquire().await.map_err(|e| ApplyError::Persist(format!("{what}: {e}")))?;
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.apply_blocking(what, f)).await.map_err(|e| ApplyError::Persist(format!("{what}: {e}")))?
    }

    /// Applies a mutation, persists its effects, publishes its events; undoes it when persisting fails.
    pub fn apply_blocking<T>(
        &self,
        what: &'static str,
        f: impl FnOnce(&mut State, i64) -> Result<(T, Effects), Refusal>,
    ) -> Result<T, ApplyError> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(ApplyError::Persist("an earlier failure left memory and database apart; restart the coordinator".into()));
        }
        let now = self.clock.now_ms();
        let mut st = lock(&self.state);
        let (out, fx) = match f(&mut st, now) {
            Ok(v) => v,
            Err(r) => {
                self.counters.fenced(what);
                tracing::info!(what, "refused: {r}");
                return Err(r.into());
            }
        };
        if fx.is_empty() {
            return Ok(out);
        }
        let mut store = lock(&self.store);
        if let Err(e) = store.persist(&st, &fx) {
            self.counters.persist_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(what, "persisting the coordinator state failed, the change is undone: {e:#}");
            if let Err(e2) = store.reload_touched(&mut st, &fx) {
                self.poisoned.store(true, Ordering::SeqCst);
                tracing::error!(what, "undoing the change failed too; refusing further changes until a restart: {e2:#}");
            }
            return Err(ApplyError::Persist(format!("{what}: {e:#}")));
        }
        drop(store);
        drop(st);
        for e in fx.events {
            // No receiver (no watcher) is not an error: the journal has the event.
            if self.events.send(e).is_err() {
                tracing::trace!("no live watcher");
            }
        }
        Ok(out)
    }

    pub fn run_dir(&self, run_id: &RunId) -> PathBuf {
        self.cfg.state_dir.join("runs").join(run_id.as_str())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Journal events of a run with `seq >= from` (blocking: call from the blocking pool).
    pub fn events_since(&self, run_id: &str, from: u64, limit: usize) -> Result<Vec<Event>> {
        lock(&self.store).events_since(run_id, from, limit)
    }

    pub fn run_view(&self, run_id: &str) -> Option<RunView> {
        let st = lock(&self.state);
        let run = st.runs.get(run_id)?.clone();
        let tasks = st.tasks_of(&run.id).into_iter().cloned().collect();
        Some(RunView { run, tasks })
    }

    /// Runs ordered by (created, id), at most `page_size` after `after` (a previous page's last
    /// `created_ms/id`); returns the page and the token of the next one.
    pub fn list_runs(&self, page_size: usize, after: Option<&str>) -> Result<(Vec<RunView>, Option<String>), Refusal> {
        let after = match after.filter(|a| !a.is_empty()) {
            None => None,
            Some(a) => {
                let (ms, id) = a.split_once('/').ok_or_else(|| Refusal::Invalid(format!("bad page token {a:?}")))?;
                Some((ms.parse::<i64>().map_err(|_| Refusal::Invalid(format!("bad page token {a:?}")))?, id.to_string()))
            }
        };
        let st = lock(&self.state);
        let mut keys: Vec<(i64, &RunId)> = st.runs.values().map(|r| (r.created_ms, &r.id)).collect();
        keys.sort();
        let start = match &after {
            None => 0,
            Some((ms, id)) => keys.partition_point(|(m, i)| (*m, i.as_str()) <= (*ms, id.as_str())),
        };
        let page: Vec<RunView> = keys[start..]
            .iter()
            .take(page_size)
            .map(|(_, id)| RunView { run: st.runs[*id].clone(), tasks: st.tasks_of(id).into_iter().cloned().collect() })
            .collect();
        let next = (start + page.len() < keys.len()).then(|| page.last().map(|v| format!("{}/{}", v.run.created_ms, v.run.id))).flatten();
        Ok((page, next))
    }

    /// The role of a role token (by its hash), from the database, re-read at most every 2 s so a
    /// revocation takes effect quickly.
    pub fn token_role(&self, hash: &str) -> Option<Role> {
        let now = self.clock.now_ms();
        let mut cache = lock(&self.tokens);
        if cache.loaded.is_none_or(|t| !(0..=2000).contains(&(now - t))) {
            match lock(&self.store).token_roles() {
                Ok(r) => cache.roles = r,
                Err(e) => tracing::error!("reading role tokens: {e:#}"),
            }
            cache.loaded = Some(now);
        }
        cache.roles.get(hash).copied()
    }

    /// Whether a run is finished (or gone).
    pub fn run_finished(&self, run_id: &str) -> bool {
        lock(&self.state).runs.get(run_id).is_none_or(|r| r.state.is_terminal())
    }

    /// sha256 and size of a file, cached by (size, mtime).
    pub(crate) fn hash_of(&self, path: &Path) -> Result<(String, u64)> {
        let md = std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
        let mtime = md.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_nanos() as i64).unwrap_or(0);
        if let Some((size, mt, h)) = lock(&self.hash_cache).get(path) {
            if *size == md.len() && *mt == mtime {
                return Ok((h.clone(), *size));
            }
        }
        let h = nnunet_common::hash::sha256_file(path)?;
        lock(&self.hash_cache).insert(path.to_path_buf(), (md.len(), mtime, h.clone()));
        Ok((h, md.len()))
    }

    /// What a worker needs for a leased task (hashes inputs: call from the blocking pool).
    pub fn task_order(&self, mut task: Task) -> Result<TaskOrder> {
        let run = lock(&self.state).runs.get(&task.run_id).cloned().context("the task's run is gone")?;
        let run_dir = PathBuf::from(&run.run_dir);
        if task.kind == TaskKind::Train {
            if let Some(ck) = task.checkpoint.take() {
                task.checkpoint = pairs::resume_checkpoint(self, &run_dir, &ck);
            }
        }
        let mut inputs = Vec::new();
        for rel in crate::pipeline::task_inputs(&run, &task)? {
            let (sha256, size) = self.hash_of(&run_dir.join(&rel))?;
            inputs.push(InputFile { path: rel, sha256, size });
        }
        let checkpoint = crate::pipeline::task_checkpoint(&run, &task);
        let pretrained = crate::pipeline::task_pretrained(&run, &task);
        Ok(TaskOrder { task, run, inputs, checkpoint, pretrained })
    }

    /// Leases a task to `worker` and prepares it; a task whose inputs cannot be read goes back
    /// to the queue with the reason. `Ok(None)`: nothing to do (`bool`: no run needs workers).
    pub async fn lease(self: &Arc<Self>, worker: crate::domain::WorkerId) -> Result<(Option<TaskOrder>, bool), ApplyError> {
        let w = worker.clone();
        let (task, idle) = self
            .apply("lease", move |st, now| {
                if !st.touch_worker(&w, now) {
                    return Err(Refusal::UnknownWorker(w.clone()));
                }
                let (t, fx) = st.lease(&w, now);
                let idle = t.is_none() && !st.has_active_runs();
                Ok(((t, idle), fx))
            })
            .await?;
        let Some(task) = task else { return Ok((None, idle)) };
        tracing::info!(task = %task.id, worker = %worker, attempt = task.attempt, kind = task.kind.name(), "leased");
        let me = self.clone();
        let t2 = task.clone();
        let order = tokio::task::spawn_blocking(move || me.task_order(t2)).await.map_err(|e| ApplyError::Persist(e.to_string()))?;
        match order {
            Ok(o) => Ok((Some(o), false)),
            Err(e) => {
                let msg = format!("cannot prepare inputs of {}: {e:#}", task.id);
                tracing::error!("{msg}");
                let (id, token, m) = (task.id.clone(), task.fencing_token, msg.clone());
                self.apply("give back an unpreparable task", move |st, now| Ok(((), st.fail(id.as_str(), token, &worker, &m, true, now)?)))
                    .await?;
                Err(ApplyError::Prepare(msg))
            }
        }
    }

    /// Extends a lease (in memory: a restarted coordinator gives running leases a fresh deadline).
    pub fn heartbeat(&self, task_id: &str, token: u64, worker: &crate::domain::WorkerId) -> Result<bool, Refusal> {
        let now = self.clock.now_ms();
        let mut st = lock(&self.state);
        st.touch_worker(worker, now);
        st.heartbeat(task_id, token, worker, now)
    }

    /// Kind and run of a task a worker holds, checked against its fencing token.
    pub fn fenced_task(&self, task_id: &str, token: u64, worker: Option<&crate::domain::WorkerId>) -> Result<(Task, Run), Refusal> {
        let st = lock(&self.state);
        let t = st.check_fence(task_id, token, worker)?.clone();
        let run = st.runs.get(&t.run_id).cloned().ok_or_else(|| Refusal::UnknownRun(t.run_id.clone()))?;
        Ok((t, run))
    }

    /// Whether runs are waiting for preprocessing or training.
    pub fn pending_kinds(&self) -> Vec<TaskKind> {
        lock(&self.state).tasks.values().filter(|t| t.state == TaskState::Pending).map(|t| t.kind).collect()
    }

    /// Runs (active, same dataset folder and folds) that an interrupted `nnunet run` left behind.
    pub fn resumable_run(&self, raw_dir: &str, folds: &[nnunet_common::Fold], plans_name: &str) -> Option<Run> {
        lock(&self.state)
            .runs
            .values()
            .filter(|r| !r.state.is_terminal() && r.raw_dir == raw_dir && r.folds == folds && r.plans_name == plans_name)
            .max_by_key(|r| r.created_ms)
            .cloned()
    }

    /// The runs to plan again (once: the list is emptied).
    pub(crate) fn take_replan(&self) -> Vec<RunId> {
        std::mem::take(&mut *lock(&self.replan))
    }

    /// The state of a run.
    pub fn run_state(&self, run_id: &str) -> Option<RunState> {
        lock(&self.state).runs.get(run_id).map(|r| r.state)
    }
}
