//! `nnunet-worker`: trains, validates and predicts with libtorch.
//!
//! - `nnunet-worker --coordinator URL --device cuda:0`: serve mode, leases tasks from a coordinator.
//! - `nnunet-worker train ...`: one fold standalone (the same code the coordinator drives).
//! - `nnunet-worker predict ...`: inference with trained folds (what `nnunet predict` runs).
//! - `nnunet-worker smoke`: a libtorch forward/backward step and the CUDA status.
use clap::{Parser, Subcommand};
use nnunet_worker::{cli_predict, cli_train, error, interop, serve};

/// mimalloc for the Rust side (augmentation buffers, batches, checkpoints): glibc's malloc hands the
/// megabyte-sized per-sample buffers back to the kernel and page-faults them in again on every sample,
/// which cost ~30% of the CPU augmentation time (benches/augment_ops.rs). libtorch keeps its own allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "nnunet-worker",
    version,
    about = "nnunet-rs worker: libtorch training, validation and prediction",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    serve: serve::ServeArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Train one fold standalone.
    Train(cli_train::TrainArgs),
    /// Predict images with trained folds.
    Predict(cli_predict::PredictArgs),
    /// Final sliding-window validation of a trained fold (writes validation/ and summary.json).
    Validate(cli_predict::ValidateArgs),
    /// Write a synthetic preprocessed dataset with a real 2D plan (for GPU checks and benchmarks).
    #[command(hide = true)]
    SynthPreprocessed(cli_train::SynthArgs),
    /// Time training steps of a plan-shaped network on random data.
    #[command(hide = true)]
    BenchStep(cli_train::BenchStepArgs),
    /// Time the augmentation pipeline (patches per second).
    #[command(hide = true)]
    BenchAug(cli_train::BenchAugArgs),
    /// Lease tasks from a coordinator (same as giving --coordinator without a subcommand).
    Serve(serve::ServeArgs),
    /// Run one libtorch forward/backward/SGD step on CPU and report CUDA availability.
    Smoke,
    /// Write one of our model folders as an nnU-Net v2 model zip (`nnUNetv2_install_pretrained_model_from_zip` installs it).
    ExportModel(interop::cli::ExportArgs),
    /// Turn an nnU-Net v2 model zip into a model folder for `predict`.
    ImportModel(interop::cli::ImportArgs),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("NNUNET_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // nnU-Net v2's spellings (-device, -chk, -tr, --disable_tta, ...) become our long flags first.
    let cli = Cli::parse_from(nnunet_common::nnunet_flags::normalize_args(std::env::args_os()));
    let res = match cli.cmd {
        Some(Cmd::Train(a)) => cli_train::run_train(a),
        Some(Cmd::ExportModel(a)) => interop::cli::run_export(a),
        Some(Cmd::ImportModel(a)) => interop::cli::run_import(a),
        Some(Cmd::Predict(a)) => cli_predict::run_predict(a),
        Some(Cmd::Validate(a)) => cli_predict::run_validate(a),
        Some(Cmd::SynthPreprocessed(a)) => cli_train::run_synth(a),
        Some(Cmd::BenchStep(a)) => cli_train::run_bench_step(a),
        Some(Cmd::BenchAug(a)) => cli_train::run_bench_aug(a),
        Some(Cmd::Serve(a)) => serve::run_serve(a),
        Some(Cmd::Smoke) => nnunet_worker::device::smoke(),
        None if cli.serve.coordinator.is_some() => serve::run_serve(cli.serve),
        None => Err(anyhow::anyhow!("give --coordinator URL to serve a coordinator, or a subcommand (train, predict, smoke); see --help")),
    };
    if let Err(e) = res {
        // The one place errors become exit codes (worker/src/error.rs).
        let code = error::exit_code(&e);
        match error::classify(&e) {
            Some(error::WorkerError::Stopped) => eprintln!("{e}"),
            Some(error::WorkerError::BadInput(bad)) => eprintln!("error: {bad}\n(not retryable: exit {code})"),
            _ => eprintln!("error: {e:#}"),
        }
        std::process::exit(code);
    }
}
