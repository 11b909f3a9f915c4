//! `nnunet-worker train`: trains one fold standalone with the same code the coordinator drives
//! (`train::train_fold`), printing one line per epoch (or a progress bar on a TTY).
use crate::train::{self, CheckpointKind, FoldSpec, Progress, TrainingConfig};
use anyhow::Context;
use nnunet_common::train_log::EpochMetrics;
use nnunet_common::Fold;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(clap::Args, Debug, Clone)]
pub struct TrainArgs {
    /// Preprocessed dataset: a folder, or a name/id under $nnUNet_preprocessed.
    #[arg(long)]
    pub dataset: String,
    /// Plans to train with (nnU-Net's -p): `<NAME>.json` in the preprocessed folder, e.g.
    /// nnUNetResEncUNetMPlans; the model folder is nnUNetTrainer__<NAME>__2d.
    #[arg(long, short = 'p', default_value = nnunet_common::paths::PLANS_NAME)]
    pub plans: String,
    /// Fold to train: 0-4 (a larger number uses nnU-Net's random 80:20 split), or `all` (every
    /// training case, validated on the training cases as nnU-Net's `fold all`; folder `fold_all`).
    #[arg(long, default_value = "0")]
    pub fold: Fold,
    /// Epochs (nnU-Net: 1000).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Training iterations per epoch (nnU-Net: 250).
    #[arg(long)]
    pub iters: Option<usize>,
    /// Validation iterations per epoch (nnU-Net: 50).
    #[arg(long)]
    pub val_iters: Option<usize>,
    /// Write checkpoint_latest every N epochs (nnU-Net: 50).
    #[arg(long)]
    pub save_every: Option<usize>,
    /// auto (cuda when a GPU is visible, else cpu; nnU-Net's -device default is cuda), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Continue from the fold's checkpoint_latest (like nnU-Net's --c).
    #[arg(long = "continue")]
    pub resume: bool,
    /// Fold output folder (default $nnUNet_results/<dataset>/nnUNetTrainer__<plans>__2d/fold_K).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seed of the initialization and the batches.
    #[arg(long)]
    pub seed: Option<u64>,
    /// libtorch threads (default: 1 on CUDA, all cores on CPU).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Data-loader threads (default: cores, at most 12).
    #[arg(long)]
    pub loader_threads: Option<usize>,
    /// On CUDA, run the augmentations batched on the GPU (the default with fewer than 8 loader
    /// cores: --loader-threads, else the machine's cores).
    #[arg(long, conflicts_with = "cpu_augmentation")]
    pub gpu_augmentation: bool,
    /// Augment on the loader threads (CPU) even with few cores.
    #[arg(long)]
    pub cpu_augmentation: bool,
    /// Start from these weights instead of random init (ours .safetensors or nnU-Net .pth): every
    /// weight but the segmentation heads must match in name and shape (nnU-Net's -pretrained_weights).
    #[arg(long = "pretrained-weights")]
    pub pretrained_weights: Option<PathBuf>,
    /// Skip the final sliding-window validation of the fold's validation cases (validation/summary.json).
    #[arg(long)]
    pub skip_validation: bool,
}

/// Console progress for the standalone command; SIGTERM/SIGINT request a stop.
struct CliProgress {
    stop: Arc<AtomicBool>,
}

impl Progress for CliProgress {
    fn on_epoch(&mut self, _m: &EpochMetrics) -> anyhow::Result<()> {
        Ok(())
    }
    fn on_checkpoint(&mut self, kind: CheckpointKind, files: &[PathBuf]) -> anyhow::Result<()> {
        if let Some(f) = files.first() {
            eprintln!("checkpoint {kind:?}: {}", f.display());
        }
        Ok(())
    }
    fn log(&mut self, line: &str) {
        eprintln!("{line}");
    }
    fn should_stop(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// The preprocessed dataset folder: `--dataset` as a folder, else a name or id under
/// `$nnUNet_preprocessed` (never a search of the working directory).
fn resolve_preprocessed(dataset: &str) -> anyhow::Result<PathBuf> {
    let as_path = std::path::Path::new(dataset);
    if as_path.is_dir() {
        return Ok(as_path.to_path_buf());
    }
    let root = nnunet_common::paths::preprocessed_root().map_err(|e| {
        anyhow::anyhow!(
            "--dataset {dataset:?} is not a folder, and it cannot be looked up by name: {e} (or pass the dataset folder itself)"
        )
    })?;
    nnunet_common::paths::resolve_dataset(&root, dataset).with_context(|| format!("resolving --dataset {dataset}"))
}

/// The fold folder: `--out`, else `$nnUNet_results/<dataset>/nnUNetTrainer__<plans>__2d/fold_K`.
fn fold_dir(args: &TrainArgs, pre: &std::path::Path) -> anyhow::Result<PathBuf> {
    if let Some(o) = &args.out {
        return Ok(o.clone());
    }
    let name = pre.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "dataset".into());
    let res = nnunet_common::paths::results_root().context("no --out given")?;
    Ok(res.join(&name).join(nnunet_common::paths::model_folder_name_for(&args.plans)).join(args.fold.dir_name()))
}

/// nnU-Net's defaults with the command line's overrides.
fn training_config(args: &TrainArgs) -> TrainingConfig {
    let mut config = TrainingConfig::nnunet_v2();
    let set = |v: Option<usize>, field: &mut usize| {
        if let Some(v) = v {
            *field = v;
        }
    };
    set(args.epochs, &mut config.epochs);
    set(args.iters, &mut config.iterations_per_epoch);
    set(args.val_iters, &mut config.val_iterations_per_epoch);
    set(args.save_every, &mut config.save_every);
    set(args.threads, &mut config.torch_threads);
    set(args.loader_threads, &mut config.loader_threads);
    if let Some(v) = args.seed {
        config.seed = v;
    }
    config.gpu_augmentation = args.gpu_augmentation;
    config.pretrained_weights = args.pretrained_weights.clone();
    config
}

/// Copies the files inference needs into the model folder (nnU-Net copies them at training start).
fn copy_model_files(pre: &std::path::Path, plans_name: &str, fold_dir: &std::path::Path) -> anyhow::Result<()> {
    let Some(model_dir) = fold_dir.parent() else { return Ok(()) };
    std::fs::create_dir_all(model_dir).with_context(|| format!("creating {}", model_dir.display()))?;
    for (src, dst) in [
        (format!("{plans_name}.json"), "plans.json"),
        ("dataset.json".into(), "dataset.json"),
        ("dataset_fingerprint.json".into(), "dataset_fingerprint.json"),
    ] {
        let s = pre.join(&src);
        if s.is_file() {
            let bytes = std::fs::read(&s).with_context(|| format!("reading {}", s.display()))?;
            nnunet_common::hash::write_atomic(&model_dir.join(dst), &bytes)?;
        }
    }
    Ok(())
}

/// A stop flag set by SIGTERM/SIGINT.
fn stop_on_signals() -> Arc<AtomicBool> {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let watcher_stop = stop.clone();
    std::thread::spawn(move || loop {
        if STOP.load(Ordering::SeqCst) {
            watcher_stop.store(true, Ordering::SeqCst);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    });
    stop
}

pub fn run_train(args: TrainArgs) -> anyhow::Result<()> {
    nnunet_common::paths::check_plans_name(&args.plans)?;
    let pre = resolve_preprocessed(&args.dataset)?;
    if !pre.join(format!("{}.json", args.plans)).is_file() {
        anyhow::bail!(
            "--plans {}: no {}.json in {} (plan it with `nnunet plan-and-preprocess <dataset> --planner ...`)",
            args.plans,
            args.plans,
            pre.display()
        );
    }
    let fold_dir = fold_dir(&args, &pre)?;
    copy_model_files(&pre, &args.plans, &fold_dir)?;
    let device = crate::device::parse_device(&args.device)?;
    let mut config = training_config(&args);
    let cores = args.loader_threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    if !args.gpu_augmentation && !args.cpu_augmentation && train::config::gpu_augmentation_by_default(device, cores) {
        eprintln!("{cores} loader core(s) for one GPU: augmenting on the GPU (--cpu-augmentation to keep it on the loader threads)");
        config.gpu_augmentation = true;
    }
    let stop = stop_on_signals();
    let spec = FoldSpec {
        preprocessed_dir: pre.clone(),
        plans_name: args.plans.clone(),
        fold: args.fold,
        fold_dir: fold_dir.clone(),
        device,
        config,
        resume: args.resume,
    };
    let mut progress = CliProgress { stop };
    let out = train::train_fold(&spec, &mut progress)?;
    if out.stopped_early {
        eprintln!("stopped; continue with --continue (resumes from {})", fold_dir.join("checkpoint_latest.safetensors").display());
        return Err(crate::error::WorkerError::Stopped.into());
    }
    println!(
        "fold {} done: {} epochs run, best EMA pseudo Dice {:.4}, final checkpoint {}",
        args.fold,
        out.epochs_run,
        out.best_ema,
        out.final_checkpoint.display()
    );
    // nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py::perform_actual_validation: sliding window over
    // the fold's validation cases.
    if !args.skip_validation {
        let opts = crate::infer::PredictOptions { device, ..Default::default() };
        let summary = crate::infer::validate_fold(&pre, args.fold, &fold_dir, &opts)
            .with_context(|| format!("final validation of fold {}", args.fold))?;
        println!("Mean Validation Dice: {:.4} ({})", summary.foreground_mean.dice, fold_dir.join("validation/summary.json").display());
    }
    Ok(())
}

/// `nnunet-worker bench-step` (hidden): seconds per training step for given plan parameters.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchStepArgs {
    /// Square patch edge.
    #[arg(long, default_value_t = 512)]
    pub patch: usize,
    /// Encoder stages of the network.
    #[arg(long, default_value_t = 8)]
    pub stages: usize,
    /// Batch size.
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Input channels.
    #[arg(long, default_value_t = 1)]
    pub channels: i64,
    /// Output classes (background included).
    #[arg(long, default_value_t = 2)]
    pub classes: i64,
    /// auto (cuda when a GPU is visible, else cpu; nnU-Net's -device default is cuda), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Untimed steps first.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// libtorch threads (default all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn run_bench_step(a: BenchStepArgs) -> anyhow::Result<()> {
    let device = crate::device::parse_device(&a.device)?;
    let threads =
        a.threads.unwrap_or_else(|| if device.is_cuda() { 1 } else { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) });
    tch::set_num_threads(threads as i32);
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    let arch = train::synth::arch_kwargs(a.stages);
    let s = train::step::bench_steps(&train::step::BenchStep {
        arch: &arch,
        in_channels: a.channels,
        num_classes: a.classes,
        batch: a.batch,
        patch: [a.patch, a.patch],
        device,
        warmup: a.warmup,
        steps: a.steps,
    })?;
    println!(
        "{}",
        serde_json::json!({"device": crate::device::device_string(device), "cuda_available": tch::Cuda::is_available(),
            "cudnn_available": tch::Cuda::cudnn_is_available(), "patch": a.patch, "stages": a.stages, "batch": a.batch,
            "channels": a.channels, "threads": threads, "steps": a.steps, "seconds_per_step": s})
    );
    Ok(())
}

/// `nnunet-worker synth-preprocessed` (hidden): writes a synthetic preprocessed dataset (plans,
/// dataset.json, splits, cases) for the GPU check and benchmarks.
#[derive(clap::Args, Debug, Clone)]
pub struct SynthArgs {
    /// Output folder (`.../DatasetXXX_Name`).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of cases.
    #[arg(long, default_value_t = 16)]
    pub cases: usize,
    /// Square image and patch edge.
    #[arg(long, default_value_t = 512)]
    pub size: usize,
    /// Input channels.
    #[arg(long, default_value_t = 3)]
    pub channels: usize,
    /// Batch size written into the plan.
    #[arg(long, default_value_t = 12)]
    pub batch: usize,
    /// Encoder stages written into the plan.
    #[arg(long, default_value_t = 8)]
    pub stages: usize,
}

pub fn run_synth(a: SynthArgs) -> anyhow::Result<()> {
    let spec = train::synth::SynthSpec {
        cases: a.cases,
        size: a.size,
        channels: a.channels,
        patch: a.size,
        batch_size: a.batch,
        arch: train::synth::arch_kwargs(a.stages),
        seed: 1,
    };
    train::synth::write_preprocessed(&a.out, &spec)?;
    println!("wrote {} synthetic cases to {}", a.cases, a.out.display());
    Ok(())
}

/// `nnunet-worker bench-aug` (hidden): single-thread throughput of the CPU training augmentation
/// (the full training pipeline from the enlarged crop to the final patch and the DS targets).
#[derive(clap::Args, Debug, Clone)]
pub struct BenchAugArgs {
    /// Square final patch edge (the crop is the enlarged initial patch, 602 for 512).
    #[arg(long, default_value_t = 512)]
    pub patch: usize,
    /// Input channels.
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// Encoder stages (sets the deep-supervision targets).
    #[arg(long, default_value_t = 8)]
    pub stages: usize,
    /// Samples to time.
    #[arg(long, default_value_t = 200)]
    pub samples: usize,
}

pub fn run_bench_aug(a: BenchAugArgs) -> anyhow::Result<()> {
    use nnunet_common::augment::{augment_train, AugConfig, Image, Seg};
    use rand::{Rng, SeedableRng};
    let patch = [a.patch, a.patch];
    let rotation = AugConfig::rotation_for_patch(patch);
    let crop = AugConfig::initial_patch_size(patch, rotation);
    let cfg = AugConfig {
        patch,
        rotation,
        mirror_axes: vec![0, 1],
        mask_channels: vec![],
        ds_scales: train::synth::arch_kwargs(a.stages).deep_supervision_scales(),
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let n = crop[0] * crop[1];
    let img = Image {
        channels: a.channels,
        h: crop[0],
        w: crop[1],
        data: (0..a.channels * n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect(),
    };
    let seg = Seg { h: crop[0], w: crop[1], data: (0..n).map(|i| if (i / crop[1]) % 50 < 20 { 1 } else { 0 }).collect() };
    for _ in 0..5 {
        std::hint::black_box(augment_train(&img, &seg, &cfg, &mut rng));
    }
    let t = std::time::Instant::now();
    for _ in 0..a.samples {
        std::hint::black_box(augment_train(&img, &seg, &cfg, &mut rng));
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"patch": a.patch, "crop": crop, "channels": a.channels, "samples": a.samples, "threads": 1, "patches_per_second": a.samples as f64 / s})
    );
    Ok(())
}
