use super::*;

/// A `User` as stored decodes in place to the same fields.
#[test]
fn a_user_record_decodes_in_place() {
    use crate::domain::{AccountId, User, UserId};
    let user = User {
        account_id: AccountId::try_from("acme".to_owned()).unwrap(),
        id: UserId::try_from("ada".to_owned()).unwrap(),
        display_name: "Ada Lovelace".to_owned(),
        edition: Some("X8".to_owned()),
        tier: Tier::Supervisor,
        revision: 300,
        created_at: SystemTime::UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 5),
        updated_at: SystemTime::UNIX_EPOCH + std::time::Duration::new(1_800_000_000, 7),
        supervisor_scope: Some(SupervisorScope::WholeAccount),
    };
    for user in [
        user.clone(),
        User {
            supervisor_scope: Some(scoped()),
            ..user.clone()
        },
        User {
            edition: None,
            tier: Tier::None,
            supervisor_scope: None,
            ..user
        },
    ] {
        let bytes = encode_user(&user).unwrap();
        assert_eq!(bytes[0], FORMAT_USER_V2);
        assert_eq!(decode_user_owned("users", b"k", &bytes).unwrap(), user);
        let read = decode_user("users", b"k", &bytes).unwrap();
        assert_eq!(read.account_id, user.account_id.as_str());
        assert_eq!(read.id, user.id.as_str());
        assert_eq!(read.display_name, user.display_name);
        assert_eq!(read.edition, user.edition.as_deref());
        assert_eq!(read.tier, user.tier);
        assert_eq!(read.revision, user.revision);
        assert_eq!(read.created_at, user.created_at);
        assert_eq!(read.updated_at, user.updated_at);
        assert_eq!(read.supervisor_scope, user.supervisor_scope);
    }
    assert!(decode_user("users", b"k", b"\x01garbage that is no user").is_err());
    assert!(decode_user("users", b"k", b"\x02garbage that is no user").is_err());
}

fn scoped() -> SupervisorScope {
    use crate::domain::{ScopeKind, ScopeRef};
    SupervisorScope::Only(
        vec![
            ScopeRef {
                kind: ScopeKind::Site,
                id: "S1".into(),
            },
            ScopeRef {
                kind: ScopeKind::CallQueue,
                id: "Q9".into(),
            },
        ]
        .into(),
    )
}

/// A format 1 user (before scopes): a supervisor of then sees the whole
/// account, anyone else has no scope; and so in a change-feed record.
#[test]
fn users_of_format_1_decode_with_the_scope_they_meant() {
    let at = SystemTime::UNIX_EPOCH;
    // postcard writes a struct as its fields in order: this tuple is a
    // format 1 user, byte for byte.
    let old = |tier: Tier| ("acme", "ada", "Ada", Some("X8"), tier, 3u64, at, at);
    for (tier, scope) in [
        (Tier::Supervisor, Some(SupervisorScope::WholeAccount)),
        (Tier::Essentials, None),
        (Tier::None, None),
    ] {
        let bytes = encode(&old(tier)).unwrap();
        assert_eq!(bytes[0], FORMAT_V1);
        let user = decode_user_owned("users", b"k", &bytes).unwrap();
        assert_eq!((user.tier, user.supervisor_scope), (tier, scope.clone()));
        assert_eq!((user.id.as_str(), user.revision), ("ada", 3));

        // Variant 1 of `Mutation` is PutUser.
        let feed = encode(&vec![Old::PutUser(old(tier))]).unwrap();
        let mutations = decode_mutations("changes", b"k", &feed).unwrap();
        let [Mutation::PutUser(user)] = &mutations[..] else {
            panic!("{mutations:?}");
        };
        assert_eq!(user.supervisor_scope, scope);
    }
    #[derive(Serialize)]
    #[allow(
        dead_code,
        reason = "the variants before PutUser only give it its index"
    )]
    enum Old<U> {
        PutAccount(()),
        PutUser(U),
    }

    let user = User {
        supervisor_scope: Some(scoped()),
        ..decode_user_owned("users", b"k", &encode(&old(Tier::Supervisor)).unwrap()).unwrap()
    };
    let feed = encode_mutations(&[Mutation::PutUser(user.clone())]).unwrap();
    let [Mutation::PutUser(read)] = &decode_mutations("changes", b"k", &feed).unwrap()[..] else {
        panic!("one mutation");
    };
    assert_eq!(*read, user);
}

/// A record written before `via` existed reads as made through the API;
/// a new one keeps its door.
#[test]
fn audit_records_of_both_formats_decode() {
    let at = SystemTime::UNIX_EPOCH;
    // postcard writes a struct as its fields in order: this tuple is a
    // format 1 record, byte for byte.
    let old = encode(&(
        7u64,
        3u64,
        at,
        ("tok_1", "billing", Role::Provisioner),
        Rpc::PutUser,
        "acme",
        "ada",
        None::<UserState>,
        None::<UserState>,
        Vec::<String>::new(),
        Outcome::Applied,
    ))
    .unwrap();
    assert_eq!(old[0], FORMAT_V1);
    let read = decode_audit("audit", b"k", &old).unwrap();
    assert_eq!((read.seq, read.revision), (7, 3));
    assert_eq!(read.actor.via, Via::Api);
    assert_eq!(read.actor.name, "billing");
    assert_eq!(read.user_id, "ada");

    let new = AuditRecord {
        actor: Actor {
            via: Via::Console,
            ..read.actor.clone()
        },
        ..read
    };
    let bytes = encode_audit(&new).unwrap();
    assert_eq!(bytes[0], FORMAT_AUDIT_V4);
    assert_eq!(decode_audit("audit", b"k", &bytes).unwrap(), new);

    // A format 3 record is a format 4 one without the account's states.
    let mut v3 = vec![FORMAT_AUDIT_V3];
    v3.extend(
        postcard::to_stdvec(&(
            new.seq,
            new.revision,
            new.at,
            &new.actor,
            new.rpc,
            &new.account_id,
            &new.user_id,
            &new.before,
            &new.after,
            &new.details,
            &new.outcome,
        ))
        .unwrap(),
    );
    assert_eq!(decode_audit("audit", b"k", &v3).unwrap(), new);
    let with_account = AuditRecord {
        account_after: Some(crate::domain::AccountState {
            display_name: "Acme".to_owned(),
            product_line: "work".to_owned(),
            analytics_activated_at: Some(at),
        }),
        ..new
    };
    let bytes = encode_audit(&with_account).unwrap();
    assert_eq!(decode_audit("audit", b"k", &bytes).unwrap(), with_account);
}

/// A format 2 record's states (before scopes) read as a supervisor of
/// then saw: the whole account; a format 3 record keeps its scopes.
#[test]
fn audit_records_of_format_2_decode_with_the_scope_they_meant() {
    let at = SystemTime::UNIX_EPOCH;
    let actor = Actor {
        token_id: "tok_1".into(),
        name: "billing".into(),
        role: Role::Provisioner,
        via: Via::Console,
    };
    let mut old = vec![FORMAT_AUDIT_V2];
    old.extend(
        postcard::to_stdvec(&(
            7u64,
            3u64,
            at,
            &actor,
            Rpc::UpdateUserServices,
            "acme",
            "ada",
            Some(("Ada", Some("X2"), Tier::Essentials)),
            Some(("Ada", Some("X8"), Tier::Supervisor)),
            Vec::<String>::new(),
            Outcome::Applied,
        ))
        .unwrap(),
    );
    let read = decode_audit("audit", b"k", &old).unwrap();
    assert_eq!(read.actor, actor);
    assert_eq!(read.before.as_ref().unwrap().supervisor_scope, None);
    let after = read.after.clone().unwrap();
    assert_eq!(after.tier, Tier::Supervisor);
    assert_eq!(after.supervisor_scope, Some(SupervisorScope::WholeAccount));

    let new = AuditRecord {
        after: Some(UserState {
            supervisor_scope: Some(scoped()),
            ..after
        }),
        ..read
    };
    let bytes = encode_audit(&new).unwrap();
    assert_eq!(decode_audit("audit", b"k", &bytes).unwrap(), new);
}
