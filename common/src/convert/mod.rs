//! `nnunet convert`: turns a folder of 2D images and a folder of masks (matched by file stem), an
//! nnU-Net v1 `TaskXXX_Name` folder, or an nnU-Net v2 `DatasetXXX_Name` folder in any format into
//! an nnU-Net v2 raw dataset in the `.nii.gz` form (nnU-Net v2's `documentation/dataset_format.md`),
//! then verifies what it wrote.
//!
//! - 2D images become pseudo-3D NIfTI of numpy shape (1, H, W) with spacing (999, 1, 1), exactly
//!   as nnU-Net's `convert_2d_image_to_nifti` writes them; every channel goes to its own file, so
//!   an RGB image becomes `_0000/_0001/_0002` named R, G, B (RGBA adds A). Each file uses the
//!   smallest datatype that holds its values exactly (uint8 for 8-bit PNG, as nnU-Net v1's
//!   conversion keeps the source dtype; float32 for float data).
//! - Mask values are mapped to consecutive labels 0..K with ONE mapping for the whole dataset
//!   (0/255 becomes 0/1, {0, 128, 255} becomes {0, 1, 2}); `--map`, `--binarize` and `--labels`
//!   change it. The mapping is saved in `dataset.json` (`nnunetrs_label_mapping`) so predictions
//!   can be written back in the user's values.
//! - The output is written to a hidden sibling folder and renamed into place at the end, so a
//!   failed conversion never leaves a half-written dataset under the final name. The same input
//!   always gives byte-identical output, however many threads run.
//!
//! - [`sources`]: reading the input folders into cases.
//! - [`mapping`]: the mask value -> label mapping, label and channel names.
//! - [`write`]: writing one case.
//! - [`summary`]: what a conversion did.
mod mapping;
pub mod regions;
mod sources;
pub mod summary;
mod write;

pub use sources::sanitize_case_id;
pub use summary::{ConvertSummary, LabelCount};

use crate::dataset_json::{DatasetJson, LabelMapping, LabelValue, SourceInfo};
use crate::imageio;
use crate::parallel::Progress;
use crate::{paths, verify, Error, Result};
use mapping::{decide_mapping, default_channel_names, value_key};
use rayon::prelude::*;
use sources::{CaseSrc, Declared};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;
use write::CaseOut;

/// Where the cases come from.
#[derive(Debug, Clone)]
pub enum ConvertInput {
    /// A folder of images and a folder of masks matched by file stem, and optionally a folder of
    /// test images (no masks).
    Folders { images: PathBuf, masks: PathBuf, test_images: Option<PathBuf> },
    /// An existing nnU-Net v1 Task folder or v2 Dataset folder (detected from its dataset.json).
    NnunetFolder(PathBuf),
}

#[derive(Debug, Clone)]
pub struct ConvertOptions {
    pub input: ConvertInput,
    /// Folder that receives `DatasetNNN_Name/` (usually `$nnUNet_raw`).
    pub out_root: PathBuf,
    pub id: u32,
    pub name: String,
    /// Label names, background first; their count must equal the number of labels.
    pub label_names: Option<Vec<String>>,
    /// Explicit original value -> label pairs; every value present in the masks must be listed
    /// (0 defaults to 0).
    pub map: Vec<(f64, i64)>,
    /// Every nonzero mask value becomes 1.
    pub binarize: bool,
    /// This mask value marks unannotated pixels: it becomes the ignore label (the highest label,
    /// `"ignore"` in dataset.json; nnU-Net's `documentation/ignore_label.md`), the other values
    /// are mapped as usual.
    pub ignore_value: Option<f64>,
    /// Region-based training: `(name, labels)` per region, in output order ([`regions`]).
    pub regions: Vec<(String, Vec<i64>)>,
    /// `regions_class_order` (one label per region); derived from nested regions when `None`.
    pub regions_class_order: Option<Vec<i64>>,
    /// Channel names, overriding the defaults (gray / R,G,B / R,G,B,A / dataset.json's).
    pub channel_names: Option<Vec<String>>,
    /// Replace an existing output dataset folder.
    pub overwrite: bool,
    /// Worker threads (0 = rayon's default, one per core).
    pub threads: usize,
    /// Show a progress bar on a terminal / log lines otherwise.
    pub progress: bool,
}

impl ConvertOptions {
    pub fn new(input: ConvertInput, out_root: PathBuf, id: u32, name: &str) -> Self {
        ConvertOptions {
            input,
            out_root,
            id,
            name: name.to_string(),
            label_names: None,
            map: Vec::new(),
            binarize: false,
            ignore_value: None,
            regions: Vec::new(),
            regions_class_order: None,
            channel_names: None,
            overwrite: false,
            threads: 0,
            progress: false,
        }
    }
}

fn problems_error(what: &str, problems: Vec<String>) -> Error {
    Error::Invalid(format!(
        "{what}: {} problem(s), nothing was written:\n{}",
        problems.len(),
        problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n")
    ))
}

/// The output folder `out_root/DatasetNNN_Name`, after checking the id, the name and `--overwrite`.
fn target_dir(opts: &ConvertOptions) -> Result<PathBuf> {
    if opts.id == 0 || opts.id > 999 {
        return Err(Error::Invalid(format!("dataset id {} must be 1..=999 (nnU-Net folder names are Dataset%03d_Name)", opts.id)));
    }
    if opts.name.is_empty() || !opts.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(Error::Invalid(format!("dataset name {:?} must be non-empty letters, digits, '-' or '_'", opts.name)));
    }
    let final_dir = opts.out_root.join(paths::dataset_name(opts.id, &opts.name));
    if final_dir.exists() && !opts.overwrite {
        return Err(Error::Invalid(format!(
            "{} already exists; pass --overwrite to replace it, or choose another --id/--name",
            final_dir.display()
        )));
    }
    Ok(final_dir)
}

/// The training and test cases of the input, and what an nnU-Net input declares; every problem
/// found refuses the conversion.
fn collect_inputs(opts: &ConvertOptions) -> Result<(Vec<CaseSrc>, Vec<CaseSrc>, Option<Declared>)> {
    let mut problems = Vec::new();
    let (train, test, declared) = match &opts.input {
        ConvertInput::Folders { images, masks, test_images } => {
            let (a, b) = sources::collect_folders(images, masks, test_images.as_deref(), &mut problems)?;
            (a, b, None)
        }
        ConvertInput::NnunetFolder(dir) => {
            let (a, b, d) = sources::collect_nnunet(dir, &mut problems)?;
            (a, b, Some(d))
        }
    };
    for c in &train {
        if let Some(p) = c.mask.as_ref().and_then(|m| write::check_mask_format(m)) {
            problems.push(p);
        }
    }
    if train.is_empty() && problems.is_empty() {
        problems.push("no training cases found: the images folder is empty or no image has a matching mask".into());
    }
    let test_ids: BTreeSet<&String> = test.iter().map(|c| &c.id).collect();
    for c in &train {
        if test_ids.contains(&c.id) {
            problems.push(format!("duplicate case id {:?}: it is both a training case and a test case; rename one", c.id));
        }
    }
    if !problems.is_empty() {
        return Err(problems_error("conversion refused", problems));
    }
    Ok((train, test, declared))
}

/// Pass 1: the set of mask values over the whole dataset, so every case gets the same mapping.
fn scan_mask_values(pool: &rayon::ThreadPool, train: &[CaseSrc], opts: &ConvertOptions) -> Result<BTreeSet<u64>> {
    let pb = Progress::new(train.len(), "scanning masks", opts.progress);
    let scanned: Vec<Result<BTreeSet<u64>>> = pool.install(|| {
        train
            .par_iter()
            .map(|c| {
                let r = write::mask_values(c.mask.as_ref().expect("training cases have masks")).map(|(v, _)| v);
                pb.inc();
                r
            })
            .collect()
    });
    pb.finish();
    let mut values: BTreeSet<u64> = BTreeSet::new();
    let mut problems = Vec::new();
    for (c, r) in train.iter().zip(scanned) {
        match r {
            Ok(v) => values.extend(v),
            Err(e) => problems.push(format!("case {}: {e}", c.id)),
        }
    }
    if !problems.is_empty() {
        return Err(problems_error("conversion refused", problems));
    }
    if values.iter().all(|&b| f64::from_bits(b) == 0.0) && opts.label_names.is_none() {
        return Err(problems_error(
            "conversion refused",
            vec![format!(
                "all {} mask(s) hold only the value 0 (background): there is nothing to segment; check that --masks points at the masks (not at empty placeholders), or pass --labels to declare the classes",
                train.len()
            )],
        ));
    }
    Ok(values)
}

/// The mapping and the labels it produces, with their names.
struct LabelPlan {
    /// Original value (f64 bits) -> label.
    mapping: BTreeMap<u64, i64>,
    /// 0..K.
    label_set: Vec<i64>,
    label_names: Vec<String>,
    /// The ignore label (one above the highest label), with the original value it comes from.
    ignore: Option<(i64, f64)>,
    /// With `--regions`.
    regions: Option<regions::RegionPlan>,
}

/// The original mask value that becomes the ignore label: `--ignore-value`, or the ignore label an
/// nnU-Net v2 input declares (its masks already hold it).
fn ignore_source(opts: &ConvertOptions, declared: Option<&Declared>) -> std::result::Result<Option<f64>, String> {
    let v = match (opts.ignore_value, declared.and_then(|d| d.ignore)) {
        (Some(v), Some(k)) if v != k as f64 => {
            return Err(format!(
                "--ignore-value {} but the input's dataset.json already declares the ignore label {k}; drop --ignore-value or pass {k}",
                value_key(v)
            ))
        }
        (Some(v), _) => v,
        (None, Some(k)) => k as f64,
        (None, None) => return Ok(None),
    };
    if !v.is_finite() {
        return Err(format!("--ignore-value {v} is not a finite mask value"));
    }
    if opts.map.iter().any(|(o, _)| *o == v) {
        return Err(format!(
            "mask value {} is both the ignore value and in --map; the ignore value always becomes the ignore label (the highest label): remove it from --map",
            value_key(v)
        ));
    }
    Ok(Some(v))
}

/// Decides the mapping and names the labels 0..K (declared names, `--labels`, or defaults).
fn plan_labels(values: &BTreeSet<u64>, opts: &ConvertOptions, declared: Option<&Declared>) -> Result<LabelPlan> {
    let refuse = |msg: String| problems_error("conversion refused", vec![msg]);
    let ignore_src = ignore_source(opts, declared).map_err(refuse)?;
    let kept: BTreeSet<u64> = values.iter().copied().filter(|&b| Some(f64::from_bits(b)) != ignore_src).collect();
    let mut mapping = decide_mapping(&kept, opts, declared).map_err(|p| problems_error("conversion refused", p))?;
    let label_set: Vec<i64> = mapping.values().copied().collect::<BTreeSet<_>>().into_iter().collect();
    // Declared label names may cover labels absent from every mask: keep them.
    let n_labels = match (&opts.label_names, declared) {
        (Some(n), _) => n.len(),
        (None, Some(d)) if !opts.binarize && opts.map.is_empty() => d.labels.len(),
        _ => label_set.len(),
    };
    let max_label = label_set.last().copied().unwrap_or(0);
    if label_set.first() != Some(&0) || (max_label as usize) + 1 > n_labels.max(label_set.len()) || label_set.iter().any(|&l| l < 0) {
        return Err(refuse(format!(
            "the mapping gives labels {label_set:?}; labels must be consecutive 0..K with background 0: fix --map"
        )));
    }
    let label_set: Vec<i64> = (0..n_labels.max(max_label as usize + 1) as i64).collect();
    let label_names: Vec<String> = match (&opts.label_names, declared) {
        (Some(n), _) => {
            if n.len() != label_set.len() {
                return Err(refuse(format!(
                    "--labels gives {} name(s) ({}) but the masks have {} label(s) 0..{}; give one name per label, background first",
                    n.len(),
                    n.join(","),
                    label_set.len(),
                    label_set.len() - 1
                )));
            }
            n.clone()
        }
        (None, Some(d)) if !d.labels.is_empty() && opts.map.is_empty() && !opts.binarize => {
            label_set.iter().map(|l| d.labels.get(l).cloned().unwrap_or_else(|| format!("label_{l}"))).collect()
        }
        _ => label_set
            .iter()
            .map(|&l| match l {
                0 => "background".to_string(),
                1 if label_set.len() == 2 => "foreground".to_string(),
                l => format!("label_{l}"),
            })
            .collect(),
    };
    if label_names.iter().collect::<BTreeSet<_>>().len() != label_names.len() {
        return Err(refuse(format!("label names {label_names:?} are not unique")));
    }
    if label_names.iter().any(|n| n == "ignore") {
        return Err(refuse("a label is named \"ignore\", which dataset.json reserves for the ignore label; rename it".into()));
    }
    // nnU-Net requires the ignore label to be the highest label value: one above the classes.
    let ignore = ignore_src.map(|v| (label_set.len() as i64, v));
    if let Some((label, v)) = ignore {
        mapping.insert(v.to_bits(), label);
    }
    // --regions, else the regions of the input's dataset.json (convert --from a region dataset)
    let (region_specs, class_order) = match (opts.regions.is_empty(), declared) {
        (true, Some(d)) if !d.regions.is_empty() => (&d.regions, d.regions_class_order.as_deref()),
        _ => (&opts.regions, opts.regions_class_order.as_deref()),
    };
    let regions = match region_specs.is_empty() {
        true => None,
        false => Some(regions::plan_regions(region_specs, class_order, &label_set, &label_names).map_err(refuse)?),
    };
    Ok(LabelPlan { mapping, label_set, label_names, ignore, regions })
}

/// A fresh hidden sibling `.DatasetNNN_Name.partial/` with the folders the cases go to.
fn prepare_partial(opts: &ConvertOptions, with_test: bool) -> Result<PathBuf> {
    let partial = opts.out_root.join(format!(".{}.partial", paths::dataset_name(opts.id, &opts.name)));
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
    }
    let subs: &[&str] = if with_test { &["imagesTr", "labelsTr", "imagesTs"] } else { &["imagesTr", "labelsTr"] };
    for sub in subs {
        std::fs::create_dir_all(partial.join(sub)).map_err(|e| Error::io(partial.join(sub), e))?;
    }
    Ok(partial)
}

/// Pass 2: writes every case into `partial`. All cases must share the channel count (the
/// minority is reported). Returns each case's outcome and the channel count.
fn write_cases<'a>(
    pool: &rayon::ThreadPool,
    partial: &Path,
    cases: &[(&'a CaseSrc, &str)],
    mapping: &BTreeMap<u64, i64>,
    progress: bool,
) -> Result<(Vec<(&'a CaseSrc, CaseOut)>, usize)> {
    let pb = Progress::new(cases.len(), "converting", progress);
    let outs: Vec<Result<CaseOut>> = pool.install(|| {
        cases
            .par_iter()
            .map(|(c, sub)| {
                let r = write::write_case(c, partial, sub, mapping, None);
                pb.inc();
                r
            })
            .collect()
    });
    pb.finish();
    let mut problems = Vec::new();
    let mut ok_outs: Vec<(&CaseSrc, CaseOut)> = Vec::new();
    for ((c, _), r) in cases.iter().zip(outs) {
        match r {
            Ok(o) => ok_outs.push((c, o)),
            Err(e) => problems.push(format!("case {}: {e}", c.id)),
        }
    }
    let mut by_c: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for (c, o) in &ok_outs {
        by_c.entry(o.n_channels).or_default().push(&c.id);
    }
    let n_channels = by_c.iter().max_by_key(|(_, v)| v.len()).map(|(k, _)| *k).unwrap_or(1);
    for (k, ids) in &by_c {
        if *k != n_channels {
            let show: Vec<&&str> = ids.iter().take(10).collect();
            problems.push(format!(
                "{} case(s) have {k} channel(s) while most have {n_channels}: {show:?}{}; convert them to the same color mode (all gray or all RGB)",
                ids.len(),
                if ids.len() > 10 { " ..." } else { "" }
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems_error("conversion failed", problems));
    }
    Ok((ok_outs, n_channels))
}

/// Channel names: `--channel-names`, the input's declared names, or the defaults.
fn channel_names(opts: &ConvertOptions, declared: Option<&Declared>, n_channels: usize, volume: bool) -> Result<Vec<String>> {
    match (&opts.channel_names, declared) {
        (Some(n), _) if n.len() != n_channels => {
            Err(Error::Invalid(format!("--channel-names gives {} name(s) but the images have {n_channels} channel(s)", n.len())))
        }
        (Some(n), _) => Ok(n.clone()),
        (None, Some(d)) if d.channel_names.len() == n_channels => Ok(d.channel_names.clone()),
        _ => Ok(default_channel_names(n_channels, volume)),
    }
}

/// Per-label voxel and case counts, and the smallest and largest case shape.
fn label_statistics(labels: &LabelPlan, outs: &[(&CaseSrc, CaseOut)]) -> (BTreeMap<i64, LabelCount>, [usize; 3], [usize; 3]) {
    let mut label_counts: BTreeMap<i64, LabelCount> =
        labels.label_set.iter().zip(&labels.label_names).map(|(&l, n)| (l, LabelCount { name: n.clone(), voxels: 0, cases: 0 })).collect();
    let (mut min_shape, mut max_shape) = ([usize::MAX; 3], [0usize; 3]);
    for (_, o) in outs {
        for k in 0..3 {
            min_shape[k] = min_shape[k].min(o.shape[k]);
            max_shape[k] = max_shape[k].max(o.shape[k]);
        }
        for (l, n) in &o.counts {
            if let Some(lc) = label_counts.get_mut(l) {
                lc.voxels += n;
                lc.cases += 1;
            }
        }
    }
    if outs.is_empty() {
        min_shape = [0; 3];
    }
    (label_counts, min_shape, max_shape)
}

/// The converted dataset's `dataset.json`, with the label mapping (to write predictions back in
/// the user's values) and what the source was.
fn build_dataset_json(
    opts: &ConvertOptions,
    declared: Option<&Declared>,
    labels: &LabelPlan,
    channel_names: &[String],
    n_train: usize,
    source: SourceInfo,
) -> DatasetJson {
    let original_to_label: BTreeMap<String, i64> = labels.mapping.iter().map(|(b, l)| (value_key(f64::from_bits(*b)), *l)).collect();
    // Writing back: each label gets the largest original value mapped to it (255 for 0/255).
    let mut label_to_original: BTreeMap<String, f64> = BTreeMap::new();
    for (b, l) in &labels.mapping {
        let v = f64::from_bits(*b);
        let e = label_to_original.entry(l.to_string()).or_insert(v);
        if v > *e {
            *e = v;
        }
    }
    DatasetJson {
        channel_names: channel_names.iter().enumerate().map(|(k, n)| (k.to_string(), n.clone())).collect(),
        labels: match &labels.regions {
            Some(r) => regions::region_labels(r, labels.ignore.map(|(l, _)| l)),
            None => labels
                .label_names
                .iter()
                .zip(&labels.label_set)
                .map(|(n, &l)| (n.clone(), LabelValue::One(l)))
                .chain(labels.ignore.map(|(l, _)| ("ignore".to_string(), LabelValue::One(l))))
                .collect(),
        },
        regions_class_order: labels.regions.as_ref().map(|r| r.regions_class_order.clone()),
        num_training: n_train,
        file_ending: ".nii.gz".into(),
        name: Some(opts.name.clone()),
        description: declared.and_then(|d| d.description.clone()).or_else(|| Some("converted by nnunet convert (nnunet-rs)".into())),
        overwrite_image_reader_writer: None,
        nnunetrs_label_mapping: Some(LabelMapping { original_to_label, label_to_original }),
        nnunetrs_source: Some(source),
        extra: declared.map(|d| d.extra.clone()).unwrap_or_default(),
    }
}

/// What the source looked like: formats, color mode and mask bit depth.
fn source_info(first: &CaseSrc, mapping: &BTreeMap<u64, i64>, n_channels: usize, volume: bool) -> SourceInfo {
    let max_orig = mapping.keys().map(|b| f64::from_bits(*b)).fold(0.0, f64::max);
    let color = match (volume, n_channels) {
        (true, _) => "volume",
        (false, 1) => "gray",
        (false, 3) => "rgb",
        (false, 4) => "rgba",
        _ => "multichannel",
    };
    SourceInfo {
        image_format: imageio::detect_format(&first.images[0]).unwrap_or("?").to_string(),
        mask_format: first.mask.as_ref().and_then(|m| imageio::detect_format(m)).unwrap_or("?").to_string(),
        color: color.into(),
        mask_bits: if max_orig > 255.0 { 16 } else { 8 },
    }
}

/// Verifies `partial` and renames it to `final_dir`; a dataset that fails is kept as
/// `.DatasetNNN_Name.failed/` for inspection. Returns the verification warnings.
fn verify_and_publish(opts: &ConvertOptions, partial: &Path, final_dir: &Path) -> Result<Vec<String>> {
    let report = verify::verify_dataset(partial)?;
    if !report.problems.is_empty() {
        let keep = opts.out_root.join(format!(".{}.failed", paths::dataset_name(opts.id, &opts.name)));
        let kept = (|| {
            if keep.exists() {
                std::fs::remove_dir_all(&keep)?;
            }
            std::fs::rename(partial, &keep)
        })();
        let mut p = report.problems;
        match kept {
            Ok(()) => p.push(format!("the converted (failed) dataset was kept in {} for inspection", keep.display())),
            Err(e) => p.push(format!(
                "the converted (failed) dataset is in {} for inspection (moving it to {} failed: {e})",
                partial.display(),
                keep.display()
            )),
        }
        return Err(Error::Verify(p));
    }
    if final_dir.exists() {
        std::fs::remove_dir_all(final_dir).map_err(|e| Error::io(final_dir, e))?;
    }
    std::fs::rename(partial, final_dir).map_err(|e| Error::io(final_dir, e))?;
    Ok(report.warnings)
}

/// Converts the input into `out_root/DatasetNNN_Name/` and verifies the result.
pub fn convert(opts: &ConvertOptions) -> Result<ConvertSummary> {
    let t0 = Instant::now();
    let final_dir = target_dir(opts)?;
    let (train, test, declared) = collect_inputs(opts)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads)
        .build()
        .map_err(|e| Error::Invalid(format!("cannot start threads: {e}")))?;
    let values = scan_mask_values(&pool, &train, opts)?;
    let labels = plan_labels(&values, opts, declared.as_ref())?;

    // Pass 2: write into a hidden sibling, then rename into place.
    let partial = prepare_partial(opts, !test.is_empty())?;
    let all: Vec<(&CaseSrc, &str)> = train.iter().map(|c| (c, "imagesTr")).chain(test.iter().map(|c| (c, "imagesTs"))).collect();
    let written = write_cases(&pool, &partial, &all, &labels.mapping, opts.progress).and_then(|(outs, n_channels)| {
        let volume = outs.iter().any(|(_, o)| o.volume);
        let names = channel_names(opts, declared.as_ref(), n_channels, volume)?;
        Ok((outs, n_channels, volume, names))
    });
    let (ok_outs, n_channels, volume, channel_names) = match written {
        Ok(w) => w,
        Err(e) => {
            if let Err(rm) = std::fs::remove_dir_all(&partial) {
                tracing::warn!("could not remove the partial conversion {}: {rm}", partial.display());
            }
            return Err(e);
        }
    };
    let (label_counts, min_shape, max_shape) = label_statistics(&labels, &ok_outs);
    let source = source_info(&train[0], &labels.mapping, n_channels, volume);
    let (image_format, mask_format) = (source.image_format.clone(), source.mask_format.clone());
    let dj = build_dataset_json(opts, declared.as_ref(), &labels, &channel_names, train.len(), source);
    dj.save(&partial.join("dataset.json"))?;
    let mut warnings = verify_and_publish(opts, &partial, &final_dir)?;
    let absent: Vec<String> =
        label_counts.iter().filter(|(l, c)| **l > 0 && c.cases == 0).map(|(l, c)| format!("{l} ({})", c.name)).collect();
    if !absent.is_empty() {
        warnings.push(format!("label(s) {} occur in no mask", absent.join(", ")));
    }
    if let Some((label, v)) = labels.ignore {
        if !values.contains(&v.to_bits()) {
            warnings.push(format!("the ignore value {} (ignore label {label}) occurs in no mask: every pixel is annotated", value_key(v)));
        }
    }
    let mapping = dj.nnunetrs_label_mapping.map(|m| m.original_to_label).unwrap_or_default();
    let identity = labels.mapping.iter().all(|(b, l)| f64::from_bits(*b) == *l as f64);
    if !opts.binarize && opts.map.is_empty() && declared.is_none() && values.len() > 2 && !identity {
        warnings.push(format!(
            "{} distinct mask values were mapped in sorted order ({}); check this is what you meant, or pass --map/--binarize",
            values.len(),
            mapping.iter().map(|(k, v)| format!("{k}->{v}")).collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(ConvertSummary {
        dataset_dir: final_dir,
        n_train: train.len(),
        n_test: test.len(),
        channel_names,
        min_shape,
        max_shape,
        mapping,
        label_counts,
        image_format,
        mask_format,
        seconds: t0.elapsed().as_secs_f64(),
        warnings,
        regions: labels.regions.as_ref().map(regions::describe).unwrap_or_default(),
    })
}
