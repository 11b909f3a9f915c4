//! The poly learning-rate schedule of nnU-Net v2 (`nnunetv2/training/lr_scheduler/polylr.py::PolyLRScheduler`):
//! at the start of epoch `e`, `lr = initial * (1 - e / max_epochs) ^ 0.9`.

/// nnU-Net's exponent.
pub const POLY_EXPONENT: f64 = 0.9;

/// The learning rate for `epoch` (0-based) out of `max_epochs`.
pub fn poly_lr(initial: f64, epoch: usize, max_epochs: usize, exponent: f64) -> f64 {
    let frac = 1.0 - epoch as f64 / max_epochs.max(1) as f64;
    initial * frac.max(0.0).powf(exponent)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn matches_nnunet_poly_lr() {
        // python: [0.01 * (1 - e / 1000) ** 0.9 for e in (0, 1, 500, 999)]
        let cases = [(0, 0.01), (1, 0.009990999549834914), (500, 0.005358867312681466), (999, 1.995262314968881e-05)];
        for (e, want) in cases {
            let got = poly_lr(0.01, e, 1000, POLY_EXPONENT);
            assert!((got - want).abs() < 1e-17, "epoch {e}: {got} vs {want}");
        }
    }
}
