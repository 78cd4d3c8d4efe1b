//! Opening a log directory: verify every file, rebuild the span list, repair a torn tail.
//!
//! 1. Classify directory entries; a foreign file is an error, prepared files are removed.
//! 2. Read the meta file (vote, committed, purge mark, newest segment id).
//! 3. For each segment, in id order: verify the header (a format this build reads) against
//!    the file name and the file size against the header *before* mapping it, then walk its
//!    batches (format 2; frames in format 1), checking each batch whole and each frame's
//!    CRC32C, index continuity, term order and rkyv validity. A sealed segment must end in a
//!    seal frame. The last segment's walk stops at the first zero or bad header or batch.
//! 4. Tail: the largest `synced_hint` among the tail's verifiable batch headers (format 1:
//!    frames), and its sync mark, bound from below what was durable. A walk that stops below
//!    that point hit corruption (an error naming segment and offset). Batch headers (frames)
//!    that still verify past the stop are the rest of a torn group of appends: an error under
//!    the strict policy, else zeroed and synced. Other bytes past the stop never verify
//!    (zeros, torn writes, or another segment's bytes in a recycled file) and are simply
//!    overwritten by later appends.
//! 5. A newer segment supersedes the records of older ones from its base index on
//!    (truncation); records at or below the purge mark are dropped; what is left must be
//!    contiguous, or records are missing.

use std::{
    fs::File,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::{
    Corruption, Error, LogId, Options, Payload, RecoveryPolicy, Result, SegmentId,
    batch_frame::{self, BATCH_HEADER_LEN, BatchHeader, Unit},
    encoded::validate,
    frame::{self, FRAME_ALIGN, FRAME_HEADER_LEN, Frame, FrameCrc, FrameError, FrameKind},
    fs::{FileIo, Fs, write_zeros},
    meta::{Meta, MetaState},
    segment::{
        FORMAT_VERSION, FORMAT_VERSION_OLDEST, Header, RECORDS_START, RECORDS_START_OFFSET,
        RecoveryMap, SEGMENT_HEADER_LEN, Segment, name, payload_bound, sync_mark,
    },
    view::Span,
};

/// The writable tail found by recovery.
#[derive(Debug)]
pub(crate) struct Tail<T> {
    pub(crate) segment: Arc<Segment<T>>,
    pub(crate) file: Arc<dyn FileIo>,
    pub(crate) write_offset: u64,
}

/// Everything `Log::open` needs.
#[derive(Debug)]
pub(crate) struct Recovered<T> {
    pub(crate) meta: Meta,
    pub(crate) spans: Vec<Span<T>>,
    pub(crate) tail: Option<Tail<T>>,
    pub(crate) next_index: Option<u64>,
    pub(crate) last_term: u64,
    pub(crate) next_segment_id: u64,
}

/// How a segment's frame walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Seal,
    Zero,
    Bad(Corruption),
}

/// The verified records of one segment.
#[derive(Debug)]
struct Walk {
    offsets: Vec<u32>,
    last_term: Option<u64>,
    /// Offset where the walk stopped (the seal, the zero header, or the bad frame).
    end: usize,
    stop: Stop,
    synced_hint: u32,
}

struct Found<T> {
    segment: Arc<Segment<T>>,
    /// The whole file, for the walk and the tail's probe; dropped with this.
    view: RecoveryMap,
    file: Arc<dyn FileIo>,
    walk: Walk,
}

fn walk<T: Payload>(segment: &Segment<T>, bytes: &[u8]) -> Result<Walk> {
    let mut walk = Walk {
        offsets: Vec::new(),
        last_term: None,
        end: RECORDS_START,
        stop: Stop::Zero,
        synced_hint: RECORDS_START_OFFSET,
    };
    if segment.format == FORMAT_VERSION_OLDEST {
        walk_frames(segment, bytes, &mut walk)?;
    } else {
        walk_batches(segment, bytes, &mut walk)?;
    }
    Ok(walk)
}

/// Format 1: walks seeded record frames from the header on.
fn walk_frames<T: Payload>(segment: &Segment<T>, bytes: &[u8], walk: &mut Walk) -> Result<()> {
    loop {
        let at = walk.end;
        let frame = match frame::decode(bytes, at, segment.crc, segment.payload_max()) {
            Ok(frame) => frame,
            Err(FrameError::End) => return Ok(()),
            Err(FrameError::Bad(reason)) => {
                walk.stop = Stop::Bad(reason);
                return Ok(());
            }
        };
        walk.synced_hint = walk.synced_hint.max(frame.synced_hint);
        if frame.kind == FrameKind::Seal {
            walk.stop = Stop::Seal;
            return Ok(());
        }
        accept(segment, bytes, walk, at, frame)?;
        walk.end = at + frame.len();
    }
}

/// Format 2: walks batches from the header on. A batch counts only whole (see
/// [`batch_frame`]); one that is not stops the walk like a bad frame.
fn walk_batches<T: Payload>(segment: &Segment<T>, bytes: &[u8], walk: &mut Walk) -> Result<()> {
    let mut records = Vec::new();
    loop {
        let at = walk.end;
        let header = match batch_frame::decode(bytes, at, segment.crc) {
            Ok(Unit::Batch(header)) => header,
            Ok(Unit::Seal { synced_hint }) => {
                walk.synced_hint = walk.synced_hint.max(synced_hint);
                walk.stop = Stop::Seal;
                return Ok(());
            }
            Err(FrameError::End) => return Ok(()),
            Err(FrameError::Bad(reason)) => {
                walk.stop = Stop::Bad(reason);
                return Ok(());
            }
        };
        walk.synced_hint = walk.synced_hint.max(header.synced_hint);
        if let Err(reason) = whole_batch(segment, bytes, at, &header, &mut records) {
            walk.stop = Stop::Bad(reason);
            return Ok(());
        }
        let expected = segment.base + walk.offsets.len() as u64;
        if header.first != expected {
            let found = header.first;
            return Err(Error::Corrupted {
                segment: segment.id,
                offset: at as u64,
                reason: Corruption::IndexOutOfOrder { expected, found },
            });
        }
        for &(offset, frame) in &records {
            accept(segment, bytes, walk, offset, frame)?;
        }
        walk.end = at + header.len();
    }
}

/// Fills `records` with the record frames of the batch at `at`, if it is whole: exactly
/// `count` frames that verify fill its body, and their checksums give its body check.
fn whole_batch<T>(
    segment: &Segment<T>,
    bytes: &[u8],
    at: usize,
    header: &BatchHeader,
    records: &mut Vec<(usize, Frame)>,
) -> Result<(), Corruption> {
    let body_end = at + header.len();
    let body = &bytes[..body_end];
    records.clear();
    let mut check = 0;
    let mut offset = at + BATCH_HEADER_LEN;
    while offset < body_end {
        let frame = frame::decode(body, offset, segment.record_crc, segment.payload_max())
            .map_err(|error| match error {
                FrameError::End => Corruption::BadLength,
                FrameError::Bad(reason) => reason,
            })?;
        if frame.kind != FrameKind::Record {
            return Err(Corruption::BadKind);
        }
        check = batch_frame::body_check_append(check, &body[offset..offset + 4]);
        records.push((offset, frame));
        offset += frame.len();
    }
    if records.len() != header.count as usize {
        return Err(Corruption::BadLength);
    }
    if check != header.body_check {
        return Err(Corruption::BadChecksum);
    }
    Ok(())
}

/// Takes a verified record frame into the walk. Frames that verify but break continuity or
/// fail rkyv validation are corruption wherever they are (they were written whole).
fn accept<T: Payload>(
    segment: &Segment<T>,
    bytes: &[u8],
    walk: &mut Walk,
    at: usize,
    frame: Frame,
) -> Result<()> {
    let corrupted = |reason| Error::Corrupted {
        segment: segment.id,
        offset: at as u64,
        reason,
    };
    let expected = segment.base + walk.offsets.len() as u64;
    if frame.id.index != expected {
        let found = frame.id.index;
        return Err(corrupted(Corruption::IndexOutOfOrder { expected, found }));
    }
    if walk.last_term.is_some_and(|last| frame.id.term < last) {
        return Err(corrupted(Corruption::TermRegression));
    }
    let payload_start = at + FRAME_HEADER_LEN;
    if validate::<T>(&bytes[payload_start..payload_start + frame.payload_len as usize]).is_err() {
        return Err(corrupted(Corruption::InvalidArchive));
    }
    walk.offsets
        .push(u32::try_from(at).expect("segments are below 4 GiB"));
    walk.last_term = Some(frame.id.term);
    Ok(())
}

/// Past the walk's end in the tail, frames (format 1) or batch headers (format 2) that still
/// verify under this segment's seed are pieces of a torn group of appends (bytes left from
/// another segment in a recycled file never verify). Returns their largest synced hint and
/// the end of the last one (0 if none).
fn probe_beyond(
    format: u32,
    crc: FrameCrc,
    payload_max: usize,
    bytes: &[u8],
    from: usize,
) -> (u32, usize) {
    let mut hint = 0;
    let mut torn_end = 0;
    let mut at = skip_zeros(bytes, from);
    while at + FRAME_HEADER_LEN <= bytes.len() {
        let found = if format == FORMAT_VERSION_OLDEST {
            frame::decode(bytes, at, crc, payload_max).map(|frame| (frame.synced_hint, frame.len()))
        } else {
            batch_frame::decode(bytes, at, crc).map(|unit| match unit {
                Unit::Batch(header) => (header.synced_hint, header.len()),
                Unit::Seal { synced_hint } => (synced_hint, FRAME_HEADER_LEN),
            })
        };
        match found {
            Ok((synced_hint, len)) => {
                hint = hint.max(synced_hint);
                at += len;
                torn_end = at;
            }
            Err(_) => at += FRAME_ALIGN,
        }
        at = skip_zeros(bytes, at);
    }
    (hint, torn_end)
}

/// The first 16-aligned offset at or after `at` whose 16 bytes are not all zero (a frame
/// header always has a non-zero byte in its first 16: its length or its length guard).
/// Zero pages are skipped whole, so probing a mostly empty tail costs a memory scan.
fn skip_zeros(bytes: &[u8], mut at: usize) -> usize {
    const PAGE: usize = 4096;
    let is_zero = |chunk: &[u8]| chunk.iter().fold(0u8, |acc, &b| acc | b) == 0;
    while at + FRAME_ALIGN <= bytes.len() {
        if at.is_multiple_of(PAGE) && at + PAGE <= bytes.len() && is_zero(&bytes[at..at + PAGE]) {
            at += PAGE;
        } else if is_zero(&bytes[at..at + FRAME_ALIGN]) {
            at += FRAME_ALIGN;
        } else {
            return at;
        }
    }
    bytes.len()
}

fn read_header(path: &Path, id: SegmentId, base: u64) -> Result<(Header, File)> {
    let corrupted = |reason| Error::Corrupted {
        segment: id,
        offset: 0,
        reason,
    };
    let file = File::open(path).map_err(Error::io("open", path))?;
    let actual_bytes = file.metadata().map_err(Error::io("stat", path))?.len();
    let mut bytes = [0u8; SEGMENT_HEADER_LEN];
    if actual_bytes < SEGMENT_HEADER_LEN as u64 {
        return Err(Error::SegmentSizeMismatch {
            segment: id,
            expected_bytes: 0,
            actual_bytes,
        });
    }
    file.read_exact_at(&mut bytes, 0)
        .map_err(Error::io("read", path))?;
    let header = Header::decode(&bytes).map_err(corrupted)?;
    if !(FORMAT_VERSION_OLDEST..=FORMAT_VERSION).contains(&header.format) {
        return Err(Error::UnsupportedFormat {
            segment: id,
            version: header.format,
            oldest: FORMAT_VERSION_OLDEST,
            newest: FORMAT_VERSION,
        });
    }
    if header.id != id || header.base != base {
        return Err(corrupted(Corruption::HeaderMismatch));
    }
    if header.size_bytes != actual_bytes {
        let expected_bytes = header.size_bytes;
        return Err(Error::SegmentSizeMismatch {
            segment: id,
            expected_bytes,
            actual_bytes,
        });
    }
    if !(crate::options::SEGMENT_SIZE_MIN_BYTES..=crate::options::SEGMENT_SIZE_MAX_BYTES)
        .contains(&header.size_bytes)
    {
        return Err(corrupted(Corruption::BadSegmentHeader));
    }
    Ok((header, file))
}

/// Segment files found in the directory: id, base index, path.
type Listed = Vec<(SegmentId, u64, PathBuf)>;

fn list(fs: &dyn Fs, dir: &Path) -> Result<(Listed, u64)> {
    let mut segments = Vec::new();
    let mut max_id = 0;
    for entry in std::fs::read_dir(dir).map_err(Error::io("list", dir))? {
        let entry = entry.map_err(Error::io("list", dir))?;
        let path = entry.path();
        let Some(file_name) = entry.file_name().to_str().map(str::to_owned) else {
            return Err(Error::ForeignFile { path });
        };
        match name::parse(&file_name) {
            name::Entry::Segment { id, base } => {
                max_id = max_id.max(id.0 + 1);
                segments.push((id, base, path));
            }
            name::Entry::Prepared | name::Entry::MetaTemp => {
                fs.remove(&path).map_err(Error::io("remove", &path))?;
            }
            name::Entry::Meta | name::Entry::Lock => {}
            name::Entry::Foreign => return Err(Error::ForeignFile { path }),
        }
    }
    segments.sort_by_key(|s| s.0);
    Ok((segments, max_id))
}

/// Repairs or rejects what follows the tail's last valid record.
fn settle_tail<T>(found: &Found<T>, policy: RecoveryPolicy) -> Result<()> {
    let segment = &found.segment;
    let walk = &found.walk;
    let bytes = found.view.bytes();
    let (beyond_hint, torn_end) = probe_beyond(
        segment.format,
        segment.crc,
        segment.payload_max(),
        bytes,
        walk.end,
    );
    let marked = sync_mark::durable_end(segment.id, bytes);
    let durable = walk.synced_hint.max(beyond_hint).max(marked) as usize;
    let reason = match walk.stop {
        Stop::Bad(reason) => reason,
        _ => Corruption::BadLength,
    };
    if walk.end < durable {
        return Err(Error::Corrupted {
            segment: segment.id,
            offset: walk.end as u64,
            reason,
        });
    }
    if torn_end <= walk.end {
        return Ok(());
    }
    if policy == RecoveryPolicy::Strict {
        return Err(Error::TornTail {
            segment: segment.id,
            offset: walk.end as u64,
        });
    }
    tracing::warn!(
        segment = %segment.id,
        offset = walk.end,
        torn_bytes = torn_end - walk.end,
        "zeroing the torn tail of the log"
    );
    // Past the end recovery publishes (`walk.end`), so past anything a reader will see; no
    // slice of the whole-file view is alive while the zeros are written.
    let path = &segment.path;
    write_zeros(
        found.file.as_ref(),
        walk.end as u64,
        (torn_end - walk.end) as u64,
    )
    .map_err(Error::io("write", path))?;
    found.file.sync_data().map_err(Error::io("fdatasync", path))
}

/// Opens every segment and walks it; the last may be unsealed.
fn load<T: Payload>(fs: &dyn Fs, listed: Listed, options: &Options) -> Result<Loaded<T>> {
    let count = listed.len();
    let mut found: Vec<Found<T>> = Vec::with_capacity(count);
    let mut cut_short_tail = None;
    for (position, (id, base, path)) in listed.into_iter().enumerate() {
        let is_tail = position + 1 == count;
        let (header, file) = match read_header(&path, id, base) {
            Ok(found) => found,
            // A header in a format this build does not read verified: it is no cut-short
            // activation, and discarding it could drop a newer build's records.
            Err(error)
                if is_tail
                    && !matches!(error, Error::UnsupportedFormat { .. })
                    && cut_short(&path, id, options)? =>
            {
                tracing::warn!(segment = %id, %error, "discarding a newest segment whose activation was cut short");
                cut_short_tail = Some(path);
                continue;
            }
            Err(error) => return Err(error),
        };
        let view = RecoveryMap::new(&file, header.size_bytes).map_err(Error::io("map", &path))?;
        let segment = Segment::map(header, path.clone(), &file).map_err(Error::io("map", &path))?;
        let walk = walk(&segment, view.bytes())?;
        if !is_tail && walk.stop != Stop::Seal {
            let reason = match walk.stop {
                Stop::Bad(reason) => reason,
                _ => Corruption::MissingSeal,
            };
            return Err(Error::Corrupted {
                segment: id,
                offset: walk.end as u64,
                reason,
            });
        }
        let file = fs.open(&path).map_err(Error::io("open", &path))?;
        found.push(Found {
            segment: Arc::new(segment),
            view,
            file,
            walk,
        });
    }
    Ok(Loaded {
        found,
        cut_short: cut_short_tail,
    })
}

/// The segments `load` verified, and the newest one whose activation was cut short.
struct Loaded<T> {
    found: Vec<Found<T>>,
    cut_short: Option<PathBuf>,
}

/// What to do with a newest segment whose header does not verify. A roll syncs the header
/// together with the segment's first group of records, so if nothing in the segment is known
/// durable (no frame's synced hint and no sync mark, checked under the id its name gives,
/// points past the first record) no record of it was acknowledged: the activation was cut
/// short. Returns whether to discard it; an error if frames of a torn group remain and the
/// policy is strict.
fn cut_short(path: &Path, id: SegmentId, options: &Options) -> Result<bool> {
    let Ok(file) = File::open(path) else {
        return Ok(false);
    };
    let Ok(size_bytes) = file.metadata().map(|m| m.len()) else {
        return Ok(false);
    };
    if !(crate::options::SEGMENT_SIZE_MIN_BYTES..=crate::options::SEGMENT_SIZE_MAX_BYTES)
        .contains(&size_bytes)
    {
        return Ok(false);
    }
    let Ok(view) = RecoveryMap::new(&file, size_bytes) else {
        return Ok(false);
    };
    let (hint, torn_end) = [FORMAT_VERSION_OLDEST, FORMAT_VERSION]
        .map(|format| {
            probe_beyond(
                format,
                FrameCrc::new(id),
                payload_bound(size_bytes),
                view.bytes(),
                RECORDS_START,
            )
        })
        .into_iter()
        .fold((0, 0), |(hint, end), (h, e)| (hint.max(h), end.max(e)));
    let marked = sync_mark::durable_end(id, view.bytes());
    if hint.max(marked) > RECORDS_START_OFFSET {
        return Ok(false);
    }
    if torn_end > 0 && options.recovery == RecoveryPolicy::Strict {
        return Err(Error::TornTail {
            segment: id,
            offset: RECORDS_START as u64,
        });
    }
    Ok(true)
}

/// Builds the visible spans: supersede by truncation, drop purged, check contiguity.
/// Returns them with the files no visible record needs any more (removed by the caller).
fn build_spans<T>(
    found: &[Found<T>],
    purged: Option<LogId>,
) -> Result<(Vec<Span<T>>, Vec<PathBuf>)> {
    let mut spans: Vec<Span<T>> = Vec::new();
    let mut unneeded = Vec::new();
    for f in found {
        let base = f.segment.base;
        while let Some(last) = spans.last_mut() {
            if last.first >= base {
                unneeded.push(spans.pop().expect("last exists").segment.path.clone());
            } else {
                last.end = Some(last.end().min(base));
                break;
            }
        }
        let end = base + f.walk.offsets.len() as u64;
        spans.push(Span {
            segment: Arc::clone(&f.segment),
            first: base,
            end: Some(end),
        });
    }
    if let Some(purged) = purged {
        let keep_from = purged.index + 1;
        let tail_id = found.last().map(|f| f.segment.id);
        spans.retain(|span| {
            let is_tail = Some(span.segment.id) == tail_id;
            let keep = span.end() > keep_from || (is_tail && span.end() == keep_from);
            if !keep {
                unneeded.push(span.segment.path.clone());
            }
            keep
        });
        if let Some(first) = spans.first_mut() {
            first.first = first.first.max(keep_from);
            first.end = Some(first.end().max(first.first));
            if first.first > keep_from && first.end() > first.first {
                return Err(Error::MissingRecords {
                    segment: first.segment.id,
                    expected_index: keep_from,
                    found_index: first.first,
                });
            }
        }
    }
    for pair in spans.windows(2) {
        if pair[0].end() != pair[1].first {
            return Err(Error::MissingRecords {
                segment: pair[1].segment.id,
                expected_index: pair[0].end(),
                found_index: pair[1].first,
            });
        }
    }
    Ok((spans, unneeded))
}

/// Opens the meta file, or creates it in a fresh directory; checks the newest segment exists.
fn open_meta(fs: &dyn Fs, dir: &Path, listed: &Listed) -> Result<Meta> {
    let meta = if Meta::exists(dir) {
        Meta::open(fs, dir)?
    } else if listed.is_empty() {
        let meta = Meta::create(fs, dir)?;
        fs.sync_dir(dir).map_err(Error::io("fsync", dir))?;
        meta
    } else {
        let path = dir.join(name::META);
        return Err(Error::MetaCorrupted {
            path,
            reason: "missing while segments exist",
        });
    };
    if let Some(last) = meta.state().last_segment
        && !listed.iter().any(|(id, _, _)| *id >= last)
    {
        return Err(Error::MissingSegment { segment: last });
    }
    Ok(meta)
}

/// Removes files recovery found unneeded, after pointing the meta file's newest segment at
/// a survivor, so that no crash can leave it naming a removed file.
fn remove_unneeded<T>(
    fs: &dyn Fs,
    meta: &mut Meta,
    spans: &[Span<T>],
    unneeded: &[PathBuf],
) -> Result<()> {
    if unneeded.is_empty() {
        return Ok(());
    }
    let newest = spans.iter().map(|s| s.segment.id).max();
    if meta.state().last_segment != newest {
        meta.store(MetaState {
            last_segment: newest,
            ..meta.state().clone()
        })?;
    }
    for path in unneeded {
        tracing::info!(path = %path.display(), "removing a segment no record needs");
        fs.remove(path).map_err(Error::io("remove", path))?;
    }
    Ok(())
}

/// Recovers the log in `dir` (already locked by the caller).
pub(crate) fn recover<T: Payload>(
    fs: &dyn Fs,
    dir: &Path,
    options: &Options,
) -> Result<Recovered<T>> {
    let (listed, max_listed_id) = list(fs, dir)?;
    let mut meta = open_meta(fs, dir, &listed)?;
    let purged = meta.state().purged;
    let Loaded { found, cut_short } = load::<T>(fs, listed, options)?;
    if let Some(tail) = found.last()
        && tail.walk.stop != Stop::Seal
    {
        settle_tail(tail, options.recovery)?;
    }
    for f in &found {
        f.segment.publish(&f.walk.offsets, f.walk.end);
    }
    let (spans, mut unneeded) = build_spans(&found, purged)?;
    unneeded.extend(cut_short);
    remove_unneeded(fs, &mut meta, &spans, &unneeded)?;
    let tail = found
        .into_iter()
        .last()
        .filter(|f| f.walk.stop != Stop::Seal)
        .and_then(|f| {
            let alive = spans
                .last()
                .is_some_and(|s| Arc::ptr_eq(&s.segment, &f.segment));
            alive.then(|| Tail {
                write_offset: f.walk.end as u64,
                segment: f.segment,
                file: f.file,
            })
        });
    let mut spans = spans;
    if let (Some(tail), Some(last)) = (&tail, spans.last_mut()) {
        assert!(
            Arc::ptr_eq(&tail.segment, &last.segment),
            "the tail is the last span"
        );
        last.end = None;
    }
    let span_end = spans.last().map(Span::end);
    let next_index = match (span_end, purged) {
        (Some(end), Some(p)) => Some(end.max(p.index + 1)),
        (Some(end), None) => Some(end),
        (None, Some(p)) => Some(p.index + 1),
        (None, None) => None,
    };
    check_terms(&spans)?;
    let last_term = last_term(&spans, purged)?;
    let next_segment_id = max_listed_id
        .max(meta.state().last_segment.map_or(0, |s| s.0 + 1))
        .max(1);
    Ok(Recovered {
        meta,
        spans,
        tail,
        next_index,
        last_term,
        next_segment_id,
    })
}

/// Terms never decrease across the visible records. Within a segment `walk` checked it;
/// across segments it holds only after truncation replaced records (a replacement may carry
/// a lower term than what it replaced), so it is checked here, on the visible spans.
fn check_terms<T: Payload>(spans: &[Span<T>]) -> Result<()> {
    let visible = spans.iter().filter(|s| s.first < s.end());
    let mut previous: Option<u64> = None;
    for span in visible {
        let first = span.read(span.first)?;
        if previous.is_some_and(|term| first.id().term < term) {
            let offset = span.segment.offset_of(span.first).map_or(0, u64::from);
            let reason = Corruption::TermRegression;
            return Err(Error::Corrupted {
                segment: span.segment.id,
                offset,
                reason,
            });
        }
        previous = Some(span.read(span.end() - 1)?.id().term);
    }
    Ok(())
}

/// Term of the last visible record, else of the purge mark, else 0.
fn last_term<T: Payload>(spans: &[Span<T>], purged: Option<LogId>) -> Result<u64> {
    match spans.iter().rev().find(|s| s.first < s.end()) {
        Some(span) => Ok(span.read(span.end() - 1)?.id().term),
        None => Ok(purged.map_or(0, |p| p.term)),
    }
}

#[cfg(test)]
mod tests {
    use super::skip_zeros;

    #[test]
    fn skip_zeros_finds_the_first_nonzero_aligned_chunk() {
        let mut bytes = vec![0u8; 3 * 4096];
        assert_eq!(skip_zeros(&bytes, 0), bytes.len());
        bytes[5000] = 1;
        assert_eq!(skip_zeros(&bytes, 0), 4992);
        assert_eq!(skip_zeros(&bytes, 4992), 4992);
        assert_eq!(skip_zeros(&bytes, 5008), bytes.len());
        bytes[16] = 7;
        assert_eq!(skip_zeros(&bytes, 0), 16);
    }
}
