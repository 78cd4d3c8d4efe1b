//! Values built from files and rebuilt when a file changes: certificates, keys, CA bundles
//! and tokens rotate without a restart.
//!
//! No watcher task: whoever uses the value asks for it ([`Reloading::current`]), and at most
//! once per [`CHECK_EVERY`] that call compares the files' stamps (inode, length,
//! modification time) with those the value was built from. A changed file rebuilds the
//! value; a rebuild that fails keeps the previous value and logs why, once per change, so a
//! half-written file never takes a node's TLS down. Replace files by renaming a complete
//! new file over the old one.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;

use super::error::Result;

/// How often the files' stamps are compared, at most.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// What identifies a version of a file (`None`: it could not be read).
type Stamp = Option<(u64, u64, SystemTime)>;

fn stamp(path: &PathBuf) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.ino(), meta.len(), meta.modified().ok()?))
}

/// The builder of a reloading value.
type Build<T> = Box<dyn Fn() -> Result<T> + Send + Sync>;

/// When the files were last compared, and their stamps then.
#[derive(Debug)]
struct Checked {
    at: Instant,
    stamps: Vec<Stamp>,
}

/// A value built from `files`, rebuilt when one of them changes.
pub struct Reloading<T> {
    what: &'static str,
    files: Vec<PathBuf>,
    build: Build<T>,
    value: ArcSwap<T>,
    checked: Mutex<Checked>,
}

impl<T> std::fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("what", &self.what)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl<T> Reloading<T> {
    /// Builds the value (`what` names it in logs) from `files` now.
    ///
    /// # Errors
    /// The first build's error: a node or client does not start on files it cannot use.
    pub fn new(
        what: &'static str,
        files: Vec<PathBuf>,
        build: impl Fn() -> Result<T> + Send + Sync + 'static,
    ) -> Result<Self> {
        let stamps = files.iter().map(stamp).collect();
        let value = build()?;
        Ok(Self {
            what,
            files,
            build: Box::new(build),
            value: ArcSwap::from_pointee(value),
            checked: Mutex::new(Checked {
                at: Instant::now(),
                stamps,
            }),
        })
    }

    /// The value, rebuilt first if a file changed since it was built (compared at most once
    /// per [`CHECK_EVERY`]; a concurrent caller meanwhile gets the value as it is).
    pub fn current(&self) -> Arc<T> {
        if let Ok(mut checked) = self.checked.try_lock()
            && checked.at.elapsed() >= CHECK_EVERY
        {
            checked.at = Instant::now();
            let stamps: Vec<Stamp> = self.files.iter().map(stamp).collect();
            if stamps != checked.stamps {
                checked.stamps = stamps;
                match (self.build)() {
                    Ok(value) => {
                        self.value.store(Arc::new(value));
                        tracing::info!(what = self.what, files = ?self.files, "reloaded");
                    }
                    Err(error) => tracing::warn!(
                        what = self.what,
                        %error,
                        "a file changed but cannot be used; keeping the previous version"
                    ),
                }
            }
        }
        self.value.load_full()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::error::SecurityError;

    fn read_number(path: &PathBuf) -> Result<u64> {
        let text = std::fs::read_to_string(path).map_err(|source| SecurityError::Read {
            what: "number",
            path: path.clone(),
            source,
        })?;
        text.trim().parse().map_err(|_| SecurityError::Invalid {
            what: "number",
            path: path.clone(),
            reason: format!("{text:?} is not a number"),
        })
    }

    /// Writes `text` to `path` by renaming a new file over it (a new inode, as a rotation
    /// should).
    fn replace(path: &PathBuf, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, path).expect("rename");
    }

    #[test]
    fn a_changed_file_is_reloaded_and_a_broken_one_keeps_the_previous_value() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("n");
        std::fs::write(&path, "1").expect("write");
        let file = path.clone();
        let value =
            Reloading::new("number", vec![path.clone()], move || read_number(&file)).expect("new");
        assert_eq!(*value.current(), 1);
        replace(&path, "2");
        // Not compared again before CHECK_EVERY has passed.
        assert_eq!(*value.current(), 1);
        std::thread::sleep(CHECK_EVERY);
        assert_eq!(*value.current(), 2);
        replace(&path, "not a number");
        std::thread::sleep(CHECK_EVERY);
        assert_eq!(
            *value.current(),
            2,
            "a broken file keeps the previous value"
        );
        replace(&path, "3");
        std::thread::sleep(CHECK_EVERY);
        assert_eq!(*value.current(), 3);
    }

    #[test]
    fn a_file_unusable_at_start_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("missing");
        let file = path.clone();
        let error = Reloading::new("number", vec![path], move || read_number(&file))
            .expect_err("missing file");
        assert!(error.to_string().contains("reading the number"), "{error}");
    }
}
