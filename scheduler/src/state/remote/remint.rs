//! A replaced identity (`scheduler/REMOTE.md` §3): an operator reminted the cluster's
//! identity because it was re-created from old data, so what its state holds of calls
//! between clusters belongs to a history other clusters may have moved past.
//!
//! As caller, every unresolved call fails (`caller-restored`: whether the callee took it
//! cannot be learned exactly once from old data) and every stream is dropped, binding and
//! seqs with it: the next call starts a new stream at seq 1 under the new identity. The old
//! streams' withdrawals and cancels go too; their callees cancel those calls at their
//! deadlines. As callee, every record is forgotten (a running workflow is cancelled,
//! `callee-restored`) and every watermark dropped: callers meet a new callee and must
//! rebind. A callee command addressed to the old identity and applied after this is refused
//! (`Rejection::IdentityReplaced`).

use crate::state::{Apply, SchedulerState};

impl SchedulerState {
    /// Ends both sides' calls between clusters for an identity replaced at `apply.at`.
    pub(in crate::state) fn end_remote_dealings(&mut self, apply: &mut Apply<'_>) {
        let index = apply.at.index;
        // The callee side first: a cancelled workflow's own calls become withdrawals and
        // cancels in the caller streams, which go next.
        let records: Vec<(String, u64)> = self
            .remote
            .incoming
            .iter()
            .flat_map(|(caller, incoming)| {
                incoming
                    .records
                    .keys()
                    .map(move |&seq| (caller.clone(), seq))
            })
            .collect();
        let reason =
            format!("callee-restored: this cluster's identity was replaced at index {index}");
        for (caller, seq) in records {
            self.forget(apply, &caller, seq, &reason);
        }
        self.remote.incoming.clear();
        let remotes: Vec<String> = self.remote.outgoing.keys().cloned().collect();
        for remote in remotes {
            let message = format!(
                "caller-restored: this cluster's identity was replaced at index {index}; \
                 whether {remote} took this call cannot be learned"
            );
            self.fail_stream(apply, &remote, &message);
        }
        self.remote.outgoing.clear();
        self.remote.replaced_at = index;
        apply.effects.push(crate::state::Effect::RemoteChanged);
    }
}
