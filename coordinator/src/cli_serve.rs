//! `nnunet serve`: the coordinator for a cluster (workers connect to it).
use crate::engine::{Coordinator, CoordinatorConfig, Retention};
use crate::service::{self, ServeOptions};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on. A non-loopback address requires a token (the default).
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: std::net::SocketAddr,
    /// Coordinator state (SQLite database, run directories).
    #[arg(long, env = "NNUNET_STATE_DIR", default_value = "nnunet-state")]
    pub state_dir: PathBuf,
    /// Shared-secret (admin) token file (else NNUNET_TOKEN, else generated into <state-dir>/token).
    /// Role tokens: `nnunet token create --role worker|viewer|operator`.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Disable authentication (only allowed on a loopback address).
    #[arg(long)]
    pub no_auth: bool,
    /// TLS certificate chain (PEM) to serve gRPC over https; with --tls-key.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// HTTP address of Prometheus /metrics and the web dashboard (/), e.g. 0.0.0.0:9090.
    #[arg(long, alias = "http-listen")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Seconds without heartbeat after which a task is reassigned.
    #[arg(long, default_value_t = 30)]
    pub lease_ttl_secs: u64,
    /// Threads for planning and finalizing.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Largest artifact a worker may upload, in MiB.
    #[arg(long, default_value_t = 8192)]
    pub max_upload_mib: u64,
    /// Keep only the newest N finished runs (older ones are deleted with their directories).
    #[arg(long)]
    pub retain_finished_runs: Option<usize>,
    /// Delete finished runs older than this many days.
    #[arg(long)]
    pub retain_days: Option<f64>,
    /// Where finished runs' model folders are published (DIR/DatasetXXX_Name/nnUNetTrainer__nnUNetPlans__2d);
    /// default $nnUNet_results of this coordinator. With $nnUNet_preprocessed set, preprocessed data is
    /// published there and reused by later runs on the same raw data.
    #[arg(long, value_name = "DIR")]
    pub results: Option<PathBuf>,
    /// Also accept a submitter's own nnUNet_results/nnUNet_preprocessed (`nnunet submit` sends them)
    /// under DIR (repeatable); without it only folders under this coordinator's own are accepted.
    #[arg(long, value_name = "DIR")]
    pub allow_output_under: Vec<PathBuf>,
    /// CA certificate (PEM) of worker client certificates (mTLS): every worker call must then come over
    /// a connection whose client certificate this CA signed (nnunet-worker --tls-cert/--tls-key), on top
    /// of the token; a certificate this CA did not sign is refused at the handshake. Needs --tls-cert.
    /// Users' clients (status, watch, submit) may still connect without a certificate.
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
}

pub async fn serve(a: ServeArgs) -> Result<()> {
    std::fs::create_dir_all(&a.state_dir).with_context(|| format!("creating {}", a.state_dir.display()))?;
    let state_dir = a.state_dir.canonicalize()?;
    let token = if a.no_auth {
        if !a.listen.ip().is_loopback() {
            bail!(
                "refusing to listen on {} without authentication: remove --no-auth (a token is generated) or listen on 127.0.0.1",
                a.listen
            );
        }
        None
    } else {
        let (t, src) = crate::access::resolve_token(a.token_file.as_deref(), &state_dir)?;
        eprintln!("token: {src} (clients pass --token-file or NNUNET_TOKEN)");
        Some(t)
    };
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => Some((
            std::fs::read(c).with_context(|| format!("reading {}", c.display()))?,
            std::fs::read(k).with_context(|| format!("reading {}", k.display()))?,
        )),
        _ => None,
    };
    let client_ca = match &a.tls_client_ca {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("reading the client CA {}", p.display()))?),
        None => None,
    };
    let mut cfg = CoordinatorConfig::new(state_dir.clone());
    cfg.lease_ttl = Duration::from_secs(a.lease_ttl_secs);
    cfg.heartbeat_interval = Duration::from_secs((a.lease_ttl_secs / 6).clamp(1, 5));
    cfg.threads = a.threads;
    cfg.max_upload_bytes = a.max_upload_mib << 20;
    cfg.user_dirs = crate::user_dirs::UserDirs::from_env(a.results.clone());
    cfg.user_dirs.allow_under = a.allow_output_under.clone();
    cfg.retention =
        Retention { keep_finished: a.retain_finished_runs, max_age: a.retain_days.map(|d| Duration::from_secs_f64(d * 86_400.0)) };
    let coord = Coordinator::open(cfg)?;
    let listener = tokio::net::TcpListener::bind(a.listen).await.with_context(|| format!("binding {}", a.listen))?;
    let addr = listener.local_addr()?;
    if let Some(m) = a.metrics_listen {
        let l = tokio::net::TcpListener::bind(m).await.with_context(|| format!("binding metrics {m}"))?;
        eprintln!("metrics on http://{0}/metrics, dashboard on http://{0}/ (log in with a viewer or operator token)", l.local_addr()?);
        let web = crate::web::Dashboard::for_coordinator(coord.clone(), crate::web::RoleTokens::new(token.clone(), coord.clone()));
        tokio::spawn(crate::metrics_http::serve(coord.clone(), l, Some(web)));
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mtls = if client_ca.is_some() { ", workers need a client certificate" } else { "" };
    eprintln!("nnunet coordinator listening on {scheme}://{addr} (state {}{mtls})", state_dir.display());
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("shutting down (state is kept; restart with the same --state-dir to continue)");
    };
    let mut opts = ServeOptions::new(addr, token);
    opts.tls = tls;
    opts.client_ca = client_ca;
    service::serve(coord, listener, opts, shutdown).await
}
