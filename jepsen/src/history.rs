//! The history of a run: every client operation's invocation and completion, and every
//! fault, on the harness's monotonic clock; written as JSON lines.
//!
//! An operation completes `ok` (it happened), `fail` (it certainly did not happen: the
//! cluster said it was not proposed, or refused it), or `info` (unknown: a timeout, or an
//! "outcome unknown" answer). A timed-out operation is `info`, never `fail`.

use std::io::{BufRead, Write};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// The process number of the nemesis; clients are numbered from 1.
pub const NEMESIS: u64 = 0;
/// Process numbers of fire watchers: this plus the watched node's id.
pub const WATCHERS: u64 = 1_000;

/// Invocation or completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    /// The operation begins.
    Invoke,
    /// It happened.
    Ok,
    /// It certainly did not happen.
    Fail,
    /// Unknown.
    Info,
}

/// What an operation does, and (on completion) what it saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "kebab-case")]
pub enum Call {
    /// Appends one unique value to the plain log.
    Append {
        /// The value.
        value: String,
        /// The offset it got (on `ok`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
    },
    /// Re-sends an acknowledged append of this process under its original `(session, seq)`,
    /// as a delayed duplicate of the request would arrive: `ok` when answered with its first
    /// answer (which must be its first offset), `fail` when refused (an older sequence, or
    /// an expired session). It must never append the value again.
    Replay {
        /// The value.
        value: String,
        /// The offset the answer names (on `ok`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
    },
    /// Reads the plain log linearizably at one node from an offset.
    Read {
        /// The node read.
        node: u64,
        /// The first offset asked for.
        from: u64,
        /// What it returned (on `ok`): `(offset, value)`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        records: Vec<(u64, String)>,
        /// The node's next offset at the read (on `ok`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next_offset: Option<u64>,
    },
    /// Schedules a named timer due `delay_ms` after the leader stamps it (relative), or at
    /// the wall-clock time `at_ms`, `delay_ms` after the harness's wall clock when it was
    /// invoked (absolute).
    Schedule {
        /// The timer's name.
        name: String,
        /// Its delay.
        delay_ms: u64,
        /// Its due time, ms since the Unix epoch, for an absolute timer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_ms: Option<u64>,
        /// Its due time by the leader's clock (on `ok`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        due_ms: Option<u64>,
    },
    /// A timer's fire as a node delivered it to the harness's watcher (recorded `ok` on
    /// arrival), with the fire's token.
    Fire {
        /// The delivering node.
        node: u64,
        /// The timer's name.
        name: String,
        /// The token's term.
        term: u64,
        /// The token's index.
        index: u64,
    },
    /// Starts a workflow with a unique id (its kind and input say what it must do).
    StartWorkflow {
        /// The workflow's id.
        id: String,
        /// Its kind.
        kind: String,
        /// Its input.
        input: String,
    },
    /// Waits for a workflow to finish; on `ok`, how it ended.
    AwaitWorkflow {
        /// The workflow's id.
        id: String,
        /// `completed`, `failed` or `cancelled` (on `ok`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<String>,
    },
    /// A fault begins (`invoke`) or is healed (`ok`).
    Fault {
        /// The nemesis.
        fault: String,
        /// Its target, readably.
        detail: String,
        /// The largest wall-clock offset the fault gives a node, in ms (clock faults).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        clock_offset_ms: Option<u64>,
    },
}

/// One history entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Position in the history.
    pub index: u64,
    /// Nanoseconds since the run began, on the harness's monotonic clock.
    pub time_ns: u64,
    /// The client process (the nemesis is [`NEMESIS`]).
    pub process: u64,
    /// Invocation or completion.
    #[serde(rename = "type")]
    pub kind: OpType,
    /// The operation.
    #[serde(flatten)]
    pub call: Call,
    /// Why it failed or is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A history being recorded by many tasks.
#[derive(Debug, Clone)]
pub struct Recorder {
    started: Instant,
    ops: Arc<Mutex<Vec<Op>>>,
}

impl Recorder {
    /// An empty history starting now.
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            ops: Arc::default(),
        }
    }

    /// Records an entry now; returns its time.
    ///
    /// # Panics
    /// If a recording task panicked while holding the history.
    pub fn record(&self, process: u64, kind: OpType, call: Call, error: Option<String>) -> u64 {
        let time_ns = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let mut ops = self.ops.lock().expect("history lock poisoned");
        let index = ops.len() as u64;
        ops.push(Op {
            index,
            time_ns,
            process,
            kind,
            call,
            error,
        });
        time_ns
    }

    /// How many operations were recorded so far.
    ///
    /// # Panics
    /// If a recording task panicked while holding the history.
    pub fn len(&self) -> usize {
        self.ops.lock().expect("history lock poisoned").len()
    }

    /// The operations recorded from position `start` on.
    ///
    /// # Panics
    /// If a recording task panicked while holding the history.
    pub fn ops_from(&self, start: usize) -> Vec<Op> {
        let ops = self.ops.lock().expect("history lock poisoned");
        ops.get(start..).map(<[Op]>::to_vec).unwrap_or_default()
    }

    /// Whether nothing was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The history so far.
    ///
    /// # Panics
    /// If a recording task panicked while holding the history.
    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().expect("history lock poisoned").clone()
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

/// Writes `ops` as JSON lines.
///
/// # Errors
/// The writer's errors.
pub fn write_jsonl(ops: &[Op], out: &mut impl Write) -> std::io::Result<()> {
    for op in ops {
        serde_json::to_writer(&mut *out, op)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Reads JSON lines written by [`write_jsonl`].
///
/// # Errors
/// The reader's errors, or a line that does not parse.
pub fn read_jsonl(input: impl BufRead) -> std::io::Result<Vec<Op>> {
    input
        .lines()
        .filter(|line| line.as_ref().map_or(true, |l| !l.trim().is_empty()))
        .map(|line| Ok(serde_json::from_str(&line?)?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histories_round_trip_through_json_lines() {
        let recorder = Recorder::new();
        recorder.record(
            1,
            OpType::Invoke,
            Call::Append {
                value: "1:0".into(),
                offset: None,
            },
            None,
        );
        recorder.record(
            1,
            OpType::Ok,
            Call::Read {
                node: 2,
                from: 0,
                records: vec![(0, "1:0".into())],
                next_offset: Some(1),
            },
            None,
        );
        recorder.record(
            NEMESIS,
            OpType::Invoke,
            Call::Fault {
                fault: "kill".into(),
                detail: "node 2".into(),
                clock_offset_ms: None,
            },
            Some("x".into()),
        );
        let ops = recorder.ops();
        let mut bytes = Vec::new();
        write_jsonl(&ops, &mut bytes).expect("write");
        let text = String::from_utf8(bytes.clone()).expect("utf8");
        assert!(
            text.lines().next().is_some_and(
                |l| l.contains("\"type\":\"invoke\"") && l.contains("\"f\":\"append\"")
            )
        );
        assert_eq!(read_jsonl(bytes.as_slice()).expect("read"), ops);
    }
}
