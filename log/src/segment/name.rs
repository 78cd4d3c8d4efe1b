//! File names in a log directory.
//!
//! ```text
//! {segment_id:016x}-{base_index:016x}.seg   an active or sealed segment
//! {number:016x}.prep                        a zero-filled segment not yet in use
//! meta                                      vote, committed id, purge mark (two slots)
//! meta.tmp                                  a meta file being created (removed at open)
//! LOCK                                      held with flock while a Log is open
//! ```

use crate::SegmentId;

/// Name of the meta file.
pub(crate) const META: &str = "meta";
/// Name of the meta file while it is first written.
pub(crate) const META_TEMP: &str = "meta.tmp";
/// Name of the lock file.
pub(crate) const LOCK: &str = "LOCK";

/// What a directory entry is, judged by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry {
    Segment { id: SegmentId, base: u64 },
    Prepared,
    Meta,
    MetaTemp,
    Lock,
    Foreign,
}

/// The file name of a segment in use.
pub(crate) fn segment(id: SegmentId, base: u64) -> String {
    format!("{:016x}-{base:016x}.seg", id.0)
}

/// The file name of a prepared segment.
pub(crate) fn prepared(number: u64) -> String {
    format!("{number:016x}.prep")
}

fn hex16(s: &str) -> Option<u64> {
    (s.len() == 16
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then(|| u64::from_str_radix(s, 16).ok())
    .flatten()
}

/// Classifies a directory entry by name.
pub(crate) fn parse(name: &str) -> Entry {
    match name {
        META => return Entry::Meta,
        META_TEMP => return Entry::MetaTemp,
        LOCK => return Entry::Lock,
        _ => {}
    }
    if let Some(stem) = name.strip_suffix(".seg")
        && let Some((id, base)) = stem.split_once('-')
        && let (Some(id), Some(base)) = (hex16(id), hex16(base))
    {
        return Entry::Segment {
            id: SegmentId(id),
            base,
        };
    }
    if name.strip_suffix(".prep").and_then(hex16).is_some() {
        return Entry::Prepared;
    }
    Entry::Foreign
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back() {
        let id = SegmentId(0xab);
        assert_eq!(parse(&segment(id, 7)), Entry::Segment { id, base: 7 });
        assert_eq!(parse(&prepared(3)), Entry::Prepared);
        assert_eq!(parse("meta"), Entry::Meta);
        assert_eq!(parse("LOCK"), Entry::Lock);
    }

    #[test]
    fn near_misses_are_foreign() {
        for name in [
            "x.seg",
            "00000000000000AB-0000000000000007.seg",
            "1-2.seg",
            "notes.txt",
            "0000000000000001.prep.tmp",
        ] {
            assert_eq!(parse(name), Entry::Foreign, "{name}");
        }
    }
}
