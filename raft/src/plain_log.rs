//! The plain replicated log: an [`Application`] that gives every committed record a dense
//! offset (Raft indexes have holes: blank and membership entries) and keeps records under a
//! retention policy.
//!
//! A command is a batch of records stamped by the leader with its wall clock
//! (`stamp_ms`): the state machine reads no clock, so age-based retention uses the stamps.
//! Retained records live in memory and in snapshots, so a node restored from a snapshot
//! still serves every retained record.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::sync::watch;

use crate::application::{Application, AppliedAt, SnapshotImage};

/// What the plain log keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Keep at most this many bytes of record data (the oldest go first).
    pub max_bytes: u64,
    /// Drop records stamped more than this long before the newest stamp; `None` keeps all.
    pub max_age_ms: Option<u64>,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_bytes: 256 * 1024 * 1024,
            max_age_ms: None,
        }
    }
}

/// One retained record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Dense offset, from 0.
    pub offset: u64,
    /// The leader's wall clock when it proposed the record, in ms since the Unix epoch.
    pub stamp_ms: u64,
    /// The record's bytes.
    pub data: Bytes,
}

#[derive(Debug, Default)]
struct State {
    records: VecDeque<LogRecord>,
    /// Offset the next record gets.
    next_offset: u64,
    retained_bytes: u64,
    digest: u64,
}

#[derive(Debug)]
struct Shared {
    state: RwLock<State>,
    /// The next offset, published after every apply: subscribers wait on it.
    next_offset: watch::Sender<u64>,
    retention: Retention,
}

/// The plain log application; clones share one state (give one to the host, keep one to
/// read from).
#[derive(Debug, Clone)]
pub struct PlainLog {
    shared: Arc<Shared>,
}

/// Encodes an append command: the leader's stamp and a batch of records.
///
/// # Panics
/// If the batch has more than `u32::MAX` records or a record is longer than `u32::MAX`
/// bytes (callers enforce [`crate::limits`] first).
pub fn encode_append(stamp_ms: u64, records: &[Bytes]) -> Bytes {
    let len: usize = records.iter().map(|r| 4 + r.len()).sum();
    let mut out = BytesMut::with_capacity(12 + len);
    out.put_u64_le(stamp_ms);
    out.put_u32_le(
        u32::try_from(records.len()).expect("batch count fits u32 (bounded by the message limit)"),
    );
    for record in records {
        out.put_u32_le(
            u32::try_from(record.len()).expect("record fits u32 (bounded by the message limit)"),
        );
        out.put_slice(record);
    }
    out.freeze()
}

/// Decodes an append command into its stamp and records (slices of `command`, not copies);
/// `None` for bytes that are not one.
fn decode_append(command: &Bytes) -> Option<(u64, Vec<Bytes>)> {
    let mut rest: &[u8] = command;
    if rest.len() < 12 {
        return None;
    }
    let stamp = rest.get_u64_le();
    let count = rest.get_u32_le() as usize;
    let mut records = Vec::with_capacity(count.min(rest.len() / 4));
    for _ in 0..count {
        if rest.len() < 4 {
            return None;
        }
        let len = rest.get_u32_le() as usize;
        if rest.len() < len {
            return None;
        }
        let start = command.len() - rest.len();
        records.push(command.slice(start..start + len));
        rest = &rest[len..];
    }
    rest.is_empty().then_some((stamp, records))
}

/// The answer to an append: the batch's first offset and its record count; an empty answer
/// for a malformed command (nothing was appended).
pub fn decode_append_answer(answer: &[u8]) -> Option<(u64, u32)> {
    let mut answer = answer;
    (answer.len() == 12).then(|| (answer.get_u64_le(), answer.get_u32_le()))
}

fn mix(digest: u64, offset: u64, data: &[u8]) -> u64 {
    let crc = u64::from(crc32c::crc32c(data));
    (digest.rotate_left(17) ^ crc ^ offset.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_mul(0xFF51_AFD7_ED55_8CCD)
}

impl PlainLog {
    /// An empty plain log keeping records under `retention`.
    pub fn new(retention: Retention) -> Self {
        let (next_offset, _) = watch::channel(0);
        Self {
            shared: Arc::new(Shared {
                state: RwLock::new(State::default()),
                next_offset,
                retention,
            }),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.shared
            .state
            .read()
            .expect("plain log lock poisoned: an apply panicked")
    }

    /// `(first retained offset, next offset)`.
    pub fn bounds(&self) -> (u64, u64) {
        let state = self.read();
        (
            state
                .records
                .front()
                .map_or(state.next_offset, |r| r.offset),
            state.next_offset,
        )
    }

    /// Retained records from `from`, at most `max_records` of them and about `max_bytes`
    /// (at least one record when any is there).
    pub fn read_from(&self, from: u64, max_records: usize, max_bytes: usize) -> Vec<LogRecord> {
        let state = self.read();
        let first = state
            .records
            .front()
            .map_or(state.next_offset, |r| r.offset);
        let skip = usize::try_from(from.saturating_sub(first)).unwrap_or(usize::MAX);
        let mut bytes = 0;
        state
            .records
            .iter()
            .skip(skip)
            .take(max_records)
            .take_while(|r| {
                let fits = bytes == 0 || bytes + r.data.len() <= max_bytes;
                bytes += r.data.len();
                fits
            })
            .cloned()
            .collect()
    }

    /// Watches the next offset: changes after every applied append.
    pub fn watch_next_offset(&self) -> watch::Receiver<u64> {
        self.shared.next_offset.subscribe()
    }

    fn publish(&self) {
        let next = self.read().next_offset;
        self.shared.next_offset.send_replace(next);
    }
}

impl State {
    fn append(&mut self, stamp_ms: u64, data: Bytes) {
        let offset = self.next_offset;
        self.digest = mix(self.digest, offset, &data);
        self.retained_bytes += data.len() as u64;
        self.records.push_back(LogRecord {
            offset,
            stamp_ms,
            data,
        });
        self.next_offset += 1;
    }

    fn retain(&mut self, retention: Retention, newest_stamp_ms: u64) {
        while let Some(oldest) = self.records.front() {
            let too_big = self.retained_bytes > retention.max_bytes;
            let too_old = retention
                .max_age_ms
                .is_some_and(|age| newest_stamp_ms.saturating_sub(oldest.stamp_ms) > age);
            if !too_big && !too_old {
                break;
            }
            self.retained_bytes -= oldest.data.len() as u64;
            self.records.pop_front();
        }
    }
}

/// The plain log's state, copied for a snapshot.
struct PlainLogImage {
    next_offset: u64,
    digest: u64,
    records: VecDeque<LogRecord>,
}

impl SnapshotImage for PlainLogImage {
    fn write(self: Box<Self>, out: &mut dyn Write) -> io::Result<()> {
        out.write_all(&self.next_offset.to_le_bytes())?;
        out.write_all(&self.digest.to_le_bytes())?;
        out.write_all(&(self.records.len() as u64).to_le_bytes())?;
        for record in &self.records {
            out.write_all(&record.offset.to_le_bytes())?;
            out.write_all(&record.stamp_ms.to_le_bytes())?;
            out.write_all(&(record.data.len() as u64).to_le_bytes())?;
            out.write_all(&record.data)?;
        }
        Ok(())
    }
}

impl Application for PlainLog {
    fn apply(&mut self, _at: AppliedAt, command: &Bytes) -> Bytes {
        // One copy of the whole batch, which its records then share: the command may be a
        // view into the Raft log's mapping, which retained records must not pin.
        let command = Bytes::copy_from_slice(command);
        let Some((stamp_ms, records)) = decode_append(&command) else {
            return Bytes::new();
        };
        let answer = {
            let mut state = self.shared.state.write().expect("plain log lock poisoned");
            let first = state.next_offset;
            let count = records.len();
            for record in records {
                state.append(stamp_ms, record);
            }
            state.retain(self.shared.retention, stamp_ms);
            let mut answer = BytesMut::with_capacity(12);
            answer.put_u64_le(first);
            answer.put_u32_le(u32::try_from(count).expect("decoded count was a u32"));
            answer.freeze()
        };
        self.publish();
        answer
    }

    fn snapshot_image(&self) -> Box<dyn SnapshotImage> {
        let state = self.read();
        // The records' bytes are shared, not copied.
        Box::new(PlainLogImage {
            next_offset: state.next_offset,
            digest: state.digest,
            records: state.records.clone(),
        })
    }

    fn check_snapshot(&self, input: &mut dyn Read, _applied_index: u64) -> io::Result<()> {
        // The plain log's records carry offsets, not indexes: decoding them into a scratch
        // log checks all that restoring them would.
        Self::new(Retention::default()).restore(input)
    }

    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()> {
        let mut word = [0u8; 8];
        let mut next_u64 = |input: &mut dyn Read| -> io::Result<u64> {
            input.read_exact(&mut word)?;
            Ok(u64::from_le_bytes(word))
        };
        let mut state = State {
            next_offset: next_u64(input)?,
            digest: next_u64(input)?,
            ..State::default()
        };
        let count = next_u64(input)?;
        let bad = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("plain log snapshot: {what}"),
            )
        };
        for _ in 0..count {
            let offset = next_u64(input)?;
            let stamp_ms = next_u64(input)?;
            let len = usize::try_from(next_u64(input)?).map_err(|_| bad("record length"))?;
            let expected = state.records.back().map_or(offset, |r| r.offset + 1);
            if offset != expected
                || offset >= state.next_offset
                || len > crate::limits::RECORD_MAX_BYTES
            {
                return Err(bad("record out of order or too long"));
            }
            let mut data = vec![0u8; len];
            input.read_exact(&mut data)?;
            state.retained_bytes += len as u64;
            state.records.push_back(LogRecord {
                offset,
                stamp_ms,
                data: Bytes::from(data),
            });
        }
        if input.read(&mut [0u8; 1])? != 0 {
            return Err(bad("trailing bytes"));
        }
        *self.shared.state.write().expect("plain log lock poisoned") = state;
        self.publish();
        Ok(())
    }

    fn digest(&self) -> u64 {
        self.read().digest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: AppliedAt = AppliedAt { term: 1, index: 1 };

    fn append(log: &mut PlainLog, stamp: u64, records: &[&str]) -> (u64, u32) {
        let records: Vec<Bytes> = records
            .iter()
            .map(|r| Bytes::copy_from_slice(r.as_bytes()))
            .collect();
        decode_append_answer(&log.apply(AT, &encode_append(stamp, &records)))
            .expect("append answer")
    }

    #[test]
    fn offsets_are_dense_across_batches() {
        let mut log = PlainLog::new(Retention::default());
        assert_eq!(append(&mut log, 1, &["a", "b"]), (0, 2));
        assert_eq!(append(&mut log, 2, &["c"]), (2, 1));
        let records = log.read_from(1, 10, 1 << 20);
        let data: Vec<&[u8]> = records.iter().map(|r| r.data.as_ref()).collect();
        assert_eq!(data, [b"b".as_ref(), b"c".as_ref()]);
        assert_eq!(records[0].offset, 1);
    }

    #[test]
    fn malformed_command_appends_nothing() {
        let mut log = PlainLog::new(Retention::default());
        assert!(log.apply(AT, &Bytes::from_static(b"junk")).is_empty());
        assert_eq!(log.bounds(), (0, 0));
    }

    #[test]
    fn retention_drops_oldest_by_size_and_age() {
        let mut log = PlainLog::new(Retention {
            max_bytes: 3,
            max_age_ms: Some(100),
        });
        append(&mut log, 0, &["a", "b", "c", "d"]);
        assert_eq!(log.bounds(), (1, 4));
        append(&mut log, 500, &["e"]);
        assert_eq!(log.bounds(), (4, 5));
    }

    #[test]
    fn snapshot_round_trips_with_digest() {
        let mut log = PlainLog::new(Retention {
            max_bytes: 4,
            max_age_ms: None,
        });
        append(&mut log, 7, &["ab", "cd", "ef"]);
        let mut bytes = Vec::new();
        log.write_snapshot(&mut bytes).expect("writes");
        let mut restored = PlainLog::new(Retention::default());
        restored.restore(&mut bytes.as_slice()).expect("restores");
        assert_eq!(restored.bounds(), log.bounds());
        assert_eq!(restored.digest(), log.digest());
        assert_eq!(restored.read_from(0, 10, 100), log.read_from(0, 10, 100));
        let truncated = &bytes[..bytes.len() - 1];
        assert!(
            PlainLog::new(Retention::default())
                .restore(&mut &truncated[..])
                .is_err()
        );
    }
}
