//! Inference: from trained folds to masks a user can open (nnU-Net v2
//! `inference/predict_from_raw_data.py`, `export_prediction.py`, and the trainer's
//! `perform_actual_validation`).
//!
//! - [`predict_folder`]: a folder of raw images in the user's own format (PNG/TIFF/JPEG/BMP/NIfTI,
//!   gray or RGB, one file per case, no `_0000` needed) or an nnU-Net `imagesTs` folder
//!   (`{case}_{XXXX}{ending}` channel files) -> masks in the input's format with the user's original
//!   label values (`dataset.json` `nnunetrs_label_mapping`), optionally `.npz` probabilities, with
//!   the postprocessing chosen on the cross-validation applied when the model folder has one.
//! - [`validate_fold`]: the final validation of one fold from the preprocessed data, evaluated
//!   against `gt_segmentations` into `validation/summary.json`.
//!
//! Per case: preprocess exactly as training did ([`nnunet_common::preprocess::preprocess_case`]),
//! [`sliding_window::predict_case_logits`] (all folds, logits averaged), then [`export_case`]:
//! resample the logits back to the cropped shape (order 1), argmax (softmax for probabilities),
//! paste into the uncropped shape (probabilities: background 1 outside the crop), undo the
//! transpose. Every file is written atomically: an interrupted run leaves no partial mask.
pub mod sliding_window;

use crate::net::PlainConvUNet;
use crate::train::checkpoint::{self, CheckpointMeta};
use anyhow::{bail, Context, Result};
use nnunet_common::case::{CaseFiles, CaseProperties};
use nnunet_common::dataset_json::DatasetJson;
use nnunet_common::ensemble::{argmax_channels, ProbabilitiesSidecar};
use nnunet_common::evaluate::{self, Summary};
use nnunet_common::imageio::{self, Geometry, ImageData};
use nnunet_common::plans::{Configuration2d, Plans};
use nnunet_common::postprocess::{self, KeepLargest};
use nnunet_common::{npy, preprocess};
use sliding_window::WindowParams;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// How to predict.
#[derive(Debug, Clone)]
pub struct PredictOptions {
    /// Test-time mirroring over the checkpoint's allowed axes (4 passes in 2D).
    pub use_mirroring: bool,
    /// Tile step as a fraction of the patch (nnU-Net default 0.5).
    pub step_size: f64,
    /// Also write `{case}.npz` (`probabilities`, float32 (K, Z, X, Y)) and its `{case}.json` sidecar.
    pub save_probabilities: bool,
    pub device: Device,
    /// Checkpoint stem inside each fold folder, e.g. `checkpoint_final`.
    pub checkpoint_name: String,
}

impl Default for PredictOptions {
    fn default() -> Self {
        PredictOptions {
            use_mirroring: true,
            step_size: 0.5,
            save_probabilities: false,
            device: Device::Cpu,
            checkpoint_name: "checkpoint_final".into(),
        }
    }
}

/// What [`predict_folder`] did.
#[derive(Debug, Clone)]
pub struct PredictReport {
    pub folds: Vec<usize>,
    /// Case ids in the order they were predicted.
    pub cases: Vec<String>,
    /// Mask files written.
    pub outputs: Vec<PathBuf>,
    /// Postprocessing steps applied (empty when the model has no `postprocessing.json`).
    pub postprocessing: Vec<String>,
    /// Wall time of the whole call, model loading included.
    pub seconds: f64,
}

/// One loaded fold.
struct Fold {
    fold: usize,
    _vs: tch::nn::VarStore,
    net: PlainConvUNet,
    meta: CheckpointMeta,
}

/// Loads `model_dir/fold_k/{checkpoint}` for every requested fold, with clear errors for a missing
/// fold (listing the folds that exist) and for a checkpoint whose hash does not match.
fn load_folds(model_dir: &Path, folds: &[usize], opts: &PredictOptions) -> Result<Vec<Fold>> {
    if folds.is_empty() {
        bail!("no folds given; pass e.g. --folds 0 1 2 3 4");
    }
    let available = |name: &str| -> Vec<usize> {
        let mut v: Vec<usize> = std::fs::read_dir(model_dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().to_string_lossy().strip_prefix("fold_").and_then(|f| f.parse().ok()))
                    .filter(|f: &usize| model_dir.join(format!("fold_{f}")).join(format!("{name}.safetensors")).is_file())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let mut out = Vec::new();
    for &f in folds {
        let stem = model_dir.join(format!("fold_{f}")).join(&opts.checkpoint_name);
        let (weights, sidecar) = checkpoint::checkpoint_paths(&stem);
        if !weights.is_file() || !sidecar.is_file() {
            let have = available(&opts.checkpoint_name);
            bail!(
                "fold {f} is missing from model folder {}: {} {} not found; folds with a {} there: {}; train the fold or pass only those with --folds",
                model_dir.display(),
                if weights.is_file() { sidecar.display() } else { weights.display() },
                if weights.is_file() { "(checkpoint sidecar)" } else { "(checkpoint weights)" },
                opts.checkpoint_name,
                if have.is_empty() { "none".to_string() } else { have.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(" ") }
            );
        }
        let (vs, net, meta) =
            checkpoint::load_network(&stem, opts.device).with_context(|| format!("loading fold {f} from {}", stem.display()))?;
        out.push(Fold { fold: f, _vs: vs, net, meta });
    }
    let first = &out[0].meta.init_args;
    for f in &out[1..] {
        let a = &f.meta.init_args;
        if a.configuration.patch_size != first.configuration.patch_size
            || a.num_classes != first.num_classes
            || a.num_input_channels != first.num_input_channels
        {
            bail!(
                "fold {} does not match fold {} (patch {:?} vs {:?}, classes {} vs {}, channels {} vs {}); all folds must come from the same plans",
                f.fold,
                out[0].fold,
                a.configuration.patch_size,
                first.configuration.patch_size,
                a.num_classes,
                first.num_classes,
                a.num_input_channels,
                first.num_input_channels
            );
        }
    }
    Ok(out)
}

fn window_params(folds: &[Fold], opts: &PredictOptions) -> Result<WindowParams> {
    let a = &folds[0].meta.init_args;
    let patch = match a.configuration.patch_size.as_slice() {
        [x, y] => [*x, *y],
        other => bail!("patch size {other:?} is not 2D; only the 2d configuration is supported"),
    };
    if !(opts.step_size > 0.0 && opts.step_size <= 1.0) {
        bail!("--step-size {} must be in (0, 1]", opts.step_size);
    }
    let mirror = if opts.use_mirroring { a.inference_allowed_mirroring_axes.clone() } else { vec![] };
    Ok(WindowParams::new(patch, opts.step_size, mirror, opts.device))
}

/// Result of [`export_case`]: arrays in the raw file's orientation.
pub struct Exported {
    /// Class index per voxel, (Z, X, Y) of the raw image.
    pub classes: Vec<u16>,
    pub shape: [usize; 3],
    /// Softmax probabilities (K, Z, X, Y), background 1 outside the crop, when asked for.
    pub probabilities: Option<Vec<f32>>,
}

/// nnU-Net's `convert_predicted_logits_to_segmentation_with_correct_shape`: logits (K, Z, X, Y) in
/// the preprocessed geometry -> class map (and probabilities) in the raw image's geometry.
pub fn export_case(
    logits: &Tensor,
    props: &CaseProperties,
    plans: &Plans,
    config: &Configuration2d,
    with_probabilities: bool,
) -> Result<Exported> {
    let size: Vec<usize> = logits.size().iter().map(|&s| s as usize).collect();
    let k = size[0];
    let mut shape = [size[0], size[1], size[2], size[3]];
    let mut data: Vec<f32> = Vec::<f32>::try_from(logits.to_kind(Kind::Float).contiguous().flatten(0, -1))?;
    // Resample to the shape after cropping (a no-op for natural images, whose spacing is kept).
    let sa = &props.shape_after_cropping_and_before_resampling;
    let target = [sa[0], sa[1], sa[2]];
    if target != [shape[1], shape[2], shape[3]] {
        let mut current = vec![props.spacing[0]];
        current.extend_from_slice(&config.spacing);
        data = preprocess::resample_data_to_shape(
            &data,
            shape,
            target,
            &current,
            &props.spacing,
            config.resampling_fn_probabilities_kwargs.order,
            false,
        );
        shape = [k, target[0], target[1], target[2]];
    }
    let n = shape[1] * shape[2] * shape[3];
    let probabilities = if with_probabilities {
        // softmax over classes, per voxel, in f32
        let mut p = data.clone();
        for i in 0..n {
            let m = (0..k).map(|c| p[c * n + i]).fold(f32::NEG_INFINITY, f32::max);
            let mut s = 0.0f32;
            for c in 0..k {
                let e = (p[c * n + i] - m).exp();
                p[c * n + i] = e;
                s += e;
            }
            for c in 0..k {
                p[c * n + i] /= s;
            }
        }
        Some(p)
    } else {
        None
    };
    let classes = argmax_channels(k, probabilities.as_deref().unwrap_or(&data));
    let classes_f: Vec<f32> = classes.iter().map(|&c| c as f32).collect();
    let (full, full_shape) = preprocess::revert_cropping(&classes_f, [1, shape[1], shape[2], shape[3]], props, &[0.0])?;
    let (full, full_shape) = preprocess::transpose_spatial(&full, full_shape, &plans.transpose_backward);
    let probabilities = match probabilities {
        Some(p) => {
            let mut fill = vec![0.0f32; k];
            fill[0] = 1.0;
            let (pf, ps) = preprocess::revert_cropping(&p, shape, props, &fill)?;
            Some(preprocess::transpose_spatial(&pf, ps, &plans.transpose_backward).0)
        }
        None => None,
    };
    Ok(Exported { classes: full.iter().map(|&c| c as u16).collect(), shape: [full_shape[1], full_shape[2], full_shape[3]], probabilities })
}

/// Label value written for each class index: the dataset's label values (consecutive 0..K-1), mapped
/// to the user's original mask values when `nnunetrs_label_mapping` is present.
pub fn class_values(dj: &DatasetJson, original: bool) -> Vec<f64> {
    let labels = dj.label_values();
    labels
        .iter()
        .map(|&l| {
            if original {
                if let Some(v) = dj.nnunetrs_label_mapping.as_ref().and_then(|m| m.label_to_original.get(&l.to_string())) {
                    return *v;
                }
            }
            l as f64
        })
        .collect()
}

fn values_to_u16(classes: &[u16], values: &[f64], what: &Path) -> Result<Vec<u16>> {
    classes
        .iter()
        .map(|&c| {
            let v = values.get(c as usize).copied().unwrap_or(c as f64);
            if !(0.0..=65535.0).contains(&v) || v.fract() != 0.0 {
                bail!("{}: label value {v} cannot be written to a mask file (must be an integer 0..=65535)", what.display());
            }
            Ok(v as u16)
        })
        .collect()
}

/// Mask file ending for an input format: the same format, except lossy JPEG, which becomes PNG.
fn mask_ending(format: &str) -> &'static str {
    match format {
        "nii.gz" => ".nii.gz",
        "nii" => ".nii",
        "tif" => ".tif",
        "bmp" => ".bmp",
        _ => ".png",
    }
}

/// Writes one case's outputs: the mask (atomic), and optionally probabilities + sidecar.
#[allow(clippy::too_many_arguments)]
fn write_outputs(
    out_dir: &Path,
    case: &str,
    exported: &Exported,
    geometry: &Geometry,
    ending: &str,
    values: &[f64],
    pp_steps: &[KeepLargest],
    save_probabilities: bool,
) -> Result<PathBuf> {
    let mask = out_dir.join(format!("{case}{ending}"));
    let mut classes = exported.classes.clone();
    if !pp_steps.is_empty() {
        // Postprocessing works on label values (= class indices); the user's values come after.
        let mut seg: Vec<i32> = classes.iter().map(|&c| c as i32).collect();
        postprocess::apply_steps(&mut seg, exported.shape, pp_steps);
        classes = seg.iter().map(|&c| c as u16).collect();
    }
    let labels = values_to_u16(&classes, values, &mask)?;
    postprocess::write_labels(&mask, exported.shape, &labels, geometry).with_context(|| format!("writing {}", mask.display()))?;
    if save_probabilities {
        if let Some(p) = &exported.probabilities {
            let npz = out_dir.join(format!("{case}.npz"));
            let k = values.len();
            let shape = [k, exported.shape[0], exported.shape[1], exported.shape[2]];
            npy::write_npz_f32(&npz, &[("probabilities", &shape, p)])?;
            let sidecar =
                ProbabilitiesSidecar { geometry: geometry.clone(), mask_ending: ending.to_string(), class_values: values.to_vec() };
            nnunet_common::error::write_json(&ProbabilitiesSidecar::path_for(&npz), &sidecar)?;
        }
    }
    Ok(mask)
}

/// One input case: its id and its channel files (in channel order).
#[derive(Debug, Clone, PartialEq)]
pub struct InputCase {
    pub case: String,
    pub files: Vec<PathBuf>,
}

/// Finds the cases of an input folder. If every image file is named `{case}_{XXXX}{ending}` and
/// each case has channel files 0000..N-1, that is an nnU-Net folder; otherwise every file is one
/// case (a user's own images, whose file may hold all channels, e.g. one RGB PNG).
pub fn discover_cases(input: &Path) -> Result<Vec<InputCase>> {
    let rd = std::fs::read_dir(input).with_context(|| format!("reading input folder {}", input.display()))?;
    let mut files: Vec<(String, PathBuf)> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(n, p)| !n.starts_with('.') && imageio::detect_format(p).is_some())
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no images in {} (looked for .png .tif .tiff .jpg .jpeg .bmp .nii .nii.gz)", input.display());
    }
    // Try the nnU-Net naming.
    let mut groups: std::collections::BTreeMap<String, Vec<(usize, PathBuf)>> = Default::default();
    let mut all_match = true;
    for (name, path) in &files {
        let stem = imageio::strip_image_ending(name).unwrap_or(name);
        let parsed = stem.rsplit_once('_').and_then(|(c, idx)| {
            (idx.len() == 4 && idx.bytes().all(|b| b.is_ascii_digit())).then(|| (c.to_string(), idx.parse::<usize>().unwrap()))
        });
        match parsed {
            Some((c, i)) => groups.entry(c).or_default().push((i, path.clone())),
            None => {
                all_match = false;
                break;
            }
        }
    }
    if all_match && groups.values().all(|g| g.iter().enumerate().all(|(k, (i, _))| *i == k)) {
        let n0 = groups.values().next().map(|g| g.len()).unwrap_or(0);
        if groups.values().all(|g| g.len() == n0) {
            return Ok(groups.into_iter().map(|(case, g)| InputCase { case, files: g.into_iter().map(|(_, p)| p).collect() }).collect());
        }
    }
    Ok(files
        .into_iter()
        .map(|(name, path)| InputCase { case: imageio::strip_image_ending(&name).unwrap_or(&name).to_string(), files: vec![path] })
        .collect())
}

fn load_model_files(model_dir: &Path) -> Result<(Plans, DatasetJson)> {
    let plans_path = model_dir.join("plans.json");
    let plans =
        Plans::load(&plans_path).with_context(|| format!("{} is not a model folder: reading its plans.json", model_dir.display()))?;
    let dj_path = model_dir.join("dataset.json");
    let dj =
        DatasetJson::load(&dj_path).with_context(|| format!("{} is not a model folder: reading its dataset.json", model_dir.display()))?;
    Ok((plans, dj))
}

/// Progress lines on stderr: one per case, with the running rate.
fn report_progress(i: usize, n: usize, case: &str, start: Instant) {
    let el = start.elapsed().as_secs_f64();
    eprintln!("[{}/{}] {case} ({:.2} s/case)", i + 1, n, el / (i + 1) as f64);
}

/// Predicts a folder of raw images with the given folds of `model_dir`
/// (`nnUNet_results/<ds>/nnUNetTrainer__nnUNetPlans__2d`), writing masks to `output` in the input's
/// format with the user's original label values. Applies `model_dir/postprocessing.json` when
/// present (written by the cross-validation summary).
pub fn predict_folder(model_dir: &Path, folds: &[usize], input: &Path, output: &Path, opts: &PredictOptions) -> Result<PredictReport> {
    predict_folder_with(model_dir, folds, input, output, opts, true)
}

/// [`predict_folder`] with postprocessing optional.
pub fn predict_folder_with(
    model_dir: &Path,
    folds: &[usize],
    input: &Path,
    output: &Path,
    opts: &PredictOptions,
    apply_postprocessing: bool,
) -> Result<PredictReport> {
    let start = Instant::now();
    let (plans, dj) = load_model_files(model_dir)?;
    let cases = discover_cases(input)?;
    let loaded = load_folds(model_dir, folds, opts)?;
    let params = window_params(&loaded, opts)?;
    let config = loaded[0].meta.init_args.configuration.clone();
    let n_channels = loaded[0].meta.init_args.num_input_channels as usize;
    let pp_file = model_dir.join("postprocessing.json");
    let pp_steps = if apply_postprocessing && pp_file.is_file() {
        postprocess::load_postprocessing(&pp_file).with_context(|| format!("reading {}", pp_file.display()))?
    } else {
        vec![]
    };
    let values = class_values(&dj, true);
    let nets: Vec<&PlainConvUNet> = loaded.iter().map(|f| &f.net).collect();
    std::fs::create_dir_all(output).with_context(|| format!("creating output folder {}", output.display()))?;
    let channel_names = dj.channel_names_ordered();
    let mut report = PredictReport {
        folds: folds.to_vec(),
        cases: vec![],
        outputs: vec![],
        postprocessing: pp_steps.iter().map(|s| s.describe()).collect(),
        seconds: 0.0,
    };
    for (i, c) in cases.iter().enumerate() {
        let image: ImageData = imageio::read_case_images(&c.files).with_context(|| format!("reading case {}", c.case))?;
        if image.shape[0] != n_channels {
            bail!(
                "{}: image has {} channel(s) but the model was trained on {} ({}); give {} (e.g. {}), or nnU-Net channel files {}_0000..{}_{:04}",
                c.files[0].display(),
                image.shape[0],
                n_channels,
                channel_names.join(", "),
                if n_channels == 1 { "a grayscale image" } else if n_channels == 3 { "an RGB image" } else { "one file per channel" },
                if n_channels == 3 { "convert RGBA/gray to RGB" } else if n_channels == 1 { "convert RGB to gray" } else { "matching files" },
                c.case,
                c.case,
                n_channels.saturating_sub(1)
            );
        }
        let geometry = image.geometry.clone();
        let (data, shape, _seg, props) =
            preprocess::preprocess_case(&plans, &config, &dj, image, None).with_context(|| format!("preprocessing case {}", c.case))?;
        let x = Tensor::from_slice(&data).reshape([shape[0] as i64, shape[1] as i64, shape[2] as i64, shape[3] as i64]);
        let logits = sliding_window::predict_case_logits(&nets, &x, &params);
        let exported = export_case(&logits, &props, &plans, &config, opts.save_probabilities)?;
        let ending = mask_ending(&geometry.format);
        let mask = write_outputs(output, &c.case, &exported, &geometry, ending, &values, &pp_steps, opts.save_probabilities)?;
        report.cases.push(c.case.clone());
        report.outputs.push(mask);
        report_progress(i, cases.len(), &c.case, start);
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// The final validation of one fold (`nnUNetTrainer.perform_actual_validation`): predicts the fold's
/// validation cases from the preprocessed data, exports them to `fold_dir/validation/{case}{ending}`
/// (label values, raw geometry) and evaluates them against `gt_segmentations` into
/// `validation/summary.json`.
pub fn validate_fold(preprocessed_dir: &Path, fold: usize, fold_dir: &Path, opts: &PredictOptions) -> Result<Summary> {
    let start = Instant::now();
    let plans = Plans::load(&preprocessed_dir.join("nnUNetPlans.json"))
        .with_context(|| format!("reading the plans of {}", preprocessed_dir.display()))?;
    let dj = DatasetJson::load(&preprocessed_dir.join("dataset.json"))
        .with_context(|| format!("reading the dataset.json of {}", preprocessed_dir.display()))?;
    let data_dir = preprocessed_dir.join(nnunet_common::paths::data_identifier());
    let ids =
        nnunet_common::case::list_cases(&data_dir).with_context(|| format!("listing preprocessed cases in {}", data_dir.display()))?;
    let splits = nnunet_common::splits::load(&preprocessed_dir.join("splits_final.json"))?;
    let split = nnunet_common::splits::split_for_fold(&splits, &ids, fold);
    let stem = fold_dir.join(&opts.checkpoint_name);
    let (vs, net, meta) =
        checkpoint::load_network(&stem, opts.device).with_context(|| format!("loading fold {fold} from {}", stem.display()))?;
    let loaded = vec![Fold { fold, _vs: vs, net, meta }];
    let params = window_params(&loaded, opts)?;
    let config = loaded[0].meta.init_args.configuration.clone();
    let nets: Vec<&PlainConvUNet> = vec![&loaded[0].net];
    let out_dir = fold_dir.join("validation");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let values = class_values(&dj, false);
    let ending = dj.file_ending.clone();
    for (i, case) in split.val.iter().enumerate() {
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
        let x = Tensor::from_slice(&data).reshape(shape.iter().map(|&s| s as i64).collect::<Vec<_>>());
        let logits = sliding_window::predict_case_logits(&nets, &x, &params);
        let exported = export_case(&logits, &props, &plans, &config, opts.save_probabilities)?;
        let geometry = props.raw_geometry.clone().unwrap_or_else(|| Geometry {
            spacing: [999.0, 1.0, 1.0],
            affine: None,
            format: ending.trim_start_matches('.').to_string(),
        });
        write_outputs(&out_dir, case, &exported, &geometry, &ending, &values, &[], opts.save_probabilities)?;
        report_progress(i, split.val.len(), case, start);
    }
    let gt = evaluate::default_gt_dir(preprocessed_dir);
    let summary = evaluate::evaluate_folders(&gt, &out_dir, &dj.foreground_labels(), &ending, dj.ignore_label())
        .with_context(|| format!("evaluating fold {fold} validation against {}", gt.display()))?;
    eprintln!(
        "fold {fold}: mean validation Dice {:.4} ({} cases, {:.1} s)",
        summary.foreground_mean.dice,
        split.val.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(summary)
}
