//! The coordinator over real gRPC on loopback: authentication, TLS and fencing. No torch needed.
use nnunet_coordinator::server::{self, Coordinator, CoordinatorConfig, ServeOptions};
use nnunet_coordinator::state::{self, Budget, Run, RunState};
use nnunet_proto::v1 as pb;
use nnunet_proto::v1::monitor_client::MonitorClient;
use nnunet_proto::v1::worker_api_client::WorkerApiClient;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

async fn start(
    dir: &std::path::Path,
    ttl: Duration,
    tls: Option<(Vec<u8>, Vec<u8>)>,
) -> (Arc<Coordinator>, String, tokio::sync::oneshot::Sender<()>) {
    let mut cfg = CoordinatorConfig::new(dir.to_path_buf());
    cfg.lease_ttl = ttl;
    cfg.heartbeat_interval = Duration::from_millis(200);
    let coord = Coordinator::open(cfg).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let scheme = if tls.is_some() { "https" } else { "http" };
    tokio::spawn(server::serve(coord.clone(), listener, ServeOptions { listen: addr, token: Some(TOKEN.into()), tls }, async move {
        let _ = rx.await;
    }));
    tokio::time::sleep(Duration::from_millis(100)).await;
    (coord, format!("{scheme}://127.0.0.1:{}", addr.port()), tx)
}

fn with_token(t: &'static str) -> impl tonic::service::Interceptor + Clone {
    move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
        Ok(req)
    }
}

#[tokio::test]
async fn calls_without_the_token_are_unauthenticated() {
    let dir = tempfile::tempdir().unwrap();
    let (_c, url, _stop) = start(dir.path(), Duration::from_secs(30), None).await;
    let ch = tonic::transport::Endpoint::from_shared(url).unwrap().connect().await.unwrap();
    let err = MonitorClient::new(ch.clone()).list_runs(pb::ListRunsRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("token"));
    let err = WorkerApiClient::with_interceptor(ch.clone(), with_token("wrong-token-wrong-token-wrong-tok"))
        .register(pb::RegisterRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let ok = MonitorClient::with_interceptor(ch.clone(), with_token(TOKEN)).list_runs(pb::ListRunsRequest {}).await.unwrap();
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
    let (_c, url, _stop) = start(dir.path(), Duration::from_secs(30), Some((cert.clone().into_bytes(), key.into_bytes()))).await;
    let plain = url.replace("https://", "http://");
    let res = async {
        let ch = tonic::transport::Endpoint::from_shared(plain)?.connect().await?;
        Ok::<_, Box<dyn std::error::Error>>(MonitorClient::with_interceptor(ch, with_token(TOKEN)).list_runs(pb::ListRunsRequest {}).await?)
    }
    .await;
    assert!(res.is_err(), "a plaintext client must not get an answer from a TLS coordinator");
    let tls =
        tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(cert)).domain_name("localhost");
    let ch = tonic::transport::Endpoint::from_shared(url).unwrap().tls_config(tls).unwrap().connect().await.unwrap();
    MonitorClient::with_interceptor(ch, with_token(TOKEN)).list_runs(pb::ListRunsRequest {}).await.unwrap();
}

/// A run whose files exist just enough for the coordinator to hash the task inputs.
fn fake_run(coord: &Coordinator, dir: &std::path::Path) -> String {
    let ds = "Dataset001_Fake";
    let run_dir = dir.join("runs").join("r1");
    let raw = dir.join("raw").join(ds);
    std::fs::create_dir_all(raw.join("imagesTr")).unwrap();
    std::fs::write(raw.join("dataset.json"), "{}").unwrap();
    std::fs::write(raw.join("imagesTr").join("a_0000.nii.gz"), "x").unwrap();
    nnunet_coordinator::pipeline::prepare_run_dir(&run_dir, "r1", &raw, ds).unwrap();
    let pre = run_dir.join("preprocessed").join(ds);
    std::fs::create_dir_all(&pre).unwrap();
    for f in ["nnUNetPlans.json", "dataset.json", "splits_final.json"] {
        std::fs::write(pre.join(f), "{}").unwrap();
    }
    let run = Run {
        id: "r1".into(),
        name: "fake".into(),
        dataset_name: ds.into(),
        raw_dir: raw.to_string_lossy().into(),
        run_dir: run_dir.to_string_lossy().into(),
        state: RunState::Planning,
        budget: Budget::default(),
        folds: vec![0],
        predict_test: false,
        preprocess_shards: 1,
        created_ms: state::now_ms(),
        summary_json: None,
        error: None,
        next_seq: 0,
    };
    coord.apply(|st| ((), st.add_run(run))).unwrap();
    coord.apply(|st| ((), st.create_tasks("r1", &["a".into()], 1))).unwrap();
    "r1".into()
}

fn chunk(task: &pb::Task, token: u64, path: &str, data: &[u8]) -> pb::ArtifactChunk {
    pb::ArtifactChunk {
        run_id: task.run_id.clone(),
        task_id: task.task_id.clone(),
        fencing_token: token,
        path: path.into(),
        total_size: data.len() as u64,
        offset: 0,
        data: data.to_vec(),
        sha256: nnunet_common::hash::sha256_bytes(data),
        last: true,
    }
}

#[tokio::test]
async fn a_worker_whose_lease_expired_is_fenced_off() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, url, _stop) = start(dir.path(), Duration::from_millis(800), None).await;
    fake_run(&coord, dir.path());
    let ch = tonic::transport::Endpoint::from_shared(url).unwrap().connect().await.unwrap();
    let mut api = WorkerApiClient::with_interceptor(ch, with_token(TOKEN));
    let a = api.register(pb::RegisterRequest { host: "a".into(), ..Default::default() }).await.unwrap().into_inner().worker_id;
    let b = api.register(pb::RegisterRequest { host: "b".into(), ..Default::default() }).await.unwrap().into_inner().worker_id;
    let ta = api.lease(pb::LeaseRequest { worker_id: a.clone() }).await.unwrap().into_inner().task.expect("a task");
    assert_eq!(ta.inputs.len(), 5, "dataset.json, the case's image, plans, dataset.json copy, splits: {:?}", ta.inputs);
    // A keeps its lease alive for a while ...
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let hb = api
            .heartbeat(pb::HeartbeatRequest {
                worker_id: a.clone(),
                task_id: ta.task_id.clone(),
                fencing_token: ta.fencing_token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(hb.ok);
    }
    // ... then goes silent; the lease expires and B gets the task with a new token.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let tb = api.lease(pb::LeaseRequest { worker_id: b.clone() }).await.unwrap().into_inner().task.expect("the task again");
    assert_eq!(tb.task_id, ta.task_id);
    assert!(tb.fencing_token > ta.fencing_token);
    // Everything A still sends for the task is refused.
    let hb = api
        .heartbeat(pb::HeartbeatRequest {
            worker_id: a.clone(),
            task_id: ta.task_id.clone(),
            fencing_token: ta.fencing_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!hb.ok && hb.reason.contains("fencing"), "{hb:?}");
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
    let path = "results/Dataset001_Fake/nnUNetTrainer__nnUNetPlans__2d/fold_0/checkpoint_latest.safetensors";
    let up = api.upload_artifact(tokio_stream::iter(vec![chunk(&ta, ta.fencing_token, path, b"stale weights")])).await.unwrap_err();
    assert_eq!(up.code(), Code::FailedPrecondition);
    let run_file = dir.path().join("runs").join("r1").join(path);
    assert!(!run_file.exists(), "a fenced upload must leave nothing behind");
    let c = api
        .complete(pb::CompleteRequest { worker_id: a, task_id: ta.task_id.clone(), fencing_token: ta.fencing_token, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(c.code(), Code::FailedPrecondition);
    // B, the current holder, can write.
    api.upload_artifact(tokio_stream::iter(vec![chunk(&tb, tb.fencing_token, path, b"fresh weights")])).await.unwrap();
    assert_eq!(std::fs::read(&run_file).unwrap(), b"fresh weights");
    // A corrupted upload (sha256 mismatch) is refused and leaves nothing.
    let mut bad = chunk(&tb, tb.fencing_token, "results/x.bin", b"data");
    bad.sha256 = "00".repeat(32);
    assert_eq!(api.upload_artifact(tokio_stream::iter(vec![bad])).await.unwrap_err().code(), Code::DataLoss);
    assert!(!dir.path().join("runs/r1/results/x.bin").exists());
    // Paths cannot escape the run directory.
    let esc = chunk(&tb, tb.fencing_token, "../../etc/x", b"data");
    assert_eq!(api.upload_artifact(tokio_stream::iter(vec![esc])).await.unwrap_err().code(), Code::InvalidArgument);
    let refused = coord.counters.refused_writes.load(std::sync::atomic::Ordering::Relaxed);
    assert!(refused >= 3, "fenced writes are counted for /metrics: {refused}");
    let metrics = nnunet_coordinator::metrics_http::render(&coord);
    assert!(metrics.contains("nnunet_fenced_writes_total"));
}

#[tokio::test]
async fn watch_replays_from_a_sequence_number() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, url, _stop) = start(dir.path(), Duration::from_secs(30), None).await;
    fake_run(&coord, dir.path());
    let ch = tonic::transport::Endpoint::from_shared(url).unwrap().connect().await.unwrap();
    let mut mon = MonitorClient::with_interceptor(ch, with_token(TOKEN));
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
