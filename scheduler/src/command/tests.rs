use super::*;

#[test]
fn commands_and_answers_round_trip() {
    let command = Stamped {
        stamp_ms: 17,
        mono: Some(crate::mono::now()),
        command: Command::Step {
            workflow: "w".into(),
            fence: 3,
            seq: 2,
            name: "fetch".into(),
            record: StepRecord::Done(Outcome::Ok(b"page".to_vec())),
        },
    };
    assert_eq!(decode::<Stamped>(&encode(&command)), Ok(command));
    let answer = Answer::Rejected(Rejection::StaleFence {
        fence: 1,
        current: 2,
    });
    assert_eq!(decode::<Answer>(&encode(&answer)), Ok(answer));
}

const VALUE: &str = "a value longer than a reference, to be found";

fn stamped(command: Command) -> Stamped {
    Stamped {
        stamp_ms: 5,
        mono: None,
        command,
    }
}

fn step(record: StepRecord) -> Command {
    Command::Step {
        workflow: "w".into(),
        fence: 1,
        seq: 0,
        name: "s".into(),
        record,
    }
}

/// `decode_recorded` finds each command's own value field in its bytes.
#[test]
fn decode_recorded_points_at_each_commands_value() {
    let (value, text) = (VALUE.as_bytes().to_vec(), VALUE.to_owned());
    let (w, k) = (String::from("w"), String::from("k"));
    let valued = [
        Command::Start {
            id: w.clone(),
            kind: k.clone(),
            input: value.clone(),
        },
        Command::Call {
            workflow: w.clone(),
            fence: 1,
            seq: 2,
            kind: k,
            input: value.clone(),
        },
        step(StepRecord::Done(Outcome::Ok(value.clone()))),
        step(StepRecord::Done(Outcome::Err(text.clone()))),
        Command::Finish {
            workflow: w.clone(),
            fence: 1,
            outcome: Outcome::Ok(value.clone()),
        },
        Command::Finish {
            workflow: w.clone(),
            fence: 1,
            outcome: Outcome::Err(text.clone()),
        },
        Command::Signal {
            workflow: w.clone(),
            signal: "go".into(),
            payload: value.clone(),
        },
        Command::Park {
            workflow: w,
            fence: 1,
            reason: text,
        },
    ];
    for command in valued {
        let stamped = stamped(command);
        let bytes = encode(&stamped);
        let (decoded, at) = decode_recorded(&bytes, 9).expect("decodes");
        assert_eq!(decoded, stamped);
        let at = at.expect("a value");
        assert_eq!(at.index, 9);
        let start = at.offset as usize;
        assert_eq!(
            &bytes[start..start + at.len as usize],
            value.as_slice(),
            "{stamped:?}"
        );
    }
}

/// Commands whose values the state does not keep carry no place.
#[test]
fn decode_recorded_finds_no_value_in_commands_without_one() {
    let none = [
        step(StepRecord::AttemptFailed {
            attempt: 1,
            error: VALUE.to_owned(),
        }),
        Command::Cancel {
            workflow: "w".into(),
            reason: VALUE.to_owned(),
        },
        Command::FireTimers { ids: vec![1] },
    ];
    for command in none {
        let (_, at) = decode_recorded(&encode(&stamped(command)), 9).expect("decodes");
        assert_eq!(at, None);
    }
}

#[test]
fn garbage_is_malformed() {
    assert_eq!(
        decode::<Stamped>(b"not a command"),
        Err(Rejection::Malformed)
    );
    assert_eq!(decode::<Answer>(&[]), Err(Rejection::Malformed));
}

#[test]
fn status_names_round_trip() {
    for status in [
        WorkflowStatus::Running,
        WorkflowStatus::Completed,
        WorkflowStatus::Failed,
        WorkflowStatus::Cancelled,
        WorkflowStatus::Parked,
    ] {
        assert_eq!(WorkflowStatus::parse(status.as_str()), Some(status));
    }
    assert_eq!(WorkflowStatus::parse("sleeping"), None);
}
