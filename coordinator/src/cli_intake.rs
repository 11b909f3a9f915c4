//! The intake commands of the `nnunet` CLI: `convert` (a folder of images + masks, or an nnU-Net
//! v1/v2 dataset, into an nnU-Net v2 raw dataset), `verify` (every integrity problem of a raw
//! dataset in one run) and `synth` (the built-in synthetic dataset). The work is done by
//! `nnunet_common::{convert, verify, synthetic}`; this file only parses arguments and prints.
use anyhow::{bail, Context};
use nnunet_common::convert::{convert, ConvertInput, ConvertOptions};
use nnunet_common::{paths, synthetic, verify};
use std::path::{Path, PathBuf};

/// `nnunet convert`: build an nnU-Net v2 dataset (`DatasetNNN_Name/`, pseudo-3D `.nii.gz`).
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  nnunet convert --images imgs/ --masks masks/ --id 501 --name Lesions --labels background,lesion\n  nnunet convert --from nnUNet_raw_data/Task004_Hippocampus --id 504\n\nMasks: 0/255 become 0/1 automatically; other value sets map in sorted order across the whole dataset; --map and --binarize override; --ignore-value V makes V the ignore label (highest label); --regions NAME=L1,L2 (repeatable) sets up region-based training. JPEG masks are refused."
)]
pub struct ConvertArgs {
    /// Folder of images (PNG 8/16-bit, TIFF, BMP, JPEG, NIfTI; gray, RGB or RGBA), one file per case.
    #[arg(long, conflicts_with = "from")]
    pub images: Option<PathBuf>,
    /// Folder of masks (PNG, TIFF, BMP or NIfTI, single channel), matched to images by file stem
    /// (a `_mask`/`_label`/`_seg`/`_gt`/`_lesion` suffix is tolerated).
    #[arg(long, requires = "images")]
    pub masks: Option<PathBuf>,
    /// Optional folder of test images without masks (written to imagesTs/).
    #[arg(long)]
    pub test_images: Option<PathBuf>,
    /// Convert an existing nnU-Net v1 Task folder or v2 Dataset folder (any file ending) instead.
    #[arg(long, value_name = "DIR")]
    pub from: Option<PathBuf>,
    /// Dataset id (1-999); with --from TaskNNN_x/DatasetNNN_x it defaults to NNN.
    #[arg(long)]
    pub id: Option<u32>,
    /// Dataset name (letters, digits, -, _); defaults to the input folder's name.
    #[arg(long)]
    pub name: Option<String>,
    /// Output folder that receives DatasetNNN_Name/ (default: $nnUNet_raw).
    #[arg(long, env = "nnUNet_raw")]
    pub out: Option<PathBuf>,
    /// Label names, background first, e.g. `background,lesion`.
    #[arg(long, value_delimiter = ',')]
    pub labels: Option<Vec<String>>,
    /// Explicit mask value to label pairs, e.g. `--map 255:1` or `--map 0:0,128:1,255:2`.
    #[arg(long = "map", value_delimiter = ',', value_name = "VALUE:LABEL")]
    pub map: Vec<String>,
    /// Map every nonzero mask value to 1 (the `x > 0` transform).
    #[arg(long, conflicts_with = "map")]
    pub binarize: bool,
    /// Mask value of unannotated pixels (sparse/partial annotations): it becomes the ignore label,
    /// one above the highest label (`"ignore"` in dataset.json); the loss and the metrics skip it.
    #[arg(long, value_name = "VALUE")]
    pub ignore_value: Option<f64>,
    /// Region-based training: a region per NAME=LABEL[,LABEL...] (labels as converted, 0..K), e.g.
    /// `--regions whole=1,2 --regions posterior=2`. The regions replace the labels in dataset.json, in
    /// this order; the network predicts one sigmoid per region.
    #[arg(long, value_name = "NAME=LABELS")]
    pub regions: Vec<String>,
    /// The label written where each region is predicted (one per region, later regions over
    /// earlier ones). Default: for nested regions, the one label each region holds that no later
    /// region holds (whole=1,2 posterior=2 gives 1,2).
    #[arg(long, value_delimiter = ',', requires = "regions")]
    pub regions_class_order: Option<Vec<i64>>,
    /// Channel names (e.g. `CT` to get CT normalization), overriding gray / R,G,B / R,G,B,A.
    #[arg(long, value_delimiter = ',')]
    pub channel_names: Option<Vec<String>>,
    /// Replace an existing DatasetNNN_Name folder.
    #[arg(long)]
    pub overwrite: bool,
    /// Worker threads (default: one per core).
    #[arg(long, short = 'j', default_value_t = 0)]
    pub threads: usize,
    /// No progress bar / progress lines.
    #[arg(long)]
    pub quiet: bool,
}

/// `nnunet verify DATASET_DIR`: all integrity checks, every problem reported at once.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// The DatasetNNN_Name folder, a full dataset name, or an id (looked up in $nnUNet_raw).
    pub dataset: String,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `nnunet synth`: write the built-in synthetic dataset (gray PNG images + 3-class masks).
#[derive(clap::Args, Debug)]
pub struct SynthArgs {
    /// Output folder (gets images/, masks/ and README.md).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of cases to generate.
    #[arg(long, default_value_t = 40)]
    pub cases: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Random seed (the same seed gives the same images).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

fn parse_map(items: &[String]) -> anyhow::Result<Vec<(f64, i64)>> {
    items
        .iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            let (v, l) = s.split_once(':').with_context(|| format!("--map {s:?}: expected VALUE:LABEL, e.g. 255:1"))?;
            let v: f64 = v.trim().parse().with_context(|| format!("--map {s:?}: {v:?} is not a number"))?;
            let l: i64 = l.trim().parse().with_context(|| format!("--map {s:?}: {l:?} is not an integer label"))?;
            Ok((v, l))
        })
        .collect()
}

/// `TaskNNN_Name` / `DatasetNNN_Name` -> (NNN, Name).
fn id_and_name_from(dir: &Path) -> (Option<u32>, Option<String>) {
    let base = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    for prefix in ["Task", "Dataset"] {
        if let Some(rest) = base.strip_prefix(prefix) {
            if let Some((id, name)) = rest.split_once('_') {
                if let Ok(id) = id.parse() {
                    return (Some(id), Some(name.to_string()));
                }
            }
        }
    }
    (None, Some(base))
}

fn clean_name(s: &str) -> String {
    nnunet_common::convert::sanitize_case_id(s)
}

pub fn run_convert(a: ConvertArgs) -> anyhow::Result<()> {
    let (input, guess_id, guess_name) = match (&a.from, &a.images, &a.masks) {
        (Some(dir), _, _) => {
            let (id, name) = id_and_name_from(dir);
            (ConvertInput::NnunetFolder(dir.clone()), id, name)
        }
        (None, Some(images), Some(masks)) => {
            let parent = images.canonicalize().ok().and_then(|p| p.parent().map(|q| q.to_path_buf()));
            let name = parent.and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
            (ConvertInput::Folders { images: images.clone(), masks: masks.clone(), test_images: a.test_images.clone() }, None, name)
        }
        (None, Some(_), None) => bail!("--images needs --masks (the folder of masks matched by file stem)"),
        _ => bail!("give --images DIR --masks DIR, or --from an nnU-Net TaskNNN_/DatasetNNN_ folder"),
    };
    let id = a.id.or(guess_id).context("--id is required (1-999), e.g. --id 501")?;
    let name = a.name.clone().or(guess_name.map(|n| clean_name(&n))).context("--name is required")?;
    let out = match a.out.clone() {
        Some(o) => o,
        None => paths::raw_root()?,
    };
    let mut opts = ConvertOptions::new(input, out, id, &name);
    opts.label_names = a.labels.clone();
    opts.map = parse_map(&a.map)?;
    opts.binarize = a.binarize;
    opts.ignore_value = a.ignore_value;
    opts.regions =
        a.regions.iter().map(|r| nnunet_common::convert::regions::parse_region(r)).collect::<Result<_, _>>().map_err(anyhow::Error::msg)?;
    opts.regions_class_order = a.regions_class_order.clone();
    opts.channel_names = a.channel_names.clone();
    opts.overwrite = a.overwrite;
    opts.threads = a.threads;
    opts.progress = !a.quiet;
    let summary = convert(&opts).context("nnunet convert")?;
    println!("{summary}");
    println!("verify: OK ({} case(s)); next: nnunet plan-and-preprocess {}", summary.n_train, summary.dataset_dir.display());
    Ok(())
}

pub fn run_verify(a: VerifyArgs) -> anyhow::Result<()> {
    let dir =
        if Path::new(&a.dataset).is_dir() { PathBuf::from(&a.dataset) } else { paths::resolve_dataset(&paths::raw_root()?, &a.dataset)? };
    let rep = verify::verify_dataset(&dir)?;
    if a.json {
        let j = serde_json::json!({
            "dataset": dir, "cases": rep.n_cases, "test_cases": rep.n_test_cases,
            "problems": rep.problems, "warnings": rep.warnings, "ok": rep.problems.is_empty(),
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        for w in &rep.warnings {
            eprintln!("warning: {w}");
        }
        if rep.problems.is_empty() {
            println!("{}: OK ({} training case(s), {} test case(s))", dir.display(), rep.n_cases, rep.n_test_cases);
        }
    }
    rep.into_result().with_context(|| format!("verify {}", dir.display()))
}

pub fn run_synth(a: SynthArgs) -> anyhow::Result<()> {
    synthetic::generate(&a.out, a.cases, a.size, a.seed)?;
    println!(
        "wrote {} synthetic case(s) of {}x{} to {} (images/, masks/: 0 background, 1 disc, 2 rectangle)",
        a.cases,
        a.size,
        a.size,
        a.out.display()
    );
    Ok(())
}

/// Converts an images folder + masks folder (+ optional test images) into `raw_root/DatasetNNN_name`
/// (replacing an existing one), verifies it, prints the summary and returns the dataset folder.
/// Used by `nnunet run --images --masks` and for the default synthetic dataset.
pub fn convert_images_masks(
    images: &Path,
    masks: &Path,
    test: Option<&Path>,
    raw_root: &Path,
    id: u32,
    name: &str,
    binarize: bool,
) -> anyhow::Result<PathBuf> {
    let input =
        ConvertInput::Folders { images: images.to_path_buf(), masks: masks.to_path_buf(), test_images: test.map(Path::to_path_buf) };
    let mut opts = ConvertOptions::new(input, raw_root.to_path_buf(), id, name);
    opts.binarize = binarize;
    // The built-in synthetic dataset names its classes (see `nnunet synth`).
    let readme = images.parent().map(|p| p.join("README.md")).and_then(|p| std::fs::read_to_string(p).ok());
    if !binarize && readme.is_some_and(|r| r.starts_with("# Synthetic nnunet-rs dataset")) {
        opts.label_names = Some(synthetic::LABEL_NAMES.iter().map(|s| s.to_string()).collect());
    }
    opts.overwrite = true;
    opts.progress = true;
    let s = convert(&opts).with_context(|| format!("converting {} + {}", images.display(), masks.display()))?;
    println!("{s}");
    Ok(s.dataset_dir)
}
