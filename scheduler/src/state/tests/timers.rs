//! Tests of timers: a sleep's fire, named timers and their fire records.

use super::*;

#[test]
fn a_sleep_fires_once_and_never_before_due() {
    let mut h = Harness::new();
    h.start("w");
    let slept = h.apply(
        1_000,
        Command::Sleep {
            workflow: "w".into(),
            fence: 2,
            seq: 0,
            due: Due::After { delay_ms: 500 },
        },
    );
    assert_eq!(slept, Answer::Entry(EntryState::Pending { attempts: 0 }));
    assert!(h.effects.contains(&Effect::TimerAdded {
        id: 1,
        relative: true,
        proposed: None,
        stamp_ms: 1_000
    }));
    assert!(h.fire_all(1_499).is_empty(), "not due before 1500");
    assert_eq!(h.journal("w")[0].state, EntryState::Pending { attempts: 0 });
    assert_eq!(h.fire_all(1_500), [1]);
    assert_eq!(h.journal("w")[0].state, done(""));
    assert_eq!(
        h.apply(2_000, Command::FireTimers { ids: vec![1] }),
        Answer::Fired { ids: Vec::new() },
        "a timer fires once"
    );
}

#[test]
fn named_timers_are_idempotent_by_name_and_record_their_fence_token() {
    let mut h = Harness::new();
    let schedule = |name: &str| Command::ScheduleTimer {
        name: name.into(),
        due: Due::At { at_ms: 5_000 },
        payload: b"p".to_vec(),
    };
    assert_eq!(
        h.apply(1, schedule("t")),
        Answer::Timer {
            id: 1,
            due_ms: 5_000,
            created: true
        }
    );
    assert_eq!(
        h.apply(2, schedule("t")),
        Answer::Timer {
            id: 1,
            due_ms: 5_000,
            created: false
        }
    );
    h.fire_all(5_000);
    let fired_at = h.index;
    assert!(matches!(
        &h.effects[..],
        [Effect::TimerRemoved { id: 1 }, Effect::NamedFired { record, .. }] if record.index == fired_at && record.term == 3
    ));
    assert!(matches!(h.state.named_timer("t"), Some(Err(record)) if record.fired_ms == 5_000));
    assert!(matches!(
        h.apply(6_000, schedule("t")),
        Answer::Timer { created: false, .. }
    ));
    assert!(
        h.state.timers().is_empty(),
        "a fired name is not rescheduled"
    );
}
