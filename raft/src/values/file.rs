//! One value file: the values of a range of Raft indexes that outlived their log entries,
//! written once, synced, and never changed after (a rewrite is a new file).
//!
//! Format version 1, all integers little-endian:
//!
//! ```text
//! header   magic "KEELVAL1" · count u32 · reserved u32 (0) · first u64 · last u64
//! values   the values back to back
//! table    count × ( index u64 · offset u32 · len u32 · position u64 · crc32c u32 · reserved u32 )
//!          sorted by (index, offset), every index within first..=last; `position` counts
//!          from the file's start; `crc32c` covers the row's index, offset and len (16 bytes,
//!          as in the row) and then the value, so a row damaged after the file was opened
//!          cannot serve another value's bytes
//! check    crc32c u32 of header and table · reserved u32 (0)
//! ```
//!
//! One value is kept per `(index, offset)`, the longest referenced: a shorter reference at
//! the same place reads its prefix.
//!
//! Values come before the table so a file is written in one pass from a stream of values
//! (a received snapshot's, say). A value is read with one `pread` and checked against its
//! CRC32C; the table is read and checked whole when the file is opened (and every value
//! once after a node starts, in the background: [`ValueFile::verify`]), and only every
//! [`SPARSE_EVERY`]th key stays in memory (half a byte per value), so a lookup reads one
//! block of at most that many table rows.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::{ValueError, ValueRef};

/// The first bytes of a value file, format version 1.
pub const MAGIC: &[u8; 8] = b"KEELVAL1";
const HEADER_LEN: usize = 32;
const ROW_LEN: usize = 32;
const CHECK_LEN: usize = 8;
/// One table row in this many stays in memory.
pub const SPARSE_EVERY: usize = 64;
/// [`ValueFile::verify`] reads the table this many rows at a time ...
const VERIFY_ROWS: usize = 4096;
/// ... and their values in runs of at most this many bytes (a longer value alone).
const VERIFY_READ: u64 = 4 << 20;

/// A value file's key for a value: where it was recorded.
type Key = (u64, u32);

/// An open value file.
#[derive(Debug)]
pub(crate) struct ValueFile {
    path: PathBuf,
    file: File,
    first: u64,
    last: u64,
    count: usize,
    /// Where the table starts.
    table_start: u64,
    /// Bytes of values.
    data_len: u64,
    /// Every `SPARSE_EVERY`th row's key, in order.
    sparse: Vec<Key>,
}

/// A table row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Row {
    key: Key,
    len: u32,
    position: u64,
    crc: u32,
}

impl Row {
    fn decode(bytes: &[u8]) -> Self {
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8"));
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4"));
        Self {
            key: (u64_at(0), u32_at(8)),
            len: u32_at(12),
            position: u64_at(16),
            crc: u32_at(24),
        }
    }

    /// The checksum of a value stored under `key` with `len` bytes.
    fn checksum(key: Key, len: u32, value: &[u8]) -> u32 {
        let mut head = [0u8; 16];
        head[..8].copy_from_slice(&key.0.to_le_bytes());
        head[8..12].copy_from_slice(&key.1.to_le_bytes());
        head[12..].copy_from_slice(&len.to_le_bytes());
        crc32c::crc32c_append(crc32c::crc32c(&head), value)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.key.0.to_le_bytes());
        out.extend_from_slice(&self.key.1.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&self.position.to_le_bytes());
        out.extend_from_slice(&self.crc.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
    }
}

fn corrupt(path: &Path, what: impl Into<String>) -> ValueError {
    ValueError::Corrupt {
        path: path.to_owned(),
        what: what.into(),
    }
}

fn io_error<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> ValueError + 'p {
    move |source| ValueError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Writes `values` (each with where it was recorded, in key order, without repeats, all
/// within `first..=last`) as a value file at `path`: a temporary file, synced, renamed
/// into place, the directory synced. Returns how many values and bytes it holds.
///
/// # Errors
/// The first error of `values`; [`ValueError::Io`]. No file is left at `path` then.
///
/// # Panics
/// If `values` is not in key order, repeats one, lies outside `first..=last`, or a value
/// does not have its reference's length.
pub(crate) fn write(
    path: &Path,
    first: u64,
    last: u64,
    values: impl IntoIterator<Item = Result<(ValueRef, Bytes), ValueError>>,
) -> Result<(u64, u64), ValueError> {
    let temporary = path.with_extension("tmp");
    let written = write_temporary(&temporary, first, last, values);
    if written.is_err() {
        drop(std::fs::remove_file(&temporary));
    }
    let written = written?;
    std::fs::rename(&temporary, path).map_err(io_error("rename", path))?;
    let dir = path.parent().expect("a value file lives in a directory");
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("sync", dir))?;
    Ok(written)
}

fn write_temporary(
    temporary: &Path,
    first: u64,
    last: u64,
    values: impl IntoIterator<Item = Result<(ValueRef, Bytes), ValueError>>,
) -> Result<(u64, u64), ValueError> {
    let mut out =
        io::BufWriter::new(File::create(temporary).map_err(io_error("create", temporary))?);
    // The count is filled in once known.
    out.write_all(&[0u8; HEADER_LEN])
        .map_err(io_error("write", temporary))?;
    let mut rows: Vec<Row> = Vec::new();
    let mut position = HEADER_LEN as u64;
    for value in values {
        let (at, value) = value?;
        assert!(
            rows.last().is_none_or(|row| row.key < at.key()),
            "values are written in key order, once each place"
        );
        assert!(
            (first..=last).contains(&at.index),
            "values lie in the file's range"
        );
        assert_eq!(
            value.len(),
            at.len as usize,
            "a value has its reference's length"
        );
        out.write_all(&value)
            .map_err(io_error("write", temporary))?;
        rows.push(Row {
            key: at.key(),
            len: at.len,
            position,
            crc: Row::checksum(at.key(), at.len, &value),
        });
        position += u64::from(at.len);
    }
    let mut head = Vec::with_capacity(HEADER_LEN);
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(
        &u32::try_from(rows.len())
            .expect("under 4 G values")
            .to_le_bytes(),
    );
    head.extend_from_slice(&0u32.to_le_bytes());
    head.extend_from_slice(&first.to_le_bytes());
    head.extend_from_slice(&last.to_le_bytes());
    let mut table = Vec::with_capacity(ROW_LEN * rows.len() + CHECK_LEN);
    for row in &rows {
        row.encode(&mut table);
    }
    let check = crc32c::crc32c_append(crc32c::crc32c(&head), &table);
    table.extend_from_slice(&check.to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes());
    out.write_all(&table)
        .map_err(io_error("write", temporary))?;
    let file = out
        .into_inner()
        .map_err(|e| io_error("write", temporary)(e.into_error()))?;
    file.write_all_at(&head, 0)
        .map_err(io_error("write", temporary))?;
    file.sync_all().map_err(io_error("sync", temporary))?;
    Ok((rows.len() as u64, position - HEADER_LEN as u64))
}

impl ValueFile {
    /// Opens and checks the value file at `path`: its magic, header and table checksum,
    /// the table's order and ranges, and that the values fill the file exactly.
    ///
    /// # Errors
    /// [`ValueError::Corrupt`] naming what is wrong; [`ValueError::Io`].
    pub(crate) fn open(path: &Path) -> Result<Self, ValueError> {
        let file = File::open(path).map_err(io_error("open", path))?;
        let file_len = file.metadata().map_err(io_error("stat", path))?.len();
        let mut header = [0u8; HEADER_LEN];
        file.read_exact_at(&mut header, 0)
            .map_err(|_| corrupt(path, format!("a file of {file_len} bytes has no header")))?;
        if &header[..8] != MAGIC {
            return Err(corrupt(
                path,
                format!(
                    "not a value file of format version 1 (it starts with {:?})",
                    String::from_utf8_lossy(&header[..8])
                ),
            ));
        }
        let count = u32::from_le_bytes(header[8..12].try_into().expect("4")) as usize;
        let first = u64::from_le_bytes(header[16..24].try_into().expect("8"));
        let last = u64::from_le_bytes(header[24..32].try_into().expect("8"));
        let table_len = (ROW_LEN * count + CHECK_LEN) as u64;
        let Some(table_start) = file_len
            .checked_sub(table_len)
            .filter(|start| *start >= HEADER_LEN as u64)
        else {
            return Err(corrupt(
                path,
                format!("{count} values do not fit a file of {file_len} bytes"),
            ));
        };
        let mut table = vec![0u8; usize::try_from(table_len).expect("a table in memory")];
        file.read_exact_at(&mut table, table_start)
            .map_err(io_error("read", path))?;
        let (rows_bytes, check) = table.split_at(table.len() - CHECK_LEN);
        let stored = u32::from_le_bytes(check[..4].try_into().expect("4"));
        let crc = crc32c::crc32c_append(crc32c::crc32c(&header), rows_bytes);
        if crc != stored || check[4..] != [0; 4] {
            return Err(corrupt(
                path,
                "the header and table do not match their checksum",
            ));
        }
        let rows: Vec<Row> = rows_bytes.chunks_exact(ROW_LEN).map(Row::decode).collect();
        let mut position = HEADER_LEN as u64;
        for (i, row) in rows.iter().enumerate() {
            if i > 0 && rows[i - 1].key >= row.key {
                return Err(corrupt(path, format!("table row {i} is out of order")));
            }
            if !(first..=last).contains(&row.key.0) || row.position != position {
                return Err(corrupt(path, format!("table row {i} is out of place")));
            }
            position += u64::from(row.len);
        }
        if position != table_start {
            return Err(corrupt(
                path,
                format!("the values end at byte {position}, the table starts at {table_start}"),
            ));
        }
        Ok(Self {
            path: path.to_owned(),
            file,
            first,
            last,
            count,
            table_start,
            data_len: position - HEADER_LEN as u64,
            sparse: rows
                .iter()
                .step_by(SPARSE_EVERY)
                .map(|row| row.key)
                .collect(),
        })
    }

    /// The Raft indexes it covers.
    pub(crate) fn range(&self) -> (u64, u64) {
        (self.first, self.last)
    }

    /// How many values it holds.
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// Bytes of values it holds.
    pub(crate) fn data_len(&self) -> u64 {
        self.data_len
    }

    /// Its path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The value recorded at `at`, if this file holds it.
    ///
    /// # Errors
    /// [`ValueError::Corrupt`] when its bytes do not match their checksum or its length is
    /// not the reference's; [`ValueError::Io`].
    pub(crate) fn get(&self, at: &ValueRef) -> Result<Option<Bytes>, ValueError> {
        let Some(row) = self.find(at.key())? else {
            return Ok(None);
        };
        if row.len < at.len {
            return Err(corrupt(
                &self.path,
                format!(
                    "the value of index {} offset {} holds {} bytes, its reference says {}",
                    at.index, at.offset, row.len, at.len
                ),
            ));
        }
        Ok(Some(self.read(&row)?.slice(..at.len as usize)))
    }

    /// Reads every value and checks it against its checksum: a node verifies its value
    /// files once after it starts ([`super::ValueStore::verify`]), so damage done while it
    /// was stopped stops it (to be repaired from the cluster) rather than waiting for a read
    /// of the damaged value. Returns false, having stopped early, once `cancelled` says so
    /// (asked before each read of up to 4 MiB).
    ///
    /// # Errors
    /// [`ValueError::Corrupt`] naming the first value that does not check, or a table row
    /// changed since the file was opened; [`ValueError::Io`].
    pub(crate) fn verify(&self, cancelled: &dyn Fn() -> bool) -> Result<bool, ValueError> {
        // The values lie back to back in table order (checked at open), so they are read
        // in runs of up to VERIFY_READ bytes: a few large reads, not one per value. The
        // table is read again here, unchecked, so each row is held to that layout.
        let mut buffer = Vec::new();
        let mut position = HEADER_LEN as u64;
        for from in (0..self.count).step_by(VERIFY_ROWS) {
            let rows = self.rows(from, VERIFY_ROWS.min(self.count - from))?;
            let mut rest = rows.as_slice();
            while !rest.is_empty() {
                if cancelled() {
                    return Ok(false);
                }
                let start = position;
                let mut run = 0;
                for (i, row) in rest.iter().enumerate() {
                    let end = position + u64::from(row.len);
                    if row.position != position || end > self.table_start {
                        return Err(corrupt(
                            &self.path,
                            format!("table row {} changed since it was opened", from + i),
                        ));
                    }
                    if run > 0 && end - start > VERIFY_READ {
                        break;
                    }
                    position = end;
                    run += 1;
                }
                buffer.resize(
                    usize::try_from(position - start).expect("a run in memory"),
                    0,
                );
                self.file
                    .read_exact_at(&mut buffer, start)
                    .map_err(io_error("read", &self.path))?;
                let mut at = 0;
                for row in &rest[..run] {
                    self.check(row, &buffer[at..at + row.len as usize])?;
                    at += row.len as usize;
                }
                rest = &rest[run..];
            }
        }
        Ok(true)
    }

    /// The value of table row `row`, checked against its checksum.
    fn read(&self, row: &Row) -> Result<Bytes, ValueError> {
        let mut value = vec![0u8; row.len as usize];
        self.file
            .read_exact_at(&mut value, row.position)
            .map_err(io_error("read", &self.path))?;
        self.check(row, &value)?;
        Ok(Bytes::from(value))
    }

    /// Whether `value` is the value of table row `row`.
    fn check(&self, row: &Row, value: &[u8]) -> Result<(), ValueError> {
        if Row::checksum(row.key, row.len, value) == row.crc {
            Ok(())
        } else {
            Err(corrupt(
                &self.path,
                format!(
                    "the value of index {} offset {} does not match its checksum",
                    row.key.0, row.key.1
                ),
            ))
        }
    }

    fn rows(&self, from: usize, count: usize) -> Result<Vec<Row>, ValueError> {
        let mut bytes = vec![0u8; count * ROW_LEN];
        self.file
            .read_exact_at(&mut bytes, self.table_start + (from * ROW_LEN) as u64)
            .map_err(io_error("read", &self.path))?;
        Ok(bytes.chunks_exact(ROW_LEN).map(Row::decode).collect())
    }

    fn find(&self, key: Key) -> Result<Option<Row>, ValueError> {
        if !(self.first..=self.last).contains(&key.0) {
            return Ok(None);
        }
        let block = match self.sparse.binary_search(&key) {
            Ok(block) => block,
            Err(0) => return Ok(None),
            Err(after) => after - 1,
        };
        let from = block * SPARSE_EVERY;
        let rows = self.rows(from, SPARSE_EVERY.min(self.count - from))?;
        Ok(rows
            .binary_search_by_key(&key, |row| row.key)
            .ok()
            .map(|i| rows[i]))
    }
}
