//! Deliberate faults, compiled only into the sabotage build (cargo feature `sabotage`, built
//! in its own target directory) so that the failure harness can prove its checkers fail.
//! The fault is chosen at run time by the environment variable [`ENV`] and announced in the
//! node's log at start ([`announce`]); the real build has none of this code.

use std::sync::OnceLock;

/// The environment variable naming the fault.
pub const ENV: &str = "KEEL_SABOTAGE";

/// The faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Linearizable reads are served from the local state without a read index.
    StaleReads,
    /// The timer driver delivers fires to watchers when it proposes them, with a token that
    /// never committed.
    UnfencedFires,
    /// The log store acknowledges appends to openraft at once and never asks for their
    /// `fdatasync`: they stay in the page cache until the kernel writes them back.
    AckBeforeFsync,
    /// A conflict truncation starts one entry early: the last entry that matched the
    /// leader is removed with the conflicting ones.
    OffByOneTruncation,
    /// A write of a session the state machine does not hold is applied as if the session
    /// were new, as a table that silently forgot expired clients did: a late retry of an
    /// expired session's write is applied a second time.
    ForgetfulSessions,
    /// A relative timer's due time and delay are computed from half the delay it was given
    /// (a unit slip), consistently on every node: its fire is stamped after its recorded
    /// due time, so only the client's clock shows it came early.
    HalvedDelays,
    /// A new leader does not claim the workflows that were running: those an earlier
    /// leader ran stay running with nobody driving them.
    NoTakeover,
    /// A fire's answer lists the timers it fired in the order of this process's hash seed,
    /// as iterating a `HashMap` would: replicas answer the same command differently while
    /// their states stay equal, so no client read shows it; only replicas' digests differ.
    UnorderedAnswers,
    /// Runs are not fenced: the state machine takes a run's journal commands whatever fence
    /// they carry, the workers service forwards them without checking the worker's lease,
    /// and a worker whose session ended lets its runs go on. A paused worker's run, resumed
    /// after another worker took its workflow over, records into a journal it no longer
    /// holds.
    UnfencedRuns,
    /// Relocation leaves out the newest live value of each range it moves out of the log:
    /// the state still references it, its log entry is purged, and reading it back fails.
    DroppedValues,
    /// A callee deduplicates calls from other clusters by the records it holds, as a
    /// time-window table would, not by the stream's watermark: a start whose record was
    /// forgotten (acknowledged, or past its deadline and grace) is started again.
    WindowDedup,
}

/// The fault this process runs with, if any.
pub fn fault() -> Option<Fault> {
    static FAULT: OnceLock<Option<Fault>> = OnceLock::new();
    *FAULT.get_or_init(|| match std::env::var(ENV).as_deref() {
        Ok("stale-reads") => Some(Fault::StaleReads),
        Ok("unfenced-fires") => Some(Fault::UnfencedFires),
        Ok("ack-before-fsync") => Some(Fault::AckBeforeFsync),
        Ok("off-by-one-truncation") => Some(Fault::OffByOneTruncation),
        Ok("forgetful-sessions") => Some(Fault::ForgetfulSessions),
        Ok("halved-delays") => Some(Fault::HalvedDelays),
        Ok("no-takeover") => Some(Fault::NoTakeover),
        Ok("unordered-answers") => Some(Fault::UnorderedAnswers),
        Ok("unfenced-runs") => Some(Fault::UnfencedRuns),
        Ok("dropped-values") => Some(Fault::DroppedValues),
        Ok("window-dedup") => Some(Fault::WindowDedup),
        _ => None,
    })
}

/// Whether `fault` is on.
pub fn on(fault: Fault) -> bool {
    self::fault() == Some(fault)
}

/// Where a conflict truncation starts: under [`Fault::OffByOneTruncation`] one entry too
/// early, so the last matching entry goes too.
pub fn truncation_start(from: u64) -> u64 {
    if on(Fault::OffByOneTruncation) {
        from.saturating_sub(1)
    } else {
        from
    }
}

/// Logs the fault loudly (the harness refuses to call a run valid after this line).
pub fn announce() {
    if let Some(fault) = fault() {
        tracing::error!(?fault, "SABOTAGE: this node runs with a deliberate fault");
    }
}
