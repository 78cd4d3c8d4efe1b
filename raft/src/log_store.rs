//! openraft's log storage on keel-log.
//!
//! Appends go to keel-log at once (readable immediately) and openraft's flush callback fires
//! from keel-log's durability callback, after the `fdatasync` that covers the batch: appends
//! in flight together share one sync (group commit). Any write error poisons keel-log, marks
//! the data directory as needing repair and is returned to openraft, whose core then stops.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_log::{Batch, Log};
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};

use crate::error::Error;
use crate::metrics::NodeMetrics;
use crate::purged_log::PurgedCopy;
use crate::record::{
    StoredPayload, decode_committed, decode_vote, encode_committed, encode_vote, entry_from_record,
    from_keel_id, to_keel_id,
};
use crate::repair::mark_needs_repair;
use crate::types::{Entry, LogId, TypeConfig, Vote};
use crate::values::{ValueError, ValueStore};

/// keel-log holding Raft entries.
pub(crate) type EntryLog = Log<StoredPayload>;

/// openraft's [`RaftLogStorage`] on a keel-log.
#[derive(Debug, Clone)]
pub struct LogStore {
    log: Arc<EntryLog>,
    /// Where the repair marker goes when a write fails.
    data_dir: PathBuf,
    metrics: Option<Arc<NodeMetrics>>,
    /// The newest committed id openraft reported.
    committed: Option<LogId>,
    /// When the committed id was last written to the meta file.
    committed_saved_at: Option<Instant>,
    /// Testing: where each range is copied before it is purged.
    purged_copy: Option<PurgedCopy>,
}

/// The committed id is written (with an `fdatasync`) at most this often. It is only a
/// restart hint (a lower bound openraft re-applies up to), never needed for safety; saving
/// it on every commit cost one `fdatasync` per commit on every node.
const COMMITTED_SAVE_INTERVAL: Duration = Duration::from_millis(100);

/// Reads entries and the vote; one per replication stream, without locks.
#[derive(Debug, Clone)]
pub struct LogStoreReader {
    log: Arc<EntryLog>,
}

impl LogStore {
    /// Opens the Raft log in `log_dir`; write failures will mark `data_dir` as needing
    /// repair.
    ///
    /// # Errors
    /// keel-log's open errors (I/O, corruption, invalid options).
    pub fn open(
        log_dir: &Path,
        options: keel_log::Options,
        data_dir: impl Into<PathBuf>,
    ) -> crate::Result<Self> {
        Self::open_with_fs(log_dir, options, data_dir, Arc::new(keel_log::fs::StdFs))
    }

    /// [`LogStore::open`] on a given file system (tests inject faults with it).
    ///
    /// # Errors
    /// keel-log's open errors (I/O, corruption, invalid options).
    pub fn open_with_fs(
        log_dir: &Path,
        options: keel_log::Options,
        data_dir: impl Into<PathBuf>,
        fs: Arc<dyn keel_log::fs::Fs>,
    ) -> crate::Result<Self> {
        let log = Log::open_with_fs(log_dir, options, fs)?;
        Ok(Self {
            log: Arc::new(log),
            data_dir: data_dir.into(),
            metrics: None,
            committed: None,
            committed_saved_at: None,
            purged_copy: None,
        })
    }

    /// Testing: copies each range to `copy` before purging it ([`crate::purged_log`]).
    #[must_use]
    pub fn copying_purged_to(mut self, copy: PurgedCopy) -> Self {
        self.purged_copy = Some(copy);
        self
    }

    /// Records flush latencies in `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<NodeMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Where the log stands.
    ///
    /// # Errors
    /// keel-log's error when the log is poisoned.
    pub fn state(&self) -> crate::Result<keel_log::LogState> {
        Ok(self.log.state()?)
    }

    /// The value store beside this log: value files in `dir`, the application's command
    /// starting `body_offset` bytes into an entry's command, `covered` as the published
    /// snapshot recorded it: files past it are removed, as are temporary leftovers, and of
    /// two files for one range the newer generation is kept ([`crate::values`]).
    ///
    /// # Errors
    /// [`ValueError::Corrupt`] for a file that does not check, or files whose ranges
    /// overlap; [`ValueError::Io`].
    pub fn value_store(
        &self,
        dir: &Path,
        body_offset: usize,
        covered: Option<u64>,
    ) -> Result<ValueStore, ValueError> {
        ValueStore::open(dir, Arc::clone(&self.log), body_offset, covered)
    }

    /// Converts a write failure, marking the data directory first.
    fn failed(&self, op: &str, error: impl Into<Error>) -> io::Error {
        let error = error.into();
        mark_needs_repair(&self.data_dir, &format!("{op}: {error}"));
        error.into()
    }
}

fn to_io(error: impl Into<Error>) -> io::Error {
    error.into().into()
}

impl RaftLogReader<TypeConfig> for LogStoreReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        read_entries(&self.log, range)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        read_vote(&self.log)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        read_entries(&self.log, range)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        read_vote(&self.log)
    }
}

fn read_entries(log: &EntryLog, range: impl RangeBounds<u64>) -> Result<Vec<Entry>, io::Error> {
    let start = match range.start_bound() {
        Bound::Included(&start) => start,
        Bound::Excluded(&start) => start.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&end) => end.saturating_add(1),
        Bound::Excluded(&end) => end,
        Bound::Unbounded => u64::MAX,
    };
    let mut entries = Vec::new();
    for record in log.reader().range(start..end) {
        let record = record.map_err(to_io)?;
        let entry = entry_from_record(record).map_err(to_io)?;
        entries.push(entry);
    }
    Ok(entries)
}

fn read_vote(log: &EntryLog) -> Result<Option<Vote>, io::Error> {
    log.vote()
        .map(|blob| decode_vote(&blob))
        .transpose()
        .map_err(io::Error::from)
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStoreReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let state = self.log.state().map_err(to_io)?;
        Ok(LogState {
            last_purged_log_id: state.purged.map(from_keel_id),
            last_log_id: state.last.map(from_keel_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogStoreReader {
            log: Arc::clone(&self.log),
        }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.log
            .save_vote(&encode_vote(vote))
            .map_err(|e| self.failed("save vote", e))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.committed = committed;
        let due = self
            .committed_saved_at
            .is_none_or(|at| at.elapsed() >= COMMITTED_SAVE_INTERVAL);
        if !due {
            return Ok(());
        }
        self.committed_saved_at = Some(Instant::now());
        self.log
            .save_committed(&encode_committed(committed.as_ref()))
            .map_err(|e| self.failed("save committed", e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        if self.committed.is_some() {
            return Ok(self.committed);
        }
        match self.log.committed() {
            Some(blob) => Ok(decode_committed(&blob)?),
            None => Ok(None),
        }
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Each entry is serialized straight into the bytes the log writes, here, before the
        // log's writer is taken.
        let mut batch = Batch::new();
        for entry in entries {
            let payload = StoredPayload::from_entry(&entry.payload);
            batch
                .push(to_keel_id(&entry.log_id), &payload)
                .map_err(|e| self.failed("append", e))?;
        }
        let started = Instant::now();
        let appended = self
            .log
            .append_batch(&batch)
            .map_err(|e| self.failed("append", e))?;
        let data_dir = self.data_dir.clone();
        let metrics = self.metrics.clone();
        #[cfg(feature = "sabotage")]
        if crate::sabotage::on(crate::sabotage::Fault::AckBeforeFsync) {
            // Acknowledged now, and no sync is asked for: the appends stay in the page cache.
            callback.io_completed(Ok(()));
            return Ok(());
        }
        appended.ticket.on_durable(move |outcome| {
            if let Some(metrics) = metrics {
                metrics.log_flush_latency.observe(started.elapsed());
            }
            let outcome = outcome.map(drop).map_err(|error| {
                let error = Error::from(error);
                mark_needs_repair(&data_dir, &format!("sync: {error}"));
                io::Error::from(error)
            });
            callback.io_completed(outcome);
        });
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index + 1);
        #[cfg(feature = "sabotage")]
        let from = crate::sabotage::truncation_start(from);
        let state = self.log.state().map_err(to_io)?;
        let from = state.first_index.map_or(from, |first| from.max(first));
        self.log
            .truncate_from(from)
            .map_err(|e| self.failed("truncate", e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        if self.purged_copy.is_some() {
            // Only what this node knows committed: a node installing a snapshot may purge
            // a stale tail of its own that never committed.
            let committed = self.read_committed().await?;
            let upto = log_id.index.min(committed.map_or(0, |c| c.index));
            let copy = self.purged_copy.as_ref().expect("checked above");
            copy.copy(&self.log, upto).map_err(|error| {
                io::Error::new(error.kind(), format!("copying a purged range: {error}"))
            })?;
        }
        self.log
            .purge_upto(to_keel_id(&log_id))
            .map_err(|e| self.failed("purge", e))
    }
}
