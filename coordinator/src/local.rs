//! `nnunet run`: the main job on one machine. Starts an embedded coordinator on loopback, one
//! worker process per device (every visible GPU by default, `--gpus 0,1,2,3,4`, several per GPU
//! with `--folds-per-gpu`, or `--workers N --device cpu`; `placement.rs`), submits the run,
//! prints progress, supervises the workers (a crashed worker is restarted; its task resumes from
//! the last checkpoint) and ends with per-fold and cross-validation Dice.
use crate::client;
use crate::domain::{Budget, RunSpec, RunState};
use crate::engine::{Coordinator, CoordinatorConfig};
use crate::service::{self, convert, ServeOptions};
use crate::state::{EventBody, Run};
use anyhow::{bail, Context, Result};
use nnunet_common::Fold;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Raw nnU-Net v2 dataset (folder, DatasetXXX_Name or id under $nnUNet_raw). Omit it, and
    /// --images/--masks, to run the built-in synthetic default dataset.
    pub dataset: Option<String>,
    /// A folder of images (PNG/TIFF/JPEG/BMP/NIfTI) to convert first (with --masks).
    #[arg(long, requires = "masks")]
    pub images: Option<PathBuf>,
    /// The matching masks folder (same file stems as the images).
    #[arg(long)]
    pub masks: Option<PathBuf>,
    /// Optional test images, predicted with every fold and ensembled at the end.
    #[arg(long)]
    pub test_images: Option<PathBuf>,
    /// GPUs to use, one worker each (`0,1,2,3,4`, or GPU UUIDs). Each worker sees only its GPU.
    /// Default: every visible GPU (CUDA_VISIBLE_DEVICES, else NVML), CPU workers when there is none.
    #[arg(long, value_delimiter = ',')]
    pub gpus: Vec<String>,
    /// Number of workers instead of one per GPU (CPU workers unless --device says otherwise).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Device for --workers: cpu or cuda (default: cpu with --workers, else the GPUs).
    #[arg(long)]
    pub device: Option<String>,
    /// Fold workers per GPU (several folds train at once on one large GPU), or `auto`: as many as
    /// the GPU's free memory holds at the plan's estimate, up to the number of folds. The
    /// coordinator never starts more on a device than its memory holds; a fold that runs out of
    /// memory is retried with fewer neighbours.
    #[arg(long, value_name = "N|auto")]
    pub folds_per_gpu: Option<crate::placement::FoldsPerGpu>,
    /// Training epochs per fold (default: a small budget for the built-in dataset; nnU-Net: 1000).
    #[arg(long)]
    pub epochs: Option<u32>,
    /// Training iterations per epoch.
    #[arg(long)]
    pub iters: Option<u32>,
    /// Validation iterations per epoch.
    #[arg(long)]
    pub val_iters: Option<u32>,
    /// Write checkpoint_latest every N epochs (and stream it to the coordinator).
    #[arg(long, default_value_t = 1)]
    pub save_every: u32,
    /// Folds to train (`0 1 2 3 4`, `all` trains on every case), space or comma separated.
    #[arg(long, value_delimiter = ',', num_args = 1.., default_values_t = Fold::default_five())]
    pub folds: Vec<Fold>,
    /// Seed of the network initialization and the training batches.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Coordinator state: database, run directories, results.
    #[arg(long, env = "NNUNET_STATE_DIR", default_value = "nnunet-state")]
    pub state_dir: PathBuf,
    /// Where the finished model folder is published (DIR/DatasetXXX_Name/nnUNetTrainer__nnUNetPlans__2d);
    /// default $nnUNet_results. With $nnUNet_preprocessed set, preprocessed data is published there
    /// and reused by the next run on the same raw data.
    #[arg(long, value_name = "DIR")]
    pub results: Option<PathBuf>,
    /// Address of the embedded coordinator (loopback; port 0 picks a free one). Other machines'
    /// workers and `nnunet watch` can connect to it with the printed token.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
    /// Seconds without heartbeat after which a worker's task is reassigned.
    #[arg(long, default_value_t = 30)]
    pub lease_ttl_secs: u64,
    /// Name for the dataset created from --images/--masks.
    #[arg(long, default_value = "MyData")]
    pub name: String,
    /// Dataset id for --images/--masks.
    #[arg(long, default_value_t = 500)]
    pub id: u32,
    /// Map every nonzero mask value of --masks to label 1 (the `x > 0` transform of `nnunet convert`;
    /// run `nnunet convert` first for --map, --labels and the other options).
    #[arg(long, requires = "masks")]
    pub binarize: bool,
    /// Experiment planner: default (nnUNetPlans), ResEncM, ResEncL or ResEncXL (nnUNetResEncUNet{M,L,XL}Plans).
    #[arg(long, default_value = "default", value_parser = crate::cli_plan::parse_planner)]
    pub planner: nnunet_common::planners::Planner,
    /// Start every fold from these weights (ours .safetensors or an nnU-Net .pth; nnU-Net's
    /// -pretrained_weights): all but the segmentation heads must match the network in name and shape.
    #[arg(long, value_name = "FILE")]
    pub pretrained_weights: Option<PathBuf>,
}

fn worker_binary() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("NNUNET_WORKER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe()?;
    let p = me.with_file_name("nnunet-worker");
    if p.exists() {
        Ok(p)
    } else {
        bail!(
            "nnunet-worker not found next to {} (build it with `cargo build --release -p nnunet-worker`, or set NNUNET_WORKER_BIN)",
            me.display()
        )
    }
}

/// The built-in default: a synthetic dataset generated deterministically into the state dir,
/// 40 training cases plus 10 held-out test cases (their masks become a second dataset, the ground
/// truth the fold ensemble is scored against at the end).
fn default_dataset(state_dir: &Path) -> Result<PathBuf> {
    let src = state_dir.join("builtin-synthetic");
    let raw_root = state_dir.join("nnUNet_raw");
    let ds = raw_root.join("Dataset999_Synthetic");
    if ds.join("dataset.json").is_file() && raw_root.join("Dataset998_SyntheticTest").join("dataset.json").is_file() {
        return Ok(ds);
    }
    eprintln!(
        "generating the built-in synthetic dataset (50 cases of 128x128: 40 for training, 10 held out; 2 shape classes) in {}",
        src.display()
    );
    nnunet_common::synthetic::generate(&src, 50, 128, 0)?;
    for d in ["test_images", "test_masks"] {
        std::fs::create_dir_all(src.join(d))?;
    }
    for i in 40..50 {
        for (from, to) in [("images", "test_images"), ("masks", "test_masks")] {
            let name = format!("case_{i:03}.png");
            std::fs::rename(src.join(from).join(&name), src.join(to).join(&name)).with_context(|| format!("moving {name} to {to}"))?;
        }
    }
    crate::cli_intake::convert_images_masks(
        &src.join("test_images"),
        &src.join("test_masks"),
        None,
        &raw_root,
        998,
        "SyntheticTest",
        false,
    )?;
    crate::cli_intake::convert_images_masks(
        &src.join("images"),
        &src.join("masks"),
        Some(&src.join("test_images")),
        &raw_root,
        999,
        "Synthetic",
        false,
    )
}

/// Scores the fold ensemble of the built-in dataset on its held-out test cases.
fn score_builtin_test(state_dir: &Path, run_dir: &Path, plans_name: &str) -> Result<String> {
    let gt = state_dir.join("nnUNet_raw").join("Dataset998_SyntheticTest").join("labelsTr");
    let pred = run_dir
        .join("results")
        .join("Dataset999_Synthetic")
        .join(nnunet_common::paths::model_folder_name_for(plans_name))
        .join("ensemble_test");
    let summary =
        nnunet_common::evaluate::evaluate_folders(&gt, &pred, &nnunet_common::labels::LabelOrRegion::labels(&[1, 2]), ".nii.gz", None)?;
    let v = serde_json::to_value(&summary)?;
    let f = |p: &str| v.pointer(p).and_then(|x| x.as_f64()).map(|x| format!("{x:.4}")).unwrap_or_else(|| "NaN".into());
    Ok(format!(
        "ensemble of the folds on the 10 held-out test images: Dice {} (disc {}, rectangle {}); predictions in {}",
        f("/foreground_mean/Dice"),
        f("/mean/1/Dice"),
        f("/mean/2/Dice"),
        pred.display()
    ))
}

fn resolve_dataset(args: &RunArgs) -> Result<(PathBuf, bool)> {
    if let (Some(images), Some(masks)) = (&args.images, &args.masks) {
        let raw_root = nnunet_common::paths::raw_root().unwrap_or_else(|_| args.state_dir.join("nnUNet_raw"));
        let ds = crate::cli_intake::convert_images_masks(
            images,
            masks,
            args.test_images.as_deref(),
            &raw_root,
            args.id,
            &args.name,
            args.binarize,
        )?;
        return Ok((ds, false));
    }
    match &args.dataset {
        Some(d) => {
            let root = nnunet_common::paths::raw_root().unwrap_or_else(|_| PathBuf::from("."));
            Ok((nnunet_common::paths::resolve_dataset(&root, d)?, false))
        }
        None => Ok((default_dataset(&args.state_dir)?, true)),
    }
}

struct WorkerProc {
    child: tokio::process::Child,
    device: String,
    env: Vec<(String, String)>,
    restarts: u32,
    oom_restarts: u32,
}

fn spawn_worker(
    bin: &Path,
    addr: &str,
    token: &str,
    device: &str,
    threads: usize,
    env: &[(String, String)],
    log: &Path,
) -> Result<tokio::process::Child> {
    let log_file = std::fs::OpenOptions::new().create(true).append(true).open(log).with_context(|| format!("opening {}", log.display()))?;
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg("--coordinator").arg(addr).arg("--device").arg(device).arg("--threads").arg(threads.to_string()).arg("--exit-when-idle");
    cmd.env("NNUNET_TOKEN", token);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdout(Stdio::from(log_file.try_clone()?)).stderr(Stdio::from(log_file)).kill_on_drop(true);
    cmd.spawn().with_context(|| format!("starting {}", bin.display()))
}

/// The run's budget: nnU-Net's defaults, or the built-in dataset's small one.
fn budget(args: &RunArgs, builtin: bool, threads: usize) -> Budget {
    use nnunet_common::defaults as d;
    let (e, i, v) = if builtin { d::BUILTIN_BUDGET } else { (d::EPOCHS, d::ITERATIONS_PER_EPOCH, d::VAL_ITERATIONS_PER_EPOCH) };
    Budget {
        epochs: args.epochs.unwrap_or(e),
        iterations_per_epoch: args.iters.unwrap_or(i),
        val_iterations_per_epoch: args.val_iters.unwrap_or(v),
        save_every: args.save_every,
        seed: args.seed,
        disable_tta: false,
        num_threads: threads as u32,
    }
}

/// The embedded coordinator on loopback: (coordinator, url, token, stop, server task).
struct Embedded {
    coord: Arc<Coordinator>,
    url: String,
    token: String,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<()>>,
}

async fn start_embedded(args: &RunArgs, state_dir: &Path, ncpu: usize) -> Result<Embedded> {
    let mut cfg = CoordinatorConfig::new(state_dir.to_path_buf());
    cfg.lease_ttl = Duration::from_secs(args.lease_ttl_secs);
    cfg.heartbeat_interval = Duration::from_secs((args.lease_ttl_secs / 6).clamp(1, 5));
    cfg.threads = ncpu;
    cfg.user_dirs = crate::user_dirs::UserDirs::from_env(args.results.clone());
    let coord = Coordinator::open(cfg)?;
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        bail!("`nnunet run` listens on loopback only; use `nnunet serve` (with a token) to accept remote workers");
    }
    let (token, token_src) = crate::access::resolve_token(None, state_dir)?;
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(service::serve(coord.clone(), listener, ServeOptions::new(addr, Some(token.clone())), async move {
        if stop_rx.await.is_err() {
            tracing::debug!("stop sender dropped");
        }
    }));
    let url = format!("http://{addr}");
    eprintln!(
        "coordinator on {url} (state {}, token in {token_src}); watch from another shell with: nnunet watch --coordinator {url} --token-file {}/token RUN",
        state_dir.display(),
        state_dir.display()
    );
    let web = crate::web::Dashboard::for_coordinator(coord.clone(), crate::web::RoleTokens::new(Some(token.clone()), coord.clone()));
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the dashboard on loopback")?;
    eprintln!("dashboard: http://{}/ (log in with the token in {}/token)", http.local_addr()?, state_dir.display());
    tokio::spawn(crate::metrics_http::serve(coord.clone(), http, Some(web)));
    Ok(Embedded { coord, url, token, stop, server })
}

/// An interrupted `nnunet run` on the same dataset and folds continues where it stopped;
/// otherwise a new run is submitted.
async fn submit_or_resume(coord: &Arc<Coordinator>, spec: RunSpec) -> Result<Run> {
    let canonical = spec.dataset_dir.canonicalize()?.to_string_lossy().into_owned();
    let weights = match &spec.pretrained_weights {
        Some(p) => Some(
            p.canonicalize()
                .with_context(|| format!("pretrained weights {} are not readable by the coordinator", p.display()))?
                .to_string_lossy()
                .into_owned(),
        ),
        None => None,
    };
    let same_weights = |r: &Run| r.options.pretrained.as_ref().map(|p| &p.source) == weights.as_ref();
    if let Some(prev) = coord.resumable_run(&canonical, &spec.folds, spec.planner.plans_name()).filter(same_weights) {
        eprintln!("resuming unfinished run {} (finished tasks are kept; training resumes from the last checkpoints)", prev.id);
        let id = prev.id.clone();
        coord
            .apply("release leases", move |st, now| Ok(((), st.release_leases(&id, "the previous `nnunet run` was interrupted", now))))
            .await?;
        return Ok(prev);
    }
    Ok(coord.submit(spec).await?.run)
}

/// How a supervised run ended.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Finished(RunState),
    Interrupted,
}

/// Prints events and restarts crashed workers until the run ends or the user interrupts.
async fn supervise(e: &Embedded, run: &Run, workers: &mut [WorkerProc], logs: &Path, worker_bin: &Path, threads: usize) -> Result<Outcome> {
    let mut events = e.coord.subscribe();
    if let Some(s) = e.coord.run_state(run.id.as_str()).filter(|s| s.is_terminal()) {
        return Ok(Outcome::Finished(s));
    }
    // On a terminal the live fold table (the same as `nnunet watch`); one line per event otherwise.
    let table = std::io::IsTerminal::is_terminal(&std::io::stdout());
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(ev) if ev.run_id == run.id => {
                    let line = client::event_line(&convert::event_to_proto(&ev));
                    match if table { e.coord.run_view(run.id.as_str()) } else { None } {
                        Some(view) => println!("\x1b[2J\x1b[H{}{line}", client::fold_table(&convert::run_info(&view))),
                        None => println!("{line}"),
                    }
                    if let EventBody::RunState(s) = ev.body {
                        if s.is_terminal() {
                            return Ok(Outcome::Finished(s));
                        }
                        if s == RunState::Training {
                            for line in e.coord.read(|st| packing_lines(st, &run.id)) {
                                eprintln!("{line}");
                            }
                        }
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => eprintln!("(skipped {n} events)"),
                Err(_) => return Ok(Outcome::Finished(RunState::Failed)),
            },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                for (i, w) in workers.iter_mut().enumerate() {
                    if let Ok(Some(status)) = w.child.try_wait() {
                        let active = e.coord.run_state(run.id.as_str()).is_some_and(|s| !s.is_terminal());
                        // A worker that ran out of GPU memory exits to hand its cached memory back to
                        // the device; its fold is requeued by the coordinator, so it is not a crash.
                        let oom = status.code() == Some(nnunet_proto::wire::EXIT_OUT_OF_DEVICE_MEMORY);
                        if active && (w.restarts < 5 || (oom && w.oom_restarts < 20)) {
                            let log = logs.join(format!("worker-{i}.log"));
                            if oom {
                                w.oom_restarts += 1;
                                eprintln!("worker {i} ({}) ran out of device memory and exited to free it; restarting it", w.device);
                            } else {
                                w.restarts += 1;
                                eprintln!("worker {i} ({}) exited with {status}; restarting it ({}/5); see {}", w.device, w.restarts, log.display());
                            }
                            w.child = spawn_worker(worker_bin, &e.url, &e.token, &w.device, threads, &w.env, &log)?;
                        }
                    }
                }
            }
            _ = tokio::signal::ctrl_c() => {
                eprintln!("interrupted: workers stop; run `nnunet run` again with the same --state-dir to resume");
                return Ok(Outcome::Interrupted);
            }
        }
    }
}

/// One line per shared device: how many of the run's GPU tasks it takes at once, and why.
fn packing_lines(st: &crate::state::State, run_id: &crate::domain::RunId) -> Vec<String> {
    let Some(run) = st.runs.get(run_id) else { return vec![] };
    let mut keys: Vec<&str> = st.workers.values().map(|w| w.device_key.as_str()).filter(|k| !k.is_empty()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| st.workers.values().filter(|w| w.device_key == *k).count() > 1)
        .map(|k| match (st.device_slots(k, run), run.memory_estimate_mib, st.device_free_mib(k)) {
            (Some(n), Some(est), Some(free)) => {
                format!("device {k}: at most {n} fold(s) at once ({free} MiB free, about {est} MiB per fold from the plan)")
            }
            (Some(n), _, _) => format!("device {k}: at most {n} fold(s) at once"),
            (None, _, _) => format!("device {k}: its free memory is unknown; folds share it until one runs out of memory"),
        })
        .collect()
}

pub async fn run(args: RunArgs) -> Result<()> {
    std::fs::create_dir_all(&args.state_dir)?;
    let state_dir = args.state_dir.canonicalize()?;
    let (dataset_dir, builtin) = resolve_dataset(&args)?;
    let worker_bin = worker_binary()?;
    let ncpu = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let detected = if args.gpus.is_empty() { crate::placement::visible_gpus() } else { (vec![], String::new()) };
    let req = crate::placement::Request {
        gpus: &args.gpus,
        workers: args.workers,
        device: args.device.as_deref(),
        folds_per_gpu: args.folds_per_gpu,
        folds: args.folds.len(),
    };
    let (slots, why) = crate::placement::plan_workers(&req, &detected, ncpu)?;
    eprintln!("workers: {why}");
    let devices: Vec<(String, Vec<(String, String)>)> = slots.into_iter().map(|s| (s.device, s.env)).collect();
    let threads = (ncpu / devices.len()).max(1);
    let e = start_embedded(&args, &state_dir, ncpu).await?;
    let spec = RunSpec {
        dataset_dir: dataset_dir.clone(),
        budget: budget(&args, builtin, threads),
        folds: args.folds.clone(),
        name: String::new(),
        preprocess_shards: devices.len() as u32,
        predict_test: dataset_dir.join("imagesTs").is_dir(),
        planner: args.planner,
        pretrained_weights: args.pretrained_weights.clone(),
        results_dir: None,
        preprocessed_dir: None,
    };
    let run = submit_or_resume(&e.coord, spec).await?;
    let folds: Vec<String> = run.folds.iter().map(|f| f.to_string()).collect();
    eprintln!(
        "run {} on {}: fold(s) {}, {} epochs x {} iterations ({} validation), {} worker(s) [{}], {} torch thread(s) each",
        run.id,
        dataset_dir.display(),
        folds.join(" "),
        run.budget.epochs,
        run.budget.iterations_per_epoch,
        run.budget.val_iterations_per_epoch,
        devices.len(),
        devices
            .iter()
            .map(|d| d.0.clone() + &d.1.iter().map(|(k, v)| format!(" {k}={v}")).collect::<String>())
            .collect::<Vec<_>>()
            .join(", "),
        threads
    );
    let run_dir = state_dir.join("runs").join(run.id.as_str());
    let logs = run_dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let mut workers = Vec::new();
    for (i, (dev, env)) in devices.iter().enumerate() {
        let child = spawn_worker(&worker_bin, &e.url, &e.token, dev, threads, env, &logs.join(format!("worker-{i}.log")))?;
        workers.push(WorkerProc { child, device: dev.clone(), env: env.clone(), restarts: 0, oom_restarts: 0 });
    }
    let outcome = supervise(&e, &run, &mut workers, &logs, &worker_bin, threads).await?;
    for w in &mut workers {
        if outcome == Outcome::Finished(RunState::Done) && tokio::time::timeout(Duration::from_secs(10), w.child.wait()).await.is_err() {
            tracing::debug!("a worker did not exit within 10 s");
        }
        if let Err(err) = w.child.start_kill() {
            tracing::debug!("stopping a worker: {err}");
        }
    }
    let view = e.coord.run_view(run.id.as_str()).context("the run disappeared")?;
    let info = convert::run_info(&view);
    println!("\n{}", client::fold_table(&info));
    if builtin && view.run.state == RunState::Done && run.predict_test {
        match score_builtin_test(&state_dir, &run_dir, &run.plans_name) {
            Ok(line) => println!("{line}"),
            Err(err) => eprintln!("could not score the held-out test images: {err:#}"),
        }
    }
    let published = view.run.summary_json.as_deref().and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok());
    match published.as_ref().and_then(|v| v.get("results_dir")).and_then(|d| d.as_str()) {
        Some(dir) => println!("results: {dir}"),
        None => println!("results: {}", run_dir.join("results").display()),
    }
    if e.stop.send(()).is_err() {
        tracing::debug!("the server already stopped");
    }
    match tokio::time::timeout(Duration::from_secs(5), e.server).await {
        Ok(Ok(Err(err))) => tracing::warn!("coordinator: {err:#}"),
        Ok(_) => {}
        Err(_) => tracing::debug!("the coordinator did not stop within 5 s"),
    }
    client::check_run_ok(&info)
}

#[cfg(test)]
mod tests {
    use super::RunArgs;
    use clap::Parser;
    use nnunet_common::Fold;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    #[test]
    fn folds_parse_with_spaces_commas_and_all() {
        let a = Cli::parse_from(["nnunet", "--folds", "0", "1", "2", "3", "4", "all"]).run;
        assert_eq!(a.folds, [Fold::Index(0), Fold::Index(1), Fold::Index(2), Fold::Index(3), Fold::Index(4), Fold::All]);
        assert_eq!(Cli::parse_from(["nnunet", "--folds", "0,all"]).run.folds, [Fold::Index(0), Fold::All]);
        assert_eq!(Cli::parse_from(["nnunet"]).run.folds, Fold::default_five());
        assert!(Cli::try_parse_from(["nnunet", "--folds", "x"]).is_err());
    }
}
