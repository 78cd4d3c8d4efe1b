//! What the disk nemeses do to a stopped node's files: bit flips inside the written part of
//! a file, or a truncation (which file and where come from the run's seed); and a power
//! loss, which undoes what the node's sync journal shows no sync covered.

use std::fmt;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rand::Rng;
use rand::rngs::StdRng;

/// What to do to a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Damage {
    /// Flip one random bit in each of this many distinct bytes among the file's written
    /// bytes.
    FlipBits(u32),
    /// Cut the file at a random point of its written bytes.
    Truncate,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FlipBits(count) => write!(f, "flip {count} bit(s)"),
            Self::Truncate => write!(f, "truncate"),
        }
    }
}

/// Every regular file under `dir`, sorted (so a seed picks the same one again).
fn files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                found.push(entry.path());
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The written part of a file: up to its last non-zero byte (segments are preallocated
/// with zeros, and damage past the written part would test nothing).
fn written_len(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |last| last + 1)
}

/// Damages one file of `data_dir` (one of its log segments, with `segments_only`) chosen by
/// `rng`; returns what it did.
///
/// # Errors
/// No file with written bytes, or an I/O error.
pub(super) fn damage(
    data_dir: &Path,
    damage: Damage,
    segments_only: bool,
    rng: &mut StdRng,
) -> anyhow::Result<String> {
    let mut candidates = Vec::new();
    for path in files(data_dir)? {
        if segments_only && path.extension().is_none_or(|ext| ext != "seg") {
            continue;
        }
        let mut bytes = Vec::new();
        std::fs::File::open(&path)?.read_to_end(&mut bytes)?;
        let written = written_len(&bytes);
        if written > 0 {
            candidates.push((path, written));
        }
    }
    anyhow::ensure!(
        !candidates.is_empty(),
        "no written file under {}",
        data_dir.display()
    );
    let (path, written) = &candidates[rng.random_range(0..candidates.len())];
    let name = path
        .strip_prefix(data_dir)
        .unwrap_or(path)
        .display()
        .to_string();
    let mut file = std::fs::File::options().read(true).write(true).open(path)?;
    match damage {
        Damage::FlipBits(count) => {
            let count = usize::try_from(count).unwrap_or(usize::MAX).min(*written);
            let mut offsets = Vec::new();
            // Distinct bytes, so no flip undoes another.
            for offset in rand::seq::index::sample(rng, *written, count) {
                let offset = offset as u64;
                let bit = rng.random_range(0..8u8);
                let mut byte = [0u8; 1];
                file.seek(SeekFrom::Start(offset))?;
                file.read_exact(&mut byte)?;
                byte[0] ^= 1 << bit;
                file.seek(SeekFrom::Start(offset))?;
                file.write_all(&byte)?;
                offsets.push(offset);
            }
            file.sync_all()?;
            Ok(format!("flipped bits of {name} at {offsets:?}"))
        }
        Damage::Truncate => {
            let len = rng.random_range(0..*written) as u64;
            file.set_len(len)?;
            file.sync_all()?;
            Ok(format!(
                "truncated {name} to {len} of {written} written bytes"
            ))
        }
    }
}

/// Simulates a power cut of a node killed with SIGKILL: from its sync journal, zeroes the
/// writes no `fdatasync` covered, removes files created since their directory's last sync,
/// undoes renames since then (newest first), and empties the journal for the next life.
/// Returns what it undid.
///
/// # Errors
/// An unreadable or malformed journal, or an I/O error.
pub(super) fn power_loss(journal: &Path) -> anyhow::Result<String> {
    let text = match std::fs::read_to_string(journal) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(error) => return Err(error.into()),
    };
    let lost = keel_log::fs::journaled::unsynced(&text)?;
    let mut zeroed = 0u64;
    for (path, offset, len) in &lost.writes {
        let Ok(mut file) = std::fs::File::options().write(true).open(path) else {
            continue;
        };
        let end = file.metadata()?.len().min(offset + len);
        if end <= *offset {
            continue;
        }
        file.seek(SeekFrom::Start(*offset))?;
        let zeros = vec![0u8; usize::try_from(end - offset)?];
        file.write_all(&zeros)?;
        file.sync_all()?;
        zeroed += end - offset;
    }
    for path in &lost.created {
        // Already gone is what a power cut would leave too.
        let _ = std::fs::remove_file(path);
    }
    for (from, to) in lost.renamed.iter().rev() {
        if to.exists() {
            std::fs::rename(to, from)?;
        }
    }
    std::fs::write(journal, "")?;
    Ok(format!(
        "{} unsynced write(s) ({zeroed} bytes) zeroed, {} unsynced create(s) removed, {} unsynced rename(s) undone",
        lost.writes.len(),
        lost.created.len(),
        lost.renamed.len()
    ))
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn dir_with_one_written_file() -> (tempfile::TempDir, PathBuf, Vec<u8>) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("log")).expect("mkdir");
        let mut bytes: Vec<u8> = (1..=200u8).collect();
        bytes.extend_from_slice(&[0; 300]);
        let path = dir.path().join("log/0001.seg");
        std::fs::write(&path, &bytes).expect("write");
        std::fs::write(dir.path().join("empty"), [0u8; 64]).expect("write");
        (dir, path, bytes)
    }

    #[test]
    fn bit_flips_land_in_the_written_bytes_of_a_written_file() {
        let (dir, path, before) = dir_with_one_written_file();
        let mut rng = StdRng::seed_from_u64(3);
        let done = damage(dir.path(), Damage::FlipBits(3), true, &mut rng).expect("damage");
        assert!(done.contains("log/0001.seg"), "{done}");
        let after = std::fs::read(&path).expect("read");
        assert_eq!(after.len(), before.len());
        let changed: Vec<usize> = (0..after.len())
            .filter(|&i| after[i] != before[i])
            .collect();
        assert_eq!(changed.len(), 3, "{changed:?}");
        assert!(changed.iter().all(|&i| i < 200), "{changed:?}");
        for i in changed {
            assert_eq!((after[i] ^ before[i]).count_ones(), 1, "one bit per byte");
        }
    }

    #[test]
    fn truncation_cuts_inside_the_written_bytes() {
        let (dir, path, _) = dir_with_one_written_file();
        let mut rng = StdRng::seed_from_u64(5);
        damage(dir.path(), Damage::Truncate, false, &mut rng).expect("damage");
        assert!(std::fs::metadata(&path).expect("stat").len() < 200);
    }

    #[test]
    fn power_loss_zeroes_unsynced_writes_and_undoes_unsynced_creates() {
        use keel_log::fs::{Fs, journaled::JournaledFs};
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = dir.path().join("journal");
        let fs = JournaledFs::new(&journal).expect("journal");
        let kept = fs.create_new(&dir.path().join("kept")).expect("create");
        fs.sync_dir(dir.path()).expect("sync dir");
        kept.write_all_at(b"durable", 0).expect("write");
        kept.sync_data().expect("sync");
        kept.write_all_at(b"volatile", 7).expect("write");
        fs.create_new(&dir.path().join("new")).expect("create");
        let done = power_loss(&journal).expect("power loss");
        assert!(done.starts_with("1 unsynced write(s) (8 bytes)"), "{done}");
        assert_eq!(
            std::fs::read(dir.path().join("kept")).expect("read"),
            b"durable\0\0\0\0\0\0\0\0"
        );
        assert!(!dir.path().join("new").exists());
        assert_eq!(std::fs::read_to_string(&journal).expect("read"), "");
    }

    #[test]
    fn a_directory_without_written_files_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("zeros"), [0u8; 16]).expect("write");
        let mut rng = StdRng::seed_from_u64(1);
        assert!(damage(dir.path(), Damage::Truncate, false, &mut rng).is_err());
    }
}
