//! A loopback TCP proxy whose link can be cut: `keel demo agents` and the tests put one in
//! front of each node of a remote cluster, so cutting them cuts the link between clusters
//! without touching either cluster.
//!
//! Cut, it drops its open connections at once and closes new ones on accept; restored, it
//! forwards again.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::engine::AbortOnDrop;

/// A proxy to one address; stops when dropped.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
    _task: AbortOnDrop,
}

impl Proxy {
    /// Listens on a free loopback port and forwards each connection to `target`. Must be
    /// called inside a tokio runtime.
    ///
    /// # Errors
    /// Binding the port.
    pub async fn start(target: String) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cut, watch) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if *watch.borrow() {
                    continue;
                }
                tokio::spawn(forward(inbound, target.clone(), watch.clone()));
            }
        });
        Ok(Self {
            addr,
            cut,
            _task: AbortOnDrop(task),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts the link (`true`) or restores it.
    pub fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

/// Forwards `inbound` to `target` both ways until either side closes or the link is cut.
async fn forward(mut inbound: TcpStream, target: String, mut cut: watch::Receiver<bool>) {
    let Ok(mut outbound) = TcpStream::connect(&target).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = cut.wait_for(|cut| *cut) => {}
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Bytes pass while the link is up; cut, the open connection ends and new ones are
    /// closed; restored, bytes pass again.
    #[tokio::test]
    async fn a_cut_link_drops_connections_until_restored() {
        let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let target = echo.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = socket.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        let proxy = Proxy::start(target).await.expect("proxy");
        let round_trip = |mut socket: TcpStream| async move {
            socket.write_all(b"ping").await.ok()?;
            let mut answer = [0; 4];
            socket.read_exact(&mut answer).await.ok()?;
            Some((answer, socket))
        };
        let socket = TcpStream::connect(proxy.addr()).await.expect("connect");
        let (answer, mut open) = round_trip(socket).await.expect("passes");
        assert_eq!(&answer, b"ping");

        proxy.set_cut(true);
        let mut rest = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            open.read_to_end(&mut rest),
        )
        .await
        .expect("the open connection ends");
        assert!(read.is_err() || rest.is_empty());
        let refused = TcpStream::connect(proxy.addr()).await.expect("accepted");
        assert!(round_trip(refused).await.is_none(), "new ones are closed");

        proxy.set_cut(false);
        let socket = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert!(round_trip(socket).await.is_some(), "restored");
    }
}
