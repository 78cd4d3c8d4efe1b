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

    /// Copies every value of `live` recorded in `covered + 1 ..= upto` from the log into a
    /// new file, synced, then covers `..= upto`: after this the log may be purged up to
    /// `upto`. `live` is every reference the state holds (any order, repeats allowed).
    ///
    /// # Errors
    /// [`ValueError::Missing`] when a live value is not in the log; I/O errors. Nothing is
    /// covered then.
    pub fn relocate(&self, live: &[ValueRef], upto: u64) -> Result<StoreChange, ValueError> {
        let _writer = self.writer();
        let (start, generation) = {
            let files = self.files();
            (
                files.covered.map_or(0, |c| c.saturating_add(1)),
                files.generation + 1,
            )
        };
        if upto < start {
            return Ok(StoreChange::default());
        }
        #[cfg_attr(
            not(feature = "sabotage"),
            expect(unused_mut, reason = "sabotage only")
        )]
        let mut moving = by_place(
            live.iter()
                .filter(|at| (start..=upto).contains(&at.index))
                .copied(),
        );
        #[cfg(feature = "sabotage")]
        if crate::sabotage::on(crate::sabotage::Fault::DroppedValues) {
            moving.pop();
        }
        if moving.is_empty() {
            // Nothing to keep: the range is covered without a file.
            self.files_mut().covered = Some(upto);
            return Ok(StoreChange::default());
        }
        let values = moving
            .into_iter()
            .map(|at| Ok((at, self.in_log(&at)?.ok_or(ValueError::Missing { at })?)));
        let path = self.dir.join(file_name(start, upto, generation));
        let (values_written, bytes_written) = file::write(&path, start, upto, values)?;
        self.swap(Some(&path), Some(&[]), generation, Some(upto))?;
        Ok(StoreChange {
            values_written,
            bytes_written,
            files_removed: 0,
        })
    }

    /// Serves from the file just written at `path` (if any) instead of the files `replace`
    /// names by first index (every file when `None`, and `covered` becomes `cover`; else it
    /// grows to `cover` if that is higher). Returns the files replaced, for the caller to
    /// remove.
    fn swap(
        &self,
        path: Option<&Path>,
        replace: Option<&[u64]>,
        generation: u64,
        cover: Option<u64>,
    ) -> Result<Vec<Arc<ValueFile>>, ValueError> {
        let opened = path.map(ValueFile::open).transpose()?.map(Arc::new);
        let mut files = self.files_mut();
        let replaced = match replace {
            None => std::mem::take(&mut files.by_first).into_values().collect(),
            Some(firsts) => firsts
                .iter()
                .filter_map(|first| files.by_first.remove(first))
                .collect(),
        };
        if let Some(opened) = opened {
            files.by_first.insert(opened.range().0, opened);
        }
        files.generation = files.generation.max(generation);
        // An installation replaces everything, its coverage with it; otherwise coverage
        // only grows.
        files.covered = if replace.is_none() {
            cover
        } else {
            files.covered.max(cover)
        };
        Ok(replaced)
    }

    fn remove(files: &[Arc<ValueFile>]) -> Result<u64, ValueError> {
        for file in files {
            std::fs::remove_file(file.path()).map_err(|source| ValueError::Io {
                op: "remove",
                path: file.path().to_owned(),
                source,
            })?;
        }
        Ok(files.len() as u64)
    }

    /// Drops values `live` no longer references and merges small files: consecutive files
    /// that are under half live or hold under [`SMALL_FILE_BYTES`] of live values are
    /// rewritten as one file of their live values (up to [`MERGED_MAX_BYTES`] a file; none
    /// when nothing is live). Call it only with the state of a published snapshot (module
    /// docs).
    ///
    /// # Errors
    /// I/O errors, a file's corruption; [`ValueError::Missing`] when a live value of a
    /// file's range is not in it.
    pub fn collect(&self, live: &[ValueRef]) -> Result<StoreChange, ValueError> {
        let _writer = self.writer();
        let live = by_place(live.iter().copied());
        let files: Vec<Arc<ValueFile>> = self.files().by_first.values().cloned().collect();
        let mut change = StoreChange::default();
        let mut run: Vec<(Arc<ValueFile>, &[ValueRef], bool)> = Vec::new();
        let mut run_bytes = 0;
        for file in files {
            let (first, last) = file.range();
            let from = live.partition_point(|at| at.index < first);
            let to = live.partition_point(|at| at.index <= last);
            let kept = &live[from..to];
            let kept_bytes: u64 = kept.iter().map(|at| u64::from(at.len)).sum();
            let wasteful = kept_bytes * 2 < file.data_len() || kept.len() * 2 < file.count();
            let mergeable = wasteful || kept_bytes < SMALL_FILE_BYTES;
            if !mergeable || run_bytes + kept_bytes > MERGED_MAX_BYTES {
                self.rewrite(&std::mem::take(&mut run), &mut change)?;
                run_bytes = 0;
            }
            if mergeable {
                run.push((file, kept, wasteful));
                run_bytes += kept_bytes;
            }
        }
        self.rewrite(&run, &mut change)?;
        Ok(change)
    }

    /// Rewrites a run of consecutive files as one holding their `live` values, unless it is
    /// a single file with nothing to drop.
    fn rewrite(
        &self,
        run: &[(Arc<ValueFile>, &[ValueRef], bool)],
        change: &mut StoreChange,
    ) -> Result<(), ValueError> {
        let single_and_tight = run.len() == 1 && !run[0].2;
        if run.is_empty() || single_and_tight {
            return Ok(());
        }
        let first = run[0].0.range().0;
        let last = run[run.len() - 1].0.range().1;
        let generation = self.files().generation + 1;
        let firsts: Vec<u64> = run.iter().map(|(file, _, _)| file.range().0).collect();
        let values = run.iter().flat_map(|(file, kept, _)| {
            kept.iter()
                .map(|at| Ok((*at, file.get(at)?.ok_or(ValueError::Missing { at: *at })?)))
        });
        let mut values = values.peekable();
        let path = self.dir.join(file_name(first, last, generation));
        let written = if values.peek().is_some() {
            let (values_written, bytes_written) = file::write(&path, first, last, values)?;
            change.values_written += values_written;
            change.bytes_written += bytes_written;
            Some(path.as_path())
        } else {
            None
        };
        let replaced = self.swap(written, Some(&firsts), generation, None)?;
        change.files_removed += Self::remove(&replaced)?;
        Ok(())
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
