//! Moving live values: out of the log into a new file before the log is purged
//! ([`ValueStore::relocate`]), and out of sparse or small files into one file of a newer
//! generation once a snapshot no longer needs the rest ([`ValueStore::collect`]).

use std::path::Path;
use std::sync::Arc;

use super::file::{self, ValueFile};
use super::{
    MERGED_MAX_BYTES, SMALL_FILE_BYTES, StoreChange, ValueError, ValueRef, ValueStore, by_place,
    file_name,
};

impl ValueStore {
    /// Copies every value of `live` recorded in `covered + 1 ..= upto` from the log into a
    /// new file, synced, then covers `..= upto`: after this the log may be purged up to
    /// `upto`. `live` is every reference the state holds (any order, repeats allowed).
    ///
    /// # Errors
    /// [`ValueError::Missing`] when a live value is not in the log; I/O errors. Nothing is
    /// covered then.
    pub fn relocate(&self, live: &[ValueRef], upto: u64) -> Result<StoreChange, ValueError> {
        let _writer = self.writer();
        let (start, generation) = {
            let files = self.files();
            (
                files.covered.map_or(0, |c| c.saturating_add(1)),
                files.generation + 1,
            )
        };
        if upto < start {
            return Ok(StoreChange::default());
        }
        #[cfg_attr(
            not(feature = "sabotage"),
            expect(unused_mut, reason = "sabotage only")
        )]
        let mut moving = by_place(
            live.iter()
                .filter(|at| (start..=upto).contains(&at.index))
                .copied(),
        );
        #[cfg(feature = "sabotage")]
        if crate::sabotage::on(crate::sabotage::Fault::DroppedValues) {
            moving.pop();
        }
        if moving.is_empty() {
            // Nothing to keep: the range is covered without a file.
            self.files_mut().covered = Some(upto);
            return Ok(StoreChange::default());
        }
        let values = moving
            .into_iter()
            .map(|at| Ok((at, self.in_log(&at)?.ok_or(ValueError::Missing { at })?)));
        let path = self.dir.join(file_name(start, upto, generation));
        let (values_written, bytes_written) = file::write(&path, start, upto, values)?;
        self.swap(Some(&path), Some(&[]), generation, Some(upto))?;
        Ok(StoreChange {
            values_written,
            bytes_written,
            files_removed: 0,
        })
    }

    /// Serves from the file just written at `path` (if any) instead of the files `replace`
    /// names by first index (every file when `None`, and `covered` becomes `cover`; else it
    /// grows to `cover` if that is higher). Returns the files replaced, for the caller to
    /// remove.
    pub(super) fn swap(
        &self,
        path: Option<&Path>,
        replace: Option<&[u64]>,
        generation: u64,
        cover: Option<u64>,
    ) -> Result<Vec<Arc<ValueFile>>, ValueError> {
        let opened = path.map(ValueFile::open).transpose()?.map(Arc::new);
        let mut files = self.files_mut();
        let replaced = match replace {
            None => std::mem::take(&mut files.by_first).into_values().collect(),
            Some(firsts) => firsts
                .iter()
                .filter_map(|first| files.by_first.remove(first))
                .collect(),
        };
        if let Some(opened) = opened {
            files.by_first.insert(opened.range().0, opened);
        }
        files.generation = files.generation.max(generation);
        // An installation replaces everything, its coverage with it; otherwise coverage
        // only grows.
        files.covered = if replace.is_none() {
            cover
        } else {
            files.covered.max(cover)
        };
        Ok(replaced)
    }

    pub(super) fn remove(files: &[Arc<ValueFile>]) -> Result<u64, ValueError> {
        for file in files {
            std::fs::remove_file(file.path()).map_err(|source| ValueError::Io {
                op: "remove",
                path: file.path().to_owned(),
                source,
            })?;
        }
        Ok(files.len() as u64)
    }

    /// Drops values `live` no longer references and merges small files: consecutive files
    /// that are under half live or hold under [`SMALL_FILE_BYTES`] of live values are
    /// rewritten as one file of their live values (up to [`MERGED_MAX_BYTES`] a file; none
    /// when nothing is live). Call it only with the state of a published snapshot (module
    /// docs).
    ///
    /// # Errors
    /// I/O errors, a file's corruption; [`ValueError::Missing`] when a live value of a
    /// file's range is not in it.
    pub fn collect(&self, live: &[ValueRef]) -> Result<StoreChange, ValueError> {
        let _writer = self.writer();
        let live = by_place(live.iter().copied());
        let files: Vec<Arc<ValueFile>> = self.files().by_first.values().cloned().collect();
        let mut change = StoreChange::default();
        let mut run: Vec<(Arc<ValueFile>, &[ValueRef], bool)> = Vec::new();
        let mut run_bytes = 0;
        for file in files {
            let (first, last) = file.range();
            let from = live.partition_point(|at| at.index < first);
            let to = live.partition_point(|at| at.index <= last);
            let kept = &live[from..to];
            let kept_bytes: u64 = kept.iter().map(|at| u64::from(at.len)).sum();
            let wasteful = kept_bytes * 2 < file.data_len() || kept.len() * 2 < file.count();
            let mergeable = wasteful || kept_bytes < SMALL_FILE_BYTES;
            if !mergeable || run_bytes + kept_bytes > MERGED_MAX_BYTES {
                self.rewrite(&std::mem::take(&mut run), &mut change)?;
                run_bytes = 0;
            }
            if mergeable {
                run.push((file, kept, wasteful));
                run_bytes += kept_bytes;
            }
        }
        self.rewrite(&run, &mut change)?;
        Ok(change)
    }

    /// Rewrites a run of consecutive files as one holding their `live` values, unless it is
    /// a single file with nothing to drop.
    fn rewrite(
        &self,
        run: &[(Arc<ValueFile>, &[ValueRef], bool)],
        change: &mut StoreChange,
    ) -> Result<(), ValueError> {
        let single_and_tight = run.len() == 1 && !run[0].2;
        if run.is_empty() || single_and_tight {
            return Ok(());
        }
        let first = run[0].0.range().0;
        let last = run[run.len() - 1].0.range().1;
        let generation = self.files().generation + 1;
        let firsts: Vec<u64> = run.iter().map(|(file, _, _)| file.range().0).collect();
        let values = run.iter().flat_map(|(file, kept, _)| {
            kept.iter()
                .map(|at| Ok((*at, file.get(at)?.ok_or(ValueError::Missing { at: *at })?)))
        });
        let mut values = values.peekable();
        let path = self.dir.join(file_name(first, last, generation));
        let written = if values.peek().is_some() {
            let (values_written, bytes_written) = file::write(&path, first, last, values)?;
            change.values_written += values_written;
            change.bytes_written += bytes_written;
            Some(path.as_path())
        } else {
            None
        };
        let replaced = self.swap(written, Some(&firsts), generation, None)?;
        change.files_removed += Self::remove(&replaced)?;
        Ok(())
    }
}
