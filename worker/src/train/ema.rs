//! The online pseudo-Dice of nnU-Net's validation iterations and its exponential moving average
//! (`nnUNetTrainer.validation_step`, `on_validation_epoch_end`, `nnunet_logger.py`).
//!
//! Per validation batch: argmax of the full-resolution output, one-hot, and tp/fp/fn per foreground
//! class summed over (batch, pixels). These are accumulated over all validation batches of the epoch
//! ("global Dice"), then `dice_c = 2tp / (2tp + fp + fn)` (NaN when the denominator is 0, as numpy
//! gives), `mean_fg_dice = nanmean(dice_c)`, `ema = 0.9 * ema_prev + 0.1 * mean` (the first epoch takes
//! the raw value). `checkpoint_best` is written when the EMA strictly exceeds the best so far (or no best
//! exists yet).
//!
//! With regions every output is a foreground region: the prediction is `sigmoid(logits) > 0.5`, the
//! target the region channels (the last channel, with an ignore label, masks pixels out), and no
//! channel is dropped.
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// tp/fp/fn per foreground class accumulated over an epoch's validation batches.
#[derive(Debug, Clone, Default)]
pub struct DiceAccumulator {
    pub tp: Vec<f64>,
    pub fp: Vec<f64>,
    pub fn_: Vec<f64>,
    /// Pixels with this label are skipped (`nnUNetTrainer.validation_step` with an ignore label).
    pub ignore_label: Option<i64>,
    /// Region-based training (targets are region channels).
    pub regions: bool,
}

impl DiceAccumulator {
    pub fn new(num_classes: usize, ignore_label: Option<i64>) -> Self {
        let n = num_classes.saturating_sub(1);
        DiceAccumulator { tp: vec![0.0; n], fp: vec![0.0; n], fn_: vec![0.0; n], ignore_label, regions: false }
    }

    /// For `num_regions` sigmoid outputs.
    pub fn for_regions(num_regions: usize, ignore_label: Option<i64>) -> Self {
        let n = num_regions;
        DiceAccumulator { tp: vec![0.0; n], fp: vec![0.0; n], fn_: vec![0.0; n], ignore_label, regions: true }
    }

    /// Adds one batch of region outputs: `logits` (B, R, H, W), `target` (B, R[+1], H, W) from
    /// `region_targets` (`validation_step` with `has_regions`).
    // Out of place: `y` may view the caller's target tensor.
    #[allow(clippy::assign_op_pattern)]
    fn add_region_batch(&mut self, logits: &Tensor, target: &Tensor) {
        let (y, mask) = super::region_loss::split_ignore(target, self.ignore_label.is_some());
        let mut pred = logits.gt(0.0).to_kind(Kind::Float); // sigmoid(x) > 0.5 <=> x > 0
        let mut y = y.to_kind(Kind::Float);
        if let Some(m) = &mask {
            pred = pred * m;
            y = y * m;
        }
        let dims: &[i64] = &[0, 2, 3];
        let both = &pred * &y;
        let v = |t: Tensor| Vec::<f64>::try_from(t.to_kind(Kind::Double).to_device(tch::Device::Cpu)).expect("tp/fp/fn to host");
        let tp = v(both.sum_dim_intlist(dims, false, Kind::Float));
        let fp = v((&pred - &both).sum_dim_intlist(dims, false, Kind::Float));
        let fn_ = v((&y - &both).sum_dim_intlist(dims, false, Kind::Float));
        for r in 0..self.tp.len() {
            self.tp[r] += tp[r];
            self.fp[r] += fp[r];
            self.fn_[r] += fn_[r];
        }
    }

    /// Adds one batch: `logits` (B, K, H, W), `target` (B, H, W) int64.
    // `x = x * m`, not `x *= m`: tch's `*=` multiplies in place, into a tensor other views share.
    #[allow(clippy::assign_op_pattern)]
    pub fn add_batch(&mut self, logits: &Tensor, target: &Tensor) {
        if self.regions {
            return self.add_region_batch(logits, target);
        }
        let k = logits.size()[1];
        let pred = logits.argmax(1, false);
        let mut po = pred.one_hot(k).to_kind(Kind::Float);
        let to = match self.ignore_label {
            Some(ig) => {
                // ignored pixels count for nothing: neither prediction nor target
                let keep = target.ne(ig);
                let t = target.where_self(&keep, &target.zeros_like());
                let keep = keep.unsqueeze(-1).to_kind(Kind::Float);
                po *= &keep;
                t.one_hot(k).to_kind(Kind::Float) * keep
            }
            None => target.one_hot(k).to_kind(Kind::Float),
        };
        let dims: &[i64] = &[0, 1, 2];
        let both = &po * &to;
        let tp = both.sum_dim_intlist(dims, false, Kind::Float);
        let fp = (&po - &both).sum_dim_intlist(dims, false, Kind::Float);
        let fn_ = (&to - &both).sum_dim_intlist(dims, false, Kind::Float);
        let v = |t: Tensor| Vec::<f64>::try_from(t.to_kind(Kind::Double).to_device(tch::Device::Cpu)).expect("tp/fp/fn to host");
        let (tp, fp, fn_) = (v(tp), v(fp), v(fn_));
        for c in 1..k as usize {
            self.tp[c - 1] += tp[c];
            self.fp[c - 1] += fp[c];
            self.fn_[c - 1] += fn_[c];
        }
    }

    /// Dice per foreground class (NaN where 2tp+fp+fn == 0).
    pub fn dice_per_class(&self) -> Vec<f64> {
        self.tp
            .iter()
            .zip(&self.fp)
            .zip(&self.fn_)
            .map(|((&tp, &fp), &fn_)| {
                let d = 2.0 * tp + fp + fn_;
                if d == 0.0 {
                    f64::NAN
                } else {
                    2.0 * tp / d
                }
            })
            .collect()
    }
}

/// numpy's `nanmean` (NaN when every entry is NaN or the list is empty).
pub fn nanmean(v: &[f64]) -> f64 {
    let ok: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if ok.is_empty() {
        f64::NAN
    } else {
        ok.iter().sum::<f64>() / ok.len() as f64
    }
}

/// EMA of the mean foreground pseudo-Dice and the best EMA seen (checkpointed for exact resume).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EmaState {
    pub ema: Option<f64>,
    pub best_ema: Option<f64>,
}

impl EmaState {
    /// Folds in an epoch's mean foreground Dice; returns (new ema, whether it is a new best).
    pub fn update(&mut self, mean_fg_dice: f64) -> (f64, bool) {
        let ema = match self.ema {
            None => mean_fg_dice,
            Some(prev) => 0.9 * prev + 0.1 * mean_fg_dice,
        };
        self.ema = Some(ema);
        // `if self._best_ema is None or ema > self._best_ema` (NaN never compares greater).
        let new_best = match self.best_ema {
            None => true,
            Some(b) => ema > b,
        };
        if new_best {
            self.best_ema = Some(ema);
        }
        (ema, new_best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ema_and_best() {
        let mut s = EmaState::default();
        assert_eq!(s.update(0.5), (0.5, true));
        let (e, b) = s.update(0.4);
        assert!((e - 0.49).abs() < 1e-12 && !b);
        let (e, b) = s.update(1.0);
        assert!((e - 0.541).abs() < 1e-12 && b);
        assert_eq!(s.best_ema, Some(e));
    }

    #[test]
    fn global_dice_accumulates_over_batches() {
        // Batch 1: pred fg at 1 pixel, target fg at 2 pixels (tp 1, fn 1). Batch 2: pred fg 1, target bg (fp 1).
        // Global: 2*1/(2+1+1) = 0.5 (the per-batch mean would be (2/3 + 0)/2).
        let mut acc = DiceAccumulator::new(2, None);
        let l1 = Tensor::from_slice(&[0.0f32, 0.0, 1.0, 1.0, 0.0, 0.0]).reshape([1, 2, 1, 3]); // argmax: [1,0,0]
        let t1 = Tensor::from_slice(&[1i64, 1, 0]).reshape([1, 1, 3]);
        acc.add_batch(&l1, &t1);
        let t2 = Tensor::from_slice(&[0i64, 0, 0]).reshape([1, 1, 3]);
        acc.add_batch(&l1, &t2);
        assert_eq!((acc.tp[0], acc.fp[0], acc.fn_[0]), (1.0, 1.0, 1.0));
        assert!((acc.dice_per_class()[0] - 0.5).abs() < 1e-12);
        let empty = DiceAccumulator::new(2, None);
        assert!(empty.dice_per_class()[0].is_nan());
        assert!(nanmean(&[f64::NAN, 0.5]) == 0.5);
    }

    #[test]
    fn region_pseudo_dice_thresholds_sigmoid_at_half() {
        // 3 pixels, labels [1, 2, 0]; regions (1, 2) and (2,). Logits region0 [1, -1, 2] -> pred [1, 0, 1],
        // target [1, 1, 0]: tp 1, fp 1, fn 1. Region1 logits [-3, 0.5, -1] -> pred [0, 1, 0], target [0, 1, 0]: tp 1.
        let regions = vec![vec![1, 2], vec![2]];
        let t = Tensor::from_slice(&[1i64, 2, 0]).reshape([1, 1, 3]);
        let y = super::super::region_loss::region_targets(&t, &regions, None);
        let l = Tensor::from_slice(&[1.0f32, -1.0, 2.0, -3.0, 0.5, -1.0]).reshape([1, 2, 1, 3]);
        let mut acc = DiceAccumulator::for_regions(2, None);
        acc.add_batch(&l, &y);
        assert_eq!((acc.tp.clone(), acc.fp.clone(), acc.fn_.clone()), (vec![1.0, 1.0], vec![1.0, 0.0], vec![1.0, 0.0]));
        assert_eq!(acc.dice_per_class(), vec![0.5, 1.0]);
        // with an ignore label (3) on the last pixel, its false positive in region 0 disappears
        let t = Tensor::from_slice(&[1i64, 2, 3]).reshape([1, 1, 3]);
        let y = super::super::region_loss::region_targets(&t, &regions, Some(3));
        let mut acc = DiceAccumulator::for_regions(2, Some(3));
        acc.add_batch(&l, &y);
        assert_eq!(acc.fp, vec![0.0, 0.0]);
    }

    #[test]
    fn ignored_pixels_do_not_count() {
        // target [1, 2, 0] with 2 ignored; pred [1, 1, 1]: pixel 0 tp, pixel 1 ignored, pixel 2 fp.
        let mut acc = DiceAccumulator::new(2, Some(2));
        let l = Tensor::from_slice(&[0.0f32, 0.0, 0.0, 1.0, 1.0, 1.0]).reshape([1, 2, 1, 3]);
        let t = Tensor::from_slice(&[1i64, 2, 0]).reshape([1, 1, 3]);
        acc.add_batch(&l, &t);
        assert_eq!((acc.tp[0], acc.fp[0], acc.fn_[0]), (1.0, 1.0, 0.0));
    }
}
