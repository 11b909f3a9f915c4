//! Everything a task names comes from the wire and is untrusted: ids and relative paths are checked
//! before any of them is joined to a local path, and every location a task writes or deletes must
//! stay inside the worker's cache folder for its run.
//!
//! - ids (run, task, dataset, case): `[A-Za-z0-9._-]`, not `.` or `..`, at most [`MAX_ID_LEN`] bytes;
//! - relative paths (inputs, checkpoint, pretrained weights, which must also be an input): at most [`MAX_PATH_LEN`] bytes, no NUL, not absolute, only
//!   plain components (no `..`, `.`, root or prefix), each a valid file name;
//! - the run directory (read in place on a shared filesystem): absolute, no `..`, no NUL.
//!
//! A task that fails a check is refused ([`WorkerError::Refused`]): the worker fails it back to the
//! coordinator as not retryable and writes nothing for it.
use crate::error::WorkerError;
use nnunet_common::Fold;
use nnunet_proto::v1 as pb;
use std::path::{Component, Path, PathBuf};

/// Longest id accepted.
pub const MAX_ID_LEN: usize = 128;
/// Longest relative path accepted.
pub const MAX_PATH_LEN: usize = 1024;

fn refuse(msg: String) -> WorkerError {
    WorkerError::Refused(msg)
}

/// Checks an id used as a file or folder name.
pub fn check_id(what: &str, s: &str) -> Result<(), WorkerError> {
    if s.is_empty() || s.len() > MAX_ID_LEN {
        return Err(refuse(format!("{what} must have 1..={MAX_ID_LEN} characters, got {}", s.len())));
    }
    if s == "." || s == ".." || s.contains("..") {
        return Err(refuse(format!("{what} {s:?} contains '..'")));
    }
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(refuse(format!("{what} {:?} contains {c:?}; allowed are A-Z a-z 0-9 . _ -", truncate(s))));
    }
    Ok(())
}

/// Checks a path relative to the run directory and returns it as a `PathBuf`.
pub fn check_rel_path(what: &str, s: &str) -> Result<PathBuf, WorkerError> {
    if s.is_empty() || s.len() > MAX_PATH_LEN {
        return Err(refuse(format!("{what} must have 1..={MAX_PATH_LEN} bytes, got {}", s.len())));
    }
    if s.contains('\0') {
        return Err(refuse(format!("{what} {:?} contains a NUL byte", truncate(s))));
    }
    let p = Path::new(s);
    if p.is_absolute() {
        return Err(refuse(format!("{what} {:?} is absolute; the coordinator must send paths relative to the run directory", truncate(s))));
    }
    for c in p.components() {
        match c {
            Component::Normal(_) => {}
            Component::ParentDir => return Err(refuse(format!("{what} {:?} climbs out with '..'", truncate(s)))),
            _ => return Err(refuse(format!("{what} {:?} is not a plain relative path", truncate(s)))),
        }
    }
    Ok(p.to_path_buf())
}

/// `root` joined with the checked relative path `rel`. The existing part of the result, resolved
/// through symbolic links, must still be inside `root` (resolved the same way).
pub fn resolve_inside(root: &Path, what: &str, rel: &str) -> Result<PathBuf, WorkerError> {
    let joined = root.join(check_rel_path(what, rel)?);
    let canon_root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    let mut existing = joined.as_path();
    while !existing.exists() {
        match existing.parent() {
            Some(p) => existing = p,
            None => return Ok(joined),
        }
    }
    let canon = existing.canonicalize().map_err(|e| refuse(format!("{what} {rel:?}: resolving {}: {e}", existing.display())))?;
    if !canon.starts_with(&canon_root) {
        return Err(refuse(format!("{what} {rel:?} resolves to {}, outside {}", canon.display(), root.display())));
    }
    Ok(joined)
}

/// Checks the run directory the coordinator names (only read, and only when its marker matches).
pub fn check_run_dir(s: &str) -> Result<(), WorkerError> {
    if s.is_empty() {
        return Ok(()); // no shared filesystem offered
    }
    if s.len() > 4096 || s.contains('\0') {
        return Err(refuse("run_dir is too long or contains a NUL byte".into()));
    }
    let p = Path::new(s);
    if !p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(refuse(format!("run_dir {:?} must be absolute and free of '..'", truncate(s))));
    }
    Ok(())
}

/// Checks every id and path of a leased task; returns its fold.
pub fn check_task(task: &pb::Task) -> Result<Fold, WorkerError> {
    check_id("run_id", &task.run_id)?;
    check_id("task_id", &task.task_id)?;
    check_id("dataset_name", &task.dataset_name)?;
    if !task.plans_name.is_empty() {
        nnunet_common::paths::check_plans_name(&task.plans_name).map_err(|e| refuse(e.to_string()))?;
    }
    for c in &task.case_ids {
        check_id("case id", c)?;
    }
    for a in &task.inputs {
        check_rel_path("input path", &a.path)?;
        if a.sha256.len() != 64 || !a.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(refuse(format!("input {:?} has no valid sha256 to verify the download against", truncate(&a.path))));
        }
    }
    if !task.checkpoint.is_empty() {
        check_rel_path("checkpoint", &task.checkpoint)?;
    }
    if !task.pretrained_weights.is_empty() {
        check_rel_path("pretrained_weights", &task.pretrained_weights)?;
        // Only a file verified like every input (sha256) is loaded.
        if !task.inputs.iter().any(|a| a.path == task.pretrained_weights) {
            return Err(refuse(format!("pretrained weights {:?} are not among the task's inputs", truncate(&task.pretrained_weights))));
        }
    }
    check_run_dir(&task.run_dir)?;
    Fold::from_wire(task.fold).map_err(|e| refuse(e.to_string()))
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_a_plain_charset_without_dot_dot() {
        for ok in ["run-1", "r_2.3", "Dataset004_Hippocampus", "t-0-train-f1"] {
            check_id("id", ok).unwrap();
        }
        for bad in ["", ".", "..", "../x", "a/b", "a\\b", "x..y", "a b", "a\0b", &"x".repeat(MAX_ID_LEN + 1), "é"] {
            assert!(check_id("id", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn relative_paths_stay_relative_and_plain() {
        assert_eq!(check_rel_path("p", "preprocessed/a/b.npy").unwrap(), PathBuf::from("preprocessed/a/b.npy"));
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "./a", "a/./b\0", "a\0", &"a/".repeat(600)] {
            assert!(check_rel_path("p", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn resolved_paths_stay_inside_even_through_links() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("cache");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::os::unix::fs::symlink(tmp.path(), root.join("escape")).unwrap();
        assert_eq!(resolve_inside(&root, "p", "sub/new/file").unwrap(), root.join("sub/new/file"));
        assert!(resolve_inside(&root, "p", "escape/victim").is_err());
        assert!(resolve_inside(&root, "p", "../victim").is_err());
    }

    #[test]
    fn a_task_with_any_bad_field_is_refused() {
        let good = pb::Task {
            task_id: "t1".into(),
            run_id: "r1".into(),
            dataset_name: "Dataset001_X".into(),
            case_ids: vec!["case_1".into()],
            inputs: vec![pb::ArtifactRef { path: "raw/Dataset001_X/dataset.json".into(), sha256: "ab".repeat(32), size: 3 }],
            run_dir: "/srv/runs/r1".into(),
            fold: -1,
            ..Default::default()
        };
        assert_eq!(check_task(&good).unwrap(), Fold::All);
        let mut with_weights = good.clone();
        with_weights.pretrained_weights = with_weights.inputs[0].path.clone();
        assert_eq!(check_task(&with_weights).unwrap(), Fold::All);
        type Mutation = Box<dyn Fn(&mut pb::Task)>;
        let variants: Vec<Mutation> = vec![
            Box::new(|t| t.run_id = "../victim".into()),
            Box::new(|t| t.task_id = "a/b".into()),
            Box::new(|t| t.plans_name = "../nnUNetPlans".into()),
            Box::new(|t| t.dataset_name = "..".into()),
            Box::new(|t| t.case_ids.push("../../etc/x".into())),
            Box::new(|t| t.inputs[0].path = "/etc/passwd".into()),
            Box::new(|t| t.inputs[0].path = "raw/../../x".into()),
            Box::new(|t| t.checkpoint = "/abs/checkpoint".into()),
            Box::new(|t| t.run_dir = "relative/dir".into()),
            Box::new(|t| t.fold = -7),
            Box::new(|t| t.inputs[0].sha256 = String::new()),
            Box::new(|t| t.pretrained_weights = "../w.safetensors".into()),
            Box::new(|t| t.pretrained_weights = "inputs/not_an_input.safetensors".into()),
        ];
        for (i, f) in variants.iter().enumerate() {
            let mut t = good.clone();
            f(&mut t);
            assert!(matches!(check_task(&t), Err(WorkerError::Refused(_))), "variant {i}");
        }
    }
}
