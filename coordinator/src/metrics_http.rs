//! Prometheus `/metrics` for the coordinator, in the text exposition format, with `run`, `fold`,
//! `kind` and `worker` labels. Served on its own port (`--metrics-listen`) next to gRPC, with the
//! web dashboard (`crate::web`) on the other paths.
use crate::engine::Coordinator;
use crate::state::{State, TaskState};
use crate::web::prom::{esc, fold_label};
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The worker calls whose refusals `nnunet_fenced_writes_total` always shows (0 until one happens).
const FENCED_CALLS: [&str; 6] = ["heartbeat", "metrics", "log", "upload", "complete", "fail"];

/// Renders every metric from the current state.
pub fn render(c: &Coordinator) -> String {
    let now = c.now_ms();
    let mut o = c.read(|st| render_state(st, now));
    counters(c, &mut o);
    crate::web::prom::render(c, &mut o);
    o
}

/// A per-fold gauge: name, help, value.
type Series = (&'static str, &'static str, fn(&nnunet_common::train_log::EpochMetrics) -> f64);

fn render_state(st: &State, now: i64) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# HELP nnunet_workers_registered Workers known to the coordinator.\n# TYPE nnunet_workers_registered gauge");
    let _ = writeln!(o, "nnunet_workers_registered {}", st.workers.len());
    let _ = writeln!(
        o,
        "# HELP nnunet_worker_last_seen_seconds Seconds since the worker's last call.\n# TYPE nnunet_worker_last_seen_seconds gauge"
    );
    for w in st.workers.values() {
        let _ = writeln!(
            o,
            "nnunet_worker_last_seen_seconds{{worker=\"{}\",device=\"{}\"}} {:.1}",
            esc(w.id.as_str()),
            esc(&w.device),
            (now - w.last_seen_ms) as f64 / 1000.0
        );
    }
    let _ = writeln!(
        o,
        "# HELP nnunet_worker_up 1 while the worker was heard from within the lease TTL, else 0.\n# TYPE nnunet_worker_up gauge"
    );
    for w in st.workers.values() {
        let up = now - w.last_seen_ms <= st.lease_ttl_ms;
        let _ = writeln!(o, "nnunet_worker_up{{worker=\"{}\",device=\"{}\"}} {}", esc(w.id.as_str()), esc(&w.device), u8::from(up));
    }
    let _ = writeln!(o, "# HELP nnunet_run_state Run state (1 for the current state).\n# TYPE nnunet_run_state gauge");
    for r in st.runs.values() {
        let _ = writeln!(o, "nnunet_run_state{{run=\"{}\",state=\"{}\"}} 1", esc(r.id.as_str()), r.state.name());
    }
    let _ = writeln!(o, "# HELP nnunet_tasks Tasks per run, kind and state.\n# TYPE nnunet_tasks gauge");
    let mut counts = std::collections::BTreeMap::new();
    for t in st.tasks.values() {
        *counts.entry((t.run_id.to_string(), t.kind.name(), t.state.name())).or_insert(0) += 1;
    }
    for ((run, kind, state), n) in counts {
        let _ = writeln!(o, "nnunet_tasks{{run=\"{}\",kind=\"{kind}\",state=\"{state}\"}} {n}", esc(&run));
    }
    let series: [Series; 9] = [
        ("nnunet_fold_epoch", "Last finished epoch (1-based).", |m| (m.epoch + 1) as f64),
        ("nnunet_fold_train_loss", "Training loss of the last epoch.", |m| m.train_loss),
        ("nnunet_fold_val_loss", "Validation loss of the last epoch.", |m| m.val_loss),
        ("nnunet_fold_pseudo_dice", "Mean foreground pseudo-Dice of the last epoch.", |m| m.mean_fg_dice),
        ("nnunet_fold_ema_dice", "EMA of the pseudo-Dice.", |m| m.ema_fg_dice),
        ("nnunet_fold_learning_rate", "Learning rate.", |m| m.lr),
        ("nnunet_fold_epoch_seconds", "Duration of the last epoch.", |m| m.epoch_seconds),
        ("nnunet_fold_dataloader_wait_seconds", "Time the last epoch waited for batches.", |m| m.dataloader_wait_seconds),
        ("nnunet_fold_step_seconds", "Mean forward+backward+step time per iteration of the last epoch.", |m| m.step_seconds),
    ];
    for (name, help, f) in series {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge");
        for t in st.tasks.values() {
            if let Some(m) = &t.last_metrics {
                let worker = t.worker_id.as_ref().map(|w| w.as_str()).unwrap_or("");
                let _ = writeln!(
                    o,
                    "{name}{{run=\"{}\",fold=\"{}\",worker=\"{}\"}} {}",
                    esc(t.run_id.as_str()),
                    fold_label(t.fold),
                    esc(worker),
                    f(m)
                );
            }
        }
    }
    let _ = writeln!(o, "# HELP nnunet_task_attempts Attempts per task.\n# TYPE nnunet_task_attempts gauge");
    for t in st.tasks.values().filter(|t| t.state != TaskState::Pending || t.attempt > 0) {
        let _ = writeln!(
            o,
            "nnunet_task_attempts{{run=\"{}\",fold=\"{}\",kind=\"{}\"}} {}",
            esc(t.run_id.as_str()),
            fold_label(t.fold),
            t.kind.name(),
            t.attempt
        );
    }
    o
}

fn counters(c: &Coordinator, o: &mut String) {
    let _ = writeln!(
        o,
        "# HELP nnunet_artifact_bytes_uploaded_total Bytes received from workers.\n# TYPE nnunet_artifact_bytes_uploaded_total counter"
    );
    let _ = writeln!(o, "nnunet_artifact_bytes_uploaded_total {}", c.counters.bytes_uploaded.load(Ordering::Relaxed));
    let _ = writeln!(
        o,
        "# HELP nnunet_artifact_bytes_downloaded_total Bytes sent to workers.\n# TYPE nnunet_artifact_bytes_downloaded_total counter"
    );
    let _ = writeln!(o, "nnunet_artifact_bytes_downloaded_total {}", c.counters.bytes_downloaded.load(Ordering::Relaxed));
    let _ = writeln!(
        o,
        "# HELP nnunet_fenced_writes_total Worker writes refused (stale fencing token, lost lease, ended run), by call.\n# TYPE nnunet_fenced_writes_total counter"
    );
    let by_call = c.counters.fenced_by_call();
    for call in FENCED_CALLS.iter().copied().chain(by_call.iter().map(|(k, _)| *k).filter(|k| !FENCED_CALLS.contains(k))) {
        let n = by_call.iter().find(|(k, _)| *k == call).map_or(0, |(_, n)| *n);
        let _ = writeln!(o, "nnunet_fenced_writes_total{{call=\"{call}\"}} {n}");
    }
    let _ = writeln!(
        o,
        "# HELP nnunet_persist_failures_total Changes refused because the database could not be written.\n# TYPE nnunet_persist_failures_total counter"
    );
    let _ = writeln!(o, "nnunet_persist_failures_total {}", c.counters.persist_failures.load(Ordering::Relaxed));
}

/// Serves `/metrics` (and `/healthz`) until the process ends; every other path goes to the
/// dashboard when one is given.
pub async fn serve(c: Arc<Coordinator>, listener: tokio::net::TcpListener, web: Option<Arc<crate::web::Dashboard>>) {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let c = c.clone();
        let web = web.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let c = c.clone();
                let web = web.clone();
                async move {
                    let path = req.uri().path().to_string();
                    let (code, body) = match (path.as_str(), &web) {
                        ("/metrics", _) => (200, render(&c)),
                        ("/healthz", _) => (200, "ok\n".to_string()),
                        (_, Some(web)) => return Ok(web.handle(req).await),
                        _ => (404, "not found: try /metrics\n".to_string()),
                    };
                    Ok::<_, std::convert::Infallible>(
                        hyper::Response::builder()
                            .status(code)
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(Full::new(Bytes::from(body)).boxed())
                            .unwrap(),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), svc).await;
        });
    }
}
