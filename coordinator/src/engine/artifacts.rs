//! Artifact policy on the coordinator's disk: which task may write which path, uploads into temp
//! files that are always removed unless committed, and downloads that never leave the run's
//! directories nor follow a symlink.
use crate::domain::run_options::PRETRAINED_DIR;
use crate::domain::TaskKind;
use crate::state::{Run, Task};
use sha2::Digest;
use std::path::{Component, Path, PathBuf};
use tokio::io::AsyncWriteExt;

/// A relative artifact path inside a run directory: no absolute paths, no `..`, not empty.
pub fn safe_rel_path(p: &str) -> Result<PathBuf, String> {
    let path = Path::new(p);
    if p.is_empty()
        || p.len() > crate::domain::limits::PATH
        || path.is_absolute()
        || path.components().any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(format!("artifact path {p:?} must be relative to the run directory, without '..'"));
    }
    Ok(path.to_path_buf())
}

fn rel_to(run: &Run, p: &Path) -> PathBuf {
    p.strip_prefix(&run.run_dir).unwrap_or(p).to_path_buf()
}

/// Whether `task` may write `rel`: a preprocessing shard its own cases' preprocessed files and
/// ground truth, a training task its fold folder (not the validation inside), a validation task
/// the fold's `validation/`, a prediction task its fold's `test_predictions/fold_K/`.
pub fn upload_allowed(run: &Run, task: &Task, rel: &Path) -> Result<(), String> {
    let dirs = crate::pipeline::dirs_of(run);
    let fold_dir = task.fold.map(|f| rel_to(run, &dirs.model_dir().join(f.dir_name())));
    let ok = match (task.kind, &fold_dir) {
        (TaskKind::Preprocess, _) => {
            let data = rel_to(run, &dirs.data_dir());
            let gt = rel_to(run, &dirs.gt_dir());
            task.cases.iter().any(|c| {
                let f = nnunet_common::case::CaseFiles::new(&data, c);
                let gt_ok = rel.parent() == Some(gt.as_path())
                    && rel
                        .file_name()
                        .and_then(|n| n.to_str())
                        .and_then(|n| n.strip_prefix(c.as_str()))
                        .is_some_and(|r| r.starts_with('.'));
                rel == f.data || rel == f.seg || rel == f.props || gt_ok
            })
        }
        (TaskKind::Train, Some(fd)) => rel.starts_with(fd) && !rel.starts_with(fd.join("validation")),
        (TaskKind::Validate, Some(fd)) => rel.starts_with(fd.join("validation")),
        (TaskKind::Predict, Some(_)) => {
            let f = task.fold.expect("fold");
            rel.starts_with(rel_to(run, &dirs.model_dir().join("test_predictions").join(f.dir_name())))
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        let fold = task.fold.map(|f| format!(" fold {f}")).unwrap_or_default();
        Err(format!("a {}{fold} task may not write {}", task.kind.name(), rel.display()))
    }
}

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Corrupt(String),
    #[error("{0}")]
    Io(String),
}

/// An upload in progress: a temp file next to its destination, removed on drop unless committed.
pub struct UploadSink {
    tmp: PathBuf,
    dest: PathBuf,
    file: Option<tokio::fs::File>,
    hasher: sha2::Sha256,
    size: u64,
    declared: u64,
    committed: bool,
}

impl UploadSink {
    pub async fn create(dest: PathBuf, declared: u64, limit: u64, tag: &str) -> Result<Self, UploadError> {
        if declared > limit {
            return Err(UploadError::TooLarge(format!("upload of {declared} bytes exceeds the limit of {limit} bytes")));
        }
        let parent = dest.parent().ok_or_else(|| UploadError::Invalid("no parent folder".into()))?;
        tokio::fs::create_dir_all(parent).await.map_err(|e| UploadError::Io(format!("creating {}: {e}", parent.display())))?;
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = dest.with_file_name(format!(".{name}.upload-{tag}-{}", crate::domain::random_hex(4)));
        let file = tokio::fs::File::create(&tmp).await.map_err(|e| UploadError::Io(format!("creating {}: {e}", tmp.display())))?;
        Ok(UploadSink { tmp, dest, file: Some(file), hasher: sha2::Sha256::new(), size: 0, declared, committed: false })
    }

    pub async fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), UploadError> {
        if offset != self.size {
            return Err(UploadError::Invalid(format!("chunk at offset {offset} where {} was expected", self.size)));
        }
        if self.size + data.len() as u64 > self.declared {
            return Err(UploadError::TooLarge(format!("more data than the declared {} bytes", self.declared)));
        }
        let f = self.file.as_mut().ok_or_else(|| UploadError::Io("upload already finished".into()))?;
        f.write_all(data).await.map_err(|e| UploadError::Io(format!("writing {}: {e}", self.tmp.display())))?;
        self.hasher.update(data);
        self.size += data.len() as u64;
        Ok(())
    }

    /// Checks size and sha256 and syncs the file; returns (sha256, size).
    pub async fn finish(&mut self, claimed_sha: &str) -> Result<(String, u64), UploadError> {
        let f = self.file.take().ok_or_else(|| UploadError::Io("upload already finished".into()))?;
        f.sync_all().await.map_err(|e| UploadError::Io(format!("syncing {}: {e}", self.tmp.display())))?;
        drop(f);
        if self.size != self.declared {
            return Err(UploadError::Corrupt(format!("received {} bytes of the declared {}", self.size, self.declared)));
        }
        let digest = hex::encode(std::mem::take(&mut self.hasher).finalize());
        if claimed_sha.len() != 64 {
            return Err(UploadError::Invalid("the last chunk must carry the file's sha256 (64 hex digits)".into()));
        }
        if !claimed_sha.eq_ignore_ascii_case(&digest) {
            return Err(UploadError::Corrupt(format!("upload corrupted: sha256 {digest}, claimed {claimed_sha}")));
        }
        Ok((digest, self.size))
    }

    /// Where the upload goes.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// The temp file holding the upload (complete after [`UploadSink::finish`]).
    pub fn tmp(&self) -> &Path {
        &self.tmp
    }

    /// Renames the finished file into place.
    pub async fn commit(mut self) -> Result<PathBuf, UploadError> {
        tokio::fs::rename(&self.tmp, &self.dest)
            .await
            .map_err(|e| UploadError::Io(format!("renaming into {}: {e}", self.dest.display())))?;
        self.committed = true;
        Ok(self.dest.clone())
    }
}

impl Drop for UploadSink {
    fn drop(&mut self) {
        if !self.committed {
            if let Err(e) = std::fs::remove_file(&self.tmp) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %self.tmp.display(), "removing an aborted upload: {e}");
                }
            }
        }
    }
}

/// A file opened for download.
pub struct Download {
    pub file: std::fs::File,
    pub path: PathBuf,
    pub size: u64,
}

/// The run's preprocessed dataset folder: `<run_dir>/preprocessed/<dataset>`, or, when the
/// coordinator made that a link to a published one in `$nnUNet_preprocessed` (reused, or moved
/// there when the run finished; `crate::user_dirs`), the folder it points to.
fn preprocessed_root(run: &Run) -> Result<PathBuf, String> {
    let p = Path::new(&run.run_dir).join("preprocessed").join(&run.dataset_name);
    let md = std::fs::symlink_metadata(&p).map_err(|e| e.to_string())?;
    if md.file_type().is_symlink() {
        let target = p.canonicalize().map_err(|e| format!("resolving the run's preprocessed data: {e}"))?;
        if !target.is_dir() {
            return Err("the run's preprocessed data is not a folder".into());
        }
        return Ok(target);
    }
    Ok(p)
}

/// Opens `rel` of `run` for reading: `raw/<dataset>/...` inside the user's dataset folder,
/// `preprocessed/<dataset>/...` inside the run's preprocessed data (see [`preprocessed_root`]),
/// `results/...` inside the run directory, and `inputs/` only the run's pretrained weights; no
/// further component may be a symlink and the target must be a regular file (blocking).
pub fn open_download(run: &Run, rel: &Path) -> Result<Download, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut comps = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned());
    let first = comps.next().unwrap_or_default();
    let mut path = match first.as_str() {
        "raw" => {
            if comps.next().as_deref() != Some(run.dataset_name.as_str()) {
                return Err(format!("{} is not in the run's dataset", rel.display()));
            }
            PathBuf::from(&run.raw_dir)
        }
        "preprocessed" => {
            if comps.next().as_deref() != Some(run.dataset_name.as_str()) {
                return Err(format!("{} is not in the run's dataset", rel.display()));
            }
            preprocessed_root(run).map_err(|e| format!("{}: {e}", rel.display()))?
        }
        "results" => Path::new(&run.run_dir).join(&first),
        PRETRAINED_DIR => {
            if run.options.pretrained.as_ref().map(|p| Path::new(&p.path)) != Some(rel) {
                return Err(format!("{} is not an input of the run", rel.display()));
            }
            Path::new(&run.run_dir).join(PRETRAINED_DIR)
        }
        _ => return Err(format!("{} is not under raw/, preprocessed/, results/ or {PRETRAINED_DIR}/", rel.display())),
    };
    let mut md = None;
    for c in comps {
        path.push(c);
        let m = std::fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", rel.display()))?;
        if m.file_type().is_symlink() {
            return Err(format!("{} is a symbolic link; links are not served", rel.display()));
        }
        md = Some(m);
    }
    let md = md.ok_or_else(|| format!("{} is a folder", rel.display()))?;
    if !md.is_file() {
        return Err(format!("{} is not a regular file", rel.display()));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .map_err(|e| format!("{}: {e}", rel.display()))?;
    let md = file.metadata().map_err(|e| e.to_string())?;
    if !md.is_file() {
        return Err(format!("{} is not a regular file", rel.display()));
    }
    let size = md.len();
    Ok(Download { file, path, size })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::RunState;
    use nnunet_common::Fold;

    fn run() -> Run {
        run_for(Path::new("/runs/r"))
    }

    pub(super) fn run_for(run_dir: &Path) -> Run {
        Run {
            state: RunState::Training,
            predict_test: true,
            ..Run::new(
                "r".into(),
                "Dataset001_X",
                "/raw/Dataset001_X".into(),
                run_dir.to_string_lossy().into_owned(),
                vec![Fold::Index(0), Fold::All],
                0,
            )
        }
    }

    #[test]
    fn each_task_writes_only_its_own_paths() {
        let model = format!("results/Dataset001_X/{}", nnunet_common::paths::model_folder_name());
        let ok = |t: &Task, p: &str| upload_allowed(&run(), t, Path::new(p)).is_ok();
        let train_all = Task::new("t".into(), "r".into(), TaskKind::Train, Some(Fold::All), vec![], vec![]);
        assert!(ok(&train_all, &format!("{model}/fold_all/checkpoint_final.safetensors")));
        assert!(!ok(&train_all, &format!("{model}/fold_0/checkpoint_final.safetensors")));
        assert!(!ok(&train_all, &format!("{model}/fold_all/validation/x.nii.gz")));
        let val0 = Task::new("v".into(), "r".into(), TaskKind::Validate, Some(Fold::Index(0)), vec![], vec![]);
        assert!(ok(&val0, &format!("{model}/fold_0/validation/summary.json")));
        assert!(!ok(&val0, &format!("{model}/fold_0/checkpoint_final.safetensors")));
        let pred = Task::new("p".into(), "r".into(), TaskKind::Predict, Some(Fold::All), vec![], vec![]);
        assert!(ok(&pred, &format!("{model}/test_predictions/fold_all/c.npz")));
        assert!(!ok(&pred, &format!("{model}/test_predictions/fold_0/c.npz")));
        let pre = Task::new("s".into(), "r".into(), TaskKind::Preprocess, None, vec!["c1".into()], vec![]);
        let data = format!("preprocessed/Dataset001_X/{}", nnunet_common::paths::data_identifier());
        assert!(ok(&pre, &format!("{data}/c1.npy")) && ok(&pre, &format!("{data}/c1_seg.npy")) && ok(&pre, &format!("{data}/c1.json")));
        assert!(ok(&pre, "preprocessed/Dataset001_X/gt_segmentations/c1.nii.gz"));
        assert!(!ok(&pre, "preprocessed/Dataset001_X/gt_segmentations/c10.nii.gz"));
        assert!(!ok(&pre, &format!("{data}/c2.npy")) && !ok(&pre, "preprocessed/Dataset001_X/nnUNetPlans.json"));
    }
}

#[cfg(test)]
mod download_tests {
    use super::*;
    use crate::domain::PretrainedWeights;

    /// Downloads serve the run's own files only: its pretrained weights under `inputs/` (nothing
    /// else there), and its preprocessed data through the coordinator's reference to a published
    /// folder, but no other link.
    #[test]
    fn downloads_reach_the_run_inputs_and_a_referenced_preprocessed_folder_only() {
        let t = tempfile::tempdir().unwrap();
        let run_dir = t.path().join("runs").join("r");
        let published = t.path().join("nnUNet_preprocessed").join("Dataset001_X");
        std::fs::create_dir_all(published.join("nnUNetPlans_2d")).unwrap();
        std::fs::write(published.join("nnUNetPlans_2d").join("c.npy"), b"data").unwrap();
        std::fs::create_dir_all(run_dir.join("inputs")).unwrap();
        std::fs::write(run_dir.join("inputs").join("pretrained_weights.safetensors"), b"w").unwrap();
        std::fs::write(run_dir.join("inputs").join("other.safetensors"), b"x").unwrap();
        crate::user_dirs::reference(&run_dir.join("preprocessed").join("Dataset001_X"), &published).unwrap();
        let mut run = super::tests::run_for(&run_dir);
        run.options.pretrained = Some(PretrainedWeights {
            path: "inputs/pretrained_weights.safetensors".into(),
            sha256: "0".repeat(64),
            size: 1,
            source: "/w.safetensors".into(),
        });
        let open = |run: &Run, p: &str| open_download(run, Path::new(p)).map(|d| d.size);
        assert_eq!(open(&run, "preprocessed/Dataset001_X/nnUNetPlans_2d/c.npy").unwrap(), 4);
        assert_eq!(open(&run, "inputs/pretrained_weights.safetensors").unwrap(), 1);
        assert!(open(&run, "inputs/other.safetensors").unwrap_err().contains("not an input"));
        assert!(open(&run, "preprocessed/Dataset002_Y/c.npy").is_err());
        std::os::unix::fs::symlink("/etc/hostname", published.join("nnUNetPlans_2d").join("evil.npy")).unwrap();
        assert!(open(&run, "preprocessed/Dataset001_X/nnUNetPlans_2d/evil.npy").unwrap_err().contains("symbolic link"));
        run.options.pretrained = None;
        assert!(open(&run, "inputs/pretrained_weights.safetensors").is_err(), "no weights: nothing under inputs/");
    }
}
