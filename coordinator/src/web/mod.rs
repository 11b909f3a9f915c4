//! The web dashboard, served on the coordinator's HTTP listener next to `/metrics`: runs, one run
//! (live per-fold charts, task table, event log, CV Dice), workers (device, GPU, loader wait).
//!
//! - [`model`]: the [`Backend`] trait the router needs from the coordinator, the JSON views, tokens.
//! - [`backend`]: the adapter from the coordinator's state and journal to [`Backend`].
//! - [`auth`]: login form, session cookie, bearer tokens.
//! - [`sse`]: server-sent events: a run's journal (replay from a sequence number, then live) and a
//!   snapshot feed for the runs and workers pages.
//! - [`prom`]: `/metrics` lines of workers' heartbeat readings (`crate::telemetry`) and per-epoch values.
//! - `assets/`: the page, its script and style, and uPlot (MIT, vendored from npm), embedded.
pub mod auth;
pub mod backend;
pub mod model;
pub mod prom;
pub mod sse;
#[cfg(test)]
mod tests;

pub use model::{Access, Backend, RoleTokens, StaticTokens, TokenCheck};

use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use std::convert::Infallible;
use std::sync::Arc;

pub type Body = BoxBody<Bytes, Infallible>;

/// The dashboard: one per coordinator process.
pub struct Dashboard {
    backend: Arc<dyn Backend>,
    tokens: Arc<dyn TokenCheck>,
    sessions: auth::Sessions,
    wake: tokio::sync::broadcast::Sender<model::Wake>,
    /// One journal read at a time: the reads share the store's lock anyway, and each concurrent one
    /// would hold a blocking-pool thread (and its allocator arena) per open dashboard.
    journal_reads: tokio::sync::Semaphore,
}

static INDEX: &str = include_str!("assets/index.html");
static LOGIN: &str = include_str!("assets/login.html");
static ASSETS: &[(&str, &str, &str)] = &[
    ("app.js", "text/javascript; charset=utf-8", include_str!("assets/app.js")),
    ("app.css", "text/css; charset=utf-8", include_str!("assets/app.css")),
    ("uPlot.iife.min.js", "text/javascript; charset=utf-8", include_str!("assets/uPlot.iife.min.js")),
    ("uPlot.min.css", "text/css; charset=utf-8", include_str!("assets/uPlot.min.css")),
    ("uPlot-LICENSE", "text/plain; charset=utf-8", include_str!("assets/uPlot-LICENSE")),
];

pub fn full(code: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = code;
    let h = r.headers_mut();
    h.insert(hyper::header::CONTENT_TYPE, ctype.parse().expect("static content type"));
    h.insert("x-content-type-options", "nosniff".parse().unwrap());
    h.insert("x-frame-options", "DENY".parse().unwrap());
    h.insert("referrer-policy", "no-referrer".parse().unwrap());
    h.insert("cache-control", "no-store".parse().unwrap());
    h.insert(
        "content-security-policy",
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'"
            .parse()
            .unwrap(),
    );
    r
}

fn text(code: StatusCode, msg: impl Into<String>) -> Response<Body> {
    full(code, "text/plain; charset=utf-8", format!("{}\n", msg.into()))
}

fn json<T: serde::Serialize>(v: &T) -> Response<Body> {
    match serde_json::to_vec(v) {
        Ok(b) => full(StatusCode::OK, "application/json", b),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding JSON: {e}")),
    }
}

fn redirect(to: &str, cookie: Option<String>) -> Response<Body> {
    let mut r = full(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", "");
    r.headers_mut().insert(hyper::header::LOCATION, to.parse().expect("static location"));
    if let Some(c) = cookie {
        if let Ok(v) = c.parse() {
            r.headers_mut().insert(hyper::header::SET_COOKIE, v);
        }
    }
    r
}

fn now_ms() -> i64 {
    use crate::clock::Clock;
    crate::clock::SystemClock.now_ms()
}

impl Dashboard {
    pub fn new(backend: Arc<dyn Backend>, tokens: Arc<dyn TokenCheck>) -> Arc<Self> {
        let (wake, _) = tokio::sync::broadcast::channel(1024);
        backend.feed(wake.clone());
        Arc::new(Dashboard { backend, tokens, sessions: auth::Sessions::default(), wake, journal_reads: tokio::sync::Semaphore::new(1) })
    }

    /// The dashboard of a running coordinator (call inside its tokio runtime).
    pub fn for_coordinator(c: Arc<crate::engine::Coordinator>, tokens: impl TokenCheck) -> Arc<Self> {
        Self::new(Arc::new(backend::CoordinatorBackend(c)), Arc::new(tokens))
    }

    /// Serves one request of the HTTP listener (every path but `/metrics` and `/healthz`).
    pub async fn handle(self: &Arc<Self>, req: Request<hyper::body::Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        match (&method, path.as_str()) {
            (&Method::GET, "/login") => return full(StatusCode::OK, "text/html; charset=utf-8", LOGIN),
            (&Method::POST, "/login") => return self.login(req).await,
            (&Method::POST, "/logout") => {
                if let Some(id) = auth::session_id(req.headers()) {
                    self.sessions.remove(&id);
                }
                return redirect("/login", Some(auth::clear_cookie()));
            }
            _ => {}
        }
        let Some(access) = auth::identify(req.headers(), self.tokens.as_ref(), &self.sessions, now_ms()) else {
            return if method == Method::GET && !path.starts_with("/api/") {
                redirect("/login", None)
            } else {
                text(
                    StatusCode::UNAUTHORIZED,
                    "log in first: POST /login with the coordinator token, or send Authorization: Bearer <token>",
                )
            };
        };
        if method == Method::POST {
            return self.steer(&req, &path, access);
        }
        if method != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and POST");
        }
        let from = sse::since(req.headers(), req.uri().query());
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match parts.as_slice() {
            [""] | ["runs"] | ["workers"] | ["run", _] => full(StatusCode::OK, "text/html; charset=utf-8", INDEX),
            ["assets", name] => match ASSETS.iter().find(|(n, _, _)| n == name) {
                Some((_, ct, body)) => full(StatusCode::OK, ct, *body),
                None => text(StatusCode::NOT_FOUND, "no such asset"),
            },
            ["api", "me"] => json(&serde_json::json!({ "can_steer": access.can_steer, "open": self.tokens.open() })),
            ["api", "runs"] => json(&self.backend.runs()),
            ["api", "workers"] => json(&self.backend.workers()),
            ["api", "live"] => sse::live(self.clone()),
            ["api", "runs", id] => match self.backend.run(id) {
                Some(r) => json(&r),
                None => text(StatusCode::NOT_FOUND, format!("unknown run {id}")),
            },
            ["api", "runs", id, "events"] => match self.backend.run_terminal(id) {
                Some(_) => sse::run_events(self.clone(), id.to_string(), from),
                None => text(StatusCode::NOT_FOUND, format!("unknown run {id}")),
            },
            _ => text(StatusCode::NOT_FOUND, "not found: the dashboard is at /, metrics at /metrics"),
        }
    }

    async fn login(&self, req: Request<hyper::body::Incoming>) -> Response<Body> {
        let body = match http_body_util::Limited::new(req.into_body(), 4096).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "login form too large"),
        };
        let token = auth::form_field(&body, "token").unwrap_or_default();
        match self.tokens.check(token.trim()) {
            Some(access) if !token.trim().is_empty() || self.tokens.open() => {
                let id = self.sessions.create(access, now_ms());
                redirect("/", Some(auth::set_cookie(&id, false)))
            }
            _ => {
                tracing::warn!("dashboard login refused: wrong token");
                redirect("/login?failed=1", None)
            }
        }
    }

    /// `POST /api/runs/{id}/cancel`, `POST /api/runs/{id}/folds/{k}/retry`.
    fn steer(&self, req: &Request<hyper::body::Incoming>, path: &str, access: Access) -> Response<Body> {
        if req.headers().get("x-nnunet-steer").and_then(|v| v.to_str().ok()) != Some("1") {
            return text(StatusCode::FORBIDDEN, "steering requests need the header x-nnunet-steer: 1");
        }
        if !access.can_steer {
            return text(StatusCode::FORBIDDEN, "this token may watch but not steer runs (cancel, retry)");
        }
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let res = match parts.as_slice() {
            ["api", "runs", id, "cancel"] => self.backend.cancel(id).map(|_| format!("run {id} cancelled")),
            ["api", "runs", id, "folds", k, "retry"] => match k.parse::<nnunet_common::Fold>() {
                Ok(fold) => self.backend.retry(id, fold).map(|_| format!("fold {fold} of run {id} re-queued")),
                Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
            },
            _ => return text(StatusCode::NOT_FOUND, "not found"),
        };
        match res {
            Ok(msg) => {
                tracing::info!("dashboard: {msg}");
                text(StatusCode::OK, msg)
            }
            Err(model::SteerError::NotFound(m)) => text(StatusCode::NOT_FOUND, m),
            Err(model::SteerError::Refused(m)) => text(StatusCode::CONFLICT, m),
            Err(model::SteerError::Internal(m)) => text(StatusCode::INTERNAL_SERVER_ERROR, m),
        }
    }
}
