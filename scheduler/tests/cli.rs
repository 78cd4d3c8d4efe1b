//! The `keel` program refuses bad input with a clear message and touches nothing.

use std::path::Path;
use std::process::Command;

/// `keel args` run to its end, logging errors only.
fn run_keel(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("run keel")
}

/// Whether `keel args` succeeded, and what it printed on standard error.
fn keel(args: &[&str]) -> (bool, String) {
    let output = run_keel(args);
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Whether `keel args` succeeded, and what it printed on standard output.
fn keel_stdout(args: &[&str]) -> (bool, String) {
    let output = run_keel(args);
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// `keel status` of the cluster in `data_arg` once every node reports one identity, other
/// than `not` (polled for 10 s), and that identity; the last output and `None` if never.
fn status_with_one_identity(data_arg: &str, not: Option<&str>) -> (String, Option<String>) {
    let mut last = String::new();
    for _ in 0..100 {
        let (_, status) = keel_stdout(&["status", "--data-dir", data_arg]);
        let identities: Vec<&str> = status
            .lines()
            .filter_map(|line| line.strip_prefix("cluster identity: "))
            .filter(|identity| !identity.starts_with("none"))
            .collect();
        if let [one] = identities.as_slice()
            && Some(*one) != not
        {
            let one = (*one).to_owned();
            return (status, Some(one));
        }
        last = status;
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    (last, None)
}

fn write_config(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path.to_string_lossy().into_owned()
}

#[test]
fn a_config_file_with_errors_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "unknown.toml",
            "node_id = 1\nlisten = \"127.0.0.1:0\"\ndata_dir = \"d\"\nlisen = 3\n",
            "lisen",
        ),
        ("syntax.toml", "node_id = = 1\n", "invalid configuration"),
        (
            "zero.toml",
            "node_id = 0\nlisten = \"127.0.0.1:0\"\ndata_dir = \"d\"\n",
            "node_id",
        ),
        (
            "addr.toml",
            "node_id = 1\nlisten = \"nowhere\"\ndata_dir = \"d\"\n",
            "listen",
        ),
        (
            "plaintext.toml",
            "node_id = 1\nlisten = \"0.0.0.0:0\"\ndata_dir = \"d\"\n",
            "say `insecure = true`",
        ),
        (
            "auth.toml",
            "node_id = 1\nlisten = \"127.0.0.1:0\"\ndata_dir = \"d\"\n[auth]\n",
            "[auth] needs [tls]",
        ),
        (
            "tls.toml",
            "node_id = 1\nlisten = \"127.0.0.1:0\"\ndata_dir = \"d\"\n\
             [tls]\ncert = \"missing.pem\"\nkey = \"missing.key\"\nca = \"missing-ca.pem\"\n",
            "reading the CA",
        ),
    ];
    for (name, text, needle) in cases {
        let path = write_config(dir.path(), name, text);
        let (ok, stderr) = keel(&["node", "--config", &path]);
        assert!(!ok, "{name} must be refused");
        assert!(
            stderr.contains(needle),
            "{name}: {stderr:?} should mention {needle:?}"
        );
        assert!(
            !dir.path().join("d").exists(),
            "{name}: nothing was created"
        );
    }
    let (ok, stderr) = keel(&["node", "--config", "/nonexistent/keel.toml"]);
    assert!(!ok);
    assert!(stderr.contains("/nonexistent/keel.toml"), "{stderr}");
}

/// Starts node 1 on a data directory holding `file` with `contents`; returns the directory,
/// whether `keel node` succeeded, and its stderr.
fn start_on_prepared_dir(
    file: &str,
    contents: &str,
) -> (tempfile::TempDir, std::path::PathBuf, bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    std::fs::write(data.join(file), contents).expect("prepared file");
    let text = format!(
        "node_id = 1\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n",
        data.display()
    );
    let path = write_config(dir.path(), "node.toml", &text);
    let (ok, stderr) = keel(&["node", "--config", &path]);
    (dir, data, ok, stderr)
}

#[test]
fn another_clusters_or_nodes_data_directory_is_refused() {
    let body =
        "keel data directory v3\nnode_id = 1\ncluster = other\nincarnation = 00000000000000aa\n";
    let identity = format!("{body}checksum = {:08x}\n", crc32c::crc32c(body.as_bytes()));
    let (_dir, data, ok, stderr) = start_on_prepared_dir("IDENTITY", &identity);
    assert!(!ok);
    assert!(
        stderr.contains("belongs to node 1 of cluster \"other\""),
        "{stderr}"
    );
    let listing: Vec<_> = std::fs::read_dir(&data).expect("list").collect();
    assert_eq!(
        listing.len(),
        1,
        "nothing was added to the foreign directory"
    );
}

#[test]
fn a_data_directory_marked_for_repair_is_refused() {
    let (_dir, _data, ok, stderr) =
        start_on_prepared_dir("NEEDS_REPAIR", "append: fdatasync failed");
    assert!(!ok);
    assert!(
        stderr.contains("needs repair") && stderr.contains("fdatasync failed"),
        "{stderr}"
    );
}

/// A base port for `keel dev`: it and the next two free, and the same three 100 higher
/// (metrics), a moment ago.
fn free_dev_base_port() -> u16 {
    for _ in 0..100 {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = probe.local_addr().expect("addr").port();
        drop(probe);
        let Some(top) = base.checked_add(102) else {
            continue;
        };
        let ports = [base, base + 1, base + 2, top - 2, top - 1, top];
        let held: Vec<_> = ports
            .iter()
            .filter_map(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).ok())
            .collect();
        if held.len() == ports.len() {
            return base;
        }
    }
    panic!("no free base port for keel dev");
}

/// `keel dev --tls` issues its certificates, forms its cluster over TLS with client
/// certificates required, and the client commands find them in its data directory;
/// a client with the CA but no credential is refused, saying so. `keel status` shows each
/// node's protocols and the cluster identity, which `keel identity remint` replaces.
#[test]
fn keel_dev_with_tls_serves_client_commands_that_find_its_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("dev");
    let data_arg = data.to_string_lossy().into_owned();
    let base = free_dev_base_port().to_string();
    let mut dev = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "dev",
            "--tls",
            "--data-dir",
            &data_arg,
            "--base-port",
            &base,
        ])
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("keel dev");
    let appended = (0..300).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        keel(&["append", "--data-dir", &data_arg, "over TLS"]).0
    });
    let certs = data.join("certs");
    let cluster = std::fs::read_to_string(data.join("endpoints"))
        .expect("endpoints")
        .lines()
        .collect::<Vec<_>>()
        .join(",");
    let ca = certs.join("ca.pem").to_string_lossy().into_owned();
    let anonymous = keel(&["append", "--cluster", &cluster, "--ca", &ca, "refused"]);
    let (_, records) = keel_stdout(&["read", "--data-dir", &data_arg]);
    // Read everything before the assertions, so none of them leaves `keel dev` running.
    let (before, old) = status_with_one_identity(&data_arg, None);
    let (reminted_ok, reminted) = keel_stdout(&["identity", "remint", "--data-dir", &data_arg]);
    let (_, new) = status_with_one_identity(&data_arg, old.as_deref());
    let _ = dev.kill();
    let _ = dev.wait();
    let (old, new) = (
        old.unwrap_or_else(|| panic!("no identity in\n{before}")),
        new.expect("every node applied the replacement"),
    );
    assert!(reminted_ok, "keel identity remint failed");
    assert!(
        reminted.starts_with(&format!("cluster identity is now {new} (log index "))
            && reminted.trim_end().ends_with(&format!("it replaced {old}")),
        "{reminted}"
    );
    assert!(
        before.lines().filter(|line| line.ends_with(" 1/1")).count() == 3,
        "every node reports the host and scheduler protocols it applies:\n{before}"
    );
    assert!(
        appended,
        "keel append never succeeded against keel dev --tls"
    );
    assert!(!anonymous.0, "an anonymous append was accepted");
    assert!(anonymous.1.contains("no credentials"), "{}", anonymous.1);
    assert!(
        records.contains("over TLS") && !records.contains("refused"),
        "{records}"
    );
}
