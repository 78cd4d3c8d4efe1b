//! The execution engine of one node: while the node leads, it runs workflows (memoized
//! re-runs under fences), drives timers and expires finished workflows and timer fire records.
//!
//! Leadership is the lease of the embedded executor. When the node becomes leader of term
//! `t` it waits until it has applied everything committed before its term, declares its
//! workflow kinds, and claims every running workflow it can run (a new fence for each, so a
//! deposed leader's runs are refused). From then on it starts a run for each fence granted
//! by a command of term `t` (new workflows, child calls, its own claims). When it stops
//! leading, every run is aborted. A workflow whose code no longer matches its journal is
//! parked by its run; the takeover's claims retry parked workflows, so the next leader (or
//! the next launch of an embedded node) with fixed code resumes them.

pub mod context;
pub mod dispatch;
pub mod error;
pub(crate) mod journal;
mod positions;
pub mod proposer;
pub mod registry;
pub(crate) mod run;
pub(crate) mod timer_driver;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use keel_raft::node::NodeShared;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinHandle};

use self::dispatch::{Dispatcher, Task};
use self::error::WorkflowError;
use self::journal::{JournalPort, LocalJournal};
use self::proposer::Proposer;
use self::registry::{Kind, Registry};

use crate::command::{Answer, Command, Owner};
use crate::machine::{Runnable, SchedulerMachine};

/// How the engine behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineSettings {
    /// How far nodes' wall clocks may disagree: an absolute timer may fire this early, and
    /// a relative timer pending across a restart waits at most this long past due.
    pub max_clock_skew: Duration,
    /// How long finished workflows and timer fires are kept.
    pub retention: Duration,
    /// How often the leader expires finished workflows and timer fire records.
    pub expire_every: Duration,
    /// How long a remote worker's lease lasts without a heartbeat.
    pub worker_lease: Duration,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            max_clock_skew: Duration::from_millis(500),
            retention: Duration::from_secs(7 * 24 * 3600),
            expire_every: Duration::from_secs(60),
            worker_lease: Duration::from_secs(3),
        }
    }
}

/// How often the leader looks for workflows of its own that lost their run.
const RECONCILE_EVERY: Duration = Duration::from_secs(2);
/// How often the leader looks for workflows to lease to remote workers.
const DISPATCH_EVERY: Duration = Duration::from_millis(250);
/// Claims proposed at once when a node takes over.
const CLAIMS_IN_FLIGHT: usize = 64;
/// Pause between attempts to catch up when taking over.
const TAKEOVER_RETRY_PAUSE: Duration = Duration::from_millis(100);

#[derive(Debug)]
struct RunSlot {
    fence: u64,
    abort: AbortHandle,
}

struct Inner {
    shared: NodeShared,
    machine: SchedulerMachine,
    proposer: Proposer,
    journal: Arc<dyn JournalPort>,
    registry: Registry,
    settings: EngineSettings,
    dispatcher: Arc<Dispatcher>,
    /// The term this node leads and runs workflows in; 0 when it does not.
    active: watch::Sender<u64>,
    runs: Mutex<HashMap<String, RunSlot>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("node", &self.shared.node_id)
            .field("active", &*self.active.borrow())
            .finish_non_exhaustive()
    }
}

/// A task aborted when dropped.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub(crate) JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A node's execution engine; stops its tasks when dropped.
#[derive(Debug)]
pub struct Engine {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.inner.abort_runs();
    }
}

impl Engine {
    /// Starts the engine of the node `shared`, whose scheduler state is `machine`; it runs
    /// the kinds of `registry` itself and leases others to the workers of `dispatcher`.
    pub fn start(
        shared: NodeShared,
        machine: SchedulerMachine,
        registry: Registry,
        settings: EngineSettings,
        dispatcher: Arc<Dispatcher>,
    ) -> Self {
        let proposer = Proposer::new(shared.clone());
        let journal: Arc<dyn JournalPort> = Arc::new(LocalJournal {
            proposer: proposer.clone(),
            machine: machine.clone(),
        });
        let (runnable_tx, runnable_rx) = mpsc::unbounded_channel();
        machine.set_runnable_sender(runnable_tx);
        let inner = Arc::new(Inner {
            shared,
            machine,
            proposer,
            journal,
            registry,
            settings,
            dispatcher,
            active: watch::channel(0).0,
            runs: Mutex::new(HashMap::new()),
        });
        let tasks = vec![
            tokio::spawn(Arc::clone(&inner).follow_leadership()),
            tokio::spawn(Arc::clone(&inner).start_runnable(runnable_rx)),
            tokio::spawn(timer_driver::run(
                inner.machine.clone(),
                inner.proposer.clone(),
                inner.active.subscribe(),
                inner.settings.max_clock_skew,
            )),
            tokio::spawn(Arc::clone(&inner).expire()),
            tokio::spawn(Arc::clone(&inner).dispatch()),
        ];
        Self { inner, tasks }
    }

    /// `(kind, version)` of every kind this engine runs itself.
    pub fn declarations(&self) -> Vec<(String, String)> {
        self.inner.registry.declarations()
    }

    /// Follows the term this node runs workflows in (0: it does not lead, or is taking
    /// over): it leads, and has applied everything committed before its term.
    pub fn watch_active(&self) -> watch::Receiver<u64> {
        self.inner.active.subscribe()
    }

    /// The term this node runs workflows in (`None`: it does not lead, or is taking over).
    pub fn active_term(&self) -> Option<u64> {
        let term = *self.inner.active.borrow();
        (term != 0).then_some(term)
    }
}

impl Inner {
    fn runs(&self) -> MutexGuard<'_, HashMap<String, RunSlot>> {
        self.runs.lock().expect("run table lock poisoned")
    }

    fn abort_runs(&self) {
        for (_, slot) in self.runs().drain() {
            slot.abort.abort();
        }
    }

    fn active_term(&self) -> u64 {
        *self.active.borrow()
    }

    async fn follow_leadership(self: Arc<Self>) {
        let mut watch = self.shared.leader_watch();
        let mut leading = None;
        // Aborted when replaced, and when this task ends or is aborted.
        let mut takeover: Option<AbortOnDrop> = None;
        loop {
            let now = watch.leading();
            if now != leading {
                drop(takeover.take());
                self.active.send_replace(0);
                self.abort_runs();
                if let Some(term) = now {
                    let task = tokio::spawn(Arc::clone(&self).take_over(term));
                    takeover.get_or_insert(AbortOnDrop(task));
                }
                leading = now;
            }
            if !watch.changed().await {
                self.active.send_replace(0);
                self.abort_runs();
                return;
            }
        }
    }

    /// The running workflows this node can run and does not run under their current fence.
    fn claimable(&self) -> Vec<String> {
        #[cfg(feature = "sabotage")]
        if keel_raft::sabotage::on(keel_raft::sabotage::Fault::NoTakeover) {
            return Vec::new();
        }
        let state = self.machine.read();
        let runs = self.runs();
        state
            .running_workflows()
            .filter(|(id, w)| {
                self.registry
                    .get(&w.kind)
                    .is_some_and(|kind| kind.version == w.version)
                    && runs.get(*id).is_none_or(|slot| slot.fence < w.fence)
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Becomes the executor of term `term`: catches up, declares kinds, claims the
    /// running workflows it can run.
    async fn take_over(self: Arc<Self>, term: u64) {
        while let Err(status) = self.proposer.service().linearize().await {
            tracing::debug!(
                term,
                error = status.message(),
                "catching up before running workflows"
            );
            tokio::time::sleep(TAKEOVER_RETRY_PAUSE).await;
        }
        self.active.send_replace(term);
        if !self.registry.is_empty() {
            let declared = self.registry.declarations();
            let known = {
                let state = self.machine.read();
                declared
                    .iter()
                    .all(|(kind, version)| state.kinds().get(kind) == Some(version))
            };
            if !known
                && let Err(error) = self
                    .journal
                    .propose(Command::DeclareKinds { kinds: declared })
                    .await
            {
                tracing::warn!(%error, "declaring workflow kinds");
            }
        }
        let claimable = self.claimable();
        tracing::info!(
            term,
            workflows = claimable.len(),
            "running workflows as leader"
        );
        let owner = Owner::Leader {
            node: self.shared.node_id,
            term,
        };
        futures::stream::iter(claimable)
            .for_each_concurrent(CLAIMS_IN_FLIGHT, |workflow| {
                let journal = Arc::clone(&self.journal);
                async move {
                    if let Err(error) = journal
                        .propose(Command::Claim {
                            workflow: workflow.clone(),
                            owner,
                        })
                        .await
                    {
                        tracing::debug!(%workflow, %error, "claim refused");
                    }
                }
            })
            .await;
    }

    async fn start_runnable(self: Arc<Self>, mut runnable: mpsc::UnboundedReceiver<Runnable>) {
        while let Some(Runnable {
            workflow,
            fence,
            term,
            owner,
        }) = runnable.recv().await
        {
            if term != self.active_term() || !self.owns(owner) {
                continue;
            }
            if self.local_kind(&workflow).is_some() {
                Arc::clone(&self).spawn_run(workflow, fence);
            } else {
                self.dispatcher.woken().notify_one();
            }
        }
    }

    fn spawn_run(self: Arc<Self>, workflow: String, fence: u64) {
        let mut runs = self.runs();
        if let Some(slot) = runs.get(&workflow) {
            if slot.fence >= fence {
                return;
            }
            slot.abort.abort();
        }
        let task = tokio::spawn(Arc::clone(&self).run(workflow.clone(), fence));
        runs.insert(
            workflow,
            RunSlot {
                fence,
                abort: task.abort_handle(),
            },
        );
    }

    /// Runs `workflow` under `fence` until it finishes or the run is superseded.
    async fn run(self: Arc<Self>, workflow: String, fence: u64) {
        if let Some(kind) = self.local_kind(&workflow) {
            let load = || async {
                let (input, journal) = {
                    let state = self.machine.read();
                    let current = state
                        .workflow(&workflow)
                        .filter(|w| !w.is_finished() && w.fence == fence)
                        .ok_or(WorkflowError::Superseded)?;
                    (current.input.clone(), current.journal.clone())
                };
                let input = self
                    .machine
                    .value(&input)
                    .map_err(|error| WorkflowError::Journal(error.to_string()))?;
                Ok((input, journal))
            };
            run::run_to_end(&kind, &self.journal, &workflow, fence, load).await;
        }
        let mut runs = self.runs();
        if runs.get(&workflow).is_some_and(|slot| slot.fence == fence) {
            runs.remove(&workflow);
        }
    }

    /// Whether a fence granted to `owner` (in this node's term) is this node's to run.
    fn owns(&self, owner: Option<Owner>) -> bool {
        match owner {
            None => true,
            Some(Owner::Leader { node, .. }) => node == self.shared.node_id,
            Some(Owner::Worker { .. }) => false,
        }
    }

    /// Starts a run for every workflow whose current fence is this node's (granted in its
    /// term) and that has none: a run that ended without finishing its workflow (its
    /// journal was unreachable for long, or it panicked) is started again. A parked
    /// workflow is not: it waits for the next takeover's claim.
    fn reconcile(self: &Arc<Self>, term: u64) {
        let orphans: Vec<(String, u64)> = {
            let state = self.machine.read();
            let runs = self.runs();
            state
                .running_workflows()
                .filter(|(id, w)| {
                    w.granted_term == term
                        && !w.is_parked()
                        && self.owns(w.owner)
                        && !runs.contains_key(*id)
                })
                .map(|(id, w)| (id.clone(), w.fence))
                .collect()
        };
        for (workflow, fence) in orphans {
            if self.local_kind(&workflow).is_some() {
                tracing::info!(%workflow, fence, "restarting a workflow run that ended early");
                Arc::clone(self).spawn_run(workflow, fence);
            }
        }
    }

    /// The registered kind of `workflow` if this node runs it (same code version).
    fn local_kind(&self, workflow: &str) -> Option<Kind> {
        let state = self.machine.read();
        let current = state.workflow(workflow)?;
        let kind = self.registry.get(&current.kind)?;
        if kind.version != current.version {
            tracing::warn!(%workflow, journaled = %current.version, registered = %kind.version, "workflow code version differs from the journal's; not running it here");
            return None;
        }
        Some(kind.clone())
    }

    /// Leases workflows of kinds this node does not run to remote workers, while leading.
    async fn dispatch(self: Arc<Self>) {
        let mut active = self.active.subscribe();
        let mut reconciled = tokio::time::Instant::now();
        loop {
            let term = *active.borrow_and_update();
            self.dispatcher.set_term(term);
            if term == 0 {
                if active.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let woken = self.dispatcher.woken().notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            self.dispatch_pass(term).await;
            if reconciled.elapsed() >= RECONCILE_EVERY {
                self.reconcile(term);
                reconciled = tokio::time::Instant::now();
            }
            tokio::select! {
                () = &mut woken => {}
                () = tokio::time::sleep(DISPATCH_EVERY) => {}
                _ = active.changed() => {}
            }
        }
    }

    /// Expires silent workers, then claims and leases every running workflow that some
    /// connected worker can run and none holds under its current fence.
    async fn dispatch_pass(&self, term: u64) {
        let dispatcher = &self.dispatcher;
        dispatcher.expire(self.settings.worker_lease);
        if dispatcher.workers() == 0 {
            return;
        }
        let todo: Vec<(String, String, String)> = {
            let state = self.machine.read();
            dispatcher.retain_leases(|workflow, lease| {
                state
                    .workflow(workflow)
                    .is_some_and(|w| !w.is_finished() && w.fence == lease.fence)
            });
            state
                .running_workflows()
                .filter(|(_, w)| {
                    !w.is_parked()
                        && self
                            .registry
                            .get(&w.kind)
                            .is_none_or(|kind| kind.version != w.version)
                })
                .filter(|(id, w)| {
                    !dispatcher.leased(id, w.fence) && dispatcher.can_run(&w.kind, &w.version)
                })
                .map(|(id, w)| (id.clone(), w.kind.clone(), w.version.clone()))
                .collect()
        };
        futures::stream::iter(todo)
            .for_each_concurrent(CLAIMS_IN_FLIGHT, |(workflow, kind, version)| async move {
                if self.active_term() != term {
                    return;
                }
                let Some(worker) = dispatcher.pick(&kind, &version) else {
                    return;
                };
                let claim = Command::Claim {
                    workflow: workflow.clone(),
                    owner: Owner::Worker { worker },
                };
                let Ok(Answer::Claimed { fence }) = self.journal.propose(claim).await else {
                    return;
                };
                let task = self.task(&workflow, fence);
                if let Some(task) = task
                    && dispatcher.lease(worker, task)
                {
                    tracing::debug!(%workflow, worker, fence, "leased to a worker");
                }
            })
            .await;
    }

    /// The task of `workflow` under `fence`, if that fence is current.
    fn task(&self, workflow: &str, fence: u64) -> Option<Task> {
        let state = self.machine.read();
        let current = state
            .workflow(workflow)
            .filter(|w| !w.is_finished() && w.fence == fence)?;
        Some(Task::new(workflow, fence, &current))
    }

    async fn expire(self: Arc<Self>) {
        let retention_ms = u64::try_from(self.settings.retention.as_millis()).unwrap_or(u64::MAX);
        loop {
            tokio::time::sleep(self.settings.expire_every).await;
            if self.active_term() == 0 {
                continue;
            }
            // Finished workflows and named timers' fire records both expire (a cluster that
            // runs only timers has fire records and no workflow).
            let cutoff_ms = keel_raft::clock::now_ms().saturating_sub(retention_ms);
            let due = self.machine.read().expiry_due(cutoff_ms);
            if due
                && let Err(status) = self
                    .proposer
                    .propose(Command::Expire { retention_ms }, None)
                    .await
            {
                tracing::debug!(error = status.message(), "expiry not committed");
            }
        }
    }
}
