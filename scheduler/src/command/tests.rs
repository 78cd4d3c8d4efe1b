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
            workflow: w.clone(),
            fence: 1,
            reason: text,
        },
        Command::RemoteCall {
            workflow: w,
            fence: 1,
            seq: 3,
            remote: "writers".into(),
            kind: "draft".into(),
            input: value.clone(),
            deadline_after_ms: 1000,
        },
    ];
    for command in valued {
        let stamped = stamped(command);
        let bytes = encode(&stamped);
        let (decoded, at) = decode_recorded(&bytes, 9).expect("decodes");
        assert_eq!(decoded, stamped);
        assert_eq!(values_at(&bytes, &at), [value.as_slice()], "{stamped:?}");
    }
}

/// The bytes each place in `at` points at, checking each is of index 9.
fn values_at<'b>(bytes: &'b [u8], at: &[ValueRef]) -> Vec<&'b [u8]> {
    at.iter()
        .map(|at| {
            assert_eq!(at.index, 9);
            let start = at.offset as usize;
            &bytes[start..start + at.len as usize]
        })
        .collect()
}

/// A command with a list of items has one place per item, in item order: a remote start's
/// inputs, a remote completion's values and messages (an empty one for a deadline).
#[test]
fn decode_recorded_points_at_each_items_value_in_order() {
    let item = |seq: u64, input: &[u8]| InboundStart {
        seq,
        call: CallId {
            index: seq * 10,
            workflow: "w".into(),
            position: 0,
        },
        withdrawn: false,
        kind: "k".into(),
        input: input.to_vec(),
        deadline_ms: 5,
        refusal: None,
    };
    let start = Command::RemoteStart {
        caller: "a.00".into(),
        callee_index: 3,
        items: vec![
            item(1, b"first input"),
            item(2, b""),
            item(3, VALUE.as_bytes()),
        ],
        grace_ms: 1,
        deadline_max_ms: 2,
    };
    let bytes = encode(&stamped(start));
    let (_, at) = decode_recorded(&bytes, 9).expect("decodes");
    let expected: [&[u8]; 3] = [b"first input", b"", VALUE.as_bytes()];
    assert_eq!(values_at(&bytes, &at), expected);

    let completion = |seq: u64, outcome: RemoteOutcome| Completion {
        seq,
        call: seq,
        outcome,
    };
    let complete = Command::RemoteComplete {
        remote: "writers".into(),
        generation: 4,
        completions: vec![
            completion(1, RemoteOutcome::Completed(b"value".to_vec())),
            completion(2, RemoteOutcome::Deadline),
            completion(3, RemoteOutcome::Failed("it broke".into())),
            completion(4, RemoteOutcome::Cancelled("stop".into())),
        ],
    };
    let bytes = encode(&stamped(complete));
    let (_, at) = decode_recorded(&bytes, 9).expect("decodes");
    let expected: [&[u8]; 4] = [b"value", b"", b"it broke", b"stop"];
    assert_eq!(values_at(&bytes, &at), expected);
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
        assert_eq!(at, []);
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
