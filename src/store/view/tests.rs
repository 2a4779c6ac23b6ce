use super::*;

fn user(account: &str, id: &str, name: &str, at: SystemTime) -> User {
    User {
        account_id: AccountId::try_from(account.to_owned()).unwrap(),
        id: UserId::try_from(id.to_owned()).unwrap(),
        display_name: name.to_owned(),
        edition: Some("X8".to_owned()),
        tier: Tier::Supervisor,
        revision: 7,
        created_at: at,
        updated_at: at + Duration::from_nanos(1),
        supervisor_scope: Some(SupervisorScope::WholeAccount),
    }
}

fn account(id: &str) -> Account {
    Account {
        id: AccountId::try_from(id.to_owned()).unwrap(),
        display_name: id.to_owned(),
        product_line: "work".to_owned(),
        created_at: UNIX_EPOCH,
        analytics_activated_at: None,
    }
}

/// Times before and after the epoch, ids of every length and names of
/// any text come back exactly as they went in.
#[test]
fn users_come_back_as_they_were_stored() {
    let times = [
        UNIX_EPOCH,
        UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
        UNIX_EPOCH - Duration::new(5, 1),
        UNIX_EPOCH - Duration::from_secs(86_400),
        UNIX_EPOCH - Duration::from_nanos(1),
    ];
    let users: Vec<User> = [
        ("a", ""),
        ("bob", "Bob, \"B\" Müller"),
        (&*"z".repeat(MAX_ID_LEN), "李小龙"),
        ("c.d@e:f+g", "x"),
    ]
    .iter()
    .zip(times.iter().cycle())
    .map(|((id, name), at)| user("acme", id, name, *at))
    .collect();
    let view = View::load(9, [], [Ok(account("acme"))], users.iter().cloned().map(Ok)).unwrap();
    for u in &users {
        assert_eq!(view.user("acme", u.id.as_str()).as_ref(), Some(u));
    }
    assert_eq!(view.all_users(None), {
        let mut sorted = users.clone();
        sorted.sort_by(|a, b| a.id.cmp(&b.id));
        sorted
    });
    for at in times {
        assert_eq!(time(stamp(at)), at, "{at:?}");
    }
}

/// What ARCHITECTURE.md and BENCHMARKS.md say a user costs: one 56-byte
/// slot of its account's B-tree (and its key's one allocation).
#[test]
fn a_user_is_one_56_byte_slot() {
    assert_eq!(
        std::mem::size_of::<UserKey>() + std::mem::size_of::<UserEntry>(),
        56
    );
}

fn scope(ids: &[&str]) -> SupervisorScope {
    use crate::domain::ScopeKind;
    SupervisorScope::Only(
        ids.iter()
            .map(|id| ScopeRef {
                kind: ScopeKind::UserGroup,
                id: (*id).to_owned(),
            })
            .collect(),
    )
}

/// Rule 12 in the view: a list of groups is kept beside the user's
/// slot, follows the user through loads, puts, lowering and deletion,
/// and reaches the check; a whole-account supervisor needs no entry.
#[test]
fn a_scoped_supervisor_keeps_its_groups_beside_its_slot() {
    let at = UNIX_EPOCH;
    let scoped = User {
        supervisor_scope: Some(scope(&["G1", "G2"])),
        ..user("acme", "sam", "Sam", at)
    };
    let whole = user("acme", "wes", "Wes", at);
    let mut view = View::load(
        1,
        [],
        [Ok(account("acme"))],
        [Ok(scoped.clone()), Ok(whole.clone())],
    )
    .unwrap();
    assert_eq!(view.user("acme", "sam"), Some(scoped.clone()));
    assert_eq!(view.user("acme", "wes"), Some(whole.clone()));
    assert_eq!(view.accounts["acme"].scopes.len(), 1);
    assert_eq!(
        view.account_and_user("acme", "sam")
            .1
            .unwrap()
            .supervisor_scope,
        scoped.supervisor_scope
    );
    assert_eq!(
        view.account_and_user("acme", "wes")
            .1
            .unwrap()
            .supervisor_scope,
        Some(SupervisorScope::WholeAccount)
    );

    // Scoped anew, then lowered: the groups go with Supervisor.
    let rescoped = User {
        supervisor_scope: Some(scope(&["G3"])),
        ..whole.clone()
    };
    view.apply(2, vec![Mutation::PutUser(rescoped.clone())]);
    assert_eq!(view.user("acme", "wes"), Some(rescoped));
    assert_eq!(view.accounts["acme"].scopes.len(), 2);
    let lowered = User {
        tier: Tier::Essentials,
        supervisor_scope: None,
        ..scoped.clone()
    };
    view.apply(3, vec![Mutation::PutUser(lowered.clone())]);
    assert_eq!(view.user("acme", "sam"), Some(lowered));
    assert_eq!(
        view.account_and_user("acme", "sam")
            .1
            .unwrap()
            .supervisor_scope,
        None
    );
    view.apply(
        4,
        vec![Mutation::DeleteUser(
            whole.account_id.clone(),
            whole.id.clone(),
        )],
    );
    assert!(view.accounts["acme"].scopes.is_empty());
    assert_eq!(view.user_count(), 1);
}

/// A user put again with a new name is found under its id with the new
/// name, once; users loaded out of order still load.
#[test]
fn a_renamed_user_replaces_the_old_one() {
    let at = UNIX_EPOCH;
    let mut view = View::load(
        1,
        [],
        [Ok(account("acme")), Ok(account("beta"))],
        [
            Ok(user("beta", "b", "B", at)),
            Ok(user("acme", "z", "Z", at)),
            Ok(user("acme", "a", "A", at)),
            Ok(user("beta", "a", "A", at)),
        ],
    )
    .unwrap();
    assert_eq!(view.user_count(), 4);
    let mut renamed = user("acme", "z", "Zed", at);
    renamed.edition = None;
    view.apply(2, vec![Mutation::PutUser(renamed.clone())]);
    assert_eq!(view.user("acme", "z"), Some(renamed));
    assert_eq!(view.user_count(), 4);
    let (page, more) = view.users_after("acme", None, 10).unwrap();
    assert_eq!(
        page.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(),
        ["a", "z"]
    );
    assert!(!more);
    assert_eq!(view.account_and_user("acme", "z").1.unwrap().edition, None);
    assert_eq!(
        view.account_and_user("beta", "a").1.unwrap().edition,
        Some("X8")
    );
}
