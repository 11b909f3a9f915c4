//! Temp files a killed coordinator leaves in its run directories: uploads cut short
//! (`.{name}.upload-{tag}`, see [`super::UploadSink`]) and atomic writes cut short
//! (`.{name}.tmp-{pid}`, `nnunet_common::atomic`), and a run folder being swapped for a link to its
//! published copy (`.{name}.trim-{tag}` folder, `.{name}.link-{tag}` link, `crate::user_dirs::reference`).
//! Only one coordinator serves a state directory, so
//! at start every upload temp is stale, and so is an atomic-write temp whose writer is gone.
use std::path::Path;

/// Whether `name` is a temp file that no live process of this host is writing.
fn stale(name: &str) -> bool {
    if !name.starts_with('.') {
        return false;
    }
    if name.contains(".upload-") {
        return true;
    }
    match name.rsplit_once(".tmp-") {
        Some((_, pid)) => pid.parse::<u32>().is_ok_and(|p| p != std::process::id() && !Path::new(&format!("/proc/{p}")).exists()),
        None => false,
    }
}

/// Removes stale temp files under `root` (recursively, never following a symbolic link: a run
/// directory links the user's raw dataset). Returns (files removed, bytes freed) (blocking).
pub fn remove_stale_temps(root: &Path) -> (usize, u64) {
    let (mut n, mut bytes) = (0, 0);
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && (name.contains(".trim-") || name.contains(".link-")) {
                let res = if ft.is_dir() { std::fs::remove_dir_all(e.path()) } else { std::fs::remove_file(e.path()) };
                match res {
                    Ok(()) => n += 1,
                    Err(err) => tracing::warn!("could not remove the cut-short run copy {}: {err}", e.path().display()),
                }
            } else if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() && stale(&e.file_name().to_string_lossy()) {
                let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                match std::fs::remove_file(e.path()) {
                    Ok(()) => {
                        n += 1;
                        bytes += size;
                    }
                    Err(err) => tracing::warn!("could not remove the stale temp file {}: {err}", e.path().display()),
                }
            }
        }
    }
    (n, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_cut_short_uploads_and_dead_writers_temps_only() {
        let d = tempfile::tempdir().unwrap();
        let fold = d.path().join("r1/results/D/fold_0");
        std::fs::create_dir_all(&fold).unwrap();
        let keep = ["checkpoint_latest.safetensors", "checkpoint_latest.json", "upload-notes.txt"];
        for k in keep {
            std::fs::write(fold.join(k), b"x").unwrap();
        }
        std::fs::write(fold.join(".checkpoint_latest.safetensors.upload-7-ab12cd34"), vec![0u8; 100]).unwrap();
        // pid 0 never names a live writer on Linux; our own pid is alive.
        std::fs::write(fold.join(".summary.json.tmp-0"), b"y").unwrap();
        let own = format!(".summary.json.tmp-{}", std::process::id());
        std::fs::write(fold.join(&own), b"z").unwrap();
        // A linked folder is not followed.
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join(".a.upload-1-2"), b"user's").unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("r1/raw")).unwrap();
        std::fs::create_dir_all(d.path().join("r1/preprocessed/.D.trim-ab12/sub")).unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("r1/preprocessed/.D.link-ab12")).unwrap();
        assert_eq!(remove_stale_temps(d.path()), (4, 101));
        assert!(!d.path().join("r1/preprocessed/.D.trim-ab12").exists() && outside.path().is_dir(), "a link is removed, not followed");
        for k in keep {
            assert!(fold.join(k).is_file(), "{k} kept");
        }
        assert!(fold.join(&own).is_file(), "a live writer's temp is kept");
        assert!(outside.path().join(".a.upload-1-2").is_file(), "symlinks are not followed");
    }
}
