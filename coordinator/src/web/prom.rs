//! `/metrics` lines for what workers and trainers report beyond the base gauges: heartbeat
//! telemetry (worker RSS, NVML device memory and utilisation) and per-class pseudo-Dice (data-loader
//! wait and step time are per-fold gauges in `metrics_http`). Values a worker could not read are
//! left out, not written as 0.
use crate::engine::Coordinator;
use std::fmt::Write;

/// A Prometheus label value: backslash, quote and newline escaped.
pub(crate) fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The `fold` label: `0`..`4`, `all`, or `-` for tasks of no fold.
pub(crate) fn fold_label(f: Option<nnunet_common::Fold>) -> String {
    f.map(|f| f.to_string()).unwrap_or_else(|| "-".into())
}

fn head(o: &mut String, name: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge");
}

/// Appends the telemetry and per-epoch series to `o`.
pub fn render(c: &Coordinator, o: &mut String) {
    let samples = c.telemetry.all();
    c.read(|st| render_state(st, &samples, o));
}

fn render_state(st: &crate::state::State, samples: &[(String, crate::telemetry::Sample)], o: &mut String) {
    let device = |w: &str| st.workers.iter().find(|(id, _)| id.as_str() == w).map(|(_, w)| w.device.clone()).unwrap_or_default();
    type Get = fn(&crate::telemetry::Sample) -> Option<f64>;
    let worker_series: [(&str, &str, Get); 4] = [
        ("nnunet_worker_rss_bytes", "Resident memory of the worker process.", |s| s.rss_bytes.map(|v| v as f64)),
        ("nnunet_worker_device_memory_used_bytes", "Memory in use on the worker's GPU (NVML).", |s| {
            s.gpu_memory_used_bytes.map(|v| v as f64)
        }),
        ("nnunet_worker_device_memory_total_bytes", "Memory of the worker's GPU (NVML).", |s| s.gpu_memory_total_bytes.map(|v| v as f64)),
        ("nnunet_worker_gpu_utilization_percent", "GPU utilisation over the last sample period (NVML).", |s| {
            s.gpu_util_percent.map(f64::from)
        }),
    ];
    for (name, help, get) in worker_series {
        head(o, name, help);
        for (w, s) in samples {
            if let Some(v) = get(s) {
                let dn = s.device_name.as_deref().unwrap_or("");
                let _ = writeln!(o, "{name}{{worker=\"{}\",device=\"{}\",device_name=\"{}\"}} {v}", esc(w), esc(&device(w)), esc(dn));
            }
        }
    }
    head(o, "nnunet_fold_pseudo_dice_class", "Pseudo-Dice of one foreground class in the last epoch (class 1 = first foreground label).");
    for t in st.tasks.values() {
        if let Some(m) = &t.last_metrics {
            for (i, d) in m.pseudo_dice.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "nnunet_fold_pseudo_dice_class{{run=\"{}\",fold=\"{}\",class=\"{}\"}} {d}",
                    esc(t.run_id.as_str()),
                    fold_label(t.fold),
                    i + 1
                );
            }
        }
    }
}
