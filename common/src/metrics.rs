//! Per-label confusion counts and overlap metrics, with nnU-Net v2's handling of empty masks
//! (`nnunetv2/evaluation/evaluate_predictions.py::compute_tp_fp_fn_tn`, `compute_metrics`).
//!
//! Segmentations are flat label arrays (`i32`, any shape flattened in the same order). Voxels whose
//! reference value equals the ignore label are excluded from every count. When a label is absent
//! from both the reference and the prediction (TP+FP+FN = 0), Dice and IoU are NaN, and means over
//! cases skip NaNs ([`nanmean`]), exactly as nnU-Net's `np.nanmean` does.

/// Voxel counts of one label in one case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Confusion {
    pub tp: u64,
    pub fp: u64,
    pub fn_: u64,
    pub tn: u64,
}

impl Confusion {
    /// `2TP / (2TP + FP + FN)`; NaN when the label is in neither mask.
    pub fn dice(&self) -> f64 {
        let denom = 2 * self.tp + self.fp + self.fn_;
        if self.tp + self.fp + self.fn_ == 0 {
            f64::NAN
        } else {
            2.0 * self.tp as f64 / denom as f64
        }
    }
    /// `TP / (TP + FP + FN)`; NaN when the label is in neither mask.
    pub fn iou(&self) -> f64 {
        let denom = self.tp + self.fp + self.fn_;
        if denom == 0 {
            f64::NAN
        } else {
            self.tp as f64 / denom as f64
        }
    }
    /// Voxels predicted as the label (`TP + FP`).
    pub fn n_pred(&self) -> u64 {
        self.tp + self.fp
    }
    /// Voxels of the label in the reference (`TP + FN`).
    pub fn n_ref(&self) -> u64 {
        self.tp + self.fn_
    }
    pub fn add(&mut self, other: &Confusion) {
        self.tp += other.tp;
        self.fp += other.fp;
        self.fn_ += other.fn_;
        self.tn += other.tn;
    }
}

/// Confusion counts of every label in `labels` (same order), in one pass over the arrays.
///
/// Panics if the arrays differ in length: callers check shapes first and report the files.
pub fn confusion_per_label(reference: &[i32], prediction: &[i32], labels: &[i32], ignore_label: Option<i32>) -> Vec<Confusion> {
    confusion_of(reference, prediction, labels, ignore_label, |&l, v| v == l)
}

/// Confusion counts of every region (a union of labels, `region_or_label_to_mask`), same order;
/// a region of one label gives [`confusion_per_label`]'s counts.
pub fn confusion_per_region(reference: &[i32], prediction: &[i32], regions: &[Vec<i32>], ignore_label: Option<i32>) -> Vec<Confusion> {
    confusion_of(reference, prediction, regions, ignore_label, |reg, v| reg.contains(&v))
}

/// One pass over the arrays counting, for each class, where `is_in(class, value)` holds in the
/// reference and/or the prediction; voxels whose reference is the ignore label are left out.
fn confusion_of<C>(
    reference: &[i32],
    prediction: &[i32],
    classes: &[C],
    ignore_label: Option<i32>,
    is_in: impl Fn(&C, i32) -> bool,
) -> Vec<Confusion> {
    assert_eq!(reference.len(), prediction.len(), "reference and prediction must have the same number of voxels");
    let mut out = vec![Confusion::default(); classes.len()];
    let mut n_used: u64 = 0;
    for (&r, &p) in reference.iter().zip(prediction) {
        if ignore_label == Some(r) {
            continue;
        }
        n_used += 1;
        for (c, class) in out.iter_mut().zip(classes) {
            match (is_in(class, r), is_in(class, p)) {
                (true, true) => c.tp += 1,
                (false, true) => c.fp += 1,
                (true, false) => c.fn_ += 1,
                (false, false) => {}
            }
        }
    }
    // TN is what remains of the used voxels; counting it directly would cost a branch per class.
    for c in &mut out {
        c.tn = n_used - c.tp - c.fp - c.fn_;
    }
    out
}

/// Mean over the non-NaN values; NaN when there are none (numpy's `nanmean` of an all-NaN or empty
/// list, which nnU-Net writes as `NaN`).
pub fn nanmean(values: &[f64]) -> f64 {
    let (sum, n) = values.iter().filter(|v| !v.is_nan()).fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        f64::NAN
    } else {
        sum / n as f64
    }
}

/// Plain mean (NaN propagates), numpy's `np.mean`; NaN for an empty list.
pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_dice_and_iou_by_hand() {
        // reference: label 1 at 0,1,2; label 2 at 5. prediction: label 1 at 1,2,3; label 2 nowhere.
        let r = [1, 1, 1, 0, 0, 2, 0, 0];
        let p = [0, 1, 1, 1, 0, 0, 0, 0];
        let c = confusion_per_label(&r, &p, &[1, 2], None);
        assert_eq!(c[0], Confusion { tp: 2, fp: 1, fn_: 1, tn: 4 });
        assert_eq!(c[0].dice(), 4.0 / 6.0);
        assert_eq!(c[0].iou(), 2.0 / 4.0);
        assert_eq!((c[0].n_pred(), c[0].n_ref()), (3, 3));
        // reference non-empty, prediction empty: Dice 0, not NaN
        assert_eq!(c[1], Confusion { tp: 0, fp: 0, fn_: 1, tn: 7 });
        assert_eq!(c[1].dice(), 0.0);
        assert_eq!(c[1].iou(), 0.0);
    }

    #[test]
    fn both_empty_is_nan_and_skipped_by_nanmean() {
        let c = confusion_per_label(&[0, 0, 0], &[0, 0, 0], &[1], None);
        assert_eq!(c[0], Confusion { tp: 0, fp: 0, fn_: 0, tn: 3 });
        assert!(c[0].dice().is_nan() && c[0].iou().is_nan());
        assert_eq!(nanmean(&[f64::NAN, 0.5, 1.0]), 0.75);
        assert!(nanmean(&[f64::NAN]).is_nan());
        assert!(mean(&[f64::NAN, 1.0]).is_nan());
    }

    #[test]
    fn region_counts_are_over_the_union_of_its_labels() {
        // region (1, 2): reference 1,2,2,0 vs prediction 2,2,0,1 -> tp 2 (1~2 and 2~2), fn 1, fp 1.
        let r = [1, 2, 2, 0];
        let p = [2, 2, 0, 1];
        let c = confusion_per_region(&r, &p, &[vec![1, 2], vec![2]], None);
        assert_eq!(c[0], Confusion { tp: 2, fp: 1, fn_: 1, tn: 0 });
        assert_eq!(c[1], Confusion { tp: 1, fp: 1, fn_: 1, tn: 1 });
        assert_eq!(confusion_per_region(&r, &p, &[vec![2]], None), confusion_per_label(&r, &p, &[2], None));
    }

    #[test]
    fn ignore_label_voxels_are_excluded() {
        // reference 3 = ignore: the prediction there counts for nothing, not even TN.
        let r = [1, 3, 3, 0];
        let p = [1, 1, 0, 1];
        let c = confusion_per_label(&r, &p, &[1], Some(3));
        assert_eq!(c[0], Confusion { tp: 1, fp: 1, fn_: 0, tn: 0 });
    }
}
