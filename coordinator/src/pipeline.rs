//! The coordinator's part of the pipeline, on the run directory:
//!
//! ```text
//! <state-dir>/runs/<run_id>/
//!   .nnunet-run-id                      marker: a worker that can read it shares the filesystem
//!   raw/DatasetXXX_Name -> user's folder (symlink)
//!   preprocessed/DatasetXXX_Name/       nnU-Net layout: plans, fingerprint, splits, nnUNetPlans_2d/
//!   results/DatasetXXX_Name/nnUNetTrainer__<plans>__2d/   (<plans>: nnUNetPlans, or the --planner preset's)
//!     fold_K/, fold_all/                checkpoints, logs, progress.png, validation/
//!     crossval_results_folds_0_1_2_3_4/ merged validation, summary.json, postprocessing.json
//!     test_predictions/fold_K/          per-fold test probabilities (PREDICT tasks)
//!     ensemble_test/                    fold ensemble of the test images
//! ```
//! Planning (verify, fingerprint, plan, splits) and finalizing (CV summary, postprocessing choice,
//! test ensemble) run here, once; everything per case or per fold runs on workers.
use crate::domain::{RunId, TaskKind as Kind};
use crate::state::{Run, Task};
use crate::user_dirs::UserDirs;
use anyhow::{bail, Context, Result};
use nnunet_common::paths::DatasetDirs;
use nnunet_common::Fold;
use nnunet_proto::wire::RUN_MARKER;
use std::path::{Path, PathBuf};

pub fn dirs_of(run: &Run) -> DatasetDirs {
    let rd = Path::new(&run.run_dir);
    DatasetDirs::new(&run.dataset_name, &rd.join("raw"), &rd.join("preprocessed"), &rd.join("results")).with_plans(&run.plans_name)
}

/// Path of `p` relative to the run dir, as a string with `/`.
fn rel(run: &Run, p: &Path) -> String {
    p.strip_prefix(&run.run_dir).unwrap_or(p).to_string_lossy().into_owned()
}

/// `fold_K` or `fold_all` under the model folder.
pub fn fold_dir(dirs: &DatasetDirs, fold: Fold) -> PathBuf {
    dirs.model_dir().join(fold.dir_name())
}

pub fn prepare_run_dir(run_dir: &Path, run_id: &RunId, raw: &Path, dataset_name: &str) -> Result<()> {
    for d in ["raw", "preprocessed", "results"] {
        std::fs::create_dir_all(run_dir.join(d)).with_context(|| format!("creating {}", run_dir.join(d).display()))?;
    }
    let link = run_dir.join("raw").join(dataset_name);
    if !link.exists() {
        std::os::unix::fs::symlink(raw, &link).with_context(|| format!("linking {} -> {}", link.display(), raw.display()))?;
    }
    nnunet_common::hash::write_atomic(&run_dir.join(RUN_MARKER), run_id.as_str().as_bytes())?;
    Ok(())
}

/// A planned run: its training cases, and where its preprocessed data came from when it was reused.
#[derive(Debug)]
pub struct Planned {
    pub cases: Vec<String>,
    pub reused: Option<PathBuf>,
}

impl Planned {
    /// The cases still to preprocess (none when the preprocessed data was reused).
    pub fn to_preprocess(&self) -> &[String] {
        if self.reused.is_some() {
            &[]
        } else {
            &self.cases
        }
    }
}

/// Verifies, fingerprints and plans the dataset and writes the splits, unless `$nnUNet_preprocessed`
/// holds this raw dataset's plans and complete preprocessed cases (then they are taken from there).
pub fn plan(run: &Run, threads: usize, user: &UserDirs) -> Result<Planned> {
    let dirs = dirs_of(run);
    let planner = nnunet_common::planners::Planner::from_plans_name(&run.plans_name)
        .with_context(|| format!("run {} names plans {:?}, which no planner writes", run.id, run.plans_name))?;
    let digest = crate::user_dirs::raw_digest(&dirs.raw)?;
    let reused = user
        .preprocessed
        .as_deref()
        .and_then(|root| crate::user_dirs::reusable_preprocessed(root, &dirs, &digest))
        .filter(|src| src.join(format!("{}.json", run.plans_name)).is_file());
    match &reused {
        // The run references the published data instead of copying it (`user_dirs::reference`).
        Some(src) => crate::user_dirs::reference(&dirs.preprocessed, src)?,
        None => {
            nnunet_common::verify::verify_dataset(&dirs.raw)?.into_result()?;
            nnunet_common::preprocess::plan_dataset(&dirs, planner, None, threads, false)?;
            nnunet_common::hash::write_atomic(&dirs.preprocessed.join(crate::user_dirs::RAW_DIGEST_FILE), digest.as_bytes())?;
        }
    }
    let model_dir = dirs.model_dir();
    std::fs::create_dir_all(&model_dir)?;
    std::fs::copy(dirs.plans_file(), model_dir.join("plans.json"))?;
    std::fs::copy(dirs.raw.join("dataset.json"), model_dir.join("dataset.json"))?;
    if dirs.fingerprint_file().exists() {
        std::fs::copy(dirs.fingerprint_file(), model_dir.join("dataset_fingerprint.json"))?;
    }
    let splits: Vec<nnunet_common::splits::Split> = nnunet_common::error::read_json(&dirs.splits_file())?;
    let mut cases: Vec<String> = splits.first().map(|s| s.train.iter().chain(&s.val).cloned().collect()).unwrap_or_default();
    cases.sort();
    if cases.is_empty() {
        bail!("the dataset has no training cases");
    }
    for f in run.folds.iter().filter_map(|f| f.index()) {
        if f >= splits.len() {
            bail!("fold {f} requested but splits_final.json has {} folds", splits.len());
        }
    }
    Ok(Planned { cases, reused })
}

/// Publishes a finalized run to the nnU-Net roots: the preprocessed dataset to
/// `$nnUNet_preprocessed/DatasetXXX_Name/` (unless it came from there, or another active run reads
/// the folder there: `in_use`) and the model folder to `$nnUNet_results/DatasetXXX_Name/<model folder>/`;
/// the run directory then links to what was published instead of keeping a copy
/// ([`crate::user_dirs::reference`]). Adds `results_dir` / `preprocessed_dir` to the summary.
pub fn publish(run: &Run, user: &UserDirs, in_use: &[PathBuf], summary: String) -> Result<String> {
    let dirs = dirs_of(run);
    let mut v: serde_json::Value = serde_json::from_str(&summary)?;
    if let Some(root) = &user.preprocessed {
        let dest = root.join(&dirs.name);
        let digest = std::fs::read_to_string(dirs.preprocessed.join(crate::user_dirs::RAW_DIGEST_FILE)).unwrap_or_default();
        let busy = dest.canonicalize().is_ok_and(|d| in_use.contains(&d));
        if crate::user_dirs::reusable_preprocessed(root, &dirs, digest.trim()).is_some() {
            crate::user_dirs::reference(&dirs.preprocessed, &dest)?;
            v["preprocessed_dir"] = serde_json::json!(dest);
        } else if crate::user_dirs::ours_to_replace(&dest) && !busy {
            crate::user_dirs::publish_dir(&dirs.preprocessed, &dest, &[])
                .with_context(|| format!("publishing the preprocessed data to {}", dest.display()))?;
            crate::user_dirs::reference(&dirs.preprocessed, &dest)?;
            v["preprocessed_dir"] = serde_json::json!(dest);
        } else {
            tracing::warn!(
                "{} exists and was not made by a run, or another active run reads it: left as it is (the run's copy stays in the run directory)",
                dest.display()
            );
        }
    }
    if let Some(root) = &user.results {
        let dest = root.join(&dirs.name).join(nnunet_common::paths::model_folder_name_for(&dirs.plans_name));
        crate::user_dirs::publish_model(&dirs.model_dir(), &dest)
            .with_context(|| format!("publishing the model folder to {}", dest.display()))?;
        crate::user_dirs::reference(&dirs.model_dir(), &dest)?;
        v["results_dir"] = serde_json::json!(dest);
    }
    Ok(serde_json::to_string(&v)?)
}

/// Where the run's preprocessed dataset links to, when it references published data.
pub fn preprocessed_reference(run: &Run) -> Option<PathBuf> {
    crate::user_dirs::link_target(&dirs_of(run).preprocessed)
}

fn raw_case_files(dirs: &DatasetDirs, sub: &str, cases: &[String]) -> Result<Vec<PathBuf>> {
    let dir = dirs.raw.join(sub);
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(&dir) else { return Ok(out) };
    let mut names: Vec<String> = rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    for n in names {
        if n.starts_with('.') {
            continue;
        }
        let stem_ok = cases.iter().any(|c| {
            n.strip_prefix(c.as_str()).is_some_and(|rest| {
                rest.starts_with('.')
                    || (rest.len() > 5
                        && rest.starts_with('_')
                        && rest[1..5].bytes().all(|b| b.is_ascii_digit())
                        && rest[5..].starts_with('.'))
            })
        });
        if stem_ok || cases.is_empty() {
            out.push(dir.join(n));
        }
    }
    Ok(out)
}

/// Training and validation cases of a fold; fold `all` trains and validates on every case
/// (`nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py::do_split`).
fn fold_cases(dirs: &DatasetDirs, fold: Fold) -> Result<(Vec<String>, Vec<String>)> {
    let splits: Vec<nnunet_common::splits::Split> = nnunet_common::error::read_json(&dirs.splits_file())?;
    match fold {
        Fold::Index(k) => {
            let s = splits.get(k as usize).with_context(|| format!("no fold {k} in splits_final.json"))?;
            Ok((s.train.clone(), s.val.clone()))
        }
        Fold::All => {
            let s = splits.first().context("splits_final.json has no folds")?;
            let mut all: Vec<String> = s.train.iter().chain(&s.val).cloned().collect();
            all.sort();
            Ok((all.clone(), all))
        }
    }
}

fn preprocessed_case_files(dirs: &DatasetDirs, cases: &[String]) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for c in cases {
        let f = nnunet_common::case::CaseFiles::new(&dirs.data_dir(), c);
        v.extend([f.data, f.seg, f.props]);
    }
    v
}

fn global_files(dirs: &DatasetDirs) -> Vec<PathBuf> {
    let mut v = vec![dirs.plans_file(), dirs.preprocessed.join("dataset.json"), dirs.splits_file()];
    if dirs.fingerprint_file().exists() {
        v.push(dirs.fingerprint_file());
    }
    v
}

/// The files (relative to the run dir) a worker needs for a task. A worker without the shared
/// filesystem downloads the ones it does not have (checked by sha256).
pub fn task_inputs(run: &Run, t: &Task) -> Result<Vec<String>> {
    let dirs = dirs_of(run);
    let mut files: Vec<PathBuf> = Vec::new();
    match t.kind {
        Kind::Preprocess => {
            files.push(dirs.raw.join("dataset.json"));
            files.extend(raw_case_files(&dirs, "imagesTr", &t.cases)?);
            files.extend(raw_case_files(&dirs, "labelsTr", &t.cases)?);
            files.extend(global_files(&dirs));
        }
        Kind::Train | Kind::Validate => {
            files.extend(global_files(&dirs));
            let fold = t.fold.context("a training task without a fold")?;
            let (train, val) = fold_cases(&dirs, fold)?;
            let mut cases: Vec<String> = if t.kind == Kind::Train { train.into_iter().chain(val.clone()).collect() } else { val.clone() };
            cases.sort();
            cases.dedup();
            files.extend(preprocessed_case_files(&dirs, &cases));
            let fold_dir = fold_dir(&dirs, fold);
            if t.kind == Kind::Validate {
                let ending = nnunet_common::dataset_json::DatasetJson::load(&dirs.raw.join("dataset.json"))?.file_ending;
                for c in &val {
                    files.push(dirs.gt_dir().join(format!("{c}{ending}")));
                }
                files.push(fold_dir.join("checkpoint_final.safetensors"));
                files.push(fold_dir.join("checkpoint_final.json"));
            } else if let Some(w) = task_pretrained(run, t) {
                files.push(Path::new(&run.run_dir).join(w));
            } else if let Some(ck) = &t.checkpoint {
                // Resume material: the last checkpoint and the logs written so far.
                let ck = Path::new(&run.run_dir).join(ck);
                files.push(ck.clone());
                files.push(ck.with_extension("json"));
                for extra in ["training_log.jsonl", "training_log.txt"] {
                    if fold_dir.join(extra).exists() {
                        files.push(fold_dir.join(extra));
                    }
                }
            }
        }
        Kind::Predict => {
            let model = dirs.model_dir();
            files.push(model.join("plans.json"));
            files.push(model.join("dataset.json"));
            files.push(dirs.raw.join("dataset.json"));
            let fold_dir = fold_dir(&dirs, t.fold.context("a prediction task without a fold")?);
            files.push(fold_dir.join("checkpoint_final.safetensors"));
            files.push(fold_dir.join("checkpoint_final.json"));
            files.extend(raw_case_files(&dirs, "imagesTs", &[])?);
        }
    }
    Ok(files.iter().map(|p| rel(run, p)).collect())
}

/// The pretrained weights a training task starts from (relative to the run dir): only when it does
/// not resume from a checkpoint (nnU-Net loads them only when not continuing,
/// `nnunetv2/run/run_training.py::maybe_load_checkpoint`).
pub fn task_pretrained(run: &Run, t: &Task) -> Option<String> {
    (t.kind == Kind::Train && t.checkpoint.is_none()).then(|| run.options.pretrained.as_ref().map(|p| p.path.clone())).flatten()
}

/// The checkpoint a task starts from, relative to the run dir.
pub fn task_checkpoint(run: &Run, t: &Task) -> Option<String> {
    match t.kind {
        Kind::Train => t.checkpoint.clone(),
        Kind::Validate | Kind::Predict => Some(rel(run, &fold_dir(&dirs_of(run), t.fold?).join("checkpoint_final.safetensors"))),
        Kind::Preprocess => None,
    }
}

/// When an upload completes a checkpoint (its JSON sidecar is uploaded after the weights), returns
/// the weights' path and the epoch recorded in the sidecar.
pub fn checkpoint_from_upload(rel_path: &Path, dest: &Path) -> Option<(String, Option<u32>)> {
    let name = rel_path.file_name()?.to_string_lossy();
    if !(name == "checkpoint_latest.json" || name == "checkpoint_final.json") {
        return None;
    }
    let weights = rel_path.with_extension("safetensors");
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(dest).ok()?).ok()?;
    let epoch = meta.get("epoch").and_then(|e| e.as_u64()).map(|e| e as u32);
    Some((weights.to_string_lossy().into_owned(), epoch))
}

/// Writes the cross-validation summary (merged validation predictions, Dice, postprocessing) and
/// returns the JSON a user reports. Fold `all` is not part of the cross-validation (its
/// validation cases are its training cases), as in nnU-Net.
pub fn finalize(run: &Run) -> Result<String> {
    let dirs = dirs_of(run);
    let ds = nnunet_common::dataset_json::DatasetJson::load(&dirs.raw.join("dataset.json"))?;
    let cv_folds: Vec<usize> = run.folds.iter().filter_map(|f| f.index()).collect();
    let mut v = if cv_folds.is_empty() {
        serde_json::json!({ "note": "only fold all was trained: there is no cross-validation" })
    } else {
        serde_json::to_value(nnunet_common::crossval::crossval_summary(&dirs.model_dir(), &cv_folds, &dirs.gt_dir(), &ds)?)?
    };
    if run.folds.contains(&Fold::All) {
        v["fold_all"] = serde_json::json!(fold_dir(&dirs, Fold::All));
    }
    if run.predict_test && run.folds.len() >= 2 {
        let fold_dirs: Vec<PathBuf> = run.folds.iter().map(|f| dirs.model_dir().join("test_predictions").join(f.dir_name())).collect();
        let out = dirs.model_dir().join("ensemble_test");
        let n = nnunet_common::ensemble::ensemble_folders(&fold_dirs, &out, &ds)?;
        v["test_ensemble"] = serde_json::json!({ "folder": out, "cases": n });
    }
    v["run_id"] = serde_json::json!(run.id);
    v["dataset"] = serde_json::json!(run.dataset_name);
    v["model_dir"] = serde_json::json!(dirs.model_dir());
    Ok(serde_json::to_string(&v)?)
}
