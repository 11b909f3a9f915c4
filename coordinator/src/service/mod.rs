//! The gRPC edge: `WorkerApi` (workers dial out to it), `Monitor` (users watch and steer runs),
//! health checking, reflection (authenticated), token authentication with roles and optional TLS.
//! This module tree (and the CLI client) is the only code of the coordinator that names wire types.
pub mod auth;
pub mod convert;
mod monitor_api;
mod worker_api;

pub use monitor_api::MonitorService;
pub use worker_api::WorkerService;

use crate::engine::Coordinator;
use anyhow::{Context, Result};
use nnunet_proto::v1 as pb;
use nnunet_proto::v1::monitor_server::MonitorServer;
use nnunet_proto::v1::worker_api_server::WorkerApiServer;
use nnunet_proto::wire;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;

pub struct ServeOptions {
    pub listen: SocketAddr,
    /// The legacy (admin) token; `None` only with `--no-auth` on a loopback address.
    pub token: Option<String>,
    /// Server certificate and key (PEM).
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    /// CA (PEM) of worker client certificates (mTLS, with `tls`): a presented certificate must chain
    /// to it (else the handshake fails), and worker calls without one are refused ([`auth::Auth`]).
    pub client_ca: Option<Vec<u8>>,
    /// Disable Nagle on accepted sockets (default): small unary replies otherwise wait for the
    /// peer's delayed ACK (~40 ms).
    pub tcp_nodelay: bool,
}

impl ServeOptions {
    pub fn new(listen: SocketAddr, token: Option<String>) -> Self {
        ServeOptions { listen, token, tls: None, client_ca: None, tcp_nodelay: true }
    }
}

/// Serves both services plus health and reflection on `listener` until `shutdown` resolves.
pub async fn serve(
    coord: Arc<Coordinator>,
    listener: tokio::net::TcpListener,
    opts: ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    use auth::{Auth, Guard};
    let legacy = opts.token.map(Arc::new);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<WorkerApiServer<WorkerService>>().await;
    health_reporter.set_serving::<MonitorServer<MonitorService>>().await;
    health_reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let worker = WorkerApiServer::new(WorkerService(coord.clone()))
        .max_decoding_message_size(wire::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(wire::MAX_MESSAGE_BYTES);
    let monitor = MonitorServer::new(MonitorService(coord.clone()))
        .max_decoding_message_size(wire::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(wire::MAX_MESSAGE_BYTES);
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .initial_stream_window_size(Some(wire::STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(wire::CONNECTION_WINDOW_BYTES));
    let client_certs = opts.client_ca.is_some();
    match (opts.tls, opts.client_ca) {
        (Some((cert, key)), ca) => {
            let mut tls = tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(cert, key));
            if let Some(ca) = ca {
                // Optional at the handshake, so users' clients connect with a token alone; the worker
                // service's interceptor refuses calls that came without a verified certificate.
                tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(ca)).client_auth_optional(true);
            }
            builder = builder.tls_config(tls).context("configuring TLS")?;
        }
        (None, Some(_)) => anyhow::bail!("client certificates (mTLS) need TLS: give the server certificate and key too"),
        (None, None) => {}
    }
    coord.spawn_housekeeping();
    let nodelay = opts.tcp_nodelay;
    let incoming = tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(listener), move |s| {
        if let Ok(s) = &s {
            if let Err(e) = s.set_nodelay(nodelay) {
                tracing::debug!("TCP_NODELAY: {e}");
            }
        }
        s
    });
    builder
        .add_service(health_service)
        .add_service(InterceptedService::new(reflection, Auth::new(legacy.clone(), coord.clone(), Guard::Any)))
        .add_service(InterceptedService::new(worker, Auth::new(legacy.clone(), coord.clone(), Guard::Worker).client_certs(client_certs)))
        .add_service(InterceptedService::new(monitor, Auth::new(legacy, coord.clone(), Guard::Monitor)))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("gRPC server")?;
    Ok(())
}
