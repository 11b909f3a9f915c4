//! The connection to the coordinator: one lazily connected channel with the bearer token
//! ([`nnunet_proto::wire::TokenInterceptor`]), optional TLS and client certificate (mTLS), and
//! [`Conn::call`], which retries a call while the coordinator is unavailable (it may restart; running
//! leases survive that).
use crate::error::bad_input;
use anyhow::{anyhow, bail, Context, Result};
use nnunet_proto::v1 as pb;
use nnunet_proto::v1::worker_api_client::WorkerApiClient;
use nnunet_proto::wire::{TokenInterceptor, MAX_MESSAGE_BYTES, UNARY_DEADLINE};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Status};

/// The generated client with the token interceptor.
pub type Api = WorkerApiClient<InterceptedService<Channel, TokenInterceptor>>;

/// How to reach the coordinator.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub address: String,
    pub token_file: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for a coordinator that requires them (mTLS).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// How long [`Conn::call`] keeps retrying while the coordinator is unreachable.
    pub reconnect_timeout: Duration,
}

/// The connection to the coordinator, with retries while it is unavailable.
#[derive(Clone)]
pub struct Conn {
    api: Api,
    worker_id: Arc<Mutex<String>>,
    reconnect_timeout: Duration,
    /// Set while calls fail for want of the coordinator: the warning and the "reachable again"
    /// line are logged once per outage, not once per call.
    unreachable: Arc<AtomicBool>,
}

/// The deadline of one attempt of `what`: unary calls get [`UNARY_DEADLINE`], so a silent
/// partition is noticed within seconds; artifact streams are bounded by the endpoint's timeout.
fn deadline(what: &str) -> Option<Duration> {
    (!matches!(what, "upload" | "download")).then_some(UNARY_DEADLINE)
}

/// Whether a failed call is worth retrying (the coordinator is restarting or the network blinked).
pub(crate) fn transient(s: &Status) -> bool {
    matches!(s.code(), Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded | Code::Aborted)
        || (s.code() == Code::Internal && s.message().contains("transport"))
}

fn read_token(file: Option<&Path>) -> Result<Option<String>> {
    match file {
        Some(f) => {
            let t = std::fs::read_to_string(f).with_context(|| format!("reading token file {}", f.display()))?;
            let t = t.trim();
            if t.is_empty() {
                bail!("token file {} is empty", f.display());
            }
            Ok(Some(t.to_string()))
        }
        None => Ok(std::env::var("NNUNET_TOKEN").ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())),
    }
}

fn read_pem(what: &str, p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("reading {what} {}", p.display()))
}

/// The endpoint with TLS: the CA (or the system roots for `https://`), plus the client identity when given.
fn endpoint(o: &ConnectOptions) -> Result<tonic::transport::Endpoint> {
    let ep = nnunet_proto::endpoint(&o.address, o.tls_ca.as_deref())?.timeout(Duration::from_secs(600));
    let (cert, key) = match (&o.tls_cert, &o.tls_key) {
        (None, None) => return Ok(ep),
        (Some(c), Some(k)) => (c, k),
        _ => bail!("--tls-cert and --tls-key go together (the client certificate and its private key)"),
    };
    let mut tls = match &o.tls_ca {
        Some(ca) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_pem("CA", ca)?)),
        None if o.address.starts_with("https://") => ClientTlsConfig::new().with_enabled_roots(),
        None => bail!("a client certificate needs TLS: give --tls-ca or an https:// coordinator address"),
    };
    tls = tls.identity(Identity::from_pem(read_pem("client certificate", cert)?, read_pem("client key", key)?));
    Ok(ep.tls_config(tls)?)
}

impl Conn {
    /// A lazily connected client (nothing is dialed until the first call).
    pub fn new(o: &ConnectOptions) -> Result<Conn> {
        let token = read_token(o.token_file.as_deref())?;
        let api = WorkerApiClient::with_interceptor(endpoint(o)?.connect_lazy(), TokenInterceptor::new(token.as_deref())?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Conn { api, worker_id: Arc::default(), reconnect_timeout: o.reconnect_timeout, unreachable: Arc::default() })
    }

    /// The generated client (for one attempt of a call; [`Conn::call`] retries).
    pub fn api(&self) -> Api {
        self.api.clone()
    }

    /// One attempt of `what` within its [`deadline`].
    pub async fn attempt<T>(&self, what: &str, fut: impl Future<Output = Result<tonic::Response<T>, Status>>) -> Result<T, Status> {
        let res = match deadline(what) {
            Some(d) => tokio::time::timeout(d, fut)
                .await
                .unwrap_or_else(|_| Err(Status::deadline_exceeded(format!("{what}: no answer within {}s", d.as_secs())))),
            None => fut.await,
        };
        match &res {
            Ok(_) => self.reachable(what),
            Err(s) if transient(s) => self.unreachable_now(what, s),
            Err(_) => {}
        }
        res.map(|r| r.into_inner())
    }

    fn reachable(&self, what: &str) {
        if self.unreachable.swap(false, Ordering::SeqCst) {
            tracing::info!("coordinator reachable again ({what})");
        }
    }

    fn unreachable_now(&self, what: &str, s: &Status) {
        if !self.unreachable.swap(true, Ordering::SeqCst) {
            tracing::warn!(
                "coordinator unreachable, retrying ({what}: {}); calls are retried for up to {:?}",
                s.message(),
                self.reconnect_timeout
            );
        }
    }

    /// Runs `f` (one RPC), retrying with backoff while the failure is transient and the reconnect
    /// timeout has not passed.
    pub async fn call<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, Status>
    where
        F: FnMut(Api) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let start = Instant::now();
        let mut delay = Duration::from_millis(200);
        loop {
            match self.attempt(what, f(self.api.clone())).await {
                Ok(r) => return Ok(r),
                Err(s) if transient(&s) && start.elapsed() < self.reconnect_timeout => {
                    tokio::time::sleep(jittered(delay)).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(s) => return Err(s),
            }
        }
    }

    /// The id the coordinator gave this worker.
    pub fn id(&self) -> String {
        self.worker_id.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Registers (again, after a coordinator that lost its state) and keeps the worker id.
    pub async fn register(&self, device: &str) -> Result<pb::RegisterReply> {
        let host =
            tokio::fs::read_to_string("/proc/sys/kernel/hostname").await.map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into());
        crate::nvml::select(device);
        let gpu = tokio::task::spawn_blocking(crate::nvml::sample).await.ok().flatten();
        let (device_key, free) = device_identity(&host, device).await;
        let req = pb::RegisterRequest {
            host,
            device: device.to_string(),
            device_name: gpu.as_ref().map(|g| g.name.clone()).unwrap_or_else(|| {
                if device.starts_with("cuda") {
                    "cuda".into()
                } else {
                    "cpu".into()
                }
            }),
            device_memory_bytes: gpu.as_ref().map_or(0, |g| g.memory_total_bytes),
            cpu_threads: std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
            version: env!("CARGO_PKG_VERSION").into(),
            shared_root: String::new(),
            device_key,
            device_memory_free_bytes: free,
        };
        let reply = self
            .call("register", |mut api| {
                let req = req.clone();
                async move { api.register(req).await }
            })
            .await
            .map_err(|s| match s.code() {
                Code::Unauthenticated | Code::PermissionDenied if s.message().contains("client certificate") => {
                    bad_input(anyhow!("the coordinator refused this worker: {}", s.message()))
                }
                Code::Unauthenticated | Code::PermissionDenied => {
                    bad_input(anyhow!("the coordinator refused this worker: {} (pass --token-file or set NNUNET_TOKEN)", s.message()))
                }
                _ => anyhow!("registering with the coordinator: {}", s.message()),
            })?;
        *self.worker_id.lock().unwrap_or_else(|e| e.into_inner()) = reply.worker_id.clone();
        Ok(reply)
    }
}

/// The device key and free memory this worker registers with (the coordinator packs tasks of
/// workers with the same key onto one device by memory): NVML's GPU UUID, else the `CUDA_VISIBLE_DEVICES`
/// entry or the index; the simulated device of `sim_memory` when the environment sets one; none on CPU.
async fn device_identity(host: &str, device: &str) -> (String, u64) {
    if let Some(sim) = crate::sim_memory::from_env() {
        return (sim.key(host), sim.total_mib << 20);
    }
    if !device.starts_with("cuda") {
        return (String::new(), 0);
    }
    match tokio::task::spawn_blocking(crate::nvml::identity).await.ok().flatten() {
        Some((uuid, free)) => (format!("{host}/{uuid}"), free),
        None => {
            let n: usize = device.strip_prefix("cuda:").and_then(|n| n.parse().ok()).unwrap_or(0);
            let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok().and_then(|v| v.split(',').nth(n).map(|s| s.trim().to_string()));
            (format!("{host}/cuda-{}", visible.unwrap_or_else(|| n.to_string())), 0)
        }
    }
}

/// `d` plus up to half of it at random, so that workers cut off together do not retry in lockstep.
pub fn jittered(d: Duration) -> Duration {
    use rand::Rng;
    d + d.mul_f64(rand::rng().random_range(0.0..0.5))
}
