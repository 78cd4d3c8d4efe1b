//! The file-system operations the log's write path makes, behind a trait so tests can
//! inject faults ([`faulty::FaultyFs`]) or journal what a power cut would lose
//! ([`journaled::JournaledFs`]) while reads still go through real files and maps.

pub mod faulty;
pub mod journaled;

use std::{
    fmt,
    fs::{File, OpenOptions},
    io::{self, IoSlice},
    os::unix::fs::FileExt,
    path::Path,
    sync::Arc,
};

/// One open file the log writes.
pub trait FileIo: Send + Sync + fmt::Debug {
    /// Writes all of `buf` at `offset` (one `pwrite` loop).
    ///
    /// # Errors
    /// The operating system's error.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Writes `bufs` in order at `offset` (one `pwritev`); returns the bytes written, which
    /// may be fewer than asked.
    ///
    /// The default concatenates the buffers and calls [`FileIo::write_all_at`].
    ///
    /// # Errors
    /// The operating system's error.
    fn write_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<usize> {
        let joined: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
        self.write_all_at(&joined, offset)?;
        Ok(joined.len())
    }
    /// `fdatasync`: makes every completed write durable.
    ///
    /// # Errors
    /// The operating system's error.
    fn sync_data(&self) -> io::Result<()>;
    /// The underlying file, for memory mapping and reads.
    fn file(&self) -> &File;
}

/// The directory-level operations of the write path.
pub trait Fs: Send + Sync + fmt::Debug + 'static {
    /// Creates a new file for reading and writing; fails if it exists.
    ///
    /// # Errors
    /// The operating system's error.
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn FileIo>>;
    /// Opens an existing file for reading and writing.
    ///
    /// # Errors
    /// The operating system's error.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn FileIo>>;
    /// Renames a file (atomic on POSIX file systems).
    ///
    /// # Errors
    /// The operating system's error.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    ///
    /// # Errors
    /// The operating system's error.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// `fsync`s a directory, making creates, renames and removes in it durable.
    ///
    /// # Errors
    /// The operating system's error.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdFs;

#[derive(Debug)]
struct StdFile(File);

impl FileIo for StdFile {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    fn write_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<usize> {
        Ok(rustix::io::pwritev(&self.0, bufs, offset)?)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn file(&self) -> &File {
        &self.0
    }
}

impl Fs for StdFs {
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn FileIo>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(Arc::new(StdFile(file)))
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn FileIo>> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Arc::new(StdFile(file)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// Writes all of `bufs` at `offset`, calling [`FileIo::write_vectored_at`] until done.
pub(crate) fn write_all_vectored_at(
    file: &dyn FileIo,
    mut bufs: &mut [IoSlice<'_>],
    mut offset: u64,
) -> io::Result<()> {
    while !bufs.is_empty() {
        match file.write_vectored_at(bufs, offset) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                IoSlice::advance_slices(&mut bufs, n);
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes `len` zero bytes at `offset`, in bounded chunks.
pub(crate) fn write_zeros(file: &dyn FileIo, offset: u64, len: u64) -> io::Result<()> {
    const ZERO_CHUNK_BYTES: usize = 1 << 20;
    let zeros = vec![0u8; ZERO_CHUNK_BYTES.min(usize::try_from(len).unwrap_or(usize::MAX))];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(zeros.len() as u64);
        file.write_all_at(
            &zeros[..usize::try_from(n).expect("chunk fits usize")],
            offset + done,
        )?;
        done += n;
    }
    Ok(())
}
