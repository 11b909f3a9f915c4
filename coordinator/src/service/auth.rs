//! Bearer-token authentication and roles. The interceptor of each service resolves the caller's
//! [`Role`] (legacy token: admin; role tokens: by their sha256 in the database) and refuses a role
//! that may not call the service at all; finer checks (operator-only calls) read the role from the
//! request's extensions.
use crate::access::{same_secret, token_hash};
use crate::domain::Role;
use crate::engine::Coordinator;
use std::sync::Arc;
use tonic::{Request, Status};

/// Which service an interceptor guards.
#[derive(Clone, Copy, Debug)]
pub enum Guard {
    /// The worker API: worker or admin tokens.
    Worker,
    /// The monitor API: viewer, operator or admin tokens (operator-only calls check again).
    Monitor,
    /// Reflection: any valid token.
    Any,
}

#[derive(Clone)]
pub struct Auth {
    /// `None`: authentication is off (`--no-auth`, loopback only).
    legacy: Option<Arc<String>>,
    coord: Arc<Coordinator>,
    guard: Guard,
    /// Calls must come over a TLS connection with a client certificate (verified against the
    /// `--tls-client-ca` during the handshake).
    client_certs: bool,
}

impl Auth {
    pub fn new(legacy: Option<Arc<String>>, coord: Arc<Coordinator>, guard: Guard) -> Self {
        Auth { legacy, coord, guard, client_certs: false }
    }

    /// Requires a verified client certificate on every call (mTLS for workers).
    pub fn client_certs(mut self, required: bool) -> Self {
        self.client_certs = required;
        self
    }

    fn role_of(&self, token: &str) -> Option<Role> {
        if let Some(l) = &self.legacy {
            if same_secret(token, l) {
                return Some(Role::Admin);
            }
        }
        self.coord.token_role(&token_hash(token))
    }
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if self.client_certs && req.peer_certs().is_none_or(|c| c.is_empty()) {
            tracing::info!(guard = ?self.guard, "refused a call without a client certificate");
            return Err(Status::unauthenticated(
                "this coordinator requires a client certificate from workers (mTLS): pass nnunet-worker --tls-cert FILE \
                 --tls-key FILE, with a certificate signed by the CA given to nnunet serve --tls-client-ca",
            ));
        }
        if self.legacy.is_none() {
            req.extensions_mut().insert(Role::Admin);
            return Ok(req);
        }
        let got = req
            .metadata()
            .get(nnunet_proto::wire::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("")
            .to_string();
        if got.is_empty() {
            return Err(Status::unauthenticated(
                "missing token: pass --token-file FILE or set NNUNET_TOKEN (the coordinator printed where its token is stored at start)",
            ));
        }
        let Some(role) = self.role_of(&got) else {
            tracing::info!("refused a call with an unknown or revoked token");
            return Err(Status::unauthenticated("wrong or revoked token"));
        };
        let allowed = match self.guard {
            Guard::Worker => role.can_work(),
            Guard::Monitor => role.can_view(),
            Guard::Any => true,
        };
        if !allowed {
            tracing::info!(role = role.name(), guard = ?self.guard, "refused a call outside the token's role");
            return Err(Status::permission_denied(format!("a {} token may not call this service", role.name())));
        }
        req.extensions_mut().insert(role);
        Ok(req)
    }
}

/// Refuses a call that changes runs unless the caller is an operator (or admin).
pub fn require_operator<T>(req: &Request<T>) -> Result<(), Status> {
    match req.extensions().get::<Role>() {
        Some(r) if r.can_operate() => Ok(()),
        Some(r) => Err(Status::permission_denied(format!(
            "a {} token may not submit, cancel, retry or delete runs (use an operator token)",
            r.name()
        ))),
        None => Err(Status::permission_denied("no role")),
    }
}
