//! The coordinator's own vocabulary: typed ids, run/task states and kinds, the run budget and the
//! run specification. Nothing here knows about the wire ([`crate::service::convert`] does).
pub mod metrics;
pub mod run_options;

pub use run_options::{PretrainedWeights, RunOptions};

use nnunet_common::Fold;
use serde::{Deserialize, Serialize};
use std::borrow::Borrow;
use std::fmt;
use std::path::PathBuf;

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
        #[serde(transparent)]
        pub struct $name(pub String);
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(s.to_string())
            }
        }
        impl From<String> for $name {
            fn from(s: String) -> Self {
                $name(s)
            }
        }
        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// A run: `run-YYYYMMDD-HHMMSS-<64 random bits>`.
    RunId
);
id_type!(
    /// A task of a run: `<run id>-<kind><fold>-<32 random bits>`.
    TaskId
);
id_type!(
    /// A registered worker process: `w-<host>-<64 random bits>`.
    WorkerId
);

/// `n` random bits as lowercase hex (ids and fencing tokens must not be guessable).
pub fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TaskKind {
    Preprocess,
    Train,
    Validate,
    Predict,
}

impl TaskKind {
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Preprocess => "preprocess",
            TaskKind::Train => "train",
            TaskKind::Validate => "validate",
            TaskKind::Predict => "predict",
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
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

/// What happened to a task, as journaled (`Retrying` is a failed attempt that goes back to the queue).
/// The aliases read journals written before the states were typed (they stored the wire names).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum TaskTransition {
    #[serde(alias = "RUNNING")]
    Running,
    #[serde(alias = "DONE")]
    Done,
    #[serde(alias = "RETRYING")]
    Retrying,
    #[serde(alias = "FAILED")]
    Failed,
}

impl TaskTransition {
    pub fn name(self) -> &'static str {
        match self {
            TaskTransition::Running => "RUNNING",
            TaskTransition::Done => "DONE",
            TaskTransition::Retrying => "RETRYING",
            TaskTransition::Failed => "FAILED",
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum RunState {
    #[serde(alias = "PLANNING")]
    Planning,
    #[serde(alias = "PREPROCESSING")]
    Preprocessing,
    #[serde(alias = "TRAINING")]
    Training,
    #[serde(alias = "FINALIZING")]
    Finalizing,
    #[serde(alias = "DONE")]
    Done,
    #[serde(alias = "FAILED")]
    Failed,
    #[serde(alias = "CANCELLED")]
    Cancelled,
}

impl RunState {
    pub const ALL: [RunState; 7] = [
        RunState::Planning,
        RunState::Preprocessing,
        RunState::Training,
        RunState::Finalizing,
        RunState::Done,
        RunState::Failed,
        RunState::Cancelled,
    ];
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
    /// Parses [`RunState::name`] (the wire form).
    pub fn from_name(s: &str) -> Option<RunState> {
        RunState::ALL.into_iter().find(|r| r.name() == s)
    }
    pub fn is_terminal(self) -> bool {
        matches!(self, RunState::Done | RunState::Failed | RunState::Cancelled)
    }
}

/// Budget of a run.
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

impl Default for Budget {
    /// nnU-Net's schedule ([`nnunet_common::defaults`]), except `save_every`: a distributed run
    /// checkpoints every epoch so a lost worker costs at most one epoch of training.
    fn default() -> Self {
        use nnunet_common::defaults as d;
        Budget {
            epochs: d::EPOCHS,
            iterations_per_epoch: d::ITERATIONS_PER_EPOCH,
            val_iterations_per_epoch: d::VAL_ITERATIONS_PER_EPOCH,
            save_every: 1,
            seed: 0,
            disable_tta: false,
            num_threads: 0,
        }
    }
}

/// What a user asks for when submitting a run (`nnunet submit`, `nnunet run`).
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    /// A raw nnU-Net v2 dataset folder (DatasetXXX_Name) readable by the coordinator.
    pub dataset_dir: PathBuf,
    pub budget: Budget,
    /// Empty: nnU-Net's five folds.
    pub folds: Vec<Fold>,
    /// Empty: the dataset's name.
    pub name: String,
    /// 0: one per recently seen worker (at least 1).
    pub preprocess_shards: u32,
    /// Also predict imagesTs with every fold and ensemble them.
    pub predict_test: bool,
    /// The experiment planner (`--planner`): its plans file names the model folder.
    pub planner: nnunet_common::planners::Planner,
    /// Weights every training task starts from (`--pretrained-weights`), a file the coordinator can read.
    pub pretrained_weights: Option<PathBuf>,
    /// The submitter's `$nnUNet_results` / `--results` root (None: the coordinator's own).
    pub results_dir: Option<PathBuf>,
    /// The submitter's `$nnUNet_preprocessed` root (None: the coordinator's own).
    pub preprocessed_dir: Option<PathBuf>,
}

/// What a credential may do. `Admin` is the legacy single token: everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Hash)]
pub enum Role {
    /// Register, lease, heartbeat, report, upload, download, complete, fail.
    Worker,
    /// List, get, watch, logs.
    Viewer,
    /// Viewer + submit, cancel, retry, delete.
    Operator,
    /// Operator + worker.
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
    pub fn from_name(s: &str) -> Option<Role> {
        [Role::Worker, Role::Viewer, Role::Operator, Role::Admin].into_iter().find(|r| r.name() == s)
    }
    /// May call the worker API.
    pub fn can_work(self) -> bool {
        matches!(self, Role::Worker | Role::Admin)
    }
    /// May read runs.
    pub fn can_view(self) -> bool {
        matches!(self, Role::Viewer | Role::Operator | Role::Admin)
    }
    /// May change runs (submit, cancel, retry, delete).
    pub fn can_operate(self) -> bool {
        matches!(self, Role::Operator | Role::Admin)
    }
}

/// Length limits on everything a client sends (a megabyte run name once broke `status` for good).
pub mod limits {
    /// Run names, hosts, device names, ids.
    pub const SHORT: usize = 256;
    /// Paths (relative artifact paths, dataset folders).
    pub const PATH: usize = 4096;
    /// Error messages, log lines.
    pub const TEXT: usize = 16 << 10;
    /// A task's result JSON.
    pub const RESULT: usize = 256 << 10;
    /// Log lines per call.
    pub const LINES: usize = 1000;
    /// Folds per run.
    pub const FOLDS: usize = 64;
    /// Classes in one metrics report.
    pub const CLASSES: usize = 1024;
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn states_round_trip_their_names() {
        for s in RunState::ALL {
            assert_eq!(RunState::from_name(s.name()), Some(s));
        }
        assert_eq!(Role::from_name("operator"), Some(Role::Operator));
        assert!(Role::Admin.can_work() && Role::Admin.can_operate() && !Role::Worker.can_view() && !Role::Viewer.can_operate());
        assert_ne!(random_hex(8), random_hex(8));
    }
}
