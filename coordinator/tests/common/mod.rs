//! A coordinator on loopback with a hand-moved clock, a hand-written gRPC client, and a fake run
//! whose files exist just enough for the coordinator to hash task inputs. No torch needed.
#![allow(dead_code)]
use nnunet_common::Fold;
use nnunet_coordinator::clock::ManualClock;
use nnunet_coordinator::domain::RunId;
use nnunet_coordinator::engine::{Coordinator, CoordinatorConfig};
use nnunet_coordinator::service::{self, ServeOptions};
use nnunet_coordinator::state::Run;
use nnunet_proto::v1 as pb;
use nnunet_proto::v1::monitor_client::MonitorClient;
use nnunet_proto::v1::worker_api_client::WorkerApiClient;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub const TOKEN: &str = "0123456789abcdef0123456789abcdef";
pub const DS: &str = "Dataset001_Fake";

pub struct Harness {
    pub coord: Arc<Coordinator>,
    pub url: String,
    pub clock: ManualClock,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Harness {
    /// Stops the server and waits for it (so the state dir can be reopened).
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            s.send(()).ok();
        }
        if let Some(h) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(5), h).await.ok();
        }
    }
}

pub struct Start {
    pub ttl: Duration,
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    pub nodelay: bool,
    pub cfg: Box<dyn FnOnce(&mut CoordinatorConfig) + Send>,
}

impl Default for Start {
    fn default() -> Self {
        Start { ttl: Duration::from_secs(30), tls: None, nodelay: true, cfg: Box::new(|_| {}) }
    }
}

pub async fn start(dir: &Path, s: Start) -> Harness {
    let mut cfg = CoordinatorConfig::new(dir.to_path_buf());
    cfg.lease_ttl = s.ttl;
    cfg.heartbeat_interval = Duration::from_millis(200);
    (s.cfg)(&mut cfg);
    let clock = ManualClock::new(1_764_000_000_000);
    let coord = Coordinator::open_with_clock(cfg, Arc::new(clock.clone())).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let scheme = if s.tls.is_some() { "https" } else { "http" };
    let mut opts = ServeOptions::new(addr, Some(TOKEN.into()));
    opts.tls = s.tls;
    opts.tcp_nodelay = s.nodelay;
    let server = tokio::spawn(service::serve(coord.clone(), listener, opts, async move {
        rx.await.ok();
    }));
    Harness { coord, url: format!("{scheme}://127.0.0.1:{}", addr.port()), clock, stop: Some(tx), server: Some(server) }
}

#[derive(Clone)]
pub struct Bearer(pub String);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", format!("Bearer {}", self.0).parse().unwrap());
        Ok(req)
    }
}

pub type Api = WorkerApiClient<InterceptedService<Channel, Bearer>>;
pub type Mon = MonitorClient<InterceptedService<Channel, Bearer>>;

pub async fn channel(url: &str) -> Channel {
    for _ in 0..50 {
        if let Ok(c) = tonic::transport::Endpoint::from_shared(url.to_string()).unwrap().connect().await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("coordinator at {url} did not come up");
}

pub async fn api(url: &str, token: &str) -> Api {
    WorkerApiClient::with_interceptor(channel(url).await, Bearer(token.into()))
}

pub async fn mon(url: &str, token: &str) -> Mon {
    MonitorClient::with_interceptor(channel(url).await, Bearer(token.into())).max_decoding_message_size(64 << 20)
}

/// A planned run `id` (folds 0 and 1) with one case `a`, its files in place: one preprocessing
/// task is ready to lease.
pub async fn fake_run(coord: &Arc<Coordinator>, dir: &Path, id: &str) -> RunId {
    let run_dir = dir.join("runs").join(id);
    let raw = dir.join("raw").join(id).join(DS);
    std::fs::create_dir_all(raw.join("imagesTr")).unwrap();
    std::fs::write(raw.join("dataset.json"), "{}").unwrap();
    std::fs::write(raw.join("imagesTr").join("a_0000.nii.gz"), "x").unwrap();
    let rid = RunId::from(id);
    nnunet_coordinator::pipeline::prepare_run_dir(&run_dir, &rid, &raw, DS).unwrap();
    let pre = run_dir.join("preprocessed").join(DS);
    std::fs::create_dir_all(&pre).unwrap();
    for f in ["nnUNetPlans.json", "dataset.json", "splits_final.json"] {
        std::fs::write(pre.join(f), "{}").unwrap();
    }
    let run = Run {
        name: "fake".into(),
        folds: vec![Fold::Index(0), Fold::Index(1)],
        ..Run::new(
            rid.clone(),
            DS,
            raw.canonicalize().unwrap().to_string_lossy().into(),
            run_dir.to_string_lossy().into(),
            vec![],
            coord.now_ms(),
        )
    };
    coord.apply("test: add run", move |st, now| Ok(((), st.add_run(run, now)))).await.unwrap();
    let r2 = rid.clone();
    coord.apply("test: tasks", move |st, now| Ok(((), st.create_tasks(&r2, &["a".into()], 1, now)))).await.unwrap();
    rid
}

pub fn chunk(task: &pb::Task, token: u64, path: &str, data: &[u8]) -> pb::ArtifactChunk {
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
        worker_id: String::new(),
    }
}

pub async fn register(api: &mut Api, host: &str) -> String {
    api.register(pb::RegisterRequest { host: host.into(), ..Default::default() }).await.unwrap().into_inner().worker_id
}

pub async fn lease(api: &mut Api, worker: &str) -> Option<pb::Task> {
    api.lease(pb::LeaseRequest { worker_id: worker.into() }).await.unwrap().into_inner().task
}

pub async fn complete(api: &mut Api, worker: &str, t: &pb::Task) {
    api.complete(pb::CompleteRequest {
        worker_id: worker.into(),
        task_id: t.task_id.clone(),
        fencing_token: t.fencing_token,
        ..Default::default()
    })
    .await
    .unwrap();
}

/// Every file under `dir` whose name contains `.upload-` (an upload's temp file).
pub fn temp_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(p);
            } else if p.file_name().unwrap().to_string_lossy().contains(".upload-") {
                out.push(p);
            }
        }
    }
    out
}

/// The path (relative to the run dir) of case `c`'s preprocessed data.
pub fn case_data(c: &str) -> String {
    format!("preprocessed/{DS}/{}/{c}.npy", nnunet_common::paths::data_identifier())
}

/// A coordinator with one fake run `r1`, a registered worker `a` (admin token) and its first lease.
pub async fn leased(dir: &Path) -> (Harness, Api, String, pb::Task) {
    let h = start(dir, Start::default()).await;
    fake_run(&h.coord, dir, "r1").await;
    let mut api = api(&h.url, TOKEN).await;
    let w = register(&mut api, "a").await;
    let t = lease(&mut api, &w).await.expect("the fake run has a task to lease");
    (h, api, w, t)
}
