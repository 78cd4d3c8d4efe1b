//! A fault-injecting [`Fs`] for crash tests.
//!
//! It writes through to real files (so segments can still be memory-mapped) and remembers,
//! per file, every write since that file's last `fdatasync`, with the bytes it replaced, and
//! every create and rename since the last directory `fsync`. [`FaultyFs::crash`] then
//! simulates a power cut: each unsynced write is kept, dropped, or torn at 512-byte sector
//! granularity (chosen from a seed), unsynced creates and renames are undone, and every
//! later operation fails. It can also fail the next writes or syncs on demand, to test
//! poisoning.
//!
//! Not modelled: a lost `unlink` (removes are applied at once; the log only removes files
//! that recovery would discard anyway), and reordering of directory operations among
//! themselves.

use std::{
    collections::HashMap,
    fs::File,
    io,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
};

use super::{FileIo, Fs, StdFs};

const SECTOR_BYTES: usize = 512;

#[derive(Debug)]
struct UnsyncedWrite {
    /// Order of the write among all writes of this file system.
    seq: u64,
    offset: u64,
    /// What the bytes were before the write; zeros past the old end of file.
    old: Vec<u8>,
}

#[derive(Debug)]
struct TrackedFile {
    file: File,
    unsynced: Vec<UnsyncedWrite>,
}

#[derive(Debug)]
enum DirOp {
    Created(PathBuf),
    Renamed { from: PathBuf, to: PathBuf },
}

#[derive(Debug, Default)]
struct State {
    crashed: bool,
    files: HashMap<u64, TrackedFile>,
    next_file_key: u64,
    next_write_seq: u64,
    dir_ops: Vec<DirOp>,
    fail_writes: u32,
    fail_syncs: u32,
}

/// A fault-injecting file system for tests; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct FaultyFs {
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct FaultyFile {
    key: u64,
    file: File,
    state: Arc<Mutex<State>>,
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected fault: {what}"))
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A small deterministic generator (xorshift64*), so a seed reproduces a crash.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

impl FaultyFs {
    /// A file system with no faults pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next `count` writes fail with an I/O error.
    pub fn fail_next_writes(&self, count: u32) {
        lock(&self.state).fail_writes = count;
    }

    /// Makes the next `count` `fdatasync` calls fail with an I/O error.
    pub fn fail_next_syncs(&self, count: u32) {
        lock(&self.state).fail_syncs = count;
    }

    /// Simulates a power cut now: unsynced writes are kept, dropped or torn by `seed`,
    /// unsynced creates and renames are undone, and every later operation fails.
    ///
    /// # Errors
    /// An I/O error while restoring the files.
    pub fn crash(&self, seed: u64) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.crashed = true;
        let mut rng = Rng(seed | 1);
        for tracked in state.files.values_mut() {
            for write in tracked.unsynced.drain(..).rev() {
                match rng.next() % 3 {
                    0 => {}
                    1 => tracked.file.write_all_at(&write.old, write.offset)?,
                    _ => tear(&tracked.file, &write, &mut rng)?,
                }
            }
        }
        for op in std::mem::take(&mut state.dir_ops).into_iter().rev() {
            match op {
                DirOp::Created(path) => match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                },
                DirOp::Renamed { from, to } => std::fs::rename(to, from)?,
            }
        }
        state.files.clear();
        Ok(())
    }

    fn track(&self, file: File) -> io::Result<Arc<dyn FileIo>> {
        let mut state = lock(&self.state);
        if state.crashed {
            return Err(injected("crashed"));
        }
        let key = state.next_file_key;
        state.next_file_key += 1;
        let tracked = TrackedFile {
            file: file.try_clone()?,
            unsynced: Vec::new(),
        };
        state.files.insert(key, tracked);
        Ok(Arc::new(FaultyFile {
            key,
            file,
            state: Arc::clone(&self.state),
        }))
    }

    fn check(&self) -> io::Result<MutexGuard<'_, State>> {
        let state = lock(&self.state);
        if state.crashed {
            Err(injected("crashed"))
        } else {
            Ok(state)
        }
    }
}

/// Reverts a random subset of the write's sectors.
fn tear(file: &File, write: &UnsyncedWrite, rng: &mut Rng) -> io::Result<()> {
    let mut at = 0;
    while at < write.old.len() {
        let end = (at + SECTOR_BYTES).min(write.old.len());
        if rng.next().is_multiple_of(2) {
            file.write_all_at(&write.old[at..end], write.offset + at as u64)?;
        }
        at = end;
    }
    Ok(())
}

impl Fs for FaultyFs {
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn FileIo>> {
        drop(self.check()?);
        let io = StdFs.create_new(path)?;
        let file = io.file().try_clone()?;
        lock(&self.state)
            .dir_ops
            .push(DirOp::Created(path.to_path_buf()));
        self.track(file)
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn FileIo>> {
        drop(self.check()?);
        let file = StdFs.open(path)?.file().try_clone()?;
        self.track(file)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.check()?;
        std::fs::rename(from, to)?;
        state.dir_ops.push(DirOp::Renamed {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
        });
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        drop(self.check()?);
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.check()?;
        StdFs.sync_dir(dir)?;
        state.dir_ops.clear();
        Ok(())
    }
}

impl FileIo for FaultyFile {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut state = lock(&self.state);
        if state.crashed {
            return Err(injected("crashed"));
        }
        if state.fail_writes > 0 {
            state.fail_writes -= 1;
            return Err(injected("write"));
        }
        let mut old = vec![0u8; buf.len()];
        let file_len = self.file.metadata()?.len();
        let readable = usize::try_from(file_len.saturating_sub(offset)).unwrap_or(usize::MAX);
        let readable = readable.min(buf.len());
        self.file.read_exact_at(&mut old[..readable], offset)?;
        self.file.write_all_at(buf, offset)?;
        let seq = state.next_write_seq;
        state.next_write_seq += 1;
        if let Some(tracked) = state.files.get_mut(&self.key) {
            tracked.unsynced.push(UnsyncedWrite { seq, offset, old });
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        // Only writes completed before the sync started are known durable after it.
        let before = {
            let mut state = lock(&self.state);
            if state.crashed {
                return Err(injected("crashed"));
            }
            if state.fail_syncs > 0 {
                state.fail_syncs -= 1;
                return Err(injected("fdatasync"));
            }
            state.next_write_seq
        };
        self.file.sync_data()?;
        let mut state = lock(&self.state);
        if state.crashed {
            return Err(injected("crashed"));
        }
        if let Some(tracked) = state.files.get_mut(&self.key) {
            tracked.unsynced.retain(|write| write.seq >= before);
        }
        Ok(())
    }

    fn file(&self) -> &File {
        &self.file
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;

    fn read(path: &Path) -> Vec<u8> {
        std::fs::read(path).unwrap()
    }

    #[test]
    fn synced_bytes_survive_a_crash_and_unsynced_creates_vanish() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultyFs::new();
        let kept = dir.path().join("kept");
        let file = fs.create_new(&kept).unwrap();
        file.write_all_at(b"durable", 0).unwrap();
        file.sync_data().unwrap();
        fs.sync_dir(dir.path()).unwrap();
        file.write_all_at(b"DURABLE", 0).unwrap();
        let lost = dir.path().join("lost");
        fs.create_new(&lost).unwrap();
        fs.crash(42).unwrap();
        assert!(!lost.exists());
        let after = read(&kept);
        assert!(after == b"durable" || after == b"DURABLE", "{after:?}");
        assert!(
            file.write_all_at(b"x", 0).is_err(),
            "writes fail after the crash"
        );
    }

    #[test]
    fn dropped_writes_restore_the_old_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut outcomes = std::collections::HashSet::new();
        for seed in 0..32 {
            let _ = std::fs::remove_file(&path);
            let fs = FaultyFs::new();
            let file = fs.create_new(&path).unwrap();
            file.write_all_at(&[1; 2048], 0).unwrap();
            file.sync_data().unwrap();
            fs.sync_dir(dir.path()).unwrap();
            file.write_all_at(&[2; 2048], 0).unwrap();
            fs.crash(seed).unwrap();
            let bytes = read(&path);
            assert_eq!(bytes.len(), 2048);
            assert!(bytes.iter().all(|&b| b == 1 || b == 2));
            outcomes.insert(bytes);
        }
        assert!(
            outcomes.len() > 2,
            "kept, dropped and torn outcomes all occur"
        );
    }

    #[test]
    fn injected_sync_failure_is_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultyFs::new();
        let file = fs.create_new(&dir.path().join("f")).unwrap();
        fs.fail_next_syncs(1);
        assert!(file.sync_data().is_err());
        file.sync_data().unwrap();
        let mut buf = [0u8; 1];
        assert!(file.file().read_at(&mut buf, 0).is_ok());
    }
}
