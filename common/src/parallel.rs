//! The bounded parallel runner and the progress display that the dataset-wide stages share
//! (fingerprint, preprocessing, conversion): one item in flight per thread, so peak memory is
//! bounded by the thread count and not by the dataset size.
use crate::{Error, Result};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Progress of a long loop: an indicatif bar on a terminal, else a line on stderr at most every
/// 5 seconds (and at the end); nothing when disabled. Safe to share between threads.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: usize,
    done: AtomicUsize,
    label: String,
    enabled: bool,
    start: Instant,
    last_line: Mutex<Instant>,
}

impl Progress {
    pub fn new(total: usize, label: &str, enabled: bool) -> Self {
        let bar = if enabled && std::io::stderr().is_terminal() {
            let b = indicatif::ProgressBar::new(total as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} {per_sec} eta {eta}") {
                b.set_style(style.progress_chars("=> "));
            }
            b.set_message(label.to_string());
            Some(b)
        } else {
            None
        };
        let now = Instant::now();
        Progress { bar, total, done: AtomicUsize::new(0), label: label.into(), enabled, start: now, last_line: Mutex::new(now) }
    }

    /// One more item done.
    pub fn inc(&self) {
        let n = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(b) = &self.bar {
            b.inc(1);
        } else if self.enabled {
            let mut last = self.last_line.lock().unwrap_or_else(|p| p.into_inner());
            if last.elapsed().as_secs_f64() >= 5.0 || n == self.total {
                *last = Instant::now();
                eprintln!("{}: {n}/{} ({:.1} s)", self.label, self.total, self.start.elapsed().as_secs_f64());
            }
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Runs `f` over `items` on `n_threads` threads, at most one item in flight per thread (peak memory
/// is bounded by the thread count, not the dataset size), results in input order. Stops at the
/// first error and returns it. Shows [`Progress`] when `show_progress`.
pub fn run_parallel<T: Sync, R: Send>(
    items: &[T],
    n_threads: usize,
    show_progress: bool,
    what: &str,
    f: impl Fn(&T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let n = items.len();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..n).map(|_| None).collect());
    let first_err: Mutex<Option<Error>> = Mutex::new(None);
    let progress = Progress::new(n, what, show_progress);
    std::thread::scope(|s| {
        for _ in 0..n_threads.max(1).min(n.max(1)) {
            s.spawn(|| loop {
                if failed.load(Ordering::Relaxed) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                match f(&items[i]) {
                    Ok(r) => results.lock().unwrap()[i] = Some(r),
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        first_err.lock().unwrap().get_or_insert(e);
                        return;
                    }
                }
                progress.inc();
            });
        }
    });
    progress.finish();
    if let Some(e) = first_err.into_inner().unwrap() {
        return Err(e);
    }
    Ok(results.into_inner().unwrap().into_iter().map(|r| r.expect("every item processed")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_input_order_and_the_first_error_stops_the_run() {
        let items: Vec<u32> = (0..50).collect();
        let out = run_parallel(&items, 4, false, "t", |&x| Ok(x * 2)).unwrap();
        assert_eq!(out, items.iter().map(|x| x * 2).collect::<Vec<_>>());
        let err = run_parallel(&items, 3, false, "t", |&x| if x == 7 { Err(Error::Invalid("seven".into())) } else { Ok(x) });
        assert!(err.unwrap_err().to_string().contains("seven"));
    }
}
