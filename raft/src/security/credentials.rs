//! What a client presents to a cluster — a CA to trust, a client certificate, a bearer
//! token — and the channel that presents it.
//!
//! [`Credentials`] names files (so they reload when rotated, [`super::reload`]); its
//! [`Credentials::from_env`] reads `KEEL_CA`, `KEEL_CERT`, `KEEL_KEY` and
//! `KEEL_TOKEN_FILE`. [`Connector`] opens them once and makes [`KeelChannel`]s: tonic
//! channels that dial through TLS when a CA is given and add the token to every request.

use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::HeaderValue;
use tonic::transport::{Channel, Endpoint};

use super::dial::TlsDial;
use super::error::{Result, SecurityError};
use super::reload::Reloading;
use super::tls::{self, ClientTls};

/// The environment variables [`Credentials::from_env`] reads.
pub const ENV_CA: &str = "KEEL_CA";
/// The client certificate's file.
pub const ENV_CERT: &str = "KEEL_CERT";
/// The client key's file.
pub const ENV_KEY: &str = "KEEL_KEY";
/// The bearer token's file.
pub const ENV_TOKEN_FILE: &str = "KEEL_TOKEN_FILE";

/// What a client presents; all optional (none: plaintext, anonymous).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// The CA to trust (PEM); given, every connection is TLS.
    pub ca: Option<PathBuf>,
    /// A client certificate (PEM), with `key`.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key: Option<PathBuf>,
    /// A file holding the bearer token (surrounding whitespace ignored).
    pub token_file: Option<PathBuf>,
}

impl Credentials {
    /// No credentials: plaintext and anonymous.
    pub fn none() -> Self {
        Self::default()
    }

    /// The credentials the environment names (`KEEL_CA`, `KEEL_CERT`, `KEEL_KEY`,
    /// `KEEL_TOKEN_FILE`).
    pub fn from_env() -> Self {
        let path = |var| std::env::var_os(var).map(PathBuf::from);
        Self {
            ca: path(ENV_CA),
            cert: path(ENV_CERT),
            key: path(ENV_KEY),
            token_file: path(ENV_TOKEN_FILE),
        }
    }

    /// Whether any credential is given.
    pub fn is_none(&self) -> bool {
        *self == Self::default()
    }
}

/// A bearer token's header value.
#[derive(Debug)]
struct Bearer(HeaderValue);

fn read_token(path: &PathBuf) -> Result<Bearer> {
    const WHAT: &str = "token file";
    let text = std::fs::read_to_string(path).map_err(|source| SecurityError::Read {
        what: WHAT,
        path: path.clone(),
        source,
    })?;
    let invalid = |reason: &str| SecurityError::Invalid {
        what: WHAT,
        path: path.clone(),
        reason: reason.to_owned(),
    };
    let token = text.trim();
    if token.is_empty() {
        return Err(invalid("is empty"));
    }
    let mut value = HeaderValue::try_from(format!("Bearer {token}"))
        .map_err(|_| invalid("holds characters a header cannot carry"))?;
    value.set_sensitive(true);
    Ok(Bearer(value))
}

/// Opened credentials: makes channels that present them.
#[derive(Debug, Clone, Default)]
pub struct Connector {
    tls: Option<Arc<ClientTls>>,
    token: Option<Arc<Reloading<Bearer>>>,
}

impl Connector {
    /// Opens `credentials`.
    ///
    /// # Errors
    /// A file that cannot be used, a certificate without its key (or the reverse), or a
    /// client certificate or token without a CA (it would travel in plaintext).
    pub fn new(credentials: &Credentials) -> Result<Self> {
        if credentials.token_file.is_some() && credentials.ca.is_none() {
            return Err(SecurityError::Config(
                "a bearer token is sent over TLS only (it would travel in plaintext): give the CA too"
                    .into(),
            ));
        }
        let identity = match (&credentials.cert, &credentials.key) {
            (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
            (None, None) => None,
            _ => {
                return Err(SecurityError::Config(
                    "a client certificate needs its key, and a key its certificate".into(),
                ));
            }
        };
        let tls = match (&credentials.ca, identity) {
            (Some(ca), identity) => Some(Arc::new(tls::client_tls(ca, identity)?)),
            (None, Some(_)) => {
                return Err(SecurityError::Config(
                    "a client certificate is presented over TLS only: give the CA too".into(),
                ));
            }
            (None, None) => None,
        };
        let token = match &credentials.token_file {
            Some(path) => {
                let file = path.clone();
                Some(Arc::new(Reloading::new(
                    "token",
                    vec![path.clone()],
                    move || read_token(&file),
                )?))
            }
            None => None,
        };
        Ok(Self { tls, token })
    }

    /// A node's connector to its peers: its own certificate over TLS, no token.
    pub fn for_peers(tls: Option<Arc<ClientTls>>) -> Self {
        Self { tls, token: None }
    }

    /// A lazily connected channel to `endpoint`.
    pub fn channel(&self, endpoint: &Endpoint) -> KeelChannel {
        let inner = match &self.tls {
            Some(tls) => endpoint.connect_with_connector_lazy(TlsDial::new(Arc::clone(tls))),
            None => endpoint.connect_lazy(),
        };
        KeelChannel {
            inner,
            token: self.token.clone(),
        }
    }
}

/// A tonic channel that adds the client's bearer token (if any) to every request.
#[derive(Debug, Clone)]
pub struct KeelChannel {
    inner: Channel,
    token: Option<Arc<Reloading<Bearer>>>,
}

impl tower::Service<http::Request<tonic::body::Body>> for KeelChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = <Channel as tower::Service<http::Request<tonic::body::Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        if let Some(token) = &self.token {
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, token.current().0.clone());
        }
        tower::Service::call(&mut self.inner, request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(credentials: &Credentials) -> String {
        Connector::new(credentials)
            .expect_err("credentials that cannot work")
            .to_string()
    }

    /// Nothing is opened (the files named need not exist): a token or a certificate
    /// without a CA would travel in plaintext, and half a certificate is no identity.
    #[test]
    fn credentials_that_would_travel_in_plaintext_or_are_half_given_are_refused() {
        let path = |name: &str| Some(PathBuf::from(name));
        let token = Credentials {
            token_file: path("t.token"),
            ..Credentials::none()
        };
        assert!(refusal(&token).contains("over TLS only"));
        let certificate = Credentials {
            cert: path("c.pem"),
            key: path("c.key"),
            ..Credentials::none()
        };
        assert!(refusal(&certificate).contains("over TLS only"));
        let half = Credentials {
            ca: path("ca.pem"),
            cert: path("c.pem"),
            ..Credentials::none()
        };
        assert!(refusal(&half).contains("needs its key"));
        assert!(Connector::new(&Credentials::none()).is_ok());
    }
}
