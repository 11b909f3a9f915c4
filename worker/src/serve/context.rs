//! What a running task holds ([`TaskCtx`], used from the task's own OS thread) and where its files
//! are ([`Workspace`]).
use crate::error::WorkerError;
use crate::serve::connection::Conn;
use crate::serve::reports::Reports;
use crate::serve::transfer;
use anyhow::{Context, Result};
use nnunet_common::paths::DatasetDirs;
use nnunet_common::Fold;
use nnunet_proto::v1 as pb;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Everything a task needs. Its ids and paths were checked by [`super::untrusted::check_task`].
pub struct TaskCtx {
    pub conn: Conn,
    pub task: pb::Task,
    /// The task's fold, decoded from the wire.
    pub fold: Fold,
    /// A stop signal arrived.
    pub stop: Arc<AtomicBool>,
    /// The coordinator took the task back (heartbeat refused).
    pub lost: Arc<AtomicBool>,
    pub device: tch::Device,
    /// The worker's cache folder.
    pub cache: PathBuf,
    /// `--threads` (0: the task's budget, else all cores).
    pub threads: usize,
    /// Whether the run directory is read in place (decided once per task).
    pub in_place: bool,
    pub rt: tokio::runtime::Handle,
    /// Metrics and log lines for the coordinator, sent in the background.
    pub reports: Reports,
}

/// Where a task reads and writes.
pub struct Workspace {
    /// Where inputs are read: the run directory itself (shared filesystem) or the local mirror.
    pub root: PathBuf,
    /// Local mirror of the run directory (`<cache>/runs/<run_id>`): outputs are written here before upload.
    pub scratch: PathBuf,
    pub shared: bool,
}

impl TaskCtx {
    /// `<cache>/runs/<run_id>` (the run id is checked).
    pub fn scratch(&self) -> PathBuf {
        self.cache.join("runs").join(&self.task.run_id)
    }

    /// The nnU-Net folders of the task's dataset under `root`.
    pub fn dirs(&self, root: &Path) -> DatasetDirs {
        DatasetDirs::new(&self.task.dataset_name, &root.join("raw"), &root.join("preprocessed"), &root.join("results"))
            .with_plans(self.plans_name())
    }

    /// The run's plans name (checked by `check_task`; empty on the wire means `nnUNetPlans`).
    pub fn plans_name(&self) -> &str {
        if self.task.plans_name.is_empty() {
            nnunet_common::paths::PLANS_NAME
        } else {
            &self.task.plans_name
        }
    }

    /// The fold's output folder under `root`.
    pub fn fold_dir(&self, root: &Path) -> PathBuf {
        self.dirs(root).model_dir().join(self.fold.dir_name())
    }

    /// `p` relative to the run directory (its path on the coordinator).
    pub fn rel(&self, ws: &Workspace, p: &Path) -> String {
        p.strip_prefix(&ws.scratch).or_else(|_| p.strip_prefix(&ws.root)).unwrap_or(p).to_string_lossy().into_owned()
    }

    /// Libtorch threads: `--threads`, else the task's budget, else all cores.
    pub fn threads(&self) -> usize {
        let b = self.task.budget.unwrap_or_default();
        if self.threads > 0 {
            self.threads
        } else if b.num_threads > 0 {
            b.num_threads as usize
        } else {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        }
    }

    /// An error when the lease is gone or a stop signal arrived.
    pub fn check_stop(&self) -> Result<()> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(WorkerError::LeaseLost("the coordinator took the task back".into()).into());
        }
        if self.stop.load(Ordering::SeqCst) {
            return Err(WorkerError::Stopped.into());
        }
        Ok(())
    }

    /// Uploads one output file.
    pub fn upload(&self, ws: &Workspace, local: &Path) -> Result<()> {
        self.check_stop()?;
        let rel = self.rel(ws, local);
        self.rt.block_on(transfer::upload(&self.conn, &self.task, local, &rel))
    }

    /// Uploads the files of `dir` (not hidden ones), data before the JSON that marks it complete.
    pub fn upload_dir(&self, ws: &Workspace, dir: &Path) -> Result<usize> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
            .collect();
        files.sort_by_key(|p| (p.extension().is_some_and(|e| e == "json"), p.clone()));
        for f in &files {
            self.upload(ws, f)?;
        }
        Ok(files.len())
    }

    /// One line for the run's log on the coordinator (queued; never waits for the network).
    pub fn log(&self, line: String) {
        self.reports.log(line);
    }
}
