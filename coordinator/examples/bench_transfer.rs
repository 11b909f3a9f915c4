//! Benchmark of the coordinator's data plane on loopback: artifact upload and download throughput
//! (MB/s, 1 MiB chunks, sha256-verified, fenced) and the latency of a metrics report, the per-epoch
//! cost a training worker pays. Prints a table and writes JSON (first argument, default
//! bench-results/runner_transfer.json).
use nnunet_common::Fold;
use nnunet_coordinator::domain::RunId;
use nnunet_coordinator::engine::{Coordinator, CoordinatorConfig};
use nnunet_coordinator::service::{self, ServeOptions};
use nnunet_coordinator::state::Run;
use nnunet_proto::v1 as pb;
use nnunet_proto::v1::worker_api_client::WorkerApiClient;
use std::time::{Duration, Instant};

const TOKEN: &str = "bench-token-0123456789abcdef0123456789";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let out = std::env::args().nth(1).unwrap_or_else(|| "bench-results/runner_transfer.json".into());
    let size_mb: usize = std::env::var("BENCH_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let dir = tempfile::tempdir()?;
    let mut cfg = CoordinatorConfig::new(dir.path().to_path_buf());
    cfg.lease_ttl = Duration::from_secs(60);
    let coord = Coordinator::open(cfg)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(service::serve(coord.clone(), listener, ServeOptions::new(addr, Some(TOKEN.into())), std::future::pending()));
    // A run with one task whose inputs exist, so a worker can lease it.
    let ds = "Dataset001_Bench";
    let raw = dir.path().join("raw").join(ds);
    std::fs::create_dir_all(&raw)?;
    std::fs::write(raw.join("dataset.json"), "{}")?;
    let run_dir = dir.path().join("runs/r1");
    nnunet_coordinator::pipeline::prepare_run_dir(&run_dir, &RunId::from("r1"), &raw, ds)?;
    let pre = run_dir.join("preprocessed").join(ds);
    std::fs::create_dir_all(&pre)?;
    for f in ["nnUNetPlans.json", "dataset.json", "splits_final.json"] {
        std::fs::write(pre.join(f), "{}")?;
    }
    let run = Run {
        name: "bench".into(),
        ..Run::new("r1".into(), ds, raw.to_string_lossy().into(), run_dir.to_string_lossy().into(), vec![Fold::Index(0)], coord.now_ms())
    };
    coord.apply("bench: run", move |st, now| Ok(((), st.add_run(run, now)))).await?;
    coord.apply("bench: tasks", |st, now| Ok(((), st.create_tasks(&RunId::from("r1"), &["a".into()], 1, now)))).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .connect()
        .await?;
    let auth = |mut r: tonic::Request<()>| {
        r.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        Ok(r)
    };
    let mut api = WorkerApiClient::with_interceptor(ch, auth).max_decoding_message_size(16 << 20).max_encoding_message_size(16 << 20);
    let wid = api.register(pb::RegisterRequest { host: "bench".into(), ..Default::default() }).await?.into_inner().worker_id;
    let task = api.lease(pb::LeaseRequest { worker_id: wid.clone() }).await?.into_inner().task.expect("task");

    let data: Vec<u8> = (0..size_mb << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let sha = nnunet_common::hash::sha256_bytes(&data);
    // The preprocessing task's own case file: the only kind of path it may write.
    let path = format!("preprocessed/{ds}/{}/a.npy", nnunet_common::paths::data_identifier());
    let path = path.as_str();
    let mut up = vec![];
    for _ in 0..3 {
        let chunks: Vec<pb::ArtifactChunk> = data
            .chunks(1 << 20)
            .enumerate()
            .map(|(i, c)| pb::ArtifactChunk {
                run_id: if i == 0 { "r1".into() } else { String::new() },
                task_id: if i == 0 { task.task_id.clone() } else { String::new() },
                fencing_token: task.fencing_token,
                path: if i == 0 { path.into() } else { String::new() },
                total_size: data.len() as u64,
                offset: (i << 20) as u64,
                data: c.to_vec(),
                sha256: if (i + 1) << 20 >= data.len() { sha.clone() } else { String::new() },
                last: (i + 1) << 20 >= data.len(),
                worker_id: if i == 0 { wid.clone() } else { String::new() },
            })
            .collect();
        let t = Instant::now();
        api.upload_artifact(tokio_stream::iter(chunks)).await?;
        up.push(size_mb as f64 * 1.048576 / t.elapsed().as_secs_f64());
    }
    let mut down = vec![];
    for _ in 0..3 {
        let t = Instant::now();
        let mut s = api.download_artifact(pb::DownloadRequest { run_id: "r1".into(), path: path.into(), offset: 0 }).await?.into_inner();
        let mut n = 0usize;
        while let Some(c) = s.message().await? {
            n += c.data.len();
        }
        assert_eq!(n, data.len());
        down.push(size_mb as f64 * 1.048576 / t.elapsed().as_secs_f64());
    }
    let n_metrics = 500;
    let t = Instant::now();
    for e in 0..n_metrics {
        api.report_metrics(pb::MetricsReport {
            worker_id: wid.clone(),
            task_id: task.task_id.clone(),
            lease_id: task.lease_id,
            fencing_token: task.fencing_token,
            metrics: Some(pb::EpochMetrics { epoch: e, epochs: 1000, ..Default::default() }),
        })
        .await?;
    }
    let metrics_ms = t.elapsed().as_secs_f64() * 1000.0 / n_metrics as f64;
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let (up_mbs, down_mbs) = (med(&mut up), med(&mut down));
    // A full nnU-Net 2D checkpoint (512² plan, 46.3 M parameters, weights + momentum, fp32).
    let ckpt_mb = 46_325_134.0 * 4.0 * 2.0 / 1e6;
    println!("| metric | value |\n|---|---|");
    println!("| upload throughput (loopback, {size_mb} MiB, median of 3) | {up_mbs:.0} MB/s |");
    println!("| download throughput (median of 3) | {down_mbs:.0} MB/s |");
    println!("| metrics report latency (mean of {n_metrics}, persisted to SQLite) | {metrics_ms:.2} ms |");
    println!("| time to stream a 512² checkpoint ({ckpt_mb:.0} MB) | {:.2} s (in a background thread) |", ckpt_mb / up_mbs);
    let json = serde_json::json!({
        "machine": format!("{} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)),
        "artifact_mb": size_mb, "upload_mb_per_s": up_mbs, "download_mb_per_s": down_mbs,
        "metrics_report_ms": metrics_ms, "checkpoint_512_mb": ckpt_mb, "checkpoint_512_stream_s": ckpt_mb / up_mbs,
    });
    if let Some(p) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&json)?)?;
    println!("wrote {out}");
    Ok(())
}
