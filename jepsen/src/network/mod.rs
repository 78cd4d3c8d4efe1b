//! The links between the nodes, and the faults on them. Two ways to build them:
//!
//! - **proxy** (no privileges): every node listens on loopback and dials its peers through
//!   a TCP proxy per directed link that the harness runs ([`Proxies`]). Faults act on
//!   connections: a cut closes them, a delay holds every chunk, loss breaks a connection.
//! - **netns** (root, with `ip`, `nft` and `unshare`): the harness moves itself into a
//!   network namespace of its own ([`enter_own_namespace`]), puts each node into another,
//!   joined to the harness's by a veth pair, and routes between them
//!   ([`Namespaces`]). Faults act on packets: nftables rules in the harness's forward chain
//!   drop every packet of a cut link, or a share of them for loss. There is no delay in
//!   this mode: this kernel has no `tc netem`.
//!
//! Clients reach the nodes directly in both modes; only node-to-node traffic is faulted.

mod netns;
mod proxy;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::Serialize;

pub use netns::{Namespaces, enter_own_namespace, in_own_namespace, unavailable};
pub use proxy::Proxies;

/// The fault on one directed link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkFault {
    /// Nothing passes.
    pub cut: bool,
    /// Every chunk waits this long (proxy mode only).
    pub delay: Duration,
    /// Loss, in thousandths: each forwarded chunk breaks its connection with this
    /// probability (proxy mode: a TCP proxy cannot lose single packets without breaking the
    /// stream), or each packet is dropped with it (netns mode).
    pub loss_per_mille: u32,
}

/// How the links are built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetKind {
    /// Network namespaces when this process runs in its own (root, the tools installed),
    /// proxies otherwise.
    Auto,
    /// TCP proxies on loopback.
    Proxy,
    /// Network namespaces and nftables.
    Netns,
}

impl NetKind {
    /// The kind a run gets: `Auto` resolved; `Netns` only if this process can build it.
    ///
    /// # Errors
    /// `Netns` asked for outside a namespace of this process's own.
    pub fn resolve(self) -> anyhow::Result<Self> {
        match self {
            Self::Auto | Self::Netns if in_own_namespace() => Ok(Self::Netns),
            Self::Auto | Self::Proxy => Ok(Self::Proxy),
            Self::Netns => anyhow::bail!(
                "network namespaces need root and the programs ip, nft and unshare \
                 (Debian: iproute2, nftables, util-linux)"
            ),
        }
    }
}

/// The links of a running cluster; faults healed and resources freed when dropped.
#[derive(Debug)]
pub enum Network {
    /// Proxies on loopback.
    Proxy(Proxies),
    /// A namespace per node.
    Netns(Namespaces),
}

impl Network {
    /// Builds the links of nodes `1..=count`. `seed` seeds the proxies' loss draws. Must be
    /// called inside a tokio runtime (the proxies run on it).
    ///
    /// # Errors
    /// A port could not be bound, or a namespace command failed.
    pub fn start(kind: NetKind, count: u64, seed: u64) -> anyhow::Result<Self> {
        match kind.resolve()? {
            NetKind::Netns => Ok(Self::Netns(Namespaces::create(count)?)),
            _ => Ok(Self::Proxy(Proxies::start(count, seed)?)),
        }
    }

    /// Which kind this is.
    pub fn kind(&self) -> NetKind {
        match self {
            Self::Proxy(_) => NetKind::Proxy,
            Self::Netns(_) => NetKind::Netns,
        }
    }

    /// Where node `id` listens (and where clients reach it).
    pub fn listen_addr(&self, id: u64) -> Option<String> {
        match self {
            Self::Proxy(proxies) => proxies.node_addr(id).map(str::to_owned),
            Self::Netns(namespaces) => namespaces.node_addr(id),
        }
    }

    /// The address `from` dials to reach `to`.
    pub fn peer_addr(&self, from: u64, to: u64) -> Option<String> {
        match self {
            Self::Proxy(proxies) => proxies.addr(from, to).map(str::to_owned),
            Self::Netns(namespaces) => namespaces.node_addr(to),
        }
    }

    /// The command that starts `program` as node `id` (inside its namespace, if any).
    pub fn command(&self, id: u64, program: &Path) -> Command {
        match self {
            Self::Proxy(_) => Command::new(program),
            Self::Netns(namespaces) => namespaces.command(id, program),
        }
    }

    /// Whether links can be delayed.
    pub fn can_delay(&self) -> bool {
        matches!(self, Self::Proxy(_))
    }

    /// Sets the fault of the link `from → to`.
    ///
    /// # Errors
    /// The fault cannot be built in this mode, or its rules could not be installed.
    pub fn set(&self, from: u64, to: u64, fault: LinkFault) -> anyhow::Result<()> {
        self.set_many(&[(from, to)], fault)
    }

    /// Sets the fault of both directions between `a` and `b`.
    ///
    /// # Errors
    /// As [`Network::set`].
    pub fn set_both(&self, a: u64, b: u64, fault: LinkFault) -> anyhow::Result<()> {
        self.set_many(&[(a, b), (b, a)], fault)
    }

    /// Sets the fault of every link.
    ///
    /// # Errors
    /// As [`Network::set`].
    pub fn set_all(&self, fault: LinkFault) -> anyhow::Result<()> {
        let links = self.links();
        self.set_many(&links, fault)
    }

    /// Sets the fault of each of `links` at once.
    ///
    /// # Errors
    /// As [`Network::set`].
    pub fn set_many(&self, links: &[(u64, u64)], fault: LinkFault) -> anyhow::Result<()> {
        match self {
            Self::Proxy(proxies) => {
                for &(from, to) in links {
                    proxies.set(from, to, fault);
                }
                Ok(())
            }
            Self::Netns(namespaces) => namespaces.set(links, fault),
        }
    }

    /// Every link with a fault: `(from, to, fault)`.
    pub fn faults(&self) -> BTreeMap<(u64, u64), LinkFault> {
        match self {
            Self::Proxy(proxies) => proxies.faults(),
            Self::Netns(namespaces) => namespaces.faults(),
        }
    }

    /// Every directed link.
    fn links(&self) -> Vec<(u64, u64)> {
        let ids = match self {
            Self::Proxy(proxies) => proxies.ids(),
            Self::Netns(namespaces) => namespaces.ids(),
        };
        ids.iter()
            .flat_map(|&from| ids.iter().map(move |&to| (from, to)))
            .filter(|(from, to)| from != to)
            .collect()
    }
}
