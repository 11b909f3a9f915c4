//! Stage timings of planning and preprocessing one raw dataset (verify, fingerprint, plan, splits,
//! preprocess), without the CLI: `cargo run --release -p nnunet-common --example plan_timing --
//! RAW_DATASET_DIR OUT_PREPROCESSED_ROOT [THREADS]`.
use nnunet_common::paths::DatasetDirs;
use nnunet_common::{dataset_json::DatasetJson, fingerprint, planning, preprocess, splits, verify};
use std::path::PathBuf;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() >= 3, "usage: plan_timing RAW_DATASET_DIR OUT_PREPROCESSED_ROOT [THREADS]");
    let raw = PathBuf::from(&args[1]).canonicalize()?;
    let threads: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(2);
    let name = raw.file_name().unwrap().to_string_lossy().into_owned();
    let mut dirs = DatasetDirs::new(&name, raw.parent().unwrap(), &PathBuf::from(&args[2]), &PathBuf::from(&args[2]).join("results"));
    dirs.raw = raw.clone();
    let t = Instant::now();
    verify::verify_dataset(&raw)?.into_result()?;
    let t_verify = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let fp = fingerprint::extract(&raw, threads, false)?;
    let t_fp = t.elapsed().as_secs_f64();
    std::fs::create_dir_all(&dirs.preprocessed)?;
    fp.save(&dirs.fingerprint_file())?;
    let dj = DatasetJson::load(&raw.join("dataset.json"))?;
    let t = Instant::now();
    let plans = planning::plan_2d(&fp, &dj, &name, 8.0)?;
    plans.save(&dirs.plans_file())?;
    let ids: Vec<String> = fingerprint::raw_training_cases(&raw, &dj)?.into_iter().map(|c| c.id).collect();
    splits::load_or_create(&dirs.preprocessed, &raw, &ids)?;
    let t_plan = t.elapsed().as_secs_f64();
    let r = preprocess::preprocess_dataset(&dirs, threads, None, false)?;
    println!(
        "{name}: verify {t_verify:.2} s, fingerprint {t_fp:.2} s, plan+splits {t_plan:.3} s, preprocess {:.2} s ({} cases, {} skipped)",
        r.wall_s, r.n_processed, r.n_skipped
    );
    Ok(())
}
