//! The epoch loop of one fold ([`train_fold`]), as `nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py::run_training`
//! does it: for each epoch set the poly LR, run `iterations_per_epoch` training steps
//! ([`super::step::train_step`]), run `val_iterations_per_epoch` validation batches (loss + global
//! pseudo-Dice), update the EMA, write the logs and `progress.png`, and checkpoint (`best` on a strict
//! EMA improvement, `latest` every `save_every` epochs except the last, `final` at the end, after which
//! `latest` is removed).
//!
//! Everything runs on the calling OS thread (libtorch's autocast and grad mode are thread-local); the
//! data loader threads only produce host buffers.
use super::amp::GradScaler;
use super::config::{CheckpointKind, FoldSpec, Progress, TrainOutcome};
use super::ema::{nanmean, DiceAccumulator, EmaState};
use super::loader::{BatchLoader, LoaderConfig};
use super::loss;
use super::optim::Sgd;
use super::report::FoldLogs;
use super::schedule::{poly_lr, POLY_EXPONENT};
use super::setup::{setup, Setup};
use super::step::{to_device, train_step, StepLoss};
use crate::checkpoint::{self, CheckpointMeta, GradScalerState, InitArgs, RngState};
use crate::net::PlainConvUNet;
use anyhow::{anyhow, bail, Context};
use nnunet_common::train_log::EpochMetrics;
use std::path::PathBuf;
use std::time::Instant;

fn available_cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Mutable training state that a checkpoint captures.
struct State {
    /// Next epoch to run.
    epoch: usize,
    ema: EmaState,
    history: Vec<EpochMetrics>,
    last_lr: f64,
}

/// The network, optimizer and fixed setup of a fold being trained.
struct Trainer<'a> {
    spec: &'a FoldSpec,
    s: Setup,
    net: PlainConvUNet,
    vs: tch::nn::VarStore,
    opt: Sgd,
    scaler: Option<GradScaler>,
    /// Seed of the batches (the checkpoint's when resuming).
    seed: u64,
    how: StepLoss,
}

/// The batch loaders of a run of epochs.
struct Loaders {
    train: BatchLoader,
    val: Option<BatchLoader>,
    gpu: Option<super::gpu_aug::GpuAugmenter>,
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
    let mut t = Trainer::new(spec, setup(spec)?)?;
    let mut logs = FoldLogs::open(fold_dir)?;
    let resumed = if spec.resume { t.resume(&mut logs, progress)? } else { None };
    let state = match resumed {
        Some(state) => state,
        None => {
            logs.line(&t.describe())?;
            // nnU-Net loads pretrained weights only when not continuing (nnunetv2/run/run_training.py::maybe_load_checkpoint).
            if let Some(p) = &cfg.pretrained_weights {
                let msg = crate::interop::pretrained::load_pretrained_weights(&t.net, &t.vs, p)?;
                logs.line(&msg)?;
                progress.log(&msg);
            }
            State { epoch: 0, ema: EmaState::default(), history: Vec::new(), last_lr: cfg.initial_lr }
        }
    };
    logs.write_history(&state.history, false)?;
    t.run_epochs(state, &mut logs, progress)
}

impl<'a> Trainer<'a> {
    fn new(spec: &'a FoldSpec, s: Setup) -> anyhow::Result<Self> {
        let cfg = &spec.config;
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
        let opt = Sgd::new(net.named_parameters(&vs), cfg.momentum, cfg.weight_decay, true);
        let how = StepLoss {
            ds_weights: loss::deep_supervision_weights(s.aug.ds_scales.len().max(1)),
            loss: loss::LossSpec { batch_dice: s.plans_2d.batch_dice, ignore_label: s.ignore_label, regions: s.regions.is_some() },
            grad_clip: cfg.grad_clip,
            autocast: cuda,
        };
        Ok(Trainer { spec, s, net, vs, opt, scaler: cuda.then(|| GradScaler::new(device)), seed: cfg.seed, how })
    }

    fn describe(&self) -> String {
        let (spec, s, cfg) = (self.spec, &self.s, &self.spec.config);
        format!(
            "training fold {} on {:?}: {} train / {} val cases, patch {:?}, batch {}, {} stages, {} parameters, {} epochs x {} iterations",
            spec.fold,
            spec.device,
            s.train_cases.len(),
            s.val_cases.len(),
            s.aug.patch,
            s.plans_2d.batch_size,
            s.plans_2d.architecture.arch_kwargs.n_stages,
            self.net.num_parameters(&self.vs),
            cfg.epochs,
            cfg.iterations_per_epoch
        )
    }

    /// Restores `checkpoint_latest`, else `best` (nnU-Net's `--c` order after `final`); `None` when neither exists.
    fn resume(&mut self, logs: &mut FoldLogs, progress: &mut dyn Progress) -> anyhow::Result<Option<State>> {
        let fold_dir = &self.spec.fold_dir;
        let latest = fold_dir.join(CheckpointKind::Latest.file_stem());
        let best = fold_dir.join(CheckpointKind::Best.file_stem());
        let Some(ck) = [latest, best].into_iter().find(|p| checkpoint::checkpoint_paths(p).1.is_file()) else {
            progress.log(&format!(
                "no checkpoint to continue from in {}; starting fold {} from scratch",
                fold_dir.display(),
                self.spec.fold
            ));
            return Ok(None);
        };
        let (meta, tensors) = checkpoint::load(&ck)?;
        checkpoint::restore_weights(&self.net, &self.vs, &tensors, &ck)?;
        for (name, t) in &tensors {
            if let Some(p) = name.strip_prefix(checkpoint::MOMENTUM_PREFIX) {
                self.opt.set_momentum_buffer(p, t).map_err(|e| anyhow!("{}: {e}", ck.display()))?;
            }
        }
        if let (Some(sc), Some(st)) = (self.scaler.as_mut(), meta.grad_scaler) {
            *sc = GradScaler::with_state(self.spec.device, st.scale, st.growth_tracker);
        }
        if meta.rng.seed != self.spec.config.seed {
            progress.log(&format!("note: the checkpoint was trained with seed {}, continuing with its seed", meta.rng.seed));
        }
        self.seed = meta.rng.seed;
        let msg = format!("resuming fold {} from {} at epoch {} of {}", self.spec.fold, ck.display(), meta.epoch, self.spec.config.epochs);
        logs.line(&msg)?;
        progress.log(&msg);
        Ok(Some(State {
            epoch: meta.epoch,
            ema: EmaState { ema: meta.ema_fg_dice, best_ema: meta.best_ema },
            history: meta.logging.iter().take(meta.epoch).cloned().collect(),
            last_lr: meta.lr,
        }))
    }

    fn start_loaders(&self, epoch: usize) -> Loaders {
        let (cfg, s) = (&self.spec.config, &self.s);
        let loader_threads = if cfg.loader_threads > 0 { cfg.loader_threads } else { available_cores().min(12) };
        let gpu_aug = cfg.gpu_augmentation && self.spec.device.is_cuda();
        let train_cfg = LoaderConfig {
            batch_size: s.plans_2d.batch_size,
            aug: s.aug.clone(),
            train: true,
            oversample: cfg.oversample_foreground_percent,
            seed: self.seed,
            stream: 1,
            crop_only: false,
        };
        let val_cfg = LoaderConfig { train: false, stream: 2, ..train_cfg.clone() };
        let (iters, val_iters) = (cfg.iterations_per_epoch as u64, cfg.val_iterations_per_epoch as u64);
        let start = epoch as u64 * iters;
        let train = if gpu_aug {
            super::gpu_aug::start_crop_loader(s.train_cases.clone(), train_cfg, start, loader_threads)
        } else {
            BatchLoader::start(s.train_cases.clone(), train_cfg, start, loader_threads, (2 * loader_threads).max(6))
        };
        let val = (val_iters > 0).then(|| {
            let t = (loader_threads / 2).max(1);
            BatchLoader::start(s.val_cases.clone(), val_cfg, epoch as u64 * val_iters, t, t.max(2))
        });
        Loaders { train, val, gpu: gpu_aug.then(|| super::gpu_aug::GpuAugmenter::new(&s.aug, self.spec.device)) }
    }

    fn run_epochs(&mut self, mut state: State, logs: &mut FoldLogs, progress: &mut dyn Progress) -> anyhow::Result<TrainOutcome> {
        let spec = self.spec;
        let cfg = &spec.config;
        let start_epoch = state.epoch;
        let mut loaders = self.start_loaders(start_epoch);
        let mut console = super::report::Console::new(cfg.epochs, cfg.iterations_per_epoch);
        for epoch in start_epoch..cfg.epochs {
            let t_epoch = Instant::now();
            let lr = poly_lr(cfg.initial_lr, epoch, cfg.epochs, POLY_EXPONENT);
            console.start_epoch(epoch, lr);
            let Some(train) = self.train_epoch(&mut loaders, lr, &mut console, progress)? else {
                return stopped(spec, &state, logs, progress, epoch, start_epoch);
            };
            let Some(EpochVal { losses: val_losses, dice, wait: val_wait }) = self.validate_epoch(&mut loaders, progress)? else {
                return stopped(spec, &state, logs, progress, epoch, start_epoch);
            };
            let mean_fg = nanmean(&dice);
            let (ema, new_best) = state.ema.update(mean_fg);
            let m = EpochMetrics {
                epoch: epoch as u32,
                epochs: cfg.epochs as u32,
                train_loss: mean(&train.losses),
                val_loss: mean(&val_losses),
                pseudo_dice: dice,
                mean_fg_dice: mean_fg,
                ema_fg_dice: ema,
                lr,
                epoch_seconds: t_epoch.elapsed().as_secs_f64(),
                dataloader_wait_seconds: train.wait + val_wait,
                step_seconds: train.step_time / cfg.iterations_per_epoch as f64,
                device_memory_peak_bytes: crate::nvml::peak_used_bytes(),
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
                progress.on_checkpoint(CheckpointKind::Latest, &self.save(&state, CheckpointKind::Latest)?)?;
            }
            if new_best {
                let files = self.save(&state, CheckpointKind::Best)?;
                logs.line(&format!("yayy! new best EMA pseudo Dice: {ema:.4}"))?;
                progress.on_checkpoint(CheckpointKind::Best, &files)?;
            }
        }
        drop(loaders);
        self.finish(&state, start_epoch, logs, progress)
    }

    /// The training iterations of one epoch; `None` when a stop was requested.
    fn train_epoch(
        &mut self,
        loaders: &mut Loaders,
        lr: f64,
        console: &mut super::report::Console,
        progress: &mut dyn Progress,
    ) -> anyhow::Result<Option<EpochTrain>> {
        let iters = self.spec.config.iterations_per_epoch;
        let mut out = EpochTrain { losses: Vec::with_capacity(iters), wait: 0.0, step_time: 0.0 };
        for it in 0..iters {
            if progress.should_stop() {
                return Ok(None);
            }
            let tw = Instant::now();
            let batch = loaders.train.next_batch()?;
            out.wait += tw.elapsed().as_secs_f64();
            let ts = Instant::now();
            let (x, targets) = match &loaders.gpu {
                Some(g) => {
                    let (xc, sc) = super::gpu_aug::crop_batch_to_device(&batch, self.spec.device);
                    g.augment(&xc, &sc, self.seed, batch.index)
                }
                None => to_device(&batch, self.spec.device),
            };
            let targets = self.network_targets(targets);
            let lv = train_step(&self.net, &mut self.opt, self.scaler.as_mut(), &self.how, (&x, targets.as_slice()), lr);
            out.step_time += ts.elapsed().as_secs_f64();
            out.losses.push(lv);
            console.iteration(it + 1, lv);
        }
        Ok(Some(out))
    }

    /// Validation loss and global pseudo-Dice over the epoch's validation batches, and the time spent
    /// waiting for them; `None` when a stop was requested.
    fn validate_epoch(&self, loaders: &mut Loaders, progress: &mut dyn Progress) -> anyhow::Result<Option<EpochVal>> {
        let mut acc = match self.s.regions {
            Some(_) => DiceAccumulator::for_regions(self.s.num_classes as usize, self.s.ignore_label),
            None => DiceAccumulator::new(self.s.num_classes as usize, self.s.ignore_label),
        };
        let (mut losses, mut wait) = (Vec::new(), 0.0);
        if let Some(vl) = loaders.val.as_mut() {
            let _guard = tch::no_grad_guard();
            for _ in 0..self.spec.config.val_iterations_per_epoch {
                if progress.should_stop() {
                    return Ok(None);
                }
                let tw = Instant::now();
                let batch = vl.next_batch()?;
                wait += tw.elapsed().as_secs_f64();
                let (x, targets) = to_device(&batch, self.spec.device);
                let targets = self.network_targets(targets);
                let (l, out0) = super::amp::autocast(self.how.autocast, || {
                    let outs = self.net.forward_ds(&x);
                    (loss::deep_supervision_loss(&outs, &targets, &self.how.ds_weights, self.how.loss), outs[0].shallow_clone())
                });
                losses.push(l.double_value(&[]));
                acc.add_batch(&out0, &targets[0]);
            }
        }
        Ok(Some(EpochVal { losses, dice: acc.dice_per_class(), wait }))
    }

    /// The loss's targets: the label maps, or with regions one channel per region (after the
    /// augmentation, CPU or GPU, as `ConvertSegmentationToRegionsTransform` comes last upstream).
    fn network_targets(&self, targets: Vec<tch::Tensor>) -> Vec<tch::Tensor> {
        match &self.s.regions {
            Some(r) => targets.iter().map(|t| super::region_loss::region_targets(t, r, self.s.ignore_label)).collect(),
            None => targets,
        }
    }

    /// Writes `checkpoint_final`, removes `checkpoint_latest` (as nnU-Net does) and reports.
    fn finish(&self, state: &State, start_epoch: usize, logs: &mut FoldLogs, progress: &mut dyn Progress) -> anyhow::Result<TrainOutcome> {
        let cfg = &self.spec.config;
        let files = self.save(state, CheckpointKind::Final)?;
        let (lw, lj) = checkpoint::checkpoint_paths(&self.spec.fold_dir.join(CheckpointKind::Latest.file_stem()));
        for p in [lj, lw] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
            }
        }
        logs.line(&format!("training done: {} epochs, best EMA pseudo Dice {:.4}", cfg.epochs, state.ema.best_ema.unwrap_or(f64::NAN)))?;
        progress.on_checkpoint(CheckpointKind::Final, &files)?;
        Ok(TrainOutcome {
            final_checkpoint: files[0].clone(),
            epochs_run: cfg.epochs - start_epoch,
            best_ema: state.ema.best_ema.unwrap_or(f64::NAN),
            stopped_early: false,
        })
    }

    fn save(&self, state: &State, kind: CheckpointKind) -> anyhow::Result<Vec<PathBuf>> {
        let (spec, s) = (self.spec, &self.s);
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
            rng: RngState { seed: self.seed, next_epoch: state.epoch },
            grad_scaler: self.scaler.as_ref().map(|s| {
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
        checkpoint::save(&spec.fold_dir, kind.file_stem(), &self.net.named_parameters(&self.vs), &self.opt.momentum_buffers(), &mut meta)
    }
}

/// What one epoch's validation batches measured.
struct EpochVal {
    losses: Vec<f64>,
    /// Global pseudo-Dice per foreground class.
    dice: Vec<f64>,
    /// Seconds waiting for batches.
    wait: f64,
}

/// What one epoch's training iterations measured.
struct EpochTrain {
    losses: Vec<f64>,
    /// Seconds waiting for batches.
    wait: f64,
    /// Seconds in [`train_step`].
    step_time: f64,
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn stopped(
    spec: &FoldSpec,
    state: &State,
    logs: &mut FoldLogs,
    progress: &mut dyn Progress,
    epoch: usize,
    start_epoch: usize,
) -> anyhow::Result<TrainOutcome> {
    let msg = format!("stop requested during epoch {}; the last checkpoint stays the resume point", epoch + 1);
    if let Err(e) = logs.line(&msg) {
        tracing::warn!("could not write the training log: {e:#}");
    }
    progress.log(&msg);
    Ok(TrainOutcome {
        final_checkpoint: checkpoint::checkpoint_paths(&spec.fold_dir.join(CheckpointKind::Latest.file_stem())).0,
        epochs_run: state.epoch - start_epoch,
        best_ema: state.ema.best_ema.unwrap_or(f64::NAN),
        stopped_early: true,
    })
}
