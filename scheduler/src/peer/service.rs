//! The `keel.remote.v1.RemoteCalls` service of one node: the callee's side of Hello, Start,
//! Cancel and Get, and the caller's side of Complete. Only the leader answers (a proposal or
//! a linearizable read on another node fails with "not leader"); every answer reports a
//! committed command (REMOTE.md §8, §14).
//!
//! The cluster a request claims to come from must be a configured remote; when this node
//! authenticates, the request's credentials (role `remote`) must be the ones configured for
//! that remote (its principal), else the claim is refused. Without authentication (plaintext
//! on loopback, or `insecure`), the claim is trusted: for development only (REMOTE.md §15).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_raft::cluster_identity::{ClusterIdentity, CommittedIdentity};
use keel_raft::node::NodeShared;
use keel_raft::security::auth::Caller;
use tonic::{Request, Response, Status};

use super::convert::{
    ack_from_wire, ack_to_wire, call_from_wire, cancel_status_to_wire, completion_from_wire,
    identity_from_wire, identity_to_wire, start_result_to_wire,
};
use super::errors::{REMOTE_VERSION, WRONG_CALLEE, WRONG_CALLER, denied, invalid, refusal};
use super::settings::{PeerSettings, RemoteConfig};
use super::{PROTOCOL, START_ITEMS_MAX, completions_of};
use crate::command::{Answer, CancelItem, Command, InboundStart, Refusal, Rejection};
use crate::engine::proposer::Proposer;
use crate::limits::{NAME_MAX_BYTES, PAYLOAD_MAX_BYTES};
use crate::machine::SchedulerMachine;
use crate::pb::remote::{self as pb, remote_calls_server::RemoteCalls};

/// Completions one Get returns at most.
const GET_COMPLETIONS_MAX: usize = 64;

/// The remote-calls service.
#[derive(Debug, Clone)]
pub struct PeerService {
    shared: NodeShared,
    proposer: Proposer,
    machine: SchedulerMachine,
    settings: Arc<PeerSettings>,
    /// The term this node was first seen leading by this service, and since when.
    leading_since: Arc<Mutex<Option<(u64, Instant)>>>,
}

fn unexpected(answer: &Answer) -> Status {
    invalid(format!(
        "unexpected answer from the state machine: {answer:?}"
    ))
}

impl PeerService {
    /// The service of node `shared`, proposing with `proposer`, reading `machine`.
    pub fn new(
        shared: NodeShared,
        proposer: Proposer,
        machine: SchedulerMachine,
        settings: Arc<PeerSettings>,
    ) -> Self {
        Self {
            shared,
            proposer,
            machine,
            settings,
            leading_since: Arc::new(Mutex::new(None)),
        }
    }

    /// This cluster's committed identity; `unavailable` until one is committed.
    fn own_identity(&self) -> Result<CommittedIdentity, Status> {
        self.shared
            .host
            .cluster_identity()
            .ok_or_else(|| super::errors::unavailable("this cluster has no identity yet"))
    }

    /// The configured remote a request's claimed identity names, checked against the
    /// principal that authenticated it (when this node authenticates: its credentials must
    /// be the ones configured for that remote, REMOTE.md §15).
    fn remote_of(
        &self,
        claimed: &ClusterIdentity,
        principal: Option<&Caller>,
    ) -> Result<(&str, &RemoteConfig), Status> {
        let (alias, remote) = self.settings.by_cluster(claimed.name()).ok_or_else(|| {
            denied(format!(
                "cluster {} is not a configured remote here",
                claimed.name()
            ))
        })?;
        if let Some(principal) = principal
            && principal.name != remote.principal(alias)
        {
            return Err(denied(format!(
                "{} may not speak for cluster {}: its credentials are {}'s",
                principal.name,
                claimed.name(),
                remote.principal(alias)
            )));
        }
        Ok((alias, remote))
    }

    fn check_protocol(protocol: u32) -> Result<(), Status> {
        if protocol == PROTOCOL {
            Ok(())
        } else {
            Err(refusal(
                REMOTE_VERSION,
                format!("protocol {protocol}: this node speaks {PROTOCOL}..={PROTOCOL}"),
            ))
        }
    }

    /// The caller a callee-side request comes from, checked: its protocol, that it is a
    /// configured remote, and that it addresses this cluster's identity.
    fn check_caller(
        &self,
        protocol: u32,
        principal: Option<&Caller>,
        from: Option<&pb::ClusterIdentity>,
        to: Option<&pb::ClusterIdentity>,
    ) -> Result<(ClusterIdentity, RemoteConfig, CommittedIdentity), Status> {
        Self::check_protocol(protocol)?;
        let from = identity_from_wire(from, "caller")?;
        let remote = self.remote_of(&from, principal)?.1.clone();
        let addressed = identity_from_wire(to, "callee")?;
        let own = self.own_identity()?;
        if addressed != own.identity {
            return Err(refusal(
                WRONG_CALLEE,
                format!("this cluster is {}, not {addressed}", own.identity),
            ));
        }
        if !self.machine.read().remote().enabled() {
            return Err(super::errors::unavailable(
                "calls between clusters are not enabled here yet: every member's build must apply them first",
            ));
        }
        Ok((from, remote, own))
    }

    /// How long this node has led in its current term, as this service saw it first.
    fn leading_for(&self) -> Duration {
        let term = self.shared.leader_watch().leading().unwrap_or(0);
        let mut since = self.leading_since.lock().expect("leading lock poisoned");
        match *since {
            Some((seen, at)) if seen == term => at.elapsed(),
            _ => {
                *since = Some((term, Instant::now()));
                Duration::ZERO
            }
        }
    }

    /// The refusal configuration decides for `item`, if any; `unavailable` for a kind not
    /// declared while this leader's kinds may still be settling.
    fn leader_refusal(
        &self,
        remote: &RemoteConfig,
        item: &pb::StartItem,
    ) -> Result<Option<(Refusal, String)>, Status> {
        if item.withdrawn {
            return Ok(None);
        }
        let workflow_len = item.call.as_ref().map_or(0, |call| call.workflow.len());
        if item.kind.len() > NAME_MAX_BYTES || workflow_len > NAME_MAX_BYTES {
            return Ok(Some((
                Refusal::Invalid,
                format!("a kind or calling workflow's id over {NAME_MAX_BYTES} bytes"),
            )));
        }
        if !remote.expose.contains(&item.kind) {
            return Ok(Some((
                Refusal::NotExposed,
                format!("kind {:?} is not exposed to this caller", item.kind),
            )));
        }
        if item.input.len() > PAYLOAD_MAX_BYTES {
            return Ok(Some((
                Refusal::Invalid,
                format!(
                    "an input of {} bytes is over {PAYLOAD_MAX_BYTES}",
                    item.input.len()
                ),
            )));
        }
        let settle = Duration::from_millis(self.settings.calls.kinds_settle_ms);
        if !self.machine.read().kinds().contains_key(&item.kind) && self.leading_for() < settle {
            return Err(super::errors::unavailable(format!(
                "kind {:?} is not declared yet; this leader waits for its workers",
                item.kind
            )));
        }
        Ok(None)
    }
}

/// A callee-side request: its protocol and the identities it names.
trait Addressed {
    fn protocol(&self) -> u32;
    fn caller(&self) -> Option<&pb::ClusterIdentity>;
    fn callee(&self) -> Option<&pb::ClusterIdentity>;
}

macro_rules! addressed {
    ($($request:ty),*) => {$(
        impl Addressed for $request {
            fn protocol(&self) -> u32 {
                self.protocol
            }
            fn caller(&self) -> Option<&pb::ClusterIdentity> {
                self.caller.as_ref()
            }
            fn callee(&self) -> Option<&pb::ClusterIdentity> {
                self.callee.as_ref()
            }
        }
    )*};
}

addressed!(pb::StartRequest, pb::CancelRequest, pb::GetRequest);

impl PeerService {
    /// A callee-side request, and its caller checked against its principal (see
    /// [`PeerService::check_caller`]).
    fn accept<T: Addressed>(
        &self,
        request: Request<T>,
    ) -> Result<(T, ClusterIdentity, RemoteConfig, CommittedIdentity), Status> {
        let principal = request.extensions().get::<Caller>().cloned();
        let request = request.into_inner();
        let (caller, remote, own) = self.check_caller(
            request.protocol(),
            principal.as_ref(),
            request.caller(),
            request.callee(),
        )?;
        Ok((request, caller, remote, own))
    }
}

impl PeerService {
    /// `item` as the callee journals it, with the refusal configuration decides; a refused
    /// item's record keeps nothing the caller could make large.
    fn inbound_start(
        &self,
        remote: &RemoteConfig,
        item: &pb::StartItem,
    ) -> Result<InboundStart, Status> {
        let refusal = self.leader_refusal(remote, item)?;
        let mut call = call_from_wire(item.call.as_ref());
        let mut kind = item.kind.clone();
        let mut input = item.input.to_vec();
        if refusal.is_some() {
            (call.workflow, kind, input) = (String::new(), String::new(), Vec::new());
        }
        Ok(InboundStart {
            seq: item.seq,
            call,
            withdrawn: item.withdrawn,
            kind,
            input,
            deadline_ms: item.deadline_ms,
            refusal,
        })
    }
}

#[tonic::async_trait]
impl RemoteCalls for PeerService {
    async fn hello(
        &self,
        request: Request<pb::HelloRequest>,
    ) -> Result<Response<pb::HelloResponse>, Status> {
        let principal = request.extensions().get::<Caller>().cloned();
        let request = request.into_inner();
        if !(request.protocol_min..=request.protocol_max).contains(&PROTOCOL) {
            return Err(refusal(
                REMOTE_VERSION,
                format!(
                    "the caller speaks {}..={}, this node {PROTOCOL}..={PROTOCOL}",
                    request.protocol_min, request.protocol_max
                ),
            ));
        }
        let caller = identity_from_wire(request.caller.as_ref(), "caller")?;
        self.remote_of(&caller, principal.as_ref())?;
        let own = self.own_identity()?;
        // Only the leader answers (a follower's linearizable read would succeed, and send
        // the caller's next request to a node that cannot take it).
        self.proposer.service().require_leader()?;
        self.proposer.service().linearize().await?;
        let watermark = self
            .machine
            .read()
            .remote()
            .incoming(&caller.to_string())
            .map_or(0, |incoming| incoming.watermark);
        let calls = &self.settings.calls;
        Ok(Response::new(pb::HelloResponse {
            protocol: PROTOCOL,
            callee: Some(identity_to_wire(&own.identity)),
            watermark,
            limits: Some(pb::Limits {
                start_items_max: START_ITEMS_MAX,
                start_bytes_max: keel_raft::limits::MESSAGE_MAX_BYTES as u64,
                input_bytes_max: PAYLOAD_MAX_BYTES as u64,
                deadline_max_ms: calls.deadline_max_ms,
                wait_max_ms: calls.get_wait_ms,
            }),
            pushes: false,
            get_holdback_ms: 0,
            grace_ms: calls.grace_ms,
            now_ms: keel_raft::clock::now_ms(),
        }))
    }

    async fn start(
        &self,
        request: Request<pb::StartRequest>,
    ) -> Result<Response<pb::StartResponse>, Status> {
        let (request, caller, remote, own) = self.accept(request)?;
        if request.items.len() > START_ITEMS_MAX as usize {
            return Err(invalid(format!(
                "{} items: at most {START_ITEMS_MAX} per request",
                request.items.len()
            )));
        }
        if request
            .items
            .windows(2)
            .any(|pair| pair[0].seq >= pair[1].seq)
        {
            return Err(invalid("items are not in increasing seq"));
        }
        // A kind not known here may be one committed before this node caught up: read the
        // kinds linearizably then. (The proposal below needs no read: it is ordered by the
        // log, and its apply decides against the state it meets.)
        let unknown = {
            let state = self.machine.read();
            request
                .items
                .iter()
                .any(|item| !item.withdrawn && !state.kinds().contains_key(&item.kind))
        };
        if unknown {
            self.proposer.service().linearize().await?;
        }
        let items = request
            .items
            .iter()
            .map(|item| self.inbound_start(&remote, item))
            .collect::<Result<Vec<_>, Status>>()?;
        let calls = &self.settings.calls;
        let command = Command::RemoteStart {
            caller: caller.to_string(),
            callee_index: own.index,
            items,
            grace_ms: calls.grace_ms,
            deadline_max_ms: calls.deadline_max_ms,
        };
        match self.proposer.propose(command, None).await? {
            Answer::RemoteStarted { results, watermark } => Ok(Response::new(pb::StartResponse {
                results: results
                    .iter()
                    .zip(&request.items)
                    .map(|(result, item)| {
                        start_result_to_wire(result, &call_from_wire(item.call.as_ref()))
                    })
                    .collect(),
                watermark,
            })),
            // Addressed to the identity a remint replaced meanwhile: as if it had arrived
            // after the remint.
            Answer::Rejected(rejection @ Rejection::IdentityReplaced { .. }) => {
                Err(refusal(WRONG_CALLEE, rejection.to_string()))
            }
            Answer::Rejected(rejection) => Err(invalid(rejection.to_string())),
            other => Err(unexpected(&other)),
        }
    }

    async fn complete(
        &self,
        request: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::CompleteResponse>, Status> {
        let principal = request.extensions().get::<Caller>().cloned();
        let request = request.into_inner();
        Self::check_protocol(request.protocol)?;
        let sender = identity_from_wire(request.callee.as_ref(), "callee")?;
        let (alias, _) = self.remote_of(&sender, principal.as_ref())?;
        let addressed = identity_from_wire(request.caller.as_ref(), "caller")?;
        let own = self.own_identity()?;
        if addressed != own.identity {
            return Err(refusal(
                WRONG_CALLER,
                format!("this cluster is {}, not {addressed}", own.identity),
            ));
        }
        self.proposer.service().linearize().await?;
        let generation = {
            let state = self.machine.read();
            let binding = state
                .remote()
                .outgoing(alias)
                .and_then(|stream| stream.binding.clone());
            match binding {
                Some(binding) if binding.callee == sender.to_string() => binding.generation,
                _ => {
                    return Err(refusal(
                        WRONG_CALLEE,
                        format!("{alias} is not bound to {sender} here"),
                    ));
                }
            }
        };
        let completions = request
            .completions
            .iter()
            .map(|c| completion_from_wire(c).ok_or_else(|| invalid("an unknown outcome")))
            .collect::<Result<Vec<_>, _>>()?;
        let command = Command::RemoteComplete {
            remote: alias.to_owned(),
            generation,
            completions,
        };
        match self.proposer.propose(command, None).await? {
            Answer::RemoteAcks { acks } => Ok(Response::new(pb::CompleteResponse {
                acks: acks
                    .iter()
                    .zip(&request.completions)
                    .map(|(ack, c)| ack_to_wire(c.seq, c.call.clone().unwrap_or_default(), ack))
                    .collect(),
            })),
            other => Err(unexpected(&other)),
        }
    }

    async fn cancel(
        &self,
        request: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::CancelResponse>, Status> {
        let (request, caller, _, _) = self.accept(request)?;
        let items = request
            .items
            .iter()
            .map(|item| CancelItem {
                seq: item.seq,
                call: item.call.as_ref().map_or(0, |call| call.call_index),
                reason: item.reason.clone(),
            })
            .collect();
        let command = Command::RemoteCancel {
            caller: caller.to_string(),
            items,
        };
        match self.proposer.propose(command, None).await? {
            Answer::RemoteCancelled { results, watermark } => {
                Ok(Response::new(pb::CancelResponse {
                    results: results
                        .iter()
                        .zip(&request.items)
                        .map(|(result, item)| pb::CancelResult {
                            seq: result.seq,
                            status: cancel_status_to_wire(result.status).into(),
                            call: item.call.clone(),
                        })
                        .collect(),
                    watermark,
                }))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let (request, caller, _, _) = self.accept(request)?;
        let caller = caller.to_string();
        let acks: Vec<(u64, u64)> = request.acks.iter().filter_map(ack_from_wire).collect();
        let mut changed = self.machine.watch_remote();
        self.proposer.service().require_leader()?;
        self.proposer.service().linearize().await?;
        if !acks.is_empty() {
            let command = Command::RemoteCompletionsAcked {
                caller: caller.clone(),
                acks,
            };
            self.proposer.propose(command, None).await?;
        }
        let wait = Duration::from_millis(request.wait_ms.min(self.settings.calls.get_wait_ms));
        let until = tokio::time::Instant::now() + wait;
        let max = match request.max_completions {
            0 => GET_COMPLETIONS_MAX,
            n => (n as usize).min(GET_COMPLETIONS_MAX),
        };
        loop {
            changed.borrow_and_update();
            let (completions, watermark) = completions_of(&self.machine, &caller, max)
                .map_err(|error| Status::data_loss(format!("reading a completion: {error}")))?;
            if !completions.is_empty() {
                let more = completions.len() == max;
                return Ok(Response::new(pb::GetResponse {
                    completions,
                    more,
                    watermark,
                }));
            }
            let leading = self.shared.leader_watch().leading().is_some();
            if !leading {
                return Err(keel_raft::wire_error::not_leader(None));
            }
            if tokio::time::timeout_at(until, changed.changed())
                .await
                .is_err()
            {
                return Ok(Response::new(pb::GetResponse {
                    completions,
                    more: false,
                    watermark,
                }));
            }
        }
    }
}
