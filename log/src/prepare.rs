//! Segment files prepared ahead of the writer, so an append never grows or creates a file:
//! either recycled (a purged segment that no reader maps any more, renamed; its old bytes
//! never verify under a new segment id) or created, zero-filled to full size and synced,
//! with the directory entry synced. Recycling spares the disk writing every byte twice.
//!
//! A background thread keeps one prepared file waiting on a rendezvous channel; the writer
//! takes it when it rolls, and prepares one itself only if none is ready. A prepared file
//! has no identity yet: the writer assigns the segment id when it activates the file, so
//! ids follow activation order.

use std::{
    io,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, SyncSender, sync_channel},
    },
    thread::JoinHandle,
};

use crate::{
    fs::{FileIo, Fs, write_zeros},
    segment::name,
};

/// Zero-filling syncs after each this many bytes, so a new file never holds much dirty page
/// cache: the kernel would otherwise throttle the writer's own `pwrite`s for it.
const ZERO_SYNC_BYTES: u64 = 4 * 1024 * 1024;

/// How many purged segment files are kept for reuse.
const RECYCLED_MAX: usize = 4;

/// A full-size segment file not in use: zero-filled, or recycled with stale bytes.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) path: PathBuf,
    pub(crate) file: Arc<dyn FileIo>,
}

/// Creates and durably zero-fills one segment file.
fn prepare(fs: &dyn Fs, dir: &Path, number: u64, size_bytes: u64) -> io::Result<Prepared> {
    let path = dir.join(name::prepared(number));
    let file = fs.create_new(&path)?;
    let mut done = 0;
    while done < size_bytes {
        let chunk = ZERO_SYNC_BYTES.min(size_bytes - done);
        write_zeros(file.as_ref(), done, chunk)?;
        file.sync_data()?;
        done += chunk;
    }
    fs.sync_dir(dir)?;
    Ok(Prepared { path, file })
}

/// Hands out prepared segment files.
#[derive(Debug)]
pub(crate) struct Preparer {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    size_bytes: u64,
    /// Numbers for prepared files' names.
    numbers: Arc<AtomicU64>,
    ready: Option<Receiver<io::Result<Prepared>>>,
    /// Purged segment files kept for reuse, at most [`RECYCLED_MAX`].
    recycled: Vec<Prepared>,
    thread: Option<JoinHandle<()>>,
}

impl Preparer {
    /// Starts the background thread when `ahead`.
    pub(crate) fn new(
        fs: Arc<dyn Fs>,
        dir: PathBuf,
        size_bytes: u64,
        ahead: bool,
    ) -> io::Result<Self> {
        let numbers = Arc::new(AtomicU64::new(0));
        let mut preparer = Self {
            fs,
            dir,
            size_bytes,
            numbers,
            ready: None,
            recycled: Vec::new(),
            thread: None,
        };
        if ahead {
            let (tx, rx) = sync_channel(0);
            let (fs, dir, ids) = (
                Arc::clone(&preparer.fs),
                preparer.dir.clone(),
                Arc::clone(&preparer.numbers),
            );
            let thread = std::thread::Builder::new()
                .name("keel-log-prepare".into())
                .spawn(move || prepare_loop(fs.as_ref(), &dir, size_bytes, &ids, &tx))?;
            preparer.ready = Some(rx);
            preparer.thread = Some(thread);
        }
        Ok(preparer)
    }

    /// Keeps the file of a purged segment for reuse, if the pool has room and the file has
    /// the configured size; returns whether it was kept (else the caller removes it).
    ///
    /// The caller guarantees no mapping of the file remains.
    pub(crate) fn recycle(&mut self, path: &Path, size_bytes: u64) -> io::Result<bool> {
        if self.recycled.len() >= RECYCLED_MAX || size_bytes != self.size_bytes {
            return Ok(false);
        }
        let number = self.numbers.fetch_add(1, Ordering::Relaxed);
        let new_path = self.dir.join(name::prepared(number));
        self.fs.rename(path, &new_path)?;
        let file = self.fs.open(&new_path)?;
        self.recycled.push(Prepared {
            path: new_path,
            file,
        });
        Ok(true)
    }

    /// A prepared file: a recycled one, else the background one if ready, else one made now.
    pub(crate) fn take(&mut self) -> io::Result<Prepared> {
        if let Some(recycled) = self.recycled.pop() {
            return Ok(recycled);
        }
        if let Some(prepared) = self.ready.as_ref().and_then(|rx| rx.try_recv().ok()) {
            return prepared;
        }
        let number = self.numbers.fetch_add(1, Ordering::Relaxed);
        prepare(self.fs.as_ref(), &self.dir, number, self.size_bytes)
    }
}

fn prepare_loop(
    fs: &dyn Fs,
    dir: &Path,
    size_bytes: u64,
    numbers: &AtomicU64,
    tx: &SyncSender<io::Result<Prepared>>,
) {
    loop {
        let number = numbers.fetch_add(1, Ordering::Relaxed);
        let prepared = prepare(fs, dir, number, size_bytes);
        let failed = prepared.is_err();
        if let Err(rejected) = tx.send(prepared).map_err(|e| e.0) {
            if let Ok(unused) = rejected {
                let _ = fs.remove(&unused.path);
            }
            return;
        }
        if failed {
            return;
        }
    }
}

impl Drop for Preparer {
    fn drop(&mut self) {
        drop(self.ready.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
