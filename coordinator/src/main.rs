//! `nnunet`: the user's command line and the coordinator. Needs no CUDA and no libtorch; commands
//! that run a network (`predict`) delegate to the `nnunet-worker` binary next to it.
use anyhow::Result;
use clap::{Parser, Subcommand};
use nnunet_common::nnunet_flags::normalize_args;
use nnunet_common::Fold;
use nnunet_coordinator::{cli_admin, cli_eval, cli_intake, cli_model, cli_monitor, cli_plan, cli_serve, client, local};

#[derive(Parser, Debug)]
#[command(
    name = "nnunet",
    version,
    about = "nnU-Net-grade 2D segmentation: convert, plan, train all five folds across GPUs and hosts, predict, evaluate."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Write a model folder as an nnU-Net v2 model zip (runs `nnunet-worker export-model`; see its --help).
    #[command(disable_help_flag = true)]
    ExportModel {
        /// Arguments of `nnunet export-model` (-m MODEL_DIR -o model.zip [-f FOLDS] [--checkpoint NAME]).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Turn an nnU-Net v2 model zip into a model folder for `predict` (runs `nnunet-worker import-model`).
    #[command(disable_help_flag = true)]
    ImportModel {
        /// Arguments of `nnunet import-model` (model.zip -o MODEL_DIR).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Convert a folder of images and masks (or an nnU-Net v1/v2 folder) into an nnU-Net v2 dataset.
    Convert(cli_intake::ConvertArgs),
    /// Check an nnU-Net v2 raw dataset and list every problem found.
    Verify(cli_intake::VerifyArgs),
    /// Generate the built-in synthetic dataset (images/ and masks/ PNG folders).
    Synth(cli_intake::SynthArgs),
    /// Fingerprint + plan + splits (nnUNetv2_plan_experiment equivalent, 2d configuration).
    Plan(cli_plan::PlanArgs),
    /// Preprocess a planned dataset (resumable).
    Preprocess(cli_plan::PreprocessArgs),
    /// Plan then preprocess (nnUNetv2_plan_and_preprocess equivalent).
    PlanAndPreprocess(cli_plan::PlanAndPreprocessArgs),
    /// Evaluate a folder of predictions against ground truth (writes summary.json).
    Evaluate(cli_eval::EvaluateArgs),
    /// Merge prediction folders that hold saved probabilities.
    Ensemble(cli_eval::EnsembleArgs),
    /// Determine or apply the connected-component postprocessing.
    Postprocess(cli_eval::PostprocessArgs),
    /// Cross-validation summary of a model folder: merge the folds' validation, evaluate, choose postprocessing.
    CvSummary(cli_eval::CvSummaryArgs),
    /// Predict images with trained folds (runs `nnunet-worker predict`).
    #[command(disable_help_flag = true)]
    Predict {
        /// Arguments of `nnunet predict` (-i IN -o OUT, and -m MODEL_DIR or -d DATASET [-c 2d] [-tr TRAINER] [-p PLANS]).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The main job on one machine: embedded coordinator + one worker per device, all folds.
    Run(local::RunArgs),
    /// Run the coordinator for a cluster (workers connect to it).
    Serve(cli_serve::ServeArgs),
    /// Submit a run to a coordinator.
    Submit(cli_monitor::SubmitArgs),
    /// List runs, or show one run's fold table.
    Status {
        #[command(flatten)]
        conn: client::ConnectArgs,
        /// Run id (omit it to list every run).
        run: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Follow a run live (table on a terminal, one line per event otherwise).
    Watch {
        #[command(flatten)]
        conn: client::ConnectArgs,
        /// Run id (as printed by `nnunet submit` or `nnunet status`).
        run: String,
        /// Print one line per event even on a terminal.
        #[arg(long)]
        lines: bool,
    },
    /// Print a run's events and worker log lines.
    Logs {
        #[command(flatten)]
        conn: client::ConnectArgs,
        /// Run id (as printed by `nnunet submit` or `nnunet status`).
        run: String,
        /// Keep following new events until the run ends (like `tail -f`).
        #[arg(long, short)]
        follow: bool,
        /// Only this fold's events and log lines (a number or `all`).
        #[arg(long)]
        fold: Option<Fold>,
    },
    /// Cancel a run.
    Cancel {
        #[command(flatten)]
        conn: client::ConnectArgs,
        /// Run id to cancel.
        run: String,
    },
    /// Re-queue a fold of a run (training resumes from its last checkpoint).
    Retry {
        #[command(flatten)]
        conn: client::ConnectArgs,
        /// Run id.
        run: String,
        /// The fold to re-queue (a number or `all`).
        fold: Fold,
    },
    /// Manage finished runs.
    Runs {
        #[command(subcommand)]
        cmd: RunsCmd,
    },
    /// Role tokens (worker, viewer, operator) of a coordinator's state directory.
    Token {
        #[command(subcommand)]
        cmd: cli_admin::TokenCmd,
    },
}

#[derive(Subcommand, Debug)]
enum RunsCmd {
    /// Delete finished runs: database rows, journal and run directory.
    Rm {
        #[command(flatten)]
        conn: client::ConnectArgs,
        /// Run ids to delete (finished runs only).
        #[arg(required = true)]
        runs: Vec<String>,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("NNUNET_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // nnU-Net v2's spellings (-device, -chk, -tr, --disable_tta, ...) become our long flags first.
    let cli = Cli::parse_from(normalize_args(std::env::args_os()));
    if let Err(e) = dispatch(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn rt() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Convert(a) => cli_intake::run_convert(a),
        Cmd::Verify(a) => cli_intake::run_verify(a),
        Cmd::Synth(a) => cli_intake::run_synth(a),
        Cmd::Plan(a) => cli_plan::run_plan(a),
        Cmd::Preprocess(a) => cli_plan::run_preprocess(a),
        Cmd::PlanAndPreprocess(a) => cli_plan::run_plan_and_preprocess(a),
        Cmd::Evaluate(a) => cli_eval::run_evaluate(a),
        Cmd::Ensemble(a) => cli_eval::run_ensemble(a),
        Cmd::Postprocess(a) => cli_eval::run_postprocess(a),
        Cmd::CvSummary(a) => cli_eval::run_cv_summary(a),
        Cmd::Predict { args } => std::process::exit(cli_model::exec_worker("predict", &args)?),
        Cmd::ExportModel { args } => std::process::exit(cli_model::exec_worker("export-model", &args)?),
        Cmd::ImportModel { args } => std::process::exit(cli_model::exec_worker("import-model", &args)?),
        Cmd::Run(a) => rt()?.block_on(local::run(a)),
        Cmd::Serve(a) => rt()?.block_on(cli_serve::serve(a)),
        Cmd::Submit(a) => rt()?.block_on(cli_monitor::submit(a)),
        Cmd::Status { conn, run, json } => rt()?.block_on(cli_monitor::status(conn, run, json)),
        Cmd::Watch { conn, run, lines } => rt()?.block_on(cli_monitor::watch(conn, run, lines)),
        Cmd::Logs { conn, run, follow, fold } => rt()?.block_on(cli_monitor::logs(conn, run, follow, fold)),
        Cmd::Cancel { conn, run } => rt()?.block_on(cli_monitor::cancel(conn, run)),
        Cmd::Retry { conn, run, fold } => rt()?.block_on(cli_monitor::retry(conn, run, fold)),
        Cmd::Runs { cmd: RunsCmd::Rm { conn, runs } } => rt()?.block_on(cli_monitor::remove(conn, runs)),
        Cmd::Token { cmd } => cli_admin::run(cmd),
    }
}
