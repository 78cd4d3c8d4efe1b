//! Snapshot files: written whole, checksummed, fsynced with their directory, then renamed
//! into place, so a snapshot either exists complete or not at all.
//!
//! ```text
//! offset 0   "KEELSNP3"                      magic and format version
//!        8   u32 LE header length H
//!       12   header (rkyv SnapshotHeader)    last log id, membership, client sessions, values
//!   12 + H   values section (V bytes)        count × (index u64, offset u32, len u32) LE,
//!                                            sorted; then, in a transfer, their bytes in order
//!   12+H+V   application bytes               Application::write_snapshot
//!  end - 12  u64 LE length of all before the trailer, u32 LE CRC32C of all before it
//! ```
//!
//! The values section lists the [`ValueRef`]s the application's state holds
//! ([`crate::values`]). A node's own snapshot lists them only (their bytes are in its value
//! files); a snapshot sent to another node carries their bytes too ("inline"), built for
//! the transfer by [`SnapshotFile::transfer`], and the receiver writes them into its value
//! files. Format 2 (no values section) is read as a snapshot that references no values.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use std::sync::Arc;

use bytes::Bytes;
use rkyv::{Archive, Deserialize, Serialize};

use crate::error::{DecodeError, Error, Result};
use crate::record::StoredMembershipConfig;
use crate::values::{ValueError, ValueRef, ValueStore};

const MAGIC: &[u8; 8] = b"KEELSNP3";
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

/// A format 2 header: a format 3 one without values.
#[derive(Debug, Archive, Serialize, Deserialize)]
struct SnapshotHeaderV2 {
    last_log_id: Option<(u64, u64)>,
    membership_log_id: Option<(u64, u64)>,
    membership: StoredMembershipConfig,
    sessions: Vec<crate::session::StoredSession>,
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
    let (header, _, _) = open_values(path)?;
    Ok(header)
}

/// A snapshot's header, and a reader positioned after it; the application bytes start
/// `header.values.section_bytes` later and end at the trailer, `app_end` bytes in.
fn open_header(path: &Path) -> Result<(SnapshotHeader, BufReader<File>, u64)> {
    let file = File::open(path).map_err(Error::io("open", path))?;
    let size = file.metadata().map_err(Error::io("stat", path))?.len();
    let mut reader = BufReader::new(file);
    let mut fixed = [0u8; 12];
    reader
        .read_exact(&mut fixed)
        .map_err(|_| malformed(format!("{} is {size} bytes, too short", path.display())))?;
    if &fixed[..8] == MAGIC_V1 {
        return Err(malformed(format!(
            "{} is a format 1 snapshot (client-chosen session ids), written by a Keel before cluster-assigned sessions; this version refuses it: move the data directory aside, start the node empty and `keel repair` it",
            path.display()
        )));
    }
    let version_2 = &fixed[..8] == MAGIC_V2;
    if !version_2 && &fixed[..8] != MAGIC {
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
    let bad_header = |e: rkyv::rancor::Error| malformed(format!("{}: header: {e}", path.display()));
    let header = if version_2 {
        let old = rkyv::from_bytes::<SnapshotHeaderV2, rkyv::rancor::Error>(&header_bytes)
            .map_err(bad_header)?;
        SnapshotHeader {
            last_log_id: old.last_log_id,
            membership_log_id: old.membership_log_id,
            membership: old.membership,
            sessions: old.sessions,
            values: SnapshotValues::default(),
        }
    } else {
        rkyv::from_bytes::<SnapshotHeader, rkyv::rancor::Error>(&header_bytes)
            .map_err(bad_header)?
    };
    let app_end = size - TRAILER_LEN;
    if header.values.section_bytes > app_end - app_start {
        return Err(malformed(format!(
            "{} has a values section of {} bytes, past its end",
            path.display(),
            header.values.section_bytes
        )));
    }
    let app_len = app_end - app_start - header.values.section_bytes;
    Ok((header, reader, app_len))
}

/// Opens a verified snapshot: its header and a reader positioned at the application bytes,
/// limited to them.
///
/// # Errors
/// [`Error::Decode`] for a bad magic or header, [`Error::Io`] on a read error.
pub(crate) fn open_body(path: &Path) -> Result<(SnapshotHeader, impl Read)> {
    let (header, mut reader, app_len) = open_header(path)?;
    let section = i64::try_from(header.values.section_bytes)
        .map_err(|_| malformed(format!("{} has a values section too large", path.display())))?;
    reader
        .seek_relative(section)
        .map_err(Error::io("read", path))?;
    Ok((header, reader.take(app_len)))
}

/// Opens a snapshot's values section: its header, the references listed (checked: in
/// order, without repeats, recorded at or before the snapshot's index, and filling the
/// section with their bytes when inline), and a reader positioned at the first value's
/// bytes when inline.
///
/// # Errors
/// [`Error::Decode`] naming what is wrong; [`Error::Io`] on a read error.
pub(crate) fn open_values(path: &Path) -> Result<(SnapshotHeader, Vec<ValueRef>, impl Read)> {
    let (header, mut reader, _) = open_header(path)?;
    let values = header.values;
    let listed = values
        .count
        .checked_mul(REF_LEN)
        .filter(|len| *len <= values.section_bytes);
    let Some(listed) = listed else {
        return Err(malformed(format!(
            "{} lists {} values in a section of {} bytes",
            path.display(),
            values.count,
            values.section_bytes
        )));
    };
    let mut table = vec![0u8; usize::try_from(listed).expect("a section in memory")];
    reader
        .read_exact(&mut table)
        .map_err(Error::io("read", path))?;
    let refs = decode_refs(&table);
    let last = header.last_log_id.map_or(0, |(_, index)| index);
    let ordered = refs
        .windows(2)
        .all(|pair| (pair[0].index, pair[0].offset) < (pair[1].index, pair[1].offset));
    if !ordered || refs.iter().any(|at| at.index > last) {
        return Err(malformed(format!(
            "{}: its value references are out of order or past index {last}",
            path.display()
        )));
    }
    let bytes = refs
        .iter()
        .try_fold(0u64, |sum, at| sum.checked_add(u64::from(at.len)));
    let expected = match bytes {
        Some(bytes) if values.inline => listed.checked_add(bytes),
        Some(_) => Some(listed),
        None => None,
    };
    let Some(expected) = expected else {
        return Err(malformed(format!(
            "{}: its values' lengths overflow",
            path.display()
        )));
    };
    if expected != values.section_bytes {
        return Err(malformed(format!(
            "{}: a values section of {} bytes, its references need {expected}",
            path.display(),
            values.section_bytes
        )));
    }
    Ok((header, refs, reader.take(values.section_bytes - listed)))
}

/// Reads the bytes of `refs` (inline, in order) from `reader`, the snapshot at `path`.
pub(crate) fn inline_values<'a>(
    path: &'a Path,
    refs: &'a [ValueRef],
    mut reader: impl Read + 'a,
) -> impl Iterator<Item = std::result::Result<(ValueRef, Bytes), ValueError>> + 'a {
    refs.iter().map(move |at| {
        let mut value = vec![0u8; at.len as usize];
        reader
            .read_exact(&mut value)
            .map_err(|source| ValueError::Io {
                op: "read a snapshot's value",
                path: path.to_owned(),
                source,
            })?;
        Ok((*at, Bytes::from(value)))
    })
}

/// The values section's references, as written.
pub(crate) fn encode_refs(refs: &[ValueRef]) -> Vec<u8> {
    let mut out = Vec::with_capacity(refs.len() * REF_BYTES);
    for at in refs {
        out.extend_from_slice(&at.index.to_le_bytes());
        out.extend_from_slice(&at.offset.to_le_bytes());
        out.extend_from_slice(&at.len.to_le_bytes());
    }
    out
}

fn decode_refs(bytes: &[u8]) -> Vec<ValueRef> {
    bytes
        .chunks_exact(REF_BYTES)
        .map(|chunk| ValueRef {
            index: u64::from_le_bytes(chunk[..8].try_into().expect("8")),
            offset: u32::from_le_bytes(chunk[8..12].try_into().expect("4")),
            len: u32::from_le_bytes(chunk[12..16].try_into().expect("4")),
        })
        .collect()
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
            values: SnapshotValues::default(),
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
            .write(&header(), |_| Ok(()), |out| out.write_all(b"app"))
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
            .write(&header(), |_| Ok(()), |out| out.write_all(b"app"))
            .expect("write");
        rewrite_magic(&file.path, *MAGIC_V1);
        let error = verify(&file.path).expect_err("format 1 is refused");
        assert!(error.to_string().contains("format 1 snapshot"), "{error}");
        rewrite_magic(&file.path, *b"KEELSNPX");
        let error = verify(&file.path).expect_err("an unknown magic is refused");
        assert!(error.to_string().contains("no snapshot magic"), "{error}");
    }

    /// A format 2 file (no values section) reads as a snapshot referencing no values, its
    /// header and application bytes intact.
    #[test]
    fn a_format_2_snapshot_is_read_as_one_without_values() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("old.snap");
        let old = SnapshotHeaderV2 {
            last_log_id: Some((2, 9)),
            membership_log_id: None,
            membership: StoredMembershipConfig {
                configs: Vec::new(),
                nodes: Vec::new(),
            },
            sessions: vec![(3, 1, b"answer".to_vec(), 5)],
        };
        let header_bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&old).expect("encode");
        let mut bytes = MAGIC_V2.to_vec();
        bytes.extend_from_slice(
            &u32::try_from(header_bytes.len())
                .expect("short")
                .to_le_bytes(),
        );
        bytes.extend_from_slice(&header_bytes);
        bytes.extend_from_slice(b"app");
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&crc.to_le_bytes());
        fs::write(&path, &bytes).expect("write");
        let verified = verify(&path).expect("a format 2 snapshot is read");
        assert_eq!(verified.values, SnapshotValues::default());
        assert_eq!(verified.sessions, old.sessions);
        let (_, mut app) = open_body(&path).expect("open body");
        let mut read = Vec::new();
        app.read_to_end(&mut read).expect("read");
        assert_eq!(read, b"app");
    }

    #[test]
    fn a_values_section_round_trips_and_one_that_disagrees_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let snapshots = SnapshotDir::open(dir.path()).expect("open");
        let refs = [
            ValueRef {
                index: 3,
                offset: 1,
                len: 4,
            },
            ValueRef {
                index: 7,
                offset: 0,
                len: 2,
            },
        ];
        let mut with_values = header();
        with_values.values = SnapshotValues {
            covered: Some(9),
            count: 2,
            inline: true,
            section_bytes: 32 + 6,
        };
        let file = snapshots
            .write(
                &with_values,
                |out| {
                    out.write_all(&encode_refs(&refs))?;
                    out.write_all(b"abcdxy")
                },
                |out| out.write_all(b"app"),
            )
            .expect("write");
        let (header, listed, reader) = open_values(&file.path).expect("values");
        assert_eq!(
            (header.values, listed.as_slice()),
            (with_values.values, &refs[..])
        );
        let values: Vec<(ValueRef, Bytes)> = inline_values(&file.path, &listed, reader)
            .collect::<std::result::Result<_, _>>()
            .expect("inline values");
        assert_eq!(values[0].1, "abcd");
        assert_eq!(values[1].1, "xy");
        let (_, mut app) = open_body(&file.path).expect("open body");
        let mut read = Vec::new();
        app.read_to_end(&mut read).expect("read");
        assert_eq!(read, b"app");
        // A section whose references do not fill it: refused.
        let mut short = with_values.clone();
        short.values.section_bytes = 32 + 5;
        let file = snapshots
            .write(
                &short,
                |out| {
                    out.write_all(&encode_refs(&refs))?;
                    out.write_all(b"abcdx")
                },
                |out| out.write_all(b"app"),
            )
            .expect("write");
        let error = verify(&file.path).expect_err("a section that disagrees");
        assert!(
            error.to_string().contains("its references need 38"),
            "{error}"
        );
    }
}
