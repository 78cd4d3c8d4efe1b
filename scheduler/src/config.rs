//! The node configuration file (TOML), validated into a [`NodeConfig`].
//!
//! ```toml
//! node_id = 1
//! cluster = "keel"                  # a data directory of another cluster is refused
//! listen = "127.0.0.1:7101"         # gRPC: raft and client services
//! metrics_listen = "127.0.0.1:9101" # optional Prometheus endpoint
//! data_dir = "/var/lib/keel/1"
//! sync = "durable"                  # or "relaxed": page cache only, non-durable
//! runtime_threads = 0               # 0: one per CPU; 1: a single-threaded runtime
//! sessions_max = 65536              # exactly-once client sessions kept (see below)
//! sync_journal = "node-1.journal"   # testing only: record writes and syncs (power-loss tests)
//! purged_log = "node-1.purged"      # testing only: copy each log range before purging it
//! insecure = false                  # true: allow plaintext listeners beyond loopback
//!
//! [tls]                             # optional: TLS on every port, mutual between nodes
//! cert = "certs/node-1.pem"
//! key = "certs/node-1.key"
//! ca = "certs/ca.pem"
//!
//! [auth]                            # optional (needs [tls]): every call needs a role
//! tokens = "tokens.toml"            # bearer tokens; without it, client certificates only
//!
//! [timeouts]
//! heartbeat_ms = 50
//! election_min_ms = 250
//! election_max_ms = 500
//!
//! [snapshot]
//! every_entries = 100000
//! keep_behind = 10000
//! install_timeout_ms = 60000
//!
//! [retention]
//! max_bytes = 268435456
//! max_age_ms = 86400000
//!
//! [scheduler]
//! max_clock_skew_ms = 500           # how far wall clocks may disagree (timers)
//! retention_ms = 604800000          # keep finished workflows this long (expired every
//!                                   # quarter of it, at most every minute)
//! run_workflows = true              # false: leave every kind to remote workers (`keel worker`)
//!
//! [peers]                           # optional: reach peers here instead (a proxy)
//! 2 = "127.0.0.1:7202"
//! ```

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_log::SyncPolicy;
use keel_raft::node::NodeConfig;
use keel_raft::plain_log::Retention;
use keel_raft::security::tls::TlsFiles;
use keel_raft::security::{AuthSettings, NodeSecurity};
use serde::Deserialize;

use crate::engine::EngineSettings;
use crate::error::{Error, Result};
use crate::peer::{PeerSettings, RemoteCallSettings, RemoteConfig};

/// The configuration file's shape.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// This node's id.
    pub node_id: u64,
    /// Cluster name.
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Prometheus listen address.
    pub metrics_listen: Option<SocketAddr>,
    /// Data directory (relative paths are relative to the file).
    pub data_dir: PathBuf,
    /// `durable` or `relaxed`.
    #[serde(default)]
    pub sync: SyncMode,
    /// Raft timeouts.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Snapshot policy.
    #[serde(default)]
    pub snapshot: SnapshotSettings,
    /// Plain log retention.
    #[serde(default)]
    pub retention: RetentionSettings,
    /// Workflow engine settings.
    #[serde(default)]
    pub scheduler: SchedulerSettings,
    /// Peer address overrides, by node id.
    #[serde(default)]
    pub peers: HashMap<String, String>,
    /// Async runtime threads of `keel node`: 0 for one per CPU, 1 for a single-threaded
    /// runtime (best when nodes share few cores: fewer cross-thread wake-ups).
    #[serde(default)]
    pub runtime_threads: usize,
    /// Testing only: journal the log's writes and syncs to this file so a harness can
    /// simulate a power loss (keel-jepsen's `lose-unsynced` nemesis).
    pub sync_journal: Option<PathBuf>,
    /// Testing only: copy each range of the Raft log to this directory before purging it,
    /// so a harness can read back a run's whole committed log (`keel_raft::purged_log`).
    pub purged_log: Option<PathBuf>,
    /// Exactly-once client sessions the cluster keeps while this node leads: the limit
    /// travels in each session registration it proposes, so every replica expires the same
    /// sessions (`keel_raft::session`). Not a per-node rule: replicas never disagree.
    #[serde(default = "default_sessions_max")]
    pub sessions_max: u64,
    /// Whether plaintext listeners beyond loopback are allowed (`keel_raft::security`).
    #[serde(default)]
    pub insecure: bool,
    /// TLS files (relative paths are relative to the file).
    pub tls: Option<TlsFiles>,
    /// Authentication (relative paths are relative to the file).
    pub auth: Option<AuthSettings>,
    /// Remote clusters this one calls or is called by, by alias (`scheduler/REMOTE.md`).
    #[serde(default)]
    pub remotes: BTreeMap<String, RemoteConfig>,
    /// This cluster's settings as caller and callee of remote calls.
    #[serde(default)]
    pub remote_calls: RemoteCallSettings,
}

fn default_sessions_max() -> u64 {
    keel_raft::session::SESSIONS_MAX_DEFAULT
}

/// A loaded configuration: the node's, and how the `keel` program runs it.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// The node's configuration.
    pub node: NodeConfig,
    /// Async runtime threads (0: one per CPU; 1: single-threaded).
    pub runtime_threads: usize,
    /// The workflow engine's settings.
    pub engine: EngineSettings,
    /// Whether the node runs the built-in workflow kinds itself.
    pub run_workflows: bool,
    /// Remote clusters and the settings of calls between clusters.
    pub peers: PeerSettings,
}

impl NodeSettings {
    /// The async runtime these settings ask for.
    ///
    /// # Errors
    /// The operating system's error creating threads.
    pub fn build_runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        match self.runtime_threads {
            1 => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
            0 => tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build(),
            threads => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .build(),
        }
    }
}

impl SchedulerSettings {
    fn engine(&self) -> EngineSettings {
        let retention = Duration::from_millis(self.retention_ms);
        let defaults = EngineSettings::default();
        EngineSettings {
            max_clock_skew: Duration::from_millis(self.max_clock_skew_ms),
            retention,
            // Often enough that a finished workflow outlives its retention by at most a
            // quarter of it (and at most the default's minute).
            expire_every: (retention / 4).clamp(EXPIRE_EVERY_MIN, defaults.expire_every),
            ..defaults
        }
    }
}

fn default_cluster() -> String {
    "keel".to_owned()
}

/// When writes are acknowledged.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// After `fdatasync` on a majority.
    #[default]
    Durable,
    /// From the page cache: non-durable, loses recent writes on a power cut.
    Relaxed,
}

/// Raft timeouts in milliseconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Leader heartbeat interval.
    pub heartbeat_ms: u64,
    /// Election timeout, lower bound.
    pub election_min_ms: u64,
    /// Election timeout, upper bound.
    pub election_max_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            heartbeat_ms: 50,
            election_min_ms: 250,
            election_max_ms: 500,
        }
    }
}

/// Snapshot policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotSettings {
    /// Entries between snapshots.
    pub every_entries: u64,
    /// Entries kept behind a snapshot.
    pub keep_behind: u64,
    /// Deadline for receiving a whole snapshot.
    pub install_timeout_ms: u64,
}

impl Default for SnapshotSettings {
    fn default() -> Self {
        Self {
            every_entries: 100_000,
            keep_behind: 10_000,
            install_timeout_ms: 60_000,
        }
    }
}

/// The shortest pause between expiries, whatever the retention.
const EXPIRE_EVERY_MIN: Duration = Duration::from_millis(100);

/// Workflow engine settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerSettings {
    /// How far nodes' wall clocks may disagree, in ms.
    pub max_clock_skew_ms: u64,
    /// How long finished workflows and timer fires are kept, in ms.
    pub retention_ms: u64,
    /// Whether this node runs the built-in workflow kinds itself when it leads (otherwise
    /// remote workers run them).
    pub run_workflows: bool,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        let defaults = EngineSettings::default();
        Self {
            max_clock_skew_ms: u64::try_from(defaults.max_clock_skew.as_millis())
                .unwrap_or(u64::MAX),
            retention_ms: u64::try_from(defaults.retention.as_millis()).unwrap_or(u64::MAX),
            run_workflows: true,
        }
    }
}

/// Plain log retention.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSettings {
    /// Most bytes of records kept.
    pub max_bytes: u64,
    /// Oldest record age kept.
    pub max_age_ms: Option<u64>,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        let defaults = Retention::default();
        Self {
            max_bytes: defaults.max_bytes,
            max_age_ms: defaults.max_age_ms,
        }
    }
}

impl ConfigFile {
    /// Parses `text`; relative paths resolve against `base_dir`.
    ///
    /// # Errors
    /// [`Error::Config`] naming the problem (TOML syntax, unknown key, bad value).
    pub fn parse(text: &str, base_dir: &Path) -> Result<NodeSettings> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        file.into_node_config(base_dir)
    }

    /// Reads and parses the file at `path`.
    ///
    /// # Errors
    /// [`Error::Config`] for an unreadable or invalid file.
    pub fn load(path: &Path) -> Result<NodeSettings> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Self::parse(&text, base).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    fn into_node_config(self, base_dir: &Path) -> Result<NodeSettings> {
        let runtime_threads = self.runtime_threads;
        let data_dir = if self.data_dir.is_absolute() {
            self.data_dir
        } else {
            base_dir.join(self.data_dir)
        };
        let mut config = NodeConfig::new(self.node_id, self.listen, data_dir);
        config.cluster = self.cluster;
        config.metrics_listen = self.metrics_listen;
        let resolve = |path: PathBuf| {
            if path.is_absolute() {
                path
            } else {
                base_dir.join(path)
            }
        };
        config.sync_journal = self.sync_journal.map(resolve);
        config.purged_log = self.purged_log.map(resolve);
        config.security = NodeSecurity {
            tls: self.tls.map(|tls| tls.relative_to(base_dir)),
            auth: self.auth.map(|auth| auth.relative_to(base_dir)),
            insecure: self.insecure,
        };
        config.sync = match self.sync {
            SyncMode::Durable => SyncPolicy::Durable,
            SyncMode::Relaxed => SyncPolicy::Relaxed,
        };
        config.heartbeat_interval = Duration::from_millis(self.timeouts.heartbeat_ms);
        config.election_timeout = (
            Duration::from_millis(self.timeouts.election_min_ms),
            Duration::from_millis(self.timeouts.election_max_ms),
        );
        config.snapshot_every_entries = self.snapshot.every_entries;
        config.sessions_max = self.sessions_max;
        config.keep_behind_snapshot = self.snapshot.keep_behind;
        config.install_snapshot_timeout = Duration::from_millis(self.snapshot.install_timeout_ms);
        config.retention = Retention {
            max_bytes: self.retention.max_bytes,
            max_age_ms: self.retention.max_age_ms,
        };
        for (id, addr) in self.peers {
            let id: u64 = id
                .parse()
                .map_err(|_| Error::Config(format!("peers: {id:?} is not a node id")))?;
            config.peers.insert(id, addr);
        }
        config
            .validate()
            .map_err(|e| Error::Config(e.to_string()))?;
        config
            .security
            .check(config.listen, config.metrics_listen)
            .map_err(|e| Error::Config(e.to_string()))?;
        let engine = self.scheduler.engine();
        let peers = PeerSettings {
            remotes: self
                .remotes
                .into_iter()
                .map(|(alias, remote)| (alias, remote.relative_to(base_dir)))
                .collect(),
            calls: self.remote_calls,
        };
        peers.validate(self.insecure)?;
        Ok(NodeSettings {
            node: config,
            runtime_threads,
            engine,
            run_workflows: self.scheduler.run_workflows,
            peers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "node_id = 2\nlisten = \"127.0.0.1:7102\"\ndata_dir = \"data/2\"\n";

    #[test]
    fn minimal_file_gets_defaults_and_relative_data_dir() {
        let config = ConfigFile::parse(MINIMAL, Path::new("/etc/keel"))
            .expect("valid")
            .node;
        assert_eq!(config.node_id, 2);
        assert_eq!(config.data_dir, Path::new("/etc/keel/data/2"));
        assert_eq!(config.sync, SyncPolicy::Durable);
        assert_eq!(config.heartbeat_interval, Duration::from_millis(50));
    }

    #[test]
    fn full_file_sets_everything() {
        let text = format!(
            "{MINIMAL}runtime_threads = 1\ncluster = \"prod\"\nsync = \"relaxed\"\n[timeouts]\nheartbeat_ms = 20\nelection_min_ms = 100\nelection_max_ms = 200\n[scheduler]\nmax_clock_skew_ms = 250\nretention_ms = 1000\n[snapshot]\nevery_entries = 10\n[peers]\n3 = \"127.0.0.1:9999\"\n"
        );
        let settings = ConfigFile::parse(&text, Path::new("/")).expect("valid");
        assert_eq!(settings.runtime_threads, 1);
        assert_eq!(settings.engine.max_clock_skew, Duration::from_millis(250));
        assert_eq!(settings.engine.retention, Duration::from_secs(1));
        assert_eq!(settings.engine.expire_every, Duration::from_millis(250));
        assert!(
            settings.run_workflows,
            "a partial table keeps the other defaults"
        );
        assert_eq!(settings.node.keep_behind_snapshot, 10_000);
        assert_eq!(settings.node.snapshot_every_entries, 10);
        let config = settings.node;
        assert_eq!(config.cluster, "prod");
        assert_eq!(config.sync, SyncPolicy::Relaxed);
        assert_eq!(
            config.peers.get(&3).map(String::as_str),
            Some("127.0.0.1:9999")
        );
    }

    #[test]
    fn remotes_and_remote_call_settings_are_read_and_checked() {
        let text = format!(
            "{MINIMAL}[remotes.writers]\ncluster = \"writing\"\naddresses = [\"127.0.0.1:7000\"]\n[remotes.research]\nexpose = [\"draft\"]\n[remote_calls]\nbackoff_max_ms = 1000\n"
        );
        let peers = ConfigFile::parse(&text, Path::new("/"))
            .expect("valid")
            .peers;
        assert_eq!(
            peers.by_cluster("writing").map(|(alias, _)| alias),
            Some("writers")
        );
        assert_eq!(peers.remotes["research"].expose, ["draft"]);
        assert_eq!(peers.calls.backoff_max_ms, 1000);
        assert_eq!(
            peers.calls.backoff_first_ms, 50,
            "the rest keep their defaults"
        );
        let remote = format!("{MINIMAL}[remotes.w]\naddresses = [\"10.0.0.5:7000\"]\n");
        let error = ConfigFile::parse(&remote, Path::new("/")).expect_err("not loopback");
        assert!(error.to_string().contains("insecure"), "{error}");
    }

    #[test]
    fn errors_name_the_problem() {
        let cases = [
            ("node_id = 1\n", "listen"),
            (&format!("{MINIMAL}colour = \"blue\"\n") as &str, "colour"),
            (&format!("{MINIMAL}sync = \"sometimes\"\n"), "sometimes"),
            (&MINIMAL.replace("node_id = 2", "node_id = 0"), "node_id"),
            (
                &format!(
                    "{MINIMAL}[timeouts]\nheartbeat_ms = 500\nelection_min_ms = 100\nelection_max_ms = 200\n"
                ),
                "timeouts",
            ),
            (&format!("{MINIMAL}[peers]\nabc = \"x:1\"\n"), "abc"),
        ];
        for (text, needle) in cases {
            let error = ConfigFile::parse(text, Path::new("/"))
                .expect_err(text)
                .to_string();
            assert!(
                error.contains(needle),
                "{error:?} should mention {needle:?}"
            );
        }
    }
}
