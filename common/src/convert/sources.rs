//! Where conversion reads its cases from: a folder of images and a folder of masks matched by file
//! stem, or an existing nnU-Net v1 Task / v2 Dataset folder (`nnunetv2/dataset_conversion/
//! convert_raw_dataset_from_old_nnunet_format.py::convert`).
use crate::imageio;
use crate::naming;
use crate::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One case to convert: its id, its image file(s) (concatenated along channels) and its mask.
#[derive(Debug, Clone)]
pub(super) struct CaseSrc {
    pub id: String,
    pub images: Vec<PathBuf>,
    pub mask: Option<PathBuf>,
}

/// What the input declares when it is already an nnU-Net dataset.
#[derive(Debug, Clone, Default)]
pub(super) struct Declared {
    pub channel_names: Vec<String>,
    /// label value -> name
    pub labels: BTreeMap<i64, String>,
    /// The ignore label of a v2 dataset.json (`"ignore": K`), which must be the highest label.
    pub ignore: Option<i64>,
    /// Regions of a v2 dataset.json (`"name": [1, 2]`), in file order, and its `regions_class_order`.
    pub regions: Vec<(String, Vec<i64>)>,
    pub regions_class_order: Option<Vec<i64>>,
    pub description: Option<String>,
    pub extra: BTreeMap<String, serde_json::Value>,
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
        if naming::is_system_file(&name) || p.is_dir() {
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

pub(super) fn collect_folders(
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

/// How an nnU-Net folder's dataset.json lays out its cases.
struct Layout {
    is_v1: bool,
    ending: String,
    n_channels: usize,
}

/// Reads the channel names, labels and metadata an nnU-Net v1 or v2 `dataset.json` declares.
fn read_declared(o: &serde_json::Map<String, serde_json::Value>, dj_path: &Path, problems: &mut Vec<String>) -> Result<(Declared, Layout)> {
    let mut declared = Declared::default();
    let is_v1 = o.contains_key("modality") && !o.contains_key("channel_names");
    if is_v1 {
        // v1: modality {"0": "MRI"}, labels {"0": "background"} (int -> name), training list,
        // everything 3D NIfTI with `_XXXX` channel suffixes (nnU-Net v1's dataset_conversion.md).
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
            Error::format(dj_path, "dataset.json has neither channel_names (v2) nor modality (v1); is this an nnU-Net dataset?")
        })?;
        declared.channel_names = ordered_names(&json_str_map(chans));
        if let Some(l) = o.get("labels").and_then(|l| l.as_object()) {
            read_v2_labels(l, dj_path, &mut declared, problems);
        }
        declared.regions_class_order =
            o.get("regions_class_order").and_then(|v| v.as_array()).map(|a| a.iter().filter_map(|x| x.as_i64()).collect());
        // The JSON object above is sorted by name; the regions' order (the network's outputs) is the file's.
        if !declared.regions.is_empty() {
            #[derive(serde::Deserialize)]
            struct InOrder {
                labels: crate::dataset_json::Labels,
            }
            if let Ok(l) = crate::error::read_json::<InOrder>(dj_path) {
                let pos = |n: &str| l.labels.keys().position(|k| k == n).unwrap_or(usize::MAX);
                declared.regions.sort_by_key(|(n, _)| pos(n));
            }
        }
    }
    declared.description = o.get("description").and_then(|d| d.as_str()).map(String::from);
    for k in ["reference", "licence", "license", "release", "tensorImageSize"] {
        if let Some(x) = o.get(k) {
            declared.extra.insert(k.to_string(), x.clone());
        }
    }
    let n_channels = declared.channel_names.len().max(1);
    let ending: String =
        if is_v1 { ".nii.gz".into() } else { o.get("file_ending").and_then(|e| e.as_str()).unwrap_or(".nii.gz").to_string() };
    Ok((declared, Layout { is_v1, ending, n_channels }))
}

/// v2 labels: name -> integer value, and the ignore label (`"ignore": K`, nnU-Net's
/// `documentation/ignore_label.md`: K must be the highest label value); regions (lists) are kept
/// for `--regions`.
fn read_v2_labels(l: &serde_json::Map<String, serde_json::Value>, dj_path: &Path, declared: &mut Declared, problems: &mut Vec<String>) {
    for (name, val) in l {
        match (name.as_str(), val.as_i64()) {
            ("ignore", Some(x)) => declared.ignore = Some(x),
            ("ignore", None) => problems.push(format!("{}: the ignore label {val} is not an integer label value", dj_path.display())),
            (_, Some(x)) => {
                declared.labels.insert(x, name.clone());
            }
            (_, None) => match val.as_array().map(|a| a.iter().map(|x| x.as_i64()).collect::<Option<Vec<i64>>>()) {
                Some(Some(r)) => declared.regions.push((name.clone(), r)),
                _ => problems
                    .push(format!("{}: label {name:?} is {val}, neither an integer nor a list of integers (a region)", dj_path.display())),
            },
        }
    }
    // The members of regions are the dataset's labels (`LabelManager.all_labels`).
    let members: Vec<i64> = declared.regions.iter().flat_map(|(_, r)| r.iter().copied()).collect();
    for v in members {
        declared.labels.entry(v).or_insert_with(|| if v == 0 { "background".into() } else { format!("label_{v}") });
    }
    if let (Some(ig), Some((&top, top_name))) = (declared.ignore, declared.labels.last_key_value()) {
        if ig <= top {
            problems.push(format!(
                "{}: the ignore label is {ig} but label {top_name:?} is {top}; nnU-Net needs the ignore label to be the highest label value: give it {} (and renumber the masks' ignore pixels), or remove it",
                dj_path.display(),
                top + 1
            ));
        } else if ig != top + 1 {
            problems.push(format!(
                "{}: the ignore label is {ig} but the highest label is {top}; labels must be consecutive, so the ignore label must be {}",
                dj_path.display(),
                top + 1
            ));
        }
    }
}

/// Case -> channel file indices found in `dir/sub` (a natural image file may hold several
/// channels); an absent folder is empty. Stray files are problems.
fn list_channel_cases(dir: &Path, sub: &str, ending: &str, problems: &mut Vec<String>) -> Result<BTreeMap<String, BTreeSet<usize>>> {
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
        match naming::split_channel_file(&name, ending) {
            Some((c, k)) => {
                ids.entry(c.to_string()).or_default().insert(k);
            }
            None => problems.push(format!("{}: stray file: not {{case}}_{{XXXX}}{ending}; remove it", d.join(&name).display())),
        }
    }
    Ok(ids)
}

/// v1 lists the training cases; the "image" entries omit the `_0000` suffix.
fn v1_training_ids(o: &serde_json::Map<String, serde_json::Value>, dj_path: &Path, problems: &mut Vec<String>) -> Vec<String> {
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
    unique.into_iter().cloned().collect()
}

/// Reads an nnU-Net v1 Task or v2 Dataset folder.
pub(super) fn collect_nnunet(dir: &Path, problems: &mut Vec<String>) -> Result<(Vec<CaseSrc>, Vec<CaseSrc>, Declared)> {
    let dj_path = dir.join("dataset.json");
    let v: serde_json::Value = crate::error::read_json(&dj_path)?;
    let o = v.as_object().ok_or_else(|| Error::format(&dj_path, "dataset.json is not a JSON object"))?;
    let (declared, layout) = read_declared(o, &dj_path, problems)?;
    let ending = layout.ending.as_str();
    let one_channel_per_file = ending.ends_with(".nii") || ending.ends_with(".nii.gz");
    let channel_files = |sub: &str, id: &str, found: Option<&BTreeSet<usize>>| -> Vec<PathBuf> {
        let n = match found {
            Some(f) if !one_channel_per_file => f.iter().max().map(|m| m + 1).unwrap_or(1),
            _ => layout.n_channels,
        };
        (0..n).map(|k| dir.join(sub).join(naming::channel_file_name(id, k, ending))).collect()
    };
    let train_ids: Vec<String> = if layout.is_v1 {
        v1_training_ids(o, &dj_path, problems)
    } else {
        list_channel_cases(dir, "imagesTr", ending, problems)?.into_keys().collect()
    };
    let found_tr = list_channel_cases(dir, "imagesTr", ending, &mut Vec::new())?;
    let mut train = Vec::new();
    for id in train_ids {
        let images = channel_files("imagesTr", &id, found_tr.get(&id));
        let mask = dir.join("labelsTr").join(naming::label_file_name(&id, ending));
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
    for (id, found) in list_channel_cases(dir, "imagesTs", ending, problems)? {
        let images = channel_files("imagesTs", &id, Some(&found));
        if let Some(f) = images.iter().find(|f| !f.is_file()) {
            problems.push(format!("test case {id}: {} is missing", f.display()));
            continue;
        }
        test.push(CaseSrc { id: sanitize_case_id(&id), images, mask: None });
    }
    Ok((train, test, declared))
}
