//! The meta file: vote, committed id, purge mark and newest segment id, in two checksummed
//! slots. Each update is written to both, one after the other, with an `fdatasync` after
//! each: a torn write spoils only the slot being written (the other holds the state before
//! the update, which was never acknowledged, or after it), and a slot damaged later (bit
//! rot) leaves the other with the newest durable state — a vote is never forgotten for one
//! bad sector. Opening takes the valid slot of the highest generation; files written by the
//! earlier alternating scheme (slots one generation apart) read the same way.
//!
//! ```text
//! slot (4096 bytes, at 0 and 4096)
//! offset size field
//!  0     8    magic "KEELMETA"
//!  8     4    format version (1), u32 LE
//! 12     4    body length n, u32 LE
//! 16     8    generation, u64 LE (the newer valid slot wins)
//! 24     n    body (below)
//! 24+n   4    CRC32C of bytes 0..24+n, u32 LE
//!
//! body: purged flag u8, purged term u64, purged index u64,
//!       last-segment flag u8, last segment id u64,
//!       vote length u32, vote bytes, committed length u32, committed bytes
//! ```
//! Every write is followed by `fdatasync`, whatever the log's sync policy. Updates are
//! rare (votes, segment rolls, purges, and the committed id at most a few times a second),
//! so the second write and sync cost little.

use std::{
    fs::{File, OpenOptions},
    io::Read,
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::{
    Error, LogId, Result, SegmentId,
    fs::{FileIo, Fs},
};

const SLOT_BYTES: usize = 4096;
const FILE_BYTES: u64 = 2 * SLOT_BYTES as u64;
const MAGIC: [u8; 8] = *b"KEELMETA";
const FORMAT_VERSION: u32 = 1;
const SLOT_HEADER_LEN: usize = 24;
/// Largest vote or committed blob, in bytes.
pub const META_BLOB_MAX_BYTES: usize = 1024;

/// The state the meta file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct MetaState {
    pub(crate) purged: Option<LogId>,
    pub(crate) last_segment: Option<SegmentId>,
    pub(crate) vote: Option<Vec<u8>>,
    pub(crate) committed: Option<Vec<u8>>,
}

/// The open meta file.
#[derive(Debug)]
pub(crate) struct Meta {
    path: PathBuf,
    file: Arc<dyn FileIo>,
    generation: u64,
    state: MetaState,
}

fn put_blob(body: &mut Vec<u8>, blob: Option<&[u8]>) {
    match blob {
        None => body.extend_from_slice(&u32::MAX.to_le_bytes()),
        Some(bytes) => {
            let len = u32::try_from(bytes.len()).expect("blob length is bounded");
            body.extend_from_slice(&len.to_le_bytes());
            body.extend_from_slice(bytes);
        }
    }
}

fn encode_slot(generation: u64, state: &MetaState) -> Vec<u8> {
    let mut body = Vec::new();
    let purged = state.purged.unwrap_or_default();
    body.push(u8::from(state.purged.is_some()));
    body.extend_from_slice(&purged.term.to_le_bytes());
    body.extend_from_slice(&purged.index.to_le_bytes());
    body.push(u8::from(state.last_segment.is_some()));
    body.extend_from_slice(&state.last_segment.map_or(0, |s| s.0).to_le_bytes());
    put_blob(&mut body, state.vote.as_deref());
    put_blob(&mut body, state.committed.as_deref());
    let mut slot = Vec::with_capacity(SLOT_BYTES);
    slot.extend_from_slice(&MAGIC);
    slot.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    slot.extend_from_slice(
        &u32::try_from(body.len())
            .expect("body is small")
            .to_le_bytes(),
    );
    slot.extend_from_slice(&generation.to_le_bytes());
    slot.extend_from_slice(&body);
    let crc = crate::frame::crc32c(&slot);
    slot.extend_from_slice(&crc.to_le_bytes());
    assert!(slot.len() <= SLOT_BYTES, "a slot fits its page");
    slot.resize(SLOT_BYTES, 0);
    slot
}

/// A cursor over untrusted bytes that never panics.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    #[expect(
        clippy::option_option,
        reason = "outer: malformed bytes; inner: no blob stored"
    )]
    fn blob(&mut self) -> Option<Option<Vec<u8>>> {
        match self.u32()? {
            u32::MAX => Some(None),
            len if len as usize <= META_BLOB_MAX_BYTES => {
                Some(Some(self.take(len as usize)?.to_vec()))
            }
            _ => None,
        }
    }
}

/// Decodes one slot; `None` if it does not verify.
fn decode_slot(slot: &[u8]) -> Option<(u64, MetaState)> {
    let mut header = Cursor(slot);
    if header.take(8)? != MAGIC || header.u32()? != FORMAT_VERSION {
        return None;
    }
    let body_len = header.u32()? as usize;
    let generation = header.u64()?;
    let covered = slot.get(..SLOT_HEADER_LEN.checked_add(body_len)?)?;
    let crc = Cursor(slot.get(covered.len()..)?).u32()?;
    if crate::frame::crc32c(covered) != crc {
        return None;
    }
    let mut body = Cursor(&covered[SLOT_HEADER_LEN..]);
    let purged_present = body.u8()? == 1;
    let purged = LogId::new(body.u64()?, body.u64()?);
    let last_present = body.u8()? == 1;
    let last = SegmentId(body.u64()?);
    let state = MetaState {
        purged: purged_present.then_some(purged),
        last_segment: last_present.then_some(last),
        vote: body.blob()?,
        committed: body.blob()?,
    };
    Some((generation, state))
}

impl Meta {
    /// Creates a fresh meta file (the directory is synced by the caller).
    ///
    /// The file is written and synced under a temporary name, then renamed, so a crash
    /// leaves either no meta file or a valid one (never an empty one).
    pub(crate) fn create(fs: &dyn Fs, dir: &Path) -> Result<Self> {
        let path = dir.join(crate::segment::name::META);
        let temp = dir.join(crate::segment::name::META_TEMP);
        let file = fs.create_new(&temp).map_err(Error::io("create", &temp))?;
        let generation = 1;
        let state = MetaState::default();
        crate::fs::write_zeros(file.as_ref(), 0, FILE_BYTES)
            .and_then(|()| file.write_all_at(&encode_slot(generation, &state), SLOT_BYTES as u64))
            .and_then(|()| file.sync_data())
            .and_then(|()| fs.rename(&temp, &path))
            .map_err(Error::io("create", &path))?;
        Ok(Self {
            path,
            file,
            generation,
            state,
        })
    }

    /// Opens and verifies an existing meta file.
    pub(crate) fn open(fs: &dyn Fs, dir: &Path) -> Result<Self> {
        let path = dir.join(crate::segment::name::META);
        let corrupted = |reason| Error::MetaCorrupted {
            path: path.clone(),
            reason,
        };
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(Error::io("read", &path))?;
        if bytes.len() as u64 != FILE_BYTES {
            return Err(corrupted("wrong file size"));
        }
        let (a, b) = bytes.split_at(SLOT_BYTES);
        let (generation, state) = match (decode_slot(a), decode_slot(b)) {
            (Some(a), Some(b)) => {
                if a.0 >= b.0 {
                    a
                } else {
                    b
                }
            }
            (Some(one), None) | (None, Some(one)) => one,
            (None, None) => return Err(corrupted("neither slot verifies")),
        };
        if state.purged.is_some_and(|p| p.index == u64::MAX) {
            return Err(corrupted("purge mark out of range"));
        }
        let file = fs.open(&path).map_err(Error::io("open", &path))?;
        Ok(Self {
            path,
            file,
            generation,
            state,
        })
    }

    /// Whether a meta file exists in `dir`.
    pub(crate) fn exists(dir: &Path) -> bool {
        OpenOptions::new()
            .read(true)
            .open(dir.join(crate::segment::name::META))
            .is_ok()
    }

    pub(crate) fn state(&self) -> &MetaState {
        &self.state
    }

    /// Durably replaces the state: writes slot 0, `fdatasync`s, then the same to slot 1.
    pub(crate) fn store(&mut self, state: MetaState) -> Result<()> {
        for blob in [&state.vote, &state.committed].into_iter().flatten() {
            if blob.len() > META_BLOB_MAX_BYTES {
                return Err(Error::MetaBlobTooLarge {
                    len_bytes: blob.len(),
                    limit_bytes: META_BLOB_MAX_BYTES,
                });
            }
        }
        let generation = self.generation + 1;
        let slot = encode_slot(generation, &state);
        for offset in [0, SLOT_BYTES as u64] {
            self.file
                .write_all_at(&slot, offset)
                .map_err(Error::io("write", &self.path))?;
            self.file
                .sync_data()
                .map_err(Error::io("fdatasync", &self.path))?;
        }
        self.generation = generation;
        self.state = state;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::fs::StdFs;

    fn sample() -> MetaState {
        MetaState {
            purged: Some(LogId::new(3, 40)),
            last_segment: Some(SegmentId(7)),
            vote: Some(b"vote".to_vec()),
            committed: None,
        }
    }

    #[test]
    fn stored_state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut meta = Meta::create(&StdFs, dir.path()).unwrap();
        meta.store(sample()).unwrap();
        let reopened = Meta::open(&StdFs, dir.path()).unwrap();
        assert_eq!(reopened.state(), &sample());
    }

    fn newer() -> MetaState {
        MetaState {
            vote: Some(b"newer".to_vec()),
            ..sample()
        }
    }

    #[test]
    fn a_damaged_slot_leaves_the_newest_state_in_the_other() {
        for damaged in [0, SLOT_BYTES] {
            let dir = tempfile::tempdir().unwrap();
            let mut meta = Meta::create(&StdFs, dir.path()).unwrap();
            meta.store(sample()).unwrap();
            meta.store(newer()).unwrap();
            let path = dir.path().join("meta");
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[damaged + 30] ^= 0xff;
            std::fs::write(&path, &bytes).unwrap();
            let reopened = Meta::open(&StdFs, dir.path()).unwrap();
            assert_eq!(reopened.state(), &newer(), "slot at {damaged} damaged");
        }
    }

    #[test]
    fn an_update_torn_in_its_first_slot_leaves_the_state_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut meta = Meta::create(&StdFs, dir.path()).unwrap();
        meta.store(sample()).unwrap();
        let path = dir.path().join("meta");
        let mut bytes = std::fs::read(&path).unwrap();
        // The next update reached half of slot 0 before the crash.
        let torn = encode_slot(meta.generation + 1, &newer());
        bytes[..SLOT_BYTES / 2].copy_from_slice(&torn[..SLOT_BYTES / 2]);
        bytes[20] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(Meta::open(&StdFs, dir.path()).unwrap().state(), &sample());
    }

    #[test]
    fn a_file_of_the_alternating_scheme_reads_its_newest_slot() {
        let dir = tempfile::tempdir().unwrap();
        Meta::create(&StdFs, dir.path()).unwrap();
        let mut bytes = encode_slot(8, &newer());
        bytes.extend_from_slice(&encode_slot(7, &sample()));
        std::fs::write(dir.path().join("meta"), &bytes).unwrap();
        let mut meta = Meta::open(&StdFs, dir.path()).unwrap();
        assert_eq!(meta.state(), &newer());
        meta.store(sample()).unwrap();
        let bytes = std::fs::read(dir.path().join("meta")).unwrap();
        let (a, b) = bytes.split_at(SLOT_BYTES);
        assert_eq!(decode_slot(a), Some((9, sample())));
        assert_eq!(decode_slot(a), decode_slot(b));
    }

    #[test]
    fn both_slots_bad_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        Meta::create(&StdFs, dir.path()).unwrap();
        let path = dir.path().join("meta");
        std::fs::write(&path, vec![0xa5; 8192]).unwrap();
        assert!(matches!(
            Meta::open(&StdFs, dir.path()),
            Err(Error::MetaCorrupted { .. })
        ));
        std::fs::write(&path, vec![0; 100]).unwrap();
        assert!(matches!(
            Meta::open(&StdFs, dir.path()),
            Err(Error::MetaCorrupted { .. })
        ));
    }

    #[test]
    fn oversized_vote_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut meta = Meta::create(&StdFs, dir.path()).unwrap();
        let state = MetaState {
            vote: Some(vec![0; META_BLOB_MAX_BYTES + 1]),
            ..sample()
        };
        assert!(matches!(
            meta.store(state),
            Err(Error::MetaBlobTooLarge { .. })
        ));
        assert_eq!(meta.state(), &MetaState::default());
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_slots_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..SLOT_BYTES)) {
            let _ = decode_slot(&bytes);
        }

        #[test]
        fn slots_round_trip(term: u64, index: u64, vote in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64))) {
            let state = MetaState { purged: Some(LogId::new(term, index)), vote, ..MetaState::default() };
            prop_assert_eq!(decode_slot(&encode_slot(5, &state)), Some((5, state)));
        }
    }
}
