//! The `[remotes.<alias>]` and `[remote_calls]` tables of a node's configuration
//! (`scheduler/REMOTE.md` §15): which clusters this one calls and is called by, and its own
//! settings as caller and callee. All nodes of a cluster must configure the same.

use std::collections::BTreeMap;
use std::net::ToSocketAddrs;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

/// One remote cluster, under the alias workflows name it by.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// The peer's cluster name (default: the alias).
    pub cluster: Option<String>,
    /// Its nodes' gRPC addresses (`host:port`), to call it and push completions to it.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Workflow kinds the peer may start here (default: none).
    #[serde(default)]
    pub expose: Vec<String>,
}

/// This cluster's own settings as caller and callee.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteCallSettings {
    /// The first pause after a failed RPC to a remote.
    pub backoff_first_ms: u64,
    /// The longest pause, and the breaker's probe period.
    pub backoff_max_ms: u64,
    /// How long past a call's deadline the callee keeps its record.
    pub grace_ms: u64,
    /// The longest deadline this cluster accepts as callee.
    pub deadline_max_ms: u64,
    /// How long a callee leader answers an unknown kind "unavailable" after taking over,
    /// so a worker reconnecting after a failover is not mistaken for a missing kind.
    pub kinds_settle_ms: u64,
    /// How long a caller's Get waits for a completion.
    pub get_wait_ms: u64,
}

impl Default for RemoteCallSettings {
    fn default() -> Self {
        Self {
            backoff_first_ms: 50,
            backoff_max_ms: 60_000,
            grace_ms: 600_000,
            deadline_max_ms: 30 * 86_400_000,
            kinds_settle_ms: 10_000,
            get_wait_ms: 20_000,
        }
    }
}

impl RemoteCallSettings {
    /// The first pause after a failure.
    pub fn backoff_first(&self) -> Duration {
        Duration::from_millis(self.backoff_first_ms)
    }

    /// The longest pause.
    pub fn backoff_max(&self) -> Duration {
        Duration::from_millis(self.backoff_max_ms)
    }
}

/// Every remote of a node, and its settings as caller and callee.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerSettings {
    /// Remotes by alias.
    pub remotes: BTreeMap<String, RemoteConfig>,
    /// Settings as caller and callee.
    pub calls: RemoteCallSettings,
}

impl PeerSettings {
    /// Checks names, addresses and durations; `insecure` allows addresses beyond loopback
    /// (remote calls travel in plaintext in this build).
    ///
    /// # Errors
    /// [`Error::Config`] naming the first bad setting.
    pub fn validate(&self, insecure: bool) -> Result<()> {
        let bad = |what: String| Err(Error::Config(what));
        for (alias, remote) in &self.remotes {
            keel_raft::cluster_identity::ClusterIdentity::new(alias, [0; 16])
                .map_err(|error| Error::Config(format!("remote alias {alias:?}: {error}")))?;
            let cluster = remote.cluster(alias);
            keel_raft::cluster_identity::ClusterIdentity::new(cluster, [0; 16]).map_err(
                |error| Error::Config(format!("remotes.{alias}.cluster {cluster:?}: {error}")),
            )?;
            for address in &remote.addresses {
                let resolved: Vec<_> = address
                    .to_socket_addrs()
                    .map_err(|error| {
                        Error::Config(format!("remotes.{alias}: address {address:?}: {error}"))
                    })?
                    .collect();
                if !insecure && resolved.iter().any(|a| !a.ip().is_loopback()) {
                    return bad(format!(
                        "remotes.{alias}: address {address} is not loopback; remote calls are \
                         plaintext in this build, so it needs `insecure = true`"
                    ));
                }
            }
            if self
                .remotes
                .iter()
                .any(|(other, r)| other != alias && r.cluster(other) == cluster)
            {
                return bad(format!("two remotes name the cluster {cluster:?}"));
            }
        }
        let calls = &self.calls;
        if calls.backoff_first_ms == 0 || calls.backoff_first_ms > calls.backoff_max_ms {
            return bad("remote_calls: backoff_first_ms must be in 1..=backoff_max_ms".into());
        }
        if calls.deadline_max_ms == 0 || calls.get_wait_ms == 0 {
            return bad("remote_calls: deadline_max_ms and get_wait_ms must be positive".into());
        }
        Ok(())
    }

    /// The alias and configuration of the remote whose cluster is named `cluster`.
    pub fn by_cluster(&self, cluster: &str) -> Option<(&str, &RemoteConfig)> {
        self.remotes
            .iter()
            .find(|(alias, remote)| remote.cluster(alias) == cluster)
            .map(|(alias, remote)| (alias.as_str(), remote))
    }
}

impl RemoteConfig {
    /// The peer's cluster name: configured, else `alias`.
    pub fn cluster<'a>(&'a self, alias: &'a str) -> &'a str {
        self.cluster.as_deref().unwrap_or(alias)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml_text: &str) -> PeerSettings {
        #[derive(Deserialize)]
        struct File {
            #[serde(default)]
            remotes: BTreeMap<String, RemoteConfig>,
            #[serde(default)]
            remote_calls: RemoteCallSettings,
        }
        let file: File = toml::from_str(toml_text).expect("parses");
        PeerSettings {
            remotes: file.remotes,
            calls: file.remote_calls,
        }
    }

    #[test]
    fn a_remote_defaults_its_cluster_name_to_its_alias() {
        let peers = settings(
            r#"
            [remotes.writers]
            addresses = ["127.0.0.1:7000"]
            expose = ["draft"]
            [remotes.other]
            cluster = "research"
            "#,
        );
        peers.validate(false).expect("valid");
        assert_eq!(peers.by_cluster("writers").map(|(a, _)| a), Some("writers"));
        assert_eq!(peers.by_cluster("research").map(|(a, _)| a), Some("other"));
        assert_eq!(peers.by_cluster("other"), None);
    }

    #[test]
    fn bad_remotes_are_refused_by_name() {
        for (text, expected) in [
            (
                "[remotes.a]\naddresses = [\"10.1.2.3:7000\"]",
                "not loopback",
            ),
            (
                "[remotes.a]\naddresses = [\"nowhere\"]",
                "address \"nowhere\"",
            ),
            ("[remotes.\"a b\"]", "remote alias"),
            ("[remotes.a]\n[remotes.b]\ncluster = \"a\"", "two remotes"),
            ("[remote_calls]\nbackoff_first_ms = 0", "backoff_first_ms"),
        ] {
            let error = settings(text).validate(false).expect_err(text).to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
        settings("[remotes.a]\naddresses = [\"10.1.2.3:7000\"]")
            .validate(true)
            .expect("insecure allows it");
    }
}
