//! Proposes scheduler commands through this node's Raft leader path, stamped with the
//! leader's wall clock, and decodes the state machine's answers.

use keel_raft::clock::now_ms;
use keel_raft::multiplex::{AppTag, tagged};
use keel_raft::network::client_service::{ClientService, session_refusal};
use keel_raft::node::NodeShared;
use keel_raft::types::{ClientRequest, ClientResponse};
use keel_raft::wire_error::{WriteErrorKind, status};
use tonic::Status;

use crate::command::{self, Answer, Command, Stamped};

/// Proposes scheduler commands on one node (which must lead; others answer "not leader").
#[derive(Debug, Clone)]
pub struct Proposer {
    service: ClientService,
}

impl Proposer {
    /// A proposer on the node `shared`.
    pub fn new(shared: NodeShared) -> Self {
        Self {
            service: ClientService::new(shared),
        }
    }

    /// The node's client service (for linearizable reads).
    pub fn service(&self) -> &ClientService {
        &self.service
    }

    /// Proposes `command`, deduplicated as write `seq` of session `session` when given
    /// `(session, seq)`, and returns the state machine's answer.
    ///
    /// # Errors
    /// A status carrying a [`WriteErrorKind`]: whether the command may have been applied.
    pub async fn propose(
        &self,
        command: Command,
        session: Option<(u64, u64)>,
    ) -> Result<Answer, Status> {
        let stamped = Stamped {
            stamp_ms: now_ms(),
            mono: Some(crate::mono::now()),
            command,
        };
        let (session, seq) = session.unwrap_or((0, 0));
        let request = ClientRequest {
            session,
            seq,
            command: tagged(AppTag::Extension, &command::encode(&stamped)),
        };
        let response = self.service.propose(request).await?;
        match session_refusal(session, seq, response)? {
            ClientResponse::Applied { answer, .. } => {
                command::decode::<Answer>(&answer).map_err(|_| {
                    status(
                        WriteErrorKind::Invalid,
                        "this cluster's state machine runs no scheduler",
                    )
                })
            }
            other => Err(status(
                WriteErrorKind::Invalid,
                format!("a scheduler command was answered {other:?}"),
            )),
        }
    }
}
