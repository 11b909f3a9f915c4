//! The final validation of one fold from the preprocessed data.
use super::export::{class_values, export_case, write_outputs, CaseOutput};
use super::model::{window_params, Fold};
use super::options::PredictOptions;
use super::sliding_window;
use crate::net::PlainConvUNet;
use anyhow::{bail, Context, Result};
use nnunet_common::case::CaseFiles;
use nnunet_common::dataset_json::DatasetJson;
use nnunet_common::evaluate::{self, Summary};
use nnunet_common::imageio::Geometry;
use nnunet_common::npy;
use nnunet_common::plans::Plans;
use std::path::Path;
use std::time::Instant;
use tch::Tensor;

/// The plans a fold was trained with: the model folder's `plans.json` (copied there at training
/// start, as nnU-Net does), else `<plans>.json` of the preprocessed folder, `<plans>` read from the
/// model folder's name `nnUNetTrainer__<plans>__2d` (`nnUNetPlans` for any other name).
fn plans_of_model(preprocessed_dir: &Path, model_dir: &Path) -> std::path::PathBuf {
    let own = model_dir.join("plans.json");
    if own.is_file() {
        return own;
    }
    let folder = model_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let named = match folder.split("__").collect::<Vec<_>>()[..] {
        [_, p, _] if nnunet_common::paths::check_plans_name(p).is_ok() => p,
        _ => nnunet_common::paths::PLANS_NAME,
    };
    preprocessed_dir.join(format!("{named}.json"))
}

/// The final validation of one fold (`nnUNetTrainer.perform_actual_validation`): predicts the fold's
/// validation cases from the preprocessed data, exports them to `fold_dir/validation/{case}{ending}`
/// (label values, raw geometry) and evaluates them against `gt_segmentations` into
/// `validation/summary.json`.
pub fn validate_fold(preprocessed_dir: &Path, fold: nnunet_common::Fold, fold_dir: &Path, opts: &PredictOptions) -> Result<Summary> {
    let start = Instant::now();
    let model_dir = fold_dir.parent().unwrap_or(fold_dir);
    let plans_path = plans_of_model(preprocessed_dir, model_dir);
    let plans = Plans::load(&plans_path).with_context(|| format!("reading the plans {}", plans_path.display()))?;
    let dj = DatasetJson::load(&preprocessed_dir.join("dataset.json"))
        .with_context(|| format!("reading the dataset.json of {}", preprocessed_dir.display()))?;
    let data_dir = preprocessed_dir.join(nnunet_common::paths::data_identifier());
    let ids =
        nnunet_common::case::list_cases(&data_dir).with_context(|| format!("listing preprocessed cases in {}", data_dir.display()))?;
    let splits = nnunet_common::splits::load(&preprocessed_dir.join("splits_final.json"))?;
    let split = crate::train::setup::fold_split(&splits, &ids, fold);
    let stem = fold_dir.join(&opts.checkpoint_name);
    let (vs, net, meta) = crate::interop::load_network_any(model_dir, fold, &stem, opts.device)
        .with_context(|| format!("loading fold {fold} from {}", stem.display()))?;
    let loaded = vec![Fold { fold, _vs: vs, net, meta }];
    let params = window_params(&loaded, opts)?;
    let config = loaded[0].meta.init_args.configuration.clone();
    let nets: Vec<&PlainConvUNet> = vec![&loaded[0].net];
    let out_dir = fold_dir.join("validation");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let values = class_values(&dj, false);
    let lm =
        nnunet_common::labels::LabelManager::new(&dj).with_context(|| format!("the dataset.json of {}", preprocessed_dir.display()))?;
    let regions = lm.has_regions().then(|| lm.regions_class_order());
    let ending = dj.file_ending.clone();
    let read = |i: usize| -> Result<(Tensor, nnunet_common::case::CaseProperties)> {
        let case = &split.val[i];
        let files = CaseFiles::new(&data_dir, case);
        if !files.is_complete() {
            bail!(
                "validation case {case} of fold {fold} is not preprocessed in {} (missing .npy/.json); run `nnunet preprocess`",
                data_dir.display()
            );
        }
        let props = files.load_props()?;
        let (shape, data) = npy::read_npy::<f32>(&files.data)?;
        if shape.len() != 4 {
            bail!("{}: expected (C, Z, X, Y), found shape {shape:?}", files.data.display());
        }
        Ok((Tensor::from_slice(&data).reshape(shape.iter().map(|&s| s as i64).collect::<Vec<_>>()), props))
    };
    let write = |i: usize, props: nnunet_common::case::CaseProperties, logits: Tensor| -> Result<()> {
        let exported = export_case(&logits, &props, &plans, &config, opts.save_probabilities, regions)?;
        let geometry = props.raw_geometry.clone().unwrap_or_else(|| Geometry {
            spacing: [999.0, 1.0, 1.0],
            affine: None,
            format: ending.trim_start_matches('.').to_string(),
        });
        let o = CaseOutput {
            case: &split.val[i],
            exported: &exported,
            geometry: &geometry,
            ending: &ending,
            values: &values,
            pp_steps: &[],
            save_probabilities: opts.save_probabilities,
        };
        write_outputs(&out_dir, &o).map(|_| ())
    };
    let net = |x: &Tensor| sliding_window::predict_case_logits(&nets, x, &params);
    super::pipeline::run(split.val.len(), "validating", |i| split.val[i].clone(), read, net, write)?;
    let gt = evaluate::default_gt_dir(preprocessed_dir);
    let summary = evaluate::evaluate_folders(&gt, &out_dir, &lm.evaluation_targets(), &ending, lm.ignore_label())
        .with_context(|| format!("evaluating fold {fold} validation against {}", gt.display()))?;
    eprintln!(
        "fold {fold}: mean validation Dice {:.4} ({} cases, {:.1} s)",
        summary.foreground_mean.dice,
        split.val.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(summary)
}
