//! In-process nodes with TLS and authentication on loopback: who is refused, with which
//! status and message; a peer with another CA's certificate kept out; a TLS cluster through
//! a leader kill; tokens and CAs rotated while the nodes run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use keel_raft::client::{ClientError, KeelClient};
use keel_raft::node::{NodeConfig, RaftNode};
use keel_raft::security::certs::{LocalCa, write_pair};
use keel_raft::security::credentials::Credentials;
use keel_raft::security::reload::CHECK_EVERY;
use keel_raft::security::roles::Role;
use keel_raft::security::tls::TlsFiles;
use keel_raft::security::{AuthSettings, NodeSecurity};
use keel_raft::wire_error::WriteErrorKind;
use openraft::async_runtime::WatchReceiver;
use tempfile::TempDir;

/// Every log line of this test binary, for the tests that look for one.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || Capture(Arc::clone(&sink)))
            .try_init();
        logs
    })
    .clone()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A CA and the certificates, keys and token files issued from it, in a temporary directory.
struct Pki {
    dir: TempDir,
    ca: LocalCa,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = LocalCa::create("test").expect("ca");
        ca.write(dir.path()).expect("write ca");
        Self { dir, ca }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ca_file(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// A node's TLS files: its certificate from `issuer` (this CA unless another is given),
    /// trusting this CA.
    fn node(&self, id: u64, other_ca: Option<&LocalCa>) -> TlsFiles {
        let stem = format!("node-{id}");
        let issued = other_ca
            .unwrap_or(&self.ca)
            .issue(&stem, Role::Node, &[])
            .expect("node cert");
        let (cert, key) = write_pair(self.dir.path(), &stem, &issued).expect("write node");
        TlsFiles {
            cert,
            key,
            ca: self.ca_file(),
        }
    }

    /// Client credentials with a certificate for `role`.
    fn cert_client(&self, role: Role) -> Credentials {
        let stem = format!("client-{role}");
        let issued = self.ca.issue(&stem, role, &[]).expect("client cert");
        let (cert, key) = write_pair(self.dir.path(), &stem, &issued).expect("write client");
        Credentials {
            ca: Some(self.ca_file()),
            cert: Some(cert),
            key: Some(key),
            token_file: None,
        }
    }

    /// Client credentials with a token file holding `token`.
    fn token_client(&self, name: &str, token: &str) -> Credentials {
        let path = self.path(&format!("{name}.token"));
        replace(&path, token);
        Credentials {
            ca: Some(self.ca_file()),
            cert: None,
            key: None,
            token_file: Some(path),
        }
    }

    /// Writes the node's tokens file: `(role, value)` each.
    fn tokens(&self, tokens: &[(&str, &str)]) -> PathBuf {
        let path = self.path("tokens.toml");
        let text: Vec<String> = tokens
            .iter()
            .map(|(role, value)| format!("[[token]]\nrole = \"{role}\"\nvalue = \"{value}\"\n"))
            .collect();
        let text = text.concat();
        replace(&path, &text);
        path
    }
}

/// Replaces `path` by renaming a complete new file over it, as a rotation should.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

const WRITE_TOKEN: &str = "write-token-0123456789";
const WORKER_TOKEN: &str = "worker-token-0123456789";

/// `count` nodes with `tls(id)` and authentication by `tokens`, formed into a cluster by an
/// admin client.
async fn cluster(
    pki: &Pki,
    count: u64,
    tls: impl Fn(u64) -> TlsFiles,
    tokens: Option<PathBuf>,
    admin_ca: Option<PathBuf>,
) -> (Vec<RaftNode>, Vec<TempDir>) {
    captured_logs();
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for id in 1..=count {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = NodeConfig::new(id, "127.0.0.1:0".parse().expect("addr"), dir.path());
        config.segment_size_bytes = 8 << 20;
        config.security = NodeSecurity {
            tls: Some(tls(id)),
            auth: Some(AuthSettings {
                tokens: tokens.clone(),
            }),
            insecure: false,
        };
        nodes.push(RaftNode::start(config).await.expect("node starts"));
        dirs.push(dir);
    }
    let members: BTreeMap<u64, String> = nodes
        .iter()
        .map(|n| (n.shared().node_id, n.addr().to_string()))
        .collect();
    let endpoints: Vec<String> = members.values().cloned().collect();
    let mut credentials = pki.cert_client(Role::Admin);
    credentials.ca = admin_ca.or(credentials.ca);
    let mut admin = KeelClient::with_credentials(&endpoints, &credentials).expect("admin");
    admin.init(&members).await.expect("init");
    (nodes, dirs)
}

fn addrs(nodes: &[RaftNode]) -> Vec<String> {
    nodes.iter().map(|n| n.addr().to_string()).collect()
}

fn client(nodes: &[RaftNode], credentials: &Credentials) -> KeelClient {
    KeelClient::with_credentials(&addrs(nodes), credentials).expect("client")
}

fn record(text: &str) -> Vec<Bytes> {
    vec![Bytes::copy_from_slice(text.as_bytes())]
}

/// The refusal's message, asserting it is a [`WriteErrorKind::Denied`].
fn denied<T: std::fmt::Debug>(result: Result<T, ClientError>) -> String {
    match result {
        Err(ClientError::Refused {
            kind: WriteErrorKind::Denied,
            message,
        }) => message,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn stop(nodes: Vec<RaftNode>) {
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_credentials_are_refused_and_each_role_does_only_its_own() {
    let pki = Pki::new();
    let tokens = pki.tokens(&[("write", WRITE_TOKEN), ("worker", WORKER_TOKEN)]);
    let (nodes, _dirs) = cluster(&pki, 1, |id| pki.node(id, None), Some(tokens), None).await;
    let started = std::time::Instant::now();

    // TLS but no credential: refused at once, never retried.
    let anonymous = Credentials {
        ca: Some(pki.ca_file()),
        ..Credentials::none()
    };
    let message = denied(client(&nodes, &anonymous).append(record("a")).await);
    assert!(message.contains("no credentials"), "{message}");
    let message = denied(client(&nodes, &anonymous).read(0, 10).await);
    assert!(message.contains("no credentials"), "{message}");

    // A token the node does not hold.
    let stranger = pki.token_client("stranger", "not-a-token-of-this-node");
    let message = denied(client(&nodes, &stranger).append(record("a")).await);
    assert!(
        message.contains("not in this node's tokens file"),
        "{message}"
    );

    // The write role appends and reads, but may not change the membership.
    let mut writer = client(&nodes, &pki.token_client("writer", WRITE_TOKEN));
    let appended = writer
        .append(record("written"))
        .await
        .expect("write role appends");
    assert_eq!(appended.first_offset, 0);
    assert_eq!(writer.read(0, 10).await.expect("read").records.len(), 1);
    let message = denied(writer.change_membership(&[1], false).await);
    assert!(
        message.contains("ChangeMembership: it needs the admin role"),
        "{message}"
    );

    // A worker token may read but not append.
    let mut worker = client(&nodes, &pki.token_client("worker", WORKER_TOKEN));
    assert_eq!(worker.read(0, 10).await.expect("read").records.len(), 1);
    let message = denied(worker.append(record("from a worker")).await);
    assert!(message.contains("(role worker)"), "{message}");
    assert!(message.contains("it needs the write role"), "{message}");

    // A read certificate reads; it may not write.
    let mut reader = client(&nodes, &pki.cert_client(Role::Read));
    assert_eq!(reader.read(0, 10).await.expect("read").records.len(), 1);
    let message = denied(reader.append(record("b")).await);
    assert!(message.contains("client-read (role read)"), "{message}");

    // An admin certificate may change the membership (to what it is).
    let mut admin = client(&nodes, &pki.cert_client(Role::Admin));
    admin.change_membership(&[1], false).await.expect("admin");

    // Nothing refused was applied, and no refusal waited for a retry deadline.
    assert_eq!(admin.read(0, 10).await.expect("read").records.len(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_cas_certificates_are_refused_by_clients_and_by_peers() {
    let pki = Pki::new();
    let foreign = LocalCa::create("foreign").expect("foreign ca");
    // Node 3's certificate comes from another CA (it trusts the cluster's CA itself); the
    // admin that forms the cluster trusts both, so node 3 is a member from the start.
    let both = pki.path("both-cas.pem");
    replace(
        &both,
        &format!("{}{}", pki.ca.cert_pem(), foreign.cert_pem()),
    );
    let tls = |id| pki.node(id, (id == 3).then_some(&foreign));
    let tokens = pki.tokens(&[("write", WRITE_TOKEN)]);
    let (nodes, _dirs) = cluster(&pki, 3, tls, Some(tokens), Some(both)).await;
    let intruder = &nodes[2];

    // A client trusting the cluster's CA refuses node 3 at once, saying why.
    let writer = pki.token_client("writer", WRITE_TOKEN);
    let mut to_intruder =
        KeelClient::with_credentials(&[intruder.addr().to_string()], &writer).expect("client");
    let message = denied(to_intruder.read(0, 1).await);
    assert!(message.contains("UnknownIssuer"), "{message}");

    // A client trusting another CA refuses the cluster's nodes.
    let foreign_ca = pki.path("foreign-ca.pem");
    replace(&foreign_ca, foreign.cert_pem());
    let misled = Credentials {
        ca: Some(foreign_ca),
        ..Credentials::none()
    };
    let message = denied(client(&nodes[..2], &misled).append(record("a")).await);
    assert!(message.contains("UnknownIssuer"), "{message}");

    // Nodes 1 and 2 elect a leader and commit without node 3, which receives nothing: the
    // leader refuses its certificate, and its own vote requests are refused by both.
    let mut writer = client(&nodes[..2], &writer);
    writer
        .append(record("kept"))
        .await
        .expect("the cluster writes");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let metrics = |node: &RaftNode| {
        let m = node.shared().raft.metrics().borrow_watched().clone();
        (m.current_leader, m.last_log_index)
    };
    let (leader, committed) = metrics(&nodes[0]);
    assert!(matches!(leader, Some(1 | 2)), "{leader:?}");
    let (intruder_leader, intruder_log) = metrics(intruder);
    assert_eq!(intruder_leader, None, "node 3 heard from a leader");
    assert!(
        intruder_log < committed,
        "node 3 at {intruder_log:?}, the leader at {committed:?}"
    );
    // Nodes 1 and 2 (named in the line, so no other test's refusal counts) logged it.
    let logs = String::from_utf8_lossy(&captured_logs().lock().expect("logs")).into_owned();
    let members = [nodes[0].addr().to_string(), nodes[1].addr().to_string()];
    assert!(
        logs.lines().any(|l| l.contains("refused a TLS connection")
            && l.contains("UnknownIssuer")
            && members.iter().any(|addr| l.contains(addr.as_str()))),
        "no log line of nodes 1 or 2 says a peer's TLS connection was refused for its issuer"
    );
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_keeps_its_writes_through_a_leader_kill() {
    let pki = Pki::new();
    let tokens = pki.tokens(&[("write", WRITE_TOKEN)]);
    let (mut nodes, _dirs) = cluster(&pki, 3, |id| pki.node(id, None), Some(tokens), None).await;
    let mut writer = client(&nodes, &pki.token_client("writer", WRITE_TOKEN));
    writer.append(record("before")).await.expect("append");
    let leader = nodes[0]
        .shared()
        .raft
        .metrics()
        .borrow_watched()
        .current_leader
        .expect("a leader");
    let position = nodes
        .iter()
        .position(|n| n.shared().node_id == leader)
        .expect("leader is a node");
    nodes.remove(position).shutdown().await;
    writer
        .append(record("after"))
        .await
        .expect("append after the leader died");
    let read = writer.read(0, 10).await.expect("read");
    let texts: Vec<_> = read
        .records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.data).into_owned())
        .collect();
    assert_eq!(texts, ["before", "after"]);
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_cas_rotate_while_the_node_runs() {
    const OLD: &str = "old-write-token-0123";
    const NEW: &str = "new-write-token-0123";
    let pki = Pki::new();
    let tokens = pki.tokens(&[("write", OLD)]);
    let (nodes, _dirs) = cluster(&pki, 1, |id| pki.node(id, None), Some(tokens), None).await;
    let credentials = pki.token_client("rotating", OLD);
    let mut writer = client(&nodes, &credentials);
    writer.append(record("1")).await.expect("old token");

    // Both valid, the client moves to the new one, the old one goes.
    pki.tokens(&[("write", OLD), ("write", NEW)]);
    replace(credentials.token_file.as_deref().expect("token file"), NEW);
    tokio::time::sleep(CHECK_EVERY + Duration::from_millis(100)).await;
    writer
        .append(record("2"))
        .await
        .expect("new token, both valid");
    pki.tokens(&[("write", NEW)]);
    tokio::time::sleep(CHECK_EVERY + Duration::from_millis(100)).await;
    writer.append(record("3")).await.expect("new token only");
    let stale = pki.token_client("stale", OLD);
    let message = denied(client(&nodes, &stale).append(record("x")).await);
    assert!(
        message.contains("not in this node's tokens file"),
        "{message}"
    );

    // A client certificate of a new CA is refused until the node trusts that CA too.
    let next_ca = LocalCa::create("next").expect("next ca");
    let next_dir = tempfile::tempdir().expect("tempdir");
    let issued = next_ca
        .issue("next admin", Role::Admin, &[])
        .expect("issue");
    let (cert, key) = write_pair(next_dir.path(), "admin", &issued).expect("write");
    let next_admin = Credentials {
        ca: Some(pki.ca_file()),
        cert: Some(cert),
        key: Some(key),
        token_file: None,
    };
    let message = denied(client(&nodes, &next_admin).read(0, 10).await);
    assert!(
        message.contains("refused: received fatal alert: UnknownCA"),
        "{message}"
    );
    let both = format!("{}{}", pki.ca.cert_pem(), next_ca.cert_pem());
    replace(&pki.ca_file(), &both);
    tokio::time::sleep(CHECK_EVERY + Duration::from_millis(100)).await;
    let read = client(&nodes, &next_admin)
        .read(0, 10)
        .await
        .expect("trusted now");
    assert_eq!(read.records.len(), 3);
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_but_no_auth_the_raft_service_still_takes_node_certificates_only() {
    use keel_raft::pb::raft::{Empty, raft_client::RaftClient};
    captured_logs();
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = NodeConfig::new(1, "127.0.0.1:0".parse().expect("addr"), dir.path());
    config.segment_size_bytes = 8 << 20;
    config.security = NodeSecurity {
        tls: Some(pki.node(1, None)),
        auth: None,
        insecure: false,
    };
    let node = RaftNode::start(config).await.expect("node starts");
    let addr = node.addr().to_string();
    let tls_only = Credentials {
        ca: Some(pki.ca_file()),
        ..Credentials::none()
    };
    // Without [auth], clients need no credential beyond TLS.
    let mut client =
        KeelClient::with_credentials(std::slice::from_ref(&addr), &tls_only).expect("client");
    client
        .init(&BTreeMap::from([(1, addr.clone())]))
        .await
        .expect("init");
    client.append(record("open")).await.expect("append");

    let read_index = |credentials: Credentials| {
        let addr = addr.clone();
        async move {
            let mut client =
                KeelClient::with_credentials(std::slice::from_ref(&addr), &credentials)
                    .expect("client");
            let channel = client.raw_channel(&addr).expect("channel");
            RaftClient::new(channel).read_index(Empty {}).await
        }
    };
    let anonymous = read_index(tls_only.clone())
        .await
        .expect_err("no certificate");
    assert_eq!(
        anonymous.code(),
        tonic::Code::Unauthenticated,
        "{anonymous:?}"
    );
    let writer = read_index(pki.cert_client(Role::Write))
        .await
        .expect_err("a client certificate");
    assert_eq!(writer.code(), tonic::Code::PermissionDenied, "{writer:?}");
    let files = pki.node(2, None);
    let peer = Credentials {
        ca: Some(files.ca),
        cert: Some(files.cert),
        key: Some(files.key),
        token_file: None,
    };
    let answer = read_index(peer).await.expect("a node certificate");
    assert!(answer.into_inner().has_read_index);
    node.shutdown().await;
}
