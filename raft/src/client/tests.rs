use super::*;

fn refused(kind: WriteErrorKind) -> Result<(), ClientError> {
    Err(ClientError::Refused {
        kind,
        message: "refused".to_owned(),
    })
}

fn kind(result: &Result<(), ClientError>) -> Option<WriteErrorKind> {
    match result {
        Err(ClientError::Refused { kind, .. }) => Some(*kind),
        _ => None,
    }
}

/// A refusal of the credentials means "nothing done" only if no earlier attempt may
/// have been applied; after an attempt whose outcome is unknown, the write's outcome
/// stays unknown (a token rotated out between two attempts of one write).
#[tokio::test]
async fn a_denied_retry_of_a_write_whose_first_attempt_may_have_applied_is_an_unknown_outcome() {
    let mut client = KeelClient::new(&["127.0.0.1:1".to_owned()]).expect("client");
    let id = WriteId { session: 7, seq: 3 };
    let first = client.settle(id, false, refused(WriteErrorKind::Denied));
    assert_eq!(kind(&first), Some(WriteErrorKind::Denied));
    let retried = client.settle(id, true, refused(WriteErrorKind::Denied));
    assert_eq!(kind(&retried), Some(WriteErrorKind::OutcomeUnknown));
    assert!(
        matches!(&retried, Err(e) if e.to_string().contains("write 3 of session 7")),
        "{retried:?}"
    );
    let expired = client.settle(id, true, refused(WriteErrorKind::UnknownSession));
    assert!(matches!(expired, Err(ClientError::SessionExpired { .. })));
}
