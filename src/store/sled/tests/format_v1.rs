//! A format 1 backup made by an earlier entitled restores.

use super::*;

/// `tests/fixtures/backup-v1.bin`: made by `entitled backup` of the last
/// version that wrote format 1 (commit c075eb1), against a server given the
/// CLI commands below, in order; the operator token is the first start's.
///
/// ```text
/// account create acme --name Acme --product-line work
/// account create legacy --name Legacy --product-line virtual-office
/// user put acme ada --name Ada        (and bob, cy; legacy dee)
/// user set acme bob --edition X6 --analytics supervisor --request-id save-1
/// user set acme bob --edition X2 --request-id save-2
/// user set acme bob --analytics supervisor --request-id save-3   (refused)
/// user put acme ada --name Ada --request-id same-name            (a no-op)
/// user set acme ada --edition X8 --analytics essentials
/// user delete acme cy
/// token create --name gateway --role gateway
/// token create --name old --role provisioner
/// token revoke tok_e221e62f9ed8a174
/// ```
const FIXTURE_V1: &[u8] = include_bytes!("../../../../tests/fixtures/backup-v1.bin");
const OPERATOR: &str = "tok_8feda0d3755f5c1c";

#[tokio::test]
async fn a_format_1_backup_made_by_an_earlier_entitled_restores() {
    let summary = verify(FIXTURE_V1).unwrap();
    assert_eq!(summary.revision, 14);
    assert_eq!(summary.entries, 42);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup");
    std::fs::write(&file, FIXTURE_V1).unwrap();
    let data = dir.path().join("data");
    assert_eq!(restore(&file, &data).unwrap(), summary);
    let (backend, store) = open(&data);

    assert_eq!(store.read(|v| v.revision()), 14);
    assert!(store.is_bootstrapped().await.unwrap());
    let users = store.read(|v| v.all_users(None));
    let shown: Vec<_> = users
        .iter()
        .map(|u| {
            let id = format!("{}/{}", u.account_id, u.id);
            (id, u.edition.clone(), u.tier, u.revision)
        })
        .collect();
    assert_eq!(
        shown,
        [
            (
                "acme/ada".to_owned(),
                Some("X8".to_owned()),
                Tier::Essentials,
                10
            ),
            (
                "acme/bob".to_owned(),
                Some("X2".to_owned()),
                Tier::Essentials,
                9
            ),
            ("legacy/dee".to_owned(), None, Tier::None, 7),
        ]
    );
    assert!(store.read(|v| v.account("legacy").is_some()));
    let tokens = store.read(|v| v.tokens());
    let names: Vec<_> = tokens
        .iter()
        .map(|t| (t.name.as_str(), t.revoked_at.is_some()))
        .collect();
    assert_eq!(
        names,
        [
            ("bootstrap operator", false),
            ("gateway", false),
            ("old", true)
        ]
    );

    // The trail, with its one refusal, and each account's index rebuilt.
    let (trail, more) = store.audit(None, 0, 0, 100).await.unwrap();
    assert!(!more);
    assert_eq!(trail.len(), 15);
    assert_eq!(
        trail.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=15).collect::<Vec<_>>()
    );
    let refused: Vec<_> = trail
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Refused { .. }))
        .map(|r| (r.seq, r.revision, r.user_id.as_str()))
        .collect();
    assert_eq!(refused, [(10, 9, "bob")]);
    let (acme, _) = store.audit(Some("acme"), 0, 0, 100).await.unwrap();
    assert_eq!(acme.len(), 9);

    // The kept answers: a change, a no-op, a refusal.
    let kept = |id: &str| {
        backend
            .kept(
                &backend.inner.writer.lock(),
                RequestId {
                    token_id: OPERATOR,
                    id,
                },
            )
            .unwrap()
            .unwrap()
    };
    let retry = |id: &str| {
        let record = kept(id);
        let mut ctx = ctx(Rpc::UpdateUserServices, "acme", "bob", None);
        ctx.actor.token_id = OPERATOR.to_owned();
        ctx.at = record.at + Duration::from_secs(1);
        ctx.request = Some(RequestKey {
            id: id.to_owned(),
            fingerprint: record.fingerprint,
        });
        ctx
    };
    let target = Target::User(account_id("acme"), user_id("bob"));
    let replayed = store
        .write_upgrading::<ServicesChanged, DomainError>(
            &target,
            retry("save-1"),
            ServicesChanged::v1,
            |_| panic!("a retry is answered from its record"),
        )
        .await
        .unwrap();
    assert!(replayed.replayed);
    assert_eq!(replayed.revision, 8);
    assert_eq!(replayed.output.user.tier, Tier::Supervisor);
    // Kept before scopes: a supervisor of then saw the whole account.
    assert_eq!(
        replayed.output.user.supervisor_scope,
        Some(SupervisorScope::WholeAccount)
    );
    let again = store
        .write_upgrading::<ServicesChanged, DomainError>(
            &target,
            retry("save-3"),
            ServicesChanged::v1,
            |_| panic!("a retry is answered from its record"),
        )
        .await;
    match again {
        Err(DomainError::Refused(refusal)) => {
            assert_eq!(refusal.kind, RefusalKind::FailedPrecondition);
        }
        other => panic!("{other:?}"),
    }
    assert!(kept("same-name").answer.is_ok());

    // Writes go on from there.
    let next = put(
        &store,
        Target::Account(account_id("new")),
        ctx(Rpc::CreateAccount, "new", "", None),
        vec![Mutation::PutAccount(account("new"))],
    )
    .await;
    assert_eq!(next, 15);
    let (last, _) = store.audit(None, 15, 0, 10).await.unwrap();
    assert_eq!(last.iter().map(|r| r.seq).collect::<Vec<_>>(), [16]);
}
