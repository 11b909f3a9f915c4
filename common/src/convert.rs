//! `nnunet convert`: turns a folder of 2D images and a folder of masks (matched by file stem), an
//! nnU-Net v1 `TaskXXX_Name` folder, or an nnU-Net v2 `DatasetXXX_Name` folder in any format into
//! an nnU-Net v2 raw dataset in the `.nii.gz` form (SPEC §1.1, §1.2), then verifies what it wrote.
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
use crate::dataset_json::{DatasetJson, LabelMapping, LabelValue, SourceInfo};
use crate::imageio::{self, Geometry, ImageData};
use crate::{paths, verify, Error, Result};
use rayon::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

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
            channel_names: None,
            overwrite: false,
            threads: 0,
            progress: false,
        }
    }
}

/// One case to convert: its id, its image file(s) (concatenated along channels) and its mask.
#[derive(Debug, Clone)]
struct CaseSrc {
    id: String,
    images: Vec<PathBuf>,
    mask: Option<PathBuf>,
}

/// What the input declares when it is already an nnU-Net dataset.
#[derive(Debug, Clone, Default)]
struct Declared {
    channel_names: Vec<String>,
    /// label value -> name
    labels: BTreeMap<i64, String>,
    description: Option<String>,
    extra: BTreeMap<String, serde_json::Value>,
}

/// Per-label statistics of the converted masks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelCount {
    pub name: String,
    pub voxels: u64,
    pub cases: usize,
}

/// What [`convert`] did; `Display` prints the end-of-run summary.
#[derive(Debug, Clone)]
pub struct ConvertSummary {
    pub dataset_dir: PathBuf,
    pub n_train: usize,
    pub n_test: usize,
    pub channel_names: Vec<String>,
    /// Smallest and largest case shape (Z, Y, X), per axis.
    pub min_shape: [usize; 3],
    pub max_shape: [usize; 3],
    /// Original mask value (as text) -> label.
    pub mapping: BTreeMap<String, i64>,
    /// label -> counts
    pub label_counts: BTreeMap<i64, LabelCount>,
    pub image_format: String,
    pub mask_format: String,
    pub seconds: f64,
    pub warnings: Vec<String>,
}

impl fmt::Display for ConvertSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "converted {} training + {} test case(s) into {}", self.n_train, self.n_test, self.dataset_dir.display())?;
        writeln!(f, "  input: images {} / masks {}", self.image_format, self.mask_format)?;
        writeln!(f, "  channels ({}): {}", self.channel_names.len(), self.channel_names.join(", "))?;
        let z = |s: &[usize; 3]| if s[0] == 1 { format!("{}x{}", s[1], s[2]) } else { format!("{}x{}x{}", s[0], s[1], s[2]) };
        writeln!(f, "  sizes (Z,Y,X or H x W): min {}, max {}", z(&self.min_shape), z(&self.max_shape))?;
        let m: Vec<String> = self.mapping.iter().map(|(k, v)| format!("{k}->{v}")).collect();
        writeln!(f, "  mask values -> labels: {}", m.join(", "))?;
        let total: u64 = self.label_counts.values().map(|c| c.voxels).sum::<u64>().max(1);
        writeln!(f, "  {:>5}  {:<16} {:>14} {:>7} {:>6}", "label", "name", "voxels", "%", "cases")?;
        for (l, c) in &self.label_counts {
            writeln!(f, "  {:>5}  {:<16} {:>14} {:>6.2}% {:>6}", l, c.name, c.voxels, 100.0 * c.voxels as f64 / total as f64, c.cases)?;
        }
        for w in &self.warnings {
            writeln!(f, "  warning: {w}")?;
        }
        write!(f, "  took {:.1} s ({:.1} cases/s)", self.seconds, (self.n_train + self.n_test) as f64 / self.seconds.max(1e-9))
    }
}

/// Progress for long loops: an indicatif bar on a terminal, else a log line every ~10 %.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: usize,
    done: AtomicUsize,
    label: String,
    enabled: bool,
}

impl Progress {
    pub fn new(total: usize, label: &str, enabled: bool) -> Self {
        use std::io::IsTerminal;
        let bar = if enabled && std::io::stderr().is_terminal() {
            let b = indicatif::ProgressBar::new(total as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} {per_sec} eta {eta}") {
                b.set_style(style.progress_chars("=> "));
            }
            b.set_message(label.to_string());
            Some(b)
        } else {
            None
        };
        Progress { bar, total, done: AtomicUsize::new(0), label: label.into(), enabled }
    }
    pub fn inc(&self) {
        let n = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(b) = &self.bar {
            b.inc(1);
        } else if self.enabled {
            let step = (self.total / 10).max(1);
            if n.is_multiple_of(step) || n == self.total {
                eprintln!("{}: {n}/{} ({:.0}%)", self.label, self.total, 100.0 * n as f64 / self.total.max(1) as f64);
            }
        }
    }
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Makes a file stem a safe case id: letters, digits, `-` and `_` kept, anything else `_`.
pub fn sanitize_case_id(stem: &str) -> String {
    let s: String = stem.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    if s.is_empty() {
        "case".into()
    } else {
        s
    }
}

/// Suffixes mask files commonly carry that their image files do not (`IMD002_lesion.bmp`).
const MASK_SUFFIXES: &[&str] = &["_mask", "_masks", "_label", "_labels", "_seg", "_segmentation", "_gt", "_lesion", "-mask", "-label"];

/// Lists a folder's image files: stem -> path, with files that are not images reported.
fn list_image_folder(dir: &Path, what: &str, problems: &mut Vec<String>) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let rd = std::fs::read_dir(dir).map_err(|e| Error::Invalid(format!("cannot read the {what} folder {}: {e}", dir.display())))?;
    let mut names: Vec<String> = rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    for name in names {
        let p = dir.join(&name);
        if name.starts_with('.') || name == "Thumbs.db" || name == "desktop.ini" || p.is_dir() {
            continue;
        }
        match imageio::strip_image_ending(&name) {
            Some(stem) => out.push((stem.to_string(), p)),
            None => problems.push(format!(
                "{}: not an image file nnunet-rs reads (.png .tif .tiff .bmp .jpg .jpeg .nii .nii.gz) in the {what} folder; remove it or convert it",
                p.display()
            )),
        }
    }
    Ok(out)
}

/// Gives each stem a unique, sanitised case id; collisions are problems.
fn assign_ids(files: Vec<(String, PathBuf)>, what: &str, problems: &mut Vec<String>) -> BTreeMap<String, PathBuf> {
    let mut out: BTreeMap<String, PathBuf> = BTreeMap::new();
    for (stem, p) in files {
        let id = sanitize_case_id(&stem);
        if let Some(prev) = out.get(&id) {
            problems.push(format!(
                "duplicate case id {id:?} in the {what} folder: {} and {} both map to it (same name with another ending, or names that differ only in characters replaced by '_'); rename or remove one",
                prev.display(),
                p.display()
            ));
            continue;
        }
        let lower = id.to_lowercase();
        if let Some((other, prev)) = out.iter().find(|(k, _)| k.to_lowercase() == lower) {
            problems.push(format!(
                "duplicate case id in the {what} folder: {other:?} ({}) and {id:?} ({}) differ only in letter case and collide on case-insensitive file systems; rename one",
                prev.display(),
                p.display()
            ));
            continue;
        }
        out.insert(id, p);
    }
    out
}

fn collect_folders(
    images: &Path,
    masks: &Path,
    test_images: Option<&Path>,
    problems: &mut Vec<String>,
) -> Result<(Vec<CaseSrc>, Vec<CaseSrc>)> {
    let imgs = assign_ids(list_image_folder(images, "images", problems)?, "images", problems);
    let msks = list_image_folder(masks, "masks", problems)?;
    // Match masks to images: exact stem first, then the stem without a common mask suffix.
    let mut by_id: BTreeMap<String, PathBuf> = BTreeMap::new();
    for (stem, p) in msks {
        let mut id = sanitize_case_id(&stem);
        if !imgs.contains_key(&id) {
            let lower = stem.to_lowercase();
            if let Some(sfx) = MASK_SUFFIXES.iter().find(|s| lower.ends_with(*s)) {
                let cand = sanitize_case_id(&stem[..stem.len() - sfx.len()]);
                if imgs.contains_key(&cand) {
                    id = cand;
                }
            }
        }
        if let Some(prev) = by_id.get(&id) {
            problems.push(format!("duplicate mask for case {id:?}: {} and {}; keep one", prev.display(), p.display()));
            continue;
        }
        if !imgs.contains_key(&id) {
            problems.push(format!(
                "{}: mask without an image: no file named {id}.<ending> in {}; add the image or remove the mask",
                p.display(),
                images.display()
            ));
        }
        by_id.insert(id, p);
    }
    let mut train = Vec::new();
    for (id, img) in &imgs {
        match by_id.get(id) {
            Some(m) => train.push(CaseSrc { id: id.clone(), images: vec![img.clone()], mask: Some(m.clone()) }),
            None => problems.push(format!(
                "case {id}: image {} has no mask in {} (masks are matched by file stem); add the mask, or pass images without masks with --test-images",
                img.display(),
                masks.display()
            )),
        }
    }
    let mut test = Vec::new();
    if let Some(t) = test_images {
        let ts = assign_ids(list_image_folder(t, "test images", problems)?, "test images", problems);
        for (id, img) in ts {
            test.push(CaseSrc { id, images: vec![img], mask: None });
        }
    }
    Ok((train, test))
}

fn json_str_map(v: &serde_json::Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_str().map(String::from).unwrap_or_else(|| v.to_string()))).collect())
        .unwrap_or_default()
}

fn ordered_names(m: &BTreeMap<String, String>) -> Vec<String> {
    let mut v: Vec<(i64, String)> = m.iter().filter_map(|(k, n)| k.parse().ok().map(|i| (i, n.clone()))).collect();
    v.sort();
    v.into_iter().map(|(_, n)| n).collect()
}

/// Reads an nnU-Net v1 Task or v2 Dataset folder.
fn collect_nnunet(dir: &Path, problems: &mut Vec<String>) -> Result<(Vec<CaseSrc>, Vec<CaseSrc>, Declared)> {
    let dj_path = dir.join("dataset.json");
    let v: serde_json::Value = crate::error::read_json(&dj_path)?;
    let o = v.as_object().ok_or_else(|| Error::format(&dj_path, "dataset.json is not a JSON object"))?;
    let mut declared = Declared::default();
    let is_v1 = o.contains_key("modality") && !o.contains_key("channel_names");
    if is_v1 {
        // v1: modality {"0": "MRI"}, labels {"0": "background"} (int -> name), training list,
        // everything 3D NIfTI with `_XXXX` channel suffixes (SPEC §1.1).
        declared.channel_names = ordered_names(&json_str_map(&o["modality"]));
        for (k, name) in json_str_map(o.get("labels").unwrap_or(&serde_json::Value::Null)) {
            match k.parse::<i64>() {
                Ok(val) => {
                    declared.labels.insert(val, name);
                }
                Err(_) => problems.push(format!("{}: v1 label key {k:?} is not an integer", dj_path.display())),
            }
        }
    } else {
        let chans = o.get("channel_names").or_else(|| o.get("modality")).ok_or_else(|| {
            Error::format(&dj_path, "dataset.json has neither channel_names (v2) nor modality (v1); is this an nnU-Net dataset?")
        })?;
        declared.channel_names = ordered_names(&json_str_map(chans));
        if let Some(l) = o.get("labels").and_then(|l| l.as_object()) {
            for (name, val) in l {
                if name == "ignore" {
                    problems.push(format!(
                        "{}: the ignore label is not supported by nnunet-rs conversion; remove it or convert by hand",
                        dj_path.display()
                    ));
                    continue;
                }
                match val.as_i64() {
                    Some(x) => {
                        declared.labels.insert(x, name.clone());
                    }
                    None => {
                        problems.push(format!("{}: label {name:?} is not an integer (region labels are not supported)", dj_path.display()))
                    }
                }
            }
        }
    }
    declared.description = o.get("description").and_then(|d| d.as_str()).map(String::from);
    for k in ["reference", "licence", "license", "release", "tensorImageSize"] {
        if let Some(x) = o.get(k) {
            declared.extra.insert(k.to_string(), x.clone());
        }
    }
    let n_ch = declared.channel_names.len().max(1);
    let ending: String =
        if is_v1 { ".nii.gz".into() } else { o.get("file_ending").and_then(|e| e.as_str()).unwrap_or(".nii.gz").to_string() };
    // case -> channel file indices found (a natural image file may hold several channels).
    let list_cases = |sub: &str, problems: &mut Vec<String>| -> Result<BTreeMap<String, BTreeSet<usize>>> {
        let d = dir.join(sub);
        let mut ids: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
        if !d.is_dir() {
            return Ok(ids);
        }
        let mut names: Vec<String> =
            std::fs::read_dir(&d).map_err(|e| Error::io(&d, e))?.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        for name in names {
            if name.starts_with('.') {
                continue;
            }
            let ok = name.strip_suffix(ending.as_str()).and_then(|s| {
                let (c, x) = s.split_at(s.len().checked_sub(5)?);
                let k: usize = x.strip_prefix('_')?.parse().ok()?;
                Some((c, k))
            });
            match ok {
                Some((c, k)) if !c.is_empty() => {
                    ids.entry(c.to_string()).or_default().insert(k);
                }
                _ => problems.push(format!("{}: stray file: not {{case}}_{{XXXX}}{ending}; remove it", d.join(&name).display())),
            }
        }
        Ok(ids)
    };
    let one_channel_per_file = ending.ends_with(".nii") || ending.ends_with(".nii.gz");
    let channel_files = |sub: &str, id: &str, found: Option<&BTreeSet<usize>>| -> Vec<PathBuf> {
        let n = match found {
            Some(f) if !one_channel_per_file => f.iter().max().map(|m| m + 1).unwrap_or(1),
            _ => n_ch,
        };
        (0..n).map(|k| dir.join(sub).join(format!("{id}_{k:04}{ending}"))).collect()
    };
    let mut train = Vec::new();
    let train_ids: Vec<String> = if is_v1 {
        // v1 lists the training cases; the "image" entries omit the `_0000` suffix.
        let mut ids = Vec::new();
        if let Some(list) = o.get("training").and_then(|t| t.as_array()) {
            for e in list {
                let img = e.get("image").and_then(|i| i.as_str()).unwrap_or("");
                let name = Path::new(img).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                match imageio::strip_image_ending(&name) {
                    Some(s) if !s.is_empty() => ids.push(s.to_string()),
                    _ => problems.push(format!("{}: training entry {e} has no usable image path", dj_path.display())),
                }
            }
        } else {
            problems.push(format!("{}: v1 dataset.json has no training list", dj_path.display()));
        }
        let unique: BTreeSet<&String> = ids.iter().collect();
        if unique.len() != ids.len() {
            problems.push(format!(
                "{}: the v1 training list names some cases twice (duplicate case ids); remove the duplicates",
                dj_path.display()
            ));
        }
        let mut ids: Vec<String> = unique.into_iter().cloned().collect();
        ids.sort();
        ids
    } else {
        list_cases("imagesTr", problems)?.into_keys().collect()
    };
    let found_tr = list_cases("imagesTr", &mut Vec::new())?;
    for id in train_ids {
        let images = channel_files("imagesTr", &id, found_tr.get(&id));
        let mask = dir.join("labelsTr").join(format!("{id}{ending}"));
        let mut ok = true;
        for f in images.iter().chain(std::iter::once(&mask)) {
            if !f.is_file() {
                problems.push(format!("case {id}: {} is missing; add it or remove the case", f.display()));
                ok = false;
            }
        }
        if ok {
            train.push(CaseSrc { id: sanitize_case_id(&id), images, mask: Some(mask) });
        }
    }
    let mut test = Vec::new();
    for (id, found) in list_cases("imagesTs", problems)? {
        let images = channel_files("imagesTs", &id, Some(&found));
        if let Some(f) = images.iter().find(|f| !f.is_file()) {
            problems.push(format!("test case {id}: {} is missing", f.display()));
            continue;
        }
        test.push(CaseSrc { id: sanitize_case_id(&id), images, mask: None });
    }
    Ok((train, test, declared))
}

/// A mask value as dataset.json text: integers without a decimal point.
fn value_key(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Decides the dataset-wide value -> label mapping from the set of values found in all masks.
fn decide_mapping(
    values: &BTreeSet<u64>,
    opts: &ConvertOptions,
    declared: Option<&Declared>,
) -> std::result::Result<BTreeMap<u64, i64>, Vec<String>> {
    let vals: Vec<f64> = values.iter().map(|&b| f64::from_bits(b)).collect();
    let mut map: BTreeMap<u64, i64> = BTreeMap::new();
    let mut problems = Vec::new();
    if opts.binarize {
        for &v in &vals {
            map.insert(v.to_bits(), if v != 0.0 { 1 } else { 0 });
        }
        return Ok(map);
    }
    if !opts.map.is_empty() {
        let explicit: BTreeMap<u64, i64> = opts.map.iter().map(|(o, l)| ((*o).to_bits(), *l)).collect();
        for &v in &vals {
            match explicit.get(&v.to_bits()) {
                Some(&l) => {
                    map.insert(v.to_bits(), l);
                }
                None if v == 0.0 => {
                    map.insert(v.to_bits(), 0);
                }
                None => problems.push(format!(
                    "mask value {} occurs in the masks but --map does not say which label it gets; add --map {}:LABEL (or use --binarize)",
                    value_key(v),
                    value_key(v)
                )),
            }
        }
        return if problems.is_empty() { Ok(map) } else { Err(problems) };
    }
    let non_integer: Vec<String> = vals.iter().filter(|v| v.fract() != 0.0).map(|v| value_key(*v)).collect();
    if !non_integer.is_empty() {
        problems.push(format!(
            "the masks contain non-integer values {non_integer:?} (a float or resampled mask?); pass --binarize to map every nonzero value to 1, or --map VALUE:LABEL for each value"
        ));
        return Err(problems);
    }
    // Identity when the values already are nnU-Net labels: an existing nnU-Net dataset, or
    // integers that fit the declared label names (a class may be absent from every mask).
    let n_named = declared.map(|d| d.labels.len()).or(opts.label_names.as_ref().map(|l| l.len()));
    let identity = match n_named {
        Some(n) => vals.iter().all(|&v| v >= 0.0 && (v as usize) < n),
        None => false,
    };
    if identity {
        for &v in &vals {
            map.insert(v.to_bits(), v as i64);
        }
        return Ok(map);
    }
    if declared.is_some() {
        let bad: Vec<String> = vals
            .iter()
            .filter(|&&v| v < 0.0 || declared.map(|d| !d.labels.contains_key(&(v as i64))).unwrap_or(true))
            .map(|v| value_key(*v))
            .collect();
        problems.push(format!(
            "the label files contain values {bad:?} that dataset.json does not declare as labels; fix the labels or pass --map VALUE:LABEL"
        ));
        return Err(problems);
    }
    // Sorted order across the whole dataset: the same value always gets the same label.
    for (i, &v) in vals.iter().enumerate() {
        map.insert(v.to_bits(), i as i64);
    }
    Ok(map)
}

fn default_channel_names(c: usize, volume: bool) -> Vec<String> {
    match c {
        1 if volume => vec!["image".into()],
        1 => vec!["gray".into()],
        2 => vec!["gray".into(), "A".into()],
        3 => vec!["R".into(), "G".into(), "B".into()],
        4 => vec!["R".into(), "G".into(), "B".into(), "A".into()],
        n => (0..n).map(|k| format!("channel_{k}")).collect(),
    }
}

/// Result of converting one case.
struct CaseOut {
    n_channels: usize,
    shape: [usize; 3],
    /// label -> voxel count
    counts: BTreeMap<i64, u64>,
    volume: bool,
}

fn mask_values(path: &Path) -> Result<(BTreeSet<u64>, ImageData)> {
    let m = imageio::read_seg(path)?;
    let mut bits: BTreeSet<u32> = BTreeSet::new();
    for &v in &m.data {
        bits.insert(v.to_bits());
    }
    let mut out = BTreeSet::new();
    for b in bits {
        let v = f32::from_bits(b);
        if !v.is_finite() {
            return Err(Error::format(path, "the mask contains NaN or infinite values; masks must hold integer labels"));
        }
        // -0.0 and 0.0 are the same label.
        out.insert(if v == 0.0 { 0f64.to_bits() } else { (v as f64).to_bits() });
    }
    Ok((out, m))
}

fn check_mask_format(p: &Path) -> Option<String> {
    match imageio::detect_format(p) {
        Some("jpg") => Some(format!(
            "{}: JPEG masks are refused: JPEG's lossy compression invents new values along every label edge (a 0/255 mask comes back with 1, 2, ..., 254), which would become extra labels or wrong pixels. Re-export the masks as PNG (or TIFF/BMP) from the original label data; do not convert the JPEG, its edges are already damaged",
            p.display()
        )),
        _ => None,
    }
}

fn write_case(src: &CaseSrc, out_dir: &Path, sub: &str, mapping: &BTreeMap<u64, i64>, n_channels: Option<usize>) -> Result<CaseOut> {
    let img = imageio::read_case_images(&src.images)?;
    let c = img.shape[0];
    if let Some(n) = n_channels {
        if n != c {
            return Err(Error::format(
                &src.images[0],
                format!(
                    "case {}: has {c} channel(s) but the dataset has {n}; all cases must have the same channels (all gray, or all RGB)",
                    src.id
                ),
            ));
        }
    }
    let shape = [img.shape[1], img.shape[2], img.shape[3]];
    let volume = img.geometry.affine.is_some() && shape[0] > 1;
    for k in 0..c {
        let p = out_dir.join(sub).join(format!("{}_{k:04}.nii.gz", src.id));
        imageio::write_nifti_image(&p, shape, img.channel(k), &img.geometry)?;
    }
    let mut counts = BTreeMap::new();
    if let Some(mp) = &src.mask {
        let m = imageio::read_seg(mp)?;
        let mshape = [m.shape[1], m.shape[2], m.shape[3]];
        if mshape != shape {
            return Err(Error::format(
                mp,
                format!(
                    "case {}: image/mask size mismatch: image {} is {:?} but the mask is {:?} (Z, H, W); the mask must have exactly the image's size",
                    src.id,
                    src.images[0].display(),
                    shape,
                    mshape
                ),
            ));
        }
        let mut labels: Vec<u16> = Vec::with_capacity(m.data.len());
        // Lookup per distinct value: masks hold few values.
        let mut cache: Option<(u32, u16)> = None;
        for &v in &m.data {
            let b = v.to_bits();
            let l = match cache {
                Some((cb, cl)) if cb == b => cl,
                _ => {
                    let key = if v == 0.0 { 0f64.to_bits() } else { (v as f64).to_bits() };
                    let l = *mapping
                        .get(&key)
                        .ok_or_else(|| Error::format(mp, format!("mask value {v} has no label (internal: mapping incomplete)")))?
                        as u16;
                    cache = Some((b, l));
                    l
                }
            };
            labels.push(l);
            *counts.entry(l as i64).or_insert(0u64) += 1;
        }
        // The mask keeps its own geometry (for NIfTI input) so verify can compare it with the image.
        let geom = if m.geometry.affine.is_some() {
            m.geometry.clone()
        } else {
            Geometry { format: m.geometry.format.clone(), ..img.geometry.clone() }
        };
        imageio::write_nifti_seg(&out_dir.join("labelsTr").join(format!("{}.nii.gz", src.id)), shape, &labels, &geom)?;
    }
    Ok(CaseOut { n_channels: c, shape, counts, volume })
}

fn problems_error(what: &str, problems: Vec<String>) -> Error {
    Error::Invalid(format!(
        "{what}: {} problem(s), nothing was written:\n{}",
        problems.len(),
        problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n")
    ))
}

/// Converts the input into `out_root/DatasetNNN_Name/` and verifies the result.
pub fn convert(opts: &ConvertOptions) -> Result<ConvertSummary> {
    let t0 = Instant::now();
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
    let mut problems = Vec::new();
    let (train, test, declared) = match &opts.input {
        ConvertInput::Folders { images, masks, test_images } => {
            let (a, b) = collect_folders(images, masks, test_images.as_deref(), &mut problems)?;
            (a, b, None)
        }
        ConvertInput::NnunetFolder(dir) => {
            let (a, b, d) = collect_nnunet(dir, &mut problems)?;
            (a, b, Some(d))
        }
    };
    for c in &train {
        if let Some(p) = c.mask.as_ref().and_then(|m| check_mask_format(m)) {
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
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads)
        .build()
        .map_err(|e| Error::Invalid(format!("cannot start threads: {e}")))?;

    // Pass 1: the set of mask values over the whole dataset, so every case gets the same mapping.
    let pb = Progress::new(train.len(), "scanning masks", opts.progress);
    let scanned: Vec<Result<BTreeSet<u64>>> = pool.install(|| {
        train
            .par_iter()
            .map(|c| {
                let r = mask_values(c.mask.as_ref().unwrap()).map(|(v, _)| v);
                pb.inc();
                r
            })
            .collect()
    });
    pb.finish();
    let mut values: BTreeSet<u64> = BTreeSet::new();
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
    let mapping = decide_mapping(&values, opts, declared.as_ref()).map_err(|p| problems_error("conversion refused", p))?;
    let mut label_set: Vec<i64> = mapping.values().copied().collect::<BTreeSet<_>>().into_iter().collect();
    // Declared label names may cover labels absent from every mask: keep them.
    let n_labels = match (&opts.label_names, &declared) {
        (Some(n), _) => n.len(),
        (None, Some(d)) if !opts.binarize && opts.map.is_empty() => d.labels.len(),
        _ => label_set.len(),
    };
    let max_label = label_set.last().copied().unwrap_or(0);
    if label_set.first() != Some(&0) || (max_label as usize) + 1 > n_labels.max(label_set.len()) || label_set.iter().any(|&l| l < 0) {
        return Err(problems_error(
            "conversion refused",
            vec![format!("the mapping gives labels {label_set:?}; labels must be consecutive 0..K with background 0: fix --map")],
        ));
    }
    let n_labels = n_labels.max(max_label as usize + 1);
    label_set = (0..n_labels as i64).collect();
    let label_names: Vec<String> = match (&opts.label_names, &declared) {
        (Some(n), _) => {
            if n.len() != label_set.len() {
                return Err(problems_error(
                    "conversion refused",
                    vec![format!(
                        "--labels gives {} name(s) ({}) but the masks have {} label(s) 0..{}; give one name per label, background first",
                        n.len(),
                        n.join(","),
                        label_set.len(),
                        label_set.len() - 1
                    )],
                ));
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
        return Err(problems_error("conversion refused", vec![format!("label names {label_names:?} are not unique")]));
    }

    // Pass 2: write into a hidden sibling, then rename into place.
    let partial = opts.out_root.join(format!(".{}.partial", paths::dataset_name(opts.id, &opts.name)));
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
    }
    for sub in ["imagesTr", "labelsTr"] {
        std::fs::create_dir_all(partial.join(sub)).map_err(|e| Error::io(partial.join(sub), e))?;
    }
    if !test.is_empty() {
        std::fs::create_dir_all(partial.join("imagesTs")).map_err(|e| Error::io(partial.join("imagesTs"), e))?;
    }
    let expected_channels: Option<usize> = None;
    let all: Vec<(&CaseSrc, &str)> = train.iter().map(|c| (c, "imagesTr")).chain(test.iter().map(|c| (c, "imagesTs"))).collect();
    let pb = Progress::new(all.len(), "converting", opts.progress);
    let outs: Vec<Result<CaseOut>> = pool.install(|| {
        all.par_iter()
            .map(|(c, sub)| {
                let r = write_case(c, &partial, sub, &mapping, expected_channels);
                pb.inc();
                r
            })
            .collect()
    });
    pb.finish();
    let mut ok_outs: Vec<(&CaseSrc, CaseOut)> = Vec::new();
    for ((c, _), r) in all.iter().zip(outs) {
        match r {
            Ok(o) => ok_outs.push((c, o)),
            Err(e) => problems.push(format!("case {}: {e}", c.id)),
        }
    }
    // All cases must share the channel count; report the minority.
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
        let _ = std::fs::remove_dir_all(&partial);
        return Err(problems_error("conversion failed", problems));
    }
    let volume = ok_outs.iter().any(|(_, o)| o.volume);
    let channel_names = match (&opts.channel_names, &declared) {
        (Some(n), _) => {
            if n.len() != n_channels {
                let _ = std::fs::remove_dir_all(&partial);
                return Err(Error::Invalid(format!(
                    "--channel-names gives {} name(s) but the images have {n_channels} channel(s)",
                    n.len()
                )));
            }
            n.clone()
        }
        (None, Some(d)) if d.channel_names.len() == n_channels => d.channel_names.clone(),
        _ => default_channel_names(n_channels, volume),
    };

    // Summary statistics.
    let mut label_counts: BTreeMap<i64, LabelCount> =
        label_set.iter().zip(&label_names).map(|(&l, n)| (l, LabelCount { name: n.clone(), voxels: 0, cases: 0 })).collect();
    let (mut min_shape, mut max_shape) = ([usize::MAX; 3], [0usize; 3]);
    for (_, o) in &ok_outs {
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
    let original_to_label: BTreeMap<String, i64> = mapping.iter().map(|(b, l)| (value_key(f64::from_bits(*b)), *l)).collect();
    // Writing back: each label gets the largest original value mapped to it (255 for 0/255).
    let mut label_to_original: BTreeMap<String, f64> = BTreeMap::new();
    for (b, l) in &mapping {
        let v = f64::from_bits(*b);
        let e = label_to_original.entry(l.to_string()).or_insert(v);
        if v > *e {
            *e = v;
        }
    }
    let first_src = &train[0];
    let image_format = imageio::detect_format(&first_src.images[0]).unwrap_or("?").to_string();
    let mask_format = imageio::detect_format(first_src.mask.as_ref().unwrap()).unwrap_or("?").to_string();
    let max_orig = mapping.keys().map(|b| f64::from_bits(*b)).fold(0.0, f64::max);
    let color = if volume {
        "volume"
    } else {
        match n_channels {
            1 => "gray",
            3 => "rgb",
            4 => "rgba",
            _ => "multichannel",
        }
    };
    let dj = DatasetJson {
        channel_names: channel_names.iter().enumerate().map(|(k, n)| (k.to_string(), n.clone())).collect(),
        labels: label_names.iter().zip(&label_set).map(|(n, &l)| (n.clone(), LabelValue::One(l))).collect(),
        num_training: train.len(),
        file_ending: ".nii.gz".into(),
        name: Some(opts.name.clone()),
        description: declared
            .as_ref()
            .and_then(|d| d.description.clone())
            .or_else(|| Some("converted by nnunet convert (nnunet-rs)".into())),
        overwrite_image_reader_writer: None,
        nnunetrs_label_mapping: Some(LabelMapping { original_to_label: original_to_label.clone(), label_to_original }),
        nnunetrs_source: Some(SourceInfo {
            image_format: image_format.clone(),
            mask_format: mask_format.clone(),
            color: color.into(),
            mask_bits: if max_orig > 255.0 { 16 } else { 8 },
        }),
        extra: declared.as_ref().map(|d| d.extra.clone()).unwrap_or_default(),
    };
    dj.save(&partial.join("dataset.json"))?;
    // Verify before publishing under the final name.
    let report = verify::verify_dataset(&partial)?;
    if !report.problems.is_empty() {
        let keep = opts.out_root.join(format!(".{}.failed", paths::dataset_name(opts.id, &opts.name)));
        let _ = std::fs::remove_dir_all(&keep);
        let _ = std::fs::rename(&partial, &keep);
        let mut p = report.problems;
        p.push(format!("the converted (failed) dataset was kept in {} for inspection", keep.display()));
        return Err(Error::Verify(p));
    }
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(|e| Error::io(&final_dir, e))?;
    }
    std::fs::rename(&partial, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
    let mut warnings = report.warnings;
    let absent: Vec<String> =
        label_counts.iter().filter(|(l, c)| **l > 0 && c.cases == 0).map(|(l, c)| format!("{l} ({})", c.name)).collect();
    if !absent.is_empty() {
        warnings.push(format!("label(s) {} occur in no mask", absent.join(", ")));
    }
    let identity = mapping.iter().all(|(b, l)| f64::from_bits(*b) == *l as f64);
    if !opts.binarize && opts.map.is_empty() && declared.is_none() && values.len() > 2 && !identity {
        warnings.push(format!(
            "{} distinct mask values were mapped in sorted order ({}); check this is what you meant, or pass --map/--binarize",
            values.len(),
            original_to_label.iter().map(|(k, v)| format!("{k}->{v}")).collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(ConvertSummary {
        dataset_dir: final_dir,
        n_train: train.len(),
        n_test: test.len(),
        channel_names,
        min_shape: if ok_outs.is_empty() { [0; 3] } else { min_shape },
        max_shape,
        mapping: original_to_label,
        label_counts,
        image_format,
        mask_format,
        seconds: t0.elapsed().as_secs_f64(),
        warnings,
    })
}
