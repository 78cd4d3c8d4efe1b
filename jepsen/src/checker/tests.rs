//! The log checker on hand-made histories: each valid one passes, each broken one is
//! reported with the anomaly it holds.

use super::*;

/// A history under construction.
#[derive(Default)]
struct Builder {
    ops: Vec<Op>,
}

impl Builder {
    fn push(&mut self, time_ns: u64, process: u64, kind: OpType, call: Call) {
        self.ops.push(Op {
            index: self.ops.len() as u64,
            time_ns,
            process,
            kind,
            call,
            error: None,
        });
    }

    /// An operation by `process` over `[from, to]` ending `kind`: `call` with no offset
    /// when invoked, with `offset` when it completes.
    fn offset_op(
        &mut self,
        process: u64,
        (from, to): (u64, u64),
        kind: OpType,
        offset: Option<u64>,
        call: impl Fn(Option<u64>) -> Call,
    ) -> &mut Self {
        self.push(from, process, OpType::Invoke, call(None));
        self.push(to, process, kind, call(offset));
        self
    }

    /// An append by `process` over `[from, to]` ending `kind` (with `offset` when ok).
    fn append(
        &mut self,
        process: u64,
        value: &str,
        from: u64,
        to: u64,
        kind: OpType,
        offset: Option<u64>,
    ) -> &mut Self {
        self.offset_op(process, (from, to), kind, offset, |offset| Call::Append {
            value: value.into(),
            offset,
        })
    }

    /// A replay of `value` by `process` over `[from, to]` ending `kind`.
    fn replay(
        &mut self,
        process: u64,
        value: &str,
        from: u64,
        to: u64,
        kind: OpType,
        offset: Option<u64>,
    ) -> &mut Self {
        self.offset_op(process, (from, to), kind, offset, |offset| Call::Replay {
            value: value.into(),
            offset,
        })
    }

    fn read(
        &mut self,
        process: u64,
        from_offset: u64,
        records: &[(u64, &str)],
        next: u64,
        from: u64,
        to: u64,
    ) -> &mut Self {
        let invoke = Call::Read {
            node: 1,
            from: from_offset,
            records: Vec::new(),
            next_offset: None,
        };
        self.push(from, process, OpType::Invoke, invoke);
        let done = Call::Read {
            node: 1,
            from: from_offset,
            records: records.iter().map(|(o, v)| (*o, (*v).to_owned())).collect(),
            next_offset: Some(next),
        };
        self.push(to, process, OpType::Ok, done);
        self
    }

    fn sorted(&self) -> Vec<Op> {
        let mut ops = self.ops.clone();
        ops.sort_by_key(|op| op.time_ns);
        ops
    }
}

fn node(node: u64, log: &[&str]) -> FinalNode {
    FinalNode {
        node,
        log: log
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u64, (*v).to_owned()))
            .collect(),
    }
}

fn three(log: &[&str]) -> Vec<FinalNode> {
    vec![node(1, log), node(2, log), node(3, log)]
}

fn kinds(verdict: &LogVerdict) -> Vec<&str> {
    verdict.counts.keys().map(String::as_str).collect()
}

/// A valid history: two clients, sequential appends, a read after both.
fn valid() -> Builder {
    let mut b = Builder::default();
    b.append(1, "a", 0, 10, OpType::Ok, Some(0))
        .append(2, "b", 20, 30, OpType::Ok, Some(1))
        .append(1, "c", 40, 50, OpType::Info, None)
        .append(2, "d", 60, 70, OpType::Fail, None)
        .read(1, 0, &[(0, "a"), (1, "b"), (2, "c")], 3, 80, 90);
    b
}

#[test]
fn a_valid_history_passes() {
    let verdict = check_log(&valid().sorted(), &three(&["a", "b", "c"]));
    assert_eq!(verdict.validity, Validity::Valid, "{verdict:?}");
    assert_eq!(verdict.stats.appends_ok, 2);
    assert_eq!(verdict.stats.appends_unknown, 1);
    assert_eq!(verdict.stats.unknown_applied, 1);
    assert_eq!(verdict.stats.reads_ok, 1);
}

#[test]
fn an_unknown_append_may_be_missing() {
    let verdict = check_log(&valid().sorted()[..8], &three(&["a", "b"]));
    assert!(verdict.counts.is_empty(), "{verdict:?}");
    // The prefix holds no read: with linearizability checked zero times, no anomaly is not
    // enough for valid.
    assert_eq!(verdict.coverage["acknowledged reads compared"], 0);
    assert_eq!(verdict.validity, Validity::Unknown, "{verdict:?}");
}

#[test]
fn a_lost_acknowledged_append_is_found() {
    let verdict = check_log(&valid().sorted()[..4], &three(&["a"]));
    assert_eq!(kinds(&verdict), ["lost"]);
    assert_eq!(verdict.validity, Validity::Invalid);
}

#[test]
fn duplicates_phantoms_and_applied_failures_are_found() {
    let ops = valid().sorted();
    assert_eq!(
        kinds(&check_log(&ops, &three(&["a", "b", "c", "c"]))),
        ["duplicate"]
    );
    assert_eq!(
        kinds(&check_log(&ops, &three(&["a", "b", "c", "zz"]))),
        ["phantom"]
    );
    assert_eq!(
        kinds(&check_log(&ops, &three(&["a", "b", "c", "d"]))),
        ["failed-append-applied"]
    );
}

#[test]
fn replays_answered_or_refused_pass_and_one_applied_again_is_found() {
    let mut b = valid();
    b.replay(2, "a", 100, 110, OpType::Ok, Some(0))
        .replay(1, "b", 120, 130, OpType::Fail, None)
        .replay(1, "b", 140, 150, OpType::Info, None);
    let verdict = check_log(&b.sorted(), &three(&["a", "b", "c"]));
    assert_eq!(verdict.validity, Validity::Valid, "{verdict:?}");
    assert_eq!(
        (
            verdict.stats.replays_ok,
            verdict.stats.replays_refused,
            verdict.stats.replays_unknown
        ),
        (1, 1, 1)
    );
    // A replay of "b" applied a second time: acknowledged at a new offset.
    b.replay(2, "b", 160, 170, OpType::Ok, Some(3));
    let verdict = check_log(&b.sorted(), &three(&["a", "b", "c", "b"]));
    assert_eq!(kinds(&verdict), ["duplicate", "replay-applied-again"]);
}

#[test]
fn a_value_at_another_offset_than_acknowledged_is_found() {
    let ops = valid().sorted();
    let verdict = check_log(&ops, &three(&["b", "a", "c"]));
    assert!(
        kinds(&verdict).contains(&"two-values-at-one-offset"),
        "{verdict:?}"
    );
}

#[test]
fn realtime_order_violations_are_found() {
    let mut b = Builder::default();
    b.append(1, "a", 0, 10, OpType::Ok, Some(1))
        .append(2, "b", 20, 30, OpType::Ok, Some(0));
    let verdict = check_log(&b.sorted(), &three(&["b", "a"]));
    assert_eq!(kinds(&verdict), ["realtime-order"]);
}

#[test]
fn concurrent_appends_may_take_either_order() {
    let mut b = Builder::default();
    b.append(1, "a", 0, 30, OpType::Ok, Some(1))
        .append(2, "b", 10, 20, OpType::Ok, Some(0));
    let verdict = check_log(&b.sorted(), &three(&["b", "a"]));
    assert!(verdict.counts.is_empty(), "{verdict:?}");
}

#[test]
fn stale_and_wrong_reads_are_found() {
    let mut stale = Builder::default();
    stale
        .append(1, "a", 0, 10, OpType::Ok, Some(0))
        .append(1, "b", 20, 30, OpType::Ok, Some(1))
        .read(2, 0, &[(0, "a")], 1, 40, 50);
    assert_eq!(
        kinds(&check_log(&stale.sorted(), &three(&["a", "b"]))),
        ["stale-read"]
    );
    let mut wrong = Builder::default();
    wrong
        .append(1, "a", 0, 10, OpType::Ok, Some(0))
        .read(2, 0, &[(0, "x")], 1, 40, 50);
    assert_eq!(
        kinds(&check_log(&wrong.sorted(), &three(&["a"]))),
        ["bad-read"]
    );
}

#[test]
fn a_read_concurrent_with_an_append_may_miss_it() {
    let mut b = Builder::default();
    b.append(1, "a", 0, 50, OpType::Ok, Some(0))
        .read(2, 0, &[], 0, 10, 20);
    assert_eq!(
        check_log(&b.sorted(), &three(&["a"])).validity,
        Validity::Valid
    );
}

#[test]
fn diverging_nodes_and_gaps_are_found() {
    let ops = valid().sorted();
    let mut nodes = three(&["a", "b", "c"]);
    nodes[2] = node(3, &["a", "b"]);
    assert_eq!(kinds(&check_log(&ops, &nodes)), ["divergence"]);
    let mut gap = three(&["a", "b", "c"]);
    for n in &mut gap {
        n.log[2].0 = 5;
    }
    assert!(kinds(&check_log(&ops, &gap)).contains(&"gap"));
}

#[test]
fn no_final_state_is_unknown() {
    assert_eq!(
        check_log(&valid().sorted(), &[]).validity,
        Validity::Unknown
    );
}
