//! Preprocessing a whole dataset (or a shard of it) into the storage contract of ARCHITECTURE.md
//! ("Preprocessed storage"), resumable: `nnunetv2/preprocessing/preprocessors/
//! default_preprocessor.py::DefaultPreprocessor.run`.
use super::run_case::preprocess_case;
use crate::case::{self, CaseFiles};
use crate::dataset_json::DatasetJson;
use crate::imageio;
use crate::parallel::run_parallel;
use crate::paths::DatasetDirs;
use crate::plans::{Configuration2d, Plans};
use crate::raw::{self, RawCase};
use crate::{error, hash, npy, Error, Result};
use std::path::Path;
use std::time::Instant;

/// Outcome of [`preprocess_dataset`].
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PreprocessReport {
    /// Cases requested (the whole dataset, or the shard).
    pub n_cases: usize,
    /// Cases preprocessed by this call.
    pub n_processed: usize,
    /// Cases skipped because they were complete already.
    pub n_skipped: usize,
    pub wall_s: f64,
}

/// Preprocesses one raw case and writes it (data, seg, then properties last).
pub fn preprocess_and_write_case(plans: &Plans, config: &Configuration2d, dj: &DatasetJson, case: &RawCase, data_dir: &Path) -> Result<()> {
    let img = imageio::read_case_images(&case.images)?;
    let seg = imageio::read_seg(&case.label)?;
    let (data, shape, seg8, mut props) =
        preprocess_case(plans, config, dj, img, Some(seg)).map_err(|e| Error::Invalid(format!("case {}: {e}", case.id)))?;
    let files = CaseFiles::new(data_dir, &case.id);
    let dbytes = npy::to_npy_bytes(&shape, &data);
    drop(data);
    props.data_sha256 = hash::sha256_bytes(&dbytes);
    hash::write_atomic(&files.data, &dbytes)?;
    drop(dbytes);
    let sbytes = npy::to_npy_bytes(&[1, shape[1], shape[2], shape[3]], &seg8);
    props.seg_sha256 = hash::sha256_bytes(&sbytes);
    hash::write_atomic(&files.seg, &sbytes)?;
    error::write_json(&files.props, &props)
}

/// Preprocesses the dataset (or the shard `cases`) into `dirs.data_dir()`, copies the labels to
/// `gt_segmentations/` and `dataset.json` next to the plans. Needs `nnUNetPlans.json` (run
/// [`crate::planning::plan_dataset`] first). Complete cases are skipped; stale temporary files are removed.
pub fn preprocess_dataset(dirs: &DatasetDirs, n_threads: usize, cases: Option<&[String]>, show_progress: bool) -> Result<PreprocessReport> {
    let start = Instant::now();
    let plans_file = dirs.plans_file();
    if !plans_file.is_file() {
        return Err(Error::Invalid(format!("{} does not exist; run `nnunet plan {}` first", plans_file.display(), dirs.name)));
    }
    let plans = Plans::load(&plans_file)?;
    let config = plans.config_2d()?;
    let dj = DatasetJson::load(&dirs.raw.join("dataset.json"))?;
    let mut all = raw::raw_training_cases(&dirs.raw, &dj)?;
    if let Some(shard) = cases {
        for c in shard {
            if !all.iter().any(|r| &r.id == c) {
                return Err(Error::Invalid(format!("case {c:?} is not a training case of {}", dirs.raw.display())));
            }
        }
        all.retain(|r| shard.contains(&r.id));
    }
    let data_dir = dirs.data_dir();
    std::fs::create_dir_all(&data_dir).map_err(|e| Error::io(&data_dir, e))?;
    case::invalidate_if_plans_changed(&data_dir, &case::plans_digest(&plans, &config)?)?;
    hash::remove_stale_temps(&data_dir);
    let gt = dirs.gt_dir();
    std::fs::create_dir_all(&gt).map_err(|e| Error::io(&gt, e))?;
    hash::remove_stale_temps(&gt);
    let todo: Vec<&RawCase> = all.iter().filter(|c| !CaseFiles::new(&data_dir, &c.id).is_complete()).collect();
    let n_skipped = all.len() - todo.len();
    run_parallel(&todo, n_threads, show_progress, "preprocessing", |c| {
        preprocess_and_write_case(&plans, &config, &dj, c, &data_dir)?;
        let name = c.label.file_name().unwrap();
        hash::copy_if_changed(&c.label, &gt.join(name))
    })?;
    for c in &all {
        hash::copy_if_changed(&c.label, &gt.join(c.label.file_name().unwrap()))?;
    }
    hash::copy_if_changed(&dirs.raw.join("dataset.json"), &dirs.preprocessed.join("dataset.json"))?;
    Ok(PreprocessReport { n_cases: all.len(), n_processed: todo.len(), n_skipped, wall_s: start.elapsed().as_secs_f64() })
}
