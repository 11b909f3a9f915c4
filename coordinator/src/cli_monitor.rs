//! The user commands that talk to a coordinator: `submit`, `status`, `watch`, `logs`, `cancel`,
//! `retry`, `runs rm`.
use crate::client::{self, ConnectArgs};
use crate::domain::{Budget, RunSpec};
use anyhow::Result;
use nnunet_common::Fold;
use nnunet_proto::v1 as pb;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub conn: ConnectArgs,
    /// Raw nnU-Net v2 dataset folder, as the coordinator sees it.
    #[arg(long)]
    pub dataset: PathBuf,
    /// Training epochs per fold (nnU-Net: 1000).
    #[arg(long, default_value_t = nnunet_common::defaults::EPOCHS)]
    pub epochs: u32,
    /// Training iterations per epoch (nnU-Net: 250).
    #[arg(long, default_value_t = nnunet_common::defaults::ITERATIONS_PER_EPOCH)]
    pub iters: u32,
    /// Validation iterations per epoch (nnU-Net: 50).
    #[arg(long, default_value_t = nnunet_common::defaults::VAL_ITERATIONS_PER_EPOCH)]
    pub val_iters: u32,
    /// Checkpoint every N epochs (1: a lost worker costs at most one epoch).
    #[arg(long, default_value_t = 1)]
    pub save_every: u32,
    /// Folds (`0 1 2 3 4`, `all` trains on every case), space or comma separated; default 0..4.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub folds: Vec<Fold>,
    /// A name for the run, shown by `nnunet status` and the dashboard.
    #[arg(long, default_value = "")]
    pub name: String,
    /// Preprocessing shards (0 = one per registered worker).
    #[arg(long, default_value_t = 0)]
    pub shards: u32,
    /// Seed of the network initialization and the training batches.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also predict imagesTs with every fold and ensemble them.
    #[arg(long)]
    pub predict_test: bool,
    /// Experiment planner: default (nnUNetPlans), ResEncM, ResEncL or ResEncXL (nnUNetResEncUNet{M,L,XL}Plans).
    #[arg(long, default_value = "default", value_parser = crate::cli_plan::parse_planner)]
    pub planner: nnunet_common::planners::Planner,
    /// Wait for the run to finish (exit code 0 only if it is DONE), printing events.
    #[arg(long)]
    pub wait: bool,
    /// Start every fold from these weights (ours .safetensors or an nnU-Net .pth; nnU-Net's
    /// -pretrained_weights), a file the coordinator can read; it is copied into the run at submit.
    #[arg(long, value_name = "FILE")]
    pub pretrained_weights: Option<PathBuf>,
    /// Publish the finished model folder under DIR/DatasetXXX_Name/ (default: this shell's $nnUNet_results;
    /// with $nnUNet_preprocessed set, preprocessed data is reused from and published there too). The
    /// coordinator must be able to write it and allow it (`nnunet serve --allow-output-under`).
    #[arg(long, value_name = "DIR")]
    pub results: Option<PathBuf>,
    /// Ignore this shell's $nnUNet_results/$nnUNet_preprocessed: the coordinator publishes to its own.
    #[arg(long, conflicts_with = "results")]
    pub coordinator_dirs: bool,
}

/// This shell's nnU-Net roots for a submitted run, absolute (the coordinator resolves nothing
/// against the submitter's working directory): (results, preprocessed).
fn submitter_dirs(a: &SubmitArgs) -> Result<(Option<PathBuf>, Option<PathBuf>)> {
    if a.coordinator_dirs {
        return Ok((None, None));
    }
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let abs = |p: PathBuf| -> Result<PathBuf> { Ok(if p.is_absolute() { p } else { std::env::current_dir()?.join(p) }) };
    let results = a.results.clone().or_else(|| var("nnUNet_results")).map(abs).transpose()?;
    let preprocessed = var("nnUNet_preprocessed").map(abs).transpose()?;
    Ok((results, preprocessed))
}

pub async fn submit(a: SubmitArgs) -> Result<()> {
    let (results_dir, preprocessed_dir) = submitter_dirs(&a)?;
    // A weights file this shell can see is sent as an absolute path (the coordinator may share the filesystem).
    let pretrained_weights = a.pretrained_weights.map(|p| p.canonicalize().unwrap_or(p));
    let spec = RunSpec {
        dataset_dir: a.dataset,
        budget: Budget {
            epochs: a.epochs,
            iterations_per_epoch: a.iters,
            val_iterations_per_epoch: a.val_iters,
            save_every: a.save_every,
            seed: a.seed,
            disable_tta: false,
            num_threads: 0,
        },
        folds: a.folds,
        name: a.name,
        preprocess_shards: a.shards,
        predict_test: a.predict_test,
        planner: a.planner,
        pretrained_weights,
        results_dir,
        preprocessed_dir,
    };
    let mut c = client::monitor(&a.conn).await?;
    let info = c.submit_run(crate::service::convert::spec_to_proto(&spec)).await.map_err(client::explain)?.into_inner();
    println!("{}", info.run_id);
    if a.wait {
        let info = client::watch(&a.conn, &info.run_id, true, Some(false)).await?;
        print!("{}", client::fold_table(&info));
        client::check_run_ok(&info)?;
    }
    Ok(())
}

pub async fn status(conn: ConnectArgs, run: Option<String>, json: bool) -> Result<()> {
    let mut c = client::monitor(&conn).await?;
    if let Some(id) = run {
        let info = c.get_run(pb::GetRunRequest { run_id: id }).await.map_err(client::explain)?.into_inner();
        if json {
            println!("{}", serde_json::to_string_pretty(&run_json(&info))?);
        } else {
            print!("{}", client::fold_table(&info));
        }
        return Ok(());
    }
    let runs = client::list_all_runs(&mut c).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&runs.iter().map(run_json).collect::<Vec<_>>())?);
        return Ok(());
    }
    println!("{:<40} {:<14} {:<30} TASKS DONE", "RUN", "STATE", "DATASET");
    for r in runs {
        let done = r.tasks.iter().filter(|t| t.state == crate::domain::TaskState::Done.name()).count();
        println!("{:<40} {:<14} {:<30} {}/{}", r.run_id, r.state, r.dataset_name, done, r.tasks.len());
    }
    Ok(())
}

fn run_json(info: &pb::RunInfo) -> serde_json::Value {
    serde_json::json!({
        "run_id": info.run_id, "name": info.name, "dataset": info.dataset_name, "state": info.state, "run_dir": info.run_dir,
        "summary": serde_json::from_str::<serde_json::Value>(&info.summary_json).unwrap_or(serde_json::Value::Null),
        "tasks": info.tasks.iter().map(|t| serde_json::json!({
            "task_id": t.task_id, "kind": client::kind_name(t.kind), "fold": if t.fold_name == "all" { serde_json::json!("all") } else { serde_json::json!(t.fold) },
            "state": t.state, "worker": t.worker_id, "attempt": t.attempt, "error": t.error,
            "epoch": t.last_metrics.as_ref().map(|m| m.epoch + 1), "ema_dice": t.last_metrics.as_ref().map(|m| m.ema_fg_dice),
        })).collect::<Vec<_>>(),
    })
}

pub async fn watch(conn: ConnectArgs, run: String, lines: bool) -> Result<()> {
    let info = client::watch(&conn, &run, true, if lines { Some(false) } else { None }).await?;
    print!("{}", client::fold_table(&info));
    client::check_run_ok(&info)
}

pub async fn logs(conn: ConnectArgs, run: String, follow: bool, fold: Option<Fold>) -> Result<()> {
    let mut c = client::monitor(&conn).await?;
    let mut s = c.watch_run(pb::WatchRunRequest { run_id: run, since_seq: 0, follow }).await.map_err(client::explain)?.into_inner();
    while let Some(e) = s.message().await.map_err(client::explain)? {
        if fold.is_none_or(|f| e.fold_name == f.to_string()) {
            println!("{}", client::event_line(&e));
        }
    }
    Ok(())
}

pub async fn cancel(conn: ConnectArgs, run: String) -> Result<()> {
    let mut c = client::monitor(&conn).await?;
    let info = c.cancel_run(pb::CancelRunRequest { run_id: run }).await.map_err(client::explain)?.into_inner();
    println!("run {} is {}", info.run_id, info.state);
    Ok(())
}

pub async fn retry(conn: ConnectArgs, run: String, fold: Fold) -> Result<()> {
    let mut c = client::monitor(&conn).await?;
    let info = c.retry_fold(pb::RetryFoldRequest { run_id: run, fold: fold.to_wire() }).await.map_err(client::explain)?.into_inner();
    println!("run {} is {}; fold {fold} re-queued", info.run_id, info.state);
    Ok(())
}

pub async fn remove(conn: ConnectArgs, runs: Vec<String>) -> Result<()> {
    let mut c = client::monitor(&conn).await?;
    for run in runs {
        let r = c.delete_run(pb::DeleteRunRequest { run_id: run }).await.map_err(client::explain)?.into_inner();
        println!("deleted {}", r.run_id);
    }
    Ok(())
}
