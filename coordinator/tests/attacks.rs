//! Issue 12's findings, each reproduced by a hostile client over loopback (a hand-written tonic
//! client) against a real coordinator. Every test here failed before the fix.
mod common;
use common::*;
use nnunet_coordinator::domain::Role;
use nnunet_coordinator::engine::Retention;
use nnunet_proto::v1 as pb;
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::Code;

/// Finding 1: NaN/inf metrics are stored, replayed and survive a restart.
#[tokio::test]
async fn nan_metrics_replay_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (h, mut api, w, t) = leased(dir.path()).await;
    let m = pb::EpochMetrics {
        epoch: 0,
        epochs: 2,
        train_loss: f64::INFINITY,
        val_loss: f64::NEG_INFINITY,
        pseudo_dice: vec![f64::NAN, 0.5],
        mean_fg_dice: f64::NAN,
        ..Default::default()
    };
    let report = pb::MetricsReport {
        worker_id: w.clone(),
        task_id: t.task_id.clone(),
        fencing_token: t.fencing_token,
        metrics: Some(m),
        ..Default::default()
    };
    api.report_metrics(report).await.unwrap();
    let replay = |url: String| async move {
        let mut mon = mon(&url, TOKEN).await;
        let mut s = mon.watch_run(pb::WatchRunRequest { run_id: "r1".into(), since_seq: 0, follow: false }).await.unwrap().into_inner();
        let mut metrics = vec![];
        while let Some(e) = s.message().await.unwrap() {
            if let Some(pb::event::Body::Metrics(m)) = e.body {
                metrics.push(m);
            }
        }
        let info = mon.get_run(pb::GetRunRequest { run_id: "r1".into() }).await.unwrap().into_inner();
        (metrics, info)
    };
    let (metrics, _) = replay(h.url.clone()).await;
    assert_eq!(metrics.len(), 1);
    assert!(metrics[0].mean_fg_dice.is_nan() && metrics[0].train_loss == f64::INFINITY && metrics[0].pseudo_dice[1] == 0.5);
    h.stop().await;
    let h = start(dir.path(), Start::default()).await;
    let (metrics, info) = replay(h.url.clone()).await;
    assert_eq!(metrics.len(), 1, "the restarted coordinator replays the NaN event");
    let tm = info.tasks.iter().find(|x| x.task_id == t.task_id).unwrap().last_metrics.clone().unwrap();
    assert!(tm.mean_fg_dice.is_nan() && tm.val_loss == f64::NEG_INFINITY);
}

/// Finding 4: a task writes only its own paths; declared size, sha256 and a size limit are
/// enforced; temp files never stay.
#[tokio::test]
async fn uploads_are_tied_to_their_task() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), Start { cfg: Box::new(|c| c.max_upload_bytes = 1 << 20), ..Default::default() }).await;
    fake_run(&h.coord, dir.path(), "r1").await;
    let run_dir = dir.path().join("runs/r1");
    let plans = run_dir.join(format!("preprocessed/{DS}/nnUNetPlans.json"));
    let before = std::fs::read(&plans).unwrap();
    let mut api = api(&h.url, TOKEN).await;
    let w = register(&mut api, "a").await;
    let t = lease(&mut api, &w).await.unwrap();
    assert_eq!(t.kind, pb::TaskKind::Preprocess as i32);
    let model = format!("results/{DS}/{}", nnunet_common::paths::model_folder_name());
    for target in [
        format!("preprocessed/{DS}/nnUNetPlans.json"),
        format!("preprocessed/{DS}/splits_final.json"),
        format!("{model}/fold_1/checkpoint_final.safetensors"),
        case_data("b"),
        "raw/x".to_string(),
    ] {
        let e = api.upload_artifact(tokio_stream::iter(vec![chunk(&t, t.fencing_token, &target, b"evil")])).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{target}: {e:?}");
    }
    assert_eq!(std::fs::read(&plans).unwrap(), before);
    assert!(!run_dir.join(format!("{model}/fold_1")).exists());
    // Its own case file is fine ...
    let own = case_data("a");
    api.upload_artifact(tokio_stream::iter(vec![chunk(&t, t.fencing_token, &own, b"ok")])).await.unwrap();
    // ... but not with a missing sha256, a lying total size, or beyond the limit.
    let mut c = chunk(&t, t.fencing_token, &own, b"data");
    c.sha256.clear();
    assert_eq!(api.upload_artifact(tokio_stream::iter(vec![c])).await.unwrap_err().code(), Code::InvalidArgument);
    let mut c = chunk(&t, t.fencing_token, &own, b"data");
    c.total_size = 2;
    assert_eq!(api.upload_artifact(tokio_stream::iter(vec![c])).await.unwrap_err().code(), Code::ResourceExhausted);
    let mut c = chunk(&t, t.fencing_token, &own, b"data");
    c.total_size = 100;
    assert_eq!(api.upload_artifact(tokio_stream::iter(vec![c])).await.unwrap_err().code(), Code::DataLoss);
    let mut c = chunk(&t, t.fencing_token, &own, b"data");
    c.total_size = 2 << 20;
    assert_eq!(api.upload_artifact(tokio_stream::iter(vec![c])).await.unwrap_err().code(), Code::ResourceExhausted);
    // A stream that stops before its last chunk.
    let mut c = chunk(&t, t.fencing_token, &own, b"data");
    c.last = false;
    c.total_size = 8;
    assert_eq!(api.upload_artifact(tokio_stream::iter(vec![c])).await.unwrap_err().code(), Code::DataLoss);
    assert_eq!(std::fs::read(run_dir.join(&own)).unwrap(), b"ok");
    // Give the server a moment to drop the aborted streams' sinks.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(temp_files(dir.path()).is_empty(), "{:?}", temp_files(dir.path()));
}

/// Finding 5: when the database cannot be written, nothing changes in memory, watchers see
/// nothing, the caller gets an error, and fencing tokens and attempts never go backwards.
#[tokio::test]
async fn a_failing_database_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), Start::default()).await;
    fake_run(&h.coord, dir.path(), "r1").await;
    let mut api = api(&h.url, TOKEN).await;
    let w = register(&mut api, "a").await;
    let before = h.coord.read(|st| st.clone());
    let mut watcher = h.coord.subscribe();
    // A second connection makes every journal write fail, like a full disk would.
    let db = rusqlite::Connection::open(dir.path().join("coordinator.db")).unwrap();
    db.execute_batch("CREATE TRIGGER full BEFORE INSERT ON events BEGIN SELECT RAISE(FAIL, 'database or disk is full'); END;").unwrap();
    let e = api.lease(pb::LeaseRequest { worker_id: w.clone() }).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("disk is full"), "{}", e.message());
    let after = h.coord.read(|st| st.clone());
    assert_eq!(after.tasks, before.tasks, "the lease was undone in memory");
    assert_eq!(after.runs, before.runs);
    assert!(watcher.try_recv().is_err(), "watchers saw nothing");
    assert!(h.coord.counters.persist_failures.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    db.execute_batch("DROP TRIGGER full;").unwrap();
    let t = lease(&mut api, &w).await.expect("leases work again");
    assert_eq!(t.attempt, 1);
    h.stop().await;
    let h = start(dir.path(), Start::default()).await;
    let back = h.coord.read(|st| st.tasks[t.task_id.as_str()].clone());
    assert_eq!((back.attempt, back.fencing_token), (1, t.fencing_token), "a restart sees exactly what was answered");
}

fn link(target: &Path, at: &Path) {
    std::os::unix::fs::symlink(target, at).unwrap();
}

/// Finding 6: downloads stream in chunks, never follow links, never leave the run's folders.
#[tokio::test]
async fn downloads_stay_inside_the_run_and_stream() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), Start::default()).await;
    fake_run(&h.coord, dir.path(), "r1").await;
    let raw = dir.path().join("raw/r1").join(DS);
    link(Path::new("/etc/passwd"), &raw.join("imagesTr/p_0000.nii.gz"));
    link(Path::new("/dev/zero"), &raw.join("imagesTr/z_0000.nii.gz"));
    link(&dir.path().join("token"), &raw.join("imagesTr/t_0000.nii.gz"));
    let big: Vec<u8> = (0..(5 << 20) + 17).map(|i| (i % 251) as u8).collect();
    let pre = dir.path().join(format!("runs/r1/preprocessed/{DS}"));
    std::fs::write(pre.join("big.bin"), &big).unwrap();
    let mut api = api(&h.url, TOKEN).await;
    let get = |path: &str| pb::DownloadRequest { run_id: "r1".into(), path: path.into(), offset: 0 };
    for bad in [
        format!("raw/{DS}/imagesTr/p_0000.nii.gz"),
        format!("raw/{DS}/imagesTr/z_0000.nii.gz"),
        format!("raw/{DS}/imagesTr/t_0000.nii.gz"),
        "../token".into(),
        "/etc/passwd".into(),
        "coordinator.db".into(),
        "raw/OtherDataset/x".into(),
        format!("preprocessed/{DS}"),
    ] {
        let e = api.download_artifact(get(&bad)).await.err().map(|e| e.code());
        assert!(matches!(e, Some(Code::NotFound | Code::InvalidArgument)), "{bad} was served: {e:?}");
    }
    let mut s = api.download_artifact(get(&format!("preprocessed/{DS}/big.bin"))).await.unwrap().into_inner();
    let mut got = Vec::new();
    let mut chunks = 0;
    let mut sha = String::new();
    while let Some(c) = s.message().await.unwrap() {
        assert!(c.data.len() <= nnunet_proto::wire::CHUNK_BYTES);
        got.extend_from_slice(&c.data);
        chunks += 1;
        if c.last {
            sha = c.sha256;
        }
    }
    assert_eq!(chunks, 6);
    assert!(got == big);
    assert_eq!(sha, nnunet_common::hash::sha256_bytes(&big));
    // A real file of the dataset is served through the run's raw link.
    api.download_artifact(get(&format!("raw/{DS}/imagesTr/a_0000.nii.gz"))).await.unwrap();
}

/// Finding 7: bounded strings, paged listing, pruned workers, deletion and retention.
#[tokio::test]
async fn input_is_bounded_and_old_state_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    let retention = Retention { keep_finished: Some(2), max_age: None };
    let h = start(
        dir.path(),
        Start {
            cfg: Box::new(move |c| {
                c.retention = retention;
                c.worker_idle_prune = Duration::from_secs(60);
            }),
            ..Default::default()
        },
    )
    .await;
    let mut mon = mon(&h.url, TOKEN).await;
    let mut api = api(&h.url, TOKEN).await;
    let huge = "x".repeat(1 << 20);
    let e = mon
        .submit_run(pb::SubmitRunRequest { dataset_dir: dir.path().to_string_lossy().into(), name: huge.clone(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("run name"), "{}", e.message());
    let e = api.register(pb::RegisterRequest { host: huge, ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // Paging.
    for i in 0..5 {
        fake_run(&h.coord, dir.path(), &format!("r{i}")).await;
        h.clock.advance(Duration::from_millis(1));
    }
    let mut seen = vec![];
    let mut token = String::new();
    loop {
        let p = mon.list_runs(pb::ListRunsRequest { page_size: 2, page_token: token }).await.unwrap().into_inner();
        assert!(p.runs.len() <= 2);
        seen.extend(p.runs.into_iter().map(|r| r.run_id));
        if p.next_page_token.is_empty() {
            break;
        }
        token = p.next_page_token;
    }
    assert_eq!(seen, ["r0", "r1", "r2", "r3", "r4"]);
    // Stale workers are pruned.
    let w = register(&mut api, "idle").await;
    h.clock.advance(Duration::from_secs(120));
    h.coord.housekeep_once().await;
    assert_eq!(api.lease(pb::LeaseRequest { worker_id: w }).await.unwrap_err().code(), Code::NotFound);
    // An active run cannot be deleted; a finished one goes with its directory and journal.
    assert_eq!(mon.delete_run(pb::DeleteRunRequest { run_id: "r0".into() }).await.unwrap_err().code(), Code::InvalidArgument);
    mon.cancel_run(pb::CancelRunRequest { run_id: "r0".into() }).await.unwrap();
    mon.delete_run(pb::DeleteRunRequest { run_id: "r0".into() }).await.unwrap();
    assert!(!dir.path().join("runs/r0").exists());
    assert!(dir.path().join("raw/r0").join(DS).join("dataset.json").exists(), "the user's dataset is untouched");
    assert_eq!(mon.get_run(pb::GetRunRequest { run_id: "r0".into() }).await.unwrap_err().code(), Code::NotFound);
    // Retention keeps the newest two finished runs.
    for r in ["r1", "r2", "r3"] {
        mon.cancel_run(pb::CancelRunRequest { run_id: r.into() }).await.unwrap();
        h.clock.advance(Duration::from_millis(5));
    }
    h.coord.housekeep_once().await;
    let left: Vec<String> =
        mon.list_runs(pb::ListRunsRequest::default()).await.unwrap().into_inner().runs.into_iter().map(|r| r.run_id).collect();
    assert_eq!(left, ["r2", "r3", "r4"]);
    assert!(!dir.path().join("runs/r1").exists());
}

/// Finding 8: roles, revocation, holder checks, unguessable ids, authenticated reflection.
#[tokio::test]
async fn each_role_does_only_its_job() {
    let dir = tempfile::tempdir().unwrap();
    let store = nnunet_coordinator::store::Store::open(&dir.path().join("coordinator.db")).unwrap();
    let mut tokens = std::collections::HashMap::new();
    for role in [Role::Worker, Role::Viewer, Role::Operator] {
        let t = nnunet_coordinator::access::new_role_token(role);
        store.add_token(&nnunet_coordinator::access::token_hash(&t), role, role.name(), 0).unwrap();
        tokens.insert(role, t);
    }
    let h = start(dir.path(), Start::default()).await;
    fake_run(&h.coord, dir.path(), "r1").await;
    let (wt, vt, ot) = (&tokens[&Role::Worker], &tokens[&Role::Viewer], &tokens[&Role::Operator]);
    let mut as_worker = mon(&h.url, wt).await;
    assert_eq!(as_worker.list_runs(pb::ListRunsRequest::default()).await.unwrap_err().code(), Code::PermissionDenied);
    let e = as_worker.submit_run(pb::SubmitRunRequest { dataset_dir: "/x".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(as_worker.cancel_run(pb::CancelRunRequest { run_id: "r1".into() }).await.unwrap_err().code(), Code::PermissionDenied);
    let mut viewer = mon(&h.url, vt).await;
    viewer.list_runs(pb::ListRunsRequest::default()).await.unwrap();
    assert_eq!(viewer.cancel_run(pb::CancelRunRequest { run_id: "r1".into() }).await.unwrap_err().code(), Code::PermissionDenied);
    let e = api(&h.url, vt).await.register(pb::RegisterRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = api(&h.url, ot).await.register(pb::RegisterRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // A worker token works; ids and tokens are not guessable; another worker cannot report.
    let mut wapi = api(&h.url, wt).await;
    let a = register(&mut wapi, "a").await;
    let b = register(&mut wapi, "b").await;
    assert!(a.len() >= 16 + 4, "worker ids carry 64 random bits: {a}");
    let t = lease(&mut wapi, &a).await.unwrap();
    assert!(t.fencing_token >= 1 << 24, "fencing tokens carry random bits: {}", t.fencing_token);
    assert!(t.task_id.len() > "r1-pre0-".len() + 7, "task ids carry random bits: {}", t.task_id);
    for who in [b.as_str(), ""] {
        let e = wapi
            .complete(pb::CompleteRequest {
                worker_id: who.into(),
                task_id: t.task_id.clone(),
                fencing_token: t.fencing_token,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{who:?}");
        let mut c = chunk(&t, t.fencing_token, &case_data("a"), b"x");
        c.worker_id = if who.is_empty() { "w-someone".into() } else { who.into() };
        assert_eq!(wapi.upload_artifact(tokio_stream::iter(vec![c])).await.unwrap_err().code(), Code::FailedPrecondition);
    }
    complete(&mut wapi, &a, &t).await;
    // The operator changes runs; a revoked token stops working.
    let mut op = mon(&h.url, ot).await;
    op.cancel_run(pb::CancelRunRequest { run_id: "r1".into() }).await.unwrap();
    assert_eq!(store.revoke_token("operator").unwrap(), 1);
    h.clock.advance(Duration::from_secs(3));
    assert_eq!(op.get_run(pb::GetRunRequest { run_id: "r1".into() }).await.unwrap_err().code(), Code::Unauthenticated);
    // Reflection answers only with a token.
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest, ServerReflectionRequest,
    };
    let req = || {
        tokio_stream::iter(vec![ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }])
    };
    let e = ServerReflectionClient::new(channel(&h.url).await).server_reflection_info(req()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    ServerReflectionClient::with_interceptor(channel(&h.url).await, Bearer(vt.clone())).server_reflection_info(req()).await.unwrap();
}

async fn p50_unary(url: &str) -> Duration {
    let mut mon = mon(url, TOKEN).await;
    let mut t = Vec::new();
    for _ in 0..60 {
        let s = Instant::now();
        mon.get_run(pb::GetRunRequest { run_id: "r1".into() }).await.unwrap();
        t.push(s.elapsed());
    }
    t.sort();
    t[t.len() / 2]
}

/// Finding 9: TCP_NODELAY on accepted sockets (unary replies of a few KB no longer wait ~40 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_replies_do_not_wait_for_delayed_acks() {
    let mut p = vec![];
    for nodelay in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let h = start(dir.path(), Start { nodelay, ..Default::default() }).await;
        fake_run(&h.coord, dir.path(), "r1").await;
        let v = p50_unary(&h.url).await;
        println!("GetRun p50 over loopback, TCP_NODELAY={nodelay}: {:.2} ms", v.as_secs_f64() * 1e3);
        p.push(v);
        h.stop().await;
    }
    assert!(p[1] < Duration::from_millis(15), "p50 with TCP_NODELAY {:?}", p[1]);
}

/// Finding 9: a CA certificate served as the server certificate, and a plaintext client against
/// TLS, get actionable hints on the CLI side.
#[tokio::test]
async fn tls_mistakes_get_hints() {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    let ca = params.self_signed(&key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), Start { tls: Some((ca.pem().into_bytes(), key.serialize_pem().into_bytes())), ..Default::default() }).await;
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let conn = |url: String, ca: Option<std::path::PathBuf>| nnunet_coordinator::client::ConnectArgs {
        coordinator: url,
        token_file: None,
        tls_ca: ca,
    };
    let msg = async {
        let mut c = nnunet_coordinator::client::monitor(&conn(h.url.clone(), Some(ca_file.clone()))).await?;
        c.list_runs(pb::ListRunsRequest::default()).await.map_err(nnunet_coordinator::client::explain)?;
        anyhow::Ok(())
    }
    .await
    .unwrap_err()
    .to_string();
    assert!(msg.contains("leaf certificate"), "{msg}");
    let plain = h.url.replace("https://", "http://");
    let msg = async {
        let mut c = nnunet_coordinator::client::monitor(&conn(plain, None)).await?;
        c.list_runs(pb::ListRunsRequest::default()).await.map_err(nnunet_coordinator::client::explain)?;
        anyhow::Ok(())
    }
    .await
    .unwrap_err()
    .to_string();
    assert!(msg.contains("https://") || msg.contains("TLS"), "{msg}");
}
