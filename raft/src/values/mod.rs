//! Values kept on disk, not in the state machine's memory: a value is named by where it was
//! recorded ([`ValueRef`]: the Raft index of the entry that carried it and its byte range
//! in the application's command) and read back from the Raft log's mapping while the entry
//! is there, or from a value file once the log was purged behind a snapshot.
//!
//! Names are the same on every replica, so a state holding references is replicated,
//! snapshotted and digested like one holding the bytes; only where a node keeps the bytes
//! differs. The rules that keep every live value readable:
//! - the store covers a prefix of Raft indexes with value files (`covered`); a reference at
//!   or below it is read from a file, above it from the log;
//! - before the log is purged up to `upto`, [`ValueStore::relocate`] copies every live value
//!   of `covered + 1 ..= upto` from the log into a new file, synced, and only then does the
//!   coverage grow (so `covered` is never below the log's purge mark);
//! - a value no longer referenced by a published snapshot's state is never referenced again
//!   (new references name new entries or copy existing ones), so [`ValueStore::collect`]
//!   may drop it once that snapshot is published: files under half live, and small ones,
//!   are rewritten together as one file of their live values (a newer generation);
//! - a follower installing a snapshot replaces every file with one holding the snapshot's
//!   values ([`ValueStore::install`]).
//!
//! Files are `<first>-<last>-<generation>.values` in the store's directory (format in
//! `file`); a range with nothing live has no file. At open, of overlapping files the newest
//! generation wins (a rewrite whose sources were not removed yet) and files past the
//! published snapshot's coverage (written for a snapshot that was never published) are
//! removed.

mod file;
mod relocate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use rkyv::{Archive, Deserialize, Serialize};

use crate::log_store::EntryLog;
use crate::record::ArchivedStoredPayload;

use self::file::ValueFile;
pub use self::file::{MAGIC, SPARSE_EVERY};

/// Where a value was recorded: bytes `offset .. offset + len` of the command an
/// application applied at Raft index `index` (the bytes its `apply` was given).
#[derive(
    Archive,
    Serialize,
    Deserialize,
    serde::Serialize,
    serde::Deserialize,
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
)]
#[rkyv(derive(Debug, PartialEq, Eq))]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub struct ValueRef {
    /// The Raft index of the entry that carried it.
    pub index: u64,
    /// Its first byte in the application's command.
    pub offset: u32,
    /// Its length.
    pub len: u32,
}

impl ValueRef {
    fn key(&self) -> (u64, u32) {
        (self.index, self.offset)
    }
}

/// `refs` in order, one per place `(index, offset)`: the longest (a shorter reference at
/// the same place reads its prefix). What value files and snapshots list.
pub fn by_place(refs: impl IntoIterator<Item = ValueRef>) -> Vec<ValueRef> {
    let mut refs: Vec<ValueRef> = refs.into_iter().collect();
    refs.sort_unstable_by_key(|at| (at.index, at.offset, std::cmp::Reverse(at.len)));
    refs.dedup_by_key(|at| at.key());
    refs
}

/// Why a value could not be read or kept.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    /// A value file's bytes are not what was written.
    #[error("value file {}: {what}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A file operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// Neither the log nor a value file holds a value the state references: a value was
    /// lost (a bug, or a data directory changed under the node).
    #[error(
        "no value recorded at index {} offset {} ({} bytes): neither the log nor a value file holds it",
        at.index, at.offset, at.len
    )]
    Missing {
        /// The reference.
        at: ValueRef,
    },
    /// The Raft log failed.
    #[error("raft log: {0}")]
    Log(#[from] keel_log::Error),
}

/// The values of one node: its Raft log and its value files.
#[derive(Debug)]
pub struct ValueStore {
    dir: PathBuf,
    log: Arc<EntryLog>,
    /// Bytes of an entry's command before the application's own (the multiplexer's tag).
    body_offset: usize,
    files: RwLock<Files>,
    /// Held by whatever writes files (relocation, collection, installation), so they never
    /// interleave: one generation number each, and `covered` only grows between them.
    writer: Mutex<()>,
    /// Whether [`ValueStore::verify`] read every file through.
    verified: AtomicBool,
}

/// The value files, by first index; their ranges are disjoint and cover `..= covered`.
#[derive(Debug, Default)]
struct Files {
    by_first: BTreeMap<u64, Arc<ValueFile>>,
    covered: Option<u64>,
    generation: u64,
}

/// What [`ValueStore::verify`] read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Verified {
    /// Value files read.
    pub files: u64,
    /// Values checked.
    pub values: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Whether every file was read (not cancelled).
    pub complete: bool,
}

/// A file holding fewer bytes of live values than this is merged with its neighbours.
pub const SMALL_FILE_BYTES: u64 = 4 << 20;
/// A merge stops adding files past this many bytes of live values.
pub const MERGED_MAX_BYTES: u64 = 256 << 20;

/// What [`ValueStore::relocate`] or [`ValueStore::collect`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreChange {
    /// Values written into new files.
    pub values_written: u64,
    /// Their bytes.
    pub bytes_written: u64,
    /// Files removed.
    pub files_removed: u64,
}

fn file_name(first: u64, last: u64, generation: u64) -> String {
    format!("{first:020}-{last:020}-{generation:020}.values")
}

fn parse_name(name: &str) -> Option<(u64, u64, u64)> {
    let stem = name.strip_suffix(".values")?;
    let mut parts = stem.split('-').map(str::parse::<u64>);
    let (first, last, generation) = (
        parts.next()?.ok()?,
        parts.next()?.ok()?,
        parts.next()?.ok()?,
    );
    parts.next().is_none().then_some((first, last, generation))
}

impl ValueStore {
    /// Opens the value files in `dir` (created if missing) beside `log`. `covered` is the
    /// coverage the published snapshot recorded: files past it (written for a snapshot that
    /// was never published) are removed, as are leftover temporary files; of two files for
    /// one range, the newer generation is kept.
    ///
    /// # Errors
    /// [`ValueError::Corrupt`] for a file that does not check, or files whose ranges
    /// overlap otherwise; [`ValueError::Io`].
    pub(crate) fn open(
        dir: &Path,
        log: Arc<EntryLog>,
        body_offset: usize,
        covered: Option<u64>,
    ) -> Result<Self, ValueError> {
        let io = |op, path: &Path| {
            let path = path.to_owned();
            move |source| ValueError::Io { op, path, source }
        };
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        let mut found: Vec<(u64, u64, u64, PathBuf)> = Vec::new();
        let mut remove = Vec::new();
        let mut files = Files::default();
        for entry in std::fs::read_dir(dir).map_err(io("list", dir))? {
            let path = entry.map_err(io("list", dir))?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            match parse_name(name) {
                Some((first, last, generation)) => {
                    files.generation = files.generation.max(generation);
                    if covered.is_none_or(|c| last > c) {
                        remove.push(path);
                    } else {
                        found.push((first, last, generation, path));
                    }
                }
                None if path.extension().is_some_and(|ext| ext == "tmp") => remove.push(path),
                None => {
                    return Err(ValueError::Corrupt {
                        path,
                        what: "a file that is not a value file in the value directory".to_owned(),
                    });
                }
            }
        }
        // Newest first: a rewrite or merge holds every value its sources held that a
        // published state references, so an older file it overlaps is left over from a
        // stop before the sources were removed.
        found.sort_unstable_by_key(|(_, _, generation, _)| std::cmp::Reverse(*generation));
        for (first, last, _, path) in found {
            let overlaps = files
                .by_first
                .range(..=last)
                .next_back()
                .is_some_and(|(_, kept)| kept.range().1 >= first);
            if overlaps {
                remove.push(path);
                continue;
            }
            let file = ValueFile::open(&path)?;
            if file.range() != (first, last) {
                return Err(ValueError::Corrupt {
                    path,
                    what: format!(
                        "its name says {first}..={last}, its header {:?}",
                        file.range()
                    ),
                });
            }
            files.by_first.insert(first, Arc::new(file));
        }
        for path in remove {
            std::fs::remove_file(&path).map_err(io("remove", &path))?;
        }
        files.covered = covered;
        Ok(Self {
            dir: dir.to_owned(),
            log,
            body_offset,
            files: RwLock::new(files),
            writer: Mutex::new(()),
            verified: AtomicBool::new(false),
        })
    }

    /// Reads every value of the value files open now and checks it against its checksum.
    /// Opening the store checks each file's header and table only (its cost does not grow
    /// with the bytes of values); a node runs this once after it starts, in the background,
    /// to find damage done while it was stopped. A file that collection or an installation
    /// removes meanwhile is still read whole through its open handle, and damage found in
    /// it counts only while the store still holds it; files written meanwhile were written
    /// by this process. Stops early once `cancelled` says so (the node is stopping; asked
    /// before each read of up to 4 MiB): [`Verified::complete`] is then false.
    ///
    /// # Errors
    /// [`ValueError::Corrupt`] naming the file and the first value that does not check;
    /// [`ValueError::Io`].
    pub fn verify(&self, cancelled: &dyn Fn() -> bool) -> Result<Verified, ValueError> {
        let files: Vec<Arc<ValueFile>> = self.files().by_first.values().cloned().collect();
        let mut verified = Verified::default();
        for file in files {
            match file.verify(cancelled) {
                Ok(true) => {}
                Ok(false) => return Ok(verified),
                Err(error) => {
                    let held = self
                        .files()
                        .by_first
                        .values()
                        .any(|kept| Arc::ptr_eq(kept, &file));
                    if held {
                        return Err(error);
                    }
                    tracing::warn!(%error, "a value file removed during its verification did not check");
                }
            }
            verified.files += 1;
            verified.values += file.count() as u64;
            verified.bytes += file.data_len();
        }
        verified.complete = true;
        self.verified.store(true, Ordering::Release);
        Ok(verified)
    }

    /// Whether [`ValueStore::verify`] has read every file through since the store opened.
    pub fn verified(&self) -> bool {
        self.verified.load(Ordering::Acquire)
    }

    fn writer(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().expect("value writer lock poisoned")
    }

    fn files(&self) -> RwLockReadGuard<'_, Files> {
        self.files.read().expect("value files lock poisoned")
    }

    fn files_mut(&self) -> RwLockWriteGuard<'_, Files> {
        self.files.write().expect("value files lock poisoned")
    }

    /// Whether the files are exactly those an installation of a snapshot at `upto` wrote
    /// (one file covering `0..=upto`).
    pub fn holds_installed(&self, upto: u64) -> bool {
        let files = self.files();
        files.by_first.len() == 1
            && files
                .by_first
                .get(&0)
                .is_some_and(|file| file.range() == (0, upto))
    }

    /// The highest Raft index whose values are in files (references at or below it are read
    /// from files, above it from the log).
    pub fn covered(&self) -> Option<u64> {
        self.files().covered
    }

    /// The value recorded at `at`: zero-copy from the log's mapping when it is read from
    /// the log.
    ///
    /// # Errors
    /// [`ValueError::Missing`] when no file or log entry holds it; a file's
    /// [`ValueError::Corrupt`] or [`ValueError::Io`]; the log's errors.
    pub fn read(&self, at: &ValueRef) -> Result<Bytes, ValueError> {
        // Twice at most: a reference found above the coverage may be relocated and its
        // entry purged before the log is read; the files hold it then.
        for _ in 0..2 {
            let file = {
                let files = self.files();
                if files.covered.is_some_and(|covered| at.index <= covered) {
                    Some(
                        files
                            .by_first
                            .range(..=at.index)
                            .next_back()
                            .map(|(_, file)| Arc::clone(file)),
                    )
                } else {
                    None
                }
            };
            let value = match file {
                Some(Some(file)) => file.get(at)?,
                Some(None) => None,
                None => match self.in_log(at)? {
                    Some(value) => Some(value),
                    None => continue,
                },
            };
            return value.ok_or(ValueError::Missing { at: *at });
        }
        Err(ValueError::Missing { at: *at })
    }

    fn in_log(&self, at: &ValueRef) -> Result<Option<Bytes>, ValueError> {
        let Some(record) = self.log.get(at.index)? else {
            return Ok(None);
        };
        let command = match &*record {
            // A batch's writes are each an application's command: offsets in them are not
            // offsets in the entry. Only the plain log's appends are batched.
            ArchivedStoredPayload::Normal { command, .. }
                if !crate::coalesce::is_batch(command.as_slice()) =>
            {
                command.as_slice()
            }
            _ => return Ok(None),
        };
        let start = self.body_offset + at.offset as usize;
        let end = start + at.len as usize;
        if end > command.len() {
            return Ok(None);
        }
        Ok(Some(
            crate::record::mapped_command(record).slice(start..end),
        ))
    }

    /// Replaces every file with one holding `values` (a received snapshot's, in key order,
    /// all recorded at or below `upto`), covering `..= upto`.
    ///
    /// # Errors
    /// The first error of `values`; I/O errors. The files stay as they were then.
    pub fn install(
        &self,
        values: impl IntoIterator<Item = Result<(ValueRef, Bytes), ValueError>>,
        upto: u64,
    ) -> Result<StoreChange, ValueError> {
        let _writer = self.writer();
        let generation = self.files().generation + 1;
        let path = self.dir.join(file_name(0, upto, generation));
        let (values_written, bytes_written) = file::write(&path, 0, upto, values)?;
        let replaced = self.swap(Some(&path), None, generation, Some(upto))?;
        Ok(StoreChange {
            values_written,
            bytes_written,
            files_removed: Self::remove(&replaced)?,
        })
    }

    /// The values of `live`, in key order, each read from a file or the log: what a wiped
    /// follower needs beside a snapshot whose state references `live`.
    ///
    /// # Errors
    /// [`ValueError::Missing`] for a live value nobody holds; read errors.
    pub fn live_values(
        &self,
        live: &[ValueRef],
    ) -> impl Iterator<Item = Result<(ValueRef, Bytes), ValueError>> + '_ {
        by_place(live.iter().copied())
            .into_iter()
            .map(|at| Ok((at, self.read(&at)?)))
    }
}

#[cfg(test)]
impl ValueStore {
    /// A store beside a new, empty log, in `dir` (tests).
    pub(crate) fn empty_for_test(dir: &Path) -> Arc<Self> {
        let options = keel_log::Options {
            segment_size_bytes: 8 << 20,
            ..keel_log::Options::default()
        };
        let log = Arc::new(keel_log::Log::open(dir.join("log"), options).expect("a test log"));
        Arc::new(Self::open(&dir.join("values"), log, 0, None).expect("a test value store"))
    }
}

#[cfg(test)]
mod tests;
