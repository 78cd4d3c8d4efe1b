//! How a log is opened: sizes, sync and recovery policies.

use crate::{
    Error, Result,
    batch_frame::BATCH_HEADER_LEN,
    frame::{FRAME_HEADER_LEN, frame_len},
    segment::RECORDS_START,
};

/// Smallest allowed segment (one page for the header plus room for records).
pub const SEGMENT_SIZE_MIN_BYTES: u64 = 64 * 1024;
/// Largest allowed segment: frame offsets are stored as `u32`.
pub const SEGMENT_SIZE_MAX_BYTES: u64 = 1 << 31;

/// When an appended record counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// `fdatasync` after each group of appends; durability is signalled only after it.
    #[default]
    Durable,
    /// Records are durable once in the page cache: a power cut may lose the last moments.
    ///
    /// Never applies to segment headers, seals or the meta file (vote, committed id,
    /// purge mark), which are always synced. Reported as non-durable (see
    /// [`Durability::PageCache`](crate::Durability::PageCache)).
    Relaxed,
}

impl SyncPolicy {
    /// Whether appends under this policy survive a power cut once signalled.
    pub fn is_durable(self) -> bool {
        matches!(self, Self::Durable)
    }
}

/// What recovery does with a torn tail (bytes of an append that never finished).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryPolicy {
    /// A torn tail is cut off and its bytes zeroed; it was never acknowledged as durable.
    #[default]
    TolerateTornTail,
    /// Any invalid byte after the last record is an error, for an operator to inspect.
    Strict,
}

/// Options for [`Log::open`](crate::Log::open).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Size of every segment file, in bytes (a multiple of 4096).
    pub segment_size_bytes: u64,
    /// When appends become durable.
    pub sync: SyncPolicy,
    /// What recovery does with a torn tail.
    pub recovery: RecoveryPolicy,
    /// Largest encoded record accepted, in bytes.
    pub record_size_max_bytes: usize,
    /// Prepare the next segment on a background thread so appends never create files.
    pub prepare_ahead: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            segment_size_bytes: 64 * 1024 * 1024,
            sync: SyncPolicy::Durable,
            recovery: RecoveryPolicy::TolerateTornTail,
            record_size_max_bytes: 4 * 1024 * 1024,
            prepare_ahead: true,
        }
    }
}

impl Options {
    /// Checks that the options describe a working log.
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] naming the broken rule.
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason| Err(Error::InvalidOptions { reason });
        if self.segment_size_bytes < SEGMENT_SIZE_MIN_BYTES {
            return invalid("segment_size_bytes is below 64 KiB");
        }
        if self.segment_size_bytes > SEGMENT_SIZE_MAX_BYTES {
            return invalid("segment_size_bytes is above 2 GiB");
        }
        if !self.segment_size_bytes.is_multiple_of(4096) {
            return invalid("segment_size_bytes is not a multiple of 4096");
        }
        if self.record_size_max_bytes == 0 {
            return invalid("record_size_max_bytes is zero");
        }
        if self.record_size_max_bytes > u32::MAX as usize
            || self.record_capacity_bytes() < frame_len(self.record_size_max_bytes) as u64
        {
            return invalid("record_size_max_bytes does not fit in one segment");
        }
        Ok(())
    }

    /// Bytes of a segment available to record frames: the header, one batch header and
    /// room for the seal frame are reserved.
    pub(crate) fn record_capacity_bytes(&self) -> u64 {
        self.segment_size_bytes
            - RECORDS_START as u64
            - FRAME_HEADER_LEN as u64
            - BATCH_HEADER_LEN as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_options_are_valid() {
        Options::default().validate().unwrap();
    }

    #[test]
    fn record_limit_larger_than_segment_is_rejected() {
        let options = Options {
            segment_size_bytes: SEGMENT_SIZE_MIN_BYTES,
            record_size_max_bytes: 1 << 20,
            ..Options::default()
        };
        assert!(matches!(
            options.validate(),
            Err(Error::InvalidOptions { .. })
        ));
    }

    #[test]
    fn unaligned_segment_size_is_rejected() {
        let options = Options {
            segment_size_bytes: 100_000,
            ..Options::default()
        };
        assert!(matches!(
            options.validate(),
            Err(Error::InvalidOptions { .. })
        ));
    }
}
