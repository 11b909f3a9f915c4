//! The coordinator's state machine: runs, their task graphs, leases with fencing tokens, worker
//! registrations and the per-run event journal. Pure: no wire types, no clock (every method that
//! needs the time takes `now` in milliseconds), no I/O.
//!
//! Invariants (checked by the property test in `state/proptests.rs`):
//! - Every mutation goes through [`State`] methods, which never await and return the [`Effects`]
//!   they produced; the caller persists them ([`crate::store::Store`]) before publishing them.
//! - A task's `fencing_token` strictly increases with every lease, cancel and retry; its high bits
//!   count and its low [`TOKEN_RANDOM_BITS`] bits are random, so a token cannot be guessed. A write
//!   (metrics, upload, complete, fail) that carries another token, or comes from another worker
//!   than the holder, is refused.
//! - At most one worker holds a task; attempts never decrease except by an explicit retry (an
//!   out-of-memory requeue beside other tasks is counted in `uncounted_attempts` instead).
//! - A finished run (done, failed, cancelled) never goes back to running by itself.
//! - Global artifacts (fingerprint, plans, splits) are written by the coordinator before any task
//!   is created, so workers never race to create them.
mod devices;
mod lease;
#[cfg(test)]
mod proptests;
mod runs;
#[cfg(test)]
mod tests;

pub use crate::domain::{Budget, RunId, RunState, TaskId, TaskKind, TaskState, TaskTransition, WorkerId};
use nnunet_common::train_log::EpochMetrics;
use nnunet_common::Fold;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Random low bits of a fencing token.
pub const TOKEN_RANDOM_BITS: u32 = 24;

/// The next fencing token after `prev`: a larger generation, fresh random low bits.
pub fn next_fencing_token(prev: u64) -> u64 {
    use rand::Rng;
    let generation = (prev >> TOKEN_RANDOM_BITS) + 1;
    (generation << TOKEN_RANDOM_BITS) | (rand::rng().random::<u64>() & ((1 << TOKEN_RANDOM_BITS) - 1))
}

fn default_plans_name() -> String {
    nnunet_common::paths::PLANS_NAME.to_string()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Run {
    pub id: RunId,
    pub name: String,
    pub dataset_name: String,
    /// The raw dataset folder (canonical path).
    pub raw_dir: String,
    /// `<state-dir>/runs/<id>`.
    pub run_dir: String,
    pub state: RunState,
    pub budget: Budget,
    pub folds: Vec<Fold>,
    pub predict_test: bool,
    pub preprocess_shards: u32,
    /// The plans file (`nnUNetPlans` or a Residual Encoder preset's; nnU-Net's `-p`), from the
    /// run's planner. Runs stored before planners existed read as `nnUNetPlans`.
    #[serde(default = "default_plans_name")]
    pub plans_name: String,
    pub created_ms: i64,
    /// When the run reached a terminal state (for retention).
    #[serde(default)]
    pub finished_ms: Option<i64>,
    pub summary_json: Option<String>,
    pub error: Option<String>,
    /// Next event sequence number.
    pub next_seq: u64,
    /// Pretrained weights and the submitter's nnU-Net roots (none for runs stored before them).
    #[serde(default)]
    pub options: crate::domain::RunOptions,
    /// Device memory one GPU task of this run needs (MiB, from its plan; `state::devices`).
    #[serde(default)]
    pub memory_estimate_mib: Option<u64>,
}

impl Run {
    /// A new run, `Planning`, with the defaults of a plain submit: the default budget, no test
    /// prediction, one preprocessing shard, `nnUNetPlans`, no options, named after its id. Callers
    /// set what differs with struct update syntax (`Run { budget, ..Run::new(...) }`).
    pub fn new(id: RunId, dataset_name: &str, raw_dir: String, run_dir: String, folds: Vec<Fold>, created_ms: i64) -> Run {
        Run {
            name: id.as_str().to_string(),
            id,
            dataset_name: dataset_name.to_string(),
            raw_dir,
            run_dir,
            state: RunState::Planning,
            budget: Budget::default(),
            folds,
            predict_test: false,
            preprocess_shards: 1,
            plans_name: nnunet_common::paths::PLANS_NAME.into(),
            created_ms,
            finished_ms: None,
            summary_json: None,
            error: None,
            next_seq: 0,
            options: Default::default(),
            memory_estimate_mib: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Task {
    pub id: TaskId,
    pub run_id: RunId,
    pub kind: TaskKind,
    /// `None` for preprocessing (not per fold).
    pub fold: Option<Fold>,
    pub cases: Vec<String>,
    pub deps: Vec<TaskId>,
    pub state: TaskState,
    pub worker_id: Option<WorkerId>,
    pub lease_id: u64,
    pub fencing_token: u64,
    pub lease_expires_ms: i64,
    pub attempt: u32,
    /// Last checkpoint uploaded for this task, relative to the run dir (TRAIN).
    pub checkpoint: Option<String>,
    pub checkpoint_epoch: Option<u32>,
    #[serde(default, with = "crate::domain::metrics::stored_opt")]
    pub last_metrics: Option<EpochMetrics>,
    pub error: Option<String>,
    pub result_json: Option<String>,
    /// A retried task is not leased before this time (backoff between attempts, ms since the epoch).
    #[serde(default)]
    pub not_before_ms: i64,
    /// Attempts that ran out of device memory beside other tasks (`devices.rs`): requeued, not
    /// counted towards [`MAX_ATTEMPTS`].
    #[serde(default)]
    pub uncounted_attempts: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Worker {
    pub id: WorkerId,
    pub host: String,
    pub device: String,
    pub device_name: String,
    pub registered_ms: i64,
    pub last_seen_ms: i64,
    /// Which device the worker computes on, unique per host and GPU ("" for CPU workers): workers
    /// with the same key share its memory (`state::devices`).
    #[serde(default)]
    pub device_key: String,
    /// The device's free memory when the worker registered (MiB; 0 unknown).
    #[serde(default)]
    pub device_free_mib: u64,
}

/// A journal event (stored per run, streamed by `WatchRun`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub seq: u64,
    pub ts_ms: i64,
    pub run_id: RunId,
    /// `None`: run level (or preprocessing).
    pub fold: Option<Fold>,
    /// `None`: run level.
    pub task_id: Option<TaskId>,
    pub body: EventBody,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum EventBody {
    RunState(RunState),
    TaskState { state: TaskTransition, worker_id: Option<WorkerId>, detail: String, kind: TaskKind, attempt: u32 },
    Metrics(#[serde(with = "crate::domain::metrics::stored")] EpochMetrics),
    Log(String),
    Summary(String),
}

/// Why a worker's or a user's write was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("unknown task {0}")]
    UnknownTask(TaskId),
    #[error("stale fencing token for task {task}: this worker's lease expired or the task was re-leased; stop working on it")]
    Fenced { task: TaskId },
    #[error("task {task} is held by another worker than {worker}")]
    NotHolder { task: TaskId, worker: WorkerId },
    #[error("task {0} is not running (state {1})")]
    NotRunning(TaskId, &'static str),
    #[error("unknown run {0}")]
    UnknownRun(RunId),
    #[error("unknown worker {0}: register again")]
    UnknownWorker(WorkerId),
    #[error("task {task} belongs to run {run}, which has ended ({state}); its writes are refused")]
    RunEnded { task: TaskId, run: RunId, state: &'static str },
    #[error("{0}")]
    Invalid(String),
}

/// Maximum attempts of one task before the run fails.
pub const MAX_ATTEMPTS: u32 = 6;

/// Backoff before attempt `attempt + 1` of a task that failed `attempt` times: 1 s, 2 s, 4 s, ...
/// up to 30 s, so a bad input or a flaky worker cannot use up every attempt within seconds.
pub fn retry_backoff_ms(attempt: u32) -> i64 {
    (1000i64 << attempt.saturating_sub(1).min(5)).min(30_000)
}

#[derive(Default, Debug, Clone, PartialEq)]
pub struct State {
    pub runs: BTreeMap<RunId, Run>,
    pub tasks: BTreeMap<TaskId, Task>,
    pub workers: BTreeMap<WorkerId, Worker>,
    pub next_lease: u64,
    pub lease_ttl_ms: i64,
    /// Per device key, the most GPU tasks at once after an out-of-memory failure there (in memory
    /// only: a restarted coordinator learns it again).
    pub device_limits: BTreeMap<String, u32>,
}

/// What a mutation changed: events to journal and the rows to persist. A row id listed here that
/// is no longer in the [`State`] was deleted.
#[derive(Default, Debug)]
pub struct Effects {
    pub events: Vec<Event>,
    pub runs: Vec<RunId>,
    pub tasks: Vec<TaskId>,
    pub workers: Vec<WorkerId>,
}

impl Effects {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.runs.is_empty() && self.tasks.is_empty() && self.workers.is_empty()
    }
}

impl State {
    pub fn new(lease_ttl_ms: i64) -> Self {
        State { lease_ttl_ms, next_lease: 1, ..Default::default() }
    }

    pub(crate) fn emit(
        &mut self,
        fx: &mut Effects,
        run_id: &RunId,
        fold: Option<Fold>,
        task_id: Option<&TaskId>,
        body: EventBody,
        now: i64,
    ) {
        if let Some(run) = self.runs.get_mut(run_id) {
            let seq = run.next_seq;
            run.next_seq += 1;
            fx.events.push(Event { seq, ts_ms: now, run_id: run_id.clone(), fold, task_id: task_id.cloned(), body });
            fx.runs.push(run_id.clone());
        }
    }

    pub fn set_run_state(&mut self, run_id: &RunId, st: RunState, fx: &mut Effects, now: i64) {
        if let Some(run) = self.runs.get_mut(run_id) {
            if run.state == st {
                return;
            }
            run.state = st;
            run.finished_ms = st.is_terminal().then_some(now);
            fx.runs.push(run_id.clone());
            self.emit(fx, run_id, None, None, EventBody::RunState(st), now);
        }
    }

    pub fn add_run(&mut self, run: Run, now: i64) -> Effects {
        let mut fx = Effects::default();
        let id = run.id.clone();
        let st = run.state;
        self.runs.insert(id.clone(), run);
        fx.runs.push(id.clone());
        self.emit(&mut fx, &id, None, None, EventBody::RunState(st), now);
        fx
    }

    /// Creates the task graph of a planned run: preprocessing shards, then per fold train ->
    /// validate (and predict when test images exist). Fold `all` gets no validation task: its
    /// validation cases are its training cases (`nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py::do_split`),
    /// and it is left out of the cross-validation summary.
    pub fn create_tasks(&mut self, run_id: &RunId, case_ids: &[String], n_shards: usize, now: i64) -> Effects {
        let mut fx = Effects::default();
        let Some(run) = self.runs.get(run_id).cloned() else { return fx };
        let n_shards = n_shards.clamp(1, case_ids.len().max(1));
        let tid = |what: String| TaskId(format!("{run_id}-{what}-{}", crate::domain::random_hex(4)));
        let mut shard_ids = Vec::new();
        for s in 0..n_shards {
            let cases: Vec<String> = case_ids.iter().skip(s).step_by(n_shards).cloned().collect();
            let id = tid(format!("pre{s}"));
            shard_ids.push(id.clone());
            self.insert_task(&mut fx, Task::new(id, run_id.clone(), TaskKind::Preprocess, None, cases, vec![]));
        }
        for &fold in &run.folds {
            let train = tid(format!("train{fold}"));
            self.insert_task(&mut fx, Task::new(train.clone(), run_id.clone(), TaskKind::Train, Some(fold), vec![], shard_ids.clone()));
            if fold != Fold::All {
                let val = tid(format!("val{fold}"));
                self.insert_task(&mut fx, Task::new(val, run_id.clone(), TaskKind::Validate, Some(fold), vec![], vec![train.clone()]));
            }
            if run.predict_test {
                let pred = tid(format!("pred{fold}"));
                self.insert_task(&mut fx, Task::new(pred, run_id.clone(), TaskKind::Predict, Some(fold), vec![], vec![train.clone()]));
            }
        }
        self.set_run_state(run_id, RunState::Preprocessing, &mut fx, now);
        fx
    }

    fn insert_task(&mut self, fx: &mut Effects, t: Task) {
        fx.tasks.push(t.id.clone());
        self.tasks.insert(t.id.clone(), t);
    }

    pub fn register_worker(&mut self, w: Worker) -> Effects {
        let mut fx = Effects::default();
        fx.workers.push(w.id.clone());
        self.workers.insert(w.id.clone(), w);
        fx
    }

    /// Records a call from `worker_id` (in memory only; persisted with the next change of the row).
    pub fn touch_worker(&mut self, worker_id: &WorkerId, now: i64) -> bool {
        match self.workers.get_mut(worker_id) {
            Some(w) => {
                w.last_seen_ms = now;
                true
            }
            None => false,
        }
    }

    /// Forgets workers not seen for `max_idle_ms` that hold no running task.
    pub fn prune_workers(&mut self, now: i64, max_idle_ms: i64) -> Effects {
        let mut fx = Effects::default();
        let holders: std::collections::BTreeSet<&WorkerId> =
            self.tasks.values().filter(|t| t.state == TaskState::Running).filter_map(|t| t.worker_id.as_ref()).collect();
        let stale: Vec<WorkerId> = self
            .workers
            .values()
            .filter(|w| now - w.last_seen_ms > max_idle_ms && !holders.contains(&w.id))
            .map(|w| w.id.clone())
            .collect();
        for id in stale {
            self.workers.remove(&id);
            fx.workers.push(id);
        }
        fx
    }

    /// Workers seen within the last minute.
    pub fn live_workers(&self, now: i64) -> usize {
        self.workers.values().filter(|w| now - w.last_seen_ms < 60_000).count()
    }

    /// Runs in FINALIZING state (all tasks done, summary not yet written).
    pub fn runs_to_finalize(&self) -> Vec<RunId> {
        self.runs.values().filter(|r| r.state == RunState::Finalizing).map(|r| r.id.clone()).collect()
    }

    /// Whether any run still needs workers.
    pub fn has_active_runs(&self) -> bool {
        self.runs.values().any(|r| !r.state.is_terminal())
    }

    /// The tasks of a run, in display order (kind, fold).
    pub fn tasks_of(&self, run_id: &RunId) -> Vec<&Task> {
        let mut v: Vec<&Task> = self.tasks.values().filter(|t| &t.run_id == run_id).collect();
        v.sort_by(|a, b| (a.kind, a.fold, &a.id).cmp(&(b.kind, b.fold, &b.id)));
        v
    }
}

impl Task {
    pub fn new(id: TaskId, run_id: RunId, kind: TaskKind, fold: Option<Fold>, cases: Vec<String>, deps: Vec<TaskId>) -> Self {
        Task {
            id,
            run_id,
            kind,
            fold,
            cases,
            deps,
            state: TaskState::Pending,
            worker_id: None,
            lease_id: 0,
            fencing_token: 0,
            lease_expires_ms: 0,
            attempt: 0,
            checkpoint: None,
            checkpoint_epoch: None,
            last_metrics: None,
            error: None,
            result_json: None,
            not_before_ms: 0,
            uncounted_attempts: 0,
        }
    }
}
