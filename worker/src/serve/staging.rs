//! Makes a task's inputs available ([`prepare`]): in place on a shared filesystem (only `results/`
//! files are copied to scratch, since they are worked on), else downloaded into the cache and kept
//! across the run's tasks, verified by size and sha256. Every local path is the checked relative
//! path joined under the run's cache folder ([`untrusted::resolve_inside`]).
use crate::serve::context::{TaskCtx, Workspace};
use crate::serve::{transfer, untrusted};
use anyhow::{Context, Result};
use nnunet_proto::wire::RUN_MARKER;
use std::path::{Path, PathBuf};

/// Whether the run directory is visible here (its marker names the task's run): then inputs are read
/// in place instead of downloaded. Reads one small file (call it off the runtime threads).
pub fn uses_run_dir_in_place(run_dir: &str, run_id: &str, no_shared_fs: bool) -> bool {
    !no_shared_fs
        && !run_dir.is_empty()
        && std::fs::read_to_string(Path::new(run_dir).join(RUN_MARKER)).map(|s| s.trim() == run_id).unwrap_or(false)
}

/// The first input of a task that cannot be read in place under the run directory, if any: the
/// coordinator may reference preprocessed data in its `$nnUNet_preprocessed`, which a host that
/// shares the run directory does not necessarily see; such a task downloads its inputs instead.
/// The paths were checked by `untrusted::check_task`.
pub fn first_invisible_input<'a>(run_dir: &str, inputs: &'a [nnunet_proto::v1::ArtifactRef]) -> Option<&'a str> {
    let root = Path::new(run_dir);
    inputs
        .iter()
        .find(|a| std::fs::metadata(root.join(&a.path)).map(|m| !m.is_file() || m.len() != a.size).unwrap_or(true))
        .map(|a| a.path.as_str())
}

/// The task's workspace with every input in place (see the module docs).
pub fn prepare(ctx: &TaskCtx) -> Result<Workspace> {
    let run_dir = PathBuf::from(&ctx.task.run_dir);
    let shared = ctx.in_place;
    let scratch = ctx.scratch();
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating cache {}", scratch.display()))?;
    let root = if shared { run_dir.clone() } else { scratch.clone() };
    let (mut fetched, mut bytes) = (0usize, 0u64);
    for a in &ctx.task.inputs {
        ctx.check_stop()?;
        let dest = untrusted::resolve_inside(&scratch, "input path", &a.path)?;
        if shared {
            if a.path.starts_with("results") {
                let src = untrusted::resolve_inside(&run_dir, "input path", &a.path)?;
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
                }
                std::fs::copy(&src, &dest).with_context(|| format!("copying {}", a.path))?;
            }
            continue;
        }
        if !crate::cache::cached_input(&dest, a.size, &a.sha256) {
            ctx.rt.block_on(transfer::download(&ctx.conn, &ctx.task.run_id, a, &dest))?;
            crate::cache::remember_verified(&dest, &a.sha256);
            fetched += 1;
            bytes += a.size;
        }
    }
    if !shared && fetched > 0 {
        tracing::info!("downloaded {fetched} input file(s), {:.1} MB", bytes as f64 / 1e6);
    }
    Ok(Workspace { root, scratch, shared })
}
