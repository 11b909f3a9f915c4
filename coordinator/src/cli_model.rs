//! `nnunet export-model` / `nnunet import-model`: moving models between nnunet-rs and nnU-Net v2.
//! Reading and writing `.pth` checkpoints needs libtorch, which the coordinator does not link, so both
//! run `nnunet-worker export-model` / `import-model` from the same folder (like `nnunet predict`).
use anyhow::{Context, Result};

/// Runs `nnunet-worker <sub> <args...>` next to this binary and returns its exit code. The worker
/// runs with `argv[0] = nnunet`, so its help and errors name the command the user typed
/// (`nnunet predict`, not `nnunet-worker predict`).
pub fn exec_worker(sub: &str, args: &[String]) -> Result<i32> {
    use std::os::unix::process::CommandExt;
    let bin = std::env::current_exe()?.with_file_name("nnunet-worker");
    let status = std::process::Command::new(&bin)
        .arg0("nnunet")
        .arg(sub)
        .args(args)
        .status()
        .with_context(|| format!("running {} {sub} (build nnunet-worker next to nnunet)", bin.display()))?;
    Ok(status.code().unwrap_or(1))
}
