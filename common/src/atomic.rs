//! The atomic write every file of the system goes through: a temporary file in the same folder,
//! fsync, rename, so a killed process never leaves a partial file under the final name. It sits
//! below [`crate::error`] (it speaks `std::io`), so that both the error module's JSON helpers and
//! [`crate::hash`] can build on it.
use std::path::{Path, PathBuf};

/// The temporary name used while writing `path`; recognisable so stale ones can be cleaned up.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `path` atomically with `fill` streaming the content. On failure the temporary file is
/// removed and the error names the path it concerns (the folder when it cannot be created).
pub fn write_with(
    path: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<(), (PathBuf, std::io::Error)> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|e| (dir.to_path_buf(), e))?;
        }
    }
    let tmp = temp_path(path);
    let res = (|| {
        let f = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::new(f);
        fill(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        // Best effort: the temp file may not exist (create failed); a leftover one is removed by
        // `hash::remove_stale_temps` later.
        std::fs::remove_file(&tmp).ok();
        return Err((path.to_path_buf(), e));
    }
    Ok(())
}
