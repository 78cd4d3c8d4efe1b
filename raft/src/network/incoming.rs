//! A node's accepted connections: plain TCP, or TLS when the node has a certificate, each
//! ending when the node stops (`network::stoppable`).
//!
//! TLS handshakes run on tasks of their own, so a slow or silent client never holds up the
//! next connection; a refused handshake (a certificate of another CA, a client speaking
//! plaintext) is logged with the peer's address and the reason, and never reaches the
//! services. Each served connection carries a [`PeerInfo`] that tonic puts in every
//! request's extensions, where [`crate::security::auth`] finds the client certificate.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpIncoming};

use super::stoppable::{StoppableIo, stopped};
use crate::security::tls::ServerTls;

/// How long a client has to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them.
const ACCEPTED_QUEUE: usize = 64;

/// What a request knows of the connection it came on.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The peer's address.
    pub remote: Option<SocketAddr>,
    /// The certificate chain the peer presented (verified against the node's CA), leaf
    /// first; `None` on a plaintext connection or without a client certificate.
    pub certs: Option<Arc<Vec<CertificateDer<'static>>>>,
}

/// An accepted connection.
pub(crate) enum ServerConn {
    /// Plain TCP.
    Plain(StoppableIo),
    /// TLS over TCP.
    Tls(Box<TlsStream<StoppableIo>>),
}

/// Every accepted connection of `listener`, through `tls` when given, until `stop`.
pub(crate) fn accept(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    stop: watch::Receiver<bool>,
) -> BoxStream<'static, io::Result<ServerConn>> {
    let node = listener.local_addr().ok();
    let tcp = TcpIncoming::from(listener).with_nodelay(Some(true));
    let Some(tls) = tls else {
        return tcp
            .map(move |accepted| {
                accepted.map(|io| ServerConn::Plain(StoppableIo::new(io, stop.clone())))
            })
            .boxed();
    };
    let (accepted, queue) = mpsc::channel(ACCEPTED_QUEUE);
    tokio::spawn(async move {
        let mut tcp = tcp;
        let mut node_stopped = stopped(stop.clone());
        loop {
            // Ends (dropping the listener) when the node stops or the server drops the queue.
            let next = tokio::select! {
                next = tcp.next() => next,
                () = accepted.closed() => return,
                () = &mut node_stopped => return,
            };
            let io = match next {
                Some(Ok(io)) => io,
                Some(Err(error)) => {
                    if accepted.send(Err(error)).await.is_err() {
                        return;
                    }
                    continue;
                }
                None => return,
            };
            let remote = io.peer_addr().ok();
            let acceptor = TlsAcceptor::from(tls.current());
            let accepted = accepted.clone();
            let io = StoppableIo::new(io, stop.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                    Ok(Ok(stream)) => {
                        let _ = accepted.send(Ok(ServerConn::Tls(Box::new(stream)))).await;
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(?node, ?remote, %error, "refused a TLS connection");
                    }
                    Err(_) => tracing::warn!(
                        ?node,
                        ?remote,
                        "refused a TLS connection: no handshake within {HANDSHAKE_TIMEOUT:?}"
                    ),
                }
            });
        }
    });
    ReceiverStream::new(queue).boxed()
}

impl Connected for ServerConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        match self {
            ServerConn::Plain(io) => PeerInfo {
                remote: io.connect_info().remote_addr(),
                certs: None,
            },
            ServerConn::Tls(stream) => {
                let (io, session) = stream.get_ref();
                PeerInfo {
                    remote: io.connect_info().remote_addr(),
                    certs: session
                        .peer_certificates()
                        .map(|certs| Arc::new(certs.to_vec())),
                }
            }
        }
    }
}

impl AsyncRead for ServerConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerConn::Plain(io) => Pin::new(io).poll_read(cx, buf),
            ServerConn::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerConn::Plain(io) => Pin::new(io).poll_write(cx, buf),
            ServerConn::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerConn::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            ServerConn::Tls(io) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ServerConn::Plain(io) => io.is_write_vectored(),
            ServerConn::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerConn::Plain(io) => Pin::new(io).poll_flush(cx),
            ServerConn::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerConn::Plain(io) => Pin::new(io).poll_shutdown(cx),
            ServerConn::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}
