//! The public handle: open, append, read, truncate, purge, vote and committed id.

use std::{
    fmt,
    fs::{File, OpenOptions, TryLockError},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    thread::JoinHandle,
};

use crate::{
    Appended, Batch, Encoded, Entry, Error, LogId, Options, Payload, Reader, Record, Result,
    SyncPolicy,
    fs::{Fs, StdFs},
    recovery,
    segment::name,
    sync::SyncShared,
    writer::Writer,
};

/// Where the log stands: first and last visible records and the purge mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogState {
    /// Index of the first visible record.
    pub first_index: Option<u64>,
    /// Id of the last visible record, or the purge mark if the log is empty after a purge.
    pub last: Option<LogId>,
    /// The last purged id.
    pub purged: Option<LogId>,
}

/// An open log of records of type `T`. See the crate docs for the guarantees.
///
/// All methods take `&self`: appends and other writes are serialized by an internal writer
/// mutex; reads ([`Log::get`], [`Log::reader`]) never take it.
pub struct Log<T: Payload> {
    dir: PathBuf,
    writer: Mutex<Writer<T>>,
    reader: Reader<T>,
    sync: Arc<SyncShared>,
    syncer: Option<JoinHandle<()>>,
    _lock: File,
}

impl<T: Payload> fmt::Debug for Log<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.dir)
            .field("sync", &self.sync)
            .finish_non_exhaustive()
    }
}

fn lock_dir(dir: &Path) -> Result<File> {
    std::fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
    let path = dir.join(name::LOCK);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(Error::io("open", &path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(Error::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(TryLockError::Error(source)) => Err(Error::Io {
            op: "lock",
            path,
            source,
        }),
    }
}

impl<T: Payload> Log<T> {
    /// Opens (creating if needed) the log in `dir` on the real file system.
    ///
    /// # Errors
    /// [`Error::Locked`] if another log holds `dir`; [`Error::InvalidOptions`]; any
    /// recovery error: [`Error::Corrupted`], [`Error::TornTail`] (strict policy),
    /// [`Error::SegmentSizeMismatch`], [`Error::MissingRecords`], [`Error::MissingSegment`],
    /// [`Error::MetaCorrupted`], [`Error::ForeignFile`], [`Error::Io`].
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<Self> {
        Self::open_with_fs(dir, options, Arc::new(StdFs))
    }

    /// Opens the log with a given write-path file system (tests inject faults this way).
    ///
    /// # Errors
    /// As [`Log::open`].
    pub fn open_with_fs(dir: impl AsRef<Path>, options: Options, fs: Arc<dyn Fs>) -> Result<Self> {
        options.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let lock = lock_dir(&dir)?;
        let recovered = recovery::recover::<T>(fs.as_ref(), &dir, &options)?;
        let sync = SyncShared::new(options.sync);
        let syncer = match options.sync {
            SyncPolicy::Durable => {
                let shared = Arc::clone(&sync);
                let thread = std::thread::Builder::new()
                    .name("keel-log-sync".into())
                    .spawn(move || shared.run())
                    .map_err(Error::io("spawn syncer", &dir))?;
                Some(thread)
            }
            SyncPolicy::Relaxed => None,
        };
        let writer = Writer::new(fs, dir.clone(), options, recovered, Arc::clone(&sync))?;
        let reader = Reader {
            view: Arc::clone(&writer.view),
        };
        Ok(Self {
            dir,
            writer: Mutex::new(writer),
            reader,
            sync,
            syncer,
            _lock: lock,
        })
    }

    fn writer(&self) -> MutexGuard<'_, Writer<T>> {
        self.writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs a write operation; an I/O error in it poisons the log.
    fn write<R>(&self, op: impl FnOnce(&mut Writer<T>) -> Result<R>) -> Result<R> {
        let result = op(&mut self.writer());
        if let Err(Error::Io { op, source, .. }) = &result {
            self.sync.poison(op, source);
        }
        result
    }

    /// Appends a batch of records with caller-given ids (Raft assigns them).
    ///
    /// The batch must continue the log: the first id's index is the log's next index (any
    /// index, 0 included, for a log never written), indexes are consecutive and terms never
    /// decrease. Records are readable when this returns; `Appended::ticket` says when they
    /// are durable. One `fdatasync` covers every append that arrived while the previous one
    /// ran.
    ///
    /// # Errors
    /// [`Error::RecordTooLarge`], [`Error::NonContiguous`], [`Error::TermRegression`]
    /// (nothing written); [`Error::Poisoned`]; [`Error::Io`] (the log is then poisoned).
    ///
    /// Each record is copied into a [`Batch`] first: a caller that builds the batch itself
    /// ([`Log::append_batch`]) encodes each record in place, once.
    pub fn append(&self, entries: &[Entry<'_, T>]) -> Result<Appended> {
        let mut batch = Batch::new();
        for entry in entries {
            batch.push_encoded(entry.id, entry.payload)?;
        }
        self.append_batch(&batch)
    }

    /// Appends a batch built on the caller's thread: its first record must continue the log,
    /// as for [`Log::append`]. The writer adds one batch header per segment the batch reaches
    /// and writes header and frames with one `pwritev`.
    ///
    /// # Errors
    /// As [`Log::append`].
    pub fn append_batch(&self, batch: &Batch<T>) -> Result<Appended> {
        self.write(|w| w.append(batch))
    }

    /// Appends payloads at the next indexes (0 for a log never written), all with `term`.
    ///
    /// # Errors
    /// As [`Log::append`].
    pub fn append_next(&self, term: u64, payloads: &[&Encoded<T>]) -> Result<Appended> {
        self.write(|w| {
            let first = w.next_index.unwrap_or(0);
            let mut batch = Batch::new();
            for (index, payload) in (first..).zip(payloads) {
                batch.push_encoded(LogId::new(term, index), payload)?;
            }
            w.append(&batch)
        })
    }

    /// Removes every record at or after `index` (a Raft conflict). Published bytes are not
    /// rewritten: the active segment is sealed and a new segment, whose base index
    /// supersedes the removed suffix, is durably created before this returns.
    ///
    /// # Errors
    /// [`Error::Purged`] if `index` is at or below the purge mark; [`Error::Poisoned`];
    /// [`Error::Io`].
    pub fn truncate_from(&self, index: u64) -> Result<()> {
        self.write(|w| w.truncate_from(index))
    }

    /// Durably records `upto` as purged and drops every whole segment at or below it.
    /// `upto` may lie past the last record: the log is then empty, remembers `upto`, and
    /// continues at `upto.index + 1`.
    ///
    /// # Errors
    /// [`Error::Poisoned`]; [`Error::Io`].
    pub fn purge_upto(&self, upto: LogId) -> Result<()> {
        self.write(|w| w.purge_upto(upto))
    }

    /// Durably stores the vote (opaque bytes, at most
    /// [`META_BLOB_MAX_BYTES`](crate::META_BLOB_MAX_BYTES)), whatever the sync policy.
    ///
    /// # Errors
    /// [`Error::MetaBlobTooLarge`]; [`Error::Io`].
    pub fn save_vote(&self, vote: &[u8]) -> Result<()> {
        self.write(|w| w.save_vote(vote))
    }

    /// The last saved vote.
    pub fn vote(&self) -> Option<Vec<u8>> {
        self.writer().meta.state().vote.clone()
    }

    /// Durably stores the committed id (opaque bytes), whatever the sync policy.
    ///
    /// # Errors
    /// [`Error::MetaBlobTooLarge`]; [`Error::Io`].
    pub fn save_committed(&self, committed: &[u8]) -> Result<()> {
        self.write(|w| w.save_committed(committed))
    }

    /// The last saved committed id.
    pub fn committed(&self) -> Option<Vec<u8>> {
        self.writer().meta.state().committed.clone()
    }

    /// First and last records and the purge mark.
    ///
    /// # Errors
    /// [`Error::Corrupted`] if the last record fails its checksum.
    pub fn state(&self) -> Result<LogState> {
        let writer = self.writer();
        let purged = writer.meta.state().purged;
        let last = match self.reader.last_index() {
            Some(index) => self.reader.get(index)?.map(|r| r.id()),
            None => None,
        };
        Ok(LogState {
            first_index: self.reader.first_index(),
            last: last.or(purged),
            purged,
        })
    }

    /// The record at `index`; see [`Reader::get`].
    ///
    /// # Errors
    /// [`Error::Corrupted`] if its bytes fail their checksum.
    pub fn get(&self, index: u64) -> Result<Option<Record<T>>> {
        self.reader.get(index)
    }

    /// A lock-free reader that can move to other threads.
    pub fn reader(&self) -> Reader<T> {
        self.reader.clone()
    }

    /// The sync policy; [`SyncPolicy::Relaxed`] is not durable across power loss.
    pub fn sync_policy(&self) -> SyncPolicy {
        self.writer().options.sync
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl<T: Payload> Drop for Log<T> {
    /// Syncs what is pending (durable policy), stops the background threads, and releases
    /// the directory lock. Readers keep their mappings.
    fn drop(&mut self) {
        self.sync.close();
        if let Some(syncer) = self.syncer.take() {
            // A callback that dropped the last handle runs on the syncer itself: it finishes
            // on its own once this returns.
            if syncer.thread().id() != std::thread::current().id() {
                let _ = syncer.join();
            }
        }
    }
}
