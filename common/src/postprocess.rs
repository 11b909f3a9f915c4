//! Connected-component postprocessing, chosen on the cross-validation predictions and applied at
//! predict time (SPEC §10.3; `nnunetv2/postprocessing/remove_connected_components.py`,
//! `acvl_utils/morphology/morphology_helper.py`).
//!
//! The only operation is nnU-Net's `remove_all_but_largest_component_from_segmentation`: the
//! voxels of the given labels form one binary mask, its connected components are found with
//! **full connectivity** (`skimage.measure.label(connectivity=None)` = `input.ndim` hops: 26
//! neighbours on the (Z, X, Y) array nnU-Net passes, which is the 8-neighbourhood for a 2D image
//! stored as (1, H, W)), and every component smaller than the largest becomes background. Ties are
//! kept: nnU-Net keeps every component whose size equals the maximum.
//!
//! [`determine_postprocessing`] reproduces nnU-Net's selection: (a) all foreground labels as one
//! mask, accepted iff the foreground-mean Dice strictly improves and no label's mean Dice gets
//! worse; (b) with more than one label, each label on its own, starting from the accepted state,
//! accepted iff that label's mean Dice strictly improves. It writes `postprocessing.json` (nnU-Net's
//! layout) and the postprocessed predictions in `postprocessed/`.
use crate::dataset_json::DatasetJson;
use crate::evaluate::pyjson::{self, Value};
use crate::evaluate::{self, CaseResult, LabelMetrics, Summary};
use crate::imageio::Geometry;
use crate::{metrics, Error, Result};
use rayon::prelude::*;
use std::path::Path;

/// nnU-Net's function name, written to `postprocessing.json`.
pub const LCC_FN_NAME: &str = "remove_all_but_largest_component_from_segmentation";

/// One postprocessing step: keep only the largest connected component of the union of `labels`.
/// `as_list` records whether nnU-Net's kwargs held a list (the all-foreground step) or a single
/// label (the per-label steps), so `postprocessing.json` round-trips.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepLargest {
    pub labels: Vec<i64>,
    pub as_list: bool,
}

impl KeepLargest {
    pub fn all_foreground(labels: &[i64]) -> Self {
        KeepLargest { labels: labels.to_vec(), as_list: true }
    }
    pub fn label(l: i64) -> Self {
        KeepLargest { labels: vec![l], as_list: false }
    }
    /// "keep the largest component of labels [1, 2]".
    pub fn describe(&self) -> String {
        if self.as_list {
            format!("keep the largest connected component of all foreground {:?}", self.labels)
        } else {
            format!("keep the largest connected component of label {}", self.labels[0])
        }
    }
    fn kwargs(&self) -> Value {
        let arg = if self.as_list { Value::List(self.labels.iter().map(|&l| Value::Int(l)).collect()) } else { Value::Int(self.labels[0]) };
        Value::dict([("labels_or_regions".to_string(), arg)])
    }
    /// Applies the step in place to a label volume of shape (Z, X, Y).
    pub fn apply(&self, seg: &mut [i32], shape: [usize; 3]) {
        let labels: Vec<i32> = self.labels.iter().map(|&l| l as i32).collect();
        let mask: Vec<bool> = seg.iter().map(|v| labels.contains(v)).collect();
        let keep = remove_all_but_largest_component(&mask, shape);
        for ((s, &m), &k) in seg.iter_mut().zip(&mask).zip(&keep) {
            if m && !k {
                *s = 0;
            }
        }
    }
}

/// Applies steps in order.
pub fn apply_steps(seg: &mut [i32], shape: [usize; 3], steps: &[KeepLargest]) {
    for s in steps {
        s.apply(seg, shape);
    }
}

/// Labels the connected components of `mask` (shape (Z, X, Y), C order) with full 26-connectivity;
/// returns per-voxel component ids (0 = background, 1.. in raster order of first voxel) and the
/// sizes indexed by id - 1. Same numbering as `skimage.measure.label`.
pub fn label_components(mask: &[bool], shape: [usize; 3]) -> (Vec<u32>, Vec<u64>) {
    let [nz, nx, ny] = shape;
    assert_eq!(mask.len(), nz * nx * ny, "mask length does not match shape");
    let mut ids = vec![0u32; mask.len()];
    let mut sizes = Vec::new();
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || ids[start] != 0 {
            continue;
        }
        let id = sizes.len() as u32 + 1;
        let mut size = 0u64;
        ids[start] = id;
        stack.push(start);
        while let Some(i) = stack.pop() {
            size += 1;
            let (z, x, y) = (i / (nx * ny), (i / ny) % nx, i % ny);
            for dz in -1i64..=1 {
                let zz = z as i64 + dz;
                if zz < 0 || zz >= nz as i64 {
                    continue;
                }
                for dx in -1i64..=1 {
                    let xx = x as i64 + dx;
                    if xx < 0 || xx >= nx as i64 {
                        continue;
                    }
                    for dy in -1i64..=1 {
                        let yy = y as i64 + dy;
                        if yy < 0 || yy >= ny as i64 {
                            continue;
                        }
                        let j = (zz as usize * nx + xx as usize) * ny + yy as usize;
                        if mask[j] && ids[j] == 0 {
                            ids[j] = id;
                            stack.push(j);
                        }
                    }
                }
            }
        }
        sizes.push(size);
    }
    (ids, sizes)
}

/// acvl's `remove_all_but_largest_component`: true where a component of maximal size is (all of
/// them on a tie); all false for an empty mask.
pub fn remove_all_but_largest_component(mask: &[bool], shape: [usize; 3]) -> Vec<bool> {
    let (ids, sizes) = label_components(mask, shape);
    let Some(&max) = sizes.iter().max() else {
        return vec![false; mask.len()];
    };
    let keep: Vec<bool> = sizes.iter().map(|&s| s == max).collect();
    ids.iter().map(|&id| id != 0 && keep[id as usize - 1]).collect()
}

/// Reads `postprocessing.json` (ours or nnU-Net's) into steps. Unknown functions are refused.
pub fn load_postprocessing(path: &Path) -> Result<Vec<KeepLargest>> {
    let v = pyjson::load(path)?;
    let bad = |m: String| Error::format(path, m);
    let fns = match v.get("postprocessing_fns") {
        Some(Value::List(l)) => l.clone(),
        _ => return Err(bad("no 'postprocessing_fns' list; not a postprocessing.json".into())),
    };
    let kwargs = match v.get("postprocessing_kwargs") {
        Some(Value::List(l)) => l.clone(),
        _ => return Err(bad("no 'postprocessing_kwargs' list; not a postprocessing.json".into())),
    };
    if fns.len() != kwargs.len() {
        return Err(bad(format!("{} functions but {} kwargs", fns.len(), kwargs.len())));
    }
    let mut steps = Vec::new();
    for (f, k) in fns.iter().zip(&kwargs) {
        if f.as_str() != Some(LCC_FN_NAME) {
            return Err(bad(format!("unsupported postprocessing function {f:?}; only {LCC_FN_NAME} is known")));
        }
        let step = match k.get("labels_or_regions") {
            Some(Value::Int(l)) => KeepLargest::label(*l),
            Some(Value::List(ls)) => KeepLargest {
                labels: ls
                    .iter()
                    .map(|x| match x {
                        Value::Int(l) => Ok(*l),
                        other => Err(bad(format!("label {other:?} is not an integer (regions are not supported)"))),
                    })
                    .collect::<Result<_>>()?,
                as_list: true,
            },
            other => return Err(bad(format!("bad labels_or_regions {other:?}"))),
        };
        steps.push(step);
    }
    Ok(steps)
}

/// Writes a label volume (Z, X, Y) in the format its file name says, with `geometry` (NIfTI keeps
/// its affine). Natural formats need Z = 1; JPEG is refused (lossy: labels would change).
pub fn write_labels(path: &Path, shape: [usize; 3], labels: &[u16], geometry: &Geometry) -> Result<()> {
    match crate::imageio::detect_format(path) {
        Some("nii") | Some("nii.gz") => crate::imageio::write_nifti_seg(path, shape, labels, geometry),
        Some(f @ ("png" | "tif" | "bmp")) => {
            if shape[0] != 1 {
                return Err(Error::Invalid(format!(
                    "cannot write {}: a {f} mask holds one 2D slice but the prediction has {} slices; use .nii.gz",
                    path.display(),
                    shape[0]
                )));
            }
            crate::imageio::write_seg_natural(path, shape[1], shape[2], labels, f)
        }
        Some(f) => Err(Error::Invalid(format!(
            "cannot write a mask as {f} ({}): the format is lossy or unsupported for masks; use .png or .nii.gz",
            path.display()
        ))),
        None => Err(Error::Invalid(format!("cannot write {}: unknown file ending", path.display()))),
    }
}

fn to_u16(path: &Path, seg: &[i32]) -> Result<Vec<u16>> {
    seg.iter()
        .map(|&v| u16::try_from(v).map_err(|_| Error::format(path, format!("label {v} does not fit a mask file (0..=65535)"))))
        .collect()
}

/// Reads a mask, applies `steps`, writes it to `output` in the same format and geometry.
pub fn postprocess_file(input: &Path, output: &Path, steps: &[KeepLargest]) -> Result<()> {
    let img = crate::imageio::read_seg(input)?;
    let shape = [img.shape[1], img.shape[2], img.shape[3]];
    let mut seg: Vec<i32> = img.data.iter().map(|&v| v.round() as i32).collect();
    apply_steps(&mut seg, shape, steps);
    write_labels(output, shape, &to_u16(input, &seg)?, &img.geometry)
}

/// nnU-Net's `apply_postprocessing_to_folder`: every mask ending with `file_ending` in `input` is
/// postprocessed into `output`. Returns the number of files.
pub fn apply_postprocessing_to_folder(input: &Path, output: &Path, steps: &[KeepLargest], file_ending: &str) -> Result<usize> {
    let files = evaluate::list_files(input, file_ending)?;
    std::fs::create_dir_all(output).map_err(|e| Error::io(output, e))?;
    files.par_iter().map(|f| postprocess_file(&input.join(f), &output.join(f), steps)).collect::<Result<Vec<_>>>()?;
    Ok(files.len())
}

/// Evaluates the predictions in `pred_dir` after applying `steps` in memory.
fn evaluate_with_steps(
    gt_dir: &Path,
    pred_dir: &Path,
    files: &[String],
    labels: &[i64],
    ignore: Option<i64>,
    steps: &[KeepLargest],
) -> Result<Summary> {
    let labels32: Vec<i32> = labels.iter().map(|&l| l as i32).collect();
    let cases = files
        .par_iter()
        .map(|f| {
            let (rs, r) = evaluate::read_labels(&gt_dir.join(f))?;
            let (ps, mut p) = evaluate::read_labels(&pred_dir.join(f))?;
            if rs != ps {
                return Err(Error::format(pred_dir.join(f), format!("shape {ps:?} differs from the reference's {rs:?}")));
            }
            apply_steps(&mut p, ps, steps);
            let conf = metrics::confusion_per_label(&r, &p, &labels32, ignore.map(|l| l as i32));
            Ok(CaseResult {
                reference_file: gt_dir.join(f).display().to_string(),
                prediction_file: pred_dir.join(f).display().to_string(),
                metrics: labels.iter().zip(conf).map(|(&l, c)| (l, LabelMetrics::from(c))).collect(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Summary::from_cases(labels, cases))
}

/// The outcome of [`determine_postprocessing`].
#[derive(Debug, Clone)]
pub struct PostprocessingChoice {
    /// Accepted steps, in application order (empty: postprocessing does not help).
    pub steps: Vec<KeepLargest>,
    /// Evaluation of the predictions as they are.
    pub baseline: Summary,
    /// Evaluation after the accepted steps (equals `baseline` when none was accepted).
    pub postprocessed: Summary,
}

/// Chooses the postprocessing on the (cross-validation) predictions in `pred_dir` against
/// `gt_dir`, as nnU-Net's `determine_postprocessing` does. Writes `pred_dir/summary.json` if it is
/// missing, `pred_dir/postprocessing.json`, and `pred_dir/postprocessed/` (all predictions with the
/// accepted steps applied, plus their `summary.json`).
pub fn determine_postprocessing(pred_dir: &Path, gt_dir: &Path, dataset_json: &DatasetJson) -> Result<PostprocessingChoice> {
    let ending = &dataset_json.file_ending;
    let labels = dataset_json.foreground_labels();
    let ignore = dataset_json.ignore_label();
    let files = evaluate::list_files(pred_dir, ending)?;
    let gt_files = evaluate::list_files(gt_dir, ending)?;
    if gt_files.iter().any(|f| !files.contains(f)) {
        tracing::warn!(
            "not all reference files of {} have a prediction in {}; postprocessing should be determined on the whole dataset",
            gt_dir.display(),
            pred_dir.display()
        );
    }
    let summary_file = pred_dir.join("summary.json");
    let baseline = match summary_file.is_file() {
        true => Summary::load(&summary_file)?,
        false => evaluate::compute_metrics_on_folder(gt_dir, pred_dir, Some(&summary_file), &labels, ending, ignore)?,
    };

    // (a) all foreground as one mask.
    let mut steps = Vec::new();
    let fg_step = KeepLargest::all_foreground(&labels);
    let pp = evaluate_with_steps(gt_dir, pred_dir, &files, &labels, ignore, std::slice::from_ref(&fg_step))?;
    // Python comparisons with NaN are false, so a NaN mean never blocks or enables a step.
    let mut accept = pp.foreground_mean.dice > baseline.foreground_mean.dice;
    if accept {
        for (l, m) in &pp.mean {
            if let Some(b) = baseline.mean.get(l) {
                if m.dice < b.dice {
                    accept = false;
                    break;
                }
            }
        }
    }
    let mut current = baseline.clone();
    if accept {
        tracing::info!(
            "keeping only the largest foreground component improves the mean Dice from {:.5} to {:.5}",
            baseline.foreground_mean.dice,
            pp.foreground_mean.dice
        );
        steps.push(fg_step);
        current = pp;
    }
    // (b) per label, from the accepted state.
    if labels.len() > 1 {
        for &l in &labels {
            let mut candidate = steps.clone();
            candidate.push(KeepLargest::label(l));
            let pp = evaluate_with_steps(gt_dir, pred_dir, &files, &labels, ignore, &candidate)?;
            if pp.mean[&l].dice > current.mean[&l].dice {
                tracing::info!(
                    "keeping only the largest component of label {l} improves its Dice from {:.5} to {:.5}",
                    current.mean[&l].dice,
                    pp.mean[&l].dice
                );
                steps = candidate;
                current = pp;
            }
        }
    }

    // postprocessed/: the predictions with the accepted steps, and their evaluation.
    let out_dir = pred_dir.join("postprocessed");
    if out_dir.is_dir() {
        std::fs::remove_dir_all(&out_dir).map_err(|e| Error::io(&out_dir, e))?;
    }
    apply_postprocessing_to_folder(pred_dir, &out_dir, &steps, ending)?;
    let postprocessed =
        evaluate::compute_metrics_on_folder(gt_dir, &out_dir, Some(&out_dir.join("summary.json")), &labels, ending, ignore)?;

    let fg_and_mean = |s: &Summary| {
        let v = s.to_value();
        Value::dict([
            ("foreground_mean".to_string(), v.get("foreground_mean").cloned().unwrap_or(Value::Null)),
            ("mean".to_string(), v.get("mean").cloned().unwrap_or(Value::Null)),
        ])
    };
    let json = Value::dict([
        ("input_folder".to_string(), fg_and_mean(&baseline)),
        ("postprocessed".to_string(), fg_and_mean(&postprocessed)),
        ("postprocessing_fns".to_string(), Value::List(steps.iter().map(|_| Value::Str(LCC_FN_NAME.into())).collect())),
        ("postprocessing_kwargs".to_string(), Value::List(steps.iter().map(KeepLargest::kwargs).collect())),
    ]);
    pyjson::save(&pred_dir.join("postprocessing.json"), &json)?;
    Ok(PostprocessingChoice { steps, baseline, postprocessed })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(rows: &[&str]) -> (Vec<bool>, [usize; 3]) {
        let nx = rows.len();
        let ny = rows[0].len();
        (rows.iter().flat_map(|r| r.chars().map(|c| c == '#')).collect(), [1, nx, ny])
    }

    #[test]
    fn diagonal_pixels_are_connected_like_skimage_full_connectivity() {
        // skimage.measure.label(a, connectivity=None) on this 2D array gives 2 components:
        // the diagonal chain (4 px) and the lone pixel (1 px); 4-connectivity would give 5.
        let (m, s) = grid(&["#...", ".#..", "..#.", "...#", "#..."]);
        let m: Vec<bool> = {
            let mut m = m;
            m[3 * 4 + 3] = true;
            m
        };
        let (ids, sizes) = label_components(&m, s);
        assert_eq!(sizes, vec![4, 1]);
        assert_eq!(ids[0], 1);
        assert_eq!(ids[4 * 4], 2);
        let keep = remove_all_but_largest_component(&m, s);
        assert!(keep[0] && keep[15] && !keep[16]);
    }

    #[test]
    fn volumes_use_26_neighbourhood_and_ties_keep_all() {
        // voxels (0,0,0) and (1,1,1) touch only at a corner: one component in 3D full connectivity.
        let mut m = vec![false; 8];
        m[0] = true;
        m[7] = true;
        let (_, sizes) = label_components(&m, [2, 2, 2]);
        assert_eq!(sizes, vec![2]);
        // two separate equal components: both kept (acvl keeps every component of maximal size).
        let (m, s) = grid(&["#.#"]);
        assert_eq!(remove_all_but_largest_component(&m, s), vec![true, false, true]);
        assert_eq!(remove_all_but_largest_component(&[false; 3], [1, 1, 3]), vec![false; 3]);
    }

    #[test]
    fn keep_largest_fg_treats_labels_as_one_mask() {
        // labels 1 and 2 touch, forming the largest fg component; the lone 1 is removed.
        let mut seg = vec![1, 2, 0, 0, 1];
        KeepLargest::all_foreground(&[1, 2]).apply(&mut seg, [1, 1, 5]);
        assert_eq!(seg, vec![1, 2, 0, 0, 0]);
        // per label 2 only: its single component stays, labels 1 are untouched.
        let mut seg = vec![2, 0, 2, 2, 1];
        KeepLargest::label(2).apply(&mut seg, [1, 1, 5]);
        assert_eq!(seg, vec![0, 0, 2, 2, 1]);
    }
}
