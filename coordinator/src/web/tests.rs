//! The dashboard over real HTTP on loopback, on a real coordinator (SQLite state and journal).
use super::*;
use crate::engine::{Coordinator, CoordinatorConfig};
use crate::state::Run;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const STEER: &str = "steer-token-0123456789abcdef";
const VIEW: &str = "view-token-0123456789abcdef";

async fn start() -> (tempfile::TempDir, Arc<Coordinator>, String) {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::open(CoordinatorConfig::new(dir.path().to_path_buf())).unwrap();
    let run = Run::new(
        "r1".into(),
        "Dataset001_X",
        "/raw".into(),
        dir.path().join("runs/r1").to_string_lossy().into_owned(),
        nnunet_common::Fold::default_five(),
        1,
    );
    coord.apply_blocking("test run", move |st, now| Ok(((), st.add_run(run, now)))).unwrap();
    let tokens = StaticTokens::single(STEER.into()).with(VIEW.into(), Access { can_steer: false });
    let web = Dashboard::for_coordinator(coord.clone(), tokens);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(crate::metrics_http::serve(coord.clone(), l, Some(web)));
    (dir, coord, addr)
}

async fn send(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s
}

async fn status(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut s = send(addr, method, path, headers).await;
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    (out.split_whitespace().nth(1).unwrap().parse().unwrap(), out)
}

/// Reads the stream until `pred` holds for everything read so far.
async fn read_until(s: &mut tokio::net::TcpStream, pred: impl Fn(&str) -> bool) -> String {
    let mut acc = String::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while !pred(&acc) {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "stream closed early: {acc}");
            acc.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out; read: {acc}"));
    acc
}

#[tokio::test]
async fn event_stream_replays_then_follows_and_steering_needs_the_right_token() {
    let (_dir, _coord, addr) = start().await;
    let view = format!("Bearer {VIEW}");
    let steer = format!("Bearer {STEER}");
    // Replay: the journal's first event (the run was created PLANNING).
    let mut sse = send(&addr, "GET", "/api/runs/r1/events", &[("authorization", &view)]).await;
    let got = read_until(&mut sse, |a| a.contains("\"text\":\"PLANNING\"")).await;
    assert!(got.contains("text/event-stream") && got.contains("id: 0\n"), "{got}");
    // A viewer may not steer; the header guard comes first; a steerer may.
    assert_eq!(status(&addr, "POST", "/api/runs/r1/cancel", &[("authorization", &view), ("x-nnunet-steer", "1")]).await.0, 403);
    assert_eq!(status(&addr, "POST", "/api/runs/r1/cancel", &[("authorization", &steer)]).await.0, 403);
    assert_eq!(status(&addr, "POST", "/api/runs/nope/cancel", &[("authorization", &steer), ("x-nnunet-steer", "1")]).await.0, 404);
    assert_eq!(status(&addr, "POST", "/api/runs/r1/folds/x/retry", &[("authorization", &steer), ("x-nnunet-steer", "1")]).await.0, 400);
    let (code, body) = status(&addr, "POST", "/api/runs/r1/cancel", &[("authorization", &steer), ("x-nnunet-steer", "1")]).await;
    assert_eq!(code, 200, "{body}");
    // Live: the cancellation arrives on the open stream, which then ends.
    let got = read_until(&mut sse, |a| a.contains("event: end")).await;
    assert!(got.contains("\"text\":\"CANCELLED\""), "{got}");
    // Reconnecting with Last-Event-ID resumes after it: only the later events.
    let mut again = send(&addr, "GET", "/api/runs/r1/events", &[("authorization", &view), ("last-event-id", "0")]).await;
    let got = read_until(&mut again, |a| a.contains("event: end")).await;
    assert!(!got.contains("id: 0\n") && got.contains("id: 1\n"), "{got}");
    // Snapshots and JSON.
    let (code, body) = status(&addr, "GET", "/api/runs/r1", &[("authorization", &view)]).await;
    assert!(code == 200 && body.contains("\"state\":\"CANCELLED\""), "{body}");
    let mut live = send(&addr, "GET", "/api/live", &[("authorization", &view)]).await;
    let got = read_until(&mut live, |a| a.contains("event: runs") && a.contains("event: workers")).await;
    assert!(got.contains("\"id\":\"r1\""), "{got}");
    assert_eq!(status(&addr, "GET", "/api/runs/nope/events", &[("authorization", &view)]).await.0, 404);
    assert_eq!(status(&addr, "GET", "/metrics", &[]).await.0, 200);
}

#[tokio::test]
async fn login_sets_a_session_cookie_and_logout_ends_it() {
    let (_dir, _coord, addr) = start().await;
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let body = format!("token={STEER}");
    let req = format!(
        "POST /login HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let line = out.lines().find(|l| l.to_lowercase().starts_with("set-cookie:")).unwrap_or_else(|| panic!("{out}"));
    let cookie = line.split(':').nth(1).unwrap().split(';').next().unwrap().trim().to_string();
    assert_eq!(status(&addr, "GET", "/api/me", &[("cookie", &cookie)]).await.0, 200);
    assert_eq!(status(&addr, "GET", "/", &[("cookie", &cookie)]).await.0, 200);
    assert_eq!(status(&addr, "GET", "/assets/uPlot.iife.min.js", &[("cookie", &cookie)]).await.0, 200);
    assert_eq!(status(&addr, "POST", "/logout", &[("cookie", &cookie)]).await.0, 303);
    assert_eq!(status(&addr, "GET", "/api/me", &[("cookie", &cookie)]).await.0, 401);
}
