//! Unit tests of the scheduler's transition function, by command family (as `state` splits
//! them), and the harness they share.

mod journal;
mod lifecycle;
mod schedules;
mod timers;

use super::*;
use crate::command::StepRecord;

const KIND: &str = "agent";

/// A state with kinds declared and a helper to apply commands at increasing indexes.
struct Harness {
    state: SchedulerState,
    index: u64,
    effects: Vec<Effect>,
}

impl Harness {
    fn new() -> Self {
        let mut harness = Self {
            state: SchedulerState::default(),
            index: 0,
            effects: Vec::new(),
        };
        harness.apply(
            0,
            Command::DeclareKinds {
                kinds: vec![(KIND.into(), "v1".into()), ("child".into(), "v1".into())],
            },
        );
        harness
    }

    fn apply(&mut self, stamp_ms: u64, command: Command) -> Answer {
        self.index += 1;
        self.effects.clear();
        let answer = self.state.apply(
            AppliedAt {
                term: 3,
                index: self.index,
            },
            Stamped {
                stamp_ms,
                mono: None,
                command,
            },
            &mut self.effects,
        );
        self.state.assert_consistent();
        answer
    }

    fn start(&mut self, id: &str) -> Answer {
        self.apply(
            100,
            Command::Start {
                id: id.into(),
                kind: KIND.into(),
                input: b"in".to_vec(),
            },
        )
    }

    fn step(&mut self, id: &str, fence: u64, seq: u32, name: &str, value: &str) -> Answer {
        self.apply(
            200,
            Command::Step {
                workflow: id.into(),
                fence,
                seq,
                name: name.into(),
                record: StepRecord::Done(Outcome::Ok(value.as_bytes().to_vec())),
            },
        )
    }

    fn fence(&self, id: &str) -> u64 {
        self.state.workflow(id).expect("workflow").fence
    }

    fn journal(&self, id: &str) -> Vec<JournalEntry> {
        self.state
            .workflow(id)
            .expect("workflow")
            .into_owned()
            .journal
    }

    fn fire_all(&mut self, stamp_ms: u64) -> Vec<u64> {
        let ids: Vec<u64> = self
            .state
            .timers()
            .in_due_order()
            .map(|(_, id)| id)
            .collect();
        match self.apply(stamp_ms, Command::FireTimers { ids }) {
            Answer::Fired { ids } => ids,
            other => panic!("unexpected answer {other:?}"),
        }
    }
}

fn done(value: &str) -> EntryState {
    EntryState::Done(StoredOutcome::Ok(Value::Inline(value.as_bytes().to_vec())))
}
