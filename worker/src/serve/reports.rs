//! A running task's epoch metrics and log lines, sent to the coordinator in order by a background
//! task, so the training thread never waits for the network: [`Reports::metrics`] and
//! [`Reports::log`] only queue. While the coordinator is unreachable the sender retries with
//! backoff and jitter; the queue is bounded ([`CAPACITY`]: the oldest log line goes first, metrics
//! last), and on reconnect everything queued arrives in order. A write the coordinator refuses for
//! good (stale fencing token, ended run) marks the lease lost, which stops the task at its next
//! iteration, as a refused heartbeat does.
use crate::serve::connection::{jittered, transient, Conn};
use nnunet_proto::v1 as pb;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tonic::Code;

/// Items kept while the coordinator is unreachable (an epoch brings one metrics report and a few lines).
pub const CAPACITY: usize = 2048;
/// Log lines sent in one call.
const LINES_PER_CALL: usize = 64;

#[derive(Debug, Clone, PartialEq)]
enum Item {
    Metrics(pb::EpochMetrics),
    Log(String),
}

#[derive(Default)]
struct Inner {
    queue: Mutex<VecDeque<Item>>,
    wake: tokio::sync::Notify,
    /// Items queued or in flight.
    unsent: AtomicUsize,
    dropped: AtomicU64,
}

/// The report queue of one task (cheap to clone).
#[derive(Clone)]
pub struct Reports {
    inner: Arc<Inner>,
}

fn lock(m: &Mutex<VecDeque<Item>>) -> MutexGuard<'_, VecDeque<Item>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Reports {
    /// Starts the sender for `task` on the runtime; it stops when `lost` is set by a refusal or
    /// when the returned handle is aborted.
    pub fn start(conn: Conn, task: pb::Task, lost: Arc<AtomicBool>, rt: &tokio::runtime::Handle) -> (Reports, tokio::task::JoinHandle<()>) {
        let r = Reports { inner: Arc::default() };
        let sender = rt.spawn(send_loop(r.inner.clone(), conn, task, lost));
        (r, sender)
    }

    /// A queue without a sender (tests).
    #[cfg(test)]
    fn detached() -> Reports {
        Reports { inner: Arc::default() }
    }

    fn push(&self, item: Item) {
        let mut q = lock(&self.inner.queue);
        if q.len() >= CAPACITY {
            let victim = q.iter().position(|i| matches!(i, Item::Log(_))).unwrap_or(0);
            q.remove(victim);
            self.inner.unsent.fetch_sub(1, Ordering::SeqCst);
            if self.inner.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::warn!("the coordinator has been unreachable for {CAPACITY} reports; dropping the oldest log lines");
            }
        }
        q.push_back(item);
        self.inner.unsent.fetch_add(1, Ordering::SeqCst);
        drop(q);
        self.inner.wake.notify_one();
    }

    /// Queues an epoch's metrics.
    pub fn metrics(&self, m: pb::EpochMetrics) {
        self.push(Item::Metrics(m));
    }

    /// Queues a line for the run's log.
    pub fn log(&self, line: String) {
        self.push(Item::Log(line));
    }

    /// Waits until everything queued was delivered (or refused), at most `timeout`; whether it was.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while self.inner.unsent.load(Ordering::SeqCst) > 0 {
            if Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    /// Takes the next call's worth: one metrics report, or consecutive log lines.
    fn next_batch(&self) -> Vec<Item> {
        let mut q = lock(&self.inner.queue);
        let mut out = vec![];
        while let Some(front) = q.front() {
            let take = match (front, out.first()) {
                (_, None) => true,
                (Item::Log(_), Some(Item::Log(_))) => out.len() < LINES_PER_CALL,
                _ => false,
            };
            if !take || matches!(out.first(), Some(Item::Metrics(_))) {
                break;
            }
            out.extend(q.pop_front());
        }
        out
    }
}

/// Sends one batch (one attempt).
async fn send(conn: &Conn, task: &pb::Task, batch: &[Item]) -> Result<(), tonic::Status> {
    let mut api = conn.api();
    match batch.first() {
        Some(Item::Metrics(m)) => {
            let req = pb::MetricsReport {
                worker_id: conn.id(),
                task_id: task.task_id.clone(),
                lease_id: task.lease_id,
                fencing_token: task.fencing_token,
                metrics: Some(m.clone()),
            };
            conn.attempt("metrics", api.report_metrics(req)).await.map(drop)
        }
        Some(Item::Log(_)) => {
            let lines = batch.iter().filter_map(|i| if let Item::Log(l) = i { Some(l.clone()) } else { None }).collect();
            let req = pb::LogLines { worker_id: conn.id(), task_id: task.task_id.clone(), fencing_token: task.fencing_token, lines };
            conn.attempt("log", api.log(req)).await.map(drop)
        }
        None => Ok(()),
    }
}

async fn send_loop(inner: Arc<Inner>, conn: Conn, task: pb::Task, lost: Arc<AtomicBool>) {
    let reports = Reports { inner };
    loop {
        let batch = reports.next_batch();
        if batch.is_empty() {
            reports.inner.wake.notified().await;
            continue;
        }
        let mut delay = Duration::from_millis(200);
        loop {
            match send(&conn, &task, &batch).await {
                Ok(()) => break,
                Err(s) if transient(&s) => {
                    tokio::time::sleep(jittered(delay)).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(s) if matches!(s.code(), Code::FailedPrecondition | Code::NotFound) => {
                    tracing::warn!(task = %task.task_id, "lease gone: the coordinator refused a report: {}", s.message());
                    lost.store(true, Ordering::SeqCst);
                    let n = lock(&reports.inner.queue).drain(..).count();
                    reports.inner.unsent.fetch_sub(n + batch.len(), Ordering::SeqCst);
                    return;
                }
                Err(s) => {
                    tracing::warn!(task = %task.task_id, "report not delivered: {}", s.message());
                    break;
                }
            }
        }
        reports.inner.unsent.fetch_sub(batch.len(), Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_keep_the_order_and_never_mix_kinds() {
        let r = Reports::detached();
        r.log("a".into());
        r.log("b".into());
        r.metrics(pb::EpochMetrics { epoch: 0, ..Default::default() });
        r.log("c".into());
        assert_eq!(r.next_batch(), vec![Item::Log("a".into()), Item::Log("b".into())]);
        assert!(matches!(r.next_batch()[..], [Item::Metrics(pb::EpochMetrics { epoch: 0, .. })]));
        assert_eq!(r.next_batch(), vec![Item::Log("c".into())]);
        assert!(r.next_batch().is_empty());
    }

    #[test]
    fn a_full_queue_drops_old_log_lines_before_metrics() {
        let r = Reports::detached();
        r.metrics(pb::EpochMetrics { epoch: 7, ..Default::default() });
        for i in 0..CAPACITY + 10 {
            r.log(format!("line {i}"));
        }
        let q = lock(&r.inner.queue);
        assert_eq!(q.len(), CAPACITY);
        assert_eq!(r.inner.unsent.load(Ordering::SeqCst), CAPACITY);
        assert!(matches!(q.front(), Some(Item::Metrics(_))), "metrics are kept");
        assert_eq!(q.get(1), Some(&Item::Log("line 11".into())), "the oldest lines went");
        assert_eq!(q.back(), Some(&Item::Log(format!("line {}", CAPACITY + 9))));
    }
}
