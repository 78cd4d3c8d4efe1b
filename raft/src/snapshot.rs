//! Snapshot files: written whole, checksummed, fsynced with their directory, then renamed
//! into place, so a snapshot either exists complete or not at all.
//!
//! ```text
//! offset 0   "KEELSNP4"                      magic and format version
//!        8   u32 LE header length H
//!       12   header (rkyv SnapshotHeader)    last log id, membership, client sessions, values,
//!                                            the cluster identity
//!   12 + H   values section (V bytes)        count × (index u64, offset u32, len u32) LE,
//!                                            sorted; then, in a transfer, their bytes in order
//!   12+H+V   application bytes               Application::write_snapshot
//!  end - 12  u64 LE length of all before the trailer, u32 LE CRC32C of all before it
//! ```
//!
//! The values section lists the value references the application's state holds
//! ([`crate::values::ValueRef`]). A node's own snapshot lists them only (their bytes are in
//! its value files); a snapshot sent to another node carries their bytes too ("inline"), built for
//! the transfer by [`SnapshotFile::transfer`], and the receiver writes them into its value
//! files. Format 3 (no identity) is read as a snapshot of a cluster that committed none yet,
//! format 2 (no values section either) as one that also references no values.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use std::sync::Arc;

use rkyv::{Archive, Deserialize, Serialize};

use crate::cluster_identity::CommittedIdentity;
use crate::error::{DecodeError, Error, Result};
use crate::record::StoredMembershipConfig;
use crate::values::{ValueError, ValueStore};

mod read;

pub(crate) use read::{encode_refs, inline_values, open_body, open_values, verify};

const MAGIC: &[u8; 8] = b"KEELSNP4";
/// Format 3: no cluster identity. Read as a snapshot of a cluster that committed none yet.
const MAGIC_V3: &[u8; 8] = b"KEELSNP3";
/// Format 2: no values section. Read as a snapshot whose state references no values.
const MAGIC_V2: &[u8; 8] = b"KEELSNP2";
/// Bytes of one reference in the values section.
const REF_LEN: u64 = 16;
/// [`REF_LEN`], as a length in memory.
const REF_BYTES: usize = 16;
/// Format 1: sessions under ids the clients chose. Refused: its sessions cannot be carried
/// into cluster-assigned ones (see [`crate::session`]).
const MAGIC_V1: &[u8; 8] = b"KEELSNP1";
const TRAILER_LEN: u64 = 12;
/// Largest snapshot header accepted: sessions and membership, never the application state.
pub const HEADER_MAX_BYTES: u32 = 64 * 1024 * 1024;
/// Snapshot file suffix.
const SUFFIX: &str = "snap";

/// What a snapshot file says besides the application state.
#[derive(Debug, Clone, Archive, Serialize, Deserialize)]
pub(crate) struct SnapshotHeader {
    /// Last applied log id `(term, index)`.
    pub(crate) last_log_id: Option<(u64, u64)>,
    /// Id of the entry that set the membership.
    pub(crate) membership_log_id: Option<(u64, u64)>,
    /// The membership at `last_log_id`.
    pub(crate) membership: StoredMembershipConfig,
    /// Client sessions ([`crate::session`]): `(session id, last applied seq (0: none), its
    /// response, index of that write (of the registration before any))`.
    pub(crate) sessions: Vec<crate::session::StoredSession>,
    /// The values section.
    pub(crate) values: SnapshotValues,
    /// The cluster's identity, once committed ([`crate::cluster_identity`]).
    pub(crate) identity: Option<CommittedIdentity>,
}

/// What a snapshot's values section holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub(crate) struct SnapshotValues {
    /// The value files of the node that wrote it cover Raft indexes up to here.
    pub(crate) covered: Option<u64>,
    /// References listed.
    pub(crate) count: u64,
    /// Whether their bytes follow the references (a transfer).
    pub(crate) inline: bool,
    /// Bytes of the section.
    pub(crate) section_bytes: u64,
}

/// A format 3 header: a format 4 one without the cluster identity.
#[derive(Debug, Archive, Serialize, Deserialize)]
struct SnapshotHeaderV3 {
    last_log_id: Option<(u64, u64)>,
    membership_log_id: Option<(u64, u64)>,
    membership: StoredMembershipConfig,
    sessions: Vec<crate::session::StoredSession>,
    values: SnapshotValues,
}

/// A format 2 header: a format 3 one without values.
#[derive(Debug, Archive, Serialize, Deserialize)]
struct SnapshotHeaderV2 {
    last_log_id: Option<(u64, u64)>,
    membership_log_id: Option<(u64, u64)>,
    membership: StoredMembershipConfig,
    sessions: Vec<crate::session::StoredSession>,
}

impl From<SnapshotHeaderV2> for SnapshotHeaderV3 {
    /// Format 2 had no values section: a state that references no values.
    fn from(old: SnapshotHeaderV2) -> Self {
        Self {
            last_log_id: old.last_log_id,
            membership_log_id: old.membership_log_id,
            membership: old.membership,
            sessions: old.sessions,
            values: SnapshotValues::default(),
        }
    }
}

impl From<SnapshotHeaderV3> for SnapshotHeader {
    /// Format 3 had no identity: a cluster that committed none yet.
    fn from(old: SnapshotHeaderV3) -> Self {
        Self {
            last_log_id: old.last_log_id,
            membership_log_id: old.membership_log_id,
            membership: old.membership,
            sessions: old.sessions,
            values: old.values,
            identity: None,
        }
    }
}

/// A complete snapshot file on disk (the data openraft moves between state machines), and
/// the value store its references are read from when it is sent to another node.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    /// Path of the file.
    pub path: PathBuf,
    /// Where the values it references are (`None`: a received file, which carries them).
    pub values: Option<Arc<ValueStore>>,
}

impl PartialEq for SnapshotFile {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
    }
}

impl Eq for SnapshotFile {}

impl SnapshotFile {
    /// A file that carries its values, or references none.
    pub fn received(path: PathBuf) -> Self {
        Self { path, values: None }
    }

    /// The file to send to another node: this one when it carries its values or references
    /// none, else a temporary copy beside it carrying them (read from `values`), removed
    /// when the [`Transfer`] is dropped. Takes time in proportion to the values.
    ///
    /// # Errors
    /// [`Error::Io`] and [`Error::Decode`] reading it or writing the copy, among them a
    /// value that cannot be read.
    pub fn transfer(&self) -> Result<Transfer> {
        let dir = self.path.parent().unwrap_or(Path::new(".")).to_owned();
        SnapshotDir { dir }.transfer(self)
    }
}

/// A snapshot file to send: the node's own when it carries or references no values, else a
/// temporary copy carrying them, removed when this is dropped.
#[derive(Debug)]
pub struct Transfer {
    /// The file to send.
    pub path: PathBuf,
    temporary: bool,
}

impl Drop for Transfer {
    fn drop(&mut self) {
        if self.temporary {
            drop(fs::remove_file(&self.path));
        }
    }
}

/// CRC32C over everything written through it, and the count of bytes.
struct Checksummed<W> {
    inner: W,
    crc: u32,
    len: u64,
}

impl<W: Write> Write for Checksummed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The directory of a node's snapshots.
#[derive(Debug, Clone)]
pub struct SnapshotDir {
    dir: PathBuf,
}

impl SnapshotDir {
    /// Opens (creating) `dir` and removes leftover temporary files.
    ///
    /// # Errors
    /// [`Error::Io`] when the directory cannot be created or listed.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(Error::io("create", &dir))?;
        for entry in fs::read_dir(&dir).map_err(Error::io("list", &dir))? {
            let path = entry.map_err(Error::io("list", &dir))?.path();
            if path.extension().is_some_and(|ext| ext == "tmp") {
                fs::remove_file(&path).map_err(Error::io("remove", &path))?;
            }
        }
        Ok(Self { dir })
    }

    /// A fresh temporary path in this directory, for an incoming transfer.
    pub fn temp_path(&self, label: &str) -> PathBuf {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.dir
            .join(format!("{label}-{}-{n}.tmp", std::process::id()))
    }

    /// Writes a snapshot: header, the values section from `write_values` (exactly
    /// `header.values.section_bytes`), then the application's bytes from `write_app`; syncs
    /// the file, renames it to its final name, syncs the directory and removes older
    /// snapshots.
    ///
    /// # Errors
    /// [`Error::Io`] on any file error; nothing is left under the final name then.
    pub(crate) fn write(
        &self,
        header: &SnapshotHeader,
        write_values: impl FnOnce(&mut dyn Write) -> io::Result<()>,
        write_app: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<SnapshotFile> {
        let temp = self.write_temporary("build", header, write_values, write_app)?;
        let path = self.final_path(header.last_log_id);
        fs::rename(&temp, &path).map_err(Error::io("rename", &temp))?;
        sync_dir(&self.dir)?;
        self.remove_all_but(&path)?;
        Ok(SnapshotFile::received(path))
    }

    /// Writes a complete, synced snapshot file under a temporary name; returns its path.
    fn write_temporary(
        &self,
        label: &str,
        header: &SnapshotHeader,
        write_values: impl FnOnce(&mut dyn Write) -> io::Result<()>,
        write_app: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<PathBuf> {
        let temp = self.temp_path(label);
        let header_bytes =
            rkyv::to_bytes::<rkyv::rancor::Error>(header).map_err(|e| Error::Invalid {
                what: "snapshot header",
                reason: e.to_string(),
            })?;
        let header_len = u32::try_from(header_bytes.len())
            .ok()
            .filter(|len| *len <= HEADER_MAX_BYTES)
            .ok_or_else(|| Error::Invalid {
                what: "snapshot header",
                reason: format!("{} bytes exceeds {HEADER_MAX_BYTES}", header_bytes.len()),
            })?;
        let file = File::create(&temp).map_err(Error::io("create", &temp))?;
        let mut out = Checksummed {
            inner: BufWriter::new(file),
            crc: 0,
            len: 0,
        };
        let written = (|| {
            out.write_all(MAGIC)?;
            out.write_all(&header_len.to_le_bytes())?;
            out.write_all(&header_bytes)?;
            let section_start = out.len;
            write_values(&mut out)?;
            if out.len - section_start != header.values.section_bytes {
                return Err(io::Error::other(format!(
                    "a values section of {} bytes, its header says {}",
                    out.len - section_start,
                    header.values.section_bytes
                )));
            }
            write_app(&mut out)?;
            let (crc, len) = (out.crc, out.len);
            let mut file = out
                .inner
                .into_inner()
                .map_err(io::IntoInnerError::into_error)?;
            file.write_all(&len.to_le_bytes())?;
            file.write_all(&crc.to_le_bytes())?;
            file.sync_all()
        })();
        if let Err(error) = written {
            drop(fs::remove_file(&temp));
            return Err(Error::io("write", &temp)(error));
        }
        Ok(temp)
    }

    /// The file to send for `file`: itself when it carries its values or references none,
    /// else a temporary copy beside it carrying them, read from `file.values`.
    fn transfer(&self, file: &SnapshotFile) -> Result<Transfer> {
        let (header, refs, _) = open_values(&file.path)?;
        let store = match &file.values {
            Some(store) if !header.values.inline && !refs.is_empty() => store,
            _ => {
                return Ok(Transfer {
                    path: file.path.clone(),
                    temporary: false,
                });
            }
        };
        let mut inline = header.clone();
        inline.values.inline = true;
        // The receiver's files will cover everything up to the snapshot's index.
        inline.values.covered = header.last_log_id.map(|(_, index)| index);
        inline.values.section_bytes =
            REF_LEN * refs.len() as u64 + refs.iter().map(|at| u64::from(at.len)).sum::<u64>();
        let (_, mut app) = open_body(&file.path)?;
        let value_error = |e: ValueError| io::Error::other(e.to_string());
        let path = self.write_temporary(
            "transfer",
            &inline,
            |out| {
                out.write_all(&encode_refs(&refs))?;
                for value in store.live_values(&refs) {
                    out.write_all(&value.map_err(value_error)?.1)?;
                }
                Ok(())
            },
            |out| io::copy(&mut app, out).map(drop),
        )?;
        Ok(Transfer {
            path,
            temporary: true,
        })
    }

    /// Moves a verified snapshot file into place as the current one (rename when it is in
    /// this directory, copy otherwise), then syncs and removes older ones.
    ///
    /// # Errors
    /// [`Error::Io`] on a file error, [`Error::Decode`] when the file does not verify.
    pub(crate) fn install(&self, file: &SnapshotFile) -> Result<(SnapshotFile, SnapshotHeader)> {
        let header = verify(&file.path)?;
        let path = self.final_path(header.last_log_id);
        if file.path != path {
            if file.path.parent() == Some(self.dir.as_path()) {
                fs::rename(&file.path, &path).map_err(Error::io("rename", &file.path))?;
            } else {
                let temp = self.temp_path("copy");
                fs::copy(&file.path, &temp).map_err(Error::io("copy", &file.path))?;
                File::open(&temp)
                    .and_then(|f| f.sync_all())
                    .map_err(Error::io("sync", &temp))?;
                fs::rename(&temp, &path).map_err(Error::io("rename", &temp))?;
            }
        }
        sync_dir(&self.dir)?;
        self.remove_all_but(&path)?;
        Ok((SnapshotFile::received(path), header))
    }

    /// The newest complete snapshot, if any, with its header.
    ///
    /// # Errors
    /// [`Error::Io`] on a listing error; [`Error::Decode`] when the newest file is damaged
    /// (it was synced before it got its name, so damage is corruption, not a crash).
    pub(crate) fn current(&self) -> Result<Option<(SnapshotFile, SnapshotHeader)>> {
        let mut newest: Option<PathBuf> = None;
        for entry in fs::read_dir(&self.dir).map_err(Error::io("list", &self.dir))? {
            let path = entry.map_err(Error::io("list", &self.dir))?.path();
            if path.extension().is_some_and(|ext| ext == SUFFIX)
                && newest.as_ref().is_none_or(|n| path > *n)
            {
                newest = Some(path);
            }
        }
        let Some(path) = newest else { return Ok(None) };
        let header = verify(&path)?;
        Ok(Some((SnapshotFile::received(path), header)))
    }

    fn final_path(&self, last: Option<(u64, u64)>) -> PathBuf {
        let (term, index) = last.unwrap_or((0, 0));
        let present = u8::from(last.is_some());
        self.dir.join(format!(
            "snapshot-{present}-{index:020}-{term:020}.{SUFFIX}"
        ))
    }

    fn remove_all_but(&self, keep: &Path) -> Result<()> {
        for entry in fs::read_dir(&self.dir).map_err(Error::io("list", &self.dir))? {
            let path = entry.map_err(Error::io("list", &self.dir))?.path();
            if path != keep && path.extension().is_some_and(|ext| ext == SUFFIX) {
                fs::remove_file(&path).map_err(Error::io("remove", &path))?;
            }
        }
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("sync directory", dir))
}

fn malformed(reason: impl Into<String>) -> Error {
    Error::Decode(DecodeError::Snapshot(reason.into()))
}

#[cfg(test)]
mod tests;
