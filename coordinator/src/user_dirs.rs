//! Results and preprocessed data where nnU-Net users look (nnU-Net's
//! `documentation/setting_up_paths.md`, `nnunetv2/paths.py`):
//!
//! - a finished run's model folder is published to
//!   `$nnUNet_results/DatasetXXX_Name/nnUNetTrainer__nnUNetPlans__2d/` (or `--results DIR`),
//!   copied next to its destination and renamed into place, so it is never seen half-written;
//! - the run's preprocessed dataset is published to `$nnUNet_preprocessed/DatasetXXX_Name/` with
//!   the digest of the raw dataset it came from (`.raw_sha256`), and a later run on the same raw data
//!   takes plans, splits and preprocessed cases from there (when their `.plans_sha256` still matches
//!   the plans) instead of planning and preprocessing again.
use anyhow::{Context, Result};
use nnunet_common::paths::DatasetDirs;
use std::path::{Path, PathBuf};

/// Marker in `$nnUNet_preprocessed/DatasetXXX_Name/`: the digest of the raw dataset it was made from.
pub const RAW_DIGEST_FILE: &str = ".raw_sha256";

/// The nnU-Net roots a coordinator publishes to (none: everything stays in the run directory).
#[derive(Debug, Clone, Default)]
pub struct UserDirs {
    pub preprocessed: Option<PathBuf>,
    pub results: Option<PathBuf>,
    /// Further roots under which a submitter's own `nnUNet_results`/`nnUNet_preprocessed` are
    /// accepted (`nnunet serve --allow-output-under`).
    pub allow_under: Vec<PathBuf>,
}

impl UserDirs {
    /// `$nnUNet_preprocessed` and `$nnUNet_results` (when set and not empty), `results` overriding the latter.
    pub fn from_env(results: Option<PathBuf>) -> Self {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        UserDirs { preprocessed: var("nnUNet_preprocessed"), results: results.or_else(|| var("nnUNet_results")), allow_under: Vec::new() }
    }

    /// Where a submitter's own roots may lie: under the coordinator's roots or an allowed folder.
    pub fn allowed_roots(&self) -> Vec<PathBuf> {
        self.results.iter().chain(&self.preprocessed).chain(&self.allow_under).cloned().collect()
    }

    /// The roots of one run: the submitter's (checked at submit) over the coordinator's.
    pub fn for_run(&self, opts: &crate::domain::RunOptions) -> UserDirs {
        UserDirs {
            preprocessed: opts.preprocessed_root.clone().or_else(|| self.preprocessed.clone()),
            results: opts.results_root.clone().or_else(|| self.results.clone()),
            allow_under: Vec::new(),
        }
    }
}

/// sha256 over the names, sizes and modification times of the raw dataset's files (`dataset.json`,
/// `imagesTr/`, `labelsTr/`): any added, removed or rewritten case changes it.
pub fn raw_digest(raw: &Path) -> Result<String> {
    let mut lines = Vec::new();
    for sub in ["", "imagesTr", "labelsTr"] {
        let dir = raw.join(sub);
        let rd = std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
        for e in rd.flatten() {
            let md = std::fs::metadata(e.path()).with_context(|| format!("reading {}", e.path().display()))?;
            if !md.is_file() {
                continue;
            }
            let mtime = md.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_nanos()).unwrap_or(0);
            lines.push(format!("{sub}/{}\t{}\t{mtime}", e.file_name().to_string_lossy(), md.len()));
        }
    }
    lines.sort();
    Ok(nnunet_common::hash::sha256_bytes(lines.join("\n").as_bytes()))
}

/// The published preprocessed dataset, if it was made from exactly this raw data and its cases are
/// complete under its plans: returns its folder.
pub fn reusable_preprocessed(root: &Path, dirs: &DatasetDirs, digest: &str) -> Option<PathBuf> {
    let src = root.join(&dirs.name);
    let marker = std::fs::read_to_string(src.join(RAW_DIGEST_FILE)).ok()?;
    if marker.trim() != digest {
        return None;
    }
    let shared = DatasetDirs::new(&dirs.name, root, root, root).with_plans(&dirs.plans_name);
    let plans = nnunet_common::plans::Plans::load(&shared.plans_file()).ok()?;
    let want = nnunet_common::case::plans_digest(&plans, &plans.config_2d().ok()?).ok()?;
    let data = shared.data_dir();
    if std::fs::read_to_string(data.join(".plans_sha256")).ok()?.trim() != want {
        return None;
    }
    let splits: Vec<nnunet_common::splits::Split> = nnunet_common::error::read_json(&shared.splits_file()).ok()?;
    let complete =
        splits.first()?.train.iter().chain(&splits.first()?.val).all(|c| nnunet_common::case::CaseFiles::new(&data, c).is_complete());
    complete.then_some(src)
}

/// Makes the run's folder `link` a symbolic link to `target` (a published copy of it, or the
/// published data a run reuses), so the run directory keeps only what is the run's own: a copy
/// already there is moved aside first and removed once the link is in place.
pub fn reference(link: &Path, target: &Path) -> Result<()> {
    let target = target.canonicalize().with_context(|| format!("resolving {}", target.display()))?;
    let parent = link.parent().context("a link without a parent folder")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = link.file_name().context("a link without a name")?.to_string_lossy().into_owned();
    let tag = crate::domain::random_hex(4);
    let aside = parent.join(format!(".{name}.trim-{tag}"));
    match std::fs::symlink_metadata(link) {
        Ok(md) if md.file_type().is_symlink() => {
            if std::fs::read_link(link).ok().as_deref() == Some(target.as_path()) {
                return Ok(());
            }
            std::fs::remove_file(link).with_context(|| format!("removing the old link {}", link.display()))?;
        }
        Ok(_) => std::fs::rename(link, &aside).with_context(|| format!("moving {} aside", link.display()))?,
        Err(_) => {}
    }
    let tmp = parent.join(format!(".{name}.link-{tag}"));
    std::os::unix::fs::symlink(&target, &tmp).with_context(|| format!("linking {} -> {}", tmp.display(), target.display()))?;
    std::fs::rename(&tmp, link).with_context(|| format!("renaming {} to {}", tmp.display(), link.display()))?;
    std::fs::File::open(parent).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", parent.display()))?;
    if aside.exists() {
        std::fs::remove_dir_all(&aside).with_context(|| format!("removing the run's copy {}", aside.display()))?;
    }
    Ok(())
}

/// Where a run's folder links to, if the coordinator made it a link ([`reference`]).
pub fn link_target(p: &Path) -> Option<PathBuf> {
    std::fs::symlink_metadata(p).ok().filter(|m| m.file_type().is_symlink())?;
    p.canonicalize().ok()
}

/// Publishes `src` (a folder) as `dest`: hard-linked (copied across filesystems; every file we
/// write is replaced by rename, never modified in place) to a temporary sibling, fsynced, then
/// renamed into place; an older `dest` is moved aside first and removed after.
pub fn publish_dir(src: &Path, dest: &Path, extra: &[(&str, &[u8])]) -> Result<()> {
    let parent = dest.parent().context("a destination without a parent folder")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = dest.file_name().context("a destination without a name")?.to_string_lossy().into_owned();
    let stamp =
        format!("{}-{}", std::process::id(), nnunet_common::hash::sha256_bytes(format!("{:?}", std::time::SystemTime::now()).as_bytes()));
    let tmp = parent.join(format!(".{name}.tmp-{}", &stamp[..24.min(stamp.len())]));
    let old = parent.join(format!(".{name}.old-{}", &stamp[..24.min(stamp.len())]));
    let result = (|| -> Result<()> {
        copy_tree(src, &tmp)?;
        for (file, bytes) in extra {
            nnunet_common::hash::write_atomic(&tmp.join(file), bytes)?;
        }
        let had_old = dest.exists();
        if had_old {
            std::fs::rename(dest, &old).with_context(|| format!("moving the previous {} aside", dest.display()))?;
        }
        std::fs::rename(&tmp, dest).with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
        std::fs::File::open(parent).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", parent.display()))?;
        if had_old {
            std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
        }
        Ok(())
    })();
    if result.is_err() && tmp.exists() {
        if let Err(e) = std::fs::remove_dir_all(&tmp) {
            tracing::warn!("removing {}: {e}", tmp.display());
        }
    }
    result
}

/// Publishes a run's model folder into `dest` entry by entry (`fold_K/`, `plans.json`,
/// `crossval_results_folds_*/`, `ensemble_test/`, ...): each entry is linked or copied beside its destination
/// and renamed into place, so no entry is ever seen half-written, and entries of `dest` this run did
/// not produce (another fold trained earlier) stay, as when nnU-Net trains one more fold.
pub fn publish_model(src: &Path, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    for e in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let e = e?;
        let (from, to) = (e.path(), dest.join(e.file_name()));
        if std::fs::metadata(&from).with_context(|| format!("reading {}", from.display()))?.is_dir() {
            publish_dir(&from, &to, &[])?;
        } else {
            let tmp = nnunet_common::atomic::temp_path(&to);
            if tmp.exists() {
                std::fs::remove_file(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
            }
            if std::fs::hard_link(&from, &tmp).is_err() {
                std::fs::copy(&from, &tmp).with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
                std::fs::File::open(&tmp).and_then(|f| f.sync_all()).with_context(|| format!("syncing {}", tmp.display()))?;
            }
            std::fs::rename(&tmp, &to).with_context(|| format!("renaming {} to {}", tmp.display(), to.display()))?;
        }
    }
    std::fs::File::open(dest).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dest.display()))?;
    Ok(())
}

/// Whether a published preprocessed folder may be replaced: it does not exist yet, or a run made
/// it (it has [`RAW_DIGEST_FILE`]); a folder the user made with `nnunet plan-and-preprocess` stays.
pub fn ours_to_replace(dest: &Path) -> bool {
    !dest.exists() || dest.join(RAW_DIGEST_FILE).is_file()
}

/// Hard-links a folder tree, or copies it (files fsynced) where links fail. A link in the source
/// (the run's reference to published data) is followed.
fn copy_tree(src: &Path, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    for e in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let e = e?;
        let (from, to) = (e.path(), dest.join(e.file_name()));
        let md = std::fs::metadata(&from).with_context(|| format!("reading {}", from.display()))?;
        if md.is_dir() {
            copy_tree(&from, &to)?;
        } else if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
            std::fs::File::open(&to).and_then(|f| f.sync_all()).with_context(|| format!("syncing {}", to.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_replaces_the_destination_whole() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(src.join("fold_0")).unwrap();
        std::fs::write(src.join("fold_0").join("a.txt"), "new").unwrap();
        let dest = t.path().join("results").join("Dataset001_X").join("nnUNetTrainer__nnUNetPlans__2d");
        std::fs::create_dir_all(&dest).unwrap();
        std::fs::write(dest.join("stale.txt"), "old").unwrap();
        publish_dir(&src, &dest, &[("marker", b"m")]).unwrap();
        assert_eq!(std::fs::read_to_string(dest.join("fold_0").join("a.txt")).unwrap(), "new");
        assert_eq!(std::fs::read_to_string(dest.join("marker")).unwrap(), "m");
        assert!(!dest.join("stale.txt").exists(), "the old folder is replaced, not merged");
        let left: Vec<_> = std::fs::read_dir(dest.parent().unwrap()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left.len(), 1, "no temporary folders are left: {left:?}");
    }

    #[test]
    fn a_run_folder_becomes_a_link_to_what_was_published() {
        let t = tempfile::tempdir().unwrap();
        let run_copy = t.path().join("run").join("preprocessed").join("Dataset001_X");
        std::fs::create_dir_all(run_copy.join("nnUNetPlans_2d")).unwrap();
        std::fs::write(run_copy.join("nnUNetPlans_2d").join("c.npy"), "data").unwrap();
        let dest = t.path().join("nnUNet_preprocessed").join("Dataset001_X");
        publish_dir(&run_copy, &dest, &[]).unwrap();
        reference(&run_copy, &dest).unwrap();
        assert_eq!(link_target(&run_copy), Some(dest.canonicalize().unwrap()));
        assert_eq!(std::fs::read_to_string(run_copy.join("nnUNetPlans_2d").join("c.npy")).unwrap(), "data");
        let left: Vec<_> = std::fs::read_dir(run_copy.parent().unwrap()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, ["Dataset001_X"], "the run's copy is gone, no temporaries are left");
        reference(&run_copy, &dest).unwrap(); // idempotent
                                              // Publishing from the link works too (a run that reused the data and publishes it again).
        let again = t.path().join("other").join("Dataset001_X");
        publish_dir(&run_copy, &again, &[]).unwrap();
        assert!(again.join("nnUNetPlans_2d").join("c.npy").is_file());
    }

    #[test]
    fn raw_digest_changes_with_the_cases() {
        let t = tempfile::tempdir().unwrap();
        for d in ["imagesTr", "labelsTr"] {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
        }
        std::fs::write(t.path().join("dataset.json"), "{}").unwrap();
        std::fs::write(t.path().join("imagesTr").join("a_0000.png"), "x").unwrap();
        let d1 = raw_digest(t.path()).unwrap();
        assert_eq!(d1, raw_digest(t.path()).unwrap());
        std::fs::write(t.path().join("labelsTr").join("a.png"), "y").unwrap();
        assert_ne!(d1, raw_digest(t.path()).unwrap());
    }
}
