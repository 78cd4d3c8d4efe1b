//! What readers see: an immutable list of segment spans, swapped atomically (arc-swap) by
//! the writer on roll, truncate and purge. Within the active span, the segment's published
//! count moves forward without a swap. Reads take no lock.

use std::{
    fmt,
    ops::{Bound, RangeBounds},
    sync::Arc,
};

use arc_swap::ArcSwap;

use crate::{Error, LogId, Payload, Record, Result, segment::Segment};

/// The visible records `first .. end` of one segment.
pub(crate) struct Span<T> {
    pub(crate) segment: Arc<Segment<T>>,
    pub(crate) first: u64,
    /// Exclusive end; `None` while the segment is active (its published end).
    pub(crate) end: Option<u64>,
}

impl<T> Clone for Span<T> {
    fn clone(&self) -> Self {
        Self {
            segment: Arc::clone(&self.segment),
            first: self.first,
            end: self.end,
        }
    }
}

impl<T> fmt::Debug for Span<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Span")
            .field("segment", &self.segment.id)
            .field("first", &self.first)
            .field("end", &self.end())
            .finish()
    }
}

impl<T> Span<T> {
    pub(crate) fn end(&self) -> u64 {
        self.end.unwrap_or_else(|| self.segment.end_index())
    }
}

/// The spans, ascending and contiguous, and the purge mark.
pub(crate) struct View<T> {
    pub(crate) spans: Vec<Span<T>>,
    pub(crate) purged: Option<LogId>,
}

impl<T> fmt::Debug for View<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("View")
            .field("spans", &self.spans)
            .field("purged", &self.purged)
            .finish()
    }
}

impl<T> View<T> {
    fn find(&self, index: u64) -> Option<&Span<T>> {
        let after = self.spans.partition_point(|span| span.first <= index);
        let span = self.spans.get(after.checked_sub(1)?)?;
        (index < span.end()).then_some(span)
    }

    /// Index of the first visible record.
    pub(crate) fn first_index(&self) -> Option<u64> {
        self.spans
            .iter()
            .find(|s| s.first < s.end())
            .map(|s| s.first)
    }

    /// One past the last visible record.
    pub(crate) fn end_index(&self) -> Option<u64> {
        self.spans
            .iter()
            .rev()
            .find(|s| s.first < s.end())
            .map(Span::end)
    }

    /// Checks the documented invariants (debug and test builds).
    pub(crate) fn check_invariants(&self) {
        for pair in self.spans.windows(2) {
            assert_eq!(pair[0].end(), pair[1].first, "spans are contiguous");
            assert!(pair[0].end.is_some(), "only the last span is open");
        }
        if let (Some(purged), Some(first)) = (self.purged, self.spans.first()) {
            assert!(first.first > purged.index, "purged records are not visible");
        }
    }
}

impl<T: Payload> Span<T> {
    /// The verified record at `index`, which must be visible in this span.
    pub(crate) fn read(&self, index: u64) -> Result<Record<T>> {
        let segment = &self.segment;
        let offset = segment
            .offset_of(index)
            .expect("a visible index has an offset");
        segment
            .read(offset, index)
            .map_err(|reason| Error::Corrupted {
                segment: segment.id,
                offset: u64::from(offset),
                reason,
            })
    }
}

/// A cheap, cloneable, lock-free reader of a log.
pub struct Reader<T> {
    pub(crate) view: Arc<ArcSwap<View<T>>>,
}

impl<T> Clone for Reader<T> {
    fn clone(&self) -> Self {
        Self {
            view: Arc::clone(&self.view),
        }
    }
}

impl<T> fmt::Debug for Reader<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let view = self.view.load();
        f.debug_struct("Reader")
            .field("first", &view.first_index())
            .field("end", &view.end_index())
            .finish()
    }
}

impl<T: Payload> Reader<T> {
    /// The record at `index`, or `None` if it is purged, truncated or not yet written.
    ///
    /// # Errors
    /// [`Error::Corrupted`] if its bytes no longer match their checksum.
    pub fn get(&self, index: u64) -> Result<Option<Record<T>>> {
        let view = self.view.load();
        view.find(index).map(|span| span.read(index)).transpose()
    }

    /// Iterates the visible records in `range`, in index order, from one snapshot of the
    /// span list (records appended later in the active segment are included up to `range`'s
    /// end).
    pub fn range(&self, range: impl RangeBounds<u64>) -> Range<T> {
        let next = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => i.saturating_add(1),
            Bound::Excluded(&i) => i,
            Bound::Unbounded => u64::MAX,
        };
        Range {
            view: self.view.load_full(),
            next,
            end,
        }
    }

    /// Index of the first visible record.
    pub fn first_index(&self) -> Option<u64> {
        self.view.load().first_index()
    }

    /// Index of the last visible record.
    pub fn last_index(&self) -> Option<u64> {
        self.view.load().end_index().map(|end| end - 1)
    }
}

/// Iterator over a range of records; see [`Reader::range`].
pub struct Range<T> {
    view: Arc<View<T>>,
    next: u64,
    end: u64,
}

impl<T> fmt::Debug for Range<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Range")
            .field("next", &self.next)
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

impl<T: Payload> Iterator for Range<T> {
    type Item = Result<Record<T>>;

    fn next(&mut self) -> Option<Self::Item> {
        let first = self.view.first_index()?;
        self.next = self.next.max(first);
        if self.next >= self.end {
            return None;
        }
        let Some(span) = self.view.find(self.next) else {
            self.end = self.next;
            return None;
        };
        let record = span.read(self.next);
        self.next += 1;
        if record.is_err() {
            self.end = self.next;
        }
        Some(record)
    }
}
