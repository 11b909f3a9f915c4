//! What both ends of the wire agree on: artifact chunk size, message limits, HTTP/2 windows, the
//! shared-filesystem run marker, and the bearer-token interceptor of every client.
use tonic::metadata::{Ascii, MetadataValue};

/// Artifact streams carry chunks of this many bytes.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Largest encoded gRPC message either side accepts or sends.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;
/// HTTP/2 stream window (the 64 KiB default throttles 1 MiB chunks).
pub const STREAM_WINDOW_BYTES: u32 = 8 << 20;
/// HTTP/2 connection window.
pub const CONNECTION_WINDOW_BYTES: u32 = 16 << 20;
/// File in a run directory whose content is the run id: a worker that can read it shares the
/// coordinator's filesystem and reads inputs in place.
/// HTTP/2 keep-alive ping interval of clients.
pub const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a keep-alive ping may go unanswered before the connection counts as dead (a silent
/// partition is noticed after interval + timeout, not after the 20 s + 20 s defaults).
pub const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Deadline of one unary worker call (heartbeat, metrics, logs, lease, complete, fail): a call cut
/// off by a silent partition fails after this and is retried with backoff.
pub const UNARY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(12);
pub const RUN_MARKER: &str = ".nnunet-run-id";
/// Exit code of a GPU worker that ran out of device memory: its task went back to the coordinator
/// and it exits to hand the memory its allocator cached back to the device; a supervisor (`nnunet
/// run`) restarts it without counting a crash (75 is `EX_TEMPFAIL`).
pub const EXIT_OUT_OF_DEVICE_MEMORY: i32 = 75;
/// The metadata key of the bearer token.
pub const AUTHORIZATION: &str = "authorization";

/// Adds `authorization: Bearer <token>` to every request when a token is set.
#[derive(Clone, Default)]
pub struct TokenInterceptor(Option<MetadataValue<Ascii>>);

impl TokenInterceptor {
    /// An interceptor for `token` (none: requests go out without a token).
    pub fn new(token: Option<&str>) -> anyhow::Result<Self> {
        let v = match token {
            Some(t) => Some(
                format!("Bearer {}", t.trim())
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| anyhow::anyhow!("the token holds characters that cannot go in an HTTP header"))?,
            ),
            None => None,
        };
        Ok(TokenInterceptor(v))
    }
}

impl tonic::service::Interceptor for TokenInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert(AUTHORIZATION, v.clone());
        }
        Ok(req)
    }
}
