//! A failed `fdatasync` or write fails openraft's I/O and marks the data directory as
//! needing repair; a node then refuses to start from it.

use std::sync::Arc;

use keel_log::fs::faulty::FaultyFs;
use keel_raft::log_store::LogStore;
use keel_raft::repair::check_not_marked;
use keel_raft::types::{Entry, EntryPayload, TypeConfig, log_id};
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::TypeConfigExt;

fn blank(index: u64) -> Entry {
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Blank,
    }
}

fn open(dir: &std::path::Path, fs: &FaultyFs) -> LogStore {
    let options = keel_log::Options {
        segment_size_bytes: 1 << 20,
        record_size_max_bytes: 64 * 1024,
        // No background segment preparation: an injected fault must hit the append's own
        // write, not the preparer's.
        prepare_ahead: false,
        ..keel_log::Options::default()
    };
    LogStore::open_with_fs(&dir.join("log"), options, dir, Arc::new(fs.clone())).expect("open")
}

async fn append(store: &mut LogStore, entries: Vec<Entry>) -> Result<(), std::io::Error> {
    let (tx, rx) = TypeConfig::oneshot();
    store
        .append(entries, IOFlushed::<TypeConfig>::signal(tx))
        .await?;
    rx.await.expect("flush callback fires")
}

#[tokio::test]
async fn a_failed_sync_fails_the_flush_and_marks_the_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultyFs::new();
    let mut store = open(dir.path(), &fs);
    append(&mut store, vec![blank(0), blank(1)])
        .await
        .expect("healthy append");
    check_not_marked(dir.path()).expect("not marked while healthy");
    fs.fail_next_syncs(1);
    let error = append(&mut store, vec![blank(2)])
        .await
        .expect_err("the flush reports the failed sync");
    assert!(error.to_string().contains("fdatasync"), "{error}");
    let refused = check_not_marked(dir.path()).expect_err("marked after the failure");
    assert!(refused.to_string().contains("needs repair"), "{refused}");
    assert!(
        append(&mut store, vec![blank(3)]).await.is_err(),
        "a poisoned log accepts nothing more"
    );
}

#[tokio::test]
async fn a_failed_write_fails_the_append_and_marks_the_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultyFs::new();
    let mut store = open(dir.path(), &fs);
    fs.fail_next_writes(1);
    let (tx, _rx) = TypeConfig::oneshot();
    let result = store
        .append(vec![blank(0)], IOFlushed::<TypeConfig>::signal(tx))
        .await;
    assert!(result.is_err(), "the write error reaches openraft");
    assert!(
        check_not_marked(dir.path()).is_err(),
        "marked after the failure"
    );
}
