//! Group commit: the syncer thread and durability tickets.
//!
//! The writer `pwrite`s each batch and bumps `written`; the syncer wakes, notes the newest
//! `written` and the active file, runs one `fdatasync`, and then every append up to that
//! point is durable. Appends arriving during the sync are written at once and form the next
//! group by themselves: no timer, no batching delay. A failed sync poisons the log and is
//! never retried.

use std::{
    collections::VecDeque,
    fmt, io,
    path::PathBuf,
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use crate::{
    Error, Result, SegmentId, SyncPolicy,
    fs::FileIo,
    segment::{RECORDS_START_OFFSET, sync_mark},
};

/// How long the writer must stay idle after a sync before the syncer writes a sync mark.
const MARK_DELAY: Duration = Duration::from_millis(2);

/// How durable an append is once its ticket resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `fdatasync`ed: survives a power cut.
    Synced,
    /// In the page cache only (relaxed sync policy): survives a process crash, not a power cut.
    PageCache,
}

/// Called once with the outcome when an append becomes durable (or can never be).
pub type DurableCallback = Box<dyn FnOnce(Result<Durability>) + Send>;

/// What the syncer must `fdatasync` to cover everything written so far.
#[derive(Debug, Clone)]
pub(crate) struct SyncTarget {
    pub(crate) file: Arc<dyn FileIo>,
    pub(crate) path: PathBuf,
    pub(crate) segment: SegmentId,
    /// End of written bytes in the segment.
    pub(crate) end: u32,
}

struct State {
    written: u64,
    synced: u64,
    target: Option<SyncTarget>,
    /// Newest durable point: (segment, offset).
    synced_at: Option<(SegmentId, u32)>,
    poison: Option<(&'static str, io::ErrorKind)>,
    callbacks: VecDeque<(u64, DurableCallback)>,
    closing: bool,
    /// A group sync is running (on the syncer thread or on a waiting thread).
    syncing: bool,
    /// The last synced point, not yet recorded in a sync mark.
    unmarked: Option<SyncTarget>,
    /// The last synced point, for the sync mark of a clean close.
    last_synced: Option<SyncTarget>,
    /// Sync marks written so far (each mark's sequence number).
    marks: u64,
    /// The syncer sleeps with no timer: a finished sync must wake it to time the mark.
    syncer_asleep: bool,
    /// Callbacks of durable appends, for the syncer thread to run.
    ready: Vec<DurableCallback>,
}

impl State {
    /// Whether a group sync may start now: writes are pending and none is running.
    fn may_start_sync(&self) -> bool {
        self.written > self.synced
            && !self.syncing
            && self.target.is_some()
            && self.poison.is_none()
    }
}

/// Shared between the writer, the syncer thread and tickets.
pub(crate) struct SyncShared {
    policy: SyncPolicy,
    state: Mutex<State>,
    /// Wakes the syncer.
    work: Condvar,
    /// Wakes ticket waiters.
    done: Condvar,
}

impl fmt::Debug for SyncShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("SyncShared")
            .field("policy", &self.policy)
            .field("written", &state.written)
            .field("synced", &state.synced)
            .finish_non_exhaustive()
    }
}

/// A handle on one append's durability.
#[derive(Debug, Clone)]
pub struct SyncTicket {
    seq: u64,
    shared: Arc<SyncShared>,
}

impl SyncTicket {
    /// Blocks until the append is durable. If no sync is running, the waiting thread runs the
    /// group's `fdatasync` itself (sparing two thread hand-offs); otherwise it waits for the
    /// running one and, if that did not cover it, the next.
    ///
    /// # Errors
    /// [`Error::Poisoned`] if a write or sync failed first; [`Error::Closed`] if the log
    /// closed before syncing it.
    pub fn wait(&self) -> Result<Durability> {
        let mut state = self.shared.lock();
        loop {
            if let Some(outcome) = self.shared.outcome(&state, self.seq) {
                return outcome;
            }
            if state.may_start_sync() {
                self.shared.sync_group(state);
                state = self.shared.lock();
                continue;
            }
            state = self
                .shared
                .done
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Whether the append is already durable (never blocks).
    pub fn is_durable(&self) -> bool {
        matches!(
            self.shared.outcome(&self.shared.lock(), self.seq),
            Some(Ok(_))
        )
    }

    /// Calls `callback` once the append is durable, or with the error that prevents it.
    /// It runs on the log's syncer thread (never on a thread holding the log's locks), or at
    /// once on this thread if the outcome is already decided. A callback must not block
    /// for long: later callbacks wait for it.
    pub fn on_durable(self, callback: impl FnOnce(Result<Durability>) + Send + 'static) {
        let mut state = self.shared.lock();
        if let Some(outcome) = self.shared.outcome(&state, self.seq) {
            drop(state);
            callback(outcome);
        } else {
            state.callbacks.push_back((self.seq, Box::new(callback)));
            drop(state);
            self.shared.work.notify_one();
        }
    }
}

impl SyncShared {
    pub(crate) fn new(policy: SyncPolicy) -> Arc<Self> {
        Arc::new(Self {
            policy,
            state: Mutex::new(State {
                written: 0,
                synced: 0,
                target: None,
                synced_at: None,
                poison: None,
                callbacks: VecDeque::new(),
                closing: false,
                syncing: false,
                unmarked: None,
                last_synced: None,
                marks: 0,
                syncer_asleep: false,
                ready: Vec::new(),
            }),
            work: Condvar::new(),
            done: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn durability(&self) -> Durability {
        if self.policy.is_durable() {
            Durability::Synced
        } else {
            Durability::PageCache
        }
    }

    fn outcome(&self, state: &State, seq: u64) -> Option<Result<Durability>> {
        if state.synced >= seq {
            Some(Ok(self.durability()))
        } else if let Some((op, kind)) = state.poison {
            Some(Err(Error::Poisoned { op, kind }))
        } else if state.closing && state.target.is_none() {
            Some(Err(Error::Closed))
        } else {
            None
        }
    }

    /// Fails if the log is poisoned.
    pub(crate) fn check(&self) -> Result<()> {
        match self.lock().poison {
            Some((op, kind)) => Err(Error::Poisoned { op, kind }),
            None => Ok(()),
        }
    }

    /// Marks the log poisoned by a failed `op`; every pending ticket fails.
    pub(crate) fn poison(&self, op: &'static str, error: &io::Error) {
        tracing::error!(op, %error, "keel-log poisoned: no further writes are accepted");
        let mut state = self.lock();
        state.poison.get_or_insert((op, error.kind()));
        drop(state);
        // Waiting callbacks fail on the syncer thread (`finish`), never on this one, which
        // may hold the writer's lock.
        self.work.notify_all();
        self.done.notify_all();
    }

    /// The offset of `segment` known durable, for batch headers' synced hints.
    pub(crate) fn synced_hint(&self, segment: SegmentId) -> u32 {
        match self.lock().synced_at {
            Some((s, offset)) if s == segment => offset,
            _ => RECORDS_START_OFFSET,
        }
    }

    /// Records a completed `pwrite`; returns its ticket.
    pub(crate) fn written(self: &Arc<Self>, target: SyncTarget) -> SyncTicket {
        let mut state = self.lock();
        state.written += 1;
        let seq = state.written;
        if self.policy.is_durable() {
            state.target = Some(target);
            // Waiters run syncs themselves; the syncer runs them only for callbacks.
            let wake = !state.callbacks.is_empty();
            drop(state);
            if wake {
                self.work.notify_one();
            }
        } else {
            state.synced = seq;
            drop(state);
        }
        SyncTicket {
            seq,
            shared: Arc::clone(self),
        }
    }

    /// A ticket for "everything written so far".
    pub(crate) fn current(self: &Arc<Self>) -> SyncTicket {
        SyncTicket {
            seq: self.lock().written,
            shared: Arc::clone(self),
        }
    }

    /// The writer synced the whole segment itself (at a seal): everything written is durable.
    pub(crate) fn synced_all(&self, segment: SegmentId, end: u32) {
        let mut state = self.lock();
        let seq = state.written;
        state.target = None;
        self.complete(state, seq, (segment, end));
    }

    /// Marks everything through `seq` durable and runs the callbacks that were waiting.
    fn complete(&self, mut state: MutexGuard<'_, State>, seq: u64, at: (SegmentId, u32)) {
        if seq > state.synced || state.synced_at.is_none() {
            state.synced = state.synced.max(seq);
            state.synced_at = Some(at);
        }
        let mut ready = 0;
        while state
            .callbacks
            .front()
            .is_some_and(|(s, _)| *s <= state.synced)
        {
            let (_, callback) = state.callbacks.pop_front().expect("front exists");
            state.ready.push(callback);
            ready += 1;
        }
        drop(state);
        self.done.notify_all();
        if ready > 0 {
            // Callbacks run on the syncer thread: this one may hold the writer's lock.
            self.work.notify_one();
        }
    }

    /// Runs the callbacks whose appends became durable (syncer thread only).
    fn run_ready<'a>(&'a self, mut state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        let ready = std::mem::take(&mut state.ready);
        drop(state);
        let durability = self.durability();
        for callback in ready {
            callback(Ok(durability));
        }
        self.lock()
    }

    /// Asks the syncer to finish pending work and stop.
    pub(crate) fn close(&self) {
        self.lock().closing = true;
        self.work.notify_all();
        self.done.notify_all();
    }

    /// Runs the syncer thread. A panic in it poisons the log rather than leaving tickets
    /// waiting forever.
    pub(crate) fn run(self: Arc<Self>) {
        let shared = Arc::clone(&self);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shared.sync_loop()));
        if outcome.is_err() {
            let error = io::Error::other("the syncer thread panicked");
            self.poison("fdatasync", &error);
        }
    }

    /// Runs one group sync: everything written when it starts is durable when it ends.
    /// Called with the lock held and [`State::may_start_sync`] true; releases the lock.
    fn sync_group(&self, mut state: MutexGuard<'_, State>) {
        assert!(state.may_start_sync(), "one group sync at a time");
        state.syncing = true;
        let seq = state.written;
        let target = state
            .target
            .clone()
            .expect("a pending write names its file");
        drop(state);
        let result = target.file.sync_data();
        let mut state = self.lock();
        state.syncing = false;
        match result {
            Ok(()) => {
                state.unmarked = Some(target.clone());
                state.last_synced = Some(target.clone());
                let wake = state.syncer_asleep || !state.callbacks.is_empty();
                self.complete(state, seq, (target.segment, target.end));
                if wake {
                    self.work.notify_one();
                }
            }
            Err(error) => {
                drop(state);
                tracing::error!(path = %target.path.display(), %error, "fdatasync failed");
                self.poison("fdatasync", &error);
            }
        }
    }

    /// The syncer thread's loop. Threads waiting on a ticket run group syncs themselves; the
    /// syncer runs them for callbacks and at close. When the writer stays idle for
    /// [`MARK_DELAY`] after a sync, it records the durable end in the segment's sync mark
    /// (while appends keep coming, their batch headers' synced hints record it instead, so the hot
    /// path pays nothing for marks). It sleeps otherwise and is woken only when needed.
    fn sync_loop(&self) {
        // The durable point the syncer last looked at: while other threads keep syncing, it
        // waits on a timer for the writer to go idle instead of being woken by each sync;
        // when nothing syncs (appends nobody waits for), it sleeps until something does.
        let mut seen_synced = 0;
        loop {
            let mut state = self.lock();
            loop {
                if !state.ready.is_empty() {
                    state = self.run_ready(state);
                    continue;
                }
                if state.poison.is_some()
                    || (state.closing && state.written == state.synced && !state.syncing)
                {
                    self.finish(state);
                    return;
                }
                if state.may_start_sync() && (state.closing || !state.callbacks.is_empty()) {
                    break;
                }
                let idle = state.written == state.synced && !state.syncing;
                let progressing = state.synced != seen_synced;
                seen_synced = state.synced;
                state = if state.unmarked.is_some() && (idle || progressing) {
                    self.mark_when_idle(state)
                } else {
                    state.syncer_asleep = true;
                    let mut state = self
                        .work
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                    state.syncer_asleep = false;
                    state
                };
            }
            self.sync_group(state);
        }
    }

    /// Waits up to [`MARK_DELAY`]; if no write came since the last sync, writes its mark.
    fn mark_when_idle<'a>(&'a self, state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        let (mut state, timeout) = self
            .work
            .wait_timeout(state, MARK_DELAY)
            .unwrap_or_else(PoisonError::into_inner);
        let idle = state.written == state.synced && !state.syncing && !state.closing;
        if !(idle && timeout.timed_out()) {
            return state;
        }
        let Some(target) = state.unmarked.take() else {
            return state;
        };
        state.marks += 1;
        let seq = state.marks;
        drop(state);
        self.write_mark(&target, seq);
        self.lock()
    }

    /// Writes sync mark number `seq` for `target`; a failed write poisons the log.
    fn write_mark(&self, target: &SyncTarget, seq: u64) -> bool {
        let (at, mark) = sync_mark::encode(target.segment, seq, target.end);
        match target.file.write_all_at(&mark, at) {
            Ok(()) => true,
            Err(error) => {
                self.poison("pwrite", &error);
                false
            }
        }
    }

    /// Stops the syncer. On a clean close the last synced point gets a durable sync mark,
    /// so recovery knows exactly what was durable; what is left pending fails.
    fn finish(&self, state: MutexGuard<'_, State>) {
        let mut state = self.run_ready(state);
        let failed: Vec<_> = state.callbacks.drain(..).collect();
        let poison = state.poison;
        let clean = state.poison.is_none();
        state.target = None;
        state.marks += 1;
        let (last, seq) = (state.last_synced.take(), state.marks);
        drop(state);
        if clean
            && let Some(target) = last
            && self.write_mark(&target, seq)
            && let Err(error) = target.file.sync_data()
        {
            tracing::warn!(path = %target.path.display(), %error, "cannot sync the sync mark");
        }
        self.done.notify_all();
        for (_, callback) in failed {
            callback(Err(poison.map_or(Error::Closed, |(op, kind)| {
                Error::Poisoned { op, kind }
            })));
        }
    }
}
