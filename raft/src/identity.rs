//! A data directory's identity: which node and cluster it belongs to, and its incarnation.
//!
//! Written once when the directory is created (synced, via rename), with a CRC32C of its
//! lines, so a damaged identity is refused rather than read as another incarnation. A node
//! refuses a directory of another node or cluster, so a misplaced directory loses nothing.

use std::collections::hash_map::RandomState;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};
use crate::types::NodeId;

const FILE: &str = "IDENTITY";
const HEADER: &str = "keel data directory v3";
/// Earlier formats: v1 (no checksum) and v2, both from before cluster-assigned client
/// sessions. Refused: their logs' deduplicated writes name client-chosen ids, which this
/// version would apply differently (see [`crate::session`]).
const HEADERS_BEFORE_SESSIONS: [&str; 2] = ["keel data directory v1", "keel data directory v2"];

/// Who a data directory belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The node's id.
    pub node_id: NodeId,
    /// The cluster's name.
    pub cluster: String,
    /// Random id drawn when the directory was created.
    pub incarnation: u64,
}

impl Identity {
    fn render(&self) -> String {
        let body = format!(
            "{HEADER}\nnode_id = {}\ncluster = {}\nincarnation = {:016x}\n",
            self.node_id, self.cluster, self.incarnation
        );
        let checksum = crc32c::crc32c(body.as_bytes());
        format!("{body}checksum = {checksum:08x}\n")
    }

    /// The identity in `text`; `None` unless it is well formed and its checksum matches.
    fn parse(text: &str) -> Option<Self> {
        let (before_checksum, checksum_line) = text.strip_suffix('\n')?.rsplit_once('\n')?;
        // The body with its final newline, as rendered.
        let body = &text[..=before_checksum.len()];
        let hex = checksum_line.strip_prefix("checksum = ")?;
        let checksum = u32::from_str_radix(hex, 16).ok()?;
        // Exactly as rendered: `from_str_radix` would also take upper case and a sign.
        if format!("{checksum:08x}") != hex || crc32c::crc32c(body.as_bytes()) != checksum {
            return None;
        }
        let mut lines = body.lines();
        if lines.next()? != HEADER {
            return None;
        }
        Self::parse_fields(&mut lines)
    }

    /// The three `key = value` lines, and nothing after them.
    fn parse_fields<'a>(lines: &mut impl Iterator<Item = &'a str>) -> Option<Self> {
        let mut field = |name: &str| {
            let line = lines.next()?;
            let (key, value) = line.split_once(" = ")?;
            (key == name).then(|| value.to_owned())
        };
        let node_id = field("node_id")?.parse().ok()?;
        let cluster = field("cluster")?;
        let incarnation = u64::from_str_radix(&field("incarnation")?, 16).ok()?;
        if lines.next().is_some() {
            return None;
        }
        Some(Self {
            node_id,
            cluster,
            incarnation,
        })
    }
}

/// A fresh random incarnation (std's randomly keyed hasher, mixed with the process id).
fn random_incarnation() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish().max(1)
}

/// Writes `identity` durably: a temporary file, synced, renamed over `IDENTITY`, the
/// directory synced.
fn write(data_dir: &Path, identity: &Identity) -> Result<()> {
    let temp = data_dir.join("IDENTITY.tmp");
    let written = fs::File::create(&temp).and_then(|mut file| {
        file.write_all(identity.render().as_bytes())?;
        file.sync_all()
    });
    written.map_err(Error::io("write", &temp))?;
    fs::rename(&temp, data_dir.join(FILE)).map_err(Error::io("rename", &temp))?;
    fs::File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(Error::io("sync directory", data_dir))
}

/// Reads `data_dir`'s identity (a first-format file is rewritten with a checksum), creating
/// it for a new directory; refuses another node's or
/// cluster's directory.
///
/// # Errors
/// [`Error::ForeignDataDir`] for a mismatch, [`Error::Invalid`] for an unreadable identity
/// file, [`Error::Io`] on a file error.
pub fn open_or_create(data_dir: &Path, node_id: NodeId, cluster: &str) -> Result<Identity> {
    let path = data_dir.join(FILE);
    let expected = format!("node {node_id} of cluster {cluster:?}");
    match fs::read_to_string(&path) {
        Ok(text) => {
            if let Some(header) = HEADERS_BEFORE_SESSIONS
                .iter()
                .find(|header| text.lines().next() == Some(**header))
            {
                return Err(Error::Invalid {
                    what: "data directory format",
                    reason: format!(
                        "{} says {header:?}: a directory written before cluster-assigned client sessions (format 3), whose log this version would apply differently. Move it aside, start the node with an empty directory and `keel repair` it, or form a new cluster",
                        path.display()
                    ),
                });
            }
            let identity = Identity::parse(&text).ok_or_else(|| Error::Invalid {
                what: "data directory identity",
                reason: format!(
                    "{} is not a Keel identity file or is damaged (its checksum does not match): repair the node (`keel repair`)",
                    path.display()
                ),
            })?;
            if identity.node_id != node_id || identity.cluster != cluster {
                return Err(Error::ForeignDataDir {
                    dir: data_dir.to_owned(),
                    found: format!(
                        "node {} of cluster {:?}",
                        identity.node_id, identity.cluster
                    ),
                    expected,
                });
            }
            Ok(identity)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let non_empty = fs::read_dir(data_dir)
                .map_err(Error::io("list", data_dir))?
                .next()
                .is_some();
            if non_empty {
                return Err(Error::ForeignDataDir {
                    dir: data_dir.to_owned(),
                    found: "files without a Keel identity".to_owned(),
                    expected,
                });
            }
            let identity = Identity {
                node_id,
                cluster: cluster.to_owned(),
                incarnation: random_incarnation(),
            };
            write(data_dir, &identity)?;
            Ok(identity)
        }
        Err(error) => Err(Error::io("read", path)(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_created_once_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = open_or_create(dir.path(), 3, "prod").expect("created");
        let again = open_or_create(dir.path(), 3, "prod").expect("reopened");
        assert_eq!(first, again);
        assert_ne!(first.incarnation, 0);
    }

    #[test]
    fn another_nodes_or_clusters_directory_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        open_or_create(dir.path(), 3, "prod").expect("created");
        assert!(matches!(
            open_or_create(dir.path(), 4, "prod"),
            Err(Error::ForeignDataDir { .. })
        ));
        assert!(matches!(
            open_or_create(dir.path(), 3, "staging"),
            Err(Error::ForeignDataDir { .. })
        ));
    }

    #[test]
    fn every_single_bit_flip_of_an_identity_is_refused() {
        let text = Identity {
            node_id: 2,
            cluster: "keel".to_owned(),
            incarnation: 0x2000_031f_e50f_87f4,
        }
        .render();
        assert!(Identity::parse(&text).is_some());
        let bytes = text.as_bytes();
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.to_vec();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let parsed = std::str::from_utf8(&flipped).ok().and_then(Identity::parse);
            assert!(parsed.is_none(), "flip of bit {bit} accepted: {parsed:?}");
        }
    }

    #[test]
    fn directories_of_formats_before_sessions_are_refused_naming_their_format() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v1 =
            "keel data directory v1\nnode_id = 3\ncluster = prod\nincarnation = 00000000000000ab\n";
        let v2 = Identity {
            node_id: 3,
            cluster: "prod".to_owned(),
            incarnation: 0xab,
        }
        .render()
        .replace(HEADER, "keel data directory v2");
        for (text, format) in [(v1.to_owned(), "v1"), (v2, "v2")] {
            fs::write(dir.path().join(FILE), &text).expect("write");
            let error = open_or_create(dir.path(), 3, "prod").expect_err("refused");
            let message = error.to_string();
            assert!(
                message.contains(&format!("keel data directory {format}"))
                    && message.contains("client sessions"),
                "{message}"
            );
            // Nothing was rewritten.
            assert_eq!(
                fs::read_to_string(dir.path().join(FILE)).expect("read"),
                text
            );
        }
    }

    #[test]
    fn a_directory_with_unknown_files_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("something"), b"x").expect("write");
        assert!(matches!(
            open_or_create(dir.path(), 1, "c"),
            Err(Error::ForeignDataDir { .. })
        ));
        fs::write(dir.path().join(FILE), b"garbage").expect("write");
        assert!(matches!(
            open_or_create(dir.path(), 1, "c"),
            Err(Error::Invalid { .. })
        ));
    }
}
