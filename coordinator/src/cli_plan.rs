//! The planning commands of the `nnunet` CLI: `plan` (verify + fingerprint + 2d plan + splits),
//! `preprocess` (resumable, shardable) and `plan-and-preprocess` (nnUNetv2_plan_and_preprocess).
//! The work is done by `nnunet_common::{fingerprint, planning, preprocess, splits}`; this file parses
//! arguments, resolves the dataset and prints a summary.
use anyhow::{Context, Result};
use nnunet_common::paths::{self, DatasetDirs};
use nnunet_common::planners::Planner;
use nnunet_common::preprocess;
use std::path::PathBuf;
use std::time::Instant;

/// Where the dataset is and where the preprocessed output goes.
#[derive(clap::Args, Debug, Clone)]
pub struct DatasetSel {
    /// The raw dataset: a path, a name (`Dataset042_Foo`) or an id (`42`) under $nnUNet_raw.
    pub dataset: String,
    /// nnUNet_raw root used to resolve names and ids.
    #[arg(long, env = "nnUNet_raw")]
    pub raw: Option<PathBuf>,
    /// nnUNet_preprocessed root (output).
    #[arg(long, env = "nnUNet_preprocessed")]
    pub preprocessed: Option<PathBuf>,
    /// Worker threads, one case in flight each (peak memory ~ N cases). Default: number of cores.
    #[arg(long = "np", short = 'n', alias = "num-processes", default_value_t = 0)]
    pub np: usize,
    /// No progress bar / progress lines.
    #[arg(long)]
    pub quiet: bool,
}

impl DatasetSel {
    fn threads(&self) -> usize {
        if self.np > 0 {
            self.np
        } else {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        }
    }
    /// Resolves the dataset into its folders (results root unused here: `$nnUNet_results` or a sibling).
    pub fn dirs(&self) -> Result<DatasetDirs> {
        let raw_root = match &self.raw {
            Some(r) => r.clone(),
            None => {
                if std::path::Path::new(&self.dataset).is_dir() {
                    PathBuf::from(&self.dataset).parent().map(|p| p.to_path_buf()).unwrap_or_default()
                } else {
                    paths::raw_root()?
                }
            }
        };
        let raw = paths::resolve_dataset(&raw_root, &self.dataset)?;
        let raw = raw.canonicalize().with_context(|| format!("resolving {}", raw.display()))?;
        let name = raw.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let pre_root = match &self.preprocessed {
            Some(p) => p.clone(),
            None => paths::preprocessed_root()?,
        };
        let results_root = paths::results_root().unwrap_or_else(|_| pre_root.join("../nnUNet_results"));
        let mut dirs = DatasetDirs::new(&name, raw.parent().unwrap_or(&raw), &pre_root, &results_root);
        dirs.raw = raw;
        Ok(dirs)
    }
}

/// The planner choice shared by `plan` and `plan-and-preprocess`.
#[derive(clap::Args, Debug)]
pub struct PlannerArgs {
    /// The experiment planner: default (nnU-Net's ExperimentPlanner, PlainConvUNet, nnUNetPlans.json) or a
    /// Residual Encoder preset ResEncM | ResEncL | ResEncXL (nnUNetResEncUNet{M,L,XL}Plans.json; nnU-Net's -pl
    /// nnUNetPlannerResEnc{M,L,XL}).
    #[arg(long, default_value = "default", value_parser = parse_planner)]
    pub planner: Planner,
    /// GPU memory the plan targets, in GB (nnU-Net's -gpu_memory_target; default: the planner's, 8 / 8 / 24 / 40).
    #[arg(long)]
    pub gpu_memory_target: Option<f64>,
}

/// `nnunet plan DATASET`: verify, fingerprint, plan the 2d configuration, write the splits.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  nnunet plan 501 --planner ResEncM\nWrites dataset_fingerprint.json, nnUNetPlans.json (or the preset's nnUNetResEncUNet{M,L,XL}Plans.json), splits_final.json and dataset.json under $nnUNet_preprocessed/DatasetXXX_Name/."
)]
pub struct PlanArgs {
    #[command(flatten)]
    pub sel: DatasetSel,
    #[command(flatten)]
    pub planning: PlannerArgs,
}

/// `nnunet preprocess DATASET`: preprocess every case (or a shard) into nnUNetPlans_2d/.
#[derive(clap::Args, Debug)]
#[command(after_help = "Resumable: cases whose {case}.json exists are skipped; run it again after an interruption.")]
pub struct PreprocessArgs {
    #[command(flatten)]
    pub sel: DatasetSel,
    /// Only these cases (comma-separated ids): a shard for one worker.
    #[arg(long, value_delimiter = ',')]
    pub cases: Option<Vec<String>>,
    /// The plans file to preprocess for (nnU-Net's -plans_name): nnUNetPlans, or a Residual Encoder
    /// preset's nnUNetResEncUNet{M,L,XL}Plans (which share nnUNetPlans' preprocessed data).
    #[arg(long, default_value = nnunet_common::paths::PLANS_NAME)]
    pub plans: String,
}

/// `nnunet plan-and-preprocess DATASET`.
#[derive(clap::Args, Debug)]
pub struct PlanAndPreprocessArgs {
    #[command(flatten)]
    pub sel: DatasetSel,
    #[command(flatten)]
    pub planning: PlannerArgs,
}

fn print_plan(dirs: &DatasetDirs, plans: &nnunet_common::plans::Plans) -> Result<()> {
    let c = plans.config_2d()?;
    let a = &c.architecture.arch_kwargs;
    println!(
        "plan {}: 2d patch {:?}, batch {}, {} stages {:?}, spacing {:?}, median {:?}, normalization {:?}, mask {:?}",
        dirs.name,
        c.patch_size,
        c.batch_size,
        a.n_stages,
        a.features_per_stage,
        c.spacing,
        c.median_image_size_in_voxels,
        c.normalization_schemes,
        c.use_mask_for_norm
    );
    println!("wrote {} (+ dataset_fingerprint.json, splits_final.json)", dirs.plans_file().display());
    Ok(())
}

pub(crate) fn parse_planner(s: &str) -> std::result::Result<Planner, String> {
    s.parse().map_err(|e: nnunet_common::Error| e.to_string())
}

fn plan(sel: &DatasetSel, planner: Planner, gpu: Option<f64>) -> Result<DatasetDirs> {
    let dirs = sel.dirs()?.with_plans(planner.plans_name());
    let t = Instant::now();
    let plans = preprocess::plan_dataset(&dirs, planner, gpu, sel.threads(), !sel.quiet)
        .with_context(|| format!("planning {}", dirs.raw.display()))?;
    print_plan(&dirs, &plans)?;
    eprintln!("planned in {:.1} s", t.elapsed().as_secs_f64());
    Ok(dirs)
}

fn preprocess_dirs(dirs: &DatasetDirs, sel: &DatasetSel, cases: Option<&[String]>) -> Result<()> {
    let r = preprocess::preprocess_dataset(dirs, sel.threads(), cases, !sel.quiet)
        .with_context(|| format!("preprocessing {}", dirs.raw.display()))?;
    println!(
        "preprocessed {} case(s), skipped {} already complete, of {} in {:.1} s -> {}",
        r.n_processed,
        r.n_skipped,
        r.n_cases,
        r.wall_s,
        dirs.data_dir().display()
    );
    Ok(())
}

pub fn run_plan(a: PlanArgs) -> Result<()> {
    plan(&a.sel, a.planning.planner, a.planning.gpu_memory_target).map(|_| ())
}

pub fn run_preprocess(a: PreprocessArgs) -> Result<()> {
    paths::check_plans_name(&a.plans)?;
    let dirs = a.sel.dirs()?.with_plans(&a.plans);
    preprocess_dirs(&dirs, &a.sel, a.cases.as_deref())
}

pub fn run_plan_and_preprocess(a: PlanAndPreprocessArgs) -> Result<()> {
    let dirs = plan(&a.sel, a.planning.planner, a.planning.gpu_memory_target)?;
    preprocess_dirs(&dirs, &a.sel, None)
}
