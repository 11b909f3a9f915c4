//! Content hashes and atomic writes: every artifact (preprocessed case, checkpoint, prediction) is
//! written to a temporary file in the same folder, fsynced and renamed into place, so a killed
//! process never leaves a partial file under the final name.
use crate::{Error, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::Path;

pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

pub use crate::atomic::temp_path;

/// Writes `bytes` to `path` atomically: temp file in the same folder, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// Like [`write_atomic`], with a closure that streams the content.
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>) -> Result<()> {
    crate::atomic::write_with(path, fill).map_err(|(p, e)| Error::io(p, e))
}

/// Removes stale temporary files (`.{name}.tmp-{pid}`) left by an interrupted run. Workers may
/// share the folder (the coordinator shards cases), so a temp file is only stale when its writer's
/// pid is not alive on this host and it has not been touched for 5 minutes.
pub fn remove_stale_temps(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((_, pid)) = name.rsplit_once(".tmp-") else { continue };
        if !name.starts_with('.') {
            continue;
        }
        let alive = pid.parse::<u32>().map(|p| Path::new(&format!("/proc/{p}")).exists()).unwrap_or(false);
        let age = e.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).map(|d| d.as_secs()).unwrap_or(0);
        if !alive && age >= 300 {
            if let Err(err) = std::fs::remove_file(e.path()) {
                tracing::warn!("could not remove the stale temporary file {}: {err}", e.path().display());
            }
        }
    }
}

/// Copies `src` to `dst` atomically unless `dst` already has the same size.
pub fn copy_if_changed(src: &Path, dst: &Path) -> Result<()> {
    let same = match (std::fs::metadata(src), std::fs::metadata(dst)) {
        (Ok(a), Ok(b)) => a.len() == b.len(),
        _ => false,
    };
    if !same {
        let bytes = std::fs::read(src).map_err(|e| Error::io(src, e))?;
        write_atomic(dst, &bytes)?;
    }
    Ok(())
}
