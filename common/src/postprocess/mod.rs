//! Connected-component postprocessing, chosen on the cross-validation predictions and applied at
//! predict time (`nnunetv2/postprocessing/remove_connected_components.py`,
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
pub mod components;
pub mod determine;

pub use crate::masks::write_labels;
pub use components::{label_components, remove_all_but_largest_component};
pub use determine::{determine_postprocessing, PostprocessingChoice};

use crate::evaluate::pyjson::{self, Value};
use crate::masks;
use crate::{Error, Result};
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
    /// A label, or a region (the union of its labels; written as a list, as nnU-Net writes the tuple).
    pub fn target(t: &crate::labels::LabelOrRegion) -> Self {
        match t {
            crate::labels::LabelOrRegion::Label(l) => Self::label(*l),
            crate::labels::LabelOrRegion::Region(r) => KeepLargest { labels: r.clone(), as_list: true },
        }
    }
    /// "keep the largest component of labels [1, 2]".
    pub fn describe(&self) -> String {
        if self.as_list && self.labels.len() > 1 {
            format!("keep the largest connected component of labels {:?} taken together", self.labels)
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
                        other => Err(bad(format!("label {other:?} is not an integer"))),
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

/// Reads a mask, applies `steps`, writes it to `output` in the same format and geometry.
pub fn postprocess_file(input: &Path, output: &Path, steps: &[KeepLargest]) -> Result<()> {
    let img = crate::imageio::read_seg(input)?;
    let shape = [img.shape[1], img.shape[2], img.shape[3]];
    let mut seg: Vec<i32> = img.data.iter().map(|&v| v.round() as i32).collect();
    apply_steps(&mut seg, shape, steps);
    write_labels(output, shape, &masks::to_u16(input, &seg)?, &img.geometry)
}

/// nnU-Net's `apply_postprocessing_to_folder`: every mask ending with `file_ending` in `input` is
/// postprocessed into `output`. Returns the number of files.
pub fn apply_postprocessing_to_folder(input: &Path, output: &Path, steps: &[KeepLargest], file_ending: &str) -> Result<usize> {
    let files = masks::list_files(input, file_ending)?;
    std::fs::create_dir_all(output).map_err(|e| Error::io(output, e))?;
    files.par_iter().map(|f| postprocess_file(&input.join(f), &output.join(f), steps)).collect::<Result<Vec<_>>>()?;
    Ok(files.len())
}

#[cfg(test)]
mod tests {
    use super::*;

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
