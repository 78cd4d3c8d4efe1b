//! keel-log: Keel's durable append-only log.
//!
//! Records of one rkyv type `T` are serialized and framed on the caller's thread into a
//! [`Batch`], appended to fixed-size, prepared-ahead segment files with one `pwritev` per
//! batch (a seeded batch header, then the frames as built), made durable by a syncer thread
//! with one `fdatasync` per group of appends (group commit, no timer), and read zero-copy
//! from read-only memory mappings, checked by CRC32C on every read. `log/FORMAT.md` gives
//! every byte on disk.
//!
//! ```text
//!  append_batch ──► writer (mutex) ──pwritev─► segment file ◄──mmap── readers (no lock)
//!                      │   publish offsets ──────────────────────────► Reader::get/range
//!                      └─► syncer thread ──fdatasync──► tickets/callbacks: "durable"
//!  truncate_from / purge_upto / vote / committed ──► meta file (2 slots, always synced)
//! ```
//!
//! Guarantees:
//! - A record whose ticket resolved [`Durability::Synced`] survives a crash or power cut;
//!   recovery never returns a record that was not appended, in an order it was not.
//! - Every record is checksummed (CRC32C), and every batch header (seeded by the segment id,
//!   with a check over its records' checksums); corruption where the
//!   log had made bytes durable is a typed error naming segment and offset, never skipped.
//! - A failed write or `fdatasync` poisons the log; a failed sync is never retried.
//! - Published bytes are never rewritten while mapped.
//!
//! ```
//! use keel_log::{Encoded, Log, Options};
//!
//! let dir = tempfile::tempdir()?;
//! let log = Log::<String>::open(dir.path(), Options::default())?;
//! let record = Encoded::new(&"hello".to_owned())?;
//! let appended = log.append_next(1, &[&record])?;
//! appended.ticket.wait()?;
//! drop(log);
//!
//! let log = Log::<String>::open(dir.path(), Options::default())?;
//! assert_eq!(log.get(0)?.expect("record 0").as_str(), "hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![doc(test(attr(deny(warnings))))]

mod batch;
mod batch_frame;
mod encoded;
mod error;
mod frame;
pub mod fs;
mod id;
mod log;
mod meta;
mod options;
mod prepare;
mod recovery;
mod segment;
mod sync;
mod view;
mod writer;

pub use batch::Batch;
pub use encoded::{Encoded, Payload};
pub use error::{Corruption, Error, Result};
pub use id::{LogId, SegmentId};
pub use log::{Log, LogState};
pub use meta::META_BLOB_MAX_BYTES;
pub use options::{
    Options, RecoveryPolicy, SEGMENT_SIZE_MAX_BYTES, SEGMENT_SIZE_MIN_BYTES, SyncPolicy,
};
pub use segment::Record;
pub use sync::{Durability, DurableCallback, SyncTicket};
pub use view::{Range, Reader};
pub use writer::{Appended, Entry};
