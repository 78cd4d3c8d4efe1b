//! A TCP proxy on every directed link between nodes, so the harness can cut, slow and break
//! the links without root: each node listens on a free loopback port, and its `[peers]`
//! config points at the proxies of its outgoing links instead of the other nodes.
//!
//! A link `from → to` carries every connection `from` opens to `to` (requests one way,
//! answers the other). Its fault applies to both directions of those connections:
//! - **cut**: open connections are dropped at once and new ones are closed on accept, so a
//!   one-way partition (cut `a → b`, keep `b → a`) means `a` cannot send to `b` while `b`
//!   still reaches `a`;
//! - **delay**: every chunk waits this long before it is forwarded;
//! - **loss**: each forwarded chunk drops its connection with this probability (a TCP
//!   proxy cannot lose single packets without breaking the stream; a lossy network looks
//!   to gRPC like connections that break and must be re-established).
//!
//! Clients reach the nodes directly; only node-to-node traffic crosses the proxies.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::LinkFault;

/// The most bytes a proxy forwards per chunk.
const CHUNK_BYTES: usize = 64 * 1024;

/// One directed link's proxy.
#[derive(Debug)]
struct Link {
    addr: String,
    fault: watch::Sender<LinkFault>,
    task: JoinHandle<()>,
}

/// The proxies of every directed link between the nodes; stopped when dropped.
#[derive(Debug)]
pub struct Proxies {
    /// Where each node listens.
    nodes: BTreeMap<u64, String>,
    links: BTreeMap<(u64, u64), Link>,
}

impl Drop for Proxies {
    fn drop(&mut self) {
        for link in self.links.values() {
            link.task.abort();
        }
    }
}

impl Proxies {
    /// Picks a free loopback port for each of nodes `1..=count` and starts a proxy for
    /// every ordered pair of them, on free loopback ports. Must be called inside a tokio
    /// runtime.
    ///
    /// # Errors
    /// A port could not be bound.
    pub fn start(count: u64, seed: u64) -> anyhow::Result<Self> {
        // The nodes' ports stay bound until the proxies have theirs, so no proxy takes one.
        let reserved: Vec<std::net::TcpListener> = (1..=count)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
            .collect::<std::io::Result<_>>()?;
        let nodes: BTreeMap<u64, String> = (1..=count)
            .zip(&reserved)
            .map(|(id, listener)| Ok((id, listener.local_addr()?.to_string())))
            .collect::<std::io::Result<_>>()?;
        let proxies = Self::between(nodes, seed);
        drop(reserved);
        proxies
    }

    /// Starts a proxy for every ordered pair of `nodes` (id → address).
    fn between(nodes: BTreeMap<u64, String>, seed: u64) -> anyhow::Result<Self> {
        let mut links = BTreeMap::new();
        for &from in nodes.keys() {
            for (&to, target) in &nodes {
                if from == to {
                    continue;
                }
                let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
                listener.set_nonblocking(true)?;
                let addr = listener.local_addr()?.to_string();
                let listener = TcpListener::from_std(listener)?;
                let (fault, faults) = watch::channel(LinkFault::default());
                let link_seed = seed ^ (from << 32) ^ to;
                let task = tokio::spawn(serve(listener, target.clone(), faults, link_seed));
                links.insert((from, to), Link { addr, fault, task });
            }
        }
        Ok(Self { nodes, links })
    }

    /// Where node `id` listens.
    pub fn node_addr(&self, id: u64) -> Option<&str> {
        self.nodes.get(&id).map(String::as_str)
    }

    /// The nodes' ids.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// The address `from` dials to reach `to`.
    pub fn addr(&self, from: u64, to: u64) -> Option<&str> {
        self.links.get(&(from, to)).map(|l| l.addr.as_str())
    }

    /// Sets the fault of the link `from → to`.
    pub fn set(&self, from: u64, to: u64, fault: LinkFault) {
        if let Some(link) = self.links.get(&(from, to)) {
            link.fault.send_replace(fault);
        }
    }

    /// Every link with a fault.
    pub fn faults(&self) -> BTreeMap<(u64, u64), LinkFault> {
        self.links
            .iter()
            .map(|(&link, proxy)| (link, *proxy.fault.borrow()))
            .filter(|(_, fault)| *fault != LinkFault::default())
            .collect()
    }
}

async fn serve(
    listener: TcpListener,
    target: String,
    faults: watch::Receiver<LinkFault>,
    seed: u64,
) {
    let mut connections = 0u64;
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        if faults.borrow().cut {
            continue;
        }
        connections += 1;
        let rng = StdRng::seed_from_u64(seed.wrapping_add(connections));
        tokio::spawn(pipe(inbound, target.clone(), faults.clone(), rng));
    }
}

/// Forwards one connection until either side closes it or the link is cut or resets it.
async fn pipe(
    inbound: TcpStream,
    target: String,
    mut faults: watch::Receiver<LinkFault>,
    rng: StdRng,
) {
    let Ok(outbound) = TcpStream::connect(&target).await else {
        return;
    };
    // Nagle's algorithm would add its own delay to gRPC's small frames.
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (from_reader, from_writer) = inbound.into_split();
    let (to_reader, to_writer) = outbound.into_split();
    let rng = std::sync::Mutex::new(rng);
    let forward = copy(from_reader, to_writer, faults.clone(), &rng);
    let backward = copy(to_reader, from_writer, faults.clone(), &rng);
    let cut = async {
        while faults.changed().await.is_ok() {
            if faults.borrow().cut {
                return;
            }
        }
    };
    // Whichever ends first ends the connection: dropping the halves closes both sockets.
    tokio::select! {
        _ = forward => {}
        _ = backward => {}
        () = cut => {}
    }
}

async fn copy(
    mut reader: tokio::net::tcp::OwnedReadHalf,
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    faults: watch::Receiver<LinkFault>,
    rng: &std::sync::Mutex<StdRng>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let fault = *faults.borrow();
        if fault.cut {
            return Ok(());
        }
        if fault.loss_per_mille > 0 {
            let draw = rng.lock().map_or(0, |mut rng| rng.random_range(0..1000u32));
            if draw < fault.loss_per_mille {
                return Ok(());
            }
        }
        if !fault.delay.is_zero() {
            tokio::time::sleep(fault.delay).await;
        }
        writer.write_all(&buf[..n]).await?;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn echo_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(addr: &str) -> std::io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_millis(500), stream.read_exact(&mut buf))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        Ok(buf.to_vec())
    }

    fn two_nodes(a: String, b: String) -> BTreeMap<u64, String> {
        BTreeMap::from([(1, a), (2, b)])
    }

    #[tokio::test]
    async fn forwards_and_cuts_one_direction_only() {
        let proxies = Proxies::between(two_nodes(echo_server().await, echo_server().await), 7)
            .expect("start");
        let one_to_two = proxies.addr(1, 2).expect("link").to_owned();
        let two_to_one = proxies.addr(2, 1).expect("link").to_owned();
        assert_eq!(round_trip(&one_to_two).await.expect("open link"), b"ping");

        // An open connection is dropped when its link is cut.
        let mut open = TcpStream::connect(&one_to_two).await.expect("connect");
        open.write_all(b"x").await.expect("write");
        let mut byte = [0u8; 1];
        open.read_exact(&mut byte)
            .await
            .expect("echo before the cut");
        proxies.set(
            1,
            2,
            LinkFault {
                cut: true,
                ..LinkFault::default()
            },
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = open.write_all(b"y").await;
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(2), open.read_to_end(&mut rest)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "the cut closes the connection: {read:?}"
        );

        assert!(round_trip(&one_to_two).await.is_err(), "cut link refuses");
        assert_eq!(round_trip(&two_to_one).await.expect("other way"), b"ping");
        assert_eq!(proxies.faults().len(), 1);
        proxies.set(1, 2, LinkFault::default());
        assert_eq!(round_trip(&one_to_two).await.expect("healed"), b"ping");
        assert!(proxies.faults().is_empty());
    }

    #[tokio::test]
    async fn delays_every_chunk() {
        let proxies = Proxies::between(two_nodes(echo_server().await, echo_server().await), 7)
            .expect("start");
        let addr = proxies.addr(1, 2).expect("link").to_owned();
        proxies.set(
            1,
            2,
            LinkFault {
                delay: Duration::from_millis(100),
                ..LinkFault::default()
            },
        );
        let started = std::time::Instant::now();
        let mut stream = TcpStream::connect(&addr).await.expect("connect");
        stream.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.expect("echo");
        // Once on the way there and once on the way back.
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn certain_loss_breaks_every_connection() {
        let proxies = Proxies::between(two_nodes(echo_server().await, echo_server().await), 7)
            .expect("start");
        let loss = LinkFault {
            loss_per_mille: 1000,
            ..LinkFault::default()
        };
        proxies.set(1, 2, loss);
        proxies.set(2, 1, loss);
        assert!(round_trip(proxies.addr(1, 2).expect("link")).await.is_err());
        assert!(round_trip(proxies.addr(2, 1).expect("link")).await.is_err());
    }
}
