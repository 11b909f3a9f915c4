//! The worker's local cache (`--cache-dir`, default `~/.cache/nnunet-rs`): one folder per run under
//! `runs/`, holding downloaded inputs (no shared filesystem) and every task's local outputs before
//! they are streamed to the coordinator.
//!
//! Bounded, so that repeated runs do not fill the disk:
//! - each task holds a shared `flock` on its run folder's `.lock` for as long as it runs; several
//!   workers on one host (one per GPU) may share the cache;
//! - with a shared filesystem the run folder only holds scratch copies and already uploaded outputs:
//!   the last task on this host to leave it (an exclusive lock succeeds) removes it;
//! - without one, the downloaded inputs are worth keeping for the run's next tasks: a new task prunes
//!   the least recently used *other* run folders beyond `keep_runs`, skipping any still locked;
//! - a cached input is hashed once per process and trusted while its size and mtime are unchanged.
use anyhow::{Context, Result};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// A task's hold on its run folder (a shared `flock`, released on drop).
pub struct RunLease {
    dir: PathBuf,
    _lock: File,
}

impl RunLease {
    /// Creates `<cache>/runs/<run_id>`, marks it used now and takes the shared lock.
    pub fn acquire(cache: &Path, run_id: &str) -> Result<RunLease> {
        use std::os::unix::fs::MetadataExt;
        let dir = cache.join("runs").join(run_id);
        for _ in 0..5 {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating cache {}", dir.display()))?;
            let Ok(lock) = open_lock(&dir) else { continue }; // removed under us by a pruning worker
            flock(&lock, libc::LOCK_SH).with_context(|| format!("locking {}", dir.display()))?;
            // Pruning may have removed the folder between our open and our lock: then the lock file we
            // hold is no longer the one at the path; start over.
            let same = match (lock.metadata(), std::fs::metadata(dir.join(".lock"))) {
                (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
                _ => false,
            };
            if same {
                // The lock file's mtime is the folder's last use (for least-recently-used pruning).
                lock.set_modified(std::time::SystemTime::now()).ok();
                return Ok(RunLease { dir, _lock: lock });
            }
        }
        anyhow::bail!("could not lock the cache folder {} (removed repeatedly while acquiring)", dir.display())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Releases the lock and removes the folder if no other task on this host holds it.
    /// Returns whether it was removed.
    pub fn release_and_remove(self) -> bool {
        let RunLease { dir, _lock } = self;
        drop(_lock);
        remove_if_unused(&dir)
    }
}

fn open_lock(dir: &Path) -> Result<File> {
    let p = dir.join(".lock");
    File::options().create(true).truncate(false).read(true).write(true).open(&p).with_context(|| format!("opening {}", p.display()))
}

fn flock(f: &File, op: i32) -> std::io::Result<()> {
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Removes `dir` if an exclusive lock on its `.lock` can be taken right away (nobody uses it).
fn remove_if_unused(dir: &Path) -> bool {
    let Ok(lock) = open_lock(dir) else { return false };
    if flock(&lock, libc::LOCK_EX | libc::LOCK_NB).is_err() {
        return false;
    }
    // Holding the exclusive lock while deleting: a task starting now blocks on its shared lock and
    // then recreates what it needs.
    let removed = std::fs::remove_dir_all(dir).is_ok();
    drop(lock);
    removed
}

/// Removes the least recently used run folders other than `current` so that at most `keep_runs`
/// folders (the current one included) remain; folders in use are skipped. Returns the removed ones.
pub fn prune(cache: &Path, current: &str, keep_runs: usize) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(cache.join("runs")) else { return Vec::new() };
    let mut others: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false) && e.file_name() != current)
        .map(|e| {
            let p = e.path();
            let used = std::fs::metadata(p.join(".lock"))
                .or_else(|_| std::fs::metadata(&p))
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            (used, p)
        })
        .collect();
    others.sort_by_key(|e| std::cmp::Reverse(e.0)); // most recently used first
    let keep_others = keep_runs.saturating_sub(1);
    others.into_iter().skip(keep_others).filter(|(_, p)| remove_if_unused(p)).map(|(_, p)| p).collect()
}

/// Cache files whose sha256 this process has already verified, keyed by path, with the size and
/// modification time they had then: a worker running many tasks of one run hashes each cached input
/// once instead of once per task. A changed size or mtime (or a new process) means hashing again.
static VERIFIED: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<PathBuf, Stamp>>> =
    std::sync::LazyLock::new(Default::default);

/// Size, modification time and sha256 of a verified cache file.
type Stamp = (u64, std::time::SystemTime, String);

fn file_stamp(path: &Path) -> Option<(u64, std::time::SystemTime)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

/// Records that `path` (as it is now) has sha256 `sha`.
pub fn remember_verified(path: &Path, sha: &str) {
    if let Some((len, mtime)) = file_stamp(path) {
        VERIFIED.lock().unwrap_or_else(|e| e.into_inner()).insert(path.to_path_buf(), (len, mtime, sha.to_string()));
    }
}

/// Whether `path` holds the input with this size and sha256 (hashing it unless verified unchanged before).
pub fn cached_input(path: &Path, size: u64, sha: &str) -> bool {
    let Some((len, mtime)) = file_stamp(path) else { return false };
    if len != size {
        return false;
    }
    let known = VERIFIED.lock().unwrap_or_else(|e| e.into_inner()).get(path).cloned();
    if let Some((l, t, h)) = known {
        if l == len && t == mtime {
            return h == sha;
        }
    }
    match nnunet_common::hash::sha256_file(path) {
        Ok(h) => {
            remember_verified(path, &h);
            h == sha
        }
        Err(_) => false,
    }
}

/// Removes checkpoint pairs a killed worker left torn in its scratch folders: the weights and the
/// sidecar are two atomic writes, weights first, so weights newer than their sidecar were written by
/// an epoch whose sidecar never came. Scratch only (the coordinator holds the checkpoints a task
/// resumes from). `runs` is the cache's `runs/` folder; a run folder that a task on this host holds
/// (another worker sharing the cache, between its two writes) is skipped. Returns the pairs removed
/// (blocking).
pub fn remove_torn_checkpoints(runs: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(runs) else { return 0 };
    let mut removed = 0;
    for run in entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) {
        let Ok(lock) = open_lock(&run.path()) else { continue };
        if flock(&lock, libc::LOCK_EX | libc::LOCK_NB).is_err() {
            continue; // in use: its newest weights may be waiting for their sidecar right now
        }
        removed += remove_torn_under(&run.path());
    }
    removed
}

fn remove_torn_under(root: &Path) -> usize {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut removed = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            if !(name.starts_with("checkpoint_") && name.ends_with(".json")) {
                continue;
            }
            let weights = p.with_extension("safetensors");
            if let (Some(w), Some(j)) = (mtime(&weights), mtime(&p)) {
                if w > j {
                    tracing::info!("cache: removing the torn checkpoint {} (its weights are newer than its sidecar)", p.display());
                    for f in [&weights, &p] {
                        if let Err(err) = std::fs::remove_file(f) {
                            tracing::warn!("could not remove {}: {err}", f.display());
                        }
                    }
                    removed += 1;
                }
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn make_run(cache: &Path, id: &str, age_s: u64) {
        let d = cache.join("runs").join(id);
        std::fs::create_dir_all(d.join("data")).unwrap();
        std::fs::write(d.join("data/case.npy"), b"x").unwrap();
        open_lock(&d).unwrap().set_modified(SystemTime::now() - Duration::from_secs(age_s)).unwrap();
    }

    #[test]
    fn prune_keeps_the_current_and_most_recent_runs_and_skips_locked_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let c = tmp.path();
        for (id, age) in [("old", 4000), ("older", 5000), ("oldest", 6000), ("recent", 100)] {
            make_run(c, id, age);
        }
        // another worker on this host is still using "older"
        let held = RunLease::acquire(c, "older").unwrap();
        let cur = RunLease::acquire(c, "current").unwrap();
        let removed = prune(c, "current", 3);
        let names = |v: &[PathBuf]| v.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect::<Vec<_>>();
        // keep current + 2 others: "recent", and "older" (now the most recently used, it was just acquired)
        assert_eq!(names(&removed), vec!["old", "oldest"]);
        assert!(c.join("runs/current").is_dir() && c.join("runs/recent").is_dir() && c.join("runs/older").is_dir());
        // with keep 1 only the current run may stay, but the held one is in use
        let removed = prune(c, "current", 1);
        assert_eq!(names(&removed), vec!["recent"]);
        assert!(c.join("runs/older").is_dir(), "a locked run folder is never removed");
        drop(held);
        assert_eq!(names(&prune(c, "current", 1)), vec!["older"]);
        assert!(cur.dir().is_dir());
    }

    #[test]
    fn the_last_task_out_removes_a_shared_fs_scratch_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let a = RunLease::acquire(tmp.path(), "r").unwrap();
        let b = RunLease::acquire(tmp.path(), "r").unwrap();
        std::fs::write(a.dir().join("scratch.bin"), b"x").unwrap();
        assert!(!a.release_and_remove(), "b still uses it");
        assert!(tmp.path().join("runs/r/scratch.bin").exists());
        assert!(b.release_and_remove());
        assert!(!tmp.path().join("runs/r").exists());
    }

    #[test]
    fn cached_inputs_are_hashed_once_and_rehashed_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("case.npy");
        std::fs::write(&p, b"abcdef").unwrap();
        let sha = nnunet_common::hash::sha256_bytes(b"abcdef");
        assert!(!cached_input(&dir.path().join("missing"), 6, &sha));
        assert!(!cached_input(&p, 7, &sha), "size mismatch");
        assert!(cached_input(&p, 6, &sha));
        assert!(!cached_input(&p, 6, &"0".repeat(64)), "another hash for the same file");
        // unchanged size and mtime: the memo answers without reading the file (here: a same-size
        // rewrite with the old mtime restored is not noticed, which is what skipping the hash means)
        let old_mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
        std::fs::write(&p, b"ABCDEF").unwrap();
        std::fs::File::options().write(true).open(&p).unwrap().set_modified(old_mtime).unwrap();
        assert!(cached_input(&p, 6, &sha), "memo hit");
        // same size, new content and mtime: hashed again, and refused
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&p, b"abcxyz").unwrap();
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5)).unwrap();
        assert!(!cached_input(&p, 6, &sha));
        assert!(cached_input(&p, 6, &nnunet_common::hash::sha256_bytes(b"abcxyz")));
    }

    #[test]
    fn torn_checkpoint_pairs_are_removed_and_whole_ones_kept() {
        let d = tempfile::tempdir().unwrap();
        let fold = d.path().join("runs/r/results/D/fold_0");
        std::fs::create_dir_all(&fold).unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        let set = |p: &Path, t: std::time::SystemTime| File::options().write(true).open(p).unwrap().set_modified(t).unwrap();
        for stem in ["checkpoint_latest", "checkpoint_best"] {
            std::fs::write(fold.join(format!("{stem}.safetensors")), b"w").unwrap();
            std::fs::write(fold.join(format!("{stem}.json")), b"{}").unwrap();
        }
        // latest: a killed worker wrote new weights after the sidecar; best: weights, then sidecar.
        set(&fold.join("checkpoint_latest.json"), old);
        set(&fold.join("checkpoint_best.safetensors"), old);
        // A task of this host holds the run folder (another worker sharing the cache): left alone.
        let held = RunLease::acquire(d.path(), "r").unwrap();
        assert_eq!(remove_torn_checkpoints(&d.path().join("runs")), 0);
        assert!(fold.join("checkpoint_latest.safetensors").exists(), "a held run folder is not swept");
        drop(held);
        assert_eq!(remove_torn_checkpoints(&d.path().join("runs")), 1);
        assert!(!fold.join("checkpoint_latest.safetensors").exists() && !fold.join("checkpoint_latest.json").exists());
        assert!(fold.join("checkpoint_best.safetensors").exists() && fold.join("checkpoint_best.json").exists());
    }
}
