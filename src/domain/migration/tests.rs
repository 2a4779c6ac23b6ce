use std::time::Duration;

use super::*;
use crate::domain::catalogue::{Edition, Migration};

fn line(id: &str, editions: &[(&str, Tier)]) -> ProductLine {
    ProductLine {
        id: id.into(),
        display_name: String::new(),
        editions: editions
            .iter()
            .map(|(id, max_tier)| Edition {
                id: (*id).into(),
                max_tier: *max_tier,
            })
            .collect(),
    }
}

/// Old: X2 < X6 < X9 (X9 has no counterpart); new: X2 < X3 < X6, where
/// X6 maps to X3, which allows only essentials.
fn catalogue() -> Catalogue {
    use Tier::*;
    Catalogue::new(
        vec![
            line(
                "old",
                &[("X2", Essentials), ("X6", Supervisor), ("X9", Supervisor)],
            ),
            line(
                "new",
                &[("X2", Essentials), ("X3", Essentials), ("X6", Supervisor)],
            ),
            line("other", &[("X2", Essentials)]),
        ],
        vec![Migration {
            from: "old".into(),
            to: "new".into(),
            editions: vec![("X6".into(), "X3".into())],
        }],
        Vec::new(),
        Duration::from_secs(3600),
    )
}

fn account() -> Account {
    Account {
        id: AccountId::try_from("acme".to_owned()).unwrap(),
        display_name: "Acme".into(),
        product_line: "old".into(),
        created_at: SystemTime::UNIX_EPOCH,
        analytics_activated_at: None,
    }
}

fn user(id: &str, edition: Option<&str>, tier: Tier, revision: u64) -> User {
    User {
        edition: edition.map(Into::into),
        tier,
        ..User::new(
            AccountId::try_from("acme".to_owned()).unwrap(),
            UserId::try_from(id.to_owned()).unwrap(),
            id.into(),
            revision,
            SystemTime::UNIX_EPOCH,
        )
    }
}

fn to_new() -> MoveRequest {
    MoveRequest {
        to: "new".into(),
        remove_unmapped_licences: false,
        expected_revision: None,
    }
}

fn after(m: &MovedUser) -> (Option<&str>, Tier, usize) {
    (m.edition_after.as_deref(), m.tier_after, m.notices.len())
}

/// Rule 15: same name by default, the table's mapping first, tiers kept
/// where allowed and lowered with a notice where not, never raised;
/// users without a licence unchanged.
#[test]
fn editions_map_and_tiers_are_kept_or_lowered() {
    use Tier::*;
    let users = [
        user("a", Some("X2"), Essentials, 3),
        user("b", Some("X2"), None, 3),
        user("c", Some("X6"), Supervisor, 3),
        user("d", Some("X6"), Essentials, 3),
        user("e", Option::None, None, 3),
    ];
    let plan = plan_move(&catalogue(), &account(), &users, 5, &to_new()).unwrap();
    let got: Vec<_> = plan.users.iter().map(after).collect();
    assert_eq!(
        got,
        [
            (Some("X2"), Essentials, 0),
            (Some("X2"), None, 0),
            (Some("X3"), Essentials, 1),
            (Some("X3"), Essentials, 0),
            (Option::None, None, 0),
        ]
    );
    assert_eq!(plan.users[2].notices[0].kind, NoticeKind::TierLowered);
    assert_eq!(
        plan.users[2].notices[0].message,
        "edition `X3` of product line `new` does not include supervisor analytics, so analytics was lowered to essentials"
    );
    let changed: Vec<bool> = plan.users.iter().map(MovedUser::changed).collect();
    assert_eq!(changed, [false, false, true, true, false]);
    assert_eq!(
        plan.counts(),
        MoveCounts {
            users: 5,
            changed: 2,
            tiers_lowered: 1,
            licences_removed: 0
        }
    );
}

/// Rule 12 within rule 15: a supervisor lowered by the move loses its
/// scope, with a notice when it was a list of groups; one who stays a
/// supervisor keeps it.
#[test]
fn a_lowered_supervisor_loses_its_scope() {
    use crate::domain::{ScopeKind, ScopeRef, SupervisorScope};
    let groups = SupervisorScope::Only(
        vec![ScopeRef {
            kind: ScopeKind::Site,
            id: "S1".into(),
        }]
        .into(),
    );
    let scoped = |id: &str, scope: SupervisorScope| User {
        supervisor_scope: Some(scope),
        ..user(id, Some("X6"), Tier::Supervisor, 3)
    };
    let users = [
        scoped("a", groups.clone()),
        scoped("b", SupervisorScope::WholeAccount),
    ];
    let plan = plan_move(&catalogue(), &account(), &users, 5, &to_new()).unwrap();
    let kinds = |m: &MovedUser| m.notices.iter().map(|n| n.kind).collect::<Vec<_>>();
    assert_eq!(
        kinds(&plan.users[0]),
        [NoticeKind::TierLowered, NoticeKind::ScopeDropped]
    );
    assert_eq!(kinds(&plan.users[1]), [NoticeKind::TierLowered]);
    let now = SystemTime::UNIX_EPOCH;
    for (moved, before) in plan.users.iter().zip(&users) {
        assert_eq!(moved.apply_to(before, 6, now).supervisor_scope, None);
    }
    // Kept at supervisor: the scope stays.
    let kept = MovedUser {
        edition_after: Some("X6".into()),
        tier_after: Tier::Supervisor,
        notices: Vec::new(),
        ..plan.users[0].clone()
    };
    let user = kept.apply_to(&users[0], 6, now);
    assert_eq!(user.supervisor_scope, Some(groups));
}

#[test]
fn an_unmapped_licence_blocks_the_move_naming_the_users() {
    let mut users: Vec<User> = (0..8)
        .map(|i| user(&format!("u{i}"), Some("X9"), Tier::Supervisor, 2))
        .collect();
    users.push(user("z", Some("X2"), Tier::Essentials, 2));
    let refused = plan_move(&catalogue(), &account(), &users, 2, &to_new()).unwrap_err();
    assert_eq!(
        refused.to_string(),
        "users of account `acme` hold an edition with no mapping to product line `new` (8 in all): \
         `u0` (edition `X9`), `u1` (edition `X9`), `u2` (edition `X9`), `u3` (edition `X9`), \
         `u4` (edition `X9`) and 3 more; give them an edition that maps, or set \
         remove_unmapped_licences to remove those licences"
    );
}

#[test]
fn removing_unmapped_licences_sets_the_tier_to_none_with_a_notice() {
    let users = [
        user("a", Some("X9"), Tier::Supervisor, 2),
        user("b", Some("X9"), Tier::None, 2),
    ];
    let request = MoveRequest {
        remove_unmapped_licences: true,
        ..to_new()
    };
    let plan = plan_move(&catalogue(), &account(), &users, 2, &request).unwrap();
    assert_eq!(after(&plan.users[0]), (None, Tier::None, 1));
    assert_eq!(
        plan.users[0].notices[0].message,
        "edition `X9` has no mapping to product line `new`, so the licence was removed and analytics lowered from supervisor to none"
    );
    assert_eq!(plan.users[1].notices[0].kind, NoticeKind::TierRemoved);
    assert_eq!(plan.counts().licences_removed, 2);
    assert_eq!(plan.counts().tiers_lowered, 0);
}

#[test]
fn a_move_needs_a_known_other_line_with_a_migration() {
    let c = catalogue();
    let refuse = |to: &str| {
        let request = MoveRequest {
            to: to.into(),
            ..to_new()
        };
        plan_move(&c, &account(), &[], 1, &request)
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        refuse("gold"),
        "to_product_line `gold` is unknown; use one of old, new, other"
    );
    assert_eq!(
        refuse("old"),
        "account `acme` is already on product line `old`; there is nothing to move"
    );
    assert_eq!(
        refuse("other"),
        "the catalogue has no migration from product line `old` to `other`; account `acme` can move to new"
    );
}

/// A user changed or made after `expected_revision` refuses the move;
/// a revision the store has not reached is refused too.
#[test]
fn expected_revision_refuses_a_changed_account() {
    let users = [
        user("a", Some("X2"), Tier::None, 4),
        user("b", Some("X2"), Tier::None, 9),
    ];
    let at = |expected| MoveRequest {
        expected_revision: Some(expected),
        ..to_new()
    };
    assert!(plan_move(&catalogue(), &account(), &users, 9, &at(9)).is_ok());
    assert_eq!(
        plan_move(&catalogue(), &account(), &users, 9, &at(5))
            .unwrap_err()
            .to_string(),
        "users of account `acme` changed after expected_revision 5 (1 in all): `b` (revision 9); plan the move again (dry_run) and apply that plan"
    );
    assert!(matches!(
        plan_move(&catalogue(), &account(), &users, 9, &at(10)),
        Err(MoveRefused::RevisionAhead {
            expected: 10,
            current: 9
        })
    ));
}

#[test]
fn a_moved_user_keeps_everything_but_its_services() {
    let before = user("a", Some("X6"), Tier::Supervisor, 2);
    let plan = plan_move(
        &catalogue(),
        &account(),
        std::slice::from_ref(&before),
        2,
        &to_new(),
    )
    .unwrap();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(60);
    let moved = plan.users[0].apply_to(&before, 3, now);
    assert_eq!(
        (moved.edition.as_deref(), moved.tier, moved.revision),
        (Some("X3"), Tier::Essentials, 3)
    );
    assert_eq!(
        (moved.created_at, moved.updated_at),
        (before.created_at, now)
    );
    assert_eq!(
        (moved.id, moved.display_name),
        (before.id, before.display_name)
    );
}
