//! A TLS cluster under test (`--tls`): a CA of its own, a certificate per node naming the
//! addresses it is dialled at (its namespace address, or loopback behind the proxies),
//! authentication on, the harness an admin by certificate, the remote workers by a worker
//! token. Without `--tls`, nodes listening beyond loopback (in network namespaces) say
//! `insecure = true`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use keel_raft::security::certs::{LocalCa, write_pair};
use keel_raft::security::credentials::{Credentials, ENV_CA, ENV_TOKEN_FILE};
use keel_raft::security::roles::Role;

/// The certificates, tokens and credentials of a TLS cluster under test.
#[derive(Debug, Clone)]
pub struct ClusterPki {
    dir: PathBuf,
    harness: Credentials,
    worker_token: PathBuf,
}

/// The host part of `host:port`.
fn host(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(host, _)| host)
}

impl ClusterPki {
    /// Issues everything into `dir` for nodes listening at `listen` (`(id, host:port)`);
    /// the worker token is derived from `seed` (a test's secret need not be secret).
    ///
    /// # Errors
    /// A file error.
    pub fn create(dir: &Path, listen: &[(u64, String)], seed: u64) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        // Absolute: the nodes resolve relative paths from their configuration's directory,
        // the harness and the workers from the working directory.
        let dir = &std::fs::canonicalize(dir)?;
        let ca = LocalCa::create("keel-jepsen")?;
        ca.write(dir)?;
        let hosts: Vec<String> = listen
            .iter()
            .map(|(_, addr)| host(addr).to_owned())
            .collect();
        for (id, _) in listen {
            let stem = format!("node-{id}");
            write_pair(dir, &stem, &ca.issue(&stem, Role::Node, &hosts)?)?;
        }
        let (cert, key) = write_pair(dir, "harness", &ca.issue("keel-jepsen", Role::Admin, &[])?)?;
        let worker_token = dir.join("worker.token");
        let token = format!("worker-token-{seed:016x}");
        std::fs::write(&worker_token, &token)?;
        std::fs::write(
            dir.join("tokens.toml"),
            format!("[[token]]\nname = \"workers\"\nrole = \"worker\"\nvalue = \"{token}\"\n"),
        )?;
        Ok(Self {
            dir: dir.to_owned(),
            harness: Credentials {
                ca: Some(dir.join("ca.pem")),
                cert: Some(cert),
                key: Some(key),
                token_file: None,
            },
            worker_token,
        })
    }

    /// Node `id`'s configuration sections: its certificate, the CA, the tokens file.
    pub fn node_sections(&self, id: u64) -> String {
        let path = |name: &str| self.dir.join(name).display().to_string();
        format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n[auth]\ntokens = \"{}\"\n",
            path(&format!("node-{id}.pem")),
            path(&format!("node-{id}.key")),
            path("ca.pem"),
            path("tokens.toml"),
        )
    }

    /// The harness's credentials: the CA and an admin certificate.
    pub fn harness(&self) -> &Credentials {
        &self.harness
    }

    /// The environment a `keel worker` finds its credentials in: the CA and the worker
    /// token's file.
    pub fn worker_env(&self) -> [(&'static str, PathBuf); 2] {
        [
            (ENV_CA, self.dir.join("ca.pem")),
            (ENV_TOKEN_FILE, self.worker_token.clone()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nodes read their configuration's paths relative to its own directory, the
    /// harness relative to its working directory: with a relative store (as the ci profile
    /// gives), every path written must be absolute and name a file that exists.
    #[test]
    fn a_relative_directory_gives_absolute_paths_to_existing_files() {
        let base = tempfile::tempdir_in(".").expect("tempdir");
        let cwd = std::env::current_dir().expect("cwd");
        let relative = base
            .path()
            .strip_prefix(&cwd)
            .expect("under the working directory")
            .join("certs");
        assert!(relative.is_relative());
        let pki =
            ClusterPki::create(&relative, &[(1, "127.0.0.1:7000".to_owned())], 7).expect("pki");
        let sections = pki.node_sections(1);
        let paths: Vec<&str> = sections
            .lines()
            .filter_map(|line| {
                line.split_once(" = \"")
                    .map(|(_, v)| v.trim_end_matches('"'))
            })
            .collect();
        assert_eq!(paths.len(), 4, "{sections}");
        for path in paths {
            assert!(Path::new(path).is_absolute(), "{path}");
            assert!(Path::new(path).is_file(), "{path}");
        }
        for (_, path) in pki.worker_env() {
            assert!(path.is_absolute() && path.is_file(), "{}", path.display());
        }
    }
}
