//! Dialling a node over TLS, and telling a refusal from a network failure.
//!
//! A refusal — a server certificate of another CA or without the name dialled, a client
//! certificate the server does not accept — fails the same way on every retry, so the
//! client reports it at once ([`crate::wire_error::WriteErrorKind::Denied`]) with rustls's
//! reason. In TLS 1.3 a server refuses a client certificate only after the client's side of
//! the handshake is done, with an alert on the first read; so a client that presents a
//! certificate reads the server's first bytes (the HTTP/2 server preface, sent at once)
//! before handing the connection over, and replays them ([`Primed`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::tls::ClientTls;

/// How long dialling (TCP and TLS handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a client with a certificate waits for the server's first bytes (well inside
/// the endpoint's connect timeout, which covers the whole dial).
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_millis(200);

/// A TLS handshake that either side refused: retrying with the same credentials fails the
/// same way.
#[derive(Debug, thiserror::Error)]
#[error("TLS to {addr} refused: {reason}")]
pub struct TlsRefused {
    /// The address dialled.
    pub addr: String,
    /// rustls's reason.
    pub reason: String,
}

/// Why TLS was refused, if `error` or an error it wraps says so: a [`TlsRefused`] of the
/// dial, or a TLS error on a connection.
pub fn tls_refusal(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(refused) = error.downcast_ref::<TlsRefused>() {
            return Some(refused.to_string());
        }
        if let Some(tls) = rustls_error(error) {
            return Some(format!("TLS refused: {tls}"));
        }
        next = error.source();
    }
    None
}

/// The rustls error an I/O error carries, if any.
fn rustls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    error
        .downcast_ref::<io::Error>()
        .and_then(|io| io.get_ref())
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// `error` as a [`TlsRefused`] when rustls refused, else as it is.
fn classify(addr: &str, error: io::Error) -> Box<dyn std::error::Error + Send + Sync> {
    match rustls_error(&error) {
        Some(refusal) => Box::new(TlsRefused {
            addr: addr.to_owned(),
            reason: refusal.to_string(),
        }),
        None => Box::new(error),
    }
}

/// Dials TCP, then TLS with the client configuration current at the time.
#[derive(Debug, Clone)]
pub(crate) struct TlsDial(Arc<ClientTls>);

impl TlsDial {
    pub(crate) fn new(tls: Arc<ClientTls>) -> Self {
        Self(tls)
    }
}

type DialResult = Result<TokioIo<Primed>, Box<dyn std::error::Error + Send + Sync>>;

impl tower::Service<Uri> for TlsDial {
    type Response = TokioIo<Primed>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = DialResult> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.0.current();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| format!("{uri} names no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri
                .port_u16()
                .ok_or_else(|| format!("{uri} names no port"))?;
            let addr = format!("{host}:{port}");
            let name = ServerName::try_from(host.clone())
                .map_err(|e| format!("{host} is not a name TLS can verify: {e}"))?;
            let presents_certificate = config.client_auth_cert_resolver.has_certs();
            let dial = async {
                let tcp = TcpStream::connect((host.as_str(), port)).await?;
                tcp.set_nodelay(true)?;
                TlsConnector::from(config).connect(name, tcp).await
            };
            let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, dial)
                .await
                .map_err(|_| format!("no TLS connection to {addr} within {CONNECT_TIMEOUT:?}"))?
                .map_err(|error| classify(&addr, error))?;
            let mut first = Vec::new();
            if presents_certificate {
                let mut buf = vec![0; 4096];
                match tokio::time::timeout(FIRST_BYTES_TIMEOUT, stream.read(&mut buf)).await {
                    Ok(Ok(0)) => {
                        return Err(format!(
                            "{addr} closed the connection right after the TLS handshake"
                        )
                        .into());
                    }
                    Ok(Ok(n)) => {
                        buf.truncate(n);
                        first = buf;
                    }
                    Ok(Err(error)) => return Err(classify(&addr, error)),
                    // A server that says nothing yet: HTTP/2 will find out.
                    Err(_) => {}
                }
            }
            Ok(TokioIo::new(Primed {
                first,
                served: 0,
                stream,
            }))
        })
    }
}

/// A client TLS stream whose first bytes were already read: they are read again first.
#[derive(Debug)]
pub struct Primed {
    first: Vec<u8>,
    served: usize,
    stream: TlsStream<TcpStream>,
}

impl AsyncRead for Primed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let rest = &this.first[this.served..];
        if rest.is_empty() {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        this.served += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Primed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
