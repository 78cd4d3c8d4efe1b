//! Who is calling, and may they: a tower layer in front of every service of a node.
//!
//! A request is authenticated by its bearer token (`authorization: Bearer …`, looked up in
//! the node's tokens file, [`super::tokens`]) or, without one, by the client certificate
//! of its TLS connection (already verified against the node's CA in the handshake; its
//! role is the subject's organizational unit, its name the common name, as `keel certs`
//! issues them). The role must permit the method ([`super::roles`]). Refusals are gRPC
//! statuses — `UNAUTHENTICATED` without usable credentials, `PERMISSION_DENIED` for a role
//! that may not call the method — whose message says which credential was refused and
//! why; the service is never called.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::Status;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::reload::Reloading;
use super::roles::{MethodRoles, Role};
use super::tokens::Tokens;
use crate::network::incoming::PeerInfo;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's label or the certificate's common name.
    pub name: String,
    /// What it may do.
    pub role: Role,
}

/// A node's authentication: its tokens (if it accepts any), the roles its methods need,
/// and which methods it checks.
#[derive(Debug)]
pub struct Authenticator {
    tokens: Option<Reloading<Tokens>>,
    methods: MethodRoles,
    nodes_only: bool,
}

impl Authenticator {
    /// Authentication by `tokens` (if any) and client certificates, for `methods`.
    pub fn new(tokens: Option<Reloading<Tokens>>, methods: MethodRoles) -> Self {
        Self {
            tokens,
            methods,
            nodes_only: false,
        }
    }

    /// A TLS node without `[auth]`: only the methods that need the `node` role (the raft
    /// service) or the `remote` role (calls between clusters) are checked — a peer must
    /// present a certificate of the cluster's CA, so TLS is mutual between nodes and with
    /// another cluster; every other call passes.
    pub fn nodes_only(methods: MethodRoles) -> Self {
        Self {
            tokens: None,
            methods,
            nodes_only: true,
        }
    }

    /// Whether calls of `path` are checked.
    pub fn checks(&self, path: &str) -> bool {
        !self.nodes_only || matches!(self.methods.needed(path), Role::Node | Role::Remote)
    }

    /// The caller of a request with `headers` on a connection described by `peer`, if it
    /// may call `path`.
    ///
    /// # Errors
    /// `UNAUTHENTICATED` or `PERMISSION_DENIED`, saying why.
    pub fn authorize(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        peer: Option<&PeerInfo>,
    ) -> Result<Caller, Status> {
        let caller = self.authenticate(headers, peer)?;
        let needed = self.methods.needed(path);
        if self.methods.allows(path, caller.role) {
            Ok(caller)
        } else {
            Err(Status::permission_denied(format!(
                "{} (role {}) may not call {path}: it needs the {needed} role",
                caller.name, caller.role
            )))
        }
    }

    fn authenticate(
        &self,
        headers: &http::HeaderMap,
        peer: Option<&PeerInfo>,
    ) -> Result<Caller, Status> {
        if let Some(value) = headers.get(http::header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or_else(|| {
                    Status::unauthenticated("the authorization header is not `Bearer <token>`")
                })?;
            let Some(tokens) = &self.tokens else {
                return Err(Status::unauthenticated(
                    "the bearer token was refused: this node accepts no tokens (its [auth] names no tokens file)",
                ));
            };
            return tokens
                .current()
                .identify(token)
                .map(|t| Caller {
                    name: t.name,
                    role: t.role,
                })
                .ok_or_else(|| {
                    Status::unauthenticated(
                        "the bearer token was refused: it is not in this node's tokens file (mistyped, or rotated out)",
                    )
                });
        }
        if let Some(leaf) = peer.and_then(|p| p.certs.as_ref()).and_then(|c| c.first()) {
            return certificate_caller(leaf).map_err(|reason| {
                Status::unauthenticated(format!("the client certificate was refused: {reason}"))
            });
        }
        Err(Status::unauthenticated(
            "no credentials: this node needs a bearer token (authorization: Bearer …) or a client certificate",
        ))
    }
}

/// The caller a (verified) certificate names: common name and organizational unit (role).
///
/// # Errors
/// The certificate cannot be parsed, or names no role.
pub fn certificate_caller(der: &[u8]) -> Result<Caller, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("not X.509: {e}"))?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .find_map(|cn| cn.as_str().ok())
        .unwrap_or("(no common name)")
        .to_owned();
    let unit = subject
        .iter_organizational_unit()
        .find_map(|ou| ou.as_str().ok())
        .ok_or_else(|| format!("{name} names no role (its subject has no OU)"))?;
    let role = Role::from_name(unit)
        .ok_or_else(|| format!("{name} names the unknown role {unit:?} (its OU)"))?;
    Ok(Caller { name, role })
}

/// The layer: with `None`, authentication is off and requests pass untouched.
#[derive(Debug, Clone)]
pub struct AuthLayer(pub Option<Arc<Authenticator>>);

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            auth: self.0.clone(),
        }
    }
}

/// A service behind [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Option<Arc<Authenticator>>,
}

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if let Some(auth) = self
            .auth
            .as_ref()
            .filter(|a| a.checks(request.uri().path()))
        {
            let peer = request.extensions().get::<PeerInfo>();
            match auth.authorize(request.uri().path(), request.headers(), peer) {
                Ok(caller) => {
                    request.extensions_mut().insert(caller);
                }
                Err(status) => {
                    let status = crate::wire_error::denied(status);
                    return Box::pin(std::future::ready(Ok(status.into_http())));
                }
            }
        }
        Box::pin(self.inner.call(request))
    }
}
