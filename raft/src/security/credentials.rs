//! What a client presents to a cluster — a CA to trust, a client certificate, a bearer
//! token — and the channel that presents it.
//!
//! [`Credentials`] names files (so they reload when rotated, [`super::reload`]); its
//! [`Credentials::from_env`] reads `KEEL_CA`, `KEEL_CERT`, `KEEL_KEY` and
//! `KEEL_TOKEN_FILE`. [`Connector`] opens them once and makes [`KeelChannel`]s: tonic
//! channels that dial through TLS when a CA is given and add the token to every request.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Uri};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint};

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

/// How long dialling (TCP and TLS handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

impl Connector {
    /// Opens `credentials`.
    ///
    /// # Errors
    /// A file that cannot be used, a certificate without its key (or the reverse), or a
    /// client certificate without a CA.
    pub fn new(credentials: &Credentials) -> Result<Self> {
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
                Some(Arc::new(Reloading::new("token", vec![path.clone()], move || {
                    read_token(&file)
                })?))
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
            Some(tls) => endpoint.connect_with_connector_lazy(TlsDial(Arc::clone(tls))),
            None => endpoint.connect_lazy(),
        };
        KeelChannel {
            inner,
            token: self.token.clone(),
        }
    }
}

/// A TLS handshake that either side refused (a certificate of another CA, a name the
/// server's certificate does not carry, a client certificate the server does not accept):
/// retrying with the same credentials fails the same way.
#[derive(Debug, thiserror::Error)]
#[error("TLS to {addr} refused: {reason}")]
pub struct TlsRefused {
    /// The address dialled.
    pub addr: String,
    /// rustls's reason.
    pub reason: String,
}

/// Whether `error` or an error it wraps is a [`TlsRefused`], and which.
pub fn tls_refusal<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a TlsRefused> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(refused) = error.downcast_ref::<TlsRefused>() {
            return Some(refused);
        }
        next = error.source();
    }
    None
}

/// Dials TCP, then TLS with the client configuration current at the time.
#[derive(Debug, Clone)]
struct TlsDial(Arc<ClientTls>);

type DialFuture =
    Pin<Box<dyn Future<Output = Result<TokioIo<TlsStream<TcpStream>>, Box<dyn std::error::Error + Send + Sync>>> + Send>>;

impl tower::Service<Uri> for TlsDial {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = DialFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> DialFuture {
        let config = self.0.current();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| format!("{uri} names no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().ok_or_else(|| format!("{uri} names no port"))?;
            let name = ServerName::try_from(host.clone())
                .map_err(|e| format!("{host} is not a name TLS can verify: {e}"))?;
            let addr = format!("{host}:{port}");
            let dial = async {
                let tcp = TcpStream::connect((host.as_str(), port)).await?;
                tcp.set_nodelay(true)?;
                TlsConnector::from(config).connect(name, tcp).await
            };
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, dial)
                .await
                .map_err(|_| format!("no TLS connection to {addr} within {CONNECT_TIMEOUT:?}"))?
                .map_err(|error| -> Box<dyn std::error::Error + Send + Sync> {
                    match error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
                        Some(refusal) => Box::new(TlsRefused {
                            addr: addr.clone(),
                            reason: refusal.to_string(),
                        }),
                        None => Box::new(error),
                    }
                })?;
            Ok(TokioIo::new(stream))
        })
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
