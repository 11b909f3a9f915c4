//! The fp16 gradient scaler (torch `GradScaler` defaults: init scale 2^16, growth 2, backoff 0.5,
//! interval 2000; `nnUNetTrainer.__init__`), built from libtorch's `_amp_non_finite_check_and_unscale_` and
//! `_amp_update_scale_` (what `torch.amp.GradScaler` calls). Only used on CUDA; on CPU training runs in fp32.
use tch::{Device, Kind, Tensor};

pub struct GradScaler {
    scale: Tensor,
    growth_tracker: Tensor,
    found_inf: Tensor,
    pub growth_factor: f64,
    pub backoff_factor: f64,
    pub growth_interval: i64,
}

impl GradScaler {
    pub fn new(device: Device) -> Self {
        Self::with_state(device, 65536.0, 0)
    }

    /// A scaler restored from a checkpoint's (scale, growth tracker).
    pub fn with_state(device: Device, scale: f64, growth_tracker: i64) -> Self {
        GradScaler {
            scale: Tensor::from_slice(&[scale as f32]).to_device(device),
            growth_tracker: Tensor::from_slice(&[growth_tracker as i32]).to_device(device),
            found_inf: Tensor::zeros([1], (Kind::Float, device)),
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
        }
    }

    /// `loss * scale` (cast like torch: the scale is fp32).
    pub fn scale(&self, loss: &Tensor) -> Tensor {
        loss * &self.scale
    }

    /// Divides every gradient by the scale in place and records whether any is inf/NaN.
    /// Returns true when the step must be skipped.
    pub fn unscale(&mut self, grads: &[Tensor]) -> bool {
        let _guard = tch::no_grad_guard();
        let inv = self.scale.to_kind(Kind::Float).reciprocal();
        let _ = self.found_inf.zero_();
        for g in grads {
            let mut g = g.shallow_clone();
            g.internal_amp_non_finite_check_and_unscale(&mut self.found_inf, &inv);
        }
        self.found_inf.double_value(&[0]) != 0.0
    }

    /// Updates the scale after the step (backs off on inf, grows every `growth_interval` clean steps).
    pub fn update(&mut self) {
        let _guard = tch::no_grad_guard();
        let _ = self.scale.internal_amp_update_scale_(
            &self.growth_tracker,
            &self.found_inf,
            self.growth_factor,
            self.backoff_factor,
            self.growth_interval,
        );
    }

    /// (scale, growth tracker) for the checkpoint.
    pub fn state(&self) -> (f64, i64) {
        (self.scale.double_value(&[0]), self.growth_tracker.int64_value(&[0]))
    }
}

extern "C" {
    fn nnunet_autocast_is_enabled_cuda() -> bool;
    fn nnunet_autocast_set_enabled_cuda(b: bool);
    fn nnunet_autocast_increment_nesting() -> i64;
    fn nnunet_autocast_decrement_nesting() -> i64;
    fn nnunet_autocast_clear_cache();
    fn nnunet_autocast_dtype_is_bf16_cuda() -> i32;
    fn nnunet_autocast_set_dtype_bf16_cuda(bf16: i32);
}

/// Whether autocast runs in bfloat16 instead of nnU-Net's float16: opt-in with
/// `NNUNET_AUTOCAST_DTYPE=bf16` (for measuring on GPUs that have it; the gradient scaler stays, and
/// is harmless with bfloat16's range).
pub fn bf16_requested() -> bool {
    static BF16: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *BF16.get_or_init(|| std::env::var("NNUNET_AUTOCAST_DTYPE").is_ok_and(|v| v.trim().eq_ignore_ascii_case("bf16")))
}

/// Runs `f` under CUDA fp16 autocast (bf16 with [`bf16_requested`]), like `tch::autocast`, through
/// libtorch's current API (`src/autocast_shim.cpp`): tch 0.24's calls are deprecated in libtorch 2.11
/// and log a warning on every call. A no-op when CUDA is absent.
pub fn autocast<T>(enabled: bool, f: impl FnOnce() -> T) -> T {
    if !tch::Cuda::is_available() {
        return f();
    }
    let bf16 = i32::from(enabled && bf16_requested());
    // SAFETY: plain calls into libtorch's thread-local autocast state, balanced below.
    let (prev, prev_bf16) = unsafe { (nnunet_autocast_is_enabled_cuda(), nnunet_autocast_dtype_is_bf16_cuda()) };
    unsafe {
        nnunet_autocast_set_dtype_bf16_cuda(bf16);
        nnunet_autocast_set_enabled_cuda(enabled);
        nnunet_autocast_increment_nesting();
    }
    let result = f();
    unsafe {
        if nnunet_autocast_decrement_nesting() == 0 {
            nnunet_autocast_clear_cache();
        }
        nnunet_autocast_set_enabled_cuda(prev);
        nnunet_autocast_set_dtype_bf16_cuda(prev_bf16);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn unscale_detects_inf_and_backs_off() {
        let mut s = GradScaler::with_state(Device::Cpu, 8.0, 0);
        let g = Tensor::from_slice(&[16.0f32, 8.0]);
        assert!(!s.unscale(&[g.shallow_clone()]));
        assert_eq!(Vec::<f32>::try_from(&g).unwrap(), vec![2.0, 1.0]);
        s.update();
        assert_eq!(s.state(), (8.0, 1));
        let bad = Tensor::from_slice(&[f32::INFINITY]);
        assert!(s.unscale(&[bad]));
        s.update();
        assert_eq!(s.state(), (4.0, 0));
    }
}
