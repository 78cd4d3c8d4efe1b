//! TLS and authentication for every gRPC port of a node, and what clients present.
//!
//! ```text
//!  TCP accept ─► TLS handshake (rustls; the node's certificate; any client certificate
//!  │              verified against the node's CA)        [network::incoming]
//!  ▼
//!  tonic ─► AuthLayer: bearer token (tokens file) or client certificate ─► role
//!  │        ─► does the role permit the method? else UNAUTHENTICATED / PERMISSION_DENIED
//!  ▼
//!  raft service (node role only) · log client service · the extension's services
//! ```
//!
//! A node's settings ([`NodeSecurity`], TOML `[tls]`, `[auth]`, `insecure`):
//! - `[tls]` (`cert`, `key`, `ca`): every connection to the node is TLS, and the node dials
//!   its peers over TLS presenting the same certificate; the raft service accepts only
//!   callers with a node certificate of the CA (mutual TLS between nodes), with or
//!   without `[auth]`.
//! - `[auth]` (`tokens`: a tokens file, optional): every call needs a caller whose role
//!   permits the method ([`roles`]); the raft service accepts node certificates only.
//!   Needs `[tls]`: credentials never travel in plaintext.
//! - Without `[tls]`, a listener on an address that is not loopback is refused at start
//!   unless the configuration says `insecure = true`. The Prometheus endpoint is always
//!   plaintext, so the same rule holds for it even with `[tls]`.
//!
//! Certificate, key, CA and token files are reread when they change ([`reload`]), so they
//! rotate without a restart; several tokens can be valid at once.

pub mod auth;
pub mod certs;
pub mod credentials;
pub mod dial;
mod error;
pub mod pem;
pub mod reload;
pub mod roles;
pub mod tls;
pub mod tokens;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

pub use error::{Result, SecurityError};

use auth::{AuthLayer, Authenticator};
use credentials::Connector;
use reload::Reloading;
use roles::MethodRoles;
use tls::{ServerTls, TlsFiles};
use tokens::Tokens;

/// A node's authentication settings (TOML `[auth]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// The tokens file ([`tokens`]); without one, only client certificates authenticate.
    pub tokens: Option<PathBuf>,
}

impl AuthSettings {
    /// These settings, a relative tokens path taken from `base`.
    #[must_use]
    pub fn relative_to(&self, base: &Path) -> Self {
        Self {
            tokens: self.tokens.as_ref().map(|t| base.join(t)),
        }
    }
}

/// A node's security settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeSecurity {
    /// The node's TLS files (`None`: plaintext).
    pub tls: Option<TlsFiles>,
    /// Authentication (`None`: every caller may call every method).
    pub auth: Option<AuthSettings>,
    /// Whether plaintext listeners on non-loopback addresses are allowed.
    pub insecure: bool,
}

/// A node's security, opened: what the server, the auth layer and the peer network use.
#[derive(Debug, Clone, Default)]
pub struct OpenedSecurity {
    /// The server's TLS (`None`: plaintext).
    pub server_tls: Option<Arc<ServerTls>>,
    /// How the node dials its peers.
    pub peers: Connector,
    /// The authentication layer (pass-through when auth is off).
    pub auth: Option<Arc<Authenticator>>,
}

impl OpenedSecurity {
    /// The tower layer to put in front of the node's services.
    pub fn layer(&self) -> AuthLayer {
        AuthLayer(self.auth.clone())
    }
}

impl NodeSecurity {
    /// Checks these settings for a node serving gRPC on `grpc` and Prometheus on `metrics`.
    ///
    /// # Errors
    /// `[auth]` without `[tls]`; a plaintext listener on an address that is not loopback
    /// without `insecure = true`.
    pub fn check(&self, grpc: SocketAddr, metrics: Option<SocketAddr>) -> Result<()> {
        if self.auth.is_some() && self.tls.is_none() {
            return Err(SecurityError::Config(
                "[auth] needs [tls]: tokens and certificates must not travel in plaintext".into(),
            ));
        }
        if self.insecure {
            return Ok(());
        }
        let plaintext = self
            .tls
            .is_none()
            .then_some(("gRPC", grpc))
            .into_iter()
            .chain(metrics.map(|addr| ("Prometheus", addr)));
        for (what, addr) in plaintext {
            if !addr.ip().is_loopback() {
                return Err(SecurityError::Config(format!(
                    "the {what} listener {addr} is not a loopback address and would serve plaintext: {}",
                    if what == "gRPC" {
                        "give the node a [tls] certificate, or say `insecure = true`"
                    } else {
                        "the metrics endpoint has no TLS; bind it to loopback, or say `insecure = true`"
                    }
                )));
            }
        }
        Ok(())
    }

    /// Opens the files these settings name; the methods' roles are `methods`.
    ///
    /// # Errors
    /// A file that cannot be used.
    pub fn open(&self, methods: MethodRoles) -> Result<OpenedSecurity> {
        let (server_tls, peers) = match &self.tls {
            Some(files) => (
                Some(Arc::new(tls::server_tls(files)?)),
                Connector::for_peers(Some(Arc::new(tls::peer_tls(files)?))),
            ),
            None => (None, Connector::default()),
        };
        let auth = match (&self.auth, &self.tls) {
            (None, Some(_)) => Some(Arc::new(Authenticator::nodes_only(methods))),
            (None, None) => None,
            (Some(settings), _) => {
                let tokens = match &settings.tokens {
                    Some(path) => {
                        let file = path.clone();
                        Some(Reloading::new("tokens", vec![path.clone()], move || {
                            Tokens::load(&file, |var| std::env::var(var).ok())
                        })?)
                    }
                    None => None,
                };
                Some(Arc::new(Authenticator::new(tokens, methods)))
            }
        };
        Ok(OpenedSecurity {
            server_tls,
            peers,
            auth,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("addr")
    }

    fn files() -> TlsFiles {
        TlsFiles {
            cert: "n.pem".into(),
            key: "n.key".into(),
            ca: "ca.pem".into(),
        }
    }

    #[test]
    fn plaintext_beyond_loopback_needs_insecure_in_so_many_words() {
        let plain = NodeSecurity::default();
        plain
            .check(addr("127.0.0.1:7101"), Some(addr("[::1]:9101")))
            .expect("loopback");
        let error = plain
            .check(addr("0.0.0.0:7101"), None)
            .expect_err("any address");
        assert!(error.to_string().contains("insecure = true"), "{error}");
        let error = plain
            .check(addr("127.0.0.1:7101"), Some(addr("10.0.0.1:9101")))
            .expect_err("metrics");
        assert!(
            error.to_string().contains("metrics endpoint has no TLS"),
            "{error}"
        );
        let insecure = NodeSecurity {
            insecure: true,
            ..NodeSecurity::default()
        };
        insecure
            .check(addr("10.0.0.1:7101"), Some(addr("10.0.0.1:9101")))
            .expect("insecure");
        let tls = NodeSecurity {
            tls: Some(files()),
            ..NodeSecurity::default()
        };
        tls.check(addr("10.0.0.1:7101"), None).expect("TLS");
        assert!(
            tls.check(addr("10.0.0.1:7101"), Some(addr("10.0.0.1:9101")))
                .is_err()
        );
    }

    #[test]
    fn auth_needs_tls() {
        let auth = NodeSecurity {
            auth: Some(AuthSettings::default()),
            insecure: true,
            ..NodeSecurity::default()
        };
        let error = auth
            .check(addr("127.0.0.1:7101"), None)
            .expect_err("auth without TLS");
        assert!(error.to_string().contains("[auth] needs [tls]"), "{error}");
    }
}
