//! openraft's own storage conformance suite against the real keel-log store and the state
//! machine host (with the plain log application).

use keel_raft::log_store::LogStore;
use keel_raft::plain_log::{PlainLog, Retention};
use keel_raft::snapshot::SnapshotDir;
use keel_raft::state_machine::StateMachineHost;
use keel_raft::types::TypeConfig;
use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use tempfile::TempDir;

struct KeelStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineHost, TempDir> for KeelStoreBuilder {
    async fn build(
        &self,
    ) -> Result<(TempDir, LogStore, StateMachineHost), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = keel_log::Options {
            segment_size_bytes: 1 << 20,
            record_size_max_bytes: 64 * 1024,
            ..keel_log::Options::default()
        };
        let store = LogStore::open(&dir.path().join("log"), options, dir.path()).expect("open log");
        let snapshots = SnapshotDir::open(dir.path().join("snapshots")).expect("snapshot dir");
        let host = StateMachineHost::open(
            Box::new(PlainLog::new(Retention::default())),
            snapshots,
            |covered| {
                Ok(std::sync::Arc::new(store.value_store(
                    &dir.path().join("values"),
                    0,
                    covered,
                )?))
            },
        )
        .expect("state machine");
        Ok((dir, store, host))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keel_store_passes_openraft_storage_suite() -> Result<(), StorageError<TypeConfig>> {
    Suite::test_all(KeelStoreBuilder).await
}
