//! Invariants under any sequence of operations and catalogue changes, and
//! under concurrent conflicting writers.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use std::collections::HashMap;

use common::{Options, T, TestApp, catalogue_with};
use entitled::proto::v1 as pb;
use proptest::prelude::*;
use tonic::Code;

const EDITIONS: [&str; 9] = ["X1", "X2", "X3", "X4", "X5", "X6", "X7", "X8", "X8e"];
const USERS: [&str; 4] = ["ada", "bob", "cy", "dan"];

#[derive(Debug, Clone)]
enum Op {
    Put(usize),
    Delete(usize),
    /// edition: None keeps, Some(None) removes, Some(Some(i)) sets
    /// EDITIONS[i] (i may be out of the line's range: an unknown edition).
    Set(usize, Option<Option<usize>>, Option<T>),
    /// A new catalogue: each work edition's highest tier.
    Catalogue(Vec<T>),
}

fn tier() -> impl Strategy<Value = T> {
    prop_oneof![Just(T::None), Just(T::Essentials), Just(T::Supervisor)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..USERS.len()).prop_map(Op::Put),
        (0..USERS.len()).prop_map(Op::Delete),
        (
            0..USERS.len(),
            proptest::option::of(proptest::option::of(0..10usize)),
            proptest::option::of(tier())
        )
            .prop_map(|(u, e, t)| Op::Set(u, e, t)),
        (
            0..USERS.len(),
            proptest::option::of(proptest::option::of(0..10usize)),
            proptest::option::of(tier())
        )
            .prop_map(|(u, e, t)| Op::Set(u, e, t)),
        proptest::collection::vec(tier(), EDITIONS.len()).prop_map(Op::Catalogue),
    ]
}

fn tier_name(t: T) -> &'static str {
    match t {
        T::Supervisor => "supervisor",
        T::Essentials => "essentials",
        _ => "none",
    }
}

/// The `work` line with each edition's highest tier as given.
fn catalogue_text(max: &[T]) -> String {
    let editions: Vec<String> = EDITIONS
        .iter()
        .zip(max)
        .map(|(e, t)| format!("  {{ id = \"{e}\", max_tier = \"{}\" }},", tier_name(*t)))
        .collect();
    format!(
        "[[product_line]]\nid = \"work\"\neditions = [\n{}\n]\n",
        editions.join("\n")
    )
}

fn options(max: &[T]) -> Options {
    let work = catalogue_text(max);
    Options {
        catalogue: catalogue_with(|default| {
            // Keep the delay and the reports; replace the product lines.
            let cut = default.find("[[product_line]]").unwrap();
            let reports = default.find("[[report]]").unwrap();
            format!("{}{work}\n{}", &default[..cut], &default[reports..])
        }),
        ..Options::default()
    }
}

/// Everything a refused write must leave as it was.
async fn snapshot(app: &TestApp) -> (u64, Vec<pb::User>) {
    let users = app
        .provisioning
        .clone()
        .list_users(pb::ListUsersRequest {
            account_id: "work".into(),
            page_size: 100,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .users;
    (app.revision().await, users)
}

fn max_of(max: &[T], edition: &str) -> T {
    EDITIONS
        .iter()
        .position(|e| *e == edition)
        .map_or(T::None, |i| max[i])
}

async fn run_ops(ops: Vec<Op>) {
    let mut max: Vec<T> = vec![
        T::Essentials,
        T::Essentials,
        T::Essentials,
        T::Supervisor,
        T::Supervisor,
        T::Supervisor,
        T::Supervisor,
        T::Supervisor,
        T::Supervisor,
    ];
    let mut app = TestApp::spawn_with(options(&max)).await;
    app.create_account("work", "work").await;
    // The catalogue each user's services were last written under.
    let mut written_under: HashMap<String, Vec<T>> = HashMap::new();
    for op in ops {
        let (before_rev, before_users) = snapshot(&app).await;
        let result: Result<(), tonic::Status> = match &op {
            Op::Catalogue(new) => {
                max = new.clone();
                app = app.restart_with(options(&max)).await;
                Ok(())
            }
            Op::Put(u) => app
                .provisioning
                .clone()
                .put_user(pb::PutUserRequest {
                    account_id: "work".into(),
                    user_id: USERS[*u].into(),
                    ..Default::default()
                })
                .await
                .map(drop),
            Op::Delete(u) => app
                .provisioning
                .clone()
                .delete_user(pb::DeleteUserRequest {
                    account_id: "work".into(),
                    user_id: USERS[*u].into(),
                    ..Default::default()
                })
                .await
                .map(drop),
            Op::Set(u, edition, tier) => {
                let edition = edition.map(|e| {
                    e.map_or(String::new(), |i| {
                        EDITIONS.get(i).map_or("X9".to_owned(), |s| (*s).to_owned())
                    })
                });
                let r = app
                    .update(pb::UpdateUserServicesRequest {
                        account_id: "work".into(),
                        user_id: USERS[*u].into(),
                        edition,
                        analytics_tier: tier.map(|t| t as i32),
                        ..Default::default()
                    })
                    .await;
                if r.is_ok() {
                    written_under.insert(USERS[*u].to_owned(), max.clone());
                }
                r.map(drop)
            }
        };
        let (after_rev, after_users) = snapshot(&app).await;
        match result {
            Err(status) => {
                assert!(
                    matches!(
                        status.code(),
                        Code::NotFound | Code::InvalidArgument | Code::FailedPrecondition
                    ),
                    "{op:?}: {status:?}"
                );
                assert_eq!(
                    (after_rev, &after_users),
                    (before_rev, &before_users),
                    "refused {op:?} changed something"
                );
            }
            Ok(()) => {
                let changed = after_users != before_users;
                let want = before_rev + u64::from(changed);
                assert_eq!(
                    after_rev, want,
                    "{op:?}: one revision per write that changes something"
                );
            }
        }
        for user in &after_users {
            // Stored tiers were allowed by the catalogue they were written under.
            if let Some(under) = written_under.get(&user.user_id) {
                assert!(
                    user.analytics_tier <= max_of(under, &user.edition) as i32,
                    "{user:?} stored above {under:?}"
                );
            }
            // A check never answers above the catalogue in force, nor above what is stored.
            let answer = app.check("work", &user.user_id).await;
            assert!(
                answer.tier <= max_of(&max, &user.edition) as i32,
                "{answer:?} under {max:?}"
            );
            assert!(answer.tier <= user.analytics_tier);
            assert_eq!(answer.allowed, answer.tier > T::None as i32);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_under_any_sequence(ops in proptest::collection::vec(op(), 1..25)) {
        tokio::runtime::Runtime::new().unwrap().block_on(run_ops(ops));
    }
}

/// Many clients update one user with expected_revision: exactly one wins per
/// revision, the others get ABORTED, and no update is lost or applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_winner_per_revision_under_contention() {
    let app = TestApp::spawn().await;
    app.create_account("work", "work").await;
    app.put_user("work", "ada").await;
    app.set("work", "ada", Some("X8"), Some(T::Essentials))
        .await
        .unwrap();
    let start = app.revision().await;

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let mut client = app.provisioning.clone();
        tasks.spawn(async move {
            let mut wins = Vec::new();
            let mut aborted = 0;
            for _ in 0..15 {
                let user = client
                    .get_user(pb::GetUserRequest {
                        account_id: "work".into(),
                        user_id: "ada".into(),
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .user
                    .unwrap();
                // Always a change: the other tier.
                let next = if user.analytics_tier == T::Essentials as i32 {
                    T::Supervisor
                } else {
                    T::Essentials
                };
                let r = client
                    .update_user_services(pb::UpdateUserServicesRequest {
                        account_id: "work".into(),
                        user_id: "ada".into(),
                        analytics_tier: Some(next as i32),
                        expected_revision: Some(user.revision),
                        ..Default::default()
                    })
                    .await;
                match r {
                    Ok(reply) => wins.push((user.revision, reply.into_inner().revision)),
                    Err(status) => {
                        assert_eq!(status.code(), Code::Aborted, "{status:?}");
                        aborted += 1;
                    }
                }
            }
            (wins, aborted)
        });
    }
    let mut wins = Vec::new();
    let mut aborted = 0;
    for (w, a) in tasks.join_all().await {
        wins.extend(w);
        aborted += a;
    }
    assert_eq!(wins.len() + aborted, 16 * 15);
    wins.sort_unstable();
    // Each win moved the user from the revision it read to the next one.
    for (read, made) in &wins {
        assert_eq!(*made, read + 1, "a win builds on the revision it read");
    }
    // One winner per revision: the revisions read are distinct and chain.
    let made: Vec<u64> = wins.iter().map(|w| w.1).collect();
    let want: Vec<u64> = (start + 1..=start + wins.len() as u64).collect();
    assert_eq!(made, want, "no update lost or applied twice");
    assert_eq!(app.revision().await, start + wins.len() as u64);
    let ada = app.get_user("work", "ada").await.unwrap();
    assert_eq!(ada.revision, start + wins.len() as u64);
    assert!(
        !wins.is_empty() && aborted > 0,
        "the test made contention: {} wins, {aborted} aborted",
        wins.len()
    );
}
