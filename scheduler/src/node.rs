//! The embeddable node: a Keel cluster member inside the application's own process — Raft,
//! the plain log, the workflow scheduler with its engine, and the gRPC server.

use std::net::SocketAddr;
use std::sync::Arc;

use keel_raft::limits::MESSAGE_MAX_BYTES;

use keel_raft::node::{Extension, NodeConfig, RaftNode};
use keel_raft::plain_log::PlainLog;
use keel_raft::security::roles::{MethodRoles, Role};

use crate::command::EntryState;
use crate::engine::dispatch::Dispatcher;
use crate::engine::proposer::Proposer;
use crate::engine::registry::Registry;
use crate::engine::{Engine, EngineSettings};
use crate::error::Result;
use crate::machine::SchedulerMachine;
use crate::pb::remote::remote_calls_server::RemoteCallsServer;
use crate::pb::workers_server::WorkersServer;
use crate::pb::workflows_server::WorkflowsServer;
use crate::peer::PeerSettings;
use crate::peer::driver::{Drivers, RemoteStatus};
use crate::peer::service::PeerService;
use crate::peer::status::{RemoteStatuses, render_metrics};
use crate::service::WorkflowService;
use crate::state::EntryKind;
use crate::workers_service::WorkersService;

/// The role each method of the workflow and workers services needs when the node
/// authenticates ([`keel_raft::security::roles`]).
pub fn method_roles() -> MethodRoles {
    MethodRoles::new(&[
        ("/keel.workflows.v2.Workflows/Start", Role::Write),
        ("/keel.workflows.v2.Workflows/Signal", Role::Write),
        ("/keel.workflows.v2.Workflows/Cancel", Role::Write),
        ("/keel.workflows.v2.Workflows/ScheduleTimer", Role::Write),
        ("/keel.workflows.v2.Workflows/RegisterSchedule", Role::Write),
        ("/keel.workflows.v2.Workflows/RebindRemote", Role::Admin),
        ("/keel.workflows.v2.Workflows/Get", Role::Read),
        ("/keel.workflows.v2.Workflows/List", Role::Read),
        ("/keel.workflows.v2.Workflows/GetTimer", Role::Read),
        ("/keel.workflows.v2.Workflows/WatchFires", Role::Read),
        ("/keel.workflows.v2.Workers/", Role::Worker),
        ("/keel.remote.v1.RemoteCalls/", Role::Remote),
    ])
}

/// The scheduler as keel-raft's extension: its state machine `machine`, and its services
/// (workflows, workers, remote calls), which start when the server does.
fn extension(
    machine: &SchedulerMachine,
    declarations: Vec<(String, String)>,
    dispatcher: Arc<Dispatcher>,
    peers: Arc<PeerSettings>,
    statuses: RemoteStatuses,
) -> Extension {
    let service_machine = machine.clone();
    Extension {
        app: Box::new(machine.clone()),
        services: Box::new(move |shared, routes| {
            // Before anything is served: status and runs read values through it.
            service_machine.set_values(Arc::clone(shared.host.values()));
            let proposer = Proposer::new(shared.clone());
            let workers =
                WorkersService::new(proposer.clone(), service_machine.clone(), dispatcher);
            let peer = PeerService::new(
                shared.clone(),
                proposer.clone(),
                service_machine.clone(),
                peers,
            );
            let service = WorkflowService::new(proposer, service_machine, declarations, statuses);
            routes
                .add_service(
                    RemoteCallsServer::new(peer)
                        .max_decoding_message_size(MESSAGE_MAX_BYTES)
                        .max_encoding_message_size(MESSAGE_MAX_BYTES),
                )
                .add_service(
                    WorkflowsServer::new(service)
                        .max_decoding_message_size(MESSAGE_MAX_BYTES)
                        .max_encoding_message_size(MESSAGE_MAX_BYTES),
                )
                .add_service(
                    WorkersServer::new(workers)
                        .max_decoding_message_size(MESSAGE_MAX_BYTES)
                        .max_encoding_message_size(MESSAGE_MAX_BYTES),
                )
        }),
        method_roles: method_roles(),
    }
}

/// A running Keel node.
#[derive(Debug)]
pub struct Node {
    drivers: Drivers,
    engine: Engine,
    machine: SchedulerMachine,
    inner: RaftNode,
}

impl Node {
    /// Starts a node with `config` that runs the workflow kinds of `registry` (verifying
    /// its data directory first).
    ///
    /// # Errors
    /// Any verification or startup failure; nothing is served then.
    pub async fn start(
        config: NodeConfig,
        registry: Registry,
        settings: EngineSettings,
    ) -> Result<Self> {
        Self::start_with_peers(config, registry, settings, PeerSettings::default()).await
    }

    /// Starts a node as [`Node::start`] does, which also calls and is called by the remote
    /// clusters of `peers` (`scheduler/REMOTE.md`).
    ///
    /// # Errors
    /// Bad peer settings; any verification or startup failure. Nothing is served then.
    pub async fn start_with_peers(
        config: NodeConfig,
        registry: Registry,
        settings: EngineSettings,
        peers: PeerSettings,
    ) -> Result<Self> {
        peers.validate(config.security.insecure)?;
        let peers = Arc::new(peers);
        let statuses = RemoteStatuses::default();
        let machine = SchedulerMachine::new();
        let dispatcher = Arc::new(Dispatcher::default());
        let extension = extension(
            &machine,
            registry.declarations(),
            Arc::clone(&dispatcher),
            Arc::clone(&peers),
            RemoteStatuses::clone(&statuses),
        );
        let inner = RaftNode::start_with(config, Some(extension)).await?;
        // The services set it too (they may be served before this line; the engine starts
        // after it): whichever comes first.
        machine.set_values(Arc::clone(inner.shared().host.values()));
        let engine = Engine::start(
            inner.shared().clone(),
            machine.clone(),
            registry,
            settings,
            dispatcher,
        );
        let drivers = Drivers::start(
            inner.shared().clone(),
            Proposer::new(inner.shared().clone()),
            machine.clone(),
            peers,
            engine.watch_active(),
            RemoteStatuses::clone(&statuses),
        );
        let metrics_machine = machine.clone();
        inner
            .shared()
            .metrics
            .set_extension(keel_raft::metrics::ExtensionMetrics(Box::new(
                move |out, node| render_metrics(out, node, &metrics_machine, &statuses),
            )));
        Ok(Self {
            drivers,
            engine,
            machine,
            inner,
        })
    }

    /// The gRPC address clients and peers use.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr()
    }

    /// The plain replicated log this node serves.
    pub fn plain_log(&self) -> &PlainLog {
        &self.inner.shared().log
    }

    /// The scheduler's replicated state on this node.
    pub fn scheduler(&self) -> &SchedulerMachine {
        &self.machine
    }

    /// A proposer of scheduler commands on this node (effective while it leads).
    pub fn proposer(&self) -> Proposer {
        Proposer::new(self.inner.shared().clone())
    }

    /// What the driver of each remote reports on this node (empty unless it leads).
    pub fn remote_statuses(&self) -> std::collections::BTreeMap<String, RemoteStatus> {
        self.drivers.statuses()
    }

    /// The node's execution engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Whether this node runs its workflow kinds now: it leads, it caught up, and the
    /// cluster's state holds every kind it registered at the registered version.
    pub fn runs_workflows(&self) -> bool {
        self.engine.active_term().is_some() && {
            let state = self.machine.read();
            self.engine
                .declarations()
                .iter()
                .all(|(kind, version)| state.kinds().get(kind) == Some(version))
        }
    }

    /// Whether the cluster's state, as this node has applied it, declares every kind this
    /// node registered (at some version): the leader declared them, or this node's own
    /// remote worker did, so clients may start them.
    pub fn kinds_declared(&self) -> bool {
        let state = self.machine.read();
        self.engine
            .declarations()
            .iter()
            .all(|(kind, _)| state.kinds().contains_key(kind))
    }

    /// How many pending timers are due by the wall clock (with the time a test skipped),
    /// as this node has applied the state: zero once the leader fired every timer due.
    pub fn timers_due(&self) -> usize {
        let now_ms = keel_raft::clock::now_ms();
        self.machine
            .read()
            .timers()
            .in_due_order()
            .take_while(|(due_ms, _)| *due_ms <= now_ms)
            .count()
    }

    /// How many running workflows, as this node has applied the state, are neither parked
    /// nor blocked on a durable wait (a pending sleep, signal wait or child call): their
    /// code runs now, or is about to. Zero means every workflow waits for time, a signal
    /// or a child — what a test's time skip waits for before and after skipping.
    pub fn busy_workflows(&self) -> usize {
        let state = self.machine.read();
        state
            .running_workflows()
            .filter(|(_, w)| {
                !w.is_parked()
                    && !w.journal.iter().any(|entry| {
                        matches!(entry.state, EntryState::Pending { .. })
                            && !matches!(entry.kind, EntryKind::Step { .. })
                    })
            })
            .count()
    }

    /// The id of the leader this node knows of, if any.
    pub fn leader_id(&self) -> Option<u64> {
        self.inner.shared().leader_id()
    }

    /// Whether the node belongs to an initialized cluster.
    pub fn initialized(&self) -> bool {
        self.inner.shared().initialized()
    }

    /// Starts an election now instead of after the election timeout (a single-voter
    /// cluster leads at once on start).
    ///
    /// # Errors
    /// [`crate::Error::Stopped`] when Raft has stopped.
    pub async fn campaign(&self) -> Result<()> {
        self.inner
            .shared()
            .raft
            .trigger()
            .elect(false)
            .await
            .map_err(|fatal| crate::Error::Stopped(fatal.to_string()))
    }

    /// Resolves when the node stops by itself (a fatal storage error) or was stopped.
    pub async fn stopped(&self) {
        self.inner.stopped().await;
    }

    /// Stops the node: its runs first, then Raft and the server.
    pub async fn shutdown(self) {
        drop(self.drivers);
        drop(self.engine);
        self.inner.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use keel_raft::security::roles::proto_methods;

    use super::*;

    #[test]
    fn every_method_of_the_workflow_services_has_its_own_role() {
        let roles = method_roles();
        let methods = proto_methods(include_str!("../proto/workflows.proto"));
        assert_eq!(methods.len(), 14, "{methods:?}");
        for method in &methods {
            assert!(roles.names(method), "{method} has no role");
        }
        assert_eq!(
            roles.needed("/keel.workflows.v2.Workflows/Start"),
            Role::Write
        );
        assert_eq!(
            roles.needed("/keel.workflows.v2.Workers/Journal"),
            Role::Worker
        );
        assert_eq!(
            roles.needed("/keel.workflows.v2.Workflows/List"),
            Role::Read
        );
        let remote = proto_methods(include_str!("../proto/remote.proto"));
        assert_eq!(remote.len(), 5, "{remote:?}");
        for method in &remote {
            assert_eq!(roles.needed(method), Role::Remote, "{method}");
            assert!(
                !roles.allows(method, Role::Admin),
                "{method}: admin names no cluster"
            );
        }
        assert!(
            !roles.allows("/keel.workflows.v2.Workflows/List", Role::Remote),
            "another cluster reads nothing here"
        );
    }
}
