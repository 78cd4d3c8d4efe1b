//! Tests of cron schedules: registration, refusals, occurrences.

use super::*;

#[test]
fn cron_schedules_start_workflows_and_refuse_bad_expressions() {
    let mut h = Harness::new();
    let register = |cron: &str| Command::RegisterSchedule {
        name: "nightly".into(),
        cron: cron.into(),
        kind: KIND.into(),
        input: Vec::new(),
    };
    assert!(matches!(
        h.apply(0, register("every night")),
        Answer::Rejected(Rejection::InvalidCron { .. })
    ));
    // 2026-01-01T00:00:00Z, every minute.
    let midnight = 1_767_225_600_000;
    assert_eq!(h.apply(midnight, register("* * * * *")), Answer::Done);
    assert!(h.fire_all(midnight + 59_999).is_empty());
    assert_eq!(h.fire_all(midnight + 60_000).len(), 1);
    let id = format!("nightly@{}", midnight + 60_000);
    assert!(
        h.state.workflow(&id).is_some(),
        "the occurrence started {id}"
    );
    let next: Vec<u64> = h
        .state
        .timers()
        .in_due_order()
        .map(|(due, _)| due)
        .collect();
    assert_eq!(next, [midnight + 120_000]);
}

#[test]
fn an_invalid_cron_expression_is_refused_at_registration_identically_on_every_replica() {
    let (mut first, mut second) = (Harness::new(), Harness::new());
    for cron in ["every night", "0 0 L * *", "0 0 30 2 *", "61 * * * *"] {
        let register = || Command::RegisterSchedule {
            name: "nightly".into(),
            cron: cron.into(),
            kind: KIND.into(),
            input: Vec::new(),
        };
        let answer = first.apply(1_000, register());
        assert!(
            matches!(&answer, Answer::Rejected(Rejection::InvalidCron { cron: c, .. }) if c == cron),
            "{cron}: {answer:?}"
        );
        assert_eq!(second.apply(1_000, register()), answer, "{cron}");
    }
    assert_eq!(first.state, second.state);
    assert!(first.state.schedules.is_empty() && first.state.timers().is_empty());
}

#[test]
fn firing_a_schedule_reads_the_spec_parsed_at_registration_never_the_expression() {
    let mut h = Harness::new();
    // 2026-01-01T00:00:00Z, every five minutes.
    let midnight = 1_767_225_600_000;
    let register = Command::RegisterSchedule {
        name: "often".into(),
        cron: "*/5 * * * *".into(),
        kind: KIND.into(),
        input: Vec::new(),
    };
    assert_eq!(h.apply(midnight, register), Answer::Done);
    // Were the expression parsed again at the fire, this would not parse (and a parser
    // that changed would compute other times).
    h.state.schedules.get_mut("often").expect("registered").cron = "not cron".into();
    assert_eq!(h.fire_all(midnight + 300_000).len(), 1);
    assert!(
        h.state
            .workflow(&format!("often@{}", midnight + 300_000))
            .is_some()
    );
    let next: Vec<u64> = h
        .state
        .timers()
        .in_due_order()
        .map(|(due, _)| due)
        .collect();
    assert_eq!(next, [midnight + 600_000]);
}
