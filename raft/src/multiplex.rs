//! Two applications in one Raft group: the plain log every node serves, and an optional
//! extension (Keel's workflow scheduler) plugged in by the crate above.
//!
//! A command's first byte names the application it is for ([`AppTag`]); the rest is that
//! application's own command. A snapshot holds both applications' snapshots, each behind its
//! length. The digest mixes both digests, so replicas compare on the whole state.

use std::io::{self, Read, Write};

use bytes::{BufMut, Bytes, BytesMut};

use crate::application::{Application, AppliedAt, SnapshotImage};
use crate::cluster_identity::CommittedIdentity;
use crate::plain_log::PlainLog;

/// Which application a command is for: its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AppTag {
    /// The plain replicated log.
    PlainLog = 0,
    /// The extension application (the workflow scheduler).
    Extension = 1,
}

impl AppTag {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Self::PlainLog),
            1 => Some(Self::Extension),
            _ => None,
        }
    }
}

/// Bytes of an entry's command before the application's own: the tag. A [`ValueRef`]
/// an application makes counts from its own command, after them.
///
/// [`ValueRef`]: crate::values::ValueRef
pub const BODY_OFFSET: usize = 1;

/// The Raft command carrying `body` for the application `tag`.
pub fn tagged(tag: AppTag, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(1 + body.len());
    out.put_u8(tag as u8);
    out.put_slice(body);
    out.freeze()
}

/// The plain log and an optional extension, as one [`Application`].
#[derive(Debug)]
pub struct Multiplex {
    plain: PlainLog,
    extension: Option<Box<dyn Application>>,
}

impl Multiplex {
    /// The plain log `plain` alone, or with `extension`.
    pub fn new(plain: PlainLog, extension: Option<Box<dyn Application>>) -> Self {
        Self { plain, extension }
    }
}

/// Writes `section` behind its length.
/// The two sections of a snapshot, and nothing after them.
fn read_sections(input: &mut dyn Read) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let plain = read_section(input)?;
    let extension = read_section(input)?;
    if input.read(&mut [0u8; 1])? != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "trailing bytes after the snapshot sections",
        ));
    }
    Ok((plain, extension))
}

/// A node without an extension takes only an empty extension section.
fn no_extension(section: &[u8]) -> io::Result<()> {
    if section.is_empty() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the snapshot holds scheduler state but this node runs no scheduler",
        ))
    }
}

fn write_section(out: &mut dyn Write, section: &[u8]) -> io::Result<()> {
    out.write_all(&(section.len() as u64).to_le_bytes())?;
    out.write_all(section)
}

/// Reads one section written by [`write_section`].
fn read_section(input: &mut dyn Read) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 8];
    input.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len);
    let mut section = Vec::new();
    input.take(len).read_to_end(&mut section)?;
    if section.len() as u64 != len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "snapshot section shorter than its length",
        ));
    }
    Ok(section)
}

/// Both applications' images: written as the two sections, in order.
struct MultiplexImage {
    plain: Box<dyn SnapshotImage>,
    extension: Option<Box<dyn SnapshotImage>>,
}

impl SnapshotImage for MultiplexImage {
    fn live_values(&self) -> Vec<crate::values::ValueRef> {
        // The plain log holds its records itself; only the extension references values.
        self.extension
            .as_ref()
            .map_or_else(Vec::new, |image| image.live_values())
    }

    fn write(self: Box<Self>, out: &mut dyn Write) -> io::Result<()> {
        let mut plain = Vec::new();
        self.plain.write(&mut plain)?;
        write_section(out, &plain)?;
        let mut extension = Vec::new();
        if let Some(image) = self.extension {
            image.write(&mut extension)?;
        }
        write_section(out, &extension)
    }
}

impl Application for Multiplex {
    fn apply(&mut self, at: AppliedAt, command: &Bytes) -> Bytes {
        let Some((&tag, _)) = command.split_first() else {
            return Bytes::new();
        };
        let body = command.slice(1..);
        match (AppTag::from_byte(tag), &mut self.extension) {
            (Some(AppTag::PlainLog), _) => self.plain.apply(at, &body),
            (Some(AppTag::Extension), Some(extension)) => extension.apply(at, &body),
            // Every replica answers the same: nothing applied.
            (Some(AppTag::Extension), None) | (None, _) => Bytes::new(),
        }
    }

    fn snapshot_image(&self) -> Box<dyn SnapshotImage> {
        Box::new(MultiplexImage {
            plain: self.plain.snapshot_image(),
            extension: self.extension.as_ref().map(|app| app.snapshot_image()),
        })
    }

    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()> {
        let (plain, extension) = read_sections(input)?;
        self.plain.restore(&mut plain.as_slice())?;
        match &mut self.extension {
            Some(app) => app.restore(&mut extension.as_slice()),
            None => no_extension(&extension),
        }
    }

    fn check_snapshot(&self, input: &mut dyn Read, applied_index: u64) -> io::Result<()> {
        let (plain, extension) = read_sections(input)?;
        self.plain
            .check_snapshot(&mut plain.as_slice(), applied_index)?;
        match &self.extension {
            Some(app) => app.check_snapshot(&mut extension.as_slice(), applied_index),
            None => no_extension(&extension),
        }
    }

    fn protocol(&self) -> u32 {
        self.extension.as_ref().map_or(0, |app| app.protocol())
    }

    fn identity_replaced(&mut self, at: AppliedAt, identity: &CommittedIdentity, stamp_ms: u64) {
        if let Some(extension) = &mut self.extension {
            extension.identity_replaced(at, identity, stamp_ms);
        }
    }

    fn digest(&self) -> u64 {
        let extension = self.extension.as_ref().map_or(0, |app| app.digest());
        self.plain.digest()
            ^ extension
                .rotate_left(32)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plain_log::{Retention, encode_append};

    #[derive(Debug, Default)]
    struct Counter(u64);

    impl Application for Counter {
        fn check_snapshot(&self, input: &mut dyn Read, _: u64) -> io::Result<()> {
            input.read_exact(&mut [0u8; 8])
        }
        fn apply(&mut self, at: AppliedAt, command: &Bytes) -> Bytes {
            self.0 += command.len() as u64 + at.term;
            Bytes::copy_from_slice(&self.0.to_le_bytes())
        }
        fn snapshot_image(&self) -> Box<dyn SnapshotImage> {
            Box::new(crate::application::EncodedImage {
                bytes: self.0.to_le_bytes().to_vec(),
                values: Vec::new(),
            })
        }
        fn restore(&mut self, input: &mut dyn Read) -> io::Result<()> {
            let mut bytes = [0u8; 8];
            input.read_exact(&mut bytes)?;
            self.0 = u64::from_le_bytes(bytes);
            Ok(())
        }
        fn digest(&self) -> u64 {
            self.0
        }
        fn identity_replaced(&mut self, at: AppliedAt, _: &CommittedIdentity, stamp_ms: u64) {
            self.0 += 1000 * at.index + stamp_ms;
        }
    }

    const AT: AppliedAt = AppliedAt { term: 2, index: 9 };

    #[test]
    fn commands_reach_the_tagged_application() {
        let plain = PlainLog::new(Retention::default());
        let mut mux = Multiplex::new(plain.clone(), Some(Box::<Counter>::default()));
        let append = tagged(AppTag::PlainLog, &encode_append(1, &[Bytes::from("x")]));
        assert!(!mux.apply(AT, &append).is_empty());
        assert_eq!(plain.bounds(), (0, 1));
        let answer = mux.apply(AT, &tagged(AppTag::Extension, b"abc"));
        assert_eq!(answer.as_ref(), 5u64.to_le_bytes());
        assert!(mux.apply(AT, &Bytes::from_static(&[7, 1, 2])).is_empty());
        assert!(mux.apply(AT, &Bytes::new()).is_empty());
        assert_eq!(plain.bounds(), (0, 1));
    }

    #[test]
    fn an_identity_replacement_reaches_the_extension() {
        let mut mux = Multiplex::new(
            PlainLog::new(Retention::default()),
            Some(Box::<Counter>::default()),
        );
        let identity = CommittedIdentity {
            identity: crate::cluster_identity::ClusterIdentity::new("k", [1; 16]).expect("valid"),
            index: 9,
        };
        mux.identity_replaced(AT, &identity, 5);
        let expected = Multiplex::new(
            PlainLog::new(Retention::default()),
            Some(Box::new(Counter(9005))),
        );
        assert_eq!(
            mux.digest(),
            expected.digest(),
            "the counter saw index 9, stamp 5"
        );
        assert_ne!(
            mux.digest(),
            Multiplex::new(
                PlainLog::new(Retention::default()),
                Some(Box::<Counter>::default())
            )
            .digest()
        );
        // Without an extension there is nothing to tell.
        Multiplex::new(PlainLog::new(Retention::default()), None)
            .identity_replaced(AT, &identity, 5);
    }

    #[test]
    fn extension_commands_without_extension_apply_nothing() {
        let mut mux = Multiplex::new(PlainLog::new(Retention::default()), None);
        assert!(mux.apply(AT, &tagged(AppTag::Extension, b"abc")).is_empty());
    }

    #[test]
    fn snapshot_round_trips_both_sections() {
        let mut mux = Multiplex::new(
            PlainLog::new(Retention::default()),
            Some(Box::<Counter>::default()),
        );
        mux.apply(
            AT,
            &tagged(AppTag::PlainLog, &encode_append(1, &[Bytes::from("x")])),
        );
        mux.apply(AT, &tagged(AppTag::Extension, b"abcd"));
        let mut bytes = Vec::new();
        mux.write_snapshot(&mut bytes).expect("writes");
        let mut restored = Multiplex::new(
            PlainLog::new(Retention::default()),
            Some(Box::<Counter>::default()),
        );
        restored.restore(&mut bytes.as_slice()).expect("restores");
        assert_eq!(restored.digest(), mux.digest());
        let mut without = Multiplex::new(PlainLog::new(Retention::default()), None);
        assert!(without.restore(&mut bytes.as_slice()).is_err());
        assert!(restored.restore(&mut &bytes[..bytes.len() - 1]).is_err());
    }
}
