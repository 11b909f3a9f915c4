//! Region-based training's targets and loss (`nnunetv2/training/loss/compound_losses.py::DC_and_BCE_loss`
//! as `nnUNetTrainer._build_loss` builds it for regions: `BCEWithLogitsLoss` + `MemoryEfficientSoftDiceLoss(
//! apply_nonlin=sigmoid, batch_dice=plans, do_bg=True, smooth=1e-5)`, weights 1 and 1).
//!
//! Targets: the loader and the GPU augmentation produce label maps; [`region_targets`] turns each
//! deep-supervision target into one channel per region (`isin(seg, region)`,
//! `ConvertSegmentationToRegionsTransform`), plus a last channel marking the ignore label when the
//! dataset has one (upstream passes `regions + [ignore_label]`). Upstream converts before
//! `DownsampleSegForDSTransform`; that downsampling is nearest-exact index selection, which commutes
//! with a per-pixel mapping, so converting each downsampled label map gives the same targets.
use tch::{Kind, Reduction, Tensor};

/// The Dice smoothing term (`'smooth': 1e-5` in `nnUNetTrainer._build_loss`).
const DICE_SMOOTH: f64 = 1e-5;

/// Label map (B, H, W) int64 -> (B, R, H, W) float with 1 where the label belongs to region r; with
/// an ignore label one more channel, 1 where the pixel is ignored.
pub fn region_targets(target: &Tensor, regions: &[Vec<i64>], ignore_label: Option<i64>) -> Tensor {
    tch::no_grad(|| {
        let mut chans: Vec<Tensor> = regions
            .iter()
            .map(|r| {
                let mut m = target.eq(r[0]);
                for &l in &r[1..] {
                    m = m.logical_or(&target.eq(l));
                }
                m
            })
            .collect();
        if let Some(ig) = ignore_label {
            chans.push(target.eq(ig));
        }
        Tensor::stack(&chans, 1).to_kind(Kind::Float)
    })
}

/// Splits a region target into (regions, annotation mask (B, 1, H, W)) when the last channel is the
/// ignore channel (`DC_and_BCE_loss.forward` with `use_ignore_label`).
pub fn split_ignore(target: &Tensor, ignore: bool) -> (Tensor, Option<Tensor>) {
    if !ignore {
        return (target.shallow_clone(), None);
    }
    let r = target.size()[1];
    (target.narrow(1, 0, r - 1), Some(1.0 - target.narrow(1, r - 1, 1)))
}

/// `MemoryEfficientSoftDiceLoss(sigmoid, batch_dice, do_bg=True, smooth=1e-5)` with an optional loss mask.
/// Returns `-mean(dc)`.
pub fn sigmoid_dice_loss(logits: &Tensor, y: &Tensor, mask: Option<&Tensor>, batch_dice: bool) -> Tensor {
    let p = logits.to_kind(Kind::Float).sigmoid();
    let axes: &[i64] = &[2, 3];
    let (mut intersect, mut sum_pred, mut sum_gt) = match mask {
        Some(m) => (
            (&p * y * m).sum_dim_intlist(axes, false, Kind::Float),
            (&p * m).sum_dim_intlist(axes, false, Kind::Float),
            (y * m).sum_dim_intlist(axes, false, Kind::Float),
        ),
        None => (
            (&p * y).sum_dim_intlist(axes, false, Kind::Float),
            p.sum_dim_intlist(axes, false, Kind::Float),
            y.sum_dim_intlist(axes, false, Kind::Float),
        ),
    };
    if batch_dice {
        intersect = intersect.sum_dim_intlist(0, false, Kind::Float);
        sum_pred = sum_pred.sum_dim_intlist(0, false, Kind::Float);
        sum_gt = sum_gt.sum_dim_intlist(0, false, Kind::Float);
    }
    let dc = (intersect * 2.0 + DICE_SMOOTH) / (sum_gt + sum_pred + DICE_SMOOTH).clamp_min(1e-8);
    -dc.mean(Kind::Float)
}

/// `BCEWithLogitsLoss`: the mean over every element; with a mask, `(bce * mask).sum() /
/// clip(mask.sum(), 1e-8)` as upstream (the mask has one channel, so this sums the regions).
pub fn bce_with_logits(logits: &Tensor, y: &Tensor, mask: Option<&Tensor>) -> Tensor {
    let logits = logits.to_kind(Kind::Float);
    match mask {
        None => logits.binary_cross_entropy_with_logits::<Tensor>(y, None, None, Reduction::Mean),
        Some(m) => {
            let l = logits.binary_cross_entropy_with_logits::<Tensor>(y, None, None, Reduction::None);
            (l * m).sum(Kind::Float) / m.sum(Kind::Float).clamp_min(1e-8)
        }
    }
}

/// `DC_and_BCE_loss` for one output: `target` from [`region_targets`] (with the ignore channel when
/// `has_ignore`).
pub fn dc_bce(logits: &Tensor, target: &Tensor, batch_dice: bool, has_ignore: bool) -> Tensor {
    let (y, mask) = split_ignore(target, has_ignore);
    let y = y.to_kind(Kind::Float);
    sigmoid_dice_loss(logits, &y, mask.as_ref(), batch_dice) + bce_with_logits(logits, &y, mask.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regions() -> Vec<Vec<i64>> {
        vec![vec![1, 2], vec![2]]
    }

    #[test]
    fn targets_are_isin_per_region_plus_ignore() {
        let t = Tensor::from_slice(&[0i64, 1, 2, 3]).reshape([1, 1, 4]);
        let y = region_targets(&t, &regions(), Some(3));
        assert_eq!(y.size(), vec![1, 3, 1, 4]);
        let v = Vec::<f32>::try_from(y.flatten(0, -1)).unwrap();
        assert_eq!(v, vec![0., 1., 1., 0., /**/ 0., 0., 1., 0., /**/ 0., 0., 0., 1.]);
    }

    #[test]
    fn bce_and_dice_hand_computed() {
        // One image of 2 pixels, 2 regions; logits region0 [0, 2], region1 [-1, 1]; labels [1, 2]
        // -> targets region0 [1, 1], region1 [0, 1].
        let logits = Tensor::from_slice(&[0.0f32, 2.0, -1.0, 1.0]).reshape([1, 2, 1, 2]);
        let t = Tensor::from_slice(&[1i64, 2]).reshape([1, 1, 2]);
        let y = region_targets(&t, &regions(), None);
        let s = |x: f64| 1.0 / (1.0 + (-x).exp());
        let (a, b, c, d) = (s(0.0), s(2.0), s(-1.0), s(1.0));
        // BCE: mean of -[y ln p + (1-y) ln(1-p)] over 4 elements
        let bce = -(a.ln() + b.ln() + (1.0 - c).ln() + d.ln()) / 4.0;
        // Dice per region (batch dice = per-sample here, B = 1), do_bg: both regions
        let dc0 = (2.0 * (a + b) + 1e-5) / (2.0 + a + b + 1e-5);
        let dc1 = (2.0 * d + 1e-5) / (1.0 + c + d + 1e-5);
        let want = bce - (dc0 + dc1) / 2.0;
        let got = dc_bce(&logits, &y, true, false).double_value(&[]);
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }

    #[test]
    fn ignored_pixels_are_invisible_to_bce_and_dice() {
        // 3 pixels, the last ignored (label 3): the loss equals upstream's masked formula and does not
        // depend on the ignored pixel's logits.
        let t = Tensor::from_slice(&[1i64, 2, 3]).reshape([1, 1, 3]);
        let y = region_targets(&t, &regions(), Some(3));
        let l1 = Tensor::from_slice(&[0.0f32, 2.0, 9.0, -1.0, 1.0, -9.0]).reshape([1, 2, 1, 3]);
        let l2 = Tensor::from_slice(&[0.0f32, 2.0, -4.0, -1.0, 1.0, 5.0]).reshape([1, 2, 1, 3]);
        let (a, b) = (dc_bce(&l1, &y, true, true).double_value(&[]), dc_bce(&l2, &y, true, true).double_value(&[]));
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        // upstream's masked BCE sums over the regions and divides by the annotated pixel count (2)
        let s = |x: f64| 1.0 / (1.0 + (-x).exp());
        let (p00, p01, p10, p11) = (s(0.0), s(2.0), s(-1.0), s(1.0));
        let bce = -(p00.ln() + p01.ln() + (1.0 - p10).ln() + p11.ln()) / 2.0;
        let dc0 = (2.0 * (p00 + p01) + 1e-5) / (2.0 + p00 + p01 + 1e-5);
        let dc1 = (2.0 * p11 + 1e-5) / (1.0 + p10 + p11 + 1e-5);
        assert!((a - (bce - (dc0 + dc1) / 2.0)).abs() < 1e-6, "{a}");
        let l = l1.set_requires_grad(true);
        dc_bce(&l, &y, true, true).backward();
        assert_eq!(l.grad().select(3, 2).abs().sum(Kind::Float).double_value(&[]), 0.0);
    }
}
