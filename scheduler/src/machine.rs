//! The scheduler as keel-raft's extension [`Application`]: decodes commands, applies them
//! to the [`SchedulerState`], and hands the effects to this node's listeners.
//!
//! Besides the replicated state it keeps node-local facts that are never replicated: when
//! this node applied each relative timer (by its monotonic clock, for the never-early rule),
//! who waits on which workflow, and where to send runnable workflows and timer fires.
//!
//! The snapshot's bytes (framing, format 2 migration, the checks on restore) are in
//! `snapshot`.

mod snapshot;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_raft::application::{Application, AppliedAt, SnapshotImage};
use keel_raft::cluster_identity::CommittedIdentity;
use keel_raft::values::{ValueError, ValueRef, ValueStore};
use tokio::sync::{Notify, broadcast, mpsc, watch};

pub use self::snapshot::SnapshotError;
use self::snapshot::{decode_snapshot, write_snapshot};
use crate::command::{self, Answer, Command, EntryState, Outcome, Rejection, StoredOutcome, Value};
use crate::state::JournalEntry;
use crate::state::{Effect, FireRecord, SchedulerState};

/// Test access to the snapshot codec, for tests that corrupt a decoded state on purpose.
#[cfg(test)]
pub(crate) use self::snapshot::codec;

/// A run's fence is no longer current, or its workflow finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superseded;

/// A run the engine may start: granted by a command of `term` to `owner` (`None`: the
/// leader of that term).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runnable {
    /// The workflow.
    pub workflow: String,
    /// The fence granted.
    pub fence: u64,
    /// The granting command's term.
    pub term: u64,
    /// Who the fence was granted to.
    pub owner: Option<crate::command::Owner>,
}

/// A named timer's fire, as delivered to watchers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedFire {
    /// The timer's name.
    pub name: String,
    /// Its payload.
    pub payload: Vec<u8>,
    /// The fire's record (its token is `(term, index)`).
    pub record: FireRecord,
}

/// Fires buffered per watcher before a slow one misses some.
const FIRE_WATCH_BUFFER: usize = 16 * 1024;

/// When this node started waiting for a relative timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Armed {
    /// Since this node applied it.
    Applied(Instant),
    /// Since this node restarted (or restored a snapshot) with it pending: the wait is
    /// capped at due time plus the allowed clock skew.
    Restarted(Instant),
}

#[derive(Debug)]
struct Local {
    armed: HashMap<u64, Instant>,
    /// When the state was last loaded from a snapshot (or the node started).
    restarted: Instant,
    /// The wall clock when this process started: a relative timer stamped before it is
    /// being replayed after a restart.
    started_ms: u64,
    waiters: HashMap<String, Arc<Notify>>,
    runnable: Option<mpsc::UnboundedSender<Runnable>>,
}

impl Local {
    /// Starts this node's wait for relative timer `id`: from the proposer's reading when
    /// this process took it (never later than now), so the commit does not delay the timer;
    /// from now when it was proposed elsewhere since this process started; from the restart
    /// (capped, see `Armed::Restarted`) when it is a replay of older history.
    fn arm(&mut self, id: u64, proposed: Option<crate::mono::MonoStamp>, stamp_ms: u64) {
        let armed = match proposed.and_then(crate::mono::instant) {
            Some(at) => Some(at),
            None if stamp_ms >= self.started_ms => Some(crate::mono::instant_now()),
            None => None,
        };
        if let Some(at) = armed {
            self.armed.insert(id, at);
        }
    }
}

#[derive(Debug)]
struct Shared {
    state: RwLock<SchedulerState>,
    digest: Mutex<u64>,
    local: Mutex<Local>,
    timers_changed: Notify,
    /// Bumped when something a remote-call driver delivers changed.
    remote_changed: watch::Sender<u64>,
    fires: broadcast::Sender<NamedFire>,
    /// The node's value store, once the node started.
    values: OnceLock<Arc<ValueStore>>,
}

/// The scheduler state machine; clones share one state (give one to keel-raft, keep one to
/// read from and listen to).
#[derive(Debug, Clone)]
pub struct SchedulerMachine {
    shared: Arc<Shared>,
}

impl Default for SchedulerMachine {
    fn default() -> Self {
        Self::new()
    }
}

/// The scheduler commands this build applies (`Status.application_protocol`): 1 — calls
/// between clusters (the remote commands, `RemoteEnabled`) and identity replacements. A
/// leader proposes no remote call until every member reports it (`scheduler/REMOTE.md` §16).
pub const APPLICATION_PROTOCOL: u32 = 1;

fn mix(digest: u64, command: &[u8], answer: &[u8]) -> u64 {
    let crc = u64::from(crc32c::crc32c(command)) << 32 | u64::from(crc32c::crc32c(answer));
    (digest.rotate_left(17) ^ crc).wrapping_mul(0xFF51_AFD7_ED55_8CCD)
}

impl SchedulerMachine {
    /// An empty scheduler.
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                state: RwLock::new(SchedulerState::default()),
                digest: Mutex::new(0),
                local: Mutex::new(Local {
                    armed: HashMap::new(),
                    restarted: crate::mono::instant_now(),
                    started_ms: keel_raft::clock::now_ms(),
                    waiters: HashMap::new(),
                    runnable: None,
                }),
                timers_changed: Notify::new(),
                remote_changed: watch::channel(0).0,
                fires: broadcast::channel(FIRE_WATCH_BUFFER).0,
                values: OnceLock::new(),
            }),
        }
    }

    /// Reads the state.
    ///
    /// # Panics
    /// If an apply panicked while holding the lock (the node is broken then).
    pub fn read(&self) -> RwLockReadGuard<'_, SchedulerState> {
        self.shared
            .state
            .read()
            .expect("scheduler state lock poisoned: an apply panicked")
    }

    fn local(&self) -> MutexGuard<'_, Local> {
        self.shared
            .local
            .lock()
            .expect("scheduler local lock poisoned")
    }

    /// Reads the values the state holds by reference from `values` (the node's store; set
    /// once, when the node has started).
    pub fn set_values(&self, values: Arc<ValueStore>) {
        // A second node over the same machine would be a bug; the first store stays.
        let _ = self.shared.values.set(values);
    }

    /// The bytes of `value`: a reference read through the node's value store, copied (a
    /// view into the log's mapping would keep its segment on disk for as long as the bytes
    /// live: a run holds its input for days).
    ///
    /// # Errors
    /// The store's errors; [`ValueError::Missing`] before the node started.
    pub fn value(&self, value: &Value) -> Result<Bytes, ValueError> {
        match value {
            Value::Inline(bytes) => Ok(Bytes::copy_from_slice(bytes)),
            Value::Recorded(at) => match self.shared.values.get() {
                Some(values) => Ok(Bytes::copy_from_slice(&values.read(at)?)),
                None => Err(ValueError::Missing { at: *at }),
            },
        }
    }

    /// `outcome` with its value read (see [`SchedulerMachine::value`]).
    ///
    /// # Errors
    /// As [`SchedulerMachine::value`].
    pub fn outcome(&self, outcome: &StoredOutcome) -> Result<Outcome, ValueError> {
        Ok(match outcome {
            StoredOutcome::Ok(value) => Outcome::Ok(self.value(value)?.to_vec()),
            StoredOutcome::Err(message) => {
                Outcome::Err(String::from_utf8_lossy(&self.value(message)?).into_owned())
            }
        })
    }

    /// `value` with its bytes in it, for a reader without the value store (a remote worker).
    ///
    /// # Errors
    /// As [`SchedulerMachine::value`].
    pub fn inlined(&self, value: &Value) -> Result<Value, ValueError> {
        Ok(Value::Inline(self.value(value)?.to_vec()))
    }

    /// `outcome` with its bytes in it (see [`SchedulerMachine::inlined`]).
    ///
    /// # Errors
    /// As [`SchedulerMachine::value`].
    pub fn inlined_outcome(&self, outcome: &StoredOutcome) -> Result<StoredOutcome, ValueError> {
        Ok(match outcome {
            StoredOutcome::Ok(value) => StoredOutcome::Ok(self.inlined(value)?),
            StoredOutcome::Err(message) => StoredOutcome::Err(self.inlined(message)?),
        })
    }

    /// `state` with its bytes in it (see [`SchedulerMachine::inlined`]).
    ///
    /// # Errors
    /// As [`SchedulerMachine::value`].
    pub fn inlined_state(&self, state: &EntryState) -> Result<EntryState, ValueError> {
        Ok(match state {
            EntryState::Done(outcome) => EntryState::Done(self.inlined_outcome(outcome)?),
            other => other.clone(),
        })
    }

    /// `journal` with its bytes in it (see [`SchedulerMachine::inlined`]).
    ///
    /// # Errors
    /// As [`SchedulerMachine::value`].
    pub fn inlined_journal(
        &self,
        journal: &[JournalEntry],
    ) -> Result<Vec<JournalEntry>, ValueError> {
        journal
            .iter()
            .map(|entry| {
                Ok(JournalEntry {
                    state: self.inlined_state(&entry.state)?,
                    ..entry.clone()
                })
            })
            .collect()
    }

    /// `answer` with its bytes in it (see [`SchedulerMachine::inlined`]).
    ///
    /// # Errors
    /// As [`SchedulerMachine::value`].
    pub fn inlined_answer(&self, answer: Answer) -> Result<Answer, ValueError> {
        Ok(match answer {
            Answer::Entry(state) => Answer::Entry(self.inlined_state(&state)?),
            Answer::Rejected(Rejection::AlreadyRecorded { seq, outcome }) => {
                Answer::Rejected(Rejection::AlreadyRecorded {
                    seq,
                    outcome: self.inlined_outcome(&outcome)?,
                })
            }
            other => other,
        })
    }

    /// Sends every runnable workflow to `sender` from now on.
    pub fn set_runnable_sender(&self, sender: mpsc::UnboundedSender<Runnable>) {
        self.local().runnable = Some(sender);
    }

    /// The notifier of changes to `workflow` (an entry resolved, a claim, its end).
    pub fn waiter(&self, workflow: &str) -> Arc<Notify> {
        let waiter = Arc::clone(self.local().waiters.entry(workflow.to_owned()).or_default());
        // Its end may have been applied before the waiter was registered: forget it then,
        // as the end would have.
        let ended = self
            .read()
            .workflow(workflow)
            .is_none_or(|w| w.is_finished());
        if ended {
            self.local().waiters.remove(workflow);
        }
        waiter
    }

    /// Where journal entry `seq` of the run of `workflow` under `fence` stands:
    /// `Some(state)` once resolved, `None` while pending.
    ///
    /// # Errors
    /// [`Superseded`] when the fence is no longer current, the workflow finished, or the
    /// entry does not exist (a run waits only on entries it journaled).
    pub fn entry(
        &self,
        workflow: &str,
        fence: u64,
        seq: u32,
    ) -> Result<Option<EntryState>, Superseded> {
        let state = self.read();
        let current = state
            .workflow(workflow)
            .filter(|w| !w.is_finished() && w.fence == fence)
            .ok_or(Superseded)?;
        let entry = current.journal.get(seq as usize).ok_or(Superseded)?;
        Ok((!matches!(entry.state, EntryState::Pending { .. })).then(|| entry.state.clone()))
    }

    /// Waits until [`SchedulerMachine::entry`] is resolved, at most `timeout` (`None`: no
    /// limit); `Ok(None)` when the time ran out.
    ///
    /// # Errors
    /// [`Superseded`] as [`SchedulerMachine::entry`].
    pub async fn wait_entry(
        &self,
        workflow: &str,
        fence: u64,
        seq: u32,
        timeout: Option<Duration>,
    ) -> Result<Option<EntryState>, Superseded> {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let waiter = self.waiter(workflow);
        loop {
            let notified = waiter.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(state) = self.entry(workflow, fence, seq)? {
                return Ok(Some(state));
            }
            match deadline {
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return Ok(None);
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Notified whenever the timer queue changes.
    pub fn timers_changed(&self) -> &Notify {
        &self.shared.timers_changed
    }

    /// Changes whenever something a remote-call driver delivers changed (an outbox item, a
    /// binding, an inbound completion).
    pub fn watch_remote(&self) -> watch::Receiver<u64> {
        self.shared.remote_changed.subscribe()
    }

    /// Waits until `command` may be proposed: a remote call only once calls between
    /// clusters are enabled (a build that does not apply it may still be a member, §16 of
    /// `scheduler/REMOTE.md`); any other at once.
    pub async fn proposable(&self, command: &Command) {
        if matches!(command, Command::RemoteCall { .. }) {
            self.remote_calls_enabled().await;
        }
    }

    /// Waits until calls between clusters are enabled (`RemoteEnabled` applied here).
    pub async fn remote_calls_enabled(&self) {
        let mut changed = self.watch_remote();
        loop {
            changed.borrow_and_update();
            if self.read().remote().enabled() {
                return;
            }
            if changed.changed().await.is_err() {
                return;
            }
        }
    }

    /// Named timer fires applied from now on.
    pub fn watch_fires(&self) -> broadcast::Receiver<NamedFire> {
        self.shared.fires.subscribe()
    }

    /// Sabotage (`unfenced-fires`): delivers the named timers among `ids` to watchers now,
    /// before any fire committed, with a token that never commits (`index` 0).
    #[cfg(feature = "sabotage")]
    pub fn deliver_unfenced(&self, term: u64, ids: &[u64]) {
        let state = self.read();
        for &id in ids {
            let Some(timer) = state.timers().get(id) else {
                continue;
            };
            if let crate::state::TimerTarget::Named { name, payload } = &timer.target {
                let _ = self.shared.fires.send(NamedFire {
                    name: name.clone(),
                    payload: payload.clone(),
                    record: FireRecord {
                        id,
                        term,
                        index: 0,
                        due_ms: timer.due_ms,
                        fired_ms: keel_raft::clock::now_ms(),
                    },
                });
            }
        }
    }

    /// Since when this node waits for relative timer `id`.
    pub fn armed(&self, id: u64) -> Armed {
        let local = self.local();
        local
            .armed
            .get(&id)
            .map_or(Armed::Restarted(local.restarted), |&at| Armed::Applied(at))
    }

    fn dispatch(&self, effects: Vec<Effect>) {
        let mut timers_changed = false;
        let mut remote_changed = false;
        let mut local = self.local();
        for effect in effects {
            match effect {
                Effect::Runnable {
                    workflow,
                    fence,
                    term,
                    owner,
                } => {
                    if let Some(sender) = &local.runnable {
                        // A closed receiver means the engine stopped: nothing to run.
                        let _ = sender.send(Runnable {
                            workflow,
                            fence,
                            term,
                            owner,
                        });
                    }
                }
                Effect::Changed { workflow } => {
                    if let Some(waiter) = local.waiters.get(&workflow) {
                        waiter.notify_waiters();
                    }
                }
                Effect::Finished { workflow } => {
                    if let Some(waiter) = local.waiters.remove(&workflow) {
                        waiter.notify_waiters();
                    }
                }
                Effect::TimerAdded {
                    id,
                    relative,
                    proposed,
                    stamp_ms,
                } => {
                    if relative {
                        local.arm(id, proposed, stamp_ms);
                    }
                    timers_changed = true;
                }
                Effect::TimerRemoved { id } => {
                    local.armed.remove(&id);
                    timers_changed = true;
                }
                Effect::RemoteChanged => remote_changed = true,
                Effect::NamedFired {
                    name,
                    payload,
                    record,
                } => {
                    // No watcher is fine: the fire is recorded in the state.
                    let _ = self.shared.fires.send(NamedFire {
                        name,
                        payload,
                        record,
                    });
                }
            }
        }
        drop(local);
        if timers_changed {
            self.shared.timers_changed.notify_one();
        }
        if remote_changed {
            self.shared
                .remote_changed
                .send_modify(|version| *version += 1);
        }
    }
}

impl Application for SchedulerMachine {
    fn apply(&mut self, at: AppliedAt, command: &Bytes) -> Bytes {
        let mut effects = Vec::new();
        let answer = match command::decode_recorded(command, at.index) {
            Ok((stamped, recorded)) => self
                .shared
                .state
                .write()
                .expect("scheduler state lock poisoned")
                .apply_recorded(at, stamped, recorded, &mut effects),
            Err(rejection) => Answer::Rejected(rejection),
        };
        let answer = command::encode(&answer);
        {
            let mut digest = self.shared.digest.lock().expect("digest lock poisoned");
            *digest = mix(*digest, command, &answer);
        }
        self.dispatch(effects);
        Bytes::from(answer)
    }

    fn snapshot_image(&self) -> Box<dyn SnapshotImage> {
        // A clone: running workflows whole, finished ones as their packed bytes.
        Box::new(SchedulerImage {
            state: self.read().clone(),
            digest: self.digest(),
        })
    }

    fn check_snapshot(&self, input: &mut dyn Read, applied_index: u64) -> io::Result<()> {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes)?;
        let state = decode_snapshot(&bytes)?.state.applied_index();
        if state > applied_index {
            return Err(SnapshotError::AppliedPastSnapshot {
                state,
                snapshot: applied_index,
            }
            .into());
        }
        Ok(())
    }

    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()> {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes)?;
        let body = decode_snapshot(&bytes)?;
        *self
            .shared
            .state
            .write()
            .expect("scheduler state lock poisoned") = body.state;
        *self.shared.digest.lock().expect("digest lock poisoned") = body.digest;
        {
            let mut local = self.local();
            local.armed.clear();
            local.restarted = crate::mono::instant_now();
            for waiter in local.waiters.values() {
                waiter.notify_waiters();
            }
        }
        self.shared.timers_changed.notify_one();
        // What waits on the remote state (drivers, the gate's waiters) looks again.
        self.shared
            .remote_changed
            .send_modify(|version| *version += 1);
        Ok(())
    }

    fn digest(&self) -> u64 {
        *self.shared.digest.lock().expect("digest lock poisoned")
    }

    fn protocol(&self) -> u32 {
        APPLICATION_PROTOCOL
    }

    fn identity_replaced(&mut self, at: AppliedAt, identity: &CommittedIdentity, stamp_ms: u64) {
        let mut effects = Vec::new();
        self.shared
            .state
            .write()
            .expect("scheduler state lock poisoned")
            .identity_replaced(at, stamp_ms, &mut effects);
        {
            let mut digest = self.shared.digest.lock().expect("digest lock poisoned");
            *digest = mix(
                *digest,
                identity.identity.to_string().as_bytes(),
                &at.index.to_le_bytes(),
            );
        }
        self.dispatch(effects);
    }
}

/// The scheduler's state and digest, copied for a snapshot.
struct SchedulerImage {
    state: SchedulerState,
    digest: u64,
}

impl SnapshotImage for SchedulerImage {
    fn live_values(&self) -> Vec<ValueRef> {
        self.state.recorded_values()
    }

    fn write(self: Box<Self>, out: &mut dyn Write) -> io::Result<()> {
        write_snapshot(out, self.state, self.digest)
    }
}
