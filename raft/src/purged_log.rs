//! Testing: a copy of every range of the Raft log before it is purged, so a failure harness
//! can read back the whole committed log of a run, not only the suffix each node keeps
//! behind its snapshot (config `purged_log`, `None` in production).
//!
//! Each purge writes one file `<first>-<last>.purged` (20-digit indexes) in the copy's
//! directory, holding the purged entries this node knows committed, in order: written as a
//! temporary file, synced, renamed into place and the directory synced, so a kill leaves
//! either the whole file or none. A file starts with [`MAGIC`]; each entry is
//!
//! ```text
//! index u64 · term u64 · kind u8 (0 blank, 1 normal, 2 membership) · session u64 · seq u64
//! · len u32 · len bytes (a normal entry's command; a membership's voter sets, as text)
//! · crc32c u32 of everything before it in the entry
//! ```
//!
//! all little-endian. [`read_copies`] reads every file of a directory back and
//! [`read_log`] a stopped node's live log, both as [`LoggedEntry`]s.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use keel_log::Log;

use crate::record::{StoredPayload, entry_from_record};
use crate::types::{Entry, EntryPayload};

/// The first bytes of a copy file (format version 1).
pub const MAGIC: &[u8; 8] = b"KEELPRG1";

/// A Raft entry as a harness reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedEntry {
    /// Its index.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// What it carries.
    pub payload: LoggedPayload,
}

/// What a [`LoggedEntry`] carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoggedPayload {
    /// A leader's blank entry.
    Blank,
    /// A client write: the writer's session and sequence, and the application command
    /// (its first byte the [`AppTag`](crate::multiplex::AppTag)).
    Normal {
        /// The writer's session.
        session: u64,
        /// The writer's sequence number.
        seq: u64,
        /// The command.
        command: Vec<u8>,
    },
    /// A membership change: its voter sets, as text.
    Membership(String),
}

impl LoggedEntry {
    fn from_entry(entry: &Entry) -> Self {
        let payload = match &entry.payload {
            EntryPayload::Blank => LoggedPayload::Blank,
            EntryPayload::Normal(request) => LoggedPayload::Normal {
                session: request.session,
                seq: request.seq,
                command: request.command.to_vec(),
            },
            EntryPayload::Membership(membership) => {
                LoggedPayload::Membership(format!("{:?}", membership.get_joint_config()))
            }
        };
        Self {
            index: entry.log_id.index,
            term: entry.log_id.leader_id.term,
            payload,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        let (kind, session, seq, bytes): (u8, u64, u64, &[u8]) = match &self.payload {
            LoggedPayload::Blank => (0, 0, 0, &[]),
            LoggedPayload::Normal {
                session,
                seq,
                command,
            } => (1, *session, *seq, command),
            LoggedPayload::Membership(text) => (2, 0, 0, text.as_bytes()),
        };
        out.extend_from_slice(&self.index.to_le_bytes());
        out.extend_from_slice(&self.term.to_le_bytes());
        out.push(kind);
        out.extend_from_slice(&session.to_le_bytes());
        out.extend_from_slice(&seq.to_le_bytes());
        let len = u32::try_from(bytes.len()).expect("an entry is below 4 GiB");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(bytes);
        let crc = crc32c::crc32c(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }
}

/// Where purged ranges are copied to.
#[derive(Debug, Clone)]
pub struct PurgedCopy {
    dir: PathBuf,
}

impl PurgedCopy {
    /// Copies into `dir` (created if missing).
    ///
    /// # Errors
    /// Creating the directory.
    pub fn new(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    /// Copies the entries of `log` from its first up to `upto` (inclusive), durably.
    pub(crate) fn copy(&self, log: &Log<StoredPayload>, upto: u64) -> io::Result<()> {
        let state = log.state().map_err(|e| io::Error::other(e.to_string()))?;
        let Some(first) = state.first_index.filter(|&first| first <= upto) else {
            return Ok(());
        };
        let mut bytes = MAGIC.to_vec();
        for record in log.reader().range(first..=upto) {
            let record = record.map_err(|e| io::Error::other(e.to_string()))?;
            let entry = entry_from_record(record).map_err(|e| io::Error::other(e.to_string()))?;
            LoggedEntry::from_entry(&entry).encode(&mut bytes);
        }
        let name = format!("{first:020}-{upto:020}.purged");
        let temporary = self.dir.join(format!("{name}.tmp"));
        let mut file = BufWriter::new(File::create(&temporary)?);
        file.write_all(&bytes)?;
        file.into_inner()
            .map_err(io::IntoInnerError::into_error)?
            .sync_data()?;
        std::fs::rename(&temporary, self.dir.join(name))?;
        File::open(&self.dir)?.sync_all()
    }
}

/// Why a copy or a log could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum ReadBackError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A copy file is not in this format, or an entry in it is damaged.
    #[error("{path}: {what}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The live log could not be opened or read.
    #[error("the log in {path}: {source}")]
    Log {
        /// The log directory.
        path: PathBuf,
        /// keel-raft's error.
        source: Box<crate::Error>,
    },
}

/// Every entry of every copy file in `dir`, in file-name order (a missing directory holds
/// none).
///
/// # Errors
/// [`ReadBackError`] for an unreadable or damaged file.
pub fn read_copies(dir: &Path) -> Result<Vec<LoggedEntry>, ReadBackError> {
    let io_error = |path: &Path| {
        let path = path.to_owned();
        move |source| ReadBackError::Io { path, source }
    };
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|entry| entry.map(|e| e.path()))
            .collect::<io::Result<_>>()
            .map_err(io_error(dir))?,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(io_error(dir)(error)),
    };
    paths.retain(|path| path.extension().is_some_and(|ext| ext == "purged"));
    paths.sort();
    let mut entries = Vec::new();
    for path in paths {
        let bytes = std::fs::read(&path).map_err(io_error(&path))?;
        let damaged = |what| ReadBackError::Damaged {
            path: path.clone(),
            what,
        };
        let (first, last) =
            range_of(&path).ok_or_else(|| damaged("not named <first>-<last>".to_owned()))?;
        let mut file_entries = Vec::new();
        decode_file(&bytes, &mut file_entries).map_err(damaged)?;
        if !file_entries.iter().map(|e| e.index).eq(first..=last) {
            return Err(damaged(format!(
                "does not hold exactly the entries {first}..={last}"
            )));
        }
        entries.extend(file_entries);
    }
    Ok(entries)
}

/// The index range a copy file's name says it holds.
fn range_of(path: &Path) -> Option<(u64, u64)> {
    let stem = path.file_stem()?.to_str()?;
    let (first, last) = stem.split_once('-')?;
    Some((first.parse().ok()?, last.parse().ok()?))
}

/// Reads fixed-size pieces off the front of a byte slice.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let piece = self
            .bytes
            .get(self.at..self.at + n)
            .ok_or("truncated entry")?;
        self.at += n;
        Ok(piece)
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
}

fn decode_file(bytes: &[u8], out: &mut Vec<LoggedEntry>) -> Result<(), String> {
    let entries = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or("not a purged-log copy (format version 1)")?;
    let mut cursor = Cursor {
        bytes: entries,
        at: 0,
    };
    while cursor.at < entries.len() {
        let start = cursor.at;
        let index = cursor.u64()?;
        let term = cursor.u64()?;
        let kind = cursor.take(1)?[0];
        let session = cursor.u64()?;
        let seq = cursor.u64()?;
        let len = cursor.u32()? as usize;
        let body = cursor.take(len)?.to_vec();
        let covered = &entries[start..cursor.at];
        if crc32c::crc32c(covered) != cursor.u32()? {
            return Err(format!("entry {index}: checksum mismatch"));
        }
        let payload = match kind {
            0 => LoggedPayload::Blank,
            1 => LoggedPayload::Normal {
                session,
                seq,
                command: body,
            },
            2 => LoggedPayload::Membership(
                String::from_utf8(body).map_err(|_| format!("entry {index}: bad membership"))?,
            ),
            other => return Err(format!("entry {index}: unknown kind {other}")),
        };
        out.push(LoggedEntry {
            index,
            term,
            payload,
        });
    }
    Ok(())
}

/// Every entry of the Raft log in `log_dir` (a stopped node's `<data_dir>/log`).
///
/// # Errors
/// [`ReadBackError::Log`] if the log cannot be opened (a running node holds its lock) or
/// an entry cannot be read.
pub fn read_log(log_dir: &Path) -> Result<Vec<LoggedEntry>, ReadBackError> {
    let failed = |source: crate::Error| ReadBackError::Log {
        path: log_dir.to_owned(),
        source: Box::new(source),
    };
    let log = Log::<StoredPayload>::open(log_dir, keel_log::Options::default())
        .map_err(|e| failed(e.into()))?;
    log.reader()
        .range(..)
        .map(|record| {
            let record = record.map_err(|e| failed(e.into()))?;
            let entry = entry_from_record(record).map_err(|e| failed(e.into()))?;
            Ok(LoggedEntry::from_entry(&entry))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, payload: LoggedPayload) -> LoggedEntry {
        LoggedEntry {
            index,
            term: 3,
            payload,
        }
    }

    fn encoded(entries: &[LoggedEntry]) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        for entry in entries {
            entry.encode(&mut bytes);
        }
        bytes
    }

    #[test]
    fn entries_round_trip_through_a_copy_file() {
        let entries = vec![
            entry(7, LoggedPayload::Blank),
            entry(
                8,
                LoggedPayload::Normal {
                    session: 4,
                    seq: 9,
                    command: vec![1, 2, 3],
                },
            ),
            entry(9, LoggedPayload::Membership("[{1, 2, 3}]".into())),
        ];
        let mut read = Vec::new();
        decode_file(&encoded(&entries), &mut read).unwrap();
        assert_eq!(read, entries);
    }

    #[test]
    fn a_purged_range_is_copied_and_the_rest_stays_in_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log_dir = dir.path().join("log");
        let log = Log::<StoredPayload>::open(&log_dir, keel_log::Options::default()).unwrap();
        let payloads: Vec<_> = (0..6u64)
            .map(|i| {
                keel_log::Encoded::new(&StoredPayload::Normal {
                    session: 1,
                    seq: i,
                    command: vec![1, u8::try_from(i).unwrap()],
                })
                .unwrap()
            })
            .collect();
        let entries: Vec<_> = (1..)
            .zip(&payloads)
            .map(|(index, payload)| keel_log::Entry {
                id: keel_log::LogId::new(2, index),
                payload,
            })
            .collect();
        log.append(&entries).unwrap().ticket.wait().unwrap();
        let copy = PurgedCopy::new(dir.path().join("purged")).unwrap();
        copy.copy(&log, 4).unwrap();
        log.purge_upto(keel_log::LogId::new(2, 4)).unwrap();
        // A second purge copies only what the log still holds.
        copy.copy(&log, 5).unwrap();
        log.purge_upto(keel_log::LogId::new(2, 5)).unwrap();
        drop(log);
        let copied = read_copies(&dir.path().join("purged")).unwrap();
        let live = read_log(&log_dir).unwrap();
        let indexes: Vec<u64> = copied.iter().chain(&live).map(|e| e.index).collect();
        assert_eq!(indexes, [1, 2, 3, 4, 5, 6]);
        assert_eq!(
            copied[2].payload,
            LoggedPayload::Normal {
                session: 1,
                seq: 2,
                command: vec![1, 2]
            }
        );
        assert!(copied.iter().chain(&live).all(|e| e.term == 2));
    }

    #[test]
    fn a_flipped_bit_or_a_cut_is_refused_with_the_entry() {
        let mut bytes = encoded(&[entry(
            8,
            LoggedPayload::Normal {
                session: 4,
                seq: 9,
                command: vec![1, 2, 3],
            },
        )]);
        let last = bytes.len() - 5;
        bytes[last] ^= 1;
        let error = decode_file(&bytes, &mut Vec::new()).unwrap_err();
        assert!(error.contains("entry 8: checksum"), "{error}");
        let whole = encoded(&[entry(8, LoggedPayload::Blank)]);
        let error = decode_file(&whole[..whole.len() - 2], &mut Vec::new()).unwrap_err();
        assert_eq!(error, "truncated entry");
        assert!(decode_file(b"KEELPRG0", &mut Vec::new()).is_err());
    }
}
