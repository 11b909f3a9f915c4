//! A fake coordinator (a real tonic server implementing the WorkerApi, over loopback) and a real
//! `nnunet-worker` process.
//!
//! Hostile leases: the fake hands out an absolute input path, a `../` input path, a run id
//! with `../` whose run directory is "shared" (so the worker would remove its cache folder after the
//! task), and a download that breaks off. The worker must refuse the first three as not retryable,
//! fail the fourth as retryable, write or delete nothing outside its cache, and leave no temp file.
//!
//! mTLS: a fake that requires client certificates (certificates made with the `openssl` CLI; the
//! test skips without it) accepts a worker with `--tls-cert/--tls-key` and refuses one without.
use nnunet_proto::v1 as pb;
use pb::worker_api_server::{WorkerApi, WorkerApiServer};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

const WORKER_EXE: &str = env!("CARGO_BIN_EXE_nnunet-worker");
const PAYLOAD: &[u8] = b"written by a hostile coordinator";

#[derive(Default)]
struct State {
    tasks: Mutex<VecDeque<pb::Task>>,
    fails: Mutex<Vec<pb::FailRequest>>,
    completes: Mutex<Vec<pb::CompleteRequest>>,
}

#[derive(Clone, Default)]
struct Fake(Arc<State>);

type ChunkStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ArtifactChunk, Status>> + Send>>;

#[tonic::async_trait]
impl WorkerApi for Fake {
    async fn register(&self, _: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterReply>, Status> {
        Ok(Response::new(pb::RegisterReply { worker_id: "w-1".into(), heartbeat_interval_ms: 500, ..Default::default() }))
    }
    async fn lease(&self, _: Request<pb::LeaseRequest>) -> Result<Response<pb::LeaseReply>, Status> {
        let task = self.0.tasks.lock().unwrap().pop_front();
        let shutdown = task.is_none();
        #[allow(clippy::needless_update)] // the contract may gain fields
        let reply = pb::LeaseReply { task, shutdown, retry_after_ms: 100, ..Default::default() };
        Ok(Response::new(reply))
    }
    async fn heartbeat(&self, _: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatReply>, Status> {
        Ok(Response::new(pb::HeartbeatReply { ok: true, ..Default::default() }))
    }
    async fn report_metrics(&self, _: Request<pb::MetricsReport>) -> Result<Response<pb::Ack>, Status> {
        Ok(Response::new(pb::Ack {}))
    }
    async fn log(&self, _: Request<pb::LogLines>) -> Result<Response<pb::Ack>, Status> {
        Ok(Response::new(pb::Ack {}))
    }
    async fn upload_artifact(&self, req: Request<tonic::Streaming<pb::ArtifactChunk>>) -> Result<Response<pb::UploadReply>, Status> {
        let mut s = req.into_inner();
        while s.message().await?.is_some() {}
        Ok(Response::new(pb::UploadReply::default()))
    }
    type DownloadArtifactStream = ChunkStream;
    async fn download_artifact(&self, req: Request<pb::DownloadRequest>) -> Result<Response<ChunkStream>, Status> {
        let path = req.into_inner().path;
        let chunk = |data: &[u8], last: bool| pb::ArtifactChunk {
            data: data.to_vec(),
            total_size: PAYLOAD.len() as u64,
            last,
            sha256: if last { nnunet_common::hash::sha256_bytes(PAYLOAD) } else { String::new() },
            ..Default::default()
        };
        let items: Vec<Result<pb::ArtifactChunk, Status>> = if path.contains("broken") {
            // Half the file, then the stream breaks (not a transient error: no retry).
            vec![Ok(chunk(&PAYLOAD[..10], false)), Err(Status::data_loss("disk gone on the coordinator"))]
        } else {
            vec![Ok(chunk(PAYLOAD, true))]
        };
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }
    async fn complete(&self, req: Request<pb::CompleteRequest>) -> Result<Response<pb::Ack>, Status> {
        self.0.completes.lock().unwrap().push(req.into_inner());
        Ok(Response::new(pb::Ack {}))
    }
    async fn fail(&self, req: Request<pb::FailRequest>) -> Result<Response<pb::Ack>, Status> {
        self.0.fails.lock().unwrap().push(req.into_inner());
        Ok(Response::new(pb::Ack {}))
    }
}

fn input(path: &str) -> pb::ArtifactRef {
    pb::ArtifactRef { path: path.into(), sha256: nnunet_common::hash::sha256_bytes(PAYLOAD), size: PAYLOAD.len() as u64 }
}

fn task(id: &str, run_id: &str, kind: pb::TaskKind, inputs: Vec<pb::ArtifactRef>, run_dir: &Path) -> pb::Task {
    pb::Task {
        task_id: id.into(),
        run_id: run_id.into(),
        kind: kind as i32,
        fold: 0,
        lease_id: 1,
        fencing_token: 1,
        dataset_name: "Dataset001_Evil".into(),
        inputs,
        run_dir: run_dir.to_string_lossy().into_owned(),
        budget: Some(pb::Budget { epochs: 1, iterations_per_epoch: 1, val_iterations_per_epoch: 1, save_every: 1, ..Default::default() }),
        ..Default::default()
    }
}

/// Serves `fake` on a loopback port (with TLS when given); returns its address.
fn serve(rt: &tokio::runtime::Runtime, fake: Fake, tls: Option<tonic::transport::ServerTlsConfig>) -> std::net::SocketAddr {
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).unwrap();
    }
    let router = builder.add_service(WorkerApiServer::new(fake));
    rt.spawn(async move { router.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)).await.unwrap() });
    addr
}

/// Runs a worker (`--device cpu --exit-when-idle` added) to its end, at most 120 s; its exit status and log.
fn run_worker(mut cmd: std::process::Command) -> (std::process::ExitStatus, String) {
    let mut child = cmd
        .args(["--device", "cpu", "--exit-when-idle"])
        .env_remove("NNUNET_TOKEN")
        .env("NNUNET_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut log = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut log).unwrap();
        log
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            child.kill().unwrap();
            panic!("the worker did not finish in 120 s:\n{}", reader.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (status, reader.join().unwrap())
}

/// Every path under `root`, except those under `skip`.
fn listing(root: &Path, skip: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.starts_with(skip) {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

fn temp_files(root: &Path) -> Vec<PathBuf> {
    listing(root, Path::new("/nonexistent")).into_iter().filter(|p| p.to_string_lossy().contains(".part-")).collect()
}

#[test]
fn a_hostile_coordinator_cannot_make_the_worker_write_or_delete_outside_its_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let cache = root.join("cache");
    let outside = root.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    // A folder the ../ run id points at, with a run marker so the worker would treat it as the run
    // directory in place (and remove "its" cache folder after the task).
    let victim = root.join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("precious.txt"), b"keep me").unwrap();
    let evil_run_id = "../../victim";
    std::fs::write(victim.join(nnunet_proto::wire::RUN_MARKER), evil_run_id).unwrap();
    let plain_run_dir = root.join("no-such-run-dir");

    let abs_target = outside.join("absolute.txt");
    let fake = Fake::default();
    fake.0.tasks.lock().unwrap().extend([
        task("t-abs", "r1", pb::TaskKind::Preprocess, vec![input(abs_target.to_str().unwrap())], &plain_run_dir),
        task("t-dotdot", "r2", pb::TaskKind::Preprocess, vec![input("../../../outside/dotdot.txt")], &plain_run_dir),
        task("t-runid", evil_run_id, pb::TaskKind::Train, vec![], &victim),
        task("t-broken", "r4", pb::TaskKind::Preprocess, vec![input("preprocessed/broken.npy")], &plain_run_dir),
    ]);
    let before = listing(root, &cache);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr = serve(&rt, fake.clone(), None);
    let mut cmd = std::process::Command::new(WORKER_EXE);
    cmd.args(["--coordinator", &format!("http://{addr}")]).arg("--cache-dir").arg(&cache);
    let (status, log) = run_worker(cmd);
    assert!(status.success(), "worker exit {status:?}\n{log}");

    // Nothing written or deleted outside the cache, and no temp file inside it.
    assert!(!abs_target.exists(), "written through an absolute input path");
    assert!(!outside.join("dotdot.txt").exists(), "written through a ../ input path");
    assert!(victim.join("precious.txt").is_file(), "a folder outside the cache was deleted through a ../ run id");
    assert_eq!(listing(root, &cache), before, "files outside the cache changed\n{log}");
    assert_eq!(temp_files(&cache), Vec::<PathBuf>::new(), "partial downloads left in the cache");
    assert!(!cache.join("runs/r4/preprocessed/broken.npy").exists());

    let fails = fake.0.fails.lock().unwrap().clone();
    let by_id = |id: &str| fails.iter().find(|f| f.task_id == id).unwrap_or_else(|| panic!("task {id} was not failed back\n{log}")).clone();
    for (id, what) in [("t-abs", "absolute"), ("t-dotdot", ".."), ("t-runid", "run_id")] {
        let f = by_id(id);
        assert!(!f.retryable, "{id}: a refused task is not retryable");
        assert!(f.error.contains("refused") && f.error.contains(what), "{id}: {}", f.error);
    }
    let broken = by_id("t-broken");
    assert!(broken.retryable && broken.error.contains("broken.npy"), "{}", broken.error);
    assert!(fake.0.completes.lock().unwrap().is_empty());
}

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate, made with `openssl`.
fn make_certs(dir: &Path) -> bool {
    let script = r#"set -e
cd "$1"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=test-ca \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
for who in server client; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $who.key -out $who.csr -subj /CN=$who
  if [ $who = server ]; then usage=serverAuth; san="subjectAltName=DNS:localhost,IP:127.0.0.1"; else usage=clientAuth; san="subjectAltName=DNS:worker"; fi
  printf "%s\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\n" "$san" "$usage" > $who.ext
  openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out $who.pem -days 2 -extfile $who.ext
done"#;
    match std::process::Command::new("sh").args(["-c", script, "sh"]).arg(dir).output() {
        Ok(o) if o.status.success() => true,
        Ok(o) => panic!("openssl failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(_) => false,
    }
}

#[test]
fn a_coordinator_that_requires_client_certificates_accepts_the_worker_with_one() {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    if !make_certs(d) {
        eprintln!("skipped: no openssl to make test certificates");
        return;
    }
    let read = |n: &str| std::fs::read(d.join(n)).unwrap();
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(read("server.pem"), read("server.key")))
        .client_ca_root(Certificate::from_pem(read("ca.pem")));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr = serve(&rt, Fake::default(), Some(tls));
    let url = format!("https://localhost:{}", addr.port());

    let mut with_cert = std::process::Command::new(WORKER_EXE);
    with_cert.args(["--coordinator", &url]).arg("--cache-dir").arg(d.join("cache1")).arg("--tls-ca").arg(d.join("ca.pem"));
    with_cert.arg("--tls-cert").arg(d.join("client.pem")).arg("--tls-key").arg(d.join("client.key"));
    let (status, log) = run_worker(with_cert);
    assert!(status.success() && log.contains("registered"), "{status:?}\n{log}");

    let mut without = std::process::Command::new(WORKER_EXE);
    without.args(["--coordinator", &url, "--reconnect-timeout-secs", "2"]).arg("--cache-dir").arg(d.join("cache2"));
    without.arg("--tls-ca").arg(d.join("ca.pem"));
    let (status, log) = run_worker(without);
    assert!(!status.success() && !log.contains("registered with"), "a worker without a client certificate must not register\n{log}");

    let mut half = std::process::Command::new(WORKER_EXE);
    half.args(["--coordinator", &url]).arg("--tls-cert").arg(d.join("client.pem"));
    let (status, log) = run_worker(half);
    assert_eq!(status.code(), Some(2), "--tls-cert without --tls-key is a usage error\n{log}");
}
