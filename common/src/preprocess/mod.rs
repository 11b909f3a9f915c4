//! Preprocessing, nnU-Net v2's `DefaultPreprocessor.run_case_npy` (SPEC §5): transpose -> crop to
//! nonzero -> normalize -> resample, then foreground locations for oversampling.
//!
//! [`preprocess_case`] is a pure function of (plans, case arrays): any worker can run it, and the
//! inference engine runs it with `seg = None` on raw test images. [`preprocess_dataset`] runs it over
//! a dataset (or a shard of it) on a bounded thread pool and writes the storage contract of
//! ARCHITECTURE.md ("Preprocessed storage"): `{case}.npy` (float32 C,Z,X,Y), `{case}_seg.npy` (int8
//! 1,Z,X,Y, -1 outside the nonzero mask), `{case}.json` (properties with the sha256 of both arrays,
//! written last: its presence marks the case complete, so an interrupted run resumes where it
//! stopped). NIfTI volumes are stored whole; the 2D loader picks slices along Z, as nnU-Net's 2d
//! configuration does. [`plan_dataset`] = verify + fingerprint + plan + splits.
pub mod resample;

pub use resample::{resample_data_to_shape, separate_z_axis};

use crate::case::{CaseFiles, CaseProperties};
use crate::dataset_json::DatasetJson;
use crate::fingerprint::{self, Fingerprint, RawCase};
use crate::imageio::{self, ImageData};
use crate::paths::DatasetDirs;
use crate::plans::{Configuration2d, IntensityProperties, Normalization, Plans};
use crate::splits::NumpyRandomState;
use crate::{error, hash, npy, Error, Result};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Result of [`crop_to_nonzero`].
#[derive(Debug, Clone)]
pub struct Cropped {
    /// (C, Z, X, Y) cropped data.
    pub data: Vec<f32>,
    pub data_shape: [usize; 4],
    /// (Z, X, Y) cropped seg; -1 where the seg was 0 outside the (hole-filled) nonzero mask, or, when
    /// no seg was given, 0 inside the mask and -1 outside.
    pub seg: Vec<i16>,
    /// Half-open [lo, hi) per spatial axis.
    pub bbox: [[usize; 2]; 3],
    pub shape_before: [usize; 3],
}

/// `create_nonzero_mask`: OR over channels of `!= 0`, then `scipy.ndimage.binary_fill_holes` (3D,
/// 6-connectivity, the array border counts as outside — so a (1, H, W) image gets no holes filled:
/// every pixel touches the border along Z).
pub fn nonzero_mask(data: &[f32], shape: [usize; 4]) -> Vec<bool> {
    let [c, z, x, y] = shape;
    let n = z * x * y;
    let mut mask = vec![false; n];
    for ch in 0..c {
        for (m, &v) in mask.iter_mut().zip(&data[ch * n..(ch + 1) * n]) {
            *m |= v != 0.0;
        }
    }
    fill_holes(&mut mask, [z, x, y]);
    mask
}

/// `binary_fill_holes` with the default (cross) structure.
pub fn fill_holes(mask: &mut [bool], shape: [usize; 3]) {
    let [z, x, y] = shape;
    let mut outside = vec![false; mask.len()];
    let mut stack = Vec::new();
    let idx = |a: usize, b: usize, c: usize| (a * x + b) * y + c;
    for a in 0..z {
        for b in 0..x {
            for c in 0..y {
                let on_border = a == 0 || a + 1 == z || b == 0 || b + 1 == x || c == 0 || c + 1 == y;
                let i = idx(a, b, c);
                if on_border && !mask[i] {
                    outside[i] = true;
                    stack.push((a, b, c));
                }
            }
        }
    }
    while let Some((a, b, c)) = stack.pop() {
        let mut visit = |a2: usize, b2: usize, c2: usize, stack: &mut Vec<(usize, usize, usize)>| {
            let j = idx(a2, b2, c2);
            if !mask[j] && !outside[j] {
                outside[j] = true;
                stack.push((a2, b2, c2));
            }
        };
        if a > 0 {
            visit(a - 1, b, c, &mut stack)
        }
        if a + 1 < z {
            visit(a + 1, b, c, &mut stack)
        }
        if b > 0 {
            visit(a, b - 1, c, &mut stack)
        }
        if b + 1 < x {
            visit(a, b + 1, c, &mut stack)
        }
        if c > 0 {
            visit(a, b, c - 1, &mut stack)
        }
        if c + 1 < y {
            visit(a, b, c + 1, &mut stack)
        }
    }
    for (m, o) in mask.iter_mut().zip(&outside) {
        *m = !*o;
    }
}

/// `crop_to_nonzero(data, seg)` (SPEC §5.1). An all-zero image keeps its full extent.
pub fn crop_to_nonzero(image: &ImageData, seg: Option<&ImageData>) -> Cropped {
    let [c, z, x, y] = image.shape;
    let mask = nonzero_mask(&image.data, image.shape);
    let mut lo = [usize::MAX; 3];
    let mut hi = [0usize; 3];
    for a in 0..z {
        for b in 0..x {
            for cc in 0..y {
                if mask[(a * x + b) * y + cc] {
                    for (d, v) in [a, b, cc].into_iter().enumerate() {
                        lo[d] = lo[d].min(v);
                        hi[d] = hi[d].max(v + 1);
                    }
                }
            }
        }
    }
    if lo[0] == usize::MAX {
        lo = [0; 3];
        hi = [z, x, y];
    }
    let ns = [hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]];
    let n = ns[0] * ns[1] * ns[2];
    let mut data = Vec::with_capacity(c * n);
    let mut segc = Vec::with_capacity(n);
    for ch in 0..c {
        for a in lo[0]..hi[0] {
            for b in lo[1]..hi[1] {
                let s = ((ch * z + a) * x + b) * y;
                data.extend_from_slice(&image.data[s + lo[2]..s + hi[2]]);
            }
        }
    }
    for a in lo[0]..hi[0] {
        for b in lo[1]..hi[1] {
            for cc in lo[2]..hi[2] {
                let i = (a * x + b) * y + cc;
                let inside = mask[i];
                let v = match seg {
                    Some(s) => {
                        let l = s.data[i] as i16;
                        if l == 0 && !inside {
                            -1
                        } else {
                            l
                        }
                    }
                    None => {
                        if inside {
                            0
                        } else {
                            -1
                        }
                    }
                };
                segc.push(v);
            }
        }
    }
    Cropped {
        data,
        data_shape: [c, ns[0], ns[1], ns[2]],
        seg: segc,
        bbox: [[lo[0], hi[0]], [lo[1], hi[1]], [lo[2], hi[2]]],
        shape_before: [z, x, y],
    }
}

/// Normalizes one channel in place (SPEC §5.2, `default_normalization_schemes.py`). Statistics are
/// accumulated in f64 and applied in f32, as numpy does with a float32 scalar.
pub fn normalize_channel(
    x: &mut [f32],
    seg: &[i16],
    scheme: Normalization,
    use_mask: bool,
    props: Option<&IntensityProperties>,
) -> Result<()> {
    const EPS: f64 = 1e-8;
    match scheme {
        Normalization::ZScore => {
            let sel = |i: usize| !use_mask || seg[i] >= 0;
            let (mut n, mut s) = (0usize, 0f64);
            for (i, &v) in x.iter().enumerate() {
                if sel(i) {
                    n += 1;
                    s += v as f64;
                }
            }
            if n == 0 {
                return Ok(());
            }
            let mean = s / n as f64;
            let mut ss = 0f64;
            for (i, &v) in x.iter().enumerate() {
                if sel(i) {
                    ss += (v as f64 - mean).powi(2);
                }
            }
            let std = (ss / n as f64).sqrt();
            let (m32, s32) = (mean as f32, std.max(EPS) as f32);
            for (i, v) in x.iter_mut().enumerate() {
                if sel(i) {
                    *v = (*v - m32) / s32;
                }
            }
        }
        Normalization::Ct => {
            let p =
                props.ok_or_else(|| Error::Invalid("CTNormalization needs the fingerprint's foreground intensity properties".into()))?;
            let (lo, hi) = (p.percentile_00_5 as f32, p.percentile_99_5 as f32);
            let (m, s) = (p.mean as f32, p.std.max(EPS) as f32);
            for v in x.iter_mut() {
                *v = (v.clamp(lo, hi) - m) / s;
            }
        }
        Normalization::NoNorm => {}
        Normalization::RescaleTo01 => {
            let mn = x.iter().cloned().fold(f32::MAX, f32::min);
            for v in x.iter_mut() {
                *v -= mn;
            }
            let mx = x.iter().cloned().fold(f32::MIN, f32::max).max(EPS as f32);
            for v in x.iter_mut() {
                *v /= mx;
            }
        }
        Normalization::RgbTo01 => {
            if x.iter().any(|&v| !(0.0..=255.0).contains(&v)) {
                return Err(Error::Invalid(
                    "RGBTo01Normalization (channel name 'rgb_to_0_1') needs values in 0..=255; this image has values outside it — rename the channel (e.g. 'R') to use z-score".into(),
                ));
            }
            for v in x.iter_mut() {
                *v /= 255.0;
            }
        }
    }
    Ok(())
}

/// What to collect foreground locations for: one label, or a union (the ignore-label region).
#[derive(Debug, Clone, PartialEq)]
pub enum LocationClass {
    Label(i64),
    Union(Vec<i64>),
}

impl LocationClass {
    /// The key nnU-Net's pickle would use, as a string: `"1"` or `"(-1, 0, 1)"`.
    pub fn key(&self) -> String {
        match self {
            LocationClass::Label(l) => l.to_string(),
            LocationClass::Union(ls) => format!("({})", ls.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(", ")),
        }
    }
    fn labels(&self) -> Vec<i64> {
        match self {
            LocationClass::Label(l) => vec![*l],
            LocationClass::Union(v) => v.clone(),
        }
    }
}

/// `_sample_foreground_locations` (SPEC §5.4): per class, `k = max(min(10000, n), ceil(0.01 n))`
/// coordinates without replacement with one `RandomState(1234)` shared across classes; coordinates
/// (0, z, x, y) in C order within each label, labels of a union in sorted order.
pub fn sample_foreground_locations(seg: &[i16], shape_zxy: [usize; 3], classes: &[LocationClass]) -> BTreeMap<String, Vec<[i64; 4]>> {
    let mut rs = NumpyRandomState::new(1234);
    let mut per_label: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    let wanted: std::collections::BTreeSet<i64> = classes.iter().flat_map(|c| c.labels()).collect();
    for (i, &l) in seg.iter().enumerate() {
        if wanted.contains(&(l as i64)) {
            per_label.entry(l as i64).or_default().push(i);
        }
    }
    let [_, x, y] = shape_zxy;
    let mut out = BTreeMap::new();
    for c in classes {
        // np.argsort(kind='stable') of the labels: ranges in ascending label order
        let mut labs = c.labels();
        labs.sort();
        labs.dedup();
        let ranges: Vec<&Vec<usize>> = labs.iter().filter_map(|l| per_label.get(l)).filter(|v| !v.is_empty()).collect();
        let total: usize = ranges.iter().map(|r| r.len()).sum();
        if total == 0 {
            out.insert(c.key(), Vec::new());
            continue;
        }
        let k = total.min(10000).max((total as f64 * 0.01).ceil() as usize);
        let picks = rs.choice_without_replacement(total, k);
        let locs = picks
            .into_iter()
            .map(|mut off| {
                let mut r = 0;
                while off >= ranges[r].len() {
                    off -= ranges[r].len();
                    r += 1;
                }
                let i = ranges[r][off];
                [0, (i / (x * y)) as i64, ((i / y) % x) as i64, (i % y) as i64]
            })
            .collect();
        out.insert(c.key(), locs);
    }
    out
}

/// Permutes the spatial axes of a (C, Z, X, Y) array: output axis d is input axis `perm[d]`.
pub fn transpose_spatial<T: Copy>(data: &[T], shape: [usize; 4], perm: &[usize]) -> (Vec<T>, [usize; 4]) {
    if perm == [0, 1, 2] {
        return (data.to_vec(), shape);
    }
    let sp = [shape[1], shape[2], shape[3]];
    let ns = [sp[perm[0]], sp[perm[1]], sp[perm[2]]];
    let st = [sp[1] * sp[2], sp[2], 1];
    let n = sp[0] * sp[1] * sp[2];
    let mut out = Vec::with_capacity(data.len());
    for c in 0..shape[0] {
        for a in 0..ns[0] {
            for b in 0..ns[1] {
                for d in 0..ns[2] {
                    let mut src = [0usize; 3];
                    src[perm[0]] = a;
                    src[perm[1]] = b;
                    src[perm[2]] = d;
                    out.push(data[c * n + src[0] * st[0] + src[1] * st[1] + src[2] * st[2]]);
                }
            }
        }
    }
    (out, [shape[0], ns[0], ns[1], ns[2]])
}

/// (data (C,Z,X,Y) float32, its shape, seg int8 (1,Z,X,Y), properties): what [`preprocess_case`] returns.
pub type PreprocessedCase = (Vec<f32>, [usize; 4], Vec<i8>, CaseProperties);

/// Preprocesses one case (SPEC §5). `image` and `seg` are as read (C, Z, X, Y), before transpose.
/// Returns (data (C,Z,X,Y) float32, its shape, seg int8 (1,Z,X,Y), properties). With `seg = None`
/// (inference) the returned seg is the nonzero mask (0 inside, -1 outside) and no class locations
/// are sampled. `data_sha256`/`seg_sha256` are left empty (filled when written).
pub fn preprocess_case(
    plans: &Plans,
    config: &Configuration2d,
    dataset_json: &DatasetJson,
    image: ImageData,
    seg: Option<ImageData>,
) -> Result<PreprocessedCase> {
    if let Some(s) = &seg {
        if s.shape[1..] != image.shape[1..] {
            return Err(Error::Invalid(format!(
                "segmentation shape {:?} differs from image shape {:?}; run `nnunet verify` on the dataset",
                &s.shape[1..],
                &image.shape[1..]
            )));
        }
    }
    let nch = config.normalization_schemes.len();
    if image.shape[0] != nch {
        return Err(Error::Invalid(format!(
            "image has {} channel(s) but the plans expect {nch} (dataset.json channel_names)",
            image.shape[0]
        )));
    }
    let fwd = &plans.transpose_forward;
    let geometry = image.geometry.clone();
    let spacing: Vec<f64> = fwd.iter().map(|&i| geometry.spacing[i]).collect();
    let (data, shape) = transpose_spatial(&image.data, image.shape, fwd);
    let image_t = ImageData { shape, data, geometry: geometry.clone() };
    drop(image);
    let seg_t = seg.map(|s| {
        let (d, sh) = transpose_spatial(&s.data, s.shape, fwd);
        ImageData { shape: sh, data: d, geometry: s.geometry }
    });
    let has_seg = seg_t.is_some();
    let crop = crop_to_nonzero(&image_t, seg_t.as_ref());
    drop(image_t);
    drop(seg_t);
    let Cropped { mut data, data_shape, seg: mut segc, bbox, shape_before } = crop;

    let mut target = vec![spacing[0]];
    target.extend_from_slice(&config.spacing);
    let sz = [data_shape[1], data_shape[2], data_shape[3]];
    let ns = crate::planning::compute_new_shape(&sz, &spacing, &target);
    let new_shape = [ns[0], ns[1], ns[2]];

    let n = sz.iter().product::<usize>();
    for c in 0..nch {
        let props = plans.foreground_intensity_properties_per_channel.get(&c.to_string());
        normalize_channel(&mut data[c * n..(c + 1) * n], &segc, config.normalization_schemes[c], config.use_mask_for_norm[c], props)?;
    }
    if new_shape != sz {
        let order = config.resampling_fn_data_kwargs.order;
        data = resample_data_to_shape(&data, data_shape, new_shape, &spacing, &target, order, false);
        let segf: Vec<f32> = segc.iter().map(|&v| v as f32).collect();
        let order_s = config.resampling_fn_seg_kwargs.order;
        segc = resample_data_to_shape(&segf, [1, sz[0], sz[1], sz[2]], new_shape, &spacing, &target, order_s, true)
            .into_iter()
            .map(|v| v as i16)
            .collect();
    }
    let out_shape = [nch, new_shape[0], new_shape[1], new_shape[2]];

    let mut class_locations = BTreeMap::new();
    if has_seg {
        let mut classes: Vec<LocationClass> = dataset_json.foreground_labels().into_iter().map(LocationClass::Label).collect();
        if dataset_json.ignore_label().is_some() {
            let mut all = vec![-1];
            all.extend(dataset_json.label_values());
            classes.push(LocationClass::Union(all));
        }
        class_locations = sample_foreground_locations(&segc, new_shape, &classes);
    }
    if let Some(&bad) = segc.iter().find(|&&v| !(-128..=127).contains(&v)) {
        return Err(Error::Invalid(format!("label {bad} does not fit the int8 seg storage (labels must be < 128)")));
    }
    let seg8: Vec<i8> = segc.into_iter().map(|v| v as i8).collect();
    let props = CaseProperties {
        spacing,
        shape_before_cropping: shape_before.to_vec(),
        bbox_used_for_cropping: bbox.to_vec(),
        shape_after_cropping_and_before_resampling: sz.to_vec(),
        class_locations,
        raw_geometry: Some(geometry),
        data_sha256: String::new(),
        seg_sha256: String::new(),
    };
    Ok((data, out_shape, seg8, props))
}

/// Puts a (C, Z, X, Y) array defined on the cropped region back into `shape_before_cropping`
/// (transposed axes) at `bbox`, filling outside with `fill[c]` per channel (inference export:
/// probabilities get background = 1, other classes 0; segmentations 0).
pub fn revert_cropping(data: &[f32], shape_czxy: [usize; 4], props: &CaseProperties, fill: &[f32]) -> Result<(Vec<f32>, [usize; 4])> {
    let b = &props.bbox_used_for_cropping;
    let full = &props.shape_before_cropping;
    let inner = [b[0][1] - b[0][0], b[1][1] - b[1][0], b[2][1] - b[2][0]];
    if inner != [shape_czxy[1], shape_czxy[2], shape_czxy[3]] || fill.len() != shape_czxy[0] {
        return Err(Error::Invalid(format!(
            "revert_cropping: array {:?} does not match bbox {:?} (or {} fill values for {} channels)",
            shape_czxy,
            b,
            fill.len(),
            shape_czxy[0]
        )));
    }
    let (z, x, y) = (full[0], full[1], full[2]);
    let mut out = Vec::with_capacity(shape_czxy[0] * z * x * y);
    for (c, &f) in fill.iter().enumerate() {
        let base = out.len();
        out.resize(base + z * x * y, f);
        for a in 0..inner[0] {
            for bb in 0..inner[1] {
                let src = ((c * inner[0] + a) * inner[1] + bb) * inner[2];
                let dst = base + ((a + b[0][0]) * x + bb + b[1][0]) * y + b[2][0];
                out[dst..dst + inner[2]].copy_from_slice(&data[src..src + inner[2]]);
            }
        }
    }
    Ok((out, [shape_czxy[0], z, x, y]))
}

/// Runs `f` over `items` on `n_threads` threads, at most one item in flight per thread (peak memory
/// is bounded by the thread count, not the dataset size), results in input order. Stops at the
/// first error and returns it. Shows an indicatif bar on a TTY, periodic lines otherwise.
pub fn run_parallel<T: Sync, R: Send>(
    items: &[T],
    n_threads: usize,
    show_progress: bool,
    what: &str,
    f: impl Fn(&T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let n = items.len();
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..n).map(|_| None).collect());
    let first_err: Mutex<Option<Error>> = Mutex::new(None);
    let bar = if show_progress && std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(n as u64);
        b.set_message(what.to_string());
        b.set_style(indicatif::ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} [{elapsed_precise}<{eta_precise}]").unwrap());
        Some(b)
    } else {
        None
    };
    let start = Instant::now();
    let last_line = Mutex::new(Instant::now());
    std::thread::scope(|s| {
        for _ in 0..n_threads.max(1).min(n.max(1)) {
            s.spawn(|| loop {
                if failed.load(Ordering::Relaxed) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                match f(&items[i]) {
                    Ok(r) => results.lock().unwrap()[i] = Some(r),
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        first_err.lock().unwrap().get_or_insert(e);
                        return;
                    }
                }
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(b) = &bar {
                    b.inc(1);
                } else if show_progress {
                    let mut l = last_line.lock().unwrap();
                    if l.elapsed().as_secs_f64() >= 5.0 || d == n {
                        *l = Instant::now();
                        eprintln!("{what}: {d}/{n} cases ({:.1} s)", start.elapsed().as_secs_f64());
                    }
                }
            });
        }
    });
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if let Some(e) = first_err.into_inner().unwrap() {
        return Err(e);
    }
    Ok(results.into_inner().unwrap().into_iter().map(|r| r.expect("every item processed")).collect())
}

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

/// Removes stale temporary files (`.{name}.tmp-{pid}`) left by an interrupted run. Workers may
/// share the folder (the coordinator shards cases), so a temp file is only stale when its writer's
/// pid is not alive on this host and it has not been touched for 5 minutes.
fn remove_stale_temps(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((_, pid)) = name.rsplit_once(".tmp-") else { continue };
        if !name.starts_with('.') {
            continue;
        }
        let alive = pid.parse::<u32>().map(|p| Path::new(&format!("/proc/{p}")).exists()).unwrap_or(false);
        let age = e.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).map(|d| d.as_secs()).unwrap_or(0);
        if !alive && age >= 300 {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// What the preprocessed arrays depend on: the 2d configuration, the transpose and the
/// intensity properties (CT normalization). Hashed into `nnUNetPlans_2d/.plans_sha256`.
fn cfg_fingerprint(plans: &Plans, config: &Configuration2d) -> Result<String> {
    let v = serde_json::json!({
        "configuration": config,
        "transpose_forward": plans.transpose_forward,
        "intensity": plans.foreground_intensity_properties_per_channel,
    });
    let bytes = serde_json::to_vec(&v).map_err(|e| Error::Invalid(format!("cannot hash the plans: {e}")))?;
    Ok(hash::sha256_bytes(&bytes))
}

/// Resume must not mix cases preprocessed under different plans: when the plans changed (or the
/// folder predates the marker) every case file is removed, as nnU-Net removes the folder on each run.
fn invalidate_if_plans_changed(data_dir: &Path, digest: &str) -> Result<()> {
    let marker = data_dir.join(".plans_sha256");
    let old = std::fs::read_to_string(&marker).ok();
    if old.as_deref().map(str::trim) == Some(digest) {
        return Ok(());
    }
    let rd = std::fs::read_dir(data_dir).map_err(|e| Error::io(data_dir, e))?;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".npy") || name.ends_with(".json") {
            std::fs::remove_file(e.path()).map_err(|err| Error::io(e.path(), err))?;
        }
    }
    hash::write_atomic(&marker, digest.as_bytes())
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

fn copy_if_changed(src: &Path, dst: &Path) -> Result<()> {
    let same = match (std::fs::metadata(src), std::fs::metadata(dst)) {
        (Ok(a), Ok(b)) => a.len() == b.len(),
        _ => false,
    };
    if !same {
        let bytes = std::fs::read(src).map_err(|e| Error::io(src, e))?;
        hash::write_atomic(dst, &bytes)?;
    }
    Ok(())
}

/// Preprocesses the dataset (or the shard `cases`) into `dirs.data_dir()`, copies the labels to
/// `gt_segmentations/` and `dataset.json` next to the plans. Needs `nnUNetPlans.json` (run
/// [`plan_dataset`] first). Complete cases are skipped; stale temporary files are removed.
pub fn preprocess_dataset(dirs: &DatasetDirs, n_threads: usize, cases: Option<&[String]>, show_progress: bool) -> Result<PreprocessReport> {
    let start = Instant::now();
    let plans_file = dirs.plans_file();
    if !plans_file.is_file() {
        return Err(Error::Invalid(format!("{} does not exist; run `nnunet plan {}` first", plans_file.display(), dirs.name)));
    }
    let plans = Plans::load(&plans_file)?;
    let config = plans.config_2d()?;
    let dj = DatasetJson::load(&dirs.raw.join("dataset.json"))?;
    let mut all = fingerprint::raw_training_cases(&dirs.raw, &dj)?;
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
    invalidate_if_plans_changed(&data_dir, &cfg_fingerprint(&plans, &config)?)?;
    remove_stale_temps(&data_dir);
    let gt = dirs.gt_dir();
    std::fs::create_dir_all(&gt).map_err(|e| Error::io(&gt, e))?;
    remove_stale_temps(&gt);
    let todo: Vec<&RawCase> = all.iter().filter(|c| !CaseFiles::new(&data_dir, &c.id).is_complete()).collect();
    let n_skipped = all.len() - todo.len();
    run_parallel(&todo, n_threads, show_progress, "preprocessing", |c| {
        preprocess_and_write_case(&plans, &config, &dj, c, &data_dir)?;
        let name = c.label.file_name().unwrap();
        copy_if_changed(&c.label, &gt.join(name))
    })?;
    for c in &all {
        copy_if_changed(&c.label, &gt.join(c.label.file_name().unwrap()))?;
    }
    copy_if_changed(&dirs.raw.join("dataset.json"), &dirs.preprocessed.join("dataset.json"))?;
    Ok(PreprocessReport { n_cases: all.len(), n_processed: todo.len(), n_skipped, wall_s: start.elapsed().as_secs_f64() })
}

/// The structural checks planning cannot run without (SPEC §2 items 3-4): every case has a label
/// and the case count equals `numTraining`. The full check is `nnunet verify`.
pub fn basic_verify(raw: &Path, dj: &DatasetJson) -> Result<()> {
    let cases = fingerprint::raw_training_cases(raw, dj)?;
    let mut problems = Vec::new();
    if cases.len() != dj.num_training {
        problems.push(format!(
            "Did not find the expected number of training cases ({}). Found {} instead (dataset.json numTraining vs {}/imagesTr)",
            dj.num_training,
            cases.len(),
            raw.display()
        ));
    }
    let missing: Vec<&str> = cases.iter().filter(|c| !c.label.is_file()).map(|c| c.id.as_str()).collect();
    if !missing.is_empty() {
        problems.push(format!("not all training cases have a label file in labelsTr. Fix that. Missing: {missing:?}"));
    }
    let nch = dj.num_channels();
    for c in &cases {
        if c.images.len() > nch {
            problems.push(format!("case {} has {} channel files but dataset.json declares {nch} channel(s)", c.id, c.images.len()));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Verify(problems))
    }
}

/// Verify + fingerprint + plan + splits: writes `dataset_fingerprint.json`, `nnUNetPlans.json`,
/// `splits_final.json` (respecting a user file in the raw folder) and the `dataset.json` copy.
pub fn plan_dataset(dirs: &DatasetDirs, gpu_memory_target_gb: f64, n_threads: usize, show_progress: bool) -> Result<Plans> {
    crate::verify::verify_dataset(&dirs.raw)?.into_result()?;
    let dj = DatasetJson::load(&dirs.raw.join("dataset.json"))?;
    std::fs::create_dir_all(&dirs.preprocessed).map_err(|e| Error::io(&dirs.preprocessed, e))?;
    let fp: Fingerprint = fingerprint::extract(&dirs.raw, n_threads, show_progress)?;
    fp.save(&dirs.fingerprint_file())?;
    let plans = crate::planning::plan_2d(&fp, &dj, &dirs.name, gpu_memory_target_gb)?;
    plans.save(&dirs.plans_file())?;
    // Settle the preprocessed folder for these plans now, while planning is the only writer:
    // shards preprocessed concurrently afterwards (by several workers) then all find the marker.
    let data_dir = dirs.data_dir();
    std::fs::create_dir_all(&data_dir).map_err(|e| Error::io(&data_dir, e))?;
    invalidate_if_plans_changed(&data_dir, &cfg_fingerprint(&plans, &plans.config_2d()?)?)?;
    let ids: Vec<String> = fingerprint::raw_training_cases(&dirs.raw, &dj)?.into_iter().map(|c| c.id).collect();
    crate::splits::load_or_create(&dirs.preprocessed, &dirs.raw, &ids)?;
    copy_if_changed(&dirs.raw.join("dataset.json"), &dirs.preprocessed.join("dataset.json"))?;
    Ok(plans)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imageio::Geometry;

    fn img(shape: [usize; 4], data: Vec<f32>) -> ImageData {
        ImageData { shape, data, geometry: Geometry { spacing: [999.0, 1.0, 1.0], ..Default::default() } }
    }

    #[test]
    fn crop_marks_outside_and_keeps_bbox() {
        // 1x4x4, nonzero block at rows 1..3, cols 1..4
        let mut d = vec![0.0; 16];
        for r in 1..3 {
            for c in 1..4 {
                d[r * 4 + c] = 1.0;
            }
        }
        d[2 * 4 + 2] = 0.0; // a hole: not filled in a (1, H, W) image
        let seg = img([1, 1, 4, 4], vec![0.0; 16]);
        let c = crop_to_nonzero(&img([1, 1, 4, 4], d), Some(&seg));
        assert_eq!(c.bbox, [[0, 1], [1, 3], [1, 4]]);
        assert_eq!(c.data_shape, [1, 1, 2, 3]);
        assert_eq!(c.seg, vec![0, 0, 0, 0, -1, 0]);
    }

    #[test]
    fn holes_are_filled_in_3d() {
        let mut m = vec![true; 27];
        m[13] = false; // centre of a 3x3x3 cube
        m[0] = false; // a corner touching the border
        fill_holes(&mut m, [3, 3, 3]);
        assert!(m[13] && !m[0]);
    }

    #[test]
    fn zscore_with_and_without_mask() {
        let mut x = vec![1.0f32, 2.0, 3.0, 0.0];
        normalize_channel(&mut x, &[0, 0, 0, -1], Normalization::ZScore, true, None).unwrap();
        let s = (2.0f64 / 3.0).sqrt() as f32;
        assert_eq!(x, vec![-1.0 / s, 0.0, 1.0 / s, 0.0]);
        let mut y = vec![1.0f32, 3.0];
        normalize_channel(&mut y, &[0, -1], Normalization::ZScore, false, None).unwrap();
        assert_eq!(y, vec![-1.0, 1.0]);
        let mut r = vec![0.0f32, 255.0, 300.0];
        assert!(normalize_channel(&mut r, &[0, 0, 0], Normalization::RgbTo01, false, None).is_err());
    }

    #[test]
    fn foreground_locations_count_and_lie_on_label() {
        let mut seg = vec![0i16; 2 * 10 * 10];
        for i in (0..200).step_by(3) {
            seg[i] = 1;
        }
        let locs = sample_foreground_locations(&seg, [2, 10, 10], &[LocationClass::Label(1), LocationClass::Label(2)]);
        let l1 = &locs["1"];
        assert_eq!(l1.len(), 67);
        for p in l1 {
            assert_eq!(seg[(p[1] * 100 + p[2] * 10 + p[3]) as usize], 1);
        }
        assert!(locs["2"].is_empty());
    }

    #[test]
    fn revert_cropping_round_trips() {
        let d: Vec<f32> = (0..16).map(|v| v as f32 + 1.0).collect();
        let mut d2 = d.clone();
        d2[0] = 0.0;
        d2[3] = 0.0;
        let c = crop_to_nonzero(&img([1, 1, 4, 4], d2.clone()), None);
        let props = CaseProperties {
            spacing: vec![999.0, 1.0, 1.0],
            shape_before_cropping: c.shape_before.to_vec(),
            bbox_used_for_cropping: c.bbox.to_vec(),
            shape_after_cropping_and_before_resampling: vec![],
            class_locations: BTreeMap::new(),
            raw_geometry: None,
            data_sha256: String::new(),
            seg_sha256: String::new(),
        };
        let (back, shape) = revert_cropping(&c.data, c.data_shape, &props, &[0.0]).unwrap();
        assert_eq!((back, shape), (d2, [1, 1, 4, 4]));
    }

    #[test]
    fn transpose_permutes_axes() {
        let d: Vec<u8> = (0..6).collect(); // (1, 1, 2, 3)
        let (t, s) = transpose_spatial(&d, [1, 1, 2, 3], &[2, 0, 1]);
        assert_eq!(s, [1, 3, 1, 2]);
        assert_eq!(t, vec![0, 3, 1, 4, 2, 5]);
    }
}
