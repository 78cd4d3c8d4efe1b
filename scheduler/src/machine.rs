//! The scheduler as keel-raft's extension [`Application`]: decodes commands, applies them
//! to the [`SchedulerState`], and hands the effects to this node's listeners.
//!
//! Besides the replicated state it keeps node-local facts that are never replicated: when
//! this node applied each relative timer (by its monotonic clock, for the never-early rule),
//! who waits on which workflow, and where to send runnable workflows and timer fires.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_raft::application::{Application, AppliedAt};
use rkyv::{Archive, Deserialize, Serialize};
use tokio::sync::{Notify, broadcast, mpsc};

use crate::command::{self, Answer, EntryState, Rejection, Stamped};
use crate::state::format2::StateV2;
use crate::state::{CronRefused, Effect, FireRecord, Inconsistency, SchedulerState};

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

#[derive(Debug)]
struct Shared {
    state: RwLock<SchedulerState>,
    digest: Mutex<u64>,
    local: Mutex<Local>,
    timers_changed: Notify,
    fires: broadcast::Sender<NamedFire>,
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

/// What a snapshot holds.
#[derive(Archive, Serialize, Deserialize, Debug)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
struct SnapshotBody {
    state: SchedulerState,
    digest: u64,
}

/// Format 2's body, read to migrate it.
#[derive(Archive, Serialize, Deserialize, Debug)]
struct SnapshotBodyV2 {
    state: StateV2,
    digest: u64,
}

/// The scheduler snapshot's first bytes; a CRC32C of the rkyv bytes follows them at the end.
/// Format 3 keeps each schedule's parsed cron spec and the state's last applied index.
const SNAPSHOT_MAGIC: &[u8; 8] = b"KEELSCH3";
/// Format 2 (each journal entry's fence; schedules without their parsed spec): migrated on
/// restore.
const SNAPSHOT_MAGIC_V2: &[u8; 8] = b"KEELSCH2";
/// Format 1 (no journal fences), written before any release; never read.
const SNAPSHOT_MAGIC_V1: &[u8; 8] = b"KEELSCH1";

/// Why a scheduler snapshot is refused (carried as the source of the `InvalidData`
/// [`io::Error`] that [`Application::restore`] returns; the node then refuses the install
/// or the start).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// Format 1, from a development build.
    #[error(
        "scheduler snapshot: format 1, from a development build without journal fences; \
         repair this node from its cluster (`keel repair`)"
    )]
    Format1,
    /// Not a scheduler snapshot this build reads.
    #[error("scheduler snapshot: not a scheduler snapshot")]
    NotScheduler,
    /// Too short to hold its checksum.
    #[error("scheduler snapshot: too short")]
    TooShort,
    /// The checksum does not match.
    #[error("scheduler snapshot: checksum mismatch")]
    Checksum,
    /// The archive does not validate.
    #[error("scheduler snapshot does not decode")]
    Decode,
    /// The state decodes but its cross-references are broken.
    #[error("scheduler snapshot is inconsistent: {0}")]
    Inconsistent(#[from] Inconsistency),
    /// A format 2 snapshot holds a schedule whose expression is refused now.
    #[error("scheduler snapshot of format 2 cannot be migrated: {0}")]
    Format2Cron(#[from] CronRefused),
    /// The state has applied commands past the index its snapshot was taken at.
    #[error(
        "scheduler snapshot's state applied index {state} but the snapshot was taken at {snapshot}"
    )]
    AppliedPastSnapshot {
        /// The state's applied index.
        state: u64,
        /// The snapshot's last applied index.
        snapshot: u64,
    },
}

impl From<SnapshotError> for io::Error {
    fn from(error: SnapshotError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, error)
    }
}

impl SnapshotError {
    /// The scheduler's reason inside a restore's error, if it is one.
    pub fn of(error: &io::Error) -> Option<&Self> {
        error.get_ref()?.downcast_ref()
    }
}

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
                    restarted: Instant::now(),
                    started_ms: keel_raft::clock::now_ms(),
                    waiters: HashMap::new(),
                    runnable: None,
                }),
                timers_changed: Notify::new(),
                fires: broadcast::channel(FIRE_WATCH_BUFFER).0,
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
            .is_none_or(crate::state::Workflow::is_finished);
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
                    // From the proposer's reading when this process took it (never later
                    // than now), so the commit does not delay the timer; from now when it
                    // was proposed elsewhere since this process started; from the restart
                    // (capped, see `Armed::Restarted`) when it is a replay of older history.
                    let armed = match proposed.and_then(crate::mono::instant) {
                        Some(at) => Some(at),
                        None if stamp_ms >= local.started_ms => Some(Instant::now()),
                        None => None,
                    };
                    if relative && let Some(at) = armed {
                        local.armed.insert(id, at);
                    }
                    timers_changed = true;
                }
                Effect::TimerRemoved { id } => {
                    local.armed.remove(&id);
                    timers_changed = true;
                }
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
    }
}

/// The body of a scheduler snapshot, checked: magic, checksum, archive (format 2 migrated),
/// consistency.
fn decode_snapshot(bytes: &[u8]) -> Result<SnapshotBody, SnapshotError> {
    if bytes.starts_with(SNAPSHOT_MAGIC_V1) {
        return Err(SnapshotError::Format1);
    }
    let (body, format2) = match bytes.strip_prefix(SNAPSHOT_MAGIC) {
        Some(body) => (body, false),
        None => (
            bytes
                .strip_prefix(SNAPSHOT_MAGIC_V2)
                .ok_or(SnapshotError::NotScheduler)?,
            true,
        ),
    };
    let (body, crc) = body
        .split_last_chunk::<4>()
        .ok_or(SnapshotError::TooShort)?;
    if crc32c::crc32c(body).to_le_bytes() != *crc {
        return Err(SnapshotError::Checksum);
    }
    let decode_failed = |_: Rejection| SnapshotError::Decode;
    let body = if format2 {
        let old = command::decode::<SnapshotBodyV2>(body).map_err(decode_failed)?;
        SnapshotBody {
            state: old.state.upgrade()?,
            digest: old.digest,
        }
    } else {
        command::decode::<SnapshotBody>(body).map_err(decode_failed)?
    };
    body.state.consistency()?;
    Ok(body)
}

/// A snapshot of `state` and `digest`, framed as [`Application::write_snapshot`] frames it.
fn encode_snapshot(state: SchedulerState, digest: u64) -> Vec<u8> {
    let bytes = command::encode(&SnapshotBody { state, digest });
    let mut out = Vec::with_capacity(SNAPSHOT_MAGIC.len() + bytes.len() + 4);
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&bytes);
    out.extend_from_slice(&crc32c::crc32c(&bytes).to_le_bytes());
    out
}

impl Application for SchedulerMachine {
    fn apply(&mut self, at: AppliedAt, command: &Bytes) -> Bytes {
        let mut effects = Vec::new();
        let answer = match command::decode::<Stamped>(command) {
            Ok(stamped) => self
                .shared
                .state
                .write()
                .expect("scheduler state lock poisoned")
                .apply(at, stamped, &mut effects),
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

    fn write_snapshot(&self, out: &mut dyn Write) -> io::Result<()> {
        let state = self.read().clone();
        out.write_all(&encode_snapshot(state, self.digest()))
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
            local.restarted = Instant::now();
            for waiter in local.waiters.values() {
                waiter.notify_waiters();
            }
        }
        self.shared.timers_changed.notify_one();
        Ok(())
    }

    fn digest(&self) -> u64 {
        *self.shared.digest.lock().expect("digest lock poisoned")
    }
}

/// Test access to the snapshot codec, for tests that corrupt a decoded state on purpose.
#[cfg(test)]
pub(crate) mod codec {
    use super::{SchedulerState, SnapshotError};

    /// The state and digest in a snapshot, checked as a restore checks them.
    pub(crate) fn decode(bytes: &[u8]) -> Result<(SchedulerState, u64), SnapshotError> {
        super::decode_snapshot(bytes).map(|body| (body.state, body.digest))
    }

    /// A snapshot of `state` with a valid checksum, whatever the state holds.
    pub(crate) fn encode(state: SchedulerState, digest: u64) -> Vec<u8> {
        super::encode_snapshot(state, digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, Due};

    /// Format 2 snapshots written by the build before format 3 (commit 650de1f) from: kinds
    /// declared, workflow `w` started at index 2 and asleep (timer 1), named timer `t` fired
    /// at index 5, named timer `u` pending (timer 3), and schedule `nightly` registered at
    /// 2026-01-01T00:00:00.004Z (timer 4) with `0 3 * * *` — or, in the second, `0 3 L * *`,
    /// which format 2 accepted.
    const FORMAT2: &[u8] = include_bytes!("../tests/fixtures/keelsch2.snap");
    const FORMAT2_CRON_L: &[u8] = include_bytes!("../tests/fixtures/keelsch2-cron-l.snap");
    const MIDNIGHT_MS: u64 = 1_767_225_600_000;

    fn apply(machine: &mut SchedulerMachine, index: u64, stamp_ms: u64, command: Command) {
        let stamped = Stamped {
            stamp_ms,
            mono: None,
            command,
        };
        machine.apply(
            AppliedAt { term: 3, index },
            &Bytes::from(command::encode(&stamped)),
        );
    }

    /// A snapshot is checked against the index it claims to be taken at: a state that holds
    /// facts from a later index (a fence granted after it, say) is refused.
    #[test]
    fn a_snapshot_whose_state_applied_past_its_index_is_refused_by_the_check() {
        let mut machine = SchedulerMachine::new();
        machine
            .restore(&mut &FORMAT2[..])
            .expect("a format 2 snapshot migrates");
        let applied = machine.read().applied_index();
        let mut bytes = Vec::new();
        machine.write_snapshot(&mut bytes).expect("snapshot");
        let checker = SchedulerMachine::new();
        checker
            .check_snapshot(&mut bytes.as_slice(), applied)
            .expect("taken at its own index");
        let error = checker
            .check_snapshot(&mut bytes.as_slice(), applied - 1)
            .expect_err("a state from past the snapshot's index");
        assert!(
            matches!(
                SnapshotError::of(&error),
                Some(SnapshotError::AppliedPastSnapshot { state, snapshot })
                    if *state == applied && *snapshot == applied - 1
            ),
            "{error}"
        );
        assert!(
            checker.read().workflow("w").is_none(),
            "the check restores nothing"
        );
    }

    #[test]
    fn a_format_2_snapshot_is_migrated_with_its_schedules_parsed() {
        let mut machine = SchedulerMachine::new();
        machine
            .restore(&mut &FORMAT2[..])
            .expect("a format 2 snapshot migrates");
        {
            let state = machine.read();
            assert_eq!(state.workflow("w").map(|w| w.fence), Some(2));
            assert!(matches!(state.named_timer("t"), Some(Err(record)) if record.index == 5));
            assert!(matches!(state.named_timer("u"), Some(Ok(_))));
            assert_eq!(state.timers().len(), 3);
            assert_eq!(
                state.applied_index(),
                5,
                "the largest index the state holds"
            );
            assert_eq!(
                state.schedule("nightly").map(|s| s.cron.as_str()),
                Some("0 3 * * *")
            );
        }
        // The next occurrence comes from the migrated spec.
        let ids: Vec<u64> = machine
            .read()
            .timers()
            .in_due_order()
            .map(|(_, id)| id)
            .collect();
        apply(
            &mut machine,
            8,
            MIDNIGHT_MS + 4 * 3_600_000,
            Command::FireTimers { ids },
        );
        let three_am = MIDNIGHT_MS + 3 * 3_600_000;
        assert!(
            machine
                .read()
                .workflow(&format!("nightly@{three_am}"))
                .is_some()
        );
        let mut again = Vec::new();
        machine.write_snapshot(&mut again).expect("snapshot");
        assert!(again.starts_with(SNAPSHOT_MAGIC));
        let mut restored = SchedulerMachine::new();
        restored.restore(&mut again.as_slice()).expect("format 3");
        assert_eq!(*restored.read(), *machine.read());
    }

    #[test]
    fn a_format_2_snapshot_with_an_expression_refused_now_is_refused_naming_it() {
        let mut machine = SchedulerMachine::new();
        let error = machine
            .restore(&mut &FORMAT2_CRON_L[..])
            .expect_err("L is refused now");
        assert!(
            matches!(
                SnapshotError::of(&error),
                Some(SnapshotError::Format2Cron(CronRefused { schedule, cron, .. }))
                    if schedule == "nightly" && cron == "0 3 L * *"
            ),
            "{error}"
        );
        assert!(machine.read().workflow("w").is_none(), "nothing restored");
    }

    #[test]
    fn an_inconsistent_snapshot_is_refused_with_the_typed_reason() {
        let mut machine = SchedulerMachine::new();
        apply(
            &mut machine,
            1,
            0,
            Command::ScheduleTimer {
                name: "t".into(),
                due: Due::At { at_ms: 10 },
                payload: Vec::new(),
            },
        );
        let mut bytes = Vec::new();
        machine.write_snapshot(&mut bytes).expect("snapshot");
        let (mut state, digest) = codec::decode(&bytes).expect("decodes");
        state.forget_named_for_test("t");
        let corrupted = codec::encode(state, digest);
        let error = SchedulerMachine::new()
            .restore(&mut corrupted.as_slice())
            .expect_err("inconsistent");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(matches!(
            SnapshotError::of(&error),
            Some(SnapshotError::Inconsistent(Inconsistency::NamedTimer { timer: 1, name })) if name == "t"
        ));
    }
}
