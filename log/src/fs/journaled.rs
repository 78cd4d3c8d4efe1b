//! A write-through [`Fs`] that journals, to a side file, what would be lost on a power cut:
//! every write (file, offset, length), every `fdatasync`, every create, rename, remove and
//! directory `fsync`. After the process is killed with SIGKILL (which keeps the page cache), a test
//! harness replays the journal ([`unsynced`]) to find the writes no sync covered and the
//! directory operations no directory sync covered, and undoes them: a simulated power loss
//! of real node processes.
//!
//! The journal only needs to survive the process, not the machine, so it is appended to
//! with plain writes and never synced. A sync is journaled after it returns and before its
//! caller continues, so anything acknowledged on the strength of a sync is journaled as
//! synced; a sync journaled as missing only makes the simulation lose what a crash just
//! before that sync would have lost.
//!
//! Journal lines (paths last, so they may hold spaces):
//! `C key path` created, `O key path` opened, `W key offset len` written, `S key` synced,
//! `R from\tto` renamed, `X path` removed, `D dir` directory synced.

use std::{
    collections::HashMap,
    fs::File,
    io::{self, IoSlice, Write},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use super::{FileIo, Fs, StdFs};

/// The journaling file system.
#[derive(Debug)]
pub struct JournaledFs {
    journal: Arc<Mutex<File>>,
    next_key: AtomicU64,
}

#[derive(Debug)]
struct JournaledFile {
    inner: Arc<dyn FileIo>,
    key: u64,
    journal: Arc<Mutex<File>>,
}

fn append(journal: &Mutex<File>, line: &str) -> io::Result<()> {
    journal
        .lock()
        .map_err(|_| io::Error::other("sync journal lock poisoned"))?
        .write_all(line.as_bytes())
}

impl JournaledFs {
    /// Journals to `path` (appending; created if missing).
    ///
    /// # Errors
    /// The journal cannot be opened.
    pub fn new(path: &Path) -> io::Result<Self> {
        let journal = File::options().create(true).append(true).open(path)?;
        Ok(Self {
            journal: Arc::new(Mutex::new(journal)),
            next_key: AtomicU64::new(0),
        })
    }

    fn track(
        &self,
        inner: Arc<dyn FileIo>,
        verb: char,
        path: &Path,
    ) -> io::Result<Arc<dyn FileIo>> {
        // Keys only need to be unique within one journal; the process id separates lives.
        let key =
            u64::from(std::process::id()) << 32 | self.next_key.fetch_add(1, Ordering::Relaxed);
        append(&self.journal, &format!("{verb} {key} {}\n", path.display()))?;
        Ok(Arc::new(JournaledFile {
            inner,
            key,
            journal: Arc::clone(&self.journal),
        }))
    }
}

impl FileIo for JournaledFile {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        append(
            &self.journal,
            &format!("W {} {offset} {}\n", self.key, buf.len()),
        )?;
        self.inner.write_all_at(buf, offset)
    }

    fn write_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<usize> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        append(&self.journal, &format!("W {} {offset} {len}\n", self.key))?;
        self.inner.write_vectored_at(bufs, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()?;
        append(&self.journal, &format!("S {}\n", self.key))
    }

    fn file(&self) -> &File {
        self.inner.file()
    }
}

impl Fs for JournaledFs {
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn FileIo>> {
        let inner = StdFs.create_new(path)?;
        self.track(inner, 'C', path)
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn FileIo>> {
        let inner = StdFs.open(path)?;
        self.track(inner, 'O', path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        StdFs.rename(from, to)?;
        append(
            &self.journal,
            &format!("R {}\t{}\n", from.display(), to.display()),
        )
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        StdFs.remove(path)?;
        append(&self.journal, &format!("X {}\n", path.display()))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        StdFs.sync_dir(dir)?;
        append(&self.journal, &format!("D {}\n", dir.display()))
    }
}

/// What a power cut would undo, found by replaying a journal.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Unsynced {
    /// Writes no sync of their file covered: `(path, offset, len)`, by the file's path at
    /// the end of the journal.
    pub writes: Vec<(PathBuf, u64, u64)>,
    /// Files created since their directory's last sync: they vanish.
    pub created: Vec<PathBuf>,
    /// Renames since their directory's last sync, oldest first: `(from, to)`; undone in
    /// reverse.
    pub renamed: Vec<(PathBuf, PathBuf)>,
}

fn parent(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The journal replayed so far.
#[derive(Debug, Default)]
struct Replay {
    paths: HashMap<u64, PathBuf>,
    pending: HashMap<u64, Vec<(u64, u64)>>,
    created: Vec<PathBuf>,
    renamed: Vec<(PathBuf, PathBuf)>,
}

fn bad(line: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("bad journal line {line:?}"),
    )
}

/// `key rest-of-line`.
fn key_and<'a>(line: &str, rest: &'a str) -> io::Result<(u64, &'a str)> {
    let (key, tail) = rest.split_once(' ').unwrap_or((rest, ""));
    Ok((key.parse().map_err(|_| bad(line))?, tail))
}

impl Replay {
    fn line(&mut self, line: &str) -> io::Result<()> {
        let (verb, rest) = line.split_once(' ').ok_or_else(|| bad(line))?;
        match verb {
            "C" | "O" => {
                let (key, path) = key_and(line, rest)?;
                if verb == "C" {
                    self.created.push(PathBuf::from(path));
                }
                self.paths.insert(key, PathBuf::from(path));
            }
            "W" => {
                let (key, tail) = key_and(line, rest)?;
                let (offset, len) = tail.split_once(' ').ok_or_else(|| bad(line))?;
                let offset = offset.parse().map_err(|_| bad(line))?;
                let len = len.parse().map_err(|_| bad(line))?;
                self.pending.entry(key).or_default().push((offset, len));
            }
            "S" => {
                // `fdatasync` makes the file durable, whichever handle (or earlier life of
                // the process) wrote to it.
                let key = key_and(line, rest)?.0;
                if let Some(path) = self.paths.get(&key) {
                    let paths = &self.paths;
                    self.pending
                        .retain(|other, _| paths.get(other) != Some(path));
                }
                self.pending.remove(&key);
            }
            "R" => {
                let (from, to) = rest.split_once('\t').ok_or_else(|| bad(line))?;
                let (from, to) = (PathBuf::from(from), PathBuf::from(to));
                for path in self.paths.values_mut().chain(&mut self.created) {
                    if *path == from {
                        path.clone_from(&to);
                    }
                }
                self.renamed.push((from, to));
            }
            "X" => {
                let path = PathBuf::from(rest);
                self.created.retain(|p| *p != path);
                self.paths.retain(|_, p| *p != path);
            }
            "D" => {
                let dir = PathBuf::from(rest);
                self.created.retain(|p| parent(p) != dir);
                self.renamed.retain(|(_, to)| parent(to) != dir);
            }
            _ => return Err(bad(line)),
        }
        Ok(())
    }

    fn finish(self) -> Unsynced {
        let paths = self.paths;
        let mut writes: Vec<(PathBuf, u64, u64)> = self
            .pending
            .into_iter()
            .filter_map(|(key, ranges)| Some((paths.get(&key)?.clone(), ranges)))
            .flat_map(|(path, ranges)| ranges.into_iter().map(move |(o, l)| (path.clone(), o, l)))
            .collect();
        writes.sort();
        Unsynced {
            writes,
            created: self.created,
            renamed: self.renamed,
        }
    }
}

/// Replays `journal` (its text) into what a power cut would undo.
///
/// # Errors
/// A malformed line.
pub fn unsynced(journal: &str) -> io::Result<Unsynced> {
    let mut replay = Replay::default();
    for line in journal.lines() {
        replay.line(line)?;
    }
    Ok(replay.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_after_the_last_sync_of_their_file_are_unsynced() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("journal");
        let fs = JournaledFs::new(&journal).unwrap();
        let a = fs.create_new(&dir.path().join("a")).unwrap();
        let b = fs.create_new(&dir.path().join("b")).unwrap();
        fs.sync_dir(dir.path()).unwrap();
        a.write_all_at(b"synced", 0).unwrap();
        a.sync_data().unwrap();
        a.write_all_at(b"lost", 6).unwrap();
        b.write_vectored_at(&[IoSlice::new(b"also"), IoSlice::new(b"lost")], 100)
            .unwrap();
        fs.rename(&dir.path().join("b"), &dir.path().join("c"))
            .unwrap();
        let text = std::fs::read_to_string(&journal).unwrap();
        let found = unsynced(&text).unwrap();
        assert_eq!(
            found.writes,
            vec![(dir.path().join("a"), 6, 4), (dir.path().join("c"), 100, 8)]
        );
        assert!(
            found.created.is_empty(),
            "the directory was synced after both creates"
        );
        assert_eq!(
            found.renamed,
            vec![(dir.path().join("b"), dir.path().join("c"))]
        );
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"syncedlost");
    }

    #[test]
    fn creates_without_a_directory_sync_vanish_and_removed_files_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("journal");
        let fs = JournaledFs::new(&journal).unwrap();
        let kept = fs.create_new(&dir.path().join("kept")).unwrap();
        let gone = fs.create_new(&dir.path().join("gone")).unwrap();
        gone.write_all_at(b"x", 0).unwrap();
        fs.remove(&dir.path().join("gone")).unwrap();
        kept.write_all_at(b"y", 0).unwrap();
        kept.sync_data().unwrap();
        let found = unsynced(&std::fs::read_to_string(&journal).unwrap()).unwrap();
        assert_eq!(found.created, vec![dir.path().join("kept")]);
        assert!(found.writes.is_empty(), "{:?}", found.writes);
    }

    #[test]
    fn a_sync_covers_writes_of_every_handle_and_earlier_life_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("journal");
        let path = dir.path().join("seg");
        let fs = JournaledFs::new(&journal).unwrap();
        let first = fs.create_new(&path).unwrap();
        fs.sync_dir(dir.path()).unwrap();
        first.write_all_at(b"earlier life", 0).unwrap();
        // A later life (another journal key) opens the file again and syncs it.
        let later = JournaledFs::new(&journal).unwrap();
        let reopened = later.open(&path).unwrap();
        reopened.write_all_at(b"!", 12).unwrap();
        reopened.sync_data().unwrap();
        let found = unsynced(&std::fs::read_to_string(&journal).unwrap()).unwrap();
        assert!(found.writes.is_empty(), "{:?}", found.writes);
    }

    #[test]
    fn a_malformed_journal_is_an_error() {
        assert!(unsynced("W notakey 1 2\n").is_err());
        assert!(unsynced("Q 1 x\n").is_err());
        assert!(unsynced("W 1 5\n").is_err());
        assert_eq!(unsynced("").unwrap(), Unsynced::default());
    }
}
