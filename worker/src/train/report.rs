//! What a training run writes for humans and tools besides checkpoints: `training_log.txt` (appended,
//! one line per event and epoch), `training_log.jsonl` (rewritten from the checkpointed history each
//! epoch, so every epoch appears exactly once even after a kill and resume), `progress.png`, and the
//! console: a progress bar on a TTY, one line per epoch otherwise.
use nnunet_common::tensorboard as train_log_tb;
use nnunet_common::train_log::{self, EpochMetrics};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

pub const TEXT_LOG: &str = "training_log.txt";
pub const JSONL_LOG: &str = "training_log.jsonl";
pub const PROGRESS_PNG: &str = "progress.png";

/// The log files of one fold folder.
pub struct FoldLogs {
    txt: std::fs::File,
    jsonl: PathBuf,
    png: PathBuf,
    tensorboard: train_log_tb::ScalarLog,
}

fn timestamp() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let days = secs / 86400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm), UTC.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02}")
}

impl FoldLogs {
    pub fn open(fold_dir: &Path) -> anyhow::Result<Self> {
        let p = fold_dir.join(TEXT_LOG);
        let txt =
            std::fs::OpenOptions::new().create(true).append(true).open(&p).map_err(|e| anyhow::anyhow!("opening {}: {e}", p.display()))?;
        Ok(FoldLogs {
            txt,
            jsonl: fold_dir.join(JSONL_LOG),
            png: fold_dir.join(PROGRESS_PNG),
            tensorboard: train_log_tb::ScalarLog::new(fold_dir),
        })
    }

    /// Appends a timestamped line to `training_log.txt`.
    pub fn line(&mut self, msg: &str) -> anyhow::Result<()> {
        writeln!(self.txt, "{}: {msg}", timestamp())?;
        self.txt.flush()?;
        Ok(())
    }

    pub fn epoch(&mut self, m: &EpochMetrics) -> anyhow::Result<()> {
        self.line(&train_log::format_epoch_line(m))
    }

    /// Rewrites `training_log.jsonl` from `history`, appends its new epochs to the TensorBoard event
    /// file; also redraws `progress.png` when `plot`.
    pub fn write_history(&mut self, history: &[EpochMetrics], plot: bool) -> anyhow::Result<()> {
        train_log::write_jsonl(&self.jsonl, history)?;
        self.tensorboard.sync(history)?;
        if plot && !history.is_empty() {
            train_log::plot_progress(&self.png, history)?;
        }
        Ok(())
    }
}

/// Console output: an indicatif bar per epoch on a TTY, one line per epoch otherwise.
pub struct Console {
    bar: Option<indicatif::ProgressBar>,
    tty: bool,
    epochs: usize,
    iters: usize,
}

impl Console {
    pub fn new(epochs: usize, iters: usize) -> Self {
        Console { bar: None, tty: std::io::stderr().is_terminal(), epochs, iters }
    }
    pub fn start_epoch(&mut self, epoch: usize, lr: f64) {
        if self.tty {
            let bar = indicatif::ProgressBar::new(self.iters as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} it {per_sec} eta {eta} {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_prefix(format!("{}/{} lr {lr:.2e}", epoch + 1, self.epochs));
            self.bar = Some(bar);
        }
    }
    pub fn iteration(&mut self, done: usize, loss: f64) {
        if let Some(b) = &self.bar {
            b.set_position(done as u64);
            b.set_message(format!("loss {loss:.4}"));
        }
    }
    pub fn end_epoch(&mut self, m: &EpochMetrics) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        eprintln!("{}", train_log::format_epoch_line(m));
    }
}
