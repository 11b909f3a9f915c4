//! Progress of predicting or validating a list of cases: an indicatif bar with ETA when stderr is a
//! terminal, otherwise one line per ~10% of the cases (and the last one) with the ETA.
use std::io::IsTerminal;
use std::time::Instant;

pub(crate) struct CaseProgress {
    bar: Option<indicatif::ProgressBar>,
    total: usize,
    done: usize,
    label: &'static str,
    start: Instant,
}

impl CaseProgress {
    pub(crate) fn new(total: usize, label: &'static str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(total as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} {per_sec} eta {eta}") {
                b.set_style(style.progress_chars("=> "));
            }
            b.set_message(label);
            b
        });
        CaseProgress { bar, total, done: 0, label, start: Instant::now() }
    }

    /// One more case done.
    pub(crate) fn inc(&mut self, case: &str) {
        self.done += 1;
        if let Some(b) = &self.bar {
            b.inc(1);
            return;
        }
        if let Some(line) = progress_line(self.label, case, self.done, self.total, self.start.elapsed().as_secs_f64()) {
            eprintln!("{line}");
        }
    }
}

impl Drop for CaseProgress {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// The line for case `done` of `total` when it crosses a 10% step (or is the last one).
fn progress_line(label: &str, case: &str, done: usize, total: usize, elapsed: f64) -> Option<String> {
    let step = |k: usize| k * 10 / total.max(1);
    if done != total && step(done) == step(done - 1) {
        return None;
    }
    let per = elapsed / done as f64;
    let eta = per * (total - done) as f64;
    Some(format!("{label}: {done}/{total} ({}%) {case}, {per:.2} s/case, eta {eta:.0} s", done * 100 / total.max(1)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn about_one_line_per_ten_percent() {
        let lines: Vec<String> = (1..=95).filter_map(|d| super::progress_line("predicting", "c", d, 95, d as f64)).collect();
        assert_eq!(lines.len(), 10, "{lines:?}");
        assert!(lines.last().unwrap().starts_with("predicting: 95/95 (100%)"));
        let few: Vec<String> = (1..=3).filter_map(|d| super::progress_line("x", "c", d, 3, 1.0)).collect();
        assert_eq!(few.len(), 3);
    }
}
