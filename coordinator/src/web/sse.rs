//! Server-sent events. A run's stream replays its journal from a sequence number (the browser's
//! `Last-Event-ID` on reconnect, or `?since=`), then follows: every new journal event of the run
//! wakes the stream, which reads the journal again from where it stopped, so a burst or a lagging
//! notification channel never loses an event. The live stream pushes runs and workers snapshots,
//! at most one of each every [`LIVE_PERIOD`], and the runs one only after a change.
use super::{Body, Dashboard};
use http_body_util::StreamBody;
use hyper::body::{Bytes, Frame};
use hyper::{Response, StatusCode};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

/// Journal page size per read.
const PAGE: usize = 500;
/// A comment line this often keeps proxies from closing an idle stream and finds gone clients.
const PING: Duration = Duration::from_secs(15);
/// Snapshot period of the live stream.
pub const LIVE_PERIOD: Duration = Duration::from_secs(2);

/// The first sequence number to send: after `Last-Event-ID`, else `?since=N`, else 0.
pub fn since(headers: &hyper::HeaderMap, query: Option<&str>) -> u64 {
    if let Some(id) = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok()) {
        return id + 1;
    }
    query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("since="))).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn stream_response(rx: mpsc::Receiver<Bytes>) -> Response<Body> {
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx).map(|b| Ok::<_, Infallible>(Frame::data(b))));
    let mut r = Response::new(http_body_util::BodyExt::boxed(body));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(hyper::header::CONTENT_TYPE, "text/event-stream".parse().unwrap());
    h.insert(hyper::header::CACHE_CONTROL, "no-store".parse().unwrap());
    h.insert("x-content-type-options", "nosniff".parse().unwrap());
    r
}

fn message(event: Option<&str>, id: Option<u64>, data: &str) -> Bytes {
    let mut s = String::with_capacity(data.len() + 32);
    if let Some(e) = event {
        s.push_str("event: ");
        s.push_str(e);
        s.push('\n');
    }
    if let Some(id) = id {
        s.push_str(&format!("id: {id}\n"));
    }
    s.push_str("data: ");
    s.push_str(data);
    s.push_str("\n\n");
    Bytes::from(s)
}

/// `GET /api/runs/{id}/events`.
pub fn run_events(d: Arc<Dashboard>, run: String, from: u64) -> Response<Body> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(pump_run(d, run, from, tx));
    stream_response(rx)
}

async fn pump_run(d: Arc<Dashboard>, run: String, mut next: u64, tx: mpsc::Sender<Bytes>) {
    // Subscribe before the first read so nothing falls between the journal and the wake-ups.
    let mut wake = d.wake.subscribe();
    loop {
        loop {
            let (b, r) = (d.backend.clone(), run.clone());
            let Ok(permit) = d.journal_reads.acquire().await else { return };
            let read = tokio::task::spawn_blocking(move || b.events_since(&r, next, PAGE)).await;
            // released before sending: a slow client must not hold up the other dashboards' reads
            drop(permit);
            let batch = match read {
                Ok(Ok(batch)) => batch,
                Ok(Err(e)) => {
                    let _ = tx.send(message(Some("error"), None, &format!("{:?}", format!("reading the journal: {e:#}")))).await;
                    return;
                }
                Err(e) => {
                    tracing::error!("journal reader panicked: {e}");
                    return;
                }
            };
            for e in &batch {
                next = e.seq + 1;
                let data = serde_json::to_string(e).unwrap_or_default();
                if tx.send(message(None, Some(e.seq), &data)).await.is_err() {
                    return;
                }
            }
            if batch.len() < PAGE {
                break;
            }
        }
        if d.backend.run_terminal(&run) != Some(false) {
            let _ = tx.send(message(Some("end"), None, "{}")).await;
            return;
        }
        let ping = tokio::time::sleep(PING);
        tokio::pin!(ping);
        loop {
            tokio::select! {
                w = wake.recv() => match w {
                    Ok(Some(r)) if r != run => continue,
                    Ok(_) | Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => return,
                },
                _ = &mut ping => {
                    if tx.send(Bytes::from_static(b": ping\n\n")).await.is_err() {
                        return;
                    }
                    break;
                }
                _ = tx.closed() => return,
            }
        }
    }
}

/// `GET /api/live`: `runs` and `workers` snapshots.
pub fn live(d: Arc<Dashboard>) -> Response<Body> {
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(pump_live(d, tx));
    stream_response(rx)
}

async fn pump_live(d: Arc<Dashboard>, tx: mpsc::Sender<Bytes>) {
    let mut wake = d.wake.subscribe();
    let mut tick = tokio::time::interval(LIVE_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dirty = true;
    loop {
        tokio::select! {
            w = wake.recv() => match w {
                Err(RecvError::Closed) => return,
                _ => dirty = true,
            },
            _ = tick.tick() => {
                if dirty {
                    dirty = false;
                    let runs = serde_json::to_string(&d.backend.runs()).unwrap_or_default();
                    if tx.send(message(Some("runs"), None, &runs)).await.is_err() {
                        return;
                    }
                }
                let workers = serde_json::to_string(&d.backend.workers()).unwrap_or_default();
                if tx.send(message(Some("workers"), None, &workers)).await.is_err() {
                    return;
                }
            }
            _ = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn resume_point() {
        let mut h = hyper::HeaderMap::new();
        assert_eq!(since(&h, None), 0);
        assert_eq!(since(&h, Some("since=7")), 7);
        h.insert("last-event-id", "41".parse().unwrap());
        assert_eq!(since(&h, Some("since=7")), 42);
        assert_eq!(&message(Some("end"), Some(3), "{}")[..], b"event: end\nid: 3\ndata: {}\n\n");
    }
}
