//! The single writer: appends, rolls, seals, truncation and purge.
//!
//! It runs under the log's writer mutex. Each append writes the batch's frames, built on the
//! caller's thread, behind one batch header per segment it reaches, with one `pwritev`;
//! then it publishes the frames' offsets (readers see the records at once) and hands the
//! write to the syncer for group commit.

use std::{io::IoSlice, path::PathBuf, sync::Arc};

use arc_swap::ArcSwap;

use crate::{
    Batch, Encoded, Error, LogId, Options, Payload, Result, SegmentId,
    batch_frame::{self, BATCH_HEADER_LEN, BatchHeader},
    frame::{self, FRAME_HEADER_LEN, Frame, FrameKind},
    fs::{FileIo, Fs, write_all_vectored_at},
    meta::{Meta, MetaState},
    prepare::Preparer,
    recovery::Tail,
    segment::{FORMAT_VERSION, Header, RECORDS_START, Segment, name},
    sync::{SyncShared, SyncTarget, SyncTicket},
    view::{Span, View},
};

/// One record to append: its log id and its encoded payload.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a, T> {
    /// Where the record goes; must continue the log.
    pub id: LogId,
    /// The record's bytes.
    pub payload: &'a Encoded<T>,
}

/// The result of an append: records are readable now; the ticket says when they are durable.
#[derive(Debug, Clone)]
pub struct Appended {
    /// Id of the last record appended (`None` for an empty batch).
    pub last: Option<LogId>,
    /// Resolves when every record of the batch is durable.
    pub ticket: SyncTicket,
}

/// The segment being appended to.
#[derive(Debug)]
struct Active<T> {
    segment: Arc<Segment<T>>,
    file: Arc<dyn FileIo>,
    write_offset: u64,
}

/// State owned by the single writer.
#[derive(Debug)]
pub(crate) struct Writer<T> {
    pub(crate) fs: Arc<dyn Fs>,
    pub(crate) dir: PathBuf,
    pub(crate) options: Options,
    pub(crate) meta: Meta,
    pub(crate) view: Arc<ArcSwap<View<T>>>,
    pub(crate) sync: Arc<SyncShared>,
    preparer: Preparer,
    /// Id of the next segment to activate; ids are never reused.
    next_segment_id: u64,
    active: Option<Active<T>>,
    /// The index the next append must carry; `None` for a log never written or purged.
    pub(crate) next_index: Option<u64>,
    pub(crate) last_term: u64,
    /// The seal frame's bytes.
    buf: Vec<u8>,
    /// The offsets of the records of one write, as published.
    offsets: Vec<u32>,
}

impl<T: Payload> Writer<T> {
    pub(crate) fn new(
        fs: Arc<dyn Fs>,
        dir: PathBuf,
        options: Options,
        recovered: crate::recovery::Recovered<T>,
        sync: Arc<SyncShared>,
    ) -> Result<Self> {
        let preparer = Preparer::new(
            Arc::clone(&fs),
            dir.clone(),
            options.segment_size_bytes,
            options.prepare_ahead,
        )
        .map_err(Error::io("spawn preparer", &dir))?;
        let active = recovered.tail.map(
            |Tail {
                 segment,
                 file,
                 write_offset,
             }| Active {
                segment,
                file,
                write_offset,
            },
        );
        let view = View {
            spans: recovered.spans,
            purged: recovered.meta.state().purged,
        };
        view.check_invariants();
        Ok(Self {
            fs,
            dir,
            options,
            meta: recovered.meta,
            view: Arc::new(ArcSwap::from_pointee(view)),
            sync,
            preparer,
            next_segment_id: recovered.next_segment_id,
            active,
            next_index: recovered.next_index,
            last_term: recovered.last_term,
            buf: Vec::new(),
            offsets: Vec::new(),
        })
    }

    /// Checks a batch before any byte is written: sizes, contiguity, term order (the batch
    /// checked them between its own records when they were pushed).
    fn validate(&self, batch: &Batch<T>) -> Result<()> {
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            return Ok(());
        };
        if batch.largest_payload() > self.options.record_size_max_bytes {
            return Err(Error::RecordTooLarge {
                len_bytes: batch.largest_payload(),
                limit_bytes: self.options.record_size_max_bytes,
            });
        }
        if let Some(expected) = self.next_index
            && first.index != expected
        {
            return Err(Error::NonContiguous {
                expected,
                got: first.index,
            });
        }
        if first.term < self.last_term {
            return Err(Error::TermRegression {
                id: first,
                previous_term: self.last_term,
            });
        }
        if last.index == u64::MAX {
            return Err(Error::NonContiguous {
                expected: last.index,
                got: u64::MAX,
            });
        }
        Ok(())
    }

    /// Appends a batch; see [`Log::append_batch`](crate::Log::append_batch).
    pub(crate) fn append(&mut self, batch: &Batch<T>) -> Result<Appended> {
        self.sync.check()?;
        self.validate(batch)?;
        let mut ticket = self.sync.current();
        let mut from = 0;
        while from < batch.len() {
            let Some(active) = &self.active else {
                let first = batch.first().expect("a batch with records has a first");
                self.activate(first.index + from as u64, false)?;
                continue;
            };
            if active.segment.format != FORMAT_VERSION {
                // A tail left by an older format is sealed, never appended to.
                self.seal()?;
                continue;
            }
            let written = self.write_some(batch, from)?;
            if written == 0 {
                self.seal()?;
                continue;
            }
            ticket = self.sync.written(self.sync_target());
            from += written;
            if from < batch.len() {
                self.seal()?;
            }
        }
        let last = batch.last();
        if let Some(last) = last {
            self.next_index = Some(last.index + 1);
            self.last_term = last.term;
        }
        self.check_invariants();
        Ok(Appended { last, ticket })
    }

    fn sync_target(&self) -> SyncTarget {
        let active = self
            .active
            .as_ref()
            .expect("an append has an active segment");
        SyncTarget {
            file: Arc::clone(&active.file),
            path: active.segment.path.clone(),
            segment: active.segment.id,
            end: u32::try_from(active.write_offset).expect("segments are below 4 GiB"),
        }
    }

    /// Writes as many of the batch's records from `from` on as fit in the active segment,
    /// behind one batch header, with one `pwritev` of header and frames; returns how many.
    fn write_some(&mut self, batch: &Batch<T>, from: usize) -> Result<usize> {
        let active = self.active.as_mut().expect("caller activated a segment");
        // The segment's own size: it may predate a change of `segment_size_bytes`.
        let capacity_end = active.segment.size_bytes() - FRAME_HEADER_LEN as u64;
        let body_at = active.write_offset + BATCH_HEADER_LEN as u64;
        let room = capacity_end.saturating_sub(body_at);
        let to = batch.fitting(from, room);
        if to == from {
            return Ok(0);
        }
        let frames = batch.frames(from, to);
        let first = batch.first().expect("a batch with records has a first");
        let header = BatchHeader {
            body_len: u32::try_from(frames.len()).expect("segments are below 4 GiB"),
            synced_hint: self.sync.synced_hint(active.segment.id),
            first: first.index + from as u64,
            count: u32::try_from(to - from).expect("segments are below 4 GiB"),
            body_check: batch_frame::body_check(batch.crcs(from, to)),
        }
        .encode(active.segment.crc);
        let mut pieces = [IoSlice::new(&header), IoSlice::new(frames)];
        write_all_vectored_at(active.file.as_ref(), &mut pieces, active.write_offset)
            .map_err(Error::io("pwrite", &active.segment.path))?;
        let skipped = batch.offset(from);
        self.offsets.clear();
        self.offsets.extend((from..to).map(|k| {
            u32::try_from(body_at + (batch.offset(k) - skipped) as u64)
                .expect("segments are below 4 GiB")
        }));
        active.write_offset = body_at + frames.len() as u64;
        let end = usize::try_from(active.write_offset).expect("segments are below 4 GiB");
        active.segment.publish(&self.offsets, end);
        Ok(to - from)
    }

    /// Writes the seal frame, syncs the segment, and leaves no segment active.
    fn seal(&mut self) -> Result<()> {
        let Some(active) = self.active.take() else {
            return Ok(());
        };
        let frame = Frame {
            kind: FrameKind::Seal,
            id: LogId::new(self.last_term, active.segment.end_index()),
            payload_len: 0,
            synced_hint: self.sync.synced_hint(active.segment.id),
        };
        self.buf.clear();
        let empty_crc = frame::payload_crc(&[]);
        frame::encode(&mut self.buf, active.segment.crc, frame, &[], empty_crc);
        let path = &active.segment.path;
        active
            .file
            .write_all_at(&self.buf, active.write_offset)
            .map_err(Error::io("pwrite", path))?;
        active
            .file
            .sync_data()
            .map_err(Error::io("fdatasync", path))?;
        let end = u32::try_from(active.write_offset).expect("segments are below 4 GiB");
        self.sync.synced_all(active.segment.id, end);
        let mut view = self.cloned_view();
        let span = view
            .spans
            .last_mut()
            .expect("the active segment has a span");
        assert!(
            Arc::ptr_eq(&span.segment, &active.segment),
            "the active span is last"
        );
        span.end = Some(span.end());
        self.view.store(Arc::new(view));
        Ok(())
    }

    /// Takes a prepared file, stamps its header, names it, records it in the meta file.
    ///
    /// `durably`: sync the header before returning (a truncation is recorded by it). A roll
    /// need not: no record of the new segment is acknowledged before the group sync of its
    /// file, which makes the header durable too, and recovery discards a newest segment
    /// whose header never reached the disk if no record in it verifies.
    fn activate(&mut self, base: u64, durably: bool) -> Result<()> {
        assert!(self.active.is_none(), "one active segment at a time");
        let prepared = self
            .preparer
            .take()
            .map_err(Error::io("prepare segment", &self.dir))?;
        let id = SegmentId(self.next_segment_id);
        self.next_segment_id += 1;
        let header = Header {
            format: FORMAT_VERSION,
            id,
            base,
            size_bytes: self.options.segment_size_bytes,
        };
        let path = self.dir.join(name::segment(id, base));
        let file = prepared.file;
        file.write_all_at(&header.encode(), 0)
            .and_then(|()| if durably { file.sync_data() } else { Ok(()) })
            .and_then(|()| self.fs.rename(&prepared.path, &path))
            .and_then(|()| self.fs.sync_dir(&self.dir))
            .map_err(Error::io("activate segment", &path))?;
        let state = MetaState {
            last_segment: Some(id),
            ..self.meta.state().clone()
        };
        self.meta.store(state)?;
        let segment =
            Segment::map(header, path.clone(), file.file()).map_err(Error::io("map", &path))?;
        let segment = Arc::new(segment);
        let mut view = self.cloned_view();
        view.spans.push(Span {
            segment: Arc::clone(&segment),
            first: base,
            end: None,
        });
        self.view.store(Arc::new(view));
        self.active = Some(Active {
            segment,
            file,
            write_offset: RECORDS_START as u64,
        });
        self.next_index = Some(base);
        Ok(())
    }

    fn cloned_view(&self) -> View<T> {
        let view = self.view.load();
        View {
            spans: view.spans.clone(),
            purged: view.purged,
        }
    }

    /// Removes every record at or after `index`.
    pub(crate) fn truncate_from(&mut self, index: u64) -> Result<()> {
        self.sync.check()?;
        let Some(next) = self.next_index else {
            return Ok(());
        };
        if index >= next {
            return Ok(());
        }
        if let Some(purged) = self.meta.state().purged
            && index <= purged.index
        {
            return Err(Error::Purged { index, purged });
        }
        let previous_term = self.term_before(index)?;
        self.seal()?;
        let mut view = self.cloned_view();
        let mut superseded = Vec::new();
        while view.spans.last().is_some_and(|s| s.first >= index) {
            superseded.push(view.spans.pop().expect("last exists").segment);
        }
        if let Some(last) = view.spans.last_mut() {
            last.end = Some(last.end().min(index));
        }
        self.view.store(Arc::new(view));
        self.activate(index, true)?;
        self.last_term = previous_term;
        self.remove_segments(superseded);
        self.check_invariants();
        Ok(())
    }

    /// Term of the record before `index` (else of the purge mark, else 0).
    fn term_before(&self, index: u64) -> Result<u64> {
        let reader = crate::Reader {
            view: Arc::clone(&self.view),
        };
        match index
            .checked_sub(1)
            .map(|i| reader.get(i))
            .transpose()?
            .flatten()
        {
            Some(record) => Ok(record.id().term),
            None => Ok(self.meta.state().purged.map_or(0, |p| p.term)),
        }
    }

    /// Drops every whole segment at or below `upto` after durably recording the mark.
    pub(crate) fn purge_upto(&mut self, upto: LogId) -> Result<()> {
        self.sync.check()?;
        if upto.index == u64::MAX {
            return Err(Error::IndexOutOfRange { index: upto.index });
        }
        if self
            .meta
            .state()
            .purged
            .is_some_and(|p| p.index >= upto.index)
        {
            return Ok(());
        }
        let keep_from = upto.index + 1;
        let past_end = self.next_index.is_none_or(|next| next < keep_from);
        let mut state = MetaState {
            purged: Some(upto),
            ..self.meta.state().clone()
        };
        if past_end {
            // Every segment is dropped below; none need be found at the next open.
            state.last_segment = None;
        }
        self.meta.store(state)?;
        if past_end {
            self.seal()?;
            self.next_index = Some(keep_from);
            self.last_term = self.last_term.max(upto.term);
        }
        let active_id = self.active.as_ref().map(|a| a.segment.id);
        let mut view = self.cloned_view();
        let mut dropped = Vec::new();
        view.spans.retain(|span| {
            let keep = span.end() > keep_from || Some(span.segment.id) == active_id;
            if !keep {
                dropped.push(Arc::clone(&span.segment));
            }
            keep
        });
        if let Some(first) = view.spans.first_mut() {
            first.first = first.first.max(keep_from);
        }
        view.purged = Some(upto);
        self.view.store(Arc::new(view));
        self.remove_segments(dropped);
        self.check_invariants();
        Ok(())
    }

    /// Disposes of segments no view needs. A segment nobody maps any more (this is the last
    /// `Arc`, and no view can hand out a new one) is recycled for a later roll; one still held
    /// by a reader is unlinked, and the reader keeps its mapping.
    fn remove_segments(&mut self, segments: Vec<Arc<Segment<T>>>) {
        for segment in segments {
            let path = segment.path.clone();
            let recycled = match Arc::try_unwrap(segment) {
                Ok(unmapped) => {
                    let size_bytes = unmapped.size_bytes();
                    drop(unmapped);
                    self.preparer.recycle(&path, size_bytes).unwrap_or_else(|error| {
                        tracing::warn!(path = %path.display(), %error, "cannot recycle segment");
                        false
                    })
                }
                Err(_still_mapped) => false,
            };
            if !recycled && let Err(error) = self.fs.remove(&path) {
                tracing::warn!(path = %path.display(), %error, "cannot remove segment");
            }
        }
    }

    /// Durably stores `vote` in the meta file.
    pub(crate) fn save_vote(&mut self, vote: &[u8]) -> Result<()> {
        let state = MetaState {
            vote: Some(vote.to_vec()),
            ..self.meta.state().clone()
        };
        self.meta.store(state)
    }

    /// Durably stores `committed` in the meta file.
    pub(crate) fn save_committed(&mut self, committed: &[u8]) -> Result<()> {
        let state = MetaState {
            committed: Some(committed.to_vec()),
            ..self.meta.state().clone()
        };
        self.meta.store(state)
    }

    fn check_invariants(&self) {
        #[cfg(any(debug_assertions, test))]
        {
            let view = self.view.load();
            view.check_invariants();
            if let Some(active) = &self.active {
                let last = view.spans.last().expect("an active segment has a span");
                assert!(
                    Arc::ptr_eq(&last.segment, &active.segment),
                    "the active span is last"
                );
                assert_eq!(
                    Some(active.segment.end_index()),
                    self.next_index,
                    "next index"
                );
                assert!(
                    active.write_offset <= active.segment.size_bytes(),
                    "in bounds"
                );
            }
            if let (Some(end), Some(next)) = (view.end_index(), self.next_index) {
                assert!(end <= next, "nothing visible past the next index");
            }
        }
    }
}
