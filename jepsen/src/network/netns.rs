//! Network namespaces and nftables: real packet-level partitions, for a harness running as
//! root.
//!
//! The harness first moves itself into a fresh network namespace ([`enter_own_namespace`]:
//! it re-executes itself under `unshare --net`), so nothing it does touches the machine's
//! own network, and everything it made there vanishes with it. For each cluster it then
//! makes one namespace per node, named `keel-jepsen-<harness pid>-<cluster>-n<id>`, joined
//! to the harness's namespace by a veth pair:
//!
//! ```text
//!   harness namespace (router, ip_forward on, nft table keel_jepsen)
//!     kj<c>h1 10.77.1.1 ── eth0 10.77.1.2:7000  node 1's namespace
//!     kj<c>h2 10.77.2.1 ── eth0 10.77.2.2:7000  node 2's namespace
//!     kj<c>h3 10.77.3.1 ── eth0 10.77.3.2:7000  node 3's namespace
//! ```
//!
//! Node-to-node packets are routed through the harness's namespace, where the forward chain
//! `links` of table `inet keel_jepsen` drops those of a cut link (or a random share, for
//! loss); the harness's own client connections end in its namespace and are never
//! forwarded, so they are never faulted. A cut is per direction and per packet: cutting
//! `a → b` also stalls `b`'s connections to `a`, whose answers cannot come back — what a
//! one-way partition does to TCP.
//!
//! A cluster's namespaces and veths are deleted when it is dropped; namespaces left by a
//! harness that was killed are deleted by the next one (its pid no longer runs).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use anyhow::{Context as _, bail};

use super::{LinkFault, NetKind};

/// Set in the environment of the harness re-executed inside its own namespace.
const OWN_NAMESPACE_MARKER: &str = "KEEL_JEPSEN_OWN_NETNS";
/// The programs this mode runs.
const TOOLS: [&str; 3] = ["ip", "nft", "unshare"];
/// Every node namespace's name starts with this.
const PREFIX: &str = "keel-jepsen-";
/// Where `ip netns` keeps named namespaces.
const NETNS_DIR: &str = "/run/netns";
/// The nftables table (in the harness's namespace) and its chain.
const TABLE: &str = "keel_jepsen";
const CHAIN: &str = "links";
/// The port every node listens on, alone in its namespace.
const NODE_PORT: u16 = 7000;
/// The most nodes: each gets a /24 of 10.77.0.0/16.
const MAX_NODES: u64 = 250;

/// Whether this process runs in a network namespace of its own, set up for this mode.
static OWN_NAMESPACE: OnceLock<bool> = OnceLock::new();
/// Numbers the clusters of this process, so names never repeat.
static CLUSTERS: AtomicU64 = AtomicU64::new(1);

/// Whether this process runs in a network namespace of its own (see
/// [`enter_own_namespace`]).
pub fn in_own_namespace() -> bool {
    OWN_NAMESPACE.get().copied().unwrap_or(false)
}

/// Moves this process into a network namespace of its own, if `want` may use namespaces
/// and they can be built here: re-executes this program under `unshare --net` (so it never
/// returns then), and in the re-executed program brings up loopback and forwarding. Call it
/// first thing in `main`, before any thread starts.
///
/// # Errors
/// `want` is [`NetKind::Netns`] but this process is not root or lacks a tool, or the
/// namespace could not be entered or set up.
pub fn enter_own_namespace(want: NetKind) -> anyhow::Result<()> {
    if want == NetKind::Proxy {
        return Ok(());
    }
    if std::env::var_os(OWN_NAMESPACE_MARKER).is_some() {
        run("ip", ["link", "set", "lo", "up"])?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1\n")
            .context("turning on forwarding in the harness's namespace")?;
        OWN_NAMESPACE.get_or_init(|| true);
        return Ok(());
    }
    if let Some(missing) = unavailable() {
        if want == NetKind::Netns {
            bail!("network namespaces: {missing}");
        }
        return Ok(());
    }
    let this = std::env::current_exe().context("locating this program")?;
    let error = Command::new("unshare")
        .arg("--net")
        .arg("--")
        .arg(this)
        .args(std::env::args_os().skip(1))
        .env(OWN_NAMESPACE_MARKER, "1")
        .exec();
    Err(error).context("re-executing under `unshare --net`")
}

/// Why namespaces cannot be built here, if they cannot: not root, a tool missing, or the
/// kernel or a container refuses them (probed: a fresh namespace with an nftables table,
/// and a named namespace made and deleted).
pub fn unavailable() -> Option<String> {
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if !root {
        return Some("this process is not root".to_owned());
    }
    if let Some(tool) = TOOLS.iter().find(|tool| on_path(tool).is_none()) {
        return Some(format!(
            "no `{tool}` on PATH (Debian: iproute2, nftables, util-linux)"
        ));
    }
    let probe = format!("{PREFIX}{}-probe", std::process::id());
    let refused = run(
        "unshare",
        ["--net", "--", "nft", "add", "table", "inet", TABLE],
    )
    .and_then(|()| run("ip", ["netns", "add", &probe]))
    .and_then(|()| run("ip", ["netns", "del", &probe]));
    refused
        .err()
        .map(|error| format!("refused here: {error:#}"))
}

/// Where `program` is on `PATH`.
fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Runs `program` with `args`; fails with its error output.
fn run<I, S>(program: &str, args: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<S> = args.into_iter().collect();
    let output = Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
        bail!(
            "{program} {} failed: {}",
            shown.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Feeds `script` to `nft -f -` (applied atomically).
fn nft(script: &str) -> anyhow::Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft")?;
    child
        .stdin
        .take()
        .context("nft's input")?
        .write_all(script.as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "nft failed: {}\nscript:\n{script}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Node `id`'s address inside its namespace.
fn node_ip(id: u64) -> String {
    format!("10.77.{id}.2")
}

/// The harness's end of node `id`'s veth pair (the node's gateway).
fn gateway_ip(id: u64) -> String {
    format!("10.77.{id}.1")
}

/// The nft script that makes the `links` chain hold exactly the rules of `faults`.
fn ruleset(faults: &BTreeMap<(u64, u64), LinkFault>) -> String {
    let mut script = format!("flush chain inet {TABLE} {CHAIN}\n");
    for (&(from, to), fault) in faults {
        let matching = format!(
            "add rule inet {TABLE} {CHAIN} ip saddr {} ip daddr {}",
            node_ip(from),
            node_ip(to)
        );
        if fault.cut {
            let _ = writeln!(script, "{matching} drop");
        } else if fault.loss_per_mille > 0 {
            let _ = writeln!(
                script,
                "{matching} numgen random mod 1000 < {} drop",
                fault.loss_per_mille
            );
        }
    }
    script
}

/// The node namespaces of one cluster, with the rules of its faulted links; deleted when
/// dropped.
#[derive(Debug)]
pub struct Namespaces {
    /// This cluster's number in this process.
    cluster: u64,
    ids: Vec<u64>,
    faults: Mutex<BTreeMap<(u64, u64), LinkFault>>,
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // Best effort: what is already gone is fine.
        let _ = nft(&ruleset(&BTreeMap::new()));
        for &id in &self.ids {
            let _ = run("ip", ["link", "del", &self.veth(id)]);
            let _ = run("ip", ["netns", "del", &self.name(id)]);
        }
    }
}

impl Namespaces {
    /// Makes a namespace for each of nodes `1..=count`, wired to this process's namespace,
    /// with no link faulted.
    ///
    /// # Errors
    /// This process is not in a namespace of its own, or a command failed.
    pub fn create(count: u64) -> anyhow::Result<Self> {
        if !in_own_namespace() {
            bail!("the harness is not in a network namespace of its own");
        }
        if count > MAX_NODES {
            bail!("at most {MAX_NODES} nodes in namespaces");
        }
        remove_stale();
        // From here on, dropping `namespaces` removes whatever was made.
        let namespaces = Self {
            cluster: CLUSTERS.fetch_add(1, Ordering::Relaxed),
            ids: (1..=count).collect(),
            faults: Mutex::new(BTreeMap::new()),
        };
        for &id in &namespaces.ids {
            namespaces.wire(id)?;
        }
        nft(&format!(
            "add table inet {TABLE}\n\
             add chain inet {TABLE} {CHAIN} {{ type filter hook forward priority 0; policy accept; }}\n\
             {}",
            ruleset(&BTreeMap::new())
        ))?;
        Ok(namespaces)
    }

    /// Makes node `id`'s namespace and its veth pair, addressed and routed.
    fn wire(&self, id: u64) -> anyhow::Result<()> {
        let name = self.name(id);
        let veth = self.veth(id);
        let gateway = gateway_ip(id);
        run("ip", ["netns", "add", &name])?;
        run(
            "ip",
            [
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &name,
            ],
        )?;
        run(
            "ip",
            ["addr", "add", &format!("{gateway}/24"), "dev", &veth],
        )?;
        run("ip", ["link", "set", &veth, "up"])?;
        let inside = |args: &[&str]| run("ip", ["-n", &name].iter().chain(args));
        inside(&["link", "set", "lo", "up"])?;
        inside(&["addr", "add", &format!("{}/24", node_ip(id)), "dev", "eth0"])?;
        inside(&["link", "set", "eth0", "up"])?;
        inside(&["route", "add", "default", "via", &gateway])
    }

    /// Node `id`'s namespace.
    fn name(&self, id: u64) -> String {
        format!("{PREFIX}{}-{}-n{id}", std::process::id(), self.cluster)
    }

    /// The harness's end of node `id`'s veth pair (at most 15 bytes, as Linux requires).
    fn veth(&self, id: u64) -> String {
        format!("kj{}h{id}", self.cluster % 1_000_000)
    }

    /// Where node `id` listens, if it is one of the cluster's.
    pub fn node_addr(&self, id: u64) -> Option<String> {
        self.ids
            .contains(&id)
            .then(|| format!("{}:{NODE_PORT}", node_ip(id)))
    }

    /// The nodes' ids.
    pub fn ids(&self) -> Vec<u64> {
        self.ids.clone()
    }

    /// `program` run inside node `id`'s namespace (`ip netns exec` executes it in place, so
    /// the child's pid is the program's).
    pub fn command(&self, id: u64, program: &Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name(id)]).arg(program);
        command
    }

    /// Sets the fault of each of `links` and installs the rules of every faulted link.
    ///
    /// # Errors
    /// A delay (this kernel has no `tc netem`), or nft failed.
    pub fn set(&self, links: &[(u64, u64)], fault: LinkFault) -> anyhow::Result<()> {
        if !fault.delay.is_zero() {
            bail!("network namespaces cannot delay packets here (no tc netem)");
        }
        let mut faults = self
            .faults
            .lock()
            .map_err(|_| anyhow::anyhow!("the link faults' lock is poisoned"))?;
        for &link in links {
            if fault == LinkFault::default() {
                faults.remove(&link);
            } else {
                faults.insert(link, fault);
            }
        }
        nft(&ruleset(&faults))
    }

    /// Every link with a fault.
    pub fn faults(&self) -> BTreeMap<(u64, u64), LinkFault> {
        self.faults.lock().map(|f| f.clone()).unwrap_or_default()
    }
}

/// Deletes node namespaces whose harness no longer runs.
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            tracing::warn!(
                namespace = name,
                "deleting a namespace a killed harness left"
            );
            let _ = run("ip", ["netns", "del", &name]);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn ruleset_drops_cut_links_and_a_share_of_lossy_ones() {
        let faults = BTreeMap::from([
            (
                (1, 2),
                LinkFault {
                    cut: true,
                    ..LinkFault::default()
                },
            ),
            (
                (3, 1),
                LinkFault {
                    loss_per_mille: 25,
                    ..LinkFault::default()
                },
            ),
        ]);
        assert_eq!(
            ruleset(&faults),
            "flush chain inet keel_jepsen links\n\
             add rule inet keel_jepsen links ip saddr 10.77.1.2 ip daddr 10.77.2.2 drop\n\
             add rule inet keel_jepsen links ip saddr 10.77.3.2 ip daddr 10.77.1.2 \
             numgen random mod 1000 < 25 drop\n"
        );
        assert_eq!(
            ruleset(&BTreeMap::new()),
            "flush chain inet keel_jepsen links\n"
        );
    }

    #[test]
    fn names_fit_linux_limits() {
        let namespaces = Namespaces {
            cluster: 999_999,
            ids: vec![1, 2, MAX_NODES],
            faults: Mutex::new(BTreeMap::new()),
        };
        assert!(namespaces.veth(MAX_NODES).len() <= 15);
        assert_eq!(namespaces.node_addr(2).as_deref(), Some("10.77.2.2:7000"));
        assert_eq!(namespaces.node_addr(4), None);
        // Not created, so nothing to delete; the drop must not touch other namespaces.
        std::mem::forget(namespaces);
    }

    #[test]
    fn delays_are_refused() {
        let namespaces = Namespaces {
            cluster: 1,
            ids: vec![1, 2],
            faults: Mutex::new(BTreeMap::new()),
        };
        let slow = LinkFault {
            delay: Duration::from_millis(10),
            ..LinkFault::default()
        };
        assert!(namespaces.set(&[(1, 2)], slow).is_err());
        assert!(namespaces.faults().is_empty());
        std::mem::forget(namespaces);
    }
}
