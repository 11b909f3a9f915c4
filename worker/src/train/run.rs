//! The epoch loop of one fold ([`train_fold`]), as `nnUNetTrainer.run_training` does it:
//! for each epoch set the poly LR, run `iterations_per_epoch` training steps (forward with deep
//! supervision, DC+CE loss, backward, clip 12, SGD-Nesterov; fp16 autocast + gradient scaler on CUDA),
//! run `val_iterations_per_epoch` validation batches (loss + global pseudo-Dice), update the EMA, write
//! the logs and `progress.png`, and checkpoint (`best` on a strict EMA improvement, `latest` every
//! `save_every` epochs except the last, `final` at the end, after which `latest` is removed).
//!
//! Everything runs on the calling OS thread (libtorch's autocast and grad mode are thread-local); the
//! data loader threads only produce host buffers.
use super::amp::GradScaler;
use super::checkpoint::{self, CheckpointMeta, GradScalerState, InitArgs, RngState};
use super::ema::{nanmean, DiceAccumulator, EmaState};
use super::loader::{Batch, BatchLoader, CaseData, LoaderConfig};
use super::loss;
use super::optim::Sgd;
use super::report::FoldLogs;
use super::schedule::{poly_lr, POLY_EXPONENT};
use crate::net::PlainConvUNet;
use anyhow::{anyhow, bail, Context};
use nnunet_common::augment::AugConfig;
use nnunet_common::dataset_json::DatasetJson;
use nnunet_common::plans::Plans;
use nnunet_common::train_log::EpochMetrics;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Training hyper-parameters. [`TrainingConfig::nnunet_v2`] gives nnU-Net v2's defaults.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainingConfig {
    /// Number of epochs (`nnUNetTrainer.__init__`: 1000).
    pub epochs: usize,
    /// Training iterations per epoch (250).
    pub iterations_per_epoch: usize,
    /// Validation iterations per epoch (50).
    pub val_iterations_per_epoch: usize,
    /// `checkpoint_latest` every this many epochs (50; never at the last epoch).
    pub save_every: usize,
    /// Initial learning rate of the poly schedule (1e-2).
    pub initial_lr: f64,
    /// L2 weight decay, torch semantics (3e-5).
    pub weight_decay: f64,
    /// Nesterov momentum (0.99).
    pub momentum: f64,
    /// Fraction of each batch forced to contain foreground (0.33).
    pub oversample_foreground_percent: f64,
    /// Max total L2 norm of the gradients (12).
    pub grad_clip: f64,
    /// Seed of the network initialization and of every batch.
    pub seed: u64,
    /// Data-loader threads for training batches (validation gets half, at least 1). 0 = all cores, at most 12
    /// (nnU-Net's `nnUNet_n_proc_DA` default).
    pub loader_threads: usize,
    /// libtorch intra-op threads. 0 = automatic: 1 on CUDA (as nnU-Net), all cores on CPU.
    pub torch_threads: usize,
    /// On CUDA: run the spatial and intensity augmentations batched on the GPU instead of on the loader threads.
    pub gpu_augmentation: bool,
}

impl TrainingConfig {
    /// nnU-Net v2's defaults (`nnUNetTrainer.__init__`).
    pub fn nnunet_v2() -> Self {
        TrainingConfig {
            epochs: 1000,
            iterations_per_epoch: 250,
            val_iterations_per_epoch: 50,
            save_every: 50,
            initial_lr: 1e-2,
            weight_decay: 3e-5,
            momentum: 0.99,
            oversample_foreground_percent: 0.33,
            grad_clip: 12.0,
            seed: 12345,
            loader_threads: 0,
            torch_threads: 0,
            gpu_augmentation: false,
        }
    }
}

/// Which fold to train, where, and how.
#[derive(Debug, Clone)]
pub struct FoldSpec {
    /// `$nnUNet_preprocessed/DatasetXXX_Name` (plans, dataset.json, splits, `nnUNetPlans_2d/`).
    pub preprocessed_dir: PathBuf,
    pub fold: usize,
    /// Output folder (`.../nnUNetTrainer__nnUNetPlans__2d/fold_K`).
    pub fold_dir: PathBuf,
    pub device: Device,
    pub config: TrainingConfig,
    /// Continue from `checkpoint_latest` (or `best`) in `fold_dir` if present; report done if `final` exists.
    pub resume: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointKind {
    Latest,
    Best,
    Final,
}

impl CheckpointKind {
    pub fn file_stem(self) -> &'static str {
        match self {
            CheckpointKind::Latest => "checkpoint_latest",
            CheckpointKind::Best => "checkpoint_best",
            CheckpointKind::Final => "checkpoint_final",
        }
    }
    fn name(self) -> &'static str {
        match self {
            CheckpointKind::Latest => "latest",
            CheckpointKind::Best => "best",
            CheckpointKind::Final => "final",
        }
    }
}

/// Callbacks of the training loop (the gRPC reporter, the console, a test recorder).
pub trait Progress {
    /// After every epoch; an error stops training now (e.g. the lease was lost or the task cancelled).
    fn on_epoch(&mut self, m: &EpochMetrics) -> anyhow::Result<()>;
    /// After a checkpoint's files were written (weights first, sidecar last in `files`).
    fn on_checkpoint(&mut self, kind: CheckpointKind, files: &[PathBuf]) -> anyhow::Result<()>;
    /// Free-form progress messages.
    fn log(&mut self, line: &str);
    /// Polled every iteration (e.g. SIGTERM): when true, training stops at once (no checkpoint is written).
    fn should_stop(&self) -> bool {
        false
    }
}

#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// `checkpoint_final.safetensors` (or the latest checkpoint when stopped early).
    pub final_checkpoint: PathBuf,
    /// Epochs run by this call (0 when the fold was already finished).
    pub epochs_run: usize,
    /// Best EMA pseudo-Dice of the run (NaN if none).
    pub best_ema: f64,
    pub stopped_early: bool,
}

/// Everything about the fold that does not change during training.
struct Setup {
    plans_2d: nnunet_common::plans::Configuration2d,
    dataset_json: serde_json::Value,
    num_classes: i64,
    in_channels: i64,
    train_cases: Vec<Arc<CaseData>>,
    val_cases: Vec<Arc<CaseData>>,
    aug: AugConfig,
    /// The dataset's ignore label (`labels.ignore`), masked out of the loss and the pseudo-Dice.
    ignore_label: Option<i64>,
}

fn setup(spec: &FoldSpec) -> anyhow::Result<Setup> {
    let pre = &spec.preprocessed_dir;
    let plans_path = pre.join(format!("{}.json", nnunet_common::paths::PLANS_NAME));
    let plans = Plans::load(&plans_path).with_context(|| format!("loading plans {}", plans_path.display()))?;
    let plans_2d = plans.config_2d().with_context(|| format!("plans {}", plans_path.display()))?;
    let arch = &plans_2d.architecture.arch_kwargs;
    PlainConvUNet::check_arch(arch).map_err(|e| anyhow!("{}: {e}", plans_path.display()))?;
    if plans_2d.patch_size.len() != 2 {
        bail!("{}: the 2d configuration's patch_size {:?} must have 2 entries", plans_path.display(), plans_2d.patch_size);
    }
    let dj_path = pre.join("dataset.json");
    let ds = DatasetJson::load(&dj_path).with_context(|| format!("loading {}", dj_path.display()))?;
    let dataset_json: serde_json::Value = serde_json::from_slice(&std::fs::read(&dj_path)?)?;
    let num_classes = ds.num_classes() as i64;
    if num_classes < 2 {
        bail!("{}: {num_classes} class(es); training needs background plus at least one label", dj_path.display());
    }
    let data_dir = pre.join(&plans_2d.data_identifier);
    let ids =
        nnunet_common::case::list_cases(&data_dir).with_context(|| format!("listing preprocessed cases in {}", data_dir.display()))?;
    if ids.is_empty() {
        bail!("no preprocessed cases in {}; run `nnunet preprocess` first", data_dir.display());
    }
    let raw_dir =
        nnunet_common::paths::raw_root().map(|r| r.join(pre.file_name().unwrap_or_default())).unwrap_or_else(|_| pre.join(".no-raw"));
    let splits = nnunet_common::splits::load_or_create(pre, &raw_dir, &ids).with_context(|| format!("splits of {}", pre.display()))?;
    let split = nnunet_common::splits::split_for_fold(&splits, &ids, spec.fold);
    let open = |list: &[String]| -> anyhow::Result<Vec<Arc<CaseData>>> {
        list.iter().map(|id| CaseData::open(&data_dir, id).map(Arc::new)).collect()
    };
    let train_cases = open(&split.train)?;
    let mut val_cases = open(&split.val)?;
    if train_cases.is_empty() {
        bail!("fold {} of {} has no training cases", spec.fold, pre.display());
    }
    if val_cases.is_empty() {
        // nnU-Net would fail here too; validating on the training cases keeps tiny datasets usable.
        val_cases = train_cases.clone();
    }
    let in_channels = train_cases[0].shape[0] as i64;
    if in_channels as usize != ds.num_channels() {
        bail!("preprocessed case {} has {in_channels} channels, dataset.json lists {}", train_cases[0].id, ds.num_channels());
    }
    let patch = [plans_2d.patch_size[0], plans_2d.patch_size[1]];
    let mask_channels = plans_2d.use_mask_for_norm.iter().enumerate().filter(|(_, &m)| m).map(|(i, _)| i).collect();
    let aug = AugConfig {
        patch,
        rotation: AugConfig::rotation_for_patch(patch),
        mirror_axes: vec![0, 1],
        mask_channels,
        ds_scales: arch.deep_supervision_scales(),
    };
    let ignore_label = ds.ignore_label();
    Ok(Setup { plans_2d, dataset_json, num_classes, in_channels, train_cases, val_cases, aug, ignore_label })
}

fn available_cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Host batch -> device tensors (image, one int64 target per deep-supervision output).
fn to_device(b: &Batch, device: Device) -> (Tensor, Vec<Tensor>) {
    let x =
        Tensor::from_slice(&b.image).view([b.batch_size as i64, b.channels as i64, b.patch[0] as i64, b.patch[1] as i64]).to_device(device);
    let ts = b
        .targets
        .iter()
        .zip(&b.target_shapes)
        .map(|(t, s)| Tensor::from_slice(t).view([b.batch_size as i64, s[0] as i64, s[1] as i64]).to_device(device).to_kind(Kind::Int64))
        .collect();
    (x, ts)
}

/// Mutable training state that a checkpoint captures.
struct State {
    /// Next epoch to run.
    epoch: usize,
    ema: EmaState,
    history: Vec<EpochMetrics>,
    last_lr: f64,
}

/// Trains one fold (see the module docs). Returns when all epochs ran, when `progress.should_stop()`
/// turned true (`stopped_early`), or with the error of `progress.on_epoch`.
pub fn train_fold(spec: &FoldSpec, progress: &mut dyn Progress) -> anyhow::Result<TrainOutcome> {
    let cfg = &spec.config;
    if cfg.epochs == 0 || cfg.iterations_per_epoch == 0 {
        bail!("epochs and iterations per epoch must be at least 1");
    }
    let fold_dir = &spec.fold_dir;
    std::fs::create_dir_all(fold_dir).with_context(|| format!("creating {}", fold_dir.display()))?;
    let final_paths = checkpoint::checkpoint_paths(&fold_dir.join(CheckpointKind::Final.file_stem()));
    if spec.resume && final_paths.1.is_file() {
        let (meta, _) = checkpoint::load(&final_paths.0).context("fold already finished but its final checkpoint does not verify")?;
        progress.log(&format!("fold {} is already finished ({} epochs); nothing to do", spec.fold, meta.epoch));
        return Ok(TrainOutcome {
            final_checkpoint: final_paths.0,
            epochs_run: 0,
            best_ema: meta.best_ema.unwrap_or(f64::NAN),
            stopped_early: false,
        });
    }

    let s = setup(spec)?;
    let device = spec.device;
    let cuda = device.is_cuda();
    let torch_threads = if cfg.torch_threads > 0 {
        cfg.torch_threads
    } else if cuda {
        1
    } else {
        available_cores()
    };
    tch::set_num_threads(torch_threads as i32);
    if cuda {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    tch::manual_seed(cfg.seed as i64);
    let vs = tch::nn::VarStore::new(device);
    let net = PlainConvUNet::new(&vs.root(), &s.plans_2d.architecture.arch_kwargs, s.in_channels, s.num_classes);
    let mut opt = Sgd::new(net.named_parameters(&vs), cfg.momentum, cfg.weight_decay, true);
    let mut scaler = cuda.then(|| GradScaler::new(device));
    let mut state = State { epoch: 0, ema: EmaState::default(), history: Vec::new(), last_lr: cfg.initial_lr };
    let mut logs = FoldLogs::open(fold_dir)?;

    // Resume: latest, else best (nnU-Net's --c order after final).
    if spec.resume {
        let latest = fold_dir.join(CheckpointKind::Latest.file_stem());
        let best = fold_dir.join(CheckpointKind::Best.file_stem());
        let from = [latest, best].into_iter().find(|p| checkpoint::checkpoint_paths(p).1.is_file());
        if let Some(ck) = from {
            let (meta, tensors) = checkpoint::load(&ck)?;
            checkpoint::restore_weights(&net, &vs, &tensors, &ck)?;
            for (name, t) in &tensors {
                if let Some(p) = name.strip_prefix(checkpoint::MOMENTUM_PREFIX) {
                    opt.set_momentum_buffer(p, t).map_err(|e| anyhow!("{}: {e}", ck.display()))?;
                }
            }
            if let (Some(sc), Some(st)) = (scaler.as_mut(), meta.grad_scaler) {
                *sc = GradScaler::with_state(device, st.scale, st.growth_tracker);
            }
            if meta.rng.seed != cfg.seed {
                progress.log(&format!("note: the checkpoint was trained with seed {}, continuing with its seed", meta.rng.seed));
            }
            state = State {
                epoch: meta.epoch,
                ema: EmaState { ema: meta.ema_fg_dice, best_ema: meta.best_ema },
                history: meta.logging.iter().take(meta.epoch).cloned().collect(),
                last_lr: meta.lr,
            };
            let msg = format!("resuming fold {} from {} at epoch {} of {}", spec.fold, ck.display(), meta.epoch, cfg.epochs);
            logs.line(&msg)?;
            progress.log(&msg);
            logs.write_history(&state.history, false)?;
            return run_epochs(spec, &s, &net, &vs, &mut opt, scaler.as_mut(), state, meta.rng.seed, &mut logs, progress);
        }
        progress.log(&format!("no checkpoint to continue from in {}; starting fold {} from scratch", fold_dir.display(), spec.fold));
    }
    logs.line(&format!(
        "training fold {} on {:?}: {} train / {} val cases, patch {:?}, batch {}, {} stages, {} parameters, {} epochs x {} iterations",
        spec.fold,
        device,
        s.train_cases.len(),
        s.val_cases.len(),
        s.aug.patch,
        s.plans_2d.batch_size,
        s.plans_2d.architecture.arch_kwargs.n_stages,
        net.num_parameters(&vs),
        cfg.epochs,
        cfg.iterations_per_epoch
    ))?;
    logs.write_history(&state.history, false)?;
    run_epochs(spec, &s, &net, &vs, &mut opt, scaler.as_mut(), state, cfg.seed, &mut logs, progress)
}

#[allow(clippy::too_many_arguments)]
fn run_epochs(
    spec: &FoldSpec,
    s: &Setup,
    net: &PlainConvUNet,
    vs: &tch::nn::VarStore,
    opt: &mut Sgd,
    mut scaler: Option<&mut GradScaler>,
    mut state: State,
    seed: u64,
    logs: &mut FoldLogs,
    progress: &mut dyn Progress,
) -> anyhow::Result<TrainOutcome> {
    let cfg = &spec.config;
    let device = spec.device;
    let cuda = device.is_cuda();
    let batch_size = s.plans_2d.batch_size;
    let ds_weights = loss::deep_supervision_weights(s.aug.ds_scales.len().max(1));
    let loss_spec = loss::LossSpec { batch_dice: s.plans_2d.batch_dice, ignore_label: s.ignore_label };
    let loader_threads = if cfg.loader_threads > 0 { cfg.loader_threads } else { available_cores().min(12) };
    let gpu_aug = cfg.gpu_augmentation && cuda;
    let train_cfg = LoaderConfig {
        batch_size,
        aug: s.aug.clone(),
        train: true,
        oversample: cfg.oversample_foreground_percent,
        seed,
        stream: 1,
        crop_only: false,
    };
    let val_cfg = LoaderConfig { train: false, stream: 2, ..train_cfg.clone() };
    let iters = cfg.iterations_per_epoch as u64;
    let val_iters = cfg.val_iterations_per_epoch as u64;
    let mut train_loader = if gpu_aug {
        super::gpu_aug::start_crop_loader(s.train_cases.clone(), train_cfg.clone(), state.epoch as u64 * iters, loader_threads)
    } else {
        BatchLoader::start(s.train_cases.clone(), train_cfg, state.epoch as u64 * iters, loader_threads, (2 * loader_threads).max(6))
    };
    let mut val_loader = (val_iters > 0).then(|| {
        let t = (loader_threads / 2).max(1);
        BatchLoader::start(s.val_cases.clone(), val_cfg, state.epoch as u64 * val_iters, t, t.max(2))
    });
    let gpu_augmenter = gpu_aug.then(|| super::gpu_aug::GpuAugmenter::new(&s.aug, device));
    let start_epoch = state.epoch;
    let mut console = super::report::Console::new(cfg.epochs, cfg.iterations_per_epoch);

    for epoch in start_epoch..cfg.epochs {
        let t_epoch = Instant::now();
        let lr = poly_lr(cfg.initial_lr, epoch, cfg.epochs, POLY_EXPONENT);
        console.start_epoch(epoch, lr);
        let mut wait = 0.0f64;
        let mut step_time = 0.0f64;
        let mut train_losses = Vec::with_capacity(iters as usize);
        for it in 0..iters {
            if progress.should_stop() {
                return stopped(spec, &state, logs, progress, epoch, it, start_epoch);
            }
            let tw = Instant::now();
            let batch = train_loader.next_batch()?;
            wait += tw.elapsed().as_secs_f64();
            let ts = Instant::now();
            let (x, targets) = match &gpu_augmenter {
                Some(g) => {
                    let (xc, sc) = super::gpu_aug::crop_batch_to_device(&batch, device);
                    g.augment(&xc, &sc, seed, batch.index)
                }
                None => to_device(&batch, device),
            };
            opt.zero_grad();
            let l = crate::train::amp::autocast(cuda, || {
                let outs = net.forward_ds(&x);
                loss::deep_supervision_loss(&outs, &targets, &ds_weights, loss_spec)
            });
            match scaler.as_deref_mut() {
                Some(sc) => {
                    sc.scale(&l).backward();
                    let skip = sc.unscale(&opt.grads());
                    opt.clip_grad_norm(cfg.grad_clip);
                    if !skip {
                        opt.step(lr);
                    }
                    sc.update();
                }
                None => {
                    l.backward();
                    opt.clip_grad_norm(cfg.grad_clip);
                    opt.step(lr);
                }
            }
            let lv = l.double_value(&[]);
            step_time += ts.elapsed().as_secs_f64();
            train_losses.push(lv);
            console.iteration(it as usize + 1, lv);
        }

        // Validation: loss and global pseudo-Dice over all validation batches (`nnUNetTrainer.on_validation_epoch_end`).
        let mut acc = DiceAccumulator::new(s.num_classes as usize, s.ignore_label);
        let mut val_losses = Vec::new();
        if let Some(vl) = val_loader.as_mut() {
            let _guard = tch::no_grad_guard();
            for _ in 0..val_iters {
                if progress.should_stop() {
                    return stopped(spec, &state, logs, progress, epoch, iters, start_epoch);
                }
                let tw = Instant::now();
                let batch = vl.next_batch()?;
                wait += tw.elapsed().as_secs_f64();
                let (x, targets) = to_device(&batch, device);
                let (l, out0) = crate::train::amp::autocast(cuda, || {
                    let outs = net.forward_ds(&x);
                    (loss::deep_supervision_loss(&outs, &targets, &ds_weights, loss_spec), outs[0].shallow_clone())
                });
                val_losses.push(l.double_value(&[]));
                acc.add_batch(&out0, &targets[0]);
            }
        }
        let dice = acc.dice_per_class();
        let mean_fg = nanmean(&dice);
        let (ema, new_best) = state.ema.update(mean_fg);
        let mean = |v: &[f64]| if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 };
        let m = EpochMetrics {
            epoch: epoch as u32,
            epochs: cfg.epochs as u32,
            train_loss: mean(&train_losses),
            val_loss: mean(&val_losses),
            pseudo_dice: dice,
            mean_fg_dice: mean_fg,
            ema_fg_dice: ema,
            lr,
            epoch_seconds: t_epoch.elapsed().as_secs_f64(),
            dataloader_wait_seconds: wait,
            step_seconds: step_time / iters as f64,
            device_memory_peak_bytes: 0,
            new_best,
        };
        state.history.push(m.clone());
        state.epoch = epoch + 1;
        state.last_lr = lr;
        console.end_epoch(&m);
        logs.epoch(&m)?;
        logs.write_history(&state.history, true)?;
        progress.on_epoch(&m).context("the progress reporter asked to stop")?;

        let last = epoch + 1 == cfg.epochs;
        if !last && cfg.save_every > 0 && (epoch + 1) % cfg.save_every == 0 {
            let files = save(spec, s, net, vs, opt, scaler.as_deref(), &state, seed, CheckpointKind::Latest)?;
            progress.on_checkpoint(CheckpointKind::Latest, &files)?;
        }
        if new_best {
            let files = save(spec, s, net, vs, opt, scaler.as_deref(), &state, seed, CheckpointKind::Best)?;
            logs.line(&format!("yayy! new best EMA pseudo Dice: {ema:.4}"))?;
            progress.on_checkpoint(CheckpointKind::Best, &files)?;
        }
    }
    drop(train_loader);
    drop(val_loader);
    let files = save(spec, s, net, vs, opt, scaler.as_deref(), &state, seed, CheckpointKind::Final)?;
    // nnU-Net removes checkpoint_latest once the final checkpoint exists.
    let (lw, lj) = checkpoint::checkpoint_paths(&spec.fold_dir.join(CheckpointKind::Latest.file_stem()));
    let _ = std::fs::remove_file(lj);
    let _ = std::fs::remove_file(lw);
    logs.line(&format!("training done: {} epochs, best EMA pseudo Dice {:.4}", cfg.epochs, state.ema.best_ema.unwrap_or(f64::NAN)))?;
    progress.on_checkpoint(CheckpointKind::Final, &files)?;
    Ok(TrainOutcome {
        final_checkpoint: files[0].clone(),
        epochs_run: cfg.epochs - start_epoch,
        best_ema: state.ema.best_ema.unwrap_or(f64::NAN),
        stopped_early: false,
    })
}

fn stopped(
    spec: &FoldSpec,
    state: &State,
    logs: &mut FoldLogs,
    progress: &mut dyn Progress,
    epoch: usize,
    it: u64,
    start_epoch: usize,
) -> anyhow::Result<TrainOutcome> {
    let msg = format!("stop requested during epoch {} (iteration {it}); the last checkpoint stays the resume point", epoch + 1);
    let _ = logs.line(&msg);
    progress.log(&msg);
    Ok(TrainOutcome {
        final_checkpoint: checkpoint::checkpoint_paths(&spec.fold_dir.join(CheckpointKind::Latest.file_stem())).0,
        epochs_run: state.epoch - start_epoch,
        best_ema: state.ema.best_ema.unwrap_or(f64::NAN),
        stopped_early: true,
    })
}

#[allow(clippy::too_many_arguments)]
fn save(
    spec: &FoldSpec,
    s: &Setup,
    net: &PlainConvUNet,
    vs: &tch::nn::VarStore,
    opt: &Sgd,
    scaler: Option<&GradScaler>,
    state: &State,
    seed: u64,
    kind: CheckpointKind,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut meta = CheckpointMeta {
        format_version: checkpoint::FORMAT_VERSION,
        trainer_name: nnunet_common::paths::TRAINER_NAME.into(),
        kind: kind.name().into(),
        epoch: state.epoch,
        epochs_total: spec.config.epochs,
        lr: state.last_lr,
        ema_fg_dice: state.ema.ema,
        best_ema: state.ema.best_ema,
        logging: state.history.clone(),
        rng: RngState { seed, next_epoch: state.epoch },
        grad_scaler: scaler.map(|s| {
            let (scale, growth_tracker) = s.state();
            GradScalerState { scale, growth_tracker }
        }),
        weights_file: String::new(),
        sha256: String::new(),
        init_args: InitArgs {
            configuration: s.plans_2d.clone(),
            configuration_name: nnunet_common::paths::CONFIGURATION.into(),
            dataset_json: s.dataset_json.clone(),
            fold: spec.fold,
            num_input_channels: s.in_channels,
            num_classes: s.num_classes,
            inference_allowed_mirroring_axes: vec![0, 1],
        },
        training_config: serde_json::to_value(&spec.config)?,
    };
    checkpoint::save(&spec.fold_dir, kind.file_stem(), &net.named_parameters(vs), &opt.momentum_buffers(), &mut meta)
}

/// Used by `nnunet-worker bench-step`: times `n` training steps on random data for the given plan
/// parameters; returns seconds per step (after `warmup` steps).
#[allow(clippy::too_many_arguments)]
pub fn bench_steps(
    arch: &nnunet_common::plans::ArchKwargs,
    in_channels: i64,
    num_classes: i64,
    batch: usize,
    patch: [usize; 2],
    device: Device,
    warmup: usize,
    n: usize,
) -> anyhow::Result<f64> {
    let cuda = device.is_cuda();
    let vs = tch::nn::VarStore::new(device);
    let net = PlainConvUNet::new(&vs.root(), arch, in_channels, num_classes);
    let mut opt = Sgd::new(net.named_parameters(&vs), 0.99, 3e-5, true);
    let mut scaler = cuda.then(|| GradScaler::new(device));
    let scales = arch.deep_supervision_scales();
    let w = loss::deep_supervision_weights(scales.len());
    let x = Tensor::randn([batch as i64, in_channels, patch[0] as i64, patch[1] as i64], (Kind::Float, device));
    let targets: Vec<Tensor> = scales
        .iter()
        .map(|s| {
            let h = (patch[0] as f64 * s[0]).round() as i64;
            let ww = (patch[1] as f64 * s[1]).round() as i64;
            Tensor::randint(num_classes, [batch as i64, h, ww], (Kind::Int64, device))
        })
        .collect();
    let mut t0 = Instant::now();
    for i in 0..warmup + n {
        if i == warmup {
            if cuda {
                tch::Cuda::synchronize(0);
            }
            t0 = Instant::now();
        }
        opt.zero_grad();
        let l =
            crate::train::amp::autocast(cuda, || loss::deep_supervision_loss(&net.forward_ds(&x), &targets, &w, loss::LossSpec::batch()));
        match scaler.as_mut() {
            Some(sc) => {
                sc.scale(&l).backward();
                let skip = sc.unscale(&opt.grads());
                opt.clip_grad_norm(12.0);
                if !skip {
                    opt.step(0.01);
                }
                sc.update();
            }
            None => {
                l.backward();
                opt.clip_grad_norm(12.0);
                opt.step(0.01);
            }
        }
        let _ = l.double_value(&[]);
    }
    if cuda {
        tch::Cuda::synchronize(0);
    }
    Ok(t0.elapsed().as_secs_f64() / n.max(1) as f64)
}
