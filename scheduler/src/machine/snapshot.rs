//! The scheduler snapshot's bytes: format 8 (magic, rkyv body, CRC32C) written and read,
//! formats 7, 6, 5, 4, 3 and 2 migrated on read, format 1 refused; the checks a snapshot passes
//! before it is restored, and why one is refused ([`SnapshotError`]).

use std::io;

use rkyv::{Archive, Deserialize, Serialize};

use crate::command::{self, Rejection};
use crate::state::format2::StateV2;
use crate::state::format4::StateV4;
use crate::state::format5::StateV5;
use crate::state::format6::StateV6;
use crate::state::format7::StateV7;
use crate::state::{CronRefused, Inconsistency, SchedulerState};

/// What a snapshot holds.
#[derive(Archive, Serialize, Deserialize, Debug)]
#[rkyv(attr(allow(missing_docs, reason = "rkyv's archived twin of a documented type")))]
pub(super) struct SnapshotBody {
    pub(super) state: SchedulerState,
    pub(super) digest: u64,
}

/// Format 7's body, read to migrate it.
#[derive(Archive, Serialize, Deserialize, Debug)]
struct SnapshotBodyV7 {
    state: StateV7,
    digest: u64,
}

/// Format 6's body, read to migrate it.
#[derive(Archive, Serialize, Deserialize, Debug)]
struct SnapshotBodyV6 {
    state: StateV6,
    digest: u64,
}

/// Format 5's body, read to migrate it.
#[derive(Archive, Serialize, Deserialize, Debug)]
struct SnapshotBodyV5 {
    state: StateV5,
    digest: u64,
}

/// Format 4's (and 3's) body, read to migrate it.
#[derive(Archive, Serialize, Deserialize, Debug)]
struct SnapshotBodyV4 {
    state: StateV4,
    digest: u64,
}

/// Format 2's body, read to migrate it.
#[derive(Archive, Serialize, Deserialize, Debug)]
struct SnapshotBodyV2 {
    state: StateV2,
    digest: u64,
}

/// The scheduler snapshot's first bytes; a CRC32C of the rkyv bytes follows them at the end.
/// Format 8 holds finished workflows packed ([`FinishedWorkflow`]: postcard bytes beside
/// their status and finish time), running ones whole, inputs, outcomes and signal
/// payloads as [`Value`]s (by reference to the log entry that recorded them, or inline),
/// and both sides of calls between clusters ([`RemoteState`]) with the index of the last
/// identity replacement and the index that enabled them.
///
/// [`FinishedWorkflow`]: crate::state::FinishedWorkflow
/// [`Value`]: crate::command::Value
/// [`RemoteState`]: crate::state::RemoteState
const SNAPSHOT_MAGIC: &[u8; 8] = b"KEELSCH8";
/// Format 7 (no identity replacement, no enabling index): migrated on restore.
const SNAPSHOT_MAGIC_V7: &[u8; 8] = b"KEELSCH7";
/// Format 6 (no calls between clusters): migrated on restore.
const SNAPSHOT_MAGIC_V6: &[u8; 8] = b"KEELSCH6";
/// Format 5 (every workflow whole in one map): migrated on restore.
const SNAPSHOT_MAGIC_V5: &[u8; 8] = b"KEELSCH5";
/// Format 4 (parked workflows; every value inline): migrated on restore.
const SNAPSHOT_MAGIC_V4: &[u8; 8] = b"KEELSCH4";
/// Format 3 (each schedule's parsed cron spec and the state's last applied index): format
/// 4's layout without parked workflows, migrated as it.
const SNAPSHOT_MAGIC_V3: &[u8; 8] = b"KEELSCH3";
/// Format 2 (each journal entry's fence; schedules without their parsed spec): migrated on
/// restore.
const SNAPSHOT_MAGIC_V2: &[u8; 8] = b"KEELSCH2";
/// Format 1 (no journal fences), written before any release; never read.
const SNAPSHOT_MAGIC_V1: &[u8; 8] = b"KEELSCH1";

/// Why a scheduler snapshot is refused (carried as the source of the `InvalidData`
/// [`io::Error`] that [`Application::restore`] returns; the node then refuses the install
/// or the start).
///
/// [`Application::restore`]: keel_raft::application::Application::restore
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

/// The body of a scheduler snapshot, checked: magic, checksum, archive (formats 7, 6, 5, 4,
/// 3 and 2 migrated), consistency.
pub(super) fn decode_snapshot(bytes: &[u8]) -> Result<SnapshotBody, SnapshotError> {
    if bytes.starts_with(SNAPSHOT_MAGIC_V1) {
        return Err(SnapshotError::Format1);
    }
    let (body, format) = if let Some(body) = bytes.strip_prefix(SNAPSHOT_MAGIC) {
        (body, 8)
    } else if let Some(body) = bytes.strip_prefix(SNAPSHOT_MAGIC_V7) {
        (body, 7)
    } else if let Some(body) = bytes.strip_prefix(SNAPSHOT_MAGIC_V6) {
        (body, 6)
    } else if let Some(body) = bytes.strip_prefix(SNAPSHOT_MAGIC_V5) {
        (body, 5)
    } else if let Some(body) = bytes
        .strip_prefix(SNAPSHOT_MAGIC_V4)
        .or_else(|| bytes.strip_prefix(SNAPSHOT_MAGIC_V3))
    {
        (body, 4)
    } else {
        let body = bytes
            .strip_prefix(SNAPSHOT_MAGIC_V2)
            .ok_or(SnapshotError::NotScheduler)?;
        (body, 2)
    };
    let (body, crc) = body
        .split_last_chunk::<4>()
        .ok_or(SnapshotError::TooShort)?;
    if crc32c::crc32c(body).to_le_bytes() != *crc {
        return Err(SnapshotError::Checksum);
    }
    let decode_failed = |_: Rejection| SnapshotError::Decode;
    let body = match format {
        8 => command::decode::<SnapshotBody>(body).map_err(decode_failed)?,
        7 => {
            let old = command::decode::<SnapshotBodyV7>(body).map_err(decode_failed)?;
            SnapshotBody {
                state: old.state.upgrade(),
                digest: old.digest,
            }
        }
        6 => {
            let old = command::decode::<SnapshotBodyV6>(body).map_err(decode_failed)?;
            SnapshotBody {
                state: old.state.upgrade(),
                digest: old.digest,
            }
        }
        5 => {
            let old = command::decode::<SnapshotBodyV5>(body).map_err(decode_failed)?;
            SnapshotBody {
                state: old.state.upgrade(),
                digest: old.digest,
            }
        }
        4 => {
            let old = command::decode::<SnapshotBodyV4>(body).map_err(decode_failed)?;
            SnapshotBody {
                state: old.state.upgrade(),
                digest: old.digest,
            }
        }
        _ => {
            let old = command::decode::<SnapshotBodyV2>(body).map_err(decode_failed)?;
            SnapshotBody {
                state: old.state.upgrade()?.upgrade(),
                digest: old.digest,
            }
        }
    };
    body.state.consistency()?;
    Ok(body)
}

/// Writes a snapshot of `state` and `digest` to `out`: magic, archive, checksum (the
/// archive written as it is, not copied into a frame first).
pub(super) fn write_snapshot(
    out: &mut dyn io::Write,
    state: SchedulerState,
    digest: u64,
) -> io::Result<()> {
    // The aligned archive itself: `command::encode` would copy it into a `Vec`.
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&SnapshotBody { state, digest })
        .map_err(io::Error::other)?;
    out.write_all(SNAPSHOT_MAGIC)?;
    out.write_all(&bytes)?;
    out.write_all(&crc32c::crc32c(&bytes).to_le_bytes())
}

/// A snapshot of `state` and `digest`, framed as [`write_snapshot`] frames it.
#[cfg(test)]
fn encode_snapshot(state: SchedulerState, digest: u64) -> Vec<u8> {
    let mut out = Vec::new();
    write_snapshot(&mut out, state, digest).expect("a Vec takes every write");
    out
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
    use bytes::Bytes;
    use keel_raft::application::{Application, AppliedAt};

    use super::*;
    use crate::command::Stamped;
    use crate::command::{Command, Due};
    use crate::machine::SchedulerMachine;

    /// Format 2 snapshots written by the build before format 3 (commit 650de1f) from: kinds
    /// declared, workflow `w` started at index 2 and asleep (timer 1), named timer `t` fired
    /// at index 5, named timer `u` pending (timer 3), and schedule `nightly` registered at
    /// 2026-01-01T00:00:00.004Z (timer 4) with `0 3 * * *` — or, in the second, `0 3 L * *`,
    /// which format 2 accepted.
    const FORMAT2: &[u8] = include_bytes!("../../tests/fixtures/keelsch2.snap");
    const FORMAT2_CRON_L: &[u8] = include_bytes!("../../tests/fixtures/keelsch2-cron-l.snap");
    /// Format 3, as the build before parking wrote it (the state of `FORMAT2`, migrated).
    const FORMAT3: &[u8] = include_bytes!("../../tests/fixtures/keelsch3.snap");
    /// Format 5, as the build before packed finished workflows wrote it (commit c21fb69):
    /// kind `k` declared; `done` started at 2 with a 40-byte input, claimed at 3, step `s`
    /// recorded at 4 and finished at 5 (40-byte result and output); `running` started at 6
    /// with a short input, claimed at 7, step `s` recorded at 8. Values over 32 bytes are
    /// held by reference to the command that recorded them.
    const FORMAT5: &[u8] = include_bytes!("../../tests/fixtures/keelsch5.snap");
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

    /// Formats 3 and 4 share a layout (format 4 added a status value), every value inline:
    /// both are migrated, their values held inline, and written again as format 8. The
    /// format 3 fixture was written by the build before parking existed (format 2's state,
    /// migrated); its format 4 twin is the same bytes under format 4's magic.
    #[test]
    fn formats_3_and_4_are_migrated_with_their_values_inline_and_written_as_format_8() {
        let mut format4 = FORMAT3.to_vec();
        format4[..8].copy_from_slice(b"KEELSCH4");
        for old in [FORMAT3, format4.as_slice()] {
            let mut machine = SchedulerMachine::new();
            machine
                .restore(&mut &old[..])
                .expect("an old snapshot is read");
            let migrated = machine.read().clone();
            let workflow = migrated.workflow("w").expect("w");
            assert_eq!(workflow.fence, 2);
            assert!(matches!(workflow.input, crate::command::Value::Inline(_)));
            assert!(
                migrated.recorded_values().is_empty(),
                "nothing by reference"
            );
            let mut bytes = Vec::new();
            machine.write_snapshot(&mut bytes).expect("snapshot");
            assert!(bytes.starts_with(b"KEELSCH8"));
            let again = decode_snapshot(&bytes).expect("format 8 reads back");
            assert_eq!(again.state, migrated);
        }
    }

    /// Format 5 held every workflow whole: its finished workflow is packed on restore (and
    /// unpacks to what format 5 held, values by reference kept), its running one stays
    /// whole, and the state is written again as format 8 and reads back equal.
    #[test]
    fn format_5_is_migrated_with_its_finished_workflows_packed() {
        use crate::command::{EntryState, StoredOutcome, Value, WorkflowStatus};
        use keel_raft::values::ValueRef;
        let mut machine = SchedulerMachine::new();
        machine
            .restore(&mut &FORMAT5[..])
            .expect("a format 5 snapshot migrates");
        let migrated = machine.read().clone();
        assert_eq!(
            migrated.workflow_counts(),
            (1, 1),
            "one running, one finished"
        );
        let done = migrated.workflow("done").expect("done").into_owned();
        assert_eq!(done.status, WorkflowStatus::Completed);
        assert_eq!(done.fence, 3);
        let at = |index| {
            Value::Recorded(ValueRef {
                index,
                offset: 0,
                len: 40,
            })
        };
        assert_eq!(done.input, at(2));
        assert_eq!(
            done.journal[0].state,
            EntryState::Done(StoredOutcome::Ok(at(4)))
        );
        assert_eq!(done.outcome, Some(StoredOutcome::Ok(at(5))));
        let running = migrated.workflow("running").expect("running");
        assert_eq!(running.status, WorkflowStatus::Running);
        assert_eq!(running.input, Value::Inline(b"short".to_vec()));
        let mut recorded: Vec<u64> = migrated.recorded_values().iter().map(|v| v.index).collect();
        recorded.sort_unstable();
        assert_eq!(recorded, [2, 4, 5, 8]);
        let mut bytes = Vec::new();
        machine.write_snapshot(&mut bytes).expect("snapshot");
        assert!(bytes.starts_with(b"KEELSCH8"));
        let again = decode_snapshot(&bytes).expect("format 8 reads back");
        assert_eq!(again.state, migrated);
    }

    /// The commands behind the format 6 fixture: every journal entry kind (a step with a
    /// 40-byte result, a sleep that fired, a signal wait with a timeout pending, a call),
    /// every timer target of format 6 (an entry, a named timer, a schedule), a fired named
    /// timer and a finished workflow.
    #[expect(
        clippy::too_many_lines,
        reason = "one command per line of the fixture's history"
    )]
    fn format6_fixture_commands() -> Vec<Command> {
        use crate::command::{Outcome, Owner, StepRecord};
        let w = || "w".to_owned();
        vec![
            Command::DeclareKinds {
                kinds: vec![("k".into(), "1".into())],
            },
            Command::Start {
                id: w(),
                kind: "k".into(),
                input: vec![7; 40],
            },
            Command::Claim {
                workflow: w(),
                owner: Owner::Worker { worker: 9 },
            },
            Command::Step {
                workflow: w(),
                fence: 3,
                seq: 0,
                name: "s".into(),
                record: StepRecord::Done(Outcome::Ok(vec![1; 40])),
            },
            Command::Sleep {
                workflow: w(),
                fence: 3,
                seq: 1,
                due: Due::After { delay_ms: 1000 },
            },
            Command::FireTimers { ids: vec![1] },
            Command::FireTimers { ids: vec![1] },
            Command::WaitSignal {
                workflow: w(),
                fence: 3,
                seq: 2,
                signal: "go".into(),
                timeout_ms: Some(60_000),
            },
            Command::Call {
                workflow: w(),
                fence: 3,
                seq: 3,
                kind: "k".into(),
                input: vec![2; 3],
            },
            Command::ScheduleTimer {
                name: "u".into(),
                due: Due::At {
                    at_ms: MIDNIGHT_MS + 3_600_000,
                },
                payload: vec![3],
            },
            Command::ScheduleTimer {
                name: "f".into(),
                due: Due::At { at_ms: MIDNIGHT_MS },
                payload: vec![4],
            },
            Command::FireTimers { ids: vec![4] },
            Command::RegisterSchedule {
                name: "nightly".into(),
                cron: "0 3 * * *".into(),
                kind: "k".into(),
                input: vec![],
            },
            Command::Start {
                id: "done".into(),
                kind: "k".into(),
                input: vec![],
            },
            Command::Claim {
                workflow: "done".into(),
                owner: Owner::Leader { node: 1, term: 3 },
            },
            Command::Finish {
                workflow: "done".into(),
                fence: 15,
                outcome: Outcome::Err("no".into()),
            },
        ]
    }

    /// Format 6, written by the build before remote calls (commit 7fad2da) from
    /// [`format6_fixture_commands`] applied at indexes 1.. (the first five at midnight, the
    /// rest two seconds later), is migrated to exactly the state this build reaches from the
    /// same commands: the layouts of workflows and timers it shares with format 8 read the
    /// same, and the state has no remote calls.
    #[test]
    fn format_6_is_migrated_to_the_state_the_same_commands_reach() {
        const FORMAT6: &[u8] = include_bytes!("../../tests/fixtures/keelsch6.snap");
        let mut migrated = SchedulerMachine::new();
        migrated
            .restore(&mut &FORMAT6[..])
            .expect("a format 6 snapshot migrates");
        let replayed = replay_fixture(Vec::new());
        assert_eq!(*migrated.read(), *replayed.read());
        assert_eq!(
            migrated.read().timers().len(),
            3,
            "every target kind pending"
        );
        assert_eq!(migrated.read().remote().outgoing_streams().count(), 0);
    }

    /// The remote commands applied after [`format6_fixture_commands`] behind the format 7
    /// fixture: workflow `w` calls remote `r` (a 40-byte input, held by reference) and the
    /// stream binds; as callee, one call of `caller` is taken and runs, another refused.
    fn format7_remote_commands() -> Vec<Command> {
        use crate::command::{CallId, InboundStart};
        let bound_to = format!("callee.{}", "ab".repeat(16));
        let calling = format!("caller.{}", "cd".repeat(16));
        let inbound = |seq: u64, kind: &str| InboundStart {
            seq,
            call: CallId {
                index: 40 + seq,
                workflow: "there".into(),
                position: 0,
            },
            withdrawn: false,
            kind: kind.into(),
            input: vec![6; 4],
            deadline_ms: MIDNIGHT_MS + 600_000,
            refusal: None,
        };
        vec![
            Command::RemoteCall {
                workflow: "w".into(),
                fence: 3,
                seq: 4,
                remote: "r".into(),
                kind: "k".into(),
                input: vec![5; 40],
                deadline_after_ms: 60_000,
            },
            Command::RemoteBind {
                remote: "r".into(),
                callee: bound_to,
            },
            Command::RemoteStart {
                caller: calling,
                callee_index: 1,
                items: vec![inbound(1, "k"), inbound(2, "unknown")],
                grace_ms: 30_000,
                deadline_max_ms: 3_600_000,
            },
        ]
    }

    /// The state the fixtures' histories reach: [`format6_fixture_commands`] and then
    /// `more`, applied at indexes 1.. (the first five at midnight, the rest two seconds later).
    fn replay_fixture(more: Vec<Command>) -> SchedulerMachine {
        let mut replayed = SchedulerMachine::new();
        for (index, command) in (1..).zip(format6_fixture_commands().into_iter().chain(more)) {
            let stamp_ms = if index <= 6 {
                MIDNIGHT_MS
            } else {
                MIDNIGHT_MS + 2000
            };
            apply(&mut replayed, index, stamp_ms, command);
        }
        replayed
    }

    /// Format 7, written by the build before remints (commit 23d4ea6) from the format 6
    /// history and [`format7_remote_commands`], is migrated to the state the same commands
    /// reach: its outbox, binding, watermark and records read the same, no identity was
    /// replaced, and calls between clusters are not enabled yet.
    #[test]
    fn format_7_is_migrated_to_the_state_the_same_commands_reach() {
        const FORMAT7: &[u8] = include_bytes!("../../tests/fixtures/keelsch7.snap");
        let mut migrated = SchedulerMachine::new();
        migrated
            .restore(&mut &FORMAT7[..])
            .expect("a format 7 snapshot migrates");
        let replayed = replay_fixture(format7_remote_commands());
        assert_eq!(*migrated.read(), *replayed.read());
        let state = migrated.read();
        let outgoing = state.remote().outgoing("r").expect("the stream to r");
        assert_eq!(outgoing.outbox.len(), 1, "one call pending");
        assert!(outgoing.binding.is_some());
        let caller = format!("caller.{}", "cd".repeat(16));
        let incoming = state
            .remote()
            .incoming(&caller)
            .expect("the stream from caller");
        assert_eq!(incoming.watermark, 2);
        assert_eq!(incoming.records.len(), 2, "one running, one refused");
        assert_eq!(state.remote().replaced_at(), 0);
        assert!(!state.remote().enabled());
    }

    /// A call waiting for the gate is woken by a snapshot installed with remote calls
    /// enabled, not only by applying `RemoteEnabled` itself.
    #[tokio::test]
    async fn a_restored_snapshot_that_enabled_remote_calls_wakes_their_waiters() {
        let mut enabled = SchedulerMachine::new();
        apply(&mut enabled, 1, MIDNIGHT_MS, Command::RemoteEnabled);
        let mut bytes = Vec::new();
        enabled.write_snapshot(&mut bytes).expect("snapshot");
        let mut machine = SchedulerMachine::new();
        let waiting = machine.clone();
        let waiter = tokio::spawn(async move { waiting.remote_calls_enabled().await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "not enabled yet");
        machine.restore(&mut bytes.as_slice()).expect("restore");
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the waiter was woken")
            .expect("joined");
    }

    /// A snapshot's image is the state when it was taken: commands applied after it (the
    /// host applies them while the image is encoded) are not in what it writes.
    #[test]
    fn an_image_holds_the_state_it_was_taken_from_not_what_applied_after() {
        let mut machine = SchedulerMachine::new();
        machine.restore(&mut &FORMAT5[..]).expect("format 5");
        let before = machine.read().clone();
        let image = machine.snapshot_image();
        apply(
            &mut machine,
            9,
            MIDNIGHT_MS + 9,
            Command::Start {
                id: "later".into(),
                kind: "k".into(),
                input: Vec::new(),
            },
        );
        assert!(machine.read().workflow("later").is_some());
        let mut bytes = Vec::new();
        image.write(&mut bytes).expect("write");
        let written = decode_snapshot(&bytes).expect("decodes");
        assert_eq!(written.state, before);
        assert!(written.state.workflow("later").is_none());
    }

    /// A format 7 snapshot whose finished workflow's record is damaged (its checksum made
    /// valid again, as a bug writing it would leave it) is refused as inconsistent, naming
    /// the workflow, rather than restored to panic on the first read.
    #[test]
    fn a_snapshot_with_a_damaged_packed_record_is_refused() {
        let mut machine = SchedulerMachine::new();
        machine.restore(&mut &FORMAT5[..]).expect("format 5");
        let (state, digest) = (machine.read().clone(), 0);
        let damaged = codec::encode(state.with_damaged_record_for_test("done"), digest);
        let error = SchedulerMachine::new()
            .restore(&mut damaged.as_slice())
            .expect_err("a record that does not decode");
        assert!(
            matches!(
                SnapshotError::of(&error),
                Some(SnapshotError::Inconsistent(Inconsistency::Unpackable { workflow, .. }))
                    if workflow == "done"
            ),
            "{error}"
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
        restored.restore(&mut again.as_slice()).expect("format 7");
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
