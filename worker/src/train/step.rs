//! One training step, shared by the epoch loop ([`super::run`]) and `nnunet-worker bench-step`
//! ([`bench_steps`], which the GPU check and the training benchmark scripts run): forward with deep
//! supervision, DC+CE loss, backward, gradient clipping, SGD-Nesterov; fp16 autocast and the
//! gradient scaler on CUDA (`nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py::train_step`).
use super::amp::GradScaler;
use super::config::TrainingConfig;
use super::loader::Batch;
use super::loss;
use super::optim::Sgd;
use crate::net::PlainConvUNet;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// A host tensor on `device`. On CUDA the host copy is pinned and the upload asynchronous
/// (nnU-Net's `pin_memory` loader and `non_blocking=True` copies,
/// `nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py::train_step`): the copy is queued on the
/// stream ahead of the step's kernels instead of blocking the training thread; libtorch's pinned
/// allocator keeps the host block alive until the copy has run.
fn upload(host: Tensor, device: Device) -> Tensor {
    if device.is_cuda() {
        host.pin_memory(device).to_device_(device, host.kind(), true, false)
    } else {
        host
    }
}

/// Host batch -> device tensors (image, one int64 target per deep-supervision output).
pub(crate) fn to_device(b: &Batch, device: Device) -> (Tensor, Vec<Tensor>) {
    let x =
        upload(Tensor::from_slice(&b.image).view([b.batch_size as i64, b.channels as i64, b.patch[0] as i64, b.patch[1] as i64]), device);
    let ts = b
        .targets
        .iter()
        .zip(&b.target_shapes)
        .map(|(t, s)| upload(Tensor::from_slice(t).view([b.batch_size as i64, s[0] as i64, s[1] as i64]), device).to_kind(Kind::Int64))
        .collect();
    (x, ts)
}

/// The loss settings of a training step.
pub struct StepLoss {
    /// Deep-supervision weights (one per output).
    pub ds_weights: Vec<f64>,
    /// The plans' `batch_dice` and the dataset's ignore label.
    pub loss: loss::LossSpec,
    /// Max total L2 norm of the gradients.
    pub grad_clip: f64,
    /// fp16 autocast (CUDA).
    pub autocast: bool,
}

/// Runs one training step at learning rate `lr` and returns the loss.
pub fn train_step(
    net: &PlainConvUNet,
    opt: &mut Sgd,
    scaler: Option<&mut GradScaler>,
    how: &StepLoss,
    batch: (&Tensor, &[Tensor]),
    lr: f64,
) -> f64 {
    let (x, targets) = batch;
    opt.zero_grad();
    let l = super::amp::autocast(how.autocast, || {
        let outs = net.forward_ds(x);
        loss::deep_supervision_loss(&outs, targets, &how.ds_weights, how.loss)
    });
    match scaler {
        Some(sc) => {
            sc.scale(&l).backward();
            let skip = sc.unscale(&opt.grads());
            opt.clip_grad_norm(how.grad_clip);
            if !skip {
                opt.step(lr);
            }
            sc.update();
        }
        None => {
            l.backward();
            opt.clip_grad_norm(how.grad_clip);
            opt.step(lr);
        }
    }
    l.double_value(&[])
}

/// A `bench-step` measurement: a plan-shaped network trained on random data.
pub struct BenchStep<'a> {
    pub arch: &'a nnunet_common::plans::ArchKwargs,
    pub in_channels: i64,
    pub num_classes: i64,
    pub batch: usize,
    pub patch: [usize; 2],
    pub device: Device,
    /// Untimed steps first.
    pub warmup: usize,
    /// Timed steps.
    pub steps: usize,
}

/// Times `b.steps` training steps ([`train_step`] with nnU-Net's default optimizer settings) after
/// `b.warmup`; returns seconds per step.
pub fn bench_steps(b: &BenchStep) -> anyhow::Result<f64> {
    let cfg = TrainingConfig::nnunet_v2();
    let cuda = b.device.is_cuda();
    let vs = tch::nn::VarStore::new(b.device);
    let net = PlainConvUNet::new(&vs.root(), b.arch, b.in_channels, b.num_classes);
    let mut opt = Sgd::new(net.named_parameters(&vs), cfg.momentum, cfg.weight_decay, true);
    let mut scaler = cuda.then(|| GradScaler::new(b.device));
    let scales = b.arch.deep_supervision_scales();
    let how = StepLoss {
        ds_weights: loss::deep_supervision_weights(scales.len()),
        loss: loss::LossSpec::batch(),
        grad_clip: cfg.grad_clip,
        autocast: cuda,
    };
    let x = Tensor::randn([b.batch as i64, b.in_channels, b.patch[0] as i64, b.patch[1] as i64], (Kind::Float, b.device));
    let targets: Vec<Tensor> = scales
        .iter()
        .map(|s| {
            let h = (b.patch[0] as f64 * s[0]).round() as i64;
            let w = (b.patch[1] as f64 * s[1]).round() as i64;
            Tensor::randint(b.num_classes, [b.batch as i64, h, w], (Kind::Int64, b.device))
        })
        .collect();
    let mut t0 = Instant::now();
    for i in 0..b.warmup + b.steps {
        if i == b.warmup {
            if cuda {
                tch::Cuda::synchronize(0);
            }
            t0 = Instant::now();
        }
        train_step(&net, &mut opt, scaler.as_mut(), &how, (&x, targets.as_slice()), cfg.initial_lr);
    }
    if cuda {
        tch::Cuda::synchronize(0);
    }
    Ok(t0.elapsed().as_secs_f64() / b.steps.max(1) as f64)
}
