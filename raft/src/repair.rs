//! The "needs repair" marker: a node whose storage failed may have lost what it acknowledged,
//! so it must not come back as a voter until an operator repairs it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Name of the marker file in a node's data directory.
pub const MARKER_FILE: &str = "NEEDS_REPAIR";

/// The marker's path in `data_dir`.
pub fn marker_path(data_dir: &Path) -> PathBuf {
    data_dir.join(MARKER_FILE)
}

/// Records that `data_dir` needs repair, with the reason. Best effort: the disk may be
/// what failed, and the caller is stopping the node either way.
pub fn mark_needs_repair(data_dir: &Path, reason: &str) {
    let path = marker_path(data_dir);
    let written = fs::File::create(&path).and_then(|mut file| {
        file.write_all(reason.as_bytes())?;
        file.sync_all()
    });
    match written {
        Ok(()) => {
            tracing::error!(dir = %data_dir.display(), %reason, "storage failed: data directory marked as needing repair");
        }
        Err(error) => {
            tracing::error!(dir = %data_dir.display(), %reason, %error, "storage failed, and the repair marker could not be written");
        }
    }
}

/// Refuses a data directory that carries the repair marker.
///
/// # Errors
/// [`Error::NeedsRepair`] with the recorded reason.
pub fn check_not_marked(data_dir: &Path) -> Result<()> {
    let path = marker_path(data_dir);
    match fs::read_to_string(&path) {
        Ok(reason) => Err(Error::NeedsRepair {
            dir: data_dir.to_owned(),
            reason,
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(Error::io("read", path)(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marked_directory_is_refused_with_its_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        check_not_marked(dir.path()).expect("clean directory passes");
        mark_needs_repair(dir.path(), "fdatasync failed");
        let error = check_not_marked(dir.path()).expect_err("marked directory is refused");
        assert!(
            matches!(error, Error::NeedsRepair { ref reason, .. } if reason == "fdatasync failed")
        );
    }
}
