//! Snapshot files: written whole, checksummed, fsynced with their directory, then renamed
//! into place, so a snapshot either exists complete or not at all.
//!
//! ```text
//! offset 0   "KEELSNP2"                      magic and format version
//!        8   u32 LE header length H
//!       12   header (rkyv SnapshotHeader)    last log id, membership, client sessions
//!   12 + H   application bytes               Application::write_snapshot
//!  end - 12  u64 LE length of all before the trailer, u32 LE CRC32C of all before it
//! ```

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rkyv::{Archive, Deserialize, Serialize};

use crate::error::{DecodeError, Error, Result};
use crate::record::StoredMembershipConfig;

const MAGIC: &[u8; 8] = b"KEELSNP2";
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
}

/// A complete snapshot file on disk (the data openraft moves between state machines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    /// Path of the file.
    pub path: PathBuf,
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

    /// Writes a snapshot: header, then the application's bytes from `write_app`; syncs the
    /// file, renames it to its final name, syncs the directory and removes older snapshots.
    ///
    /// # Errors
    /// [`Error::Io`] on any file error; nothing is left under the final name then.
    pub(crate) fn write(
        &self,
        header: &SnapshotHeader,
        write_app: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<SnapshotFile> {
        let temp = self.temp_path("build");
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
        let path = self.final_path(header.last_log_id);
        fs::rename(&temp, &path).map_err(Error::io("rename", &temp))?;
        sync_dir(&self.dir)?;
        self.remove_all_but(&path)?;
        Ok(SnapshotFile { path })
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
        Ok((SnapshotFile { path }, header))
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
        Ok(Some((SnapshotFile { path }, header)))
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

/// Checks a snapshot file's length, checksum and header; returns the header.
///
/// # Errors
/// [`Error::Decode`] naming what is wrong, [`Error::Io`] on a read error.
pub(crate) fn verify(path: &Path) -> Result<SnapshotHeader> {
    let mut file = File::open(path).map_err(Error::io("open", path))?;
    let size = file.metadata().map_err(Error::io("stat", path))?.len();
    if size < MAGIC.len() as u64 + 4 + TRAILER_LEN {
        return Err(malformed(format!(
            "{} is {size} bytes, too short",
            path.display()
        )));
    }
    let body_len = size - TRAILER_LEN;
    let mut crc = 0u32;
    let mut reader = BufReader::new((&mut file).take(body_len));
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader.read(&mut buf).map_err(Error::io("read", path))?;
        if n == 0 {
            break;
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
    }
    let mut trailer = [0u8; 12];
    file.seek(SeekFrom::Start(body_len))
        .and_then(|_| file.read_exact(&mut trailer))
        .map_err(Error::io("read", path))?;
    let (len_bytes, crc_bytes) = trailer.split_at(8);
    let stored_len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
    let stored_crc = u32::from_le_bytes(crc_bytes.try_into().expect("4 bytes"));
    if stored_len != body_len || stored_crc != crc {
        return Err(malformed(format!(
            "{} fails its length or checksum",
            path.display()
        )));
    }
    let (header, _) = open_body(path)?;
    Ok(header)
}

/// Opens a verified snapshot: its header and a reader positioned at the application bytes,
/// limited to them.
///
/// # Errors
/// [`Error::Decode`] for a bad magic or header, [`Error::Io`] on a read error.
pub(crate) fn open_body(path: &Path) -> Result<(SnapshotHeader, impl Read)> {
    let file = File::open(path).map_err(Error::io("open", path))?;
    let size = file.metadata().map_err(Error::io("stat", path))?.len();
    let mut reader = BufReader::new(file);
    let mut fixed = [0u8; 12];
    reader
        .read_exact(&mut fixed)
        .map_err(Error::io("read", path))?;
    if &fixed[..8] == MAGIC_V1 {
        return Err(malformed(format!(
            "{} is a format 1 snapshot (client-chosen session ids), written by a Keel before cluster-assigned sessions; this version refuses it: move the data directory aside, start the node empty and `keel repair` it",
            path.display()
        )));
    }
    if &fixed[..8] != MAGIC {
        return Err(malformed(format!(
            "{} has no snapshot magic",
            path.display()
        )));
    }
    let header_len = u32::from_le_bytes(fixed[8..12].try_into().expect("4 bytes"));
    let app_start = 12 + u64::from(header_len);
    if header_len > HEADER_MAX_BYTES || app_start + TRAILER_LEN > size {
        return Err(malformed(format!(
            "{} has a header of {header_len} bytes",
            path.display()
        )));
    }
    let mut header_bytes = rkyv::util::AlignedVec::<16>::with_capacity(header_len as usize);
    header_bytes.resize(header_len as usize, 0);
    reader
        .read_exact(&mut header_bytes)
        .map_err(Error::io("read", path))?;
    let header = rkyv::from_bytes::<SnapshotHeader, rkyv::rancor::Error>(&header_bytes)
        .map_err(|e| malformed(format!("{}: header: {e}", path.display())))?;
    Ok((header, reader.take(size - TRAILER_LEN - app_start)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> SnapshotHeader {
        SnapshotHeader {
            last_log_id: Some((2, 9)),
            membership_log_id: None,
            membership: StoredMembershipConfig {
                configs: Vec::new(),
                nodes: Vec::new(),
            },
            sessions: vec![(3, 1, b"answer".to_vec(), 5)],
        }
    }

    /// Rewrites the magic of the snapshot at `path` and its checksum to match, so only the
    /// format differs.
    fn rewrite_magic(path: &Path, magic: [u8; 8]) {
        let mut bytes = fs::read(path).expect("read");
        bytes[..8].copy_from_slice(&magic);
        let body_len = bytes.len() - 12;
        let crc = crc32c::crc32c(&bytes[..body_len]);
        bytes[body_len + 8..].copy_from_slice(&crc.to_le_bytes());
        fs::write(path, bytes).expect("write");
    }

    #[test]
    fn a_snapshot_round_trips_its_header_and_application_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let snapshots = SnapshotDir::open(dir.path()).expect("open");
        let file = snapshots
            .write(&header(), |out| out.write_all(b"app"))
            .expect("write");
        let verified = verify(&file.path).expect("verify");
        assert_eq!(verified.sessions, header().sessions);
        let (_, mut app) = open_body(&file.path).expect("open body");
        let mut bytes = Vec::new();
        app.read_to_end(&mut bytes).expect("read");
        assert_eq!(bytes, b"app");
    }

    #[test]
    fn a_format_1_snapshot_is_refused_with_a_message_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let snapshots = SnapshotDir::open(dir.path()).expect("open");
        let file = snapshots
            .write(&header(), |out| out.write_all(b"app"))
            .expect("write");
        rewrite_magic(&file.path, *MAGIC_V1);
        let error = verify(&file.path).expect_err("format 1 is refused");
        assert!(error.to_string().contains("format 1 snapshot"), "{error}");
        rewrite_magic(&file.path, *b"KEELSNPX");
        let error = verify(&file.path).expect_err("an unknown magic is refused");
        assert!(error.to_string().contains("no snapshot magic"), "{error}");
    }
}
