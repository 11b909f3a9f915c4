//! What the dashboard needs from the coordinator ([`Backend`]) and the JSON it serves.
//!
//! The router only talks to this trait, so the coordinator's internals (state, store, server) can
//! move without touching the web code: one adapter (`backend.rs`) maps them.
use nnunet_common::Fold;
use serde::Serialize;

/// What a presented token may do on the web.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Cancel runs and retry folds (else read-only).
    pub can_steer: bool,
}

/// A failed steering call, mapped to an HTTP status once, at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SteerError {
    NotFound(String),
    Refused(String),
    Internal(String),
}

/// A journal notification: a run got a new event (`None`: unknown which, e.g. after lag).
pub type Wake = Option<String>;

/// The coordinator as the dashboard sees it. Methods never block for long (they read in-memory
/// state or one journal page) and never await.
pub trait Backend: Send + Sync + 'static {
    /// Runs, oldest first, with their tasks.
    fn runs(&self) -> Vec<RunView>;
    fn run(&self, run_id: &str) -> Option<RunView>;
    /// Whether the run is finished (DONE, FAILED, CANCELLED); `None` for an unknown run.
    fn run_terminal(&self, run_id: &str) -> Option<bool>;
    fn workers(&self) -> Vec<WorkerView>;
    /// Journal events of a run with `seq >= from`, at most `limit`.
    fn events_since(&self, run_id: &str, from: u64, limit: usize) -> anyhow::Result<Vec<EventView>>;
    /// Forwards every new journal event's run id into `tx` until the coordinator stops.
    fn feed(&self, tx: tokio::sync::broadcast::Sender<Wake>);
    fn cancel(&self, run_id: &str) -> Result<(), SteerError>;
    fn retry(&self, run_id: &str, fold: Fold) -> Result<(), SteerError>;
}

/// Who may see the dashboard and who may steer: the coordinator's tokens (and, later, roles).
pub trait TokenCheck: Send + Sync + 'static {
    /// `None`: the token is not valid.
    fn check(&self, token: &str) -> Option<Access>;
    /// Authentication is off (`--no-auth` on loopback): everyone has full access.
    fn open(&self) -> bool {
        false
    }
    fn can_steer(&self, token: &str) -> bool {
        self.check(token).is_some_and(|a| a.can_steer)
    }
}

/// Fixed tokens, compared in constant time. `StaticTokens::open()` disables authentication.
pub struct StaticTokens {
    tokens: Vec<(String, Access)>,
    open: bool,
}

impl StaticTokens {
    /// One token with full access (the coordinator's shared secret).
    pub fn single(token: String) -> Self {
        StaticTokens { tokens: vec![(token, Access { can_steer: true })], open: false }
    }
    pub fn with(mut self, token: String, access: Access) -> Self {
        self.tokens.push((token, access));
        self
    }
    pub fn open() -> Self {
        StaticTokens { tokens: vec![], open: true }
    }
}

/// Equal length and bytes, in time independent of where they differ.
pub fn ct_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl TokenCheck for StaticTokens {
    fn check(&self, token: &str) -> Option<Access> {
        if self.open {
            return Some(Access { can_steer: true });
        }
        self.tokens.iter().find(|(t, _)| ct_eq(t, token)).map(|(_, a)| *a)
    }
    fn open(&self) -> bool {
        self.open
    }
}

/// The coordinator's credentials: the legacy admin token and the role tokens (`nnunet token create`).
/// Viewers see the dashboard; operators and admins may also cancel and retry; worker tokens see
/// nothing. `None` for the legacy token means authentication is off (`--no-auth`, loopback only).
pub struct RoleTokens {
    legacy: Option<String>,
    coord: std::sync::Arc<crate::engine::Coordinator>,
}

impl RoleTokens {
    pub fn new(legacy: Option<String>, coord: std::sync::Arc<crate::engine::Coordinator>) -> Self {
        RoleTokens { legacy, coord }
    }
}

impl TokenCheck for RoleTokens {
    fn check(&self, token: &str) -> Option<Access> {
        let role = match &self.legacy {
            Some(l) if crate::access::same_secret(token, l) => crate::domain::Role::Admin,
            _ => self.coord.token_role(&crate::access::token_hash(token))?,
        };
        role.can_view().then_some(Access { can_steer: role.can_operate() })
    }
    fn open(&self) -> bool {
        self.legacy.is_none()
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunView {
    pub id: String,
    pub name: String,
    pub dataset: String,
    pub state: String,
    pub created_ms: i64,
    pub folds: Vec<Fold>,
    pub epochs: u32,
    pub tasks: Vec<TaskView>,
    /// The CV summary (`cv_summary.json`'s content) once the run is DONE.
    pub summary: Option<serde_json::Value>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TaskView {
    pub id: String,
    pub kind: String,
    /// `None`: preprocessing (not per fold). Serialized as a number or `"all"`.
    pub fold: Option<Fold>,
    pub state: String,
    pub attempt: u32,
    pub worker: String,
    pub device: String,
    /// 1-based epochs done / total (training tasks that reported metrics).
    pub epoch: Option<u32>,
    pub epochs: Option<u32>,
    pub epoch_seconds: Option<f64>,
    pub ema_dice: Option<f64>,
    pub error: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct WorkerView {
    pub id: String,
    pub host: String,
    pub device: String,
    pub device_name: String,
    pub last_seen_ms: i64,
    /// The task it runs now, if any.
    pub task: Option<String>,
    pub rss_bytes: Option<u64>,
    pub gpu_util_percent: Option<u32>,
    pub gpu_memory_used_bytes: Option<u64>,
    pub gpu_memory_total_bytes: Option<u64>,
    /// From its task's last epoch.
    pub loader_wait_seconds: Option<f64>,
    pub step_seconds: Option<f64>,
    pub epoch_seconds: Option<f64>,
}

/// One journal event, flattened for the page.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EventView {
    pub seq: u64,
    pub ts_ms: i64,
    /// `None`: run level.
    pub fold: Option<Fold>,
    pub task_id: String,
    /// `run`, `task`, `metrics`, `log` or `summary`.
    pub kind: &'static str,
    /// Run or task state, log line, summary JSON text.
    pub text: String,
    pub worker: String,
    pub attempt: u32,
    pub task_kind: String,
    pub metrics: Option<MetricsView>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MetricsView {
    pub epoch: u32,
    pub epochs: u32,
    pub train_loss: Option<f64>,
    pub val_loss: Option<f64>,
    pub pseudo_dice: Vec<Option<f64>>,
    pub mean_fg_dice: Option<f64>,
    pub ema_fg_dice: Option<f64>,
    pub lr: Option<f64>,
    pub epoch_seconds: Option<f64>,
    pub dataloader_wait_seconds: Option<f64>,
    pub step_seconds: Option<f64>,
}

/// NaN and infinities become JSON null.
pub fn fin(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

impl From<&nnunet_common::train_log::EpochMetrics> for MetricsView {
    fn from(m: &nnunet_common::train_log::EpochMetrics) -> Self {
        MetricsView {
            epoch: m.epoch,
            epochs: m.epochs,
            train_loss: fin(m.train_loss),
            val_loss: fin(m.val_loss),
            pseudo_dice: m.pseudo_dice.iter().map(|&d| fin(d)).collect(),
            mean_fg_dice: fin(m.mean_fg_dice),
            ema_fg_dice: fin(m.ema_fg_dice),
            lr: fin(m.lr),
            epoch_seconds: fin(m.epoch_seconds),
            dataloader_wait_seconds: fin(m.dataloader_wait_seconds),
            step_seconds: fin(m.step_seconds),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn tokens_and_roles() {
        let t = StaticTokens::single("steer-token-0123456789".into()).with("view-token-0123456789".into(), Access { can_steer: false });
        assert_eq!(t.check("steer-token-0123456789"), Some(Access { can_steer: true }));
        assert!(t.can_steer("steer-token-0123456789"));
        assert_eq!(t.check("view-token-0123456789"), Some(Access { can_steer: false }));
        assert!(!t.can_steer("view-token-0123456789"));
        assert_eq!(t.check("steer-token-012345678"), None);
        assert_eq!(t.check(""), None);
        assert!(StaticTokens::open().can_steer(""));
    }
}
