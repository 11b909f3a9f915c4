//! TRAIN: trains the task's fold, resuming from the coordinator's last checkpoint; epochs are
//! reported as they finish and checkpoints streamed by the background [`Uploader`].
use crate::serve::context::{TaskCtx, Workspace};
use crate::serve::uploader::Uploader;
use crate::serve::{staging, untrusted};
use crate::train::{self, CheckpointKind, CheckpointMeta, FoldSpec, Progress, TrainingConfig};
use anyhow::{anyhow, bail, Context, Result};
use nnunet_common::train_log::EpochMetrics;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

struct GrpcProgress<'a> {
    ctx: &'a TaskCtx,
    ws: &'a Workspace,
    fold_dir: PathBuf,
    uploader: Uploader,
}

impl Progress for GrpcProgress<'_> {
    /// Queues the epoch's metrics (never waits for the coordinator: training goes on while it is
    /// unreachable; a refusal marks the lease lost, see `serve::reports`).
    fn on_epoch(&mut self, m: &EpochMetrics) -> Result<()> {
        self.ctx.reports.metrics(nnunet_proto::convert::metrics_to_proto(m));
        Ok(())
    }

    fn on_checkpoint(&mut self, kind: CheckpointKind, files: &[PathBuf]) -> Result<()> {
        // Weights first, then logs and plot, the JSON sidecar last: the coordinator records the
        // checkpoint when the sidecar lands. Files are hard-linked into a staging folder
        // (checkpoints are replaced by rename, never rewritten, so the link keeps this version).
        let mut files: Vec<PathBuf> = files.to_vec();
        for extra in ["progress.png", "training_log.jsonl", "training_log.txt"] {
            let p = self.fold_dir.join(extra);
            if p.exists() && !files.contains(&p) {
                files.push(p);
            }
        }
        // TensorBoard event files (nnunet_common::tensorboard) travel with the logs.
        for e in std::fs::read_dir(&self.fold_dir)?.flatten() {
            if e.file_name().to_string_lossy().contains(nnunet_common::tensorboard::FILE_MARKER) && !files.contains(&e.path()) {
                files.push(e.path());
            }
        }
        files.sort_by_key(|p| {
            let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            (n.starts_with("checkpoint") && n.ends_with(".json"), !n.ends_with(".safetensors"), n)
        });
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let staged = self.fold_dir.join(format!(".outbox-{kind:?}-{}", SEQ.fetch_add(1, Ordering::Relaxed)));
        let jobs = stage(&staged, &files, |f| self.ctx.rel(self.ws, f));
        let jobs = match jobs {
            Ok(j) => j,
            Err(e) => {
                if let Err(rm) = std::fs::remove_dir_all(&staged) {
                    tracing::warn!("could not remove {}: {rm}", staged.display());
                }
                return Err(e);
            }
        };
        let priority = match kind {
            CheckpointKind::Final => 0,
            CheckpointKind::Latest => 1,
            CheckpointKind::Best => 2,
        };
        self.uploader.submit(priority, staged, jobs)
    }

    fn log(&mut self, line: &str) {
        self.ctx.log(line.to_string());
    }

    fn should_stop(&self) -> bool {
        self.ctx.stop.load(Ordering::SeqCst) || self.ctx.lost.load(Ordering::SeqCst)
    }
}

/// Links (or copies) `files` into `staged`; returns (staged file, path relative to the run) pairs.
fn stage(staged: &Path, files: &[PathBuf], rel: impl Fn(&Path) -> String) -> Result<Vec<(PathBuf, String)>> {
    std::fs::create_dir_all(staged).with_context(|| format!("creating {}", staged.display()))?;
    let mut jobs = Vec::new();
    for f in files {
        let link = staged.join(f.file_name().ok_or_else(|| anyhow!("{} has no file name", f.display()))?);
        if std::fs::hard_link(f, &link).is_err() {
            std::fs::copy(f, &link).with_context(|| format!("staging {}", f.display()))?;
        }
        jobs.push((link, rel(f)));
    }
    Ok(jobs)
}

/// The coordinator's last checkpoint is the truth: local checkpoints and logs of an earlier attempt
/// go, and so do staged uploads a killed worker process left behind.
fn remove_leftovers(fd: &Path) -> Result<()> {
    let Ok(rd) = std::fs::read_dir(fd) else { return Ok(()) };
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let p = e.path();
        let res = if n.starts_with(".outbox-") {
            std::fs::remove_dir_all(&p)
        } else if n.starts_with("checkpoint_") || n.starts_with("training_log") {
            std::fs::remove_file(&p)
        } else {
            continue;
        };
        res.with_context(|| format!("removing the earlier attempt's {}", p.display()))?;
    }
    Ok(())
}

/// The task's training configuration: nnU-Net's defaults with the run's budget, and the run's
/// pretrained weights (a verified input, read where the inputs are).
fn config(ctx: &TaskCtx, ws: &Workspace) -> Result<TrainingConfig> {
    let b = ctx.task.budget.unwrap_or_default();
    let mut config = TrainingConfig::nnunet_v2();
    config.epochs = b.epochs as usize;
    config.iterations_per_epoch = b.iterations_per_epoch as usize;
    config.val_iterations_per_epoch = b.val_iterations_per_epoch as usize;
    config.save_every = b.save_every.max(1) as usize;
    config.seed = train::fold_seed(b.seed, ctx.fold);
    config.torch_threads = ctx.threads();
    if !ctx.task.pretrained_weights.is_empty() {
        config.pretrained_weights = Some(untrusted::resolve_inside(&ws.root, "pretrained_weights", &ctx.task.pretrained_weights)?);
    }
    if ctx.device.is_cuda() {
        // On a GPU the cores this worker was given feed the loader (several fold workers may share
        // one machine); libtorch gets one thread, as nnU-Net sets (`nnunetv2/run/run_training.py::run_training_entry`).
        config.torch_threads = 1;
        config.loader_threads = ctx.threads().min(12);
        config.gpu_augmentation = train::config::gpu_augmentation_by_default(ctx.device, ctx.threads());
    }
    Ok(config)
}

fn announce(ctx: &TaskCtx, scratch: &Path) -> Result<()> {
    if ctx.task.checkpoint.is_empty() {
        ctx.log(format!("training fold {} from scratch on {}", ctx.fold, crate::device::device_string(ctx.device)));
        return Ok(());
    }
    let sidecar = untrusted::resolve_inside(scratch, "checkpoint", &ctx.task.checkpoint)?.with_extension("json");
    let epoch = std::fs::read(&sidecar)
        .ok()
        .and_then(|b| serde_json::from_slice::<CheckpointMeta>(&b).ok())
        .map(|m| m.epoch.to_string())
        .unwrap_or_else(|| "?".into());
    let line = format!("resuming fold {} from checkpoint at epoch {epoch}", ctx.fold);
    tracing::info!("{line}");
    ctx.log(line);
    Ok(())
}

pub fn run(ctx: &TaskCtx) -> Result<String> {
    let scratch = ctx.scratch();
    let fd = ctx.fold_dir(&scratch);
    remove_leftovers(&fd)?;
    let ws = staging::prepare(ctx)?;
    std::fs::create_dir_all(&fd).with_context(|| format!("creating {}", fd.display()))?;
    // Tests of fold packing without a GPU: the simulated device's share for this fold (crate::sim_memory).
    let _device_share = crate::sim_memory::from_env().map(|d| d.claim(&ctx.task.task_id)).transpose()?;
    announce(ctx, &scratch)?;
    let spec = FoldSpec {
        preprocessed_dir: ctx.dirs(&ws.root).preprocessed,
        plans_name: ctx.plans_name().to_string(),
        fold: ctx.fold,
        fold_dir: fd.clone(),
        device: ctx.device,
        config: config(ctx, &ws)?,
        resume: true,
    };
    let uploader = Uploader::new(ctx.conn.clone(), ctx.task.clone(), ctx.rt.clone());
    let mut progress = GrpcProgress { ctx, ws: &ws, fold_dir: fd, uploader };
    let outcome = train::train_fold(&spec, &mut progress);
    let flushed = progress.uploader.flush();
    let outcome = outcome?;
    flushed?;
    if outcome.stopped_early {
        ctx.check_stop()?;
        bail!("training stopped early");
    }
    Ok(serde_json::json!({ "epochs_run": outcome.epochs_run, "best_ema": outcome.best_ema }).to_string())
}
