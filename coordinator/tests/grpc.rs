//! The coordinator over real gRPC on loopback: authentication, TLS, fencing and journal replay.
//! Lease expiry is driven by a hand-moved clock, not by sleeping. No torch needed.
mod common;
use common::*;
use nnunet_proto::v1 as pb;
use nnunet_proto::v1::monitor_client::MonitorClient;
use nnunet_proto::v1::worker_api_client::WorkerApiClient;
use std::time::Duration;
use tonic::Code;

#[tokio::test]
async fn calls_without_the_token_are_unauthenticated() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), Start::default()).await;
    let ch = channel(&h.url).await;
    let err = MonitorClient::new(ch.clone()).list_runs(pb::ListRunsRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("token"));
    let err = WorkerApiClient::with_interceptor(ch.clone(), Bearer("wrong-token-wrong-token-wrong-tok".into()))
        .register(pb::RegisterRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let ok = MonitorClient::with_interceptor(ch.clone(), Bearer(TOKEN.into())).list_runs(pb::ListRunsRequest::default()).await.unwrap();
    assert!(ok.into_inner().runs.is_empty());
    // Health checking stays open for probes.
    let health = tonic_health::pb::health_client::HealthClient::new(ch)
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .unwrap();
    assert_eq!(health.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
}

#[tokio::test]
async fn with_tls_a_plaintext_client_is_refused() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (ck.cert.pem(), ck.signing_key.serialize_pem());
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), Start { tls: Some((cert.clone().into_bytes(), key.into_bytes())), ..Default::default() }).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let plain = h.url.replace("https://", "http://");
    let res = async {
        let ch = tonic::transport::Endpoint::from_shared(plain)?.connect().await?;
        Ok::<_, Box<dyn std::error::Error>>(
            MonitorClient::with_interceptor(ch, Bearer(TOKEN.into())).list_runs(pb::ListRunsRequest::default()).await?,
        )
    }
    .await;
    assert!(res.is_err(), "a plaintext client must not get an answer from a TLS coordinator");
    let tls =
        tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(cert)).domain_name("localhost");
    let ch = tonic::transport::Endpoint::from_shared(h.url.clone()).unwrap().tls_config(tls).unwrap().connect().await.unwrap();
    MonitorClient::with_interceptor(ch, Bearer(TOKEN.into())).list_runs(pb::ListRunsRequest::default()).await.unwrap();
}

#[tokio::test]
async fn a_worker_whose_lease_expired_is_fenced_off() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), Start { ttl: Duration::from_millis(800), ..Default::default() }).await;
    fake_run(&h.coord, dir.path(), "r1").await;
    let mut api = api(&h.url, TOKEN).await;
    let a = register(&mut api, "a").await;
    let b = register(&mut api, "b").await;
    let ta = lease(&mut api, &a).await.expect("a task");
    assert_eq!(ta.inputs.len(), 5, "dataset.json, the case's image, plans, dataset.json copy, splits: {:?}", ta.inputs);
    let hb = |worker: &str, token: u64| pb::HeartbeatRequest {
        worker_id: worker.into(),
        task_id: ta.task_id.clone(),
        fencing_token: token,
        ..Default::default()
    };
    // A keeps its lease alive for a while ...
    for _ in 0..3 {
        h.clock.advance(Duration::from_millis(300));
        h.coord.housekeep_once().await;
        assert!(api.heartbeat(hb(&a, ta.fencing_token)).await.unwrap().into_inner().ok);
    }
    // ... then goes silent; the lease expires and B gets the task with a new token.
    h.clock.advance(Duration::from_millis(1800));
    h.coord.housekeep_once().await;
    let tb = lease(&mut api, &b).await.expect("the task again");
    assert_eq!(tb.task_id, ta.task_id);
    assert!(tb.fencing_token > ta.fencing_token);
    // Everything A still sends for the task is refused.
    let r = api.heartbeat(hb(&a, ta.fencing_token)).await.unwrap().into_inner();
    assert!(!r.ok && r.reason.contains("fencing"), "{r:?}");
    let m = api
        .report_metrics(pb::MetricsReport {
            worker_id: a.clone(),
            task_id: ta.task_id.clone(),
            fencing_token: ta.fencing_token,
            metrics: Some(pb::EpochMetrics::default()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(m.code(), Code::FailedPrecondition);
    let path = case_data("a");
    let up = api.upload_artifact(tokio_stream::iter(vec![chunk(&ta, ta.fencing_token, &path, b"stale data")])).await.unwrap_err();
    assert_eq!(up.code(), Code::FailedPrecondition);
    let run_file = dir.path().join("runs").join("r1").join(&path);
    assert!(!run_file.exists(), "a fenced upload must leave nothing behind");
    let c = api
        .complete(pb::CompleteRequest {
            worker_id: a.clone(),
            task_id: ta.task_id.clone(),
            fencing_token: ta.fencing_token,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(c.code(), Code::FailedPrecondition);
    // ... even with B's token: the holder is B.
    let c = api
        .complete(pb::CompleteRequest {
            worker_id: a.clone(),
            task_id: tb.task_id.clone(),
            fencing_token: tb.fencing_token,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(c.code(), Code::FailedPrecondition, "{c:?}");
    // B, the current holder, can write.
    api.upload_artifact(tokio_stream::iter(vec![chunk(&tb, tb.fencing_token, &path, b"fresh data")])).await.unwrap();
    assert_eq!(std::fs::read(&run_file).unwrap(), b"fresh data");
    // A corrupted upload (sha256 mismatch) is refused and leaves nothing.
    let seg = case_data("a").replace("a.npy", "a_seg.npy");
    let mut bad = chunk(&tb, tb.fencing_token, &seg, b"data");
    bad.sha256 = "00".repeat(32);
    assert_eq!(api.upload_artifact(tokio_stream::iter(vec![bad])).await.unwrap_err().code(), Code::DataLoss);
    assert!(!dir.path().join("runs/r1").join(&seg).exists());
    // Paths cannot escape the run directory.
    let esc = chunk(&tb, tb.fencing_token, "../../etc/x", b"data");
    assert_eq!(api.upload_artifact(tokio_stream::iter(vec![esc])).await.unwrap_err().code(), Code::InvalidArgument);
    assert!(temp_files(dir.path()).is_empty());
    let refused: u64 = h.coord.counters.fenced_by_call().iter().map(|(_, n)| n).sum();
    assert!(refused >= 3, "fenced writes are counted for /metrics: {refused}");
    let metrics = nnunet_coordinator::metrics_http::render(&h.coord);
    assert!(metrics.contains("nnunet_fenced_writes_total{call=\"upload\"}"), "{metrics}");
}

#[tokio::test]
async fn watch_replays_from_a_sequence_number() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), Start::default()).await;
    fake_run(&h.coord, dir.path(), "r1").await;
    let mut mon = mon(&h.url, TOKEN).await;
    let all: Vec<pb::Event> = {
        let mut s = mon.watch_run(pb::WatchRunRequest { run_id: "r1".into(), since_seq: 0, follow: false }).await.unwrap().into_inner();
        let mut v = vec![];
        while let Some(e) = s.message().await.unwrap() {
            v.push(e);
        }
        v
    };
    assert!(all.len() >= 2);
    assert!(all.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    let mut s = mon.watch_run(pb::WatchRunRequest { run_id: "r1".into(), since_seq: 1, follow: false }).await.unwrap().into_inner();
    let first = s.message().await.unwrap().unwrap();
    assert_eq!(first.seq, 1);
    let err = mon.watch_run(pb::WatchRunRequest { run_id: "nope".into(), since_seq: 0, follow: false }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}
