//! Reading snapshot files: verifying one whole, opening its header, its application bytes
//! and its values section, and the values section's encoding.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use bytes::Bytes;

use super::{
    HEADER_MAX_BYTES, MAGIC, MAGIC_V1, MAGIC_V2, MAGIC_V3, REF_BYTES, REF_LEN, SnapshotHeader,
    SnapshotHeaderV2, SnapshotHeaderV3, TRAILER_LEN, malformed,
};
use crate::error::{Error, Result};
use crate::values::{ValueError, ValueRef};

/// Checks a snapshot file's length, checksum and header; returns the header.
///
/// # Errors
/// [`Error::Decode`] naming what is wrong, [`Error::Io`] on a read error.
pub(crate) fn verify(path: &Path) -> Result<SnapshotHeader> {
    let mut file = File::open(path).map_err(Error::io("open", path))?;
    let size = file.metadata().map_err(Error::io("stat", path))?.len();
    if size < MAGIC.len() as u64 + 4 + TRAILER_LEN {
        return Err(malformed(format!(
            "{} is {size} bytes, too short",
            path.display()
        )));
    }
    let body_len = size - TRAILER_LEN;
    let mut crc = 0u32;
    let mut reader = BufReader::new((&mut file).take(body_len));
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader.read(&mut buf).map_err(Error::io("read", path))?;
        if n == 0 {
            break;
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
    }
    let mut trailer = [0u8; 12];
    file.seek(SeekFrom::Start(body_len))
        .and_then(|_| file.read_exact(&mut trailer))
        .map_err(Error::io("read", path))?;
    let (len_bytes, crc_bytes) = trailer.split_at(8);
    let stored_len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
    let stored_crc = u32::from_le_bytes(crc_bytes.try_into().expect("4 bytes"));
    if stored_len != body_len || stored_crc != crc {
        return Err(malformed(format!(
            "{} fails its length or checksum",
            path.display()
        )));
    }
    let (header, _, _) = open_values(path)?;
    Ok(header)
}

/// A snapshot's header, and a reader positioned after it; the application bytes start
/// `header.values.section_bytes` later and end at the trailer, `app_end` bytes in.
fn open_header(path: &Path) -> Result<(SnapshotHeader, BufReader<File>, u64)> {
    let file = File::open(path).map_err(Error::io("open", path))?;
    let size = file.metadata().map_err(Error::io("stat", path))?.len();
    let mut reader = BufReader::new(file);
    let mut fixed = [0u8; 12];
    reader
        .read_exact(&mut fixed)
        .map_err(|_| malformed(format!("{} is {size} bytes, too short", path.display())))?;
    if &fixed[..8] == MAGIC_V1 {
        return Err(malformed(format!(
            "{} is a format 1 snapshot (client-chosen session ids), written by a Keel before cluster-assigned sessions; this version refuses it: move the data directory aside, start the node empty and `keel repair` it",
            path.display()
        )));
    }
    let magic = &fixed[..8];
    if magic != MAGIC && magic != MAGIC_V3 && magic != MAGIC_V2 {
        return Err(malformed(format!(
            "{} has no snapshot magic",
            path.display()
        )));
    }
    let header_len = u32::from_le_bytes(fixed[8..12].try_into().expect("4 bytes"));
    let app_start = 12 + u64::from(header_len);
    if header_len > HEADER_MAX_BYTES || app_start + TRAILER_LEN > size {
        return Err(malformed(format!(
            "{} has a header of {header_len} bytes",
            path.display()
        )));
    }
    let mut header_bytes = rkyv::util::AlignedVec::<16>::with_capacity(header_len as usize);
    header_bytes.resize(header_len as usize, 0);
    reader
        .read_exact(&mut header_bytes)
        .map_err(Error::io("read", path))?;
    let header = decode_header(magic, &header_bytes, path)?;
    let app_end = size - TRAILER_LEN;
    if header.values.section_bytes > app_end - app_start {
        return Err(malformed(format!(
            "{} has a values section of {} bytes, past its end",
            path.display(),
            header.values.section_bytes
        )));
    }
    let app_len = app_end - app_start - header.values.section_bytes;
    Ok((header, reader, app_len))
}

/// The header of a snapshot in the format `magic` names, from its rkyv bytes (`bytes`,
/// 16-aligned), as this format's header: older formats without what they lacked. The
/// identity, built by rkyv without its checks, is checked here.
fn decode_header(magic: &[u8], bytes: &[u8], path: &Path) -> Result<SnapshotHeader> {
    let bad_header = |e: rkyv::rancor::Error| malformed(format!("{}: header: {e}", path.display()));
    let header = if magic == MAGIC_V2 {
        let old =
            rkyv::from_bytes::<SnapshotHeaderV2, rkyv::rancor::Error>(bytes).map_err(bad_header)?;
        SnapshotHeaderV3::from(old).into()
    } else if magic == MAGIC_V3 {
        rkyv::from_bytes::<SnapshotHeaderV3, rkyv::rancor::Error>(bytes)
            .map_err(bad_header)?
            .into()
    } else {
        rkyv::from_bytes::<SnapshotHeader, rkyv::rancor::Error>(bytes).map_err(bad_header)?
    };
    if let Some(committed) = &header.identity {
        committed
            .check()
            .map_err(|e| malformed(format!("{}: header: {e}", path.display())))?;
    }
    Ok(header)
}

/// Opens a verified snapshot: its header and a reader positioned at the application bytes,
/// limited to them.
///
/// # Errors
/// [`Error::Decode`] for a bad magic or header, [`Error::Io`] on a read error.
pub(crate) fn open_body(path: &Path) -> Result<(SnapshotHeader, impl Read)> {
    let (header, mut reader, app_len) = open_header(path)?;
    let section = i64::try_from(header.values.section_bytes)
        .map_err(|_| malformed(format!("{} has a values section too large", path.display())))?;
    reader
        .seek_relative(section)
        .map_err(Error::io("read", path))?;
    Ok((header, reader.take(app_len)))
}

/// Opens a snapshot's values section: its header, the references listed (checked: in
/// order, without repeats, recorded at or before the snapshot's index, and filling the
/// section with their bytes when inline), and a reader positioned at the first value's
/// bytes when inline.
///
/// # Errors
/// [`Error::Decode`] naming what is wrong; [`Error::Io`] on a read error.
pub(crate) fn open_values(path: &Path) -> Result<(SnapshotHeader, Vec<ValueRef>, impl Read)> {
    let (header, mut reader, _) = open_header(path)?;
    let values = header.values;
    let listed = values
        .count
        .checked_mul(REF_LEN)
        .filter(|len| *len <= values.section_bytes);
    let Some(listed) = listed else {
        return Err(malformed(format!(
            "{} lists {} values in a section of {} bytes",
            path.display(),
            values.count,
            values.section_bytes
        )));
    };
    let mut table = vec![0u8; usize::try_from(listed).expect("a section in memory")];
    reader
        .read_exact(&mut table)
        .map_err(Error::io("read", path))?;
    let refs = decode_refs(&table);
    let last = header.last_log_id.map_or(0, |(_, index)| index);
    let ordered = refs
        .windows(2)
        .all(|pair| (pair[0].index, pair[0].offset) < (pair[1].index, pair[1].offset));
    if !ordered || refs.iter().any(|at| at.index > last) {
        return Err(malformed(format!(
            "{}: its value references are out of order or past index {last}",
            path.display()
        )));
    }
    let bytes = refs
        .iter()
        .try_fold(0u64, |sum, at| sum.checked_add(u64::from(at.len)));
    let expected = match bytes {
        Some(bytes) if values.inline => listed.checked_add(bytes),
        Some(_) => Some(listed),
        None => None,
    };
    let Some(expected) = expected else {
        return Err(malformed(format!(
            "{}: its values' lengths overflow",
            path.display()
        )));
    };
    if expected != values.section_bytes {
        return Err(malformed(format!(
            "{}: a values section of {} bytes, its references need {expected}",
            path.display(),
            values.section_bytes
        )));
    }
    Ok((header, refs, reader.take(values.section_bytes - listed)))
}

/// Reads the bytes of `refs` (inline, in order) from `reader`, the snapshot at `path`.
pub(crate) fn inline_values<'a>(
    path: &'a Path,
    refs: &'a [ValueRef],
    mut reader: impl Read + 'a,
) -> impl Iterator<Item = std::result::Result<(ValueRef, Bytes), ValueError>> + 'a {
    refs.iter().map(move |at| {
        let mut value = vec![0u8; at.len as usize];
        reader
            .read_exact(&mut value)
            .map_err(|source| ValueError::Io {
                op: "read a snapshot's value",
                path: path.to_owned(),
                source,
            })?;
        Ok((*at, Bytes::from(value)))
    })
}

/// The values section's references, as written.
pub(crate) fn encode_refs(refs: &[ValueRef]) -> Vec<u8> {
    let mut out = Vec::with_capacity(refs.len() * REF_BYTES);
    for at in refs {
        out.extend_from_slice(&at.index.to_le_bytes());
        out.extend_from_slice(&at.offset.to_le_bytes());
        out.extend_from_slice(&at.len.to_le_bytes());
    }
    out
}

fn decode_refs(bytes: &[u8]) -> Vec<ValueRef> {
    bytes
        .chunks_exact(REF_BYTES)
        .map(|chunk| ValueRef {
            index: u64::from_le_bytes(chunk[..8].try_into().expect("8")),
            offset: u32::from_le_bytes(chunk[8..12].try_into().expect("4")),
            len: u32::from_le_bytes(chunk[12..16].try_into().expect("4")),
        })
        .collect()
}
