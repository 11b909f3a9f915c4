//! The one place that maps the coordinator's state, journal and steering calls to the dashboard's
//! [`Backend`]. When the coordinator's modules move, only this file follows them.
use super::model::{Backend, EventView, MetricsView, RunView, SteerError, TaskView, Wake, WorkerView};
use crate::domain::TaskState;
use crate::engine::{ApplyError, Coordinator};
use crate::state::{self, EventBody, Refusal};
use nnunet_common::Fold;
use std::sync::Arc;

/// The dashboard's view of a live [`Coordinator`].
pub struct CoordinatorBackend(pub Arc<Coordinator>);

fn task_view(st: &state::State, t: &state::Task) -> TaskView {
    let worker = t.worker_id.as_ref().map(|w| w.to_string()).unwrap_or_default();
    let device = t.worker_id.as_ref().and_then(|w| st.workers.get(w)).map(|w| w.device.clone()).unwrap_or_default();
    let m = t.last_metrics.as_ref();
    TaskView {
        id: t.id.to_string(),
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
}

fn run_view(st: &state::State, r: &state::Run) -> RunView {
    let mut tasks: Vec<&state::Task> = st.tasks.values().filter(|t| t.run_id == r.id).collect();
    tasks.sort_by_key(|t| (t.fold, t.kind, t.id.clone()));
    RunView {
        id: r.id.to_string(),
        name: r.name.clone(),
        dataset: r.dataset_name.clone(),
        state: r.state.name().into(),
        created_ms: r.created_ms,
        folds: r.folds.clone(),
        epochs: r.budget.epochs,
        tasks: tasks.into_iter().map(|t| task_view(st, t)).collect(),
        summary: r.summary_json.as_deref().and_then(|s| serde_json::from_str(s).ok()),
        error: r.error.clone(),
    }
}

fn event_view(e: &state::Event) -> EventView {
    let mut v = EventView {
        seq: e.seq,
        ts_ms: e.ts_ms,
        fold: e.fold,
        task_id: e.task_id.as_ref().map(|t| t.to_string()).unwrap_or_default(),
        kind: "log",
        text: String::new(),
        worker: String::new(),
        attempt: 0,
        task_kind: String::new(),
        metrics: None,
    };
    match &e.body {
        EventBody::RunState(s) => (v.kind, v.text) = ("run", s.name().to_string()),
        EventBody::TaskState { state, worker_id, detail, kind, attempt } => {
            v.kind = "task";
            v.text = if detail.is_empty() { state.name().to_string() } else { format!("{}: {detail}", state.name()) };
            v.worker = worker_id.as_ref().map(|w| w.to_string()).unwrap_or_default();
            v.attempt = *attempt;
            v.task_kind = kind.name().into();
        }
        EventBody::Metrics(m) => (v.kind, v.metrics) = ("metrics", Some(MetricsView::from(m))),
        EventBody::Log(l) => v.text = l.clone(),
        EventBody::Summary(s) => (v.kind, v.text) = ("summary", s.clone()),
    }
    v
}

fn steer_error(e: ApplyError) -> SteerError {
    match e {
        ApplyError::Refused(r @ (Refusal::UnknownRun(_) | Refusal::UnknownTask(_))) => SteerError::NotFound(r.to_string()),
        ApplyError::Refused(r) => SteerError::Refused(r.to_string()),
        other => SteerError::Internal(other.to_string()),
    }
}

impl Backend for CoordinatorBackend {
    fn runs(&self) -> Vec<RunView> {
        self.0.read(|st| {
            let mut runs: Vec<&state::Run> = st.runs.values().collect();
            runs.sort_by_key(|r| (r.created_ms, r.id.clone()));
            runs.into_iter().map(|r| run_view(st, r)).collect()
        })
    }

    fn run(&self, run_id: &str) -> Option<RunView> {
        self.0.read(|st| st.runs.get(run_id).map(|r| run_view(st, r)))
    }

    fn run_terminal(&self, run_id: &str) -> Option<bool> {
        self.0.read(|st| st.runs.get(run_id).map(|r| r.state.is_terminal()))
    }

    fn workers(&self) -> Vec<WorkerView> {
        self.0.read(|st| {
            st.workers
                .values()
                .map(|w| {
                    let task = st.tasks.values().find(|t| t.state == TaskState::Running && t.worker_id.as_ref() == Some(&w.id));
                    let m = task.and_then(|t| t.last_metrics.as_ref());
                    let s = self.0.telemetry.get(w.id.as_str()).unwrap_or_default();
                    WorkerView {
                        id: w.id.to_string(),
                        host: w.host.clone(),
                        device: w.device.clone(),
                        device_name: s.device_name.clone().unwrap_or_else(|| w.device_name.clone()),
                        last_seen_ms: w.last_seen_ms.max(s.ts_ms),
                        task: task.map(|t| t.id.to_string()),
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
        })
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
                    Ok(e) => Some(e.run_id.to_string()),
                    Err(RecvError::Lagged(_)) => None,
                    Err(RecvError::Closed) => return,
                };
                // No dashboard listening is fine: the notification has no one to wake.
                if tx.send(wake).is_err() {
                    tracing::trace!("no dashboard page open");
                }
            }
        });
    }

    fn cancel(&self, run_id: &str) -> Result<(), SteerError> {
        let id = run_id.to_string();
        self.0.apply_blocking("web cancel", move |st, now| Ok(((), st.cancel_run(&id, now)?))).map_err(steer_error)
    }

    fn retry(&self, run_id: &str, fold: Fold) -> Result<(), SteerError> {
        let id = run_id.to_string();
        self.0.apply_blocking("web retry", move |st, now| Ok(((), st.retry_fold(&id, fold, now)?))).map_err(steer_error)
    }
}
