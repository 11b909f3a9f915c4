//! `nnunet run`: the main job on one machine. Starts an embedded coordinator on loopback, one
//! worker process per device (`--gpus 0,1,2,3,4` or `--workers N --device cpu`), submits the run,
//! prints progress, supervises the workers (a crashed worker is restarted; its task resumes from
//! the last checkpoint) and ends with per-fold and cross-validation Dice.
use crate::client;
use crate::server::{self, Coordinator, CoordinatorConfig, ServeOptions};
use crate::state::EventBody;
use anyhow::{bail, Context, Result};
use nnunet_proto::v1 as pb;
use std::path::{Path, PathBuf};
use std::process::Stdio;
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
    /// GPUs to use, one worker each (`0,1,2,3,4`). Each worker sees only its GPU.
    #[arg(long, value_delimiter = ',')]
    pub gpus: Vec<u32>,
    /// Number of CPU workers (when no --gpus).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Device for --workers: cpu (default) or cuda.
    #[arg(long, default_value = "cpu")]
    pub device: String,
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
    #[arg(long, value_delimiter = ',', default_values_t = vec![0, 1, 2, 3, 4])]
    pub folds: Vec<i32>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Coordinator state: database, run directories, results.
    #[arg(long, env = "NNUNET_STATE_DIR", default_value = "nnunet-state")]
    pub state_dir: PathBuf,
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
    /// Extra arguments for `nnunet convert` are not exposed here; convert first for full control.
    #[arg(long)]
    pub binarize: bool,
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
fn score_builtin_test(state_dir: &Path, run_dir: &Path) -> Result<String> {
    let gt = state_dir.join("nnUNet_raw").join("Dataset998_SyntheticTest").join("labelsTr");
    let pred = run_dir.join("results").join("Dataset999_Synthetic").join(nnunet_common::paths::model_folder_name()).join("ensemble_test");
    let summary = nnunet_common::evaluate::evaluate_folders(&gt, &pred, &[1, 2], ".nii.gz", None)?;
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

pub async fn run(args: RunArgs) -> Result<()> {
    std::fs::create_dir_all(&args.state_dir)?;
    let state_dir = args.state_dir.canonicalize()?;
    let (dataset_dir, builtin) = resolve_dataset(&args)?;
    let worker_bin = worker_binary()?;

    // Devices: one worker per GPU, or N CPU workers sharing the cores.
    let ncpu = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let mut devices: Vec<(String, Vec<(String, String)>)> = Vec::new();
    if !args.gpus.is_empty() {
        for g in &args.gpus {
            devices.push(("cuda:0".into(), vec![("CUDA_VISIBLE_DEVICES".into(), g.to_string())]));
        }
    } else {
        let n = args.workers.unwrap_or(if args.device == "cpu" { 2.min(ncpu).max(1) } else { 1 });
        for _ in 0..n {
            devices.push((args.device.clone(), vec![]));
        }
    }
    let threads = (ncpu / devices.len()).max(1);

    let (epochs, iters, val_iters) = if builtin {
        (args.epochs.unwrap_or(6), args.iters.unwrap_or(10), args.val_iters.unwrap_or(4))
    } else {
        (args.epochs.unwrap_or(1000), args.iters.unwrap_or(250), args.val_iters.unwrap_or(50))
    };

    let mut cfg = CoordinatorConfig::new(state_dir.clone());
    cfg.lease_ttl = Duration::from_secs(args.lease_ttl_secs);
    cfg.heartbeat_interval = Duration::from_secs((args.lease_ttl_secs / 6).clamp(1, 5));
    cfg.threads = ncpu;
    let coord = Coordinator::open(cfg)?;
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        bail!("`nnunet run` listens on loopback only; use `nnunet serve` (with a token) to accept remote workers");
    }
    let (token, token_src) = server::resolve_token(None, &state_dir)?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serve_coord = coord.clone();
    let server = tokio::spawn(server::serve(
        serve_coord,
        listener,
        ServeOptions { listen: addr, token: Some(token.clone()), tls: None },
        async move {
            let _ = stop_rx.await;
        },
    ));
    let url = format!("http://{addr}");
    eprintln!("coordinator on {url} (state {}, token in {token_src}); watch from another shell with: nnunet watch --coordinator {url} --token-file {}/token RUN", state_dir.display(), state_dir.display());
    let web = crate::web::Dashboard::for_coordinator(coord.clone(), crate::web::StaticTokens::single(token.clone()));
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the dashboard on loopback")?;
    eprintln!("dashboard: http://{}/ (log in with the token in {}/token)", http.local_addr()?, state_dir.display());
    tokio::spawn(crate::metrics_http::serve(coord.clone(), http, Some(web)));

    let mut events = coord.subscribe();
    // An interrupted `nnunet run` on the same dataset and folds continues where it stopped.
    let canonical = dataset_dir.canonicalize()?.to_string_lossy().into_owned();
    let previous = {
        let st = coord.state.lock().unwrap();
        let mut runs: Vec<_> =
            st.runs.values().filter(|r| !r.state.is_terminal() && r.raw_dir == canonical && r.folds == args.folds).cloned().collect();
        runs.sort_by_key(|r| r.created_ms);
        runs.pop()
    };
    let run = if let Some(prev) = previous {
        eprintln!("resuming unfinished run {} (finished tasks are kept; training resumes from the last checkpoints)", prev.id);
        coord.apply(|st| ((), st.release_leases(&prev.id, "the previous `nnunet run` was interrupted")))?;
        prev
    } else {
        coord.submit(pb::SubmitRunRequest {
            dataset_dir: dataset_dir.to_string_lossy().into_owned(),
            budget: Some(client::budget_from(epochs, iters, val_iters, args.save_every, args.seed, threads as u32)),
            folds: args.folds.clone(),
            name: String::new(),
            preprocess_shards: devices.len() as u32,
            predict_test: dataset_dir.join("imagesTs").is_dir(),
        })?
    };
    eprintln!(
        "run {} on {}: {} fold(s), {} epochs x {} iterations ({} validation), {} worker(s) [{}], {} torch thread(s) each",
        run.id,
        dataset_dir.display(),
        run.folds.len(),
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

    let logs = state_dir.join("runs").join(&run.id).join("logs");
    std::fs::create_dir_all(&logs)?;
    let mut workers = Vec::new();
    for (i, (dev, env)) in devices.iter().enumerate() {
        let child = spawn_worker(&worker_bin, &url, &token, dev, threads, env, &logs.join(format!("worker-{i}.log")))?;
        workers.push(WorkerProc { child, device: dev.clone(), env: env.clone(), restarts: 0 });
    }

    let result = loop {
        tokio::select! {
            ev = events.recv() => {
                match ev {
                    Ok(e) if e.run_id == run.id => {
                        println!("{}", client::event_line(&server::event_to_proto(&e)));
                        if let EventBody::RunState(s) = &e.body {
                            if s == "DONE" || s == "FAILED" || s == "CANCELLED" {
                                break s.clone();
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => eprintln!("(skipped {n} events)"),
                    Err(_) => break "FAILED".into(),
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                for (i, w) in workers.iter_mut().enumerate() {
                    if let Ok(Some(status)) = w.child.try_wait() {
                        let active = coord.state.lock().unwrap().runs.get(&run.id).is_some_and(|r| !r.state.is_terminal());
                        if active && w.restarts < 5 {
                            w.restarts += 1;
                            eprintln!("worker {i} ({}) exited with {status}; restarting it ({}/5); see {}", w.device, w.restarts, logs.join(format!("worker-{i}.log")).display());
                            w.child = spawn_worker(&worker_bin, &url, &token, &w.device, threads, &w.env, &logs.join(format!("worker-{i}.log")))?;
                        }
                    }
                }
            }
            _ = tokio::signal::ctrl_c() => {
                eprintln!("interrupted: workers stop; run `nnunet run` again with the same --state-dir to resume");
                break "INTERRUPTED".into();
            }
        }
    };
    for w in &mut workers {
        if result == "DONE" {
            let _ = tokio::time::timeout(Duration::from_secs(10), w.child.wait()).await;
        }
        let _ = w.child.start_kill();
    }
    let info = coord.run_info(&run.id).expect("run exists");
    println!("\n{}", client::fold_table(&info));
    if builtin && info.state == "DONE" && run.predict_test {
        match score_builtin_test(&state_dir, &state_dir.join("runs").join(&run.id)) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("could not score the held-out test images: {e:#}"),
        }
    }
    println!("results: {}", state_dir.join("runs").join(&run.id).join("results").display());
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    client::check_run_ok(&info)
}
