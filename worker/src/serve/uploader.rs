//! Streams checkpoints to the coordinator from a background thread, so training never waits for
//! the network. One pending slot per checkpoint kind: a newer `latest` (or `best`) replaces one
//! that has not started uploading yet, so a slow link costs freshness, not training time. The
//! final checkpoint is always uploaded, and the task completes only after everything is flushed.
//! Pending jobs go out oldest first: each carries the fold's training logs as they were when it was
//! staged, and a job staged earlier must not land after a later one (a `best` of epoch 78 sent
//! after the `final` put back a `training_log.jsonl` without the last epoch).
//! Every staged folder is removed once uploaded, superseded or abandoned after an error.
use crate::error::WorkerError;
use crate::serve::connection::Conn;
use crate::serve::transfer;
use anyhow::{anyhow, Result};
use nnunet_proto::v1 as pb;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// One staged checkpoint: the folder of hard links, and (local file, path relative to the run) pairs.
pub type Job = (PathBuf, Vec<(PathBuf, String)>);

#[derive(Default)]
struct Queue {
    /// Pending jobs by priority (0 final, 1 latest, 2 best), each with its submission number.
    pending: BTreeMap<u8, (u64, Job)>,
    submitted: u64,
    closed: bool,
    error: Option<String>,
}

impl Queue {
    /// Queues `job` in the slot of `priority`; returns the staged folders it superseded.
    fn insert(&mut self, priority: u8, job: Job) -> Vec<PathBuf> {
        self.submitted += 1;
        let mut gone: Vec<PathBuf> = self.pending.insert(priority, (self.submitted, job)).map(|(_, (dir, _))| dir).into_iter().collect();
        if priority == 0 {
            // The final checkpoint supersedes any latest one not yet sent.
            gone.extend(self.pending.remove(&1).map(|(_, (dir, _))| dir));
        }
        gone
    }

    /// The oldest pending job.
    fn pop_oldest(&mut self) -> Option<Job> {
        let key = *self.pending.iter().min_by_key(|(_, (seq, _))| *seq)?.0;
        self.pending.remove(&key).map(|(_, job)| job)
    }

    /// Empties the queue; returns the staged folders.
    fn drain(&mut self) -> Vec<PathBuf> {
        std::mem::take(&mut self.pending).into_values().map(|(_, (dir, _))| dir).collect()
    }
}

type Shared = Arc<(Mutex<Queue>, Condvar)>;

/// The background checkpoint uploader of one training task.
pub struct Uploader {
    shared: Shared,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn lock(m: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes a staged folder (its files are links to, or copies of, the fold's checkpoint files).
fn remove_staged(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("could not remove the staged checkpoint {}: {e}", dir.display());
        }
    }
}

/// How often a checkpoint's files are sent again when the coordinator did not get the pair
/// (a coordinator restart between the weights and the sidecar, or a corrupted transfer).
const PAIR_TRIES: usize = 3;

/// Whether an upload error says the data did not arrive intact (DATA_LOSS): sending again helps.
fn data_lost(e: &anyhow::Error) -> bool {
    e.to_string() == format!("{:?}", tonic::Code::DataLoss)
}

fn upload_job(conn: &Conn, task: &pb::Task, rt: &tokio::runtime::Handle, files: &[(PathBuf, String)]) -> Result<u64> {
    let mut tries = 0;
    loop {
        tries += 1;
        let mut bytes = 0;
        let res = files.iter().try_for_each(|(local, rel)| {
            bytes += std::fs::metadata(local).map(|m| m.len()).unwrap_or(0);
            rt.block_on(transfer::upload(conn, task, local, rel))
        });
        match res {
            Ok(()) => return Ok(bytes),
            Err(e) if data_lost(&e) && tries < PAIR_TRIES => tracing::warn!("{e:#}; sending the checkpoint again"),
            Err(e) => return Err(e),
        }
    }
}

fn worker_loop(sh: Shared, conn: Conn, task: pb::Task, rt: tokio::runtime::Handle) {
    loop {
        let (staged, files) = {
            let (m, cv) = &*sh;
            let mut q = lock(m);
            while q.pending.is_empty() && !q.closed {
                q = cv.wait(q).unwrap_or_else(|e| e.into_inner());
            }
            match q.pop_oldest() {
                Some(job) => job,
                None => return,
            }
        };
        let t = Instant::now();
        let res = upload_job(&conn, &task, &rt, &files);
        remove_staged(&staged);
        match res {
            Ok(bytes) => {
                tracing::info!("checkpoint streamed to the coordinator: {:.1} MB in {:.2}s", bytes as f64 / 1e6, t.elapsed().as_secs_f64())
            }
            Err(e) => {
                let mut q = lock(&sh.0);
                q.error = Some(format!("{e:#}"));
                for dir in q.drain() {
                    remove_staged(&dir);
                }
                return;
            }
        }
    }
}

impl Uploader {
    pub fn new(conn: Conn, task: pb::Task, rt: tokio::runtime::Handle) -> Self {
        let shared: Shared = Arc::default();
        let sh = shared.clone();
        let thread = std::thread::spawn(move || worker_loop(sh, conn, task, rt));
        Uploader { shared, thread: Some(thread) }
    }

    /// Queues a staged checkpoint (priority 0 final, 1 latest, 2 best).
    pub fn submit(&self, priority: u8, staged: PathBuf, files: Vec<(PathBuf, String)>) -> Result<()> {
        let (m, cv) = &*self.shared;
        let mut q = lock(m);
        if let Some(e) = &q.error {
            remove_staged(&staged);
            return Err(anyhow!(WorkerError::LeaseLost(format!("checkpoint upload failed: {e}"))));
        }
        for old in q.insert(priority, (staged, files)) {
            remove_staged(&old); // superseded before it started
        }
        cv.notify_all();
        Ok(())
    }

    /// Uploads what is pending and stops; the first upload error, if any.
    pub fn flush(&mut self) -> Result<()> {
        {
            let (m, cv) = &*self.shared;
            lock(m).closed = true;
            cv.notify_all();
        }
        if let Some(t) = self.thread.take() {
            t.join().map_err(|_| anyhow!("checkpoint upload thread panicked"))?;
        }
        match lock(&self.shared.0).error.take() {
            Some(e) => Err(anyhow!(WorkerError::LeaseLost(format!("checkpoint upload failed: {e}")))),
            None => Ok(()),
        }
    }
}

impl Drop for Uploader {
    /// A task that ends without flushing (an error or a panic): stop the thread after the job in
    /// flight and remove what is still staged.
    fn drop(&mut self) {
        if self.thread.is_none() {
            return;
        }
        let (m, cv) = &*self.shared;
        let mut q = lock(m);
        q.closed = true;
        for dir in q.drain() {
            remove_staged(&dir);
        }
        cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str) -> Job {
        (PathBuf::from(name), vec![])
    }

    #[test]
    fn jobs_go_out_in_submission_order_and_newer_ones_replace_their_slot() {
        let mut q = Queue::default();
        assert!(q.insert(2, job("best-78")).is_empty());
        assert!(q.insert(1, job("latest-78")).is_empty());
        assert_eq!(q.insert(1, job("latest-79")), vec![PathBuf::from("latest-78")]);
        // The final replaces the pending latest, and goes out after the older best (whose logs are older).
        assert_eq!(q.insert(0, job("final")), vec![PathBuf::from("latest-79")]);
        let order: Vec<PathBuf> = std::iter::from_fn(|| q.pop_oldest()).map(|(d, _)| d).collect();
        assert_eq!(order, vec![PathBuf::from("best-78"), PathBuf::from("final")]);
        q.insert(2, job("best"));
        assert_eq!(q.drain(), vec![PathBuf::from("best")]);
        assert!(q.pop_oldest().is_none());
    }
}
