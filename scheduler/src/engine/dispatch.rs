//! The leader's table of remote workers and the workflows leased to them.
//!
//! A worker holds a `Work` session (hello, then heartbeats). The leader leases it
//! workflows of kinds it declared, each under a fence claimed through the log; a lease
//! lasts while the worker's heartbeats keep arriving. When a worker disconnects or its
//! heartbeats stop for longer than the lease, its workflows are claimed again (new fences,
//! so its late records are refused) and leased to another worker. When the leader loses
//! leadership it drops every session; workers reconnect to the new leader.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};

use crate::command::Value;
use crate::state::{JournalEntry, Workflow};

/// A workflow leased to a worker: what the worker needs to run it under `fence` (the
/// `Workers` service puts it on the wire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Task {
    /// The workflow's id.
    pub(crate) workflow: String,
    /// The fence the worker runs it under.
    pub(crate) fence: u64,
    /// Its kind.
    pub(crate) kind: String,
    /// Its input.
    pub(crate) input: Value,
    /// Its journal when the fence was granted.
    pub(crate) journal: Vec<JournalEntry>,
}

impl Task {
    /// The task of running `workflow` (id `id`) under `fence`.
    pub(crate) fn new(id: &str, fence: u64, workflow: &Workflow) -> Self {
        Self {
            workflow: id.to_owned(),
            fence,
            kind: workflow.kind.clone(),
            input: workflow.input.clone(),
            journal: workflow.journal.clone(),
        }
    }
}

/// A connected worker.
#[derive(Debug)]
struct WorkerSlot {
    connection: u64,
    /// Kinds it runs, with their version markers.
    kinds: BTreeMap<String, String>,
    tasks: mpsc::Sender<Task>,
    last_seen: Instant,
}

/// A workflow leased to a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lease {
    /// The worker.
    pub(crate) worker: u64,
    /// The fence the worker runs it under.
    pub(crate) fence: u64,
}

#[derive(Debug, Default)]
struct Table {
    /// The term this node leads in; 0 when it does not (no sessions are accepted).
    term: u64,
    workers: HashMap<u64, WorkerSlot>,
    leases: HashMap<String, Lease>,
}

/// The leader's worker table; shared by the `Workers` service and the engine.
#[derive(Debug, Default)]
pub struct Dispatcher {
    table: Mutex<Table>,
    wake: Notify,
    next_connection: AtomicU64,
}

impl Dispatcher {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().expect("dispatcher lock poisoned")
    }

    /// Registers worker `worker` (replacing an older session of the same id); tasks go to
    /// `tasks`. Returns the session's connection number.
    ///
    /// # Errors
    /// `None` when this node does not lead (the caller answers "not leader").
    pub(crate) fn connect(
        &self,
        worker: u64,
        kinds: BTreeMap<String, String>,
        tasks: mpsc::Sender<Task>,
    ) -> Option<u64> {
        let connection = self.next_connection.fetch_add(1, Ordering::Relaxed) + 1;
        let mut table = self.table();
        if table.term == 0 {
            return None;
        }
        // A reconnecting worker stopped its runs when its old session ended.
        table.leases.retain(|_, lease| lease.worker != worker);
        table.workers.insert(
            worker,
            WorkerSlot {
                connection,
                kinds,
                tasks,
                last_seen: Instant::now(),
            },
        );
        drop(table);
        self.wake.notify_one();
        Some(connection)
    }

    /// Renews worker `worker`'s lease.
    pub(crate) fn heartbeat(&self, worker: u64, connection: u64) {
        if let Some(slot) = self.table().workers.get_mut(&worker)
            && slot.connection == connection
        {
            slot.last_seen = Instant::now();
        }
    }

    /// Ends session `connection` of worker `worker`: its workflows are leased anew.
    pub(crate) fn disconnect(&self, worker: u64, connection: u64) {
        let mut table = self.table();
        if table
            .workers
            .get(&worker)
            .is_some_and(|slot| slot.connection == connection)
        {
            table.workers.remove(&worker);
            table.leases.retain(|_, lease| lease.worker != worker);
            drop(table);
            self.wake.notify_one();
        }
    }

    /// Serves term `term` (0: stops serving, ending every session).
    pub(crate) fn set_term(&self, term: u64) {
        let mut table = self.table();
        if table.term != term {
            table.term = term;
            table.workers.clear();
            table.leases.clear();
        }
    }

    /// Whether this node leads (and accepts sessions).
    pub(crate) fn leading(&self) -> bool {
        self.table().term != 0
    }

    /// Notified when a worker connects or leaves.
    pub(crate) fn woken(&self) -> &Notify {
        &self.wake
    }

    /// Drops workers whose last heartbeat is older than `lease`.
    pub(crate) fn expire(&self, lease: Duration) {
        let mut table = self.table();
        let before = table.workers.len();
        table
            .workers
            .retain(|_, slot| slot.last_seen.elapsed() <= lease);
        let Table {
            workers, leases, ..
        } = &mut *table;
        leases.retain(|_, lease| workers.contains_key(&lease.worker));
        if table.workers.len() != before {
            tracing::info!(
                expired = before - table.workers.len(),
                "worker leases expired; their workflows are leased again"
            );
        }
    }

    /// Whether `workflow` is leased under `fence` to a connected worker.
    pub(crate) fn leased(&self, workflow: &str, fence: u64) -> bool {
        let table = self.table();
        table
            .leases
            .get(workflow)
            .is_some_and(|lease| lease.fence == fence && table.workers.contains_key(&lease.worker))
    }

    /// Whether connected worker `worker` holds the lease of `workflow` under `fence`.
    pub(crate) fn holds(&self, worker: u64, workflow: &str, fence: u64) -> bool {
        let table = self.table();
        table.workers.contains_key(&worker)
            && table.leases.get(workflow) == Some(&Lease { worker, fence })
    }

    /// Whether any connected worker runs `kind` at `version`.
    pub(crate) fn can_run(&self, kind: &str, version: &str) -> bool {
        self.table()
            .workers
            .values()
            .any(|slot| slot.kinds.get(kind).is_some_and(|v| v == version))
    }

    /// The connected worker running `kind` at `version` with the fewest leases.
    pub(crate) fn pick(&self, kind: &str, version: &str) -> Option<u64> {
        let table = self.table();
        table
            .workers
            .iter()
            .filter(|(_, slot)| slot.kinds.get(kind).is_some_and(|v| v == version))
            .min_by_key(|(id, _)| table.leases.values().filter(|l| l.worker == **id).count())
            .map(|(id, _)| *id)
    }

    /// Leases `task` to `worker`; false if the worker is gone or its queue is full.
    pub(crate) fn lease(&self, worker: u64, task: Task) -> bool {
        let mut table = self.table();
        let Some(slot) = table.workers.get(&worker) else {
            return false;
        };
        let workflow = task.workflow.clone();
        let fence = task.fence;
        if slot.tasks.try_send(task).is_err() {
            return false;
        }
        table.leases.insert(workflow, Lease { worker, fence });
        true
    }

    /// Forgets the lease of `workflow` under `fence` (its task could not be sent), so it is
    /// leased again.
    pub(crate) fn release(&self, workflow: &str, fence: u64) {
        let mut table = self.table();
        if table
            .leases
            .get(workflow)
            .is_some_and(|lease| lease.fence == fence)
        {
            table.leases.remove(workflow);
        }
    }

    /// Forgets leases of workflows `keep` rejects (finished, or claimed by someone else).
    pub(crate) fn retain_leases(&self, mut keep: impl FnMut(&str, Lease) -> bool) {
        self.table()
            .leases
            .retain(|workflow, lease| keep(workflow, *lease));
    }

    /// Connected workers.
    pub fn workers(&self) -> usize {
        self.table().workers.len()
    }
}
