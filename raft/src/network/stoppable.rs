//! Accepted connections that end when the node stops.
//!
//! tonic runs each connection on a task of its own, which outlives the server future, and
//! each holds the services and through them the node's log. Graceful shutdown waits for open
//! streams (a client's append stream, a subscription) that never end by themselves, so such a
//! client would keep the data directory locked after shutdown. Wrapped in
//! [`StoppableIo`], a connection fails its reads and writes once the stop signal turns true,
//! so its task ends and lets go.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// A future that resolves once `stop` is true (or its sender is gone).
pub(crate) fn stopped(mut stop: watch::Receiver<bool>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        while !*stop.borrow_and_update() {
            if stop.changed().await.is_err() {
                return;
            }
        }
    })
}

/// An accepted TCP connection that errors every operation once the node stops.
pub(crate) struct StoppableIo {
    io: TcpStream,
    stopped: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl StoppableIo {
    pub(crate) fn new(io: TcpStream, stop: watch::Receiver<bool>) -> Self {
        Self {
            io,
            stopped: stopped(stop),
        }
    }

    /// An error if the node has stopped; otherwise registers to be woken when it does.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.stopped.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the node stopped",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl AsyncRead for StoppableIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for StoppableIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Connected for StoppableIo {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}
