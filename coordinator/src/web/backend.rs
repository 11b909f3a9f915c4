//! The one place that maps the coordinator's state, journal and steering calls to the dashboard's
//! [`Backend`]. When the coordinator's modules move, only this file follows them.
use super::model::{Backend, EventView, MetricsView, RunView, SteerError, TaskView, Wake, WorkerView};
use crate::server::Coordinator;
use crate::state::{self, EventBody, Refusal, TaskState};
use std::sync::Arc;

/// The dashboard's view of a live [`Coordinator`].
pub struct CoordinatorBackend(pub Arc<Coordinator>);

fn run_view(st: &state::State, r: &state::Run) -> RunView {
    let mut tasks: Vec<&state::Task> = st.tasks.values().filter(|t| t.run_id == r.id).collect();
    tasks.sort_by_key(|t| (t.fold, t.kind, t.id.clone()));
    RunView {
        id: r.id.clone(),
        name: r.name.clone(),
        dataset: r.dataset_name.clone(),
        state: r.state.name().into(),
        created_ms: r.created_ms,
        folds: r.folds.clone(),
        epochs: r.budget.epochs,
        tasks: tasks
            .into_iter()
            .map(|t| {
                let worker = t.worker_id.clone().unwrap_or_default();
                let device = st.workers.get(&worker).map(|w| w.device.clone()).unwrap_or_default();
                let m = t.last_metrics.as_ref();
                TaskView {
                    id: t.id.clone(),
                    kind: t.kind.name().into(),
                    fold: t.fold,
                    state: t.state.name().into(),
                    attempt: t.attempt,
                    worker,
                    device,
                    epoch: m.map(|m| m.epoch + 1),
                    epochs: m.map(|m| m.epochs),
                    epoch_seconds: m.and_then(|m| super::model::fin(m.epoch_seconds)),
                    ema_dice: m.and_then(|m| super::model::fin(m.ema_fg_dice)),
                    error: t.error.clone().unwrap_or_default(),
                }
            })
            .collect(),
        summary: r.summary_json.as_deref().and_then(|s| serde_json::from_str(s).ok()),
        error: r.error.clone(),
    }
}

fn event_view(e: &state::Event) -> EventView {
    let mut v = EventView {
        seq: e.seq,
        ts_ms: e.ts_ms,
        fold: e.fold,
        task_id: e.task_id.clone(),
        kind: "log",
        text: String::new(),
        worker: String::new(),
        attempt: 0,
        task_kind: String::new(),
        metrics: None,
    };
    match &e.body {
        EventBody::RunState(s) => (v.kind, v.text) = ("run", s.clone()),
        EventBody::TaskState { state, worker_id, detail, kind, attempt } => {
            v.kind = "task";
            v.text = if detail.is_empty() { state.clone() } else { format!("{state}: {detail}") };
            v.worker = worker_id.clone();
            v.attempt = *attempt;
            v.task_kind = kind.name().into();
        }
        EventBody::Metrics(m) => (v.kind, v.metrics) = ("metrics", Some(MetricsView::from(m))),
        EventBody::Log(l) => v.text = l.clone(),
        EventBody::Summary(s) => (v.kind, v.text) = ("summary", s.clone()),
    }
    v
}

fn steer_error(r: Refusal) -> SteerError {
    match r {
        Refusal::UnknownRun(_) | Refusal::UnknownTask(_) => SteerError::NotFound(r.to_string()),
        _ => SteerError::Refused(r.to_string()),
    }
}

impl CoordinatorBackend {
    fn steer(&self, f: impl FnOnce(&mut state::State) -> Result<state::Effects, Refusal>) -> Result<(), SteerError> {
        let res = self.0.apply(|st| match f(st) {
            Ok(fx) => (Ok(()), fx),
            Err(r) => (Err(r), state::Effects::default()),
        });
        match res {
            Ok(r) => r.map_err(steer_error),
            Err(e) => Err(SteerError::Internal(format!("{e:#}"))),
        }
    }
}

impl Backend for CoordinatorBackend {
    fn runs(&self) -> Vec<RunView> {
        let st = self.0.state.lock().unwrap();
        let mut runs: Vec<&state::Run> = st.runs.values().collect();
        runs.sort_by_key(|r| (r.created_ms, r.id.clone()));
        runs.into_iter().map(|r| run_view(&st, r)).collect()
    }

    fn run(&self, run_id: &str) -> Option<RunView> {
        let st = self.0.state.lock().unwrap();
        st.runs.get(run_id).map(|r| run_view(&st, r))
    }

    fn run_terminal(&self, run_id: &str) -> Option<bool> {
        self.0.state.lock().unwrap().runs.get(run_id).map(|r| r.state.is_terminal())
    }

    fn workers(&self) -> Vec<WorkerView> {
        let st = self.0.state.lock().unwrap();
        st.workers
            .values()
            .map(|w| {
                let task = st.tasks.values().find(|t| t.state == TaskState::Running && t.worker_id.as_deref() == Some(w.id.as_str()));
                let m = task.and_then(|t| t.last_metrics.as_ref());
                let s = self.0.telemetry.get(&w.id).unwrap_or_default();
                WorkerView {
                    id: w.id.clone(),
                    host: w.host.clone(),
                    device: w.device.clone(),
                    device_name: s.device_name.clone().unwrap_or_else(|| w.device_name.clone()),
                    last_seen_ms: w.last_seen_ms.max(s.ts_ms),
                    task: task.map(|t| t.id.clone()),
                    rss_bytes: s.rss_bytes,
                    gpu_util_percent: s.gpu_util_percent,
                    gpu_memory_used_bytes: s.gpu_memory_used_bytes,
                    gpu_memory_total_bytes: s.gpu_memory_total_bytes,
                    loader_wait_seconds: m.and_then(|m| super::model::fin(m.dataloader_wait_seconds)),
                    step_seconds: m.and_then(|m| super::model::fin(m.step_seconds)),
                    epoch_seconds: m.and_then(|m| super::model::fin(m.epoch_seconds)),
                }
            })
            .collect()
    }

    fn events_since(&self, run_id: &str, from: u64, limit: usize) -> anyhow::Result<Vec<EventView>> {
        Ok(self.0.events_since(run_id, from, limit)?.iter().map(event_view).collect())
    }

    fn feed(&self, tx: tokio::sync::broadcast::Sender<Wake>) {
        let mut rx = self.0.subscribe();
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                let wake = match rx.recv().await {
                    Ok(e) => Some(e.run_id),
                    Err(RecvError::Lagged(_)) => None,
                    Err(RecvError::Closed) => return,
                };
                // No dashboard listening is fine: the notification has no one to wake.
                let _ = tx.send(wake);
            }
        });
    }

    fn cancel(&self, run_id: &str) -> Result<(), SteerError> {
        self.steer(|st| st.cancel_run(run_id))
    }

    fn retry(&self, run_id: &str, fold: i32) -> Result<(), SteerError> {
        self.steer(|st| st.retry_fold(run_id, fold))
    }
}
