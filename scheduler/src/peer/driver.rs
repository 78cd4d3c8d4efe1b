//! The caller's drivers (REMOTE.md §10): while this node leads (and has applied everything
//! committed before its term), two tasks per configured remote with addresses —
//! - *deliver*: Hello (at takeover, after a halt, when the breaker opens), the binding,
//!   then Start requests of the outbox's next items in seq order, one in flight, and
//!   Cancel requests; each answer is committed (`RemoteStartsAcked`, `RemoteCancelsAcked`);
//! - *fetch*: a long-poll Get while a taken call awaits its completion; the completions it
//!   returns are committed (`RemoteComplete`) and acknowledged in the next Get.
//!
//! Drivers read committed state and propose idempotent facts, so a deposed leader's late
//! proposals change nothing and a new leader's re-drive repeats nothing. Backoff and the
//! breaker are in memory (`link`); nothing is given up but by a terminal answer, a
//! resolution or an operator.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use keel_raft::cluster_identity::ClusterIdentity;
use keel_raft::node::NodeShared;
use keel_raft::security::credentials::Connector;
use tokio::sync::watch;
use tonic::Status;

use super::convert::{
    another_call, call_to_wire, cancel_result_from_wire, completion_from_wire, identity_from_wire,
    identity_to_wire, start_result_from_wire,
};
use super::errors::{Failure, WRONG_CALLEE, classify};
use super::link::{Link, Outcomes};
use super::settings::{PeerSettings, RemoteConfig};
use super::status::RemoteStatuses;
use super::{PROTOCOL, START_BYTES_MAX, START_ITEMS_MAX, convert::ack_to_wire};
use crate::command::{AckStatus, Answer, CancelStatus, Command};
use crate::engine::AbortOnDrop;
use crate::engine::proposer::Proposer;
use crate::machine::SchedulerMachine;
use crate::pb::remote as pb;
use crate::state::OutState;

/// How long a request other than Get may take.
const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// How much longer than its wait a Get may take.
const GET_SLACK: Duration = Duration::from_secs(5);
/// Cancels one request carries at most.
const CANCELS_MAX: usize = 256;

/// What the leader's driver of one remote reports (in memory: a new leader starts over).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteStatus {
    /// RPCs made to it, retries included.
    pub attempts: u64,
    /// The last failure, until a request succeeds.
    pub last_error: Option<String>,
    /// Why the remote is halted (it is probed with Hello until that succeeds).
    pub halted: Option<String>,
    /// Whether the breaker is open (eight failures in a row).
    pub breaker_open: bool,
    /// How its requests ended.
    pub outcomes: Outcomes,
    /// Completions that came for a call already resolved or a caller workflow gone.
    pub late_completions: u64,
}

/// The drivers of a node's remotes; stopped when dropped.
#[derive(Debug)]
pub struct Drivers {
    statuses: RemoteStatuses,
    _task: AbortOnDrop,
}

impl Drivers {
    /// Starts following `active` (the term this node runs workflows in, 0 when none): in
    /// each such term, drives every remote of `settings` that has addresses, reporting to
    /// `statuses`.
    pub fn start(
        shared: NodeShared,
        proposer: Proposer,
        machine: SchedulerMachine,
        settings: Arc<PeerSettings>,
        mut active: watch::Receiver<u64>,
        statuses: RemoteStatuses,
    ) -> Self {
        let context = Context {
            shared,
            proposer,
            machine,
            settings,
            statuses: Arc::clone(&statuses),
        };
        let task = tokio::spawn(async move {
            loop {
                let term = *active.borrow_and_update();
                let running: Vec<AbortOnDrop> = if term == 0 {
                    Vec::new()
                } else {
                    context.spawn_all()
                };
                if active.changed().await.is_err() {
                    return;
                }
                drop(running);
            }
        });
        Self {
            statuses,
            _task: AbortOnDrop(task),
        }
    }

    /// What each remote's driver reports on this node (empty unless it leads).
    ///
    /// # Panics
    /// If a driver panicked while reporting (the lock is poisoned).
    pub fn statuses(&self) -> BTreeMap<String, RemoteStatus> {
        self.statuses.lock().expect("status lock poisoned").clone()
    }
}

/// What every driver of a node shares.
#[derive(Debug, Clone)]
struct Context {
    shared: NodeShared,
    proposer: Proposer,
    machine: SchedulerMachine,
    settings: Arc<PeerSettings>,
    statuses: RemoteStatuses,
}

impl Context {
    fn spawn_all(&self) -> Vec<AbortOnDrop> {
        let mut statuses = self.statuses.lock().expect("status lock poisoned");
        statuses.clear();
        let mut tasks = Vec::new();
        // Also without remotes configured here: a call to an alias no node knows is
        // journaled, and times out at its deadline, rather than wait for the gate forever.
        if !self.machine.read().remote().enabled() {
            tasks.push(AbortOnDrop(tokio::spawn(super::gate::enable(
                self.shared.clone(),
                self.proposer.clone(),
                self.machine.clone(),
            ))));
        }
        for (alias, remote) in &self.settings.remotes {
            if remote.addresses.is_empty() {
                continue;
            }
            // Listed at once: a remote this leader drives has a status, one it cannot has none.
            statuses.insert(alias.clone(), RemoteStatus::default());
            let driver = Arc::new(Driver {
                alias: alias.clone(),
                remote: remote.clone(),
                context: self.clone(),
            });
            tasks.push(AbortOnDrop(tokio::spawn(Arc::clone(&driver).deliver())));
            tasks.push(AbortOnDrop(tokio::spawn(driver.fetch())));
        }
        drop(statuses);
        tasks
    }
}

/// One remote's driver.
#[derive(Debug)]
struct Driver {
    alias: String,
    remote: RemoteConfig,
    context: Context,
}

/// What a Hello established for this term.
#[derive(Debug, Clone)]
struct Hello {
    /// This cluster's identity the Hello was made under: the requests that follow carry
    /// it, and a remint ends the session (the stream it spoke for was dropped).
    caller: ClusterIdentity,
    callee: ClusterIdentity,
    generation: u64,
}

impl Hello {
    /// `stream` if it is still the one this Hello bound: a rebind or a remint applied since
    /// replaced it with a stream whose items must not travel under this Hello's identities
    /// (read under the same lock as the items, so none slips in between).
    fn stream_of<'a>(
        &self,
        stream: Option<&'a crate::state::Outgoing>,
    ) -> Option<&'a crate::state::Outgoing> {
        stream
            .filter(|stream| stream.binding.as_ref().map(|b| b.generation) == Some(self.generation))
    }
}

fn timed<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// An answer this build cannot read (an enum value it does not know): retried after a
/// pause, never taken as terminal (REMOTE.md §16).
fn unknown_answer(what: &str) -> Failure {
    Failure::Transient(format!("a {what} answer this build cannot read"))
}

/// The answers `parse` reads, in order up to the first it cannot; a non-empty answer of
/// which it reads none is [`unknown_answer`].
fn readable<W, T>(
    wire: &[W],
    parse: impl Fn(&W) -> Option<T>,
    what: &str,
) -> Result<Vec<T>, Failure> {
    let read: Vec<T> = wire.iter().map_while(parse).collect();
    if read.is_empty() && !wire.is_empty() {
        return Err(unknown_answer(what));
    }
    Ok(read)
}

/// A failure of this node's own proposal (it stopped leading, or is catching up).
fn own_failure(status: &Status) -> Failure {
    Failure::Transient(format!("committing here: {}", status.message()))
}

impl Driver {
    /// The link to this remote, once its credentials open (they did when the node started;
    /// a file gone since halts the remote, retried once per backoff cap).
    async fn link(&self) -> Link {
        let calls = &self.context.settings.calls;
        loop {
            match Connector::new(&self.remote.credentials()) {
                Ok(connector) => {
                    return Link::new(
                        self.remote.addresses.clone(),
                        connector,
                        calls.backoff_first(),
                        calls.backoff_max(),
                    );
                }
                Err(error) => {
                    let mut statuses = self.context.statuses.lock().expect("status lock poisoned");
                    statuses.entry(self.alias.clone()).or_default().halted =
                        Some(format!("opening its credentials: {error}"));
                }
            }
            tokio::time::sleep(calls.backoff_max()).await;
        }
    }

    fn own_identity(&self) -> Result<ClusterIdentity, Failure> {
        self.context
            .shared
            .host
            .cluster_identity()
            .map(|committed| committed.identity)
            .ok_or_else(|| Failure::Transient("this cluster has no identity yet".to_owned()))
    }

    /// Adds `link`'s outcomes since the last report to the remote's status (and nothing
    /// else: the fetch task's successes must not clear what the deliver task reported).
    fn report_outcomes(&self, link: &mut Link) {
        let mut statuses = self.context.statuses.lock().expect("status lock poisoned");
        let status = statuses.entry(self.alias.clone()).or_default();
        status.outcomes.add(&std::mem::take(&mut link.outcomes));
    }

    fn report(&self, link: &mut Link, halted: Option<String>) {
        self.report_outcomes(link);
        let mut statuses = self.context.statuses.lock().expect("status lock poisoned");
        let status = statuses.entry(self.alias.clone()).or_default();
        status.attempts = status.attempts.max(link.attempts);
        status.last_error.clone_from(&link.last_error);
        status.breaker_open = link.breaker_open();
        if let Some(halted) = halted {
            status.halted = Some(halted);
        }
    }

    fn clear_halt(&self) {
        let mut statuses = self.context.statuses.lock().expect("status lock poisoned");
        statuses.entry(self.alias.clone()).or_default().halted = None;
    }

    async fn propose(&self, command: Command) -> Result<Answer, Failure> {
        self.context
            .proposer
            .propose(command, None)
            .await
            .map_err(|status| own_failure(&status))
    }

    async fn deliver(self: Arc<Self>) {
        let mut link = self.link().await;
        let mut changed = self.context.machine.watch_remote();
        let mut hello = None;
        loop {
            changed.borrow_and_update();
            match self.deliver_once(&mut link, &mut hello).await {
                Ok(true) => {}
                Ok(false) => {
                    if changed.changed().await.is_err() {
                        return;
                    }
                }
                Err(failure) => {
                    let halted = match &failure {
                        Failure::Halt(why) => {
                            hello = None;
                            Some(why.clone())
                        }
                        _ => None,
                    };
                    self.report(&mut link, halted);
                    link.failed(failure).await;
                    if link.breaker_open() {
                        hello = None;
                    }
                }
            }
            self.report(&mut link, None);
        }
    }

    /// One step of delivery: a Hello if none holds, else the next Start or Cancel request.
    /// `Ok(false)` when there is nothing to deliver.
    async fn deliver_once(
        &self,
        link: &mut Link,
        hello: &mut Option<Hello>,
    ) -> Result<bool, Failure> {
        let (has_items, generation) = {
            let state = self.context.machine.read();
            let stream = state.remote().outgoing(&self.alias);
            (
                stream.is_some_and(|stream| !stream.outbox.is_empty()),
                stream
                    .and_then(|s| s.binding.as_ref())
                    .map(|b| b.generation),
            )
        };
        // An operator's rebind dropped the binding this Hello established, or a remint the
        // identity it was made under: Hello again.
        let own = self.context.shared.host.cluster_identity();
        if hello.as_ref().is_some_and(|h| {
            Some(h.generation) != generation || own.as_ref().map(|o| &o.identity) != Some(&h.caller)
        }) {
            *hello = None;
        }
        if !has_items {
            return Ok(false);
        }
        let established = if let Some(established) = hello {
            established.clone()
        } else {
            let established = self.hello(link).await?;
            self.clear_halt();
            hello.insert(established).clone()
        };
        if self.send_starts(link, &established).await? {
            return Ok(true);
        }
        self.send_cancels(link, &established).await
    }

    /// Hello: the callee's identity and watermark; binds the stream on first contact and
    /// checks the binding and the watermark against this side's state.
    async fn hello(&self, link: &mut Link) -> Result<Hello, Failure> {
        let own = self.own_identity()?;
        let mut client = link.dial()?;
        let request = pb::HelloRequest {
            protocol_min: PROTOCOL,
            protocol_max: PROTOCOL,
            caller: Some(identity_to_wire(&own)),
        };
        let response = client
            .hello(timed(request, RPC_TIMEOUT))
            .await
            .map_err(|status| classify(&status))?
            .into_inner();
        link.succeeded();
        let callee = identity_from_wire(response.callee.as_ref(), "callee")
            .map_err(|status| Failure::Halt(status.message().to_owned()))?;
        let (binding, retired) = self
            .context
            .machine
            .read()
            .remote()
            .outgoing(&self.alias)
            .map_or((None, None), |stream| {
                (stream.binding.clone(), stream.retired.clone())
            });
        if binding.is_none() && retired == Some(callee.to_string()) {
            return Err(Failure::Halt(format!(
                "{WRONG_CALLEE}: {callee} answers, the callee an operator unbound from {}; rebinding needs a re-created callee",
                self.alias
            )));
        }
        let (bound, generation) = match binding {
            Some(binding) => (binding.callee, binding.generation),
            None => match self
                .propose(Command::RemoteBind {
                    remote: self.alias.clone(),
                    callee: callee.to_string(),
                })
                .await?
            {
                Answer::RemoteBound { callee, generation } => (callee, generation),
                other => return Err(Failure::Halt(format!("binding answered {other:?}"))),
            },
        };
        if bound != callee.to_string() {
            return Err(Failure::Halt(format!(
                "{WRONG_CALLEE}: {} is bound to {bound}, and {callee} answers",
                self.alias
            )));
        }
        // A remint applied since the Hello dropped this stream: its watermark is another
        // identity's.
        if self.own_identity()? != own {
            return Err(Failure::Transient(
                "this cluster's identity was replaced during Hello".to_owned(),
            ));
        }
        self.check_watermark(generation, response.watermark).await?;
        Ok(Hello {
            caller: own,
            callee,
            generation,
        })
    }

    /// Checks the callee's watermark against `acked` and the seqs handed out, and commits it
    /// when it shows more taken than known here.
    async fn check_watermark(&self, generation: u64, watermark: u64) -> Result<(), Failure> {
        let (acked, next_seq) = self
            .context
            .machine
            .read()
            .remote()
            .outgoing(&self.alias)
            .map_or((0, 1), |stream| (stream.acked, stream.next_seq));
        if watermark < acked {
            return Err(Failure::Halt(format!(
                "the callee's watermark {watermark} went back below {acked}: it lost its state \
                 (restored without a new identity?)"
            )));
        }
        if watermark >= next_seq {
            return Err(Failure::Halt(format!(
                "the callee took seq {watermark}, but this caller handed out only {}",
                next_seq - 1
            )));
        }
        if watermark > acked {
            self.propose(Command::RemoteStartsAcked {
                remote: self.alias.clone(),
                generation,
                watermark,
                results: Vec::new(),
            })
            .await?;
        }
        Ok(())
    }

    /// The next Start request's items: not known taken, in seq order, within the count and
    /// byte limits (one larger item alone); their inputs read with the state's lock released
    /// (a value file read under it would hold up apply).
    fn start_items(&self, hello: &Hello) -> Result<Vec<pb::StartItem>, Failure> {
        let chosen: Vec<(u64, crate::state::OutItem)> = {
            let state = self.context.machine.read();
            let Some(stream) = hello.stream_of(state.remote().outgoing(&self.alias)) else {
                return Ok(Vec::new());
            };
            let mut bytes = 0;
            let mut chosen = Vec::new();
            for (seq, item) in stream.starts_to_send(START_ITEMS_MAX as usize) {
                bytes += item.input.len();
                if !chosen.is_empty() && bytes > START_BYTES_MAX {
                    break;
                }
                chosen.push((seq, item.clone()));
            }
            chosen
        };
        chosen
            .into_iter()
            .map(|(seq, item)| {
                let withdrawn = item.state == OutState::Withdraw;
                let input = if withdrawn {
                    bytes::Bytes::new()
                } else {
                    self.context.machine.value(&item.input).map_err(|error| {
                        Failure::Halt(format!("reading call {}'s input: {error}", item.call.index))
                    })?
                };
                Ok(pb::StartItem {
                    seq,
                    call: Some(call_to_wire(&item.call)),
                    withdrawn,
                    kind: if withdrawn { String::new() } else { item.kind },
                    input,
                    deadline_ms: item.deadline_ms,
                    called_ms: 0,
                })
            })
            .collect()
    }

    /// Sends the next Start request, if any item is to be sent, and commits its answer.
    async fn send_starts(&self, link: &mut Link, hello: &Hello) -> Result<bool, Failure> {
        let items = self.start_items(hello)?;
        if items.is_empty() {
            return Ok(false);
        }
        let mut client = link.dial()?;
        let request = pb::StartRequest {
            protocol: PROTOCOL,
            caller: Some(identity_to_wire(&hello.caller)),
            callee: Some(identity_to_wire(&hello.callee)),
            items,
            attempt: u32::try_from(link.attempts).unwrap_or(u32::MAX),
        };
        let response = client
            .start(timed(request, RPC_TIMEOUT))
            .await
            .map_err(|status| classify(&status))?
            .into_inner();
        link.succeeded();
        let results = readable(&response.results, start_result_from_wire, "start")?;
        self.propose(Command::RemoteStartsAcked {
            remote: self.alias.clone(),
            generation: hello.generation,
            watermark: response.watermark,
            results,
        })
        .await?;
        Ok(true)
    }

    /// Sends the next Cancel request, if any item is to be cancelled, and commits its
    /// terminal answers; a `NOT_TAKEN` halts the remote (the callee's watermark went back).
    async fn send_cancels(&self, link: &mut Link, hello: &Hello) -> Result<bool, Failure> {
        let items: Vec<pb::CancelItem> = {
            let state = self.context.machine.read();
            let Some(stream) = hello.stream_of(state.remote().outgoing(&self.alias)) else {
                return Ok(false);
            };
            stream
                .cancels_to_send(CANCELS_MAX)
                .map(|(seq, item, reason)| pb::CancelItem {
                    seq,
                    call: Some(call_to_wire(&item.call)),
                    reason: reason.to_owned(),
                })
                .collect()
        };
        if items.is_empty() {
            return Ok(false);
        }
        let mut client = link.dial()?;
        let request = pb::CancelRequest {
            protocol: PROTOCOL,
            caller: Some(identity_to_wire(&hello.caller)),
            callee: Some(identity_to_wire(&hello.callee)),
            items,
        };
        let response = client
            .cancel(timed(request, RPC_TIMEOUT))
            .await
            .map_err(|status| classify(&status))?
            .into_inner();
        link.succeeded();
        let results = readable(&response.results, cancel_result_from_wire, "cancel")?;
        let not_taken = results.iter().any(|r| r.status == CancelStatus::NotTaken);
        self.propose(Command::RemoteCancelsAcked {
            remote: self.alias.clone(),
            generation: hello.generation,
            results,
        })
        .await?;
        if not_taken {
            return Err(Failure::Halt(
                "the callee has not taken a call it had taken: its watermark went back".into(),
            ));
        }
        Ok(true)
    }

    /// Halts the remote if a completion names, at an item's seq and call index, another
    /// workflow or journal position than the item's: the callee completed another call that
    /// happens to share the index (this cluster re-created from old data without a remint,
    /// REMOTE.md §17 scenario 8), and its result must not resolve this one.
    fn check_completed_calls(
        &self,
        generation: u64,
        completions: &[&pb::Completion],
    ) -> Result<(), Failure> {
        let state = self.context.machine.read();
        // Completions of another binding's stream settle nothing here (their commit is
        // ignored): nothing to compare them with.
        let Some(stream) = state
            .remote()
            .outgoing(&self.alias)
            .filter(|stream| stream.binding.as_ref().map(|b| b.generation) == Some(generation))
        else {
            return Ok(());
        };
        for completion in completions {
            let Some(item) = stream.outbox.get(&completion.seq) else {
                continue;
            };
            if let Some(completed) = &completion.call
                && another_call(&item.call, completed)
            {
                return Err(Failure::Halt(format!(
                    "conflict: {} completed seq {} as call {} of {} entry {}, but this cluster made it from {} entry {}: was it re-created from old data without `keel identity remint`?",
                    self.alias,
                    completion.seq,
                    completed.call_index,
                    completed.workflow,
                    completed.position,
                    item.call.workflow,
                    item.call.position
                )));
            }
        }
        Ok(())
    }

    /// Counts the completions answered as late (already resolved, or for a caller gone).
    fn count_late(&self, answered: &[AckStatus]) {
        let late = answered
            .iter()
            .filter(|ack| matches!(ack, AckStatus::CallerGone | AckStatus::AlreadyResolved(_)))
            .count();
        if late > 0 {
            let mut statuses = self.context.statuses.lock().expect("status lock poisoned");
            statuses
                .entry(self.alias.clone())
                .or_default()
                .late_completions += late as u64;
        }
    }

    async fn fetch(self: Arc<Self>) {
        let mut link = self.link().await;
        let mut changed = self.context.machine.watch_remote();
        let mut acks = Vec::new();
        // Whether this task reported a failure since its last success: the next success
        // then clears it from the remote's status (an idle deliver task would not).
        let mut failing = false;
        loop {
            changed.borrow_and_update();
            let binding = {
                let state = self.context.machine.read();
                state
                    .remote()
                    .outgoing(&self.alias)
                    .filter(|stream| stream.awaits_completions() || !acks.is_empty())
                    .and_then(|stream| stream.binding.clone())
            };
            let Some(binding) = binding else {
                if changed.changed().await.is_err() {
                    return;
                }
                continue;
            };
            match self.get(&mut link, &binding, &mut acks).await {
                Ok(()) => {
                    link.succeeded();
                    if std::mem::take(&mut failing) {
                        self.report(&mut link, None);
                    } else {
                        self.report_outcomes(&mut link);
                    }
                }
                Err(failure) => {
                    failing = true;
                    let halted = match &failure {
                        Failure::Halt(why) => Some(why.clone()),
                        _ => None,
                    };
                    self.report(&mut link, halted);
                    link.failed(failure).await;
                }
            }
        }
    }

    /// One Get: sends `acks`, commits the completions it returns, and leaves their
    /// acknowledgements in `acks` for the next Get.
    async fn get(
        &self,
        link: &mut Link,
        binding: &crate::state::Binding,
        acks: &mut Vec<pb::CompletionAck>,
    ) -> Result<(), Failure> {
        let own = self.own_identity()?;
        let callee = ClusterIdentity::from_str(&binding.callee)
            .map_err(|error| Failure::Halt(format!("the bound identity: {error}")))?;
        let mut client = link.dial()?;
        let wait_ms = self.context.settings.calls.get_wait_ms;
        let request = pb::GetRequest {
            protocol: PROTOCOL,
            caller: Some(identity_to_wire(&own)),
            callee: Some(identity_to_wire(&callee)),
            wait_ms,
            max_completions: 0,
            acks: acks.clone(),
        };
        let timeout = Duration::from_millis(wait_ms) + GET_SLACK;
        let response = client
            .get(timed(request, timeout))
            .await
            .map_err(|status| classify(&status))?
            .into_inner();
        acks.clear();
        // Completions this build cannot read are skipped (left unacknowledged: the callee
        // serves them again), never taken as settled.
        let readable: Vec<&pb::Completion> = response
            .completions
            .iter()
            .filter(|c| completion_from_wire(c).is_some())
            .collect();
        self.check_completed_calls(binding.generation, &readable)?;
        let completions: Vec<_> = readable
            .iter()
            .filter_map(|c| completion_from_wire(c))
            .collect();
        if completions.is_empty() {
            return if response.completions.is_empty() {
                Ok(())
            } else {
                Err(unknown_answer("completion"))
            };
        }
        let answer = self
            .propose(Command::RemoteComplete {
                remote: self.alias.clone(),
                generation: binding.generation,
                completions: completions.clone(),
            })
            .await?;
        let Answer::RemoteAcks { acks: answered } = answer else {
            return Err(Failure::Halt(format!("completions answered {answer:?}")));
        };
        self.count_late(&answered);
        for (completion, ack) in readable.into_iter().zip(&answered) {
            if *ack == AckStatus::CallerGone {
                tracing::debug!(remote = %self.alias, seq = completion.seq, "completion for no call");
            }
            acks.push(ack_to_wire(
                completion.seq,
                completion.call.clone().unwrap_or_default(),
                ack,
            ));
        }
        Ok(())
    }
}
