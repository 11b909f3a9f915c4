//! A simulated device memory budget, to test fold packing and its out-of-memory path on machines
//! without a GPU (hidden: set by tests, never by users).
//!
//! - `NNUNET_SIMULATED_DEVICE_MEMORY_MIB=M`: the worker registers a device shared by every worker of
//!   the host that sets it (key `<host>/simulated-gpu`) with M MiB free, whatever `--device` is.
//! - `NNUNET_SIMULATED_FOLD_MEMORY_MIB=F` (default M/2): each training task holds F MiB of it while
//!   it runs, recorded in a ledger folder (`NNUNET_SIMULATED_DEVICE_DIR`, default
//!   `<tmp>/nnunet-simulated-device-<uid>`): one claim file per task, counted while its process
//!   lives. A claim that would exceed M fails with the error libtorch's CUDA allocator raises ("CUDA
//!   out of memory"), so the worker reports it exactly as it reports a real one.
use crate::error::WorkerError;
use anyhow::{Context, Result};
use std::io::Write;
use std::path::PathBuf;

/// The simulated device, when the environment asks for one.
#[derive(Debug, Clone, PartialEq)]
pub struct SimDevice {
    pub total_mib: u64,
    pub fold_mib: u64,
    pub dir: PathBuf,
}

fn env_mib(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse::<u64>().ok()).filter(|&v| v > 0)
}

/// The simulated device of this process's environment.
pub fn from_env() -> Option<SimDevice> {
    let total_mib = env_mib("NNUNET_SIMULATED_DEVICE_MEMORY_MIB")?;
    let fold_mib = env_mib("NNUNET_SIMULATED_FOLD_MEMORY_MIB").unwrap_or(total_mib / 2);
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let dir = std::env::var_os("NNUNET_SIMULATED_DEVICE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("nnunet-simulated-device-{uid}")));
    Some(SimDevice { total_mib, fold_mib, dir })
}

/// Whether process `pid` still exists.
fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    unsafe { libc::kill(pid, 0) == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) }
}

/// F MiB of the simulated device, held until dropped.
#[derive(Debug)]
pub struct Claim {
    path: PathBuf,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!("simulated device: could not release {}: {e}", self.path.display());
        }
    }
}

impl SimDevice {
    /// The shared device key of this host's simulated device.
    pub fn key(&self, host: &str) -> String {
        format!("{host}/simulated-gpu")
    }

    /// Claims `fold_mib` for `task`, or fails with the allocator's out-of-memory error when the
    /// device's live claims would exceed `total_mib`. The ledger is updated under an exclusive
    /// `flock`, so concurrent claims see each other.
    pub fn claim(&self, task: &str) -> Result<Claim> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(self.dir.join(".lock"))?;
        // SAFETY: flock on a file descriptor this function owns; released when `lock` is closed.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error()).context("locking the simulated device ledger");
        }
        let mut used = 0u64;
        let mut holders = 0u32;
        for e in std::fs::read_dir(&self.dir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix("claim-").and_then(|r| r.split('-').next()).and_then(|p| p.parse::<i32>().ok()) else {
                continue;
            };
            if !alive(pid) {
                std::fs::remove_file(e.path()).with_context(|| format!("removing the dead claim {name}"))?;
                continue;
            }
            used += std::fs::read_to_string(e.path()).ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(0);
            holders += 1;
        }
        if used + self.fold_mib > self.total_mib {
            return Err(anyhow::Error::new(WorkerError::OutOfMemory(format!(
                "CUDA out of memory (simulated device): tried to allocate {} MiB; {} task(s) hold {used} MiB of {} MiB",
                self.fold_mib, holders, self.total_mib
            ))));
        }
        let safe: String = task.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).take(80).collect();
        let path = self.dir.join(format!("claim-{}-{safe}", std::process::id()));
        let mut f = std::fs::File::create(&path).with_context(|| format!("writing {}", path.display()))?;
        writeln!(f, "{}", self.fold_mib)?;
        Ok(Claim { path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_beyond_the_budget_fail_like_cuda_and_free_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let dev = SimDevice { total_mib: 1000, fold_mib: 400, dir: dir.path().to_path_buf() };
        let a = dev.claim("t1").unwrap();
        let b = dev.claim("t2").unwrap();
        let e = dev.claim("t3").unwrap_err();
        assert!(crate::error::is_out_of_memory(&e), "{e:#}");
        assert!(format!("{e:#}").contains("CUDA out of memory") && format!("{e:#}").contains("2 task(s) hold 800 MiB"), "{e:#}");
        drop(a);
        let c = dev.claim("t3").unwrap();
        // A dead process's claim does not count.
        std::fs::write(dir.path().join("claim-999999999-x"), "400\n").unwrap();
        drop(b);
        let d = dev.claim("t4").unwrap();
        assert!(!dir.path().join("claim-999999999-x").exists());
        drop((c, d));
        assert_eq!(dev.key("h"), "h/simulated-gpu");
    }
}
