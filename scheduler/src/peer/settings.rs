//! The `[remotes.<alias>]` and `[remote_calls]` tables of a node's configuration
//! (`scheduler/REMOTE.md` §15): which clusters this one calls and is called by, and its own
//! settings as caller and callee. All nodes of a cluster must configure the same.

use std::collections::BTreeMap;
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_raft::security::credentials::{Connector, Credentials};
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
    /// The principal the peer's credentials carry here, when this node authenticates: the
    /// name of its token or the common name of its certificate, of role `remote` (default:
    /// the alias).
    pub principal: Option<String>,
    /// The CA that verifies the peer's server certificate; given, calls to it are TLS.
    pub ca: Option<PathBuf>,
    /// The client certificate this cluster presents to it (issued by the peer), with `key`.
    pub cert: Option<PathBuf>,
    /// The client certificate's key.
    pub key: Option<PathBuf>,
    /// A file holding the bearer token this cluster presents to it (issued by the peer).
    pub token_file: Option<PathBuf>,
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
            Connector::new(&remote.credentials())
                .map_err(|error| Error::Config(format!("remotes.{alias}: {error}")))?;
            for address in &remote.addresses {
                let resolved: Vec<_> = address
                    .to_socket_addrs()
                    .map_err(|error| {
                        Error::Config(format!("remotes.{alias}: address {address:?}: {error}"))
                    })?
                    .collect();
                let plaintext = remote.ca.is_none();
                if plaintext && !insecure && resolved.iter().any(|a| !a.ip().is_loopback()) {
                    return bad(format!(
                        "remotes.{alias}: address {address} is not loopback; give the peer's \
                         `ca` (TLS), or say `insecure = true` for plaintext"
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

    /// The principal the peer's credentials carry here: configured, else `alias`.
    pub fn principal<'a>(&'a self, alias: &'a str) -> &'a str {
        self.principal.as_deref().unwrap_or(alias)
    }

    /// What this cluster presents when it calls the peer.
    pub fn credentials(&self) -> Credentials {
        Credentials {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            token_file: self.token_file.clone(),
        }
    }

    /// This configuration with its relative paths resolved against `base`.
    #[must_use]
    pub fn relative_to(mut self, base: &Path) -> Self {
        for path in [
            &mut self.ca,
            &mut self.cert,
            &mut self.key,
            &mut self.token_file,
        ]
        .into_iter()
        .flatten()
        {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        self
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
            ("[remotes.a]\ntoken_file = \"a.token\"", "over TLS only"),
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
