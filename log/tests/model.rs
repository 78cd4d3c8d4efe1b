//! Property test: random appends, truncations, purges and reopens against an in-memory model.
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    reason = "test helpers panic on failure; sizes are small"
)]

mod common;

use common::{Bytes, encode, entries, read_all, small_options, value};
use keel_log::{Log, LogId};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Append { count: u64, new_term: bool },
    Truncate { back: u64 },
    Purge { from_last: i64 },
    Reopen,
    Vote(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u64..40, any::<bool>()).prop_map(|(count, new_term)| Op::Append { count, new_term }),
        2 => (0u64..60).prop_map(|back| Op::Truncate { back }),
        2 => (-80i64..5).prop_map(|from_last| Op::Purge { from_last }),
        1 => Just(Op::Reopen),
        1 => any::<u8>().prop_map(Op::Vote),
    ]
}

/// What the log should hold.
#[derive(Debug, Default)]
struct Model {
    records: Vec<(LogId, Bytes)>,
    purged: Option<LogId>,
    next: Option<u64>,
    term: u64,
    vote: Option<Vec<u8>>,
}

impl Model {
    fn apply(&mut self, log: &Log<Bytes>, op: &Op, salt: u64) {
        match *op {
            Op::Append { count, new_term } => {
                let first = self.next.unwrap_or(0);
                self.term += u64::from(new_term);
                let values: Vec<_> = (first..first + count).map(|i| value(i, salt)).collect();
                let encoded: Vec<_> = values.iter().map(encode).collect();
                let entries = entries(self.term, first, &encoded);
                log.append(&entries).unwrap();
                for (value, index) in values.into_iter().zip(first..) {
                    self.records.push((LogId::new(self.term, index), value));
                }
                self.next = Some(first + count);
            }
            Op::Truncate { back } => {
                let Some(next) = self.next else { return };
                let index = next.saturating_sub(back);
                if self.purged.is_some_and(|p| index <= p.index) {
                    assert!(log.truncate_from(index).is_err());
                    return;
                }
                log.truncate_from(index).unwrap();
                if index < next {
                    self.records.retain(|(id, _)| id.index < index);
                    self.next = Some(index);
                    // Replacements may carry a lower term than the records they replace.
                    let before = self.records.last().map(|r| r.0.term);
                    self.term = before.or(self.purged.map(|p| p.term)).unwrap_or(0);
                }
            }
            Op::Purge { from_last } => {
                let last = self
                    .records
                    .last()
                    .map_or(self.purged.map_or(0, |p| p.index), |r| r.0.index);
                let Some(index) = last.checked_add_signed(from_last) else {
                    return;
                };
                let term = self
                    .records
                    .iter()
                    .find(|r| r.0.index == index)
                    .map_or(self.term, |r| r.0.term);
                let upto = LogId::new(term, index);
                log.purge_upto(upto).unwrap();
                if self.purged.is_some_and(|p| p.index >= index) {
                    return;
                }
                self.purged = Some(upto);
                self.records.retain(|(id, _)| id.index > index);
                if self.next.is_none_or(|n| n <= index) {
                    self.next = Some(index + 1);
                    self.term = self.term.max(term);
                }
            }
            Op::Vote(v) => {
                log.save_vote(&[v]).unwrap();
                self.vote = Some(vec![v]);
            }
            Op::Reopen => {}
        }
    }

    fn check(&self, log: &Log<Bytes>) {
        assert_eq!(read_all(log), self.records);
        let state = log.state().unwrap();
        assert_eq!(state.purged, self.purged);
        assert_eq!(state.first_index, self.records.first().map(|r| r.0.index));
        assert_eq!(state.last, self.records.last().map(|r| r.0).or(self.purged));
        assert_eq!(log.vote(), self.vote);
    }
}

proptest! {
    #[test]
    fn log_matches_a_model_through_appends_truncations_purges_and_reopens(
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::<Bytes>::open(dir.path(), small_options()).unwrap();
        let mut model = Model::default();
        for (step, op) in ops.iter().enumerate() {
            if matches!(op, Op::Reopen) {
                drop(log);
                log = Log::<Bytes>::open(dir.path(), small_options()).unwrap();
            }
            model.apply(&log, op, step as u64);
            model.check(&log);
        }
        drop(log);
        let log = Log::<Bytes>::open(dir.path(), small_options()).unwrap();
        model.check(&log);
    }
}
