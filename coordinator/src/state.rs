//! The coordinator's state machine: runs, their task graphs, leases with fencing tokens, worker
//! registrations and the per-run event journal.
//!
//! Invariants:
//! - Every mutation goes through [`State`] methods, which never await and return the events they
//!   produced; the caller persists them ([`crate::store::Store`]) and publishes them.
//! - A task's `fencing_token` grows by one with every lease. A write (metrics, upload, complete,
//!   fail) that carries another token is rejected: it comes from a worker whose lease expired or
//!   from a duplicate worker.
//! - Global artifacts (fingerprint, plans, splits) are written by the coordinator before any task is
//!   created, so workers never race to create them.
use nnunet_common::train_log::EpochMetrics;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Preprocess,
    Train,
    Validate,
    Predict,
}

impl Kind {
    pub fn to_proto(self) -> i32 {
        use nnunet_proto::v1::TaskKind as K;
        (match self {
            Kind::Preprocess => K::Preprocess,
            Kind::Train => K::Train,
            Kind::Validate => K::Validate,
            Kind::Predict => K::Predict,
        }) as i32
    }
    pub fn name(self) -> &'static str {
        match self {
            Kind::Preprocess => "preprocess",
            Kind::Train => "train",
            Kind::Validate => "validate",
            Kind::Predict => "predict",
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum TaskState {
    Pending,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl TaskState {
    pub fn name(self) -> &'static str {
        match self {
            TaskState::Pending => "PENDING",
            TaskState::Running => "RUNNING",
            TaskState::Done => "DONE",
            TaskState::Failed => "FAILED",
            TaskState::Cancelled => "CANCELLED",
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum RunState {
    Planning,
    Preprocessing,
    Training,
    Finalizing,
    Done,
    Failed,
    Cancelled,
}

impl RunState {
    pub fn name(self) -> &'static str {
        match self {
            RunState::Planning => "PLANNING",
            RunState::Preprocessing => "PREPROCESSING",
            RunState::Training => "TRAINING",
            RunState::Finalizing => "FINALIZING",
            RunState::Done => "DONE",
            RunState::Failed => "FAILED",
            RunState::Cancelled => "CANCELLED",
        }
    }
    pub fn is_terminal(self) -> bool {
        matches!(self, RunState::Done | RunState::Failed | RunState::Cancelled)
    }
}

/// Budget of a run (mirrors proto `Budget`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Budget {
    pub epochs: u32,
    pub iterations_per_epoch: u32,
    pub val_iterations_per_epoch: u32,
    pub save_every: u32,
    pub seed: u64,
    pub disable_tta: bool,
    pub num_threads: u32,
}

impl Budget {
    pub fn from_proto(b: Option<&nnunet_proto::v1::Budget>) -> Self {
        let d = Budget::default();
        match b {
            None => d,
            Some(b) => Budget {
                epochs: if b.epochs == 0 { d.epochs } else { b.epochs },
                iterations_per_epoch: if b.iterations_per_epoch == 0 { d.iterations_per_epoch } else { b.iterations_per_epoch },
                val_iterations_per_epoch: if b.val_iterations_per_epoch == 0 {
                    d.val_iterations_per_epoch
                } else {
                    b.val_iterations_per_epoch
                },
                save_every: if b.save_every == 0 { d.save_every } else { b.save_every },
                seed: b.seed,
                disable_tta: b.disable_tta,
                num_threads: b.num_threads,
            },
        }
    }
    pub fn to_proto(&self) -> nnunet_proto::v1::Budget {
        nnunet_proto::v1::Budget {
            epochs: self.epochs,
            iterations_per_epoch: self.iterations_per_epoch,
            val_iterations_per_epoch: self.val_iterations_per_epoch,
            save_every: self.save_every,
            seed: self.seed,
            disable_tta: self.disable_tta,
            num_threads: self.num_threads,
        }
    }
}

impl Default for Budget {
    /// nnU-Net's schedule (`nnUNetTrainer.__init__`), except `save_every`: a distributed run checkpoints every
    /// epoch so a lost worker costs at most one epoch.
    fn default() -> Self {
        Budget {
            epochs: 1000,
            iterations_per_epoch: 250,
            val_iterations_per_epoch: 50,
            save_every: 1,
            seed: 0,
            disable_tta: false,
            num_threads: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    pub id: String,
    pub name: String,
    pub dataset_name: String,
    /// The raw dataset folder as the user gave it.
    pub raw_dir: String,
    /// `<state-dir>/runs/<id>`.
    pub run_dir: String,
    pub state: RunState,
    pub budget: Budget,
    pub folds: Vec<i32>,
    pub predict_test: bool,
    pub preprocess_shards: u32,
    pub created_ms: i64,
    pub summary_json: Option<String>,
    pub error: Option<String>,
    /// Next event sequence number.
    pub next_seq: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub run_id: String,
    pub kind: Kind,
    pub fold: i32,
    pub cases: Vec<String>,
    pub deps: Vec<String>,
    pub state: TaskState,
    pub worker_id: Option<String>,
    pub lease_id: u64,
    pub fencing_token: u64,
    pub lease_expires_ms: i64,
    pub attempt: u32,
    /// Last checkpoint uploaded for this task, relative to the run dir (TRAIN).
    pub checkpoint: Option<String>,
    pub checkpoint_epoch: Option<u32>,
    pub last_metrics: Option<EpochMetrics>,
    pub error: Option<String>,
    pub result_json: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Worker {
    pub id: String,
    pub host: String,
    pub device: String,
    pub device_name: String,
    pub registered_ms: i64,
    pub last_seen_ms: i64,
}

/// A journal event (stored per run, streamed by `WatchRun`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub seq: u64,
    pub ts_ms: i64,
    pub run_id: String,
    pub fold: i32,
    pub task_id: String,
    pub body: EventBody,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum EventBody {
    RunState(String),
    TaskState { state: String, worker_id: String, detail: String, kind: Kind, attempt: u32 },
    Metrics(EpochMetrics),
    Log(String),
    Summary(String),
}

/// Why a worker's write was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("unknown task {0}")]
    UnknownTask(String),
    #[error("stale fencing token {got} for task {task} (current {current}): this worker's lease expired or the task was re-leased; stop working on it")]
    Fenced { task: String, got: u64, current: u64 },
    #[error("task {0} is not running (state {1})")]
    NotRunning(String, &'static str),
    #[error("unknown run {0}")]
    UnknownRun(String),
    #[error("{0}")]
    Invalid(String),
}

/// Maximum attempts of one task before the run fails.
pub const MAX_ATTEMPTS: u32 = 6;

#[derive(Default, Debug, Clone)]
pub struct State {
    pub runs: BTreeMap<String, Run>,
    pub tasks: BTreeMap<String, Task>,
    pub workers: BTreeMap<String, Worker>,
    pub next_lease: u64,
    pub lease_ttl_ms: i64,
}

/// What a mutation changed: events to journal and the rows to persist.
#[derive(Default, Debug)]
pub struct Effects {
    pub events: Vec<Event>,
    pub runs: Vec<String>,
    pub tasks: Vec<String>,
    pub workers: Vec<String>,
}

impl State {
    pub fn new(lease_ttl_ms: i64) -> Self {
        State { lease_ttl_ms, next_lease: 1, ..Default::default() }
    }

    fn emit(&mut self, fx: &mut Effects, run_id: &str, fold: i32, task_id: &str, body: EventBody) {
        if let Some(run) = self.runs.get_mut(run_id) {
            let seq = run.next_seq;
            run.next_seq += 1;
            fx.events.push(Event { seq, ts_ms: now_ms(), run_id: run_id.to_string(), fold, task_id: task_id.to_string(), body });
            fx.runs.push(run_id.to_string());
        }
    }

    pub fn set_run_state(&mut self, run_id: &str, st: RunState, fx: &mut Effects) {
        if let Some(run) = self.runs.get_mut(run_id) {
            if run.state == st {
                return;
            }
            run.state = st;
            fx.runs.push(run_id.to_string());
            self.emit(fx, run_id, -1, "", EventBody::RunState(st.name().to_string()));
        }
    }

    pub fn add_run(&mut self, run: Run) -> Effects {
        let mut fx = Effects::default();
        let id = run.id.clone();
        let st = run.state;
        self.runs.insert(id.clone(), run);
        fx.runs.push(id.clone());
        self.emit(&mut fx, &id, -1, "", EventBody::RunState(st.name().to_string()));
        fx
    }

    /// Creates the task graph of a planned run: preprocessing shards, then per fold train ->
    /// validate (and predict when test images exist).
    pub fn create_tasks(&mut self, run_id: &str, case_ids: &[String], n_shards: usize) -> Effects {
        let mut fx = Effects::default();
        let Some(run) = self.runs.get(run_id).cloned() else { return fx };
        let n_shards = n_shards.clamp(1, case_ids.len().max(1));
        let mut shard_ids = Vec::new();
        for s in 0..n_shards {
            let cases: Vec<String> = case_ids.iter().skip(s).step_by(n_shards).cloned().collect();
            let id = format!("{run_id}-pre{s}");
            shard_ids.push(id.clone());
            self.insert_task(&mut fx, Task::new(&id, run_id, Kind::Preprocess, -1, cases, vec![]));
        }
        for &fold in &run.folds {
            let train = format!("{run_id}-train{fold}");
            self.insert_task(&mut fx, Task::new(&train, run_id, Kind::Train, fold, vec![], shard_ids.clone()));
            let val = format!("{run_id}-val{fold}");
            self.insert_task(&mut fx, Task::new(&val, run_id, Kind::Validate, fold, vec![], vec![train.clone()]));
            if run.predict_test {
                let pred = format!("{run_id}-pred{fold}");
                self.insert_task(&mut fx, Task::new(&pred, run_id, Kind::Predict, fold, vec![], vec![train.clone()]));
            }
        }
        self.set_run_state(run_id, RunState::Preprocessing, &mut fx);
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

    pub fn touch_worker(&mut self, worker_id: &str) {
        if let Some(w) = self.workers.get_mut(worker_id) {
            w.last_seen_ms = now_ms();
        }
    }

    fn deps_done(&self, t: &Task) -> bool {
        t.deps.iter().all(|d| self.tasks.get(d).is_some_and(|d| d.state == TaskState::Done))
    }

    /// Picks the next runnable task for `worker_id` and leases it. Runs are served oldest first;
    /// within a run, preprocessing before training before validation; a task whose previous
    /// attempt ran on this worker is preferred (its cache is warm).
    pub fn lease(&mut self, worker_id: &str, now: i64) -> (Option<Task>, Effects) {
        let mut fx = Effects::default();
        let mut best: Option<(bool, i64, Kind, i32, String)> = None;
        for t in self.tasks.values() {
            if t.state != TaskState::Pending {
                continue;
            }
            let Some(run) = self.runs.get(&t.run_id) else { continue };
            if run.state.is_terminal() || run.state == RunState::Planning {
                continue;
            }
            if !self.deps_done(t) {
                continue;
            }
            let affinity = t.worker_id.as_deref() != Some(worker_id);
            let key = (affinity, run.created_ms, t.kind, t.fold, t.id.clone());
            if best.as_ref().is_none_or(|b| key < *b) {
                best = Some(key);
            }
        }
        let Some((_, _, _, _, task_id)) = best else { return (None, fx) };
        let lease_id = self.next_lease;
        self.next_lease += 1;
        let ttl = self.lease_ttl_ms;
        let t = self.tasks.get_mut(&task_id).expect("task exists");
        t.state = TaskState::Running;
        t.worker_id = Some(worker_id.to_string());
        t.lease_id = lease_id;
        t.fencing_token += 1;
        t.attempt += 1;
        t.lease_expires_ms = now + ttl;
        let (run_id, fold, kind, attempt) = (t.run_id.clone(), t.fold, t.kind, t.attempt);
        let detail = match (&t.checkpoint, t.checkpoint_epoch) {
            (Some(_), Some(e)) if kind == Kind::Train => format!("resumes from the checkpoint of epoch {e}"),
            _ => String::new(),
        };
        let leased = t.clone();
        fx.tasks.push(task_id.clone());
        self.emit(
            &mut fx,
            &run_id,
            fold,
            &task_id,
            EventBody::TaskState { state: "RUNNING".into(), worker_id: worker_id.into(), detail, kind, attempt },
        );
        if kind == Kind::Train {
            let all_pre_done =
                self.tasks.values().filter(|t| t.run_id == run_id && t.kind == Kind::Preprocess).all(|t| t.state == TaskState::Done);
            if all_pre_done {
                self.set_run_state(&run_id, RunState::Training, &mut fx);
            }
        }
        (Some(leased), fx)
    }

    /// Checks that `token` is the current fencing token of a running task.
    pub fn check_fence(&self, task_id: &str, token: u64) -> Result<&Task, Refusal> {
        let t = self.tasks.get(task_id).ok_or_else(|| Refusal::UnknownTask(task_id.into()))?;
        if t.fencing_token != token {
            return Err(Refusal::Fenced { task: task_id.into(), got: token, current: t.fencing_token });
        }
        if t.state != TaskState::Running {
            return Err(Refusal::NotRunning(task_id.into(), t.state.name()));
        }
        Ok(t)
    }

    pub fn heartbeat(&mut self, task_id: &str, token: u64, now: i64) -> Result<bool, Refusal> {
        let ttl = self.lease_ttl_ms;
        let cancelled = {
            let t = self.check_fence(task_id, token)?;
            self.runs.get(&t.run_id).is_none_or(|r| r.state.is_terminal())
        };
        let t = self.tasks.get_mut(task_id).expect("checked");
        t.lease_expires_ms = now + ttl;
        Ok(cancelled)
    }

    pub fn report_metrics(&mut self, task_id: &str, token: u64, m: EpochMetrics) -> Result<Effects, Refusal> {
        self.check_fence(task_id, token)?;
        let mut fx = Effects::default();
        let t = self.tasks.get_mut(task_id).expect("checked");
        t.last_metrics = Some(m.clone());
        let (run_id, fold) = (t.run_id.clone(), t.fold);
        fx.tasks.push(task_id.into());
        self.emit(&mut fx, &run_id, fold, task_id, EventBody::Metrics(m));
        Ok(fx)
    }

    pub fn log(&mut self, task_id: &str, token: u64, lines: &[String]) -> Result<Effects, Refusal> {
        self.check_fence(task_id, token)?;
        let mut fx = Effects::default();
        let t = &self.tasks[task_id];
        let (run_id, fold) = (t.run_id.clone(), t.fold);
        for l in lines {
            self.emit(&mut fx, &run_id, fold, task_id, EventBody::Log(l.clone()));
        }
        Ok(fx)
    }

    /// Records an uploaded checkpoint (the sidecar JSON lands after the weights).
    pub fn checkpoint_uploaded(&mut self, task_id: &str, token: u64, path: &str, epoch: Option<u32>) -> Result<Effects, Refusal> {
        self.check_fence(task_id, token)?;
        let mut fx = Effects::default();
        let t = self.tasks.get_mut(task_id).expect("checked");
        t.checkpoint = Some(path.to_string());
        t.checkpoint_epoch = epoch;
        let (run_id, fold) = (t.run_id.clone(), t.fold);
        fx.tasks.push(task_id.into());
        let msg = match epoch {
            Some(e) => format!("checkpoint {path} (epoch {e}) stored"),
            None => format!("checkpoint {path} stored"),
        };
        self.emit(&mut fx, &run_id, fold, task_id, EventBody::Log(msg));
        Ok(fx)
    }

    pub fn complete(&mut self, task_id: &str, token: u64, result_json: String) -> Result<Effects, Refusal> {
        self.check_fence(task_id, token)?;
        let mut fx = Effects::default();
        let t = self.tasks.get_mut(task_id).expect("checked");
        t.state = TaskState::Done;
        t.result_json = Some(result_json.clone());
        t.error = None;
        let (run_id, fold, kind, attempt, worker) = (t.run_id.clone(), t.fold, t.kind, t.attempt, t.worker_id.clone().unwrap_or_default());
        fx.tasks.push(task_id.into());
        self.emit(
            &mut fx,
            &run_id,
            fold,
            task_id,
            EventBody::TaskState { state: "DONE".into(), worker_id: worker, detail: result_json, kind, attempt },
        );
        self.advance_run(&run_id, &mut fx);
        Ok(fx)
    }

    pub fn fail(&mut self, task_id: &str, token: u64, error: &str, retryable: bool) -> Result<Effects, Refusal> {
        self.check_fence(task_id, token)?;
        let mut fx = Effects::default();
        self.fail_task(task_id, error, retryable, &mut fx);
        Ok(fx)
    }

    fn fail_task(&mut self, task_id: &str, error: &str, retryable: bool, fx: &mut Effects) {
        let t = self.tasks.get_mut(task_id).expect("task exists");
        let give_up = !retryable || t.attempt >= MAX_ATTEMPTS;
        t.state = if give_up { TaskState::Failed } else { TaskState::Pending };
        t.error = Some(error.to_string());
        let (run_id, fold, kind, attempt, worker) = (t.run_id.clone(), t.fold, t.kind, t.attempt, t.worker_id.clone().unwrap_or_default());
        let st = if give_up { "FAILED" } else { "RETRYING" };
        fx.tasks.push(task_id.into());
        self.emit(
            fx,
            &run_id,
            fold,
            task_id,
            EventBody::TaskState { state: st.into(), worker_id: worker, detail: error.into(), kind, attempt },
        );
        if give_up {
            if let Some(r) = self.runs.get_mut(&run_id) {
                r.error = Some(format!("{} fold {fold} failed after {attempt} attempt(s): {error}", kind.name()));
            }
            self.set_run_state(&run_id, RunState::Failed, fx);
        }
    }

    /// Returns leases whose deadline passed to the pending pool.
    pub fn expire_leases(&mut self, now: i64) -> Effects {
        let mut fx = Effects::default();
        let expired: Vec<String> =
            self.tasks.values().filter(|t| t.state == TaskState::Running && t.lease_expires_ms < now).map(|t| t.id.clone()).collect();
        for id in expired {
            let worker = self.tasks[&id].worker_id.clone().unwrap_or_default();
            let msg = format!("lease expired: worker {worker} stopped heartbeating; the task goes back to the queue");
            self.fail_task(&id, &msg, true, &mut fx);
        }
        fx
    }

    /// Returns every running lease of `run_id` to the queue (its workers are known to be gone,
    /// e.g. `nnunet run` restarted after an interruption). Training resumes from checkpoints.
    pub fn release_leases(&mut self, run_id: &str, why: &str) -> Effects {
        let mut fx = Effects::default();
        let ids: Vec<String> =
            self.tasks.values().filter(|t| t.run_id == run_id && t.state == TaskState::Running).map(|t| t.id.clone()).collect();
        for id in ids {
            self.fail_task(&id, why, true, &mut fx);
        }
        fx
    }

    /// Moves a run forward when a stage completes; returns whether it is ready to finalize.
    fn advance_run(&mut self, run_id: &str, fx: &mut Effects) {
        let tasks: Vec<&Task> = self.tasks.values().filter(|t| t.run_id == run_id).collect();
        let all_done = |k: Kind| tasks.iter().filter(|t| t.kind == k).all(|t| t.state == TaskState::Done);
        let pre_done = all_done(Kind::Preprocess);
        let finished = tasks.iter().all(|t| t.state == TaskState::Done);
        if finished {
            self.set_run_state(run_id, RunState::Finalizing, fx);
        } else if pre_done {
            if self.runs.get(run_id).is_some_and(|r| r.state == RunState::Preprocessing) {
                self.set_run_state(run_id, RunState::Training, fx);
            }
        }
    }

    pub fn finish_run(&mut self, run_id: &str, summary: Result<String, String>) -> Effects {
        let mut fx = Effects::default();
        match summary {
            Ok(s) => {
                if let Some(r) = self.runs.get_mut(run_id) {
                    r.summary_json = Some(s.clone());
                }
                self.emit(&mut fx, run_id, -1, "", EventBody::Summary(s));
                self.set_run_state(run_id, RunState::Done, &mut fx);
            }
            Err(e) => {
                if let Some(r) = self.runs.get_mut(run_id) {
                    r.error = Some(e.clone());
                }
                self.emit(&mut fx, run_id, -1, "", EventBody::Log(format!("finalizing failed: {e}")));
                self.set_run_state(run_id, RunState::Failed, &mut fx);
            }
        }
        fx
    }

    pub fn run_failed(&mut self, run_id: &str, error: String) -> Effects {
        let mut fx = Effects::default();
        if let Some(r) = self.runs.get_mut(run_id) {
            r.error = Some(error.clone());
        }
        self.emit(&mut fx, run_id, -1, "", EventBody::Log(error));
        self.set_run_state(run_id, RunState::Failed, &mut fx);
        fx
    }

    pub fn cancel_run(&mut self, run_id: &str) -> Result<Effects, Refusal> {
        if !self.runs.contains_key(run_id) {
            return Err(Refusal::UnknownRun(run_id.into()));
        }
        let mut fx = Effects::default();
        let ids: Vec<String> = self
            .tasks
            .values()
            .filter(|t| t.run_id == run_id && matches!(t.state, TaskState::Pending | TaskState::Running))
            .map(|t| t.id.clone())
            .collect();
        for id in ids {
            let t = self.tasks.get_mut(&id).unwrap();
            t.state = TaskState::Cancelled;
            t.fencing_token += 1; // fence off whoever still runs it
            fx.tasks.push(id);
        }
        self.set_run_state(run_id, RunState::Cancelled, &mut fx);
        Ok(fx)
    }

    /// Re-queues a fold (its train/validate/predict tasks) of a failed or finished run. Training
    /// resumes from the fold's last checkpoint.
    pub fn retry_fold(&mut self, run_id: &str, fold: i32) -> Result<Effects, Refusal> {
        if !self.runs.contains_key(run_id) {
            return Err(Refusal::UnknownRun(run_id.into()));
        }
        let mut fx = Effects::default();
        let ids: Vec<String> = self.tasks.values().filter(|t| t.run_id == run_id && t.fold == fold).map(|t| t.id.clone()).collect();
        if ids.is_empty() {
            return Err(Refusal::Invalid(format!("run {run_id} has no fold {fold}")));
        }
        for id in &ids {
            let t = self.tasks.get_mut(id).unwrap();
            if matches!(t.state, TaskState::Failed | TaskState::Cancelled) {
                t.state = TaskState::Pending;
                t.attempt = 0;
                t.fencing_token += 1;
                fx.tasks.push(id.clone());
            }
        }
        let pre_failed = self.tasks.values().any(|t| t.run_id == run_id && t.state == TaskState::Failed);
        if !pre_failed {
            let all_pre =
                self.tasks.values().filter(|t| t.run_id == run_id && t.kind == Kind::Preprocess).all(|t| t.state == TaskState::Done);
            self.set_run_state(run_id, if all_pre { RunState::Training } else { RunState::Preprocessing }, &mut fx);
        }
        Ok(fx)
    }

    /// Runs in FINALIZING state (all tasks done, summary not yet written).
    pub fn runs_to_finalize(&self) -> Vec<String> {
        self.runs.values().filter(|r| r.state == RunState::Finalizing).map(|r| r.id.clone()).collect()
    }

    /// Whether any run still needs workers.
    pub fn has_active_runs(&self) -> bool {
        self.runs.values().any(|r| !r.state.is_terminal())
    }
}

impl Task {
    pub fn new(id: &str, run_id: &str, kind: Kind, fold: i32, cases: Vec<String>, deps: Vec<String>) -> Self {
        Task {
            id: id.into(),
            run_id: run_id.into(),
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str, folds: Vec<i32>) -> Run {
        Run {
            id: id.into(),
            name: id.into(),
            dataset_name: "Dataset001_X".into(),
            raw_dir: "/raw".into(),
            run_dir: "/runs/x".into(),
            state: RunState::Planning,
            budget: Budget::default(),
            folds,
            predict_test: false,
            preprocess_shards: 2,
            created_ms: 1,
            summary_json: None,
            error: None,
            next_seq: 0,
        }
    }

    fn setup(folds: Vec<i32>) -> State {
        let mut s = State::new(10_000);
        s.add_run(run("r", folds));
        let cases: Vec<String> = (0..5).map(|i| format!("c{i}")).collect();
        s.create_tasks("r", &cases, 2);
        s
    }

    fn finish(s: &mut State, w: &str) -> Task {
        let (t, _) = s.lease(w, 0);
        let t = t.expect("a task");
        s.complete(&t.id, t.fencing_token, "{}".into()).unwrap();
        t
    }

    #[test]
    fn preprocessing_shards_come_before_training_and_cover_all_cases() {
        let mut s = setup(vec![0, 1]);
        let a = s.lease("w1", 0).0.unwrap();
        let b = s.lease("w2", 0).0.unwrap();
        assert_eq!((a.kind, b.kind), (Kind::Preprocess, Kind::Preprocess));
        let mut all: Vec<String> = a.cases.iter().chain(&b.cases).cloned().collect();
        all.sort();
        assert_eq!(all, vec!["c0", "c1", "c2", "c3", "c4"]);
        assert!(s.lease("w3", 0).0.is_none(), "training must wait for all preprocessing shards");
        s.complete(&a.id, a.fencing_token, "{}".into()).unwrap();
        s.complete(&b.id, b.fencing_token, "{}".into()).unwrap();
        assert_eq!(s.runs["r"].state, RunState::Training);
        let t = s.lease("w3", 0).0.unwrap();
        assert_eq!((t.kind, t.fold), (Kind::Train, 0));
    }

    #[test]
    fn expired_lease_is_fenced_and_reassigned_with_its_checkpoint() {
        let mut s = setup(vec![0]);
        finish(&mut s, "w1");
        finish(&mut s, "w1");
        let t = s.lease("w1", 0).0.unwrap();
        assert_eq!(t.kind, Kind::Train);
        s.checkpoint_uploaded(&t.id, t.fencing_token, "results/ck.safetensors", Some(3)).unwrap();
        // w1 stops heartbeating
        let fx = s.expire_leases(20_000);
        assert!(fx.events.iter().any(|e| matches!(&e.body, EventBody::TaskState { state, .. } if state == "RETRYING")));
        let t2 = s.lease("w2", 20_000).0.unwrap();
        assert_eq!(t2.id, t.id);
        assert_eq!(t2.checkpoint.as_deref(), Some("results/ck.safetensors"));
        assert_eq!(t2.attempt, 2);
        // the old worker is fenced off everywhere
        let m = EpochMetrics { epoch: 4, ..Default::default() };
        assert!(matches!(s.report_metrics(&t.id, t.fencing_token, m), Err(Refusal::Fenced { .. })));
        assert!(matches!(s.checkpoint_uploaded(&t.id, t.fencing_token, "x", Some(4)), Err(Refusal::Fenced { .. })));
        assert!(matches!(s.complete(&t.id, t.fencing_token, "{}".into()), Err(Refusal::Fenced { .. })));
        assert!(s.heartbeat(&t.id, t.fencing_token, 20_001).is_err());
        assert!(s.heartbeat(&t2.id, t2.fencing_token, 20_001).is_ok());
    }

    #[test]
    fn heartbeat_extends_the_lease() {
        let mut s = setup(vec![0]);
        let t = s.lease("w1", 0).0.unwrap();
        s.heartbeat(&t.id, t.fencing_token, 9_000).unwrap();
        assert!(s.expire_leases(15_000).events.is_empty());
        assert!(!s.expire_leases(19_001).events.is_empty());
    }

    #[test]
    fn run_finalizes_after_every_fold_is_validated() {
        let mut s = setup(vec![0, 1]);
        for _ in 0..6 {
            finish(&mut s, "w");
        }
        assert_eq!(s.runs["r"].state, RunState::Finalizing);
        assert_eq!(s.runs_to_finalize(), vec!["r".to_string()]);
        s.finish_run("r", Ok("{\"cv\":1}".into()));
        assert_eq!(s.runs["r"].state, RunState::Done);
        assert!(!s.has_active_runs());
    }

    #[test]
    fn non_retryable_failure_fails_the_run_and_retry_fold_requeues() {
        let mut s = setup(vec![0]);
        finish(&mut s, "w");
        finish(&mut s, "w");
        let t = s.lease("w", 0).0.unwrap();
        s.fail(&t.id, t.fencing_token, "NaN loss", false).unwrap();
        assert_eq!(s.runs["r"].state, RunState::Failed);
        assert!(s.lease("w", 0).0.is_none());
        s.retry_fold("r", 0).unwrap();
        assert_eq!(s.runs["r"].state, RunState::Training);
        assert_eq!(s.lease("w", 0).0.unwrap().id, t.id);
    }

    #[test]
    fn event_sequence_numbers_are_dense_per_run() {
        let mut s = setup(vec![0]);
        let mut seqs = vec![];
        for _ in 0..3 {
            let (t, fx) = s.lease("w", 0);
            seqs.extend(fx.events.iter().map(|e| e.seq));
            let fx = s
                .complete(&t.unwrap().id, s.tasks.values().find(|t| t.state == TaskState::Running).unwrap().fencing_token, "{}".into())
                .unwrap();
            seqs.extend(fx.events.iter().map(|e| e.seq));
        }
        let mut sorted = seqs.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, seqs);
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
    }
}
