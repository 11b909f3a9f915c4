//! nnU-Net v2's training loss (`nnunetv2/training/loss/compound_losses.py::DC_and_CE_loss`,
//! `dice.py::MemoryEfficientSoftDiceLoss`, `deep_supervision.py::DeepSupervisionWrapper`):
//! `L = CE(logits, t) + SoftDice(softmax(logits), t)` with batch Dice, no background, smooth 1e-5,
//! summed over the deep-supervision outputs with weights `1/2^i`, the last one set to 0, normalized.
//!
//! With an ignore label (`dataset.json` `labels.ignore`, sparse or partial annotations) ignored pixels
//! are invisible to both terms, as in `DC_and_CE_loss.forward`: CE uses `ignore_index` (mean over the
//! annotated pixels, 0 when there are none) and the Dice sums are multiplied by the annotation mask
//! (`MemoryEfficientSoftDiceLoss(loss_mask=...)`), with ignored pixels counted as background before
//! the one-hot encoding.
//!
//! Region-based training uses `DC_and_BCE_loss` instead ([`super::region_loss`]).
use tch::{Kind, Reduction, Tensor};

/// What the loss needs from the plans and the dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LossSpec {
    /// Dice over the whole batch (the 2d configuration's `batch_dice`).
    pub batch_dice: bool,
    /// The ignore label's value, if the dataset declares one.
    pub ignore_label: Option<i64>,
    /// Region-based training: targets are per-region channels ([`super::region_loss::region_targets`])
    /// and the loss is `DC_and_BCE_loss` ([`super::region_loss::dc_bce`]).
    pub regions: bool,
}

impl LossSpec {
    /// Batch Dice, no ignore label.
    pub fn batch() -> LossSpec {
        LossSpec { batch_dice: true, ignore_label: None, regions: false }
    }
}

/// The annotation mask `target != ignore` as float (B, 1, H, W), and the target with ignored pixels
/// set to background; `None` without an ignore label.
fn annotation_mask(target: &Tensor, ignore_label: Option<i64>) -> Option<(Tensor, Tensor)> {
    let ig = ignore_label?;
    tch::no_grad(|| {
        let keep = target.ne(ig);
        let t = target.where_self(&keep, &target.zeros_like());
        Some((keep.unsqueeze(1).to_kind(Kind::Float), t))
    })
}

/// nnU-Net's Dice smoothing term.
pub const DICE_SMOOTH: f64 = 1e-5;

/// Deep-supervision weights for `n` outputs (highest resolution first): `1/2^i`, the last set to 0,
/// then normalized to sum 1 (in that order, as `nnUNetTrainer._build_loss` does). For 7 outputs:
/// [32, 16, 8, 4, 2, 1, 0] / 63.
/// With a single output the weight is 1 (nnU-Net only zeroes the last weight when there are several).
pub fn deep_supervision_weights(n: usize) -> Vec<f64> {
    let mut w: Vec<f64> = (0..n).map(|i| 1.0 / (1u64 << i) as f64).collect();
    if n > 1 {
        w[n - 1] = 0.0;
    }
    let s: f64 = w.iter().sum();
    w.iter().map(|x| x / s).collect()
}

/// `MemoryEfficientSoftDiceLoss(softmax, batch_dice, do_bg=False, smooth=1e-5)`.
/// `logits` (B, K, H, W); `target` (B, H, W) int64 labels in 0..K (and the ignore label, if any).
/// Returns `-mean(dc)` (a scalar); the sums are done in fp32 even under autocast.
// `p = p * mask`, not `p *= mask`: tch's `*=` multiplies in place, into a view of the softmax that
// autograd saved for the backward pass.
#[allow(clippy::assign_op_pattern)]
pub fn soft_dice_loss(logits: &Tensor, target: &Tensor, spec: LossSpec) -> Tensor {
    let k = logits.size()[1];
    let masked = annotation_mask(target, spec.ignore_label);
    let target = masked.as_ref().map(|(_, t)| t).unwrap_or(target);
    let p = logits.to_kind(Kind::Float).softmax(1, Kind::Float);
    // One-hot without gradients, channels first: (B, K, H, W).
    let y = tch::no_grad(|| target.one_hot(k).permute([0, 3, 1, 2]).to_kind(Kind::Float));
    // do_bg = False: drop the background channel from both.
    let (p, y) = (p.narrow(1, 1, k - 1), y.narrow(1, 1, k - 1));
    // Out of place: `p` views the softmax output, which autograd still needs.
    let (p, y) = match &masked {
        Some((mask, _)) => (p * mask, y * mask),
        None => (p, y),
    };
    let axes: &[i64] = &[2, 3];
    let mut intersect = (&p * &y).sum_dim_intlist(axes, false, Kind::Float);
    let mut sum_pred = p.sum_dim_intlist(axes, false, Kind::Float);
    let mut sum_gt = y.sum_dim_intlist(axes, false, Kind::Float);
    if spec.batch_dice {
        intersect = intersect.sum_dim_intlist(0, false, Kind::Float);
        sum_pred = sum_pred.sum_dim_intlist(0, false, Kind::Float);
        sum_gt = sum_gt.sum_dim_intlist(0, false, Kind::Float);
    }
    let dc = (intersect * 2.0 + DICE_SMOOTH) / (sum_gt + sum_pred + DICE_SMOOTH).clamp_min(1e-8);
    -dc.mean(Kind::Float)
}

/// `nn.CrossEntropyLoss(ignore_index=...)` (mean over the annotated pixels, no class weights) on
/// int64 labels (B, H, W); 0 when every pixel is ignored (`DC_and_CE_loss`: `num_fg > 0`).
pub fn cross_entropy(logits: &Tensor, target: &Tensor, ignore_label: Option<i64>) -> Tensor {
    let logits = logits.to_kind(Kind::Float);
    if let Some(ig) = ignore_label {
        if target.ne(ig).any().int64_value(&[]) == 0 {
            return logits.sum(Kind::Float) * 0.0;
        }
    }
    logits.cross_entropy_loss::<Tensor>(target, None, Reduction::Mean, ignore_label.unwrap_or(-100), 0.0)
}

/// `DC_and_CE_loss` with weights 1 and 1 for one output (`DC_and_BCE_loss` with regions).
pub fn dc_ce(logits: &Tensor, target: &Tensor, spec: LossSpec) -> Tensor {
    if spec.regions {
        return super::region_loss::dc_bce(logits, target, spec.batch_dice, spec.ignore_label.is_some());
    }
    cross_entropy(logits, target, spec.ignore_label) + soft_dice_loss(logits, target, spec)
}

/// The deep-supervision loss: `Σ w_i dc_ce(out_i, target_i)`, skipping zero weights.
/// `targets[i]` are int64 (B, H_i, W_i) label maps matching `outputs[i]` (region channels with regions).
pub fn deep_supervision_loss(outputs: &[Tensor], targets: &[Tensor], weights: &[f64], spec: LossSpec) -> Tensor {
    assert_eq!(outputs.len(), targets.len(), "one target per deep-supervision output");
    assert_eq!(outputs.len(), weights.len(), "one weight per deep-supervision output");
    let mut total: Option<Tensor> = None;
    for ((o, t), &w) in outputs.iter().zip(targets).zip(weights) {
        if w == 0.0 {
            continue;
        }
        let l = dc_ce(o, t, spec) * w;
        total = Some(match total {
            None => l,
            Some(acc) => acc + l,
        });
    }
    total.expect("at least one non-zero deep-supervision weight")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(data: &[f32], shape: &[i64]) -> Tensor {
        Tensor::from_slice(data).reshape(shape)
    }

    #[test]
    fn ds_weights_match_spec() {
        // nnunetv2 nnUNetTrainer._build_loss zeroes the last weight BEFORE normalizing, so the weights are
        // [32, 16, 8, 4, 2, 1, 0] / 63 (older nnU-Net versions gave [0.50394, ...], i.e. normalized before zeroing;
        // the installed nnunetv2 2.8.1 code is what we follow).
        let w = deep_supervision_weights(7);
        let want = [32.0 / 63.0, 16.0 / 63.0, 8.0 / 63.0, 4.0 / 63.0, 2.0 / 63.0, 1.0 / 63.0, 0.0];
        for (a, b) in w.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{w:?}");
        }
        assert_eq!(deep_supervision_weights(1), vec![1.0]);
        assert_eq!(deep_supervision_weights(2), vec![1.0, 0.0]);
    }

    #[test]
    fn dice_hand_computed() {
        // One image 1x2 pixels, 2 classes. Logits chosen so softmax p(fg) = [0.5, 0.8807971] (logit diff 0, 2).
        // Target [0, 1]. Foreground only: I = 0.8807971, Sp = 1.3807971, Sy = 1.
        // dc = (2I + 1e-5) / (Sy + Sp + 1e-5) = 1.7616042 / 2.3808071 = 0.7399178...
        let logits = t(&[0.0, 0.0, 0.0, 2.0], &[1, 2, 1, 2]);
        let target = Tensor::from_slice(&[0i64, 1]).reshape([1, 1, 2]);
        let l = soft_dice_loss(&logits, &target, LossSpec::batch()).double_value(&[]);
        let p = 1.0 / (1.0 + (-2.0f64).exp());
        let want = -(2.0 * p + 1e-5) / (1.0 + 0.5 + p + 1e-5);
        assert!((l - want).abs() < 1e-6, "{l} vs {want}");
        // CE: mean(-log p_true) = mean(-ln 0.5, -ln p)
        let ce = cross_entropy(&logits, &target, None).double_value(&[]);
        let want_ce = (-(0.5f64).ln() - p.ln()) / 2.0;
        assert!((ce - want_ce).abs() < 1e-6, "{ce} vs {want_ce}");
        let both = dc_ce(&logits, &target, LossSpec::batch()).double_value(&[]);
        assert!((both - (want + want_ce)).abs() < 1e-6);
    }

    #[test]
    fn batch_dice_differs_from_per_sample_dice() {
        // Two samples; sample 0 has no foreground and predicts none (p_fg ~ 0), sample 1 predicts fg perfectly.
        // Batch Dice pools both -> ~1; per-sample Dice averages sample 0's (smooth/smooth = 1) and sample 1's -> ~1
        // too, so make sample 0 predict fg p=1 where target is bg: batch dc = 2*1/(1+2) = 2/3, per-sample = (0 + 1)/2.
        let big = 30.0f32;
        // (B=2, K=2, H=1, W=1): sample 0 logits favour fg, target bg; sample 1 favour fg, target fg.
        let logits = t(&[0.0, big, 0.0, big], &[2, 2, 1, 1]);
        let target = Tensor::from_slice(&[0i64, 1]).reshape([2, 1, 1]);
        let b = soft_dice_loss(&logits, &target, LossSpec::batch()).double_value(&[]);
        let s = soft_dice_loss(&logits, &target, LossSpec { batch_dice: false, ignore_label: None, regions: false }).double_value(&[]);
        assert!((b + 2.0 / 3.0).abs() < 1e-4, "batch dice {b}");
        assert!((s + 0.5).abs() < 1e-4, "per-sample dice {s}");
    }

    #[test]
    fn ds_loss_skips_zero_weight_and_weights_terms() {
        let o0 = t(&[0.0, 0.0, 0.0, 2.0], &[1, 2, 1, 2]);
        let t0 = Tensor::from_slice(&[0i64, 1]).reshape([1, 1, 2]);
        // The second output is garbage (NaN); with weight 0 it must not contribute.
        let o1 = t(&[f32::NAN, f32::NAN], &[1, 2, 1, 1]);
        let t1 = Tensor::from_slice(&[0i64]).reshape([1, 1, 1]);
        let w = deep_supervision_weights(2);
        let l = deep_supervision_loss(&[o0.shallow_clone(), o1], &[t0.shallow_clone(), t1], &w, LossSpec::batch()).double_value(&[]);
        let single = dc_ce(&o0, &t0, LossSpec::batch()).double_value(&[]);
        assert!((l - single).abs() < 1e-9, "{l} vs {single}");
    }

    #[test]
    fn loss_has_gradients() {
        let logits = t(&[0.0, 1.0, 2.0, 0.5], &[1, 2, 1, 2]).set_requires_grad(true);
        let target = Tensor::from_slice(&[0i64, 1]).reshape([1, 1, 2]);
        let l = dc_ce(&logits, &target, LossSpec::batch());
        l.backward();
        let g = logits.grad();
        assert!(g.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }

    #[test]
    fn ignored_pixels_are_invisible_to_both_terms() {
        // Three pixels: target [0, 1, 2] with 2 the ignore label. The loss with the ignore label must
        // equal the loss on the first two pixels alone, whatever the logits of the ignored pixel are.
        let spec = LossSpec { batch_dice: true, ignore_label: Some(2), regions: false };
        let logits3 = t(&[0.0, 0.0, 5.0, 0.0, 2.0, -7.0], &[1, 2, 1, 3]);
        let target3 = Tensor::from_slice(&[0i64, 1, 2]).reshape([1, 1, 3]);
        let logits2 = t(&[0.0, 0.0, 0.0, 2.0], &[1, 2, 1, 2]);
        let target2 = Tensor::from_slice(&[0i64, 1]).reshape([1, 1, 2]);
        let with_ignore = dc_ce(&logits3, &target3, spec).double_value(&[]);
        let reference = dc_ce(&logits2, &target2, LossSpec::batch()).double_value(&[]);
        assert!((with_ignore - reference).abs() < 1e-6, "{with_ignore} vs {reference}");
        // hand-computed: the same numbers as dice_hand_computed
        let p = 1.0 / (1.0 + (-2.0f64).exp());
        let want = -(2.0 * p + 1e-5) / (1.0 + 0.5 + p + 1e-5) + (-(0.5f64).ln() - p.ln()) / 2.0;
        assert!((with_ignore - want).abs() < 1e-6, "{with_ignore} vs {want}");
        // the ignored pixel's logits get no gradient
        let l = logits3.set_requires_grad(true);
        dc_ce(&l, &target3, spec).backward();
        let g = l.grad();
        assert_eq!(g.select(3, 2).abs().sum(Kind::Float).double_value(&[]), 0.0);
        assert!(g.select(3, 1).abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }

    #[test]
    fn all_ignored_batch_gives_finite_zero_ce() {
        let spec = LossSpec { batch_dice: true, ignore_label: Some(2), regions: false };
        let logits = t(&[0.3, 0.1, 0.2, 0.9], &[1, 2, 1, 2]);
        let target = Tensor::from_slice(&[2i64, 2]).reshape([1, 1, 2]);
        let ce = cross_entropy(&logits, &target, Some(2)).double_value(&[]);
        assert_eq!(ce, 0.0);
        let l = dc_ce(&logits, &target, spec).double_value(&[]);
        assert!(l.is_finite(), "{l}");
    }
}
