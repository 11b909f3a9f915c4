//! Predicting a folder of raw images ([`predict_folder`]).
//!
//! Nothing half-written: every input is read and checked (readable, the model's channel count)
//! before anything is created; the outputs are written into a hidden staging folder next to the
//! output folder and moved into place only when every case succeeded. On failure the staging folder
//! goes, and so does anything this call created (the output folder, missing parent folders, files it
//! moved); files that were there before are left alone.
use super::export::{class_values, export_case, mask_ending, write_outputs, CaseOutput};
use super::model::{load_folds, window_params};
use super::options::{PredictOptions, PredictReport};
use super::sliding_window;
use crate::net::PlainConvUNet;
use anyhow::{bail, Context, Result};
use nnunet_common::dataset_json::DatasetJson;
use nnunet_common::imageio::{self, ImageData};
use nnunet_common::labels::LabelManager;
use nnunet_common::plans::Plans;
use nnunet_common::{postprocess, preprocess, Fold};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Tensor;

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

/// Predicts a folder of raw images with the given folds of `model_dir`
/// (`nnUNet_results/<ds>/nnUNetTrainer__nnUNetPlans__2d`), writing masks to `output` in the input's
/// format with the user's original label values. Applies `model_dir/postprocessing.json` when
/// present (written by the cross-validation summary).
pub fn predict_folder(model_dir: &Path, folds: &[Fold], input: &Path, output: &Path, opts: &PredictOptions) -> Result<PredictReport> {
    predict_folder_with(model_dir, folds, input, output, opts, true)
}

/// Reads one case's images and checks the channel count the model was trained on.
fn read_case(c: &InputCase, n_channels: usize, channel_names: &[String]) -> Result<ImageData> {
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
    Ok(image)
}

/// Creates `dir` and its missing parents; returns the topmost folder it created (to remove on failure).
fn create_dir_tracked(dir: &Path) -> Result<Option<PathBuf>> {
    let mut top = None;
    let mut p = dir;
    while !p.exists() {
        top = Some(p.to_path_buf());
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => p = parent,
            _ => break,
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(top)
}

/// Where outputs are staged, and what to undo if the call fails.
struct Staging {
    stage: PathBuf,
    /// The topmost folder created for the staging folder's parent, if any.
    created_parent: Option<PathBuf>,
    /// The output folder, when this call created it.
    created_output: Option<PathBuf>,
    /// Files moved into the output folder so far.
    moved: Vec<PathBuf>,
    done: bool,
}

impl Staging {
    fn new(output: &Path) -> Result<Staging> {
        let parent = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let created_parent = create_dir_tracked(parent)?;
        let name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "output".into());
        let stage = parent.join(format!(".{name}.partial-{}", std::process::id()));
        if stage.exists() {
            std::fs::remove_dir_all(&stage).with_context(|| format!("removing a stale {}", stage.display()))?;
        }
        std::fs::create_dir(&stage).with_context(|| format!("creating {}", stage.display()))?;
        Ok(Staging { stage, created_parent, created_output: None, moved: vec![], done: false })
    }

    /// Moves every staged file into `output` (created if missing).
    fn commit(&mut self, output: &Path) -> Result<()> {
        if !output.exists() {
            std::fs::create_dir(output).with_context(|| format!("creating output folder {}", output.display()))?;
            self.created_output = Some(output.to_path_buf());
        }
        let mut staged: Vec<PathBuf> = std::fs::read_dir(&self.stage)?.map(|e| e.map(|e| e.path())).collect::<std::io::Result<_>>()?;
        staged.sort();
        for f in staged {
            let dest = output.join(f.file_name().unwrap_or_default());
            let existed = dest.exists();
            std::fs::rename(&f, &dest).with_context(|| format!("moving {} into {}", f.display(), output.display()))?;
            if !existed {
                self.moved.push(dest);
            }
        }
        self.done = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let warn = |p: &Path, e: std::io::Error| tracing::warn!("could not remove {}: {e}", p.display());
        if let Err(e) = std::fs::remove_dir_all(&self.stage) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn(&self.stage, e);
            }
        }
        if self.done {
            return;
        }
        for f in &self.moved {
            if let Err(e) = std::fs::remove_file(f) {
                warn(f, e);
            }
        }
        for d in [&self.created_output, &self.created_parent].into_iter().flatten() {
            if let Err(e) = std::fs::remove_dir_all(d) {
                warn(d, e);
            }
        }
    }
}

/// [`predict_folder`] with postprocessing optional.
pub fn predict_folder_with(
    model_dir: &Path,
    folds: &[Fold],
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
    let channel_names = dj.channel_names_ordered();
    // Every input checked before anything is written.
    for c in &cases {
        read_case(c, n_channels, &channel_names)?;
    }
    let values = class_values(&dj, true);
    let lm = LabelManager::new(&dj).with_context(|| format!("the dataset.json of model folder {}", model_dir.display()))?;
    let heads = loaded[0].meta.init_args.num_classes as usize;
    if heads != lm.num_segmentation_heads() {
        bail!(
            "the model's network has {heads} outputs but its dataset.json declares {} {}; the checkpoint and dataset.json do not belong together",
            lm.num_segmentation_heads(),
            if lm.has_regions() { "regions" } else { "labels (background included)" }
        );
    }
    let regions = lm.has_regions().then(|| lm.regions_class_order());
    let nets: Vec<&PlainConvUNet> = loaded.iter().map(|f| &f.net).collect();
    let mut staging = Staging::new(output)?;
    let mut report = PredictReport {
        folds: folds.to_vec(),
        cases: vec![],
        outputs: vec![],
        postprocessing: pp_steps.iter().map(|s| s.describe()).collect(),
        seconds: 0.0,
    };
    let ctx = CaseCtx { plans: &plans, config: &config, dj: &dj, n_channels, channel_names: &channel_names };
    let out = OutCtx { plans: &plans, config: &config, values: &values, regions, pp_steps: &pp_steps, opts, stage: &staging.stage };
    let masks = predict_pipelined(&cases, &ctx, &out, |x| sliding_window::predict_case_logits(&nets, x, &params))?;
    for (c, mask) in cases.iter().zip(masks) {
        report.cases.push(c.case.clone());
        report.outputs.push(output.join(mask.file_name().unwrap_or_default()));
    }
    staging.commit(output)?;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// What reading a case needs.
struct CaseCtx<'a> {
    plans: &'a Plans,
    config: &'a nnunet_common::plans::Configuration2d,
    dj: &'a DatasetJson,
    n_channels: usize,
    channel_names: &'a [String],
}

/// What writing a case needs.
struct OutCtx<'a> {
    plans: &'a Plans,
    config: &'a nnunet_common::plans::Configuration2d,
    values: &'a [f64],
    /// `regions_class_order` with regions (sigmoid outputs).
    regions: Option<&'a [i64]>,
    pp_steps: &'a [postprocess::KeepLargest],
    opts: &'a PredictOptions,
    stage: &'a Path,
}

/// Reads and preprocesses case `c` into the network's input and what exporting it needs.
fn prepare(ctx: &CaseCtx, c: &InputCase) -> Result<(Tensor, (nnunet_common::case::CaseProperties, imageio::Geometry))> {
    let image = read_case(c, ctx.n_channels, ctx.channel_names)?;
    let geometry = image.geometry.clone();
    let (data, shape, _seg, props) = preprocess::preprocess_case(ctx.plans, ctx.config, ctx.dj, image, None)
        .with_context(|| format!("preprocessing case {}", c.case))?;
    let data = Tensor::from_slice(&data).reshape([shape[0] as i64, shape[1] as i64, shape[2] as i64, shape[3] as i64]);
    Ok((data, (props, geometry)))
}

/// Every case through [`super::pipeline::run`]: reading, the network and writing overlap. Returns the
/// written mask paths in case order.
fn predict_pipelined(cases: &[InputCase], ctx: &CaseCtx, out: &OutCtx, net: impl Fn(&Tensor) -> Tensor) -> Result<Vec<PathBuf>> {
    let write = |i: usize, (props, geometry): (nnunet_common::case::CaseProperties, imageio::Geometry), logits: Tensor| {
        let exported = export_case(&logits, &props, out.plans, out.config, out.opts.save_probabilities, out.regions)?;
        let o = CaseOutput {
            case: &cases[i].case,
            exported: &exported,
            geometry: &geometry,
            ending: mask_ending(&geometry.format),
            values: out.values,
            pp_steps: out.pp_steps,
            save_probabilities: out.opts.save_probabilities,
        };
        write_outputs(out.stage, &o)
    };
    super::pipeline::run(cases.len(), "predicting", |i| cases[i].case.clone(), |i| prepare(ctx, &cases[i]), net, write)
}
