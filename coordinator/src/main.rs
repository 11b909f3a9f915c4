//! `nnunet`: the user's command line and the coordinator. Needs no CUDA and no libtorch; commands
//! that run a network (`predict`) delegate to the `nnunet-worker` binary next to it.
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use nnunet_coordinator::{cli_eval, cli_intake, cli_model, cli_plan, client, local, metrics_http, server};
use nnunet_proto::v1 as pb;
use std::path::PathBuf;
use std::time::Duration;

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
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Write a model folder as an nnU-Net v2 model zip (runs `nnunet-worker export-model`; see its --help).
    #[command(disable_help_flag = true)]
    ExportModel {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Turn an nnU-Net v2 model zip into a model folder for `predict` (runs `nnunet-worker import-model`).
    #[command(disable_help_flag = true)]
    ImportModel {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The main job on one machine: embedded coordinator + one worker per device, all folds.
    Run(local::RunArgs),
    /// Run the coordinator for a cluster (workers connect to it).
    Serve(ServeArgs),
    /// Submit a run to a coordinator.
    Submit(SubmitArgs),
    /// List runs, or show one run's fold table.
    Status {
        #[command(flatten)]
        conn: client::ConnectArgs,
        run: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Follow a run live (table on a terminal, one line per event otherwise).
    Watch {
        #[command(flatten)]
        conn: client::ConnectArgs,
        run: String,
        /// Print one line per event even on a terminal.
        #[arg(long)]
        lines: bool,
    },
    /// Print a run's events and worker log lines.
    Logs {
        #[command(flatten)]
        conn: client::ConnectArgs,
        run: String,
        #[arg(long, short)]
        follow: bool,
        #[arg(long)]
        fold: Option<i32>,
    },
    /// Cancel a run.
    Cancel {
        #[command(flatten)]
        conn: client::ConnectArgs,
        run: String,
    },
    /// Re-queue a fold of a run (training resumes from its last checkpoint).
    Retry {
        #[command(flatten)]
        conn: client::ConnectArgs,
        run: String,
        fold: i32,
    },
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Address to listen on. A non-loopback address requires a token (the default).
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: std::net::SocketAddr,
    /// Coordinator state (SQLite database, run directories).
    #[arg(long, env = "NNUNET_STATE_DIR", default_value = "nnunet-state")]
    state_dir: PathBuf,
    /// Shared-secret token file (else NNUNET_TOKEN, else generated into <state-dir>/token).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Disable authentication (only allowed on a loopback address).
    #[arg(long)]
    no_auth: bool,
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// HTTP address of Prometheus /metrics and the web dashboard (/), e.g. 0.0.0.0:9090.
    #[arg(long, alias = "http-listen")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Seconds without heartbeat after which a task is reassigned.
    #[arg(long, default_value_t = 30)]
    lease_ttl_secs: u64,
    /// Threads for planning and finalizing.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

#[derive(clap::Args, Debug)]
struct SubmitArgs {
    #[command(flatten)]
    conn: client::ConnectArgs,
    /// Raw nnU-Net v2 dataset folder, as the coordinator sees it.
    #[arg(long)]
    dataset: PathBuf,
    #[arg(long, default_value_t = 1000)]
    epochs: u32,
    #[arg(long, default_value_t = 250)]
    iters: u32,
    #[arg(long, default_value_t = 50)]
    val_iters: u32,
    #[arg(long, default_value_t = 1)]
    save_every: u32,
    #[arg(long, value_delimiter = ',')]
    folds: Vec<i32>,
    #[arg(long, default_value = "")]
    name: String,
    /// Preprocessing shards (0 = one per registered worker).
    #[arg(long, default_value_t = 0)]
    shards: u32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also predict imagesTs with every fold and ensemble them.
    #[arg(long)]
    predict_test: bool,
    /// Wait for the run to finish (exit code 0 only if it is DONE), printing events.
    #[arg(long)]
    wait: bool,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("NNUNET_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
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
        Cmd::Predict { args } => {
            let bin = std::env::current_exe()?.with_file_name("nnunet-worker");
            let status = std::process::Command::new(&bin)
                .arg("predict")
                .args(&args)
                .status()
                .with_context(|| format!("running {} (build nnunet-worker)", bin.display()))?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Cmd::ExportModel { args } => std::process::exit(cli_model::exec_worker("export-model", &args)?),
        Cmd::ImportModel { args } => std::process::exit(cli_model::exec_worker("import-model", &args)?),
        Cmd::Run(a) => rt()?.block_on(local::run(a)),
        Cmd::Serve(a) => rt()?.block_on(serve(a)),
        Cmd::Submit(a) => rt()?.block_on(submit(a)),
        Cmd::Status { conn, run, json } => rt()?.block_on(async move {
            let mut c = client::monitor(&conn).await?;
            match run {
                Some(id) => {
                    let info = c.get_run(pb::GetRunRequest { run_id: id }).await.map_err(client::explain)?.into_inner();
                    if json {
                        println!("{}", serde_json::to_string_pretty(&run_json(&info))?);
                    } else {
                        print!("{}", client::fold_table(&info));
                    }
                }
                None => {
                    let runs = c.list_runs(pb::ListRunsRequest {}).await.map_err(client::explain)?.into_inner().runs;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&runs.iter().map(run_json).collect::<Vec<_>>())?);
                    } else {
                        println!("{:<28} {:<14} {:<30} {}", "RUN", "STATE", "DATASET", "TASKS DONE");
                        for r in runs {
                            let done = r.tasks.iter().filter(|t| t.state == "DONE").count();
                            println!("{:<28} {:<14} {:<30} {}/{}", r.run_id, r.state, r.dataset_name, done, r.tasks.len());
                        }
                    }
                }
            }
            Ok(())
        }),
        Cmd::Watch { conn, run, lines } => rt()?.block_on(async move {
            let info = client::watch(&conn, &run, true, if lines { Some(false) } else { None }).await?;
            print!("{}", client::fold_table(&info));
            client::check_run_ok(&info)
        }),
        Cmd::Logs { conn, run, follow, fold } => rt()?.block_on(async move {
            let mut c = client::monitor(&conn).await?;
            let mut s = c.watch_run(pb::WatchRunRequest { run_id: run, since_seq: 0, follow }).await.map_err(client::explain)?.into_inner();
            while let Some(e) = s.message().await.map_err(client::explain)? {
                if fold.is_none_or(|f| f == e.fold) {
                    println!("{}", client::event_line(&e));
                }
            }
            Ok(())
        }),
        Cmd::Cancel { conn, run } => rt()?.block_on(async move {
            let mut c = client::monitor(&conn).await?;
            let info = c.cancel_run(pb::CancelRunRequest { run_id: run }).await.map_err(client::explain)?.into_inner();
            println!("run {} is {}", info.run_id, info.state);
            Ok(())
        }),
        Cmd::Retry { conn, run, fold } => rt()?.block_on(async move {
            let mut c = client::monitor(&conn).await?;
            let info = c.retry_fold(pb::RetryFoldRequest { run_id: run, fold }).await.map_err(client::explain)?.into_inner();
            println!("run {} is {}; fold {fold} re-queued", info.run_id, info.state);
            Ok(())
        }),
    }
}

fn run_json(info: &pb::RunInfo) -> serde_json::Value {
    serde_json::json!({
        "run_id": info.run_id, "name": info.name, "dataset": info.dataset_name, "state": info.state, "run_dir": info.run_dir,
        "summary": serde_json::from_str::<serde_json::Value>(&info.summary_json).unwrap_or(serde_json::Value::Null),
        "tasks": info.tasks.iter().map(|t| serde_json::json!({
            "task_id": t.task_id, "kind": client::kind_name(t.kind), "fold": t.fold, "state": t.state, "worker": t.worker_id,
            "attempt": t.attempt, "error": t.error,
            "epoch": t.last_metrics.as_ref().map(|m| m.epoch + 1), "ema_dice": t.last_metrics.as_ref().map(|m| m.ema_fg_dice),
        })).collect::<Vec<_>>(),
    })
}

async fn serve(a: ServeArgs) -> Result<()> {
    std::fs::create_dir_all(&a.state_dir).with_context(|| format!("creating {}", a.state_dir.display()))?;
    let state_dir = a.state_dir.canonicalize()?;
    let token = if a.no_auth {
        if !a.listen.ip().is_loopback() {
            bail!(
                "refusing to listen on {} without authentication: remove --no-auth (a token is generated) or listen on 127.0.0.1",
                a.listen
            );
        }
        None
    } else {
        let (t, src) = server::resolve_token(a.token_file.as_deref(), &state_dir)?;
        eprintln!("token: {src} (clients pass --token-file or NNUNET_TOKEN)");
        Some(t)
    };
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => Some((
            std::fs::read(c).with_context(|| format!("reading {}", c.display()))?,
            std::fs::read(k).with_context(|| format!("reading {}", k.display()))?,
        )),
        _ => None,
    };
    let mut cfg = server::CoordinatorConfig::new(state_dir.clone());
    cfg.lease_ttl = Duration::from_secs(a.lease_ttl_secs);
    cfg.heartbeat_interval = Duration::from_secs((a.lease_ttl_secs / 6).clamp(1, 5));
    cfg.threads = a.threads;
    let coord = server::Coordinator::open(cfg)?;
    let listener = tokio::net::TcpListener::bind(a.listen).await.with_context(|| format!("binding {}", a.listen))?;
    let addr = listener.local_addr()?;
    if let Some(m) = a.metrics_listen {
        let l = tokio::net::TcpListener::bind(m).await.with_context(|| format!("binding metrics {m}"))?;
        eprintln!("metrics on http://{0}/metrics, dashboard on http://{0}/ (log in with the token)", l.local_addr()?);
        let tokens = token.clone().map_or_else(nnunet_coordinator::web::StaticTokens::open, nnunet_coordinator::web::StaticTokens::single);
        tokio::spawn(metrics_http::serve(
            coord.clone(),
            l,
            Some(nnunet_coordinator::web::Dashboard::for_coordinator(coord.clone(), tokens)),
        ));
    }
    eprintln!("nnunet coordinator listening on {}://{addr} (state {})", if tls.is_some() { "https" } else { "http" }, state_dir.display());
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("shutting down (state is kept; restart with the same --state-dir to continue)");
    };
    server::serve(coord, listener, server::ServeOptions { listen: addr, token, tls }, shutdown).await
}

async fn submit(a: SubmitArgs) -> Result<()> {
    let mut c = client::monitor(&a.conn).await?;
    let info = c
        .submit_run(pb::SubmitRunRequest {
            dataset_dir: a.dataset.to_string_lossy().into_owned(),
            budget: Some(client::budget_from(a.epochs, a.iters, a.val_iters, a.save_every, a.seed, 0)),
            folds: a.folds,
            name: a.name,
            preprocess_shards: a.shards,
            predict_test: a.predict_test,
        })
        .await
        .map_err(client::explain)?
        .into_inner();
    println!("{}", info.run_id);
    if a.wait {
        let info = client::watch(&a.conn, &info.run_id, true, Some(false)).await?;
        print!("{}", client::fold_table(&info));
        client::check_run_ok(&info)?;
    }
    Ok(())
}
