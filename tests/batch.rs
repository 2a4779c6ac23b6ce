//! BatchCheckAnalyticsAccess and `min_revision` on both check RPCs. Each test
//! runs on sled and on PostgreSQL.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use std::time::Instant;

use common::{Backend, T, TestApp, assert_status};
use entitled::{proto::v1 as pb, service::FRESHNESS_WAIT};
use pb::check_result::Outcome;
use tonic::{Code, Status};

fn item(account: &str, user: &str) -> pb::CheckItem {
    pb::CheckItem {
        account_id: account.into(),
        user_id: user.into(),
    }
}

async fn batch(
    app: &TestApp,
    items: Vec<pb::CheckItem>,
    min_revision: u64,
) -> Result<pb::BatchCheckAnalyticsAccessResponse, Status> {
    app.access
        .clone()
        .batch_check_analytics_access(pb::BatchCheckAnalyticsAccessRequest {
            items,
            min_revision,
        })
        .await
        .map(|r| r.into_inner())
}

async fn check_at(
    app: &TestApp,
    account: &str,
    user: &str,
    min_revision: u64,
) -> Result<pb::CheckAnalyticsAccessResponse, Status> {
    app.access
        .clone()
        .check_analytics_access(pb::CheckAnalyticsAccessRequest {
            account_id: account.into(),
            user_id: user.into(),
            min_revision,
        })
        .await
        .map(|r| r.into_inner())
}

fn answer(result: &pb::CheckResult) -> &pb::CheckAnalyticsAccessResponse {
    match &result.outcome {
        Some(Outcome::Answer(a)) => a,
        other => panic!("expected an answer, got {other:?}"),
    }
}

fn error(result: &pb::CheckResult) -> &pb::ItemError {
    match &result.outcome {
        Some(Outcome::Error(e)) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Users in every state a check distinguishes.
async fn populated(backend: Backend) -> TestApp {
    let app = TestApp::spawn_on(backend).await;
    app.create_account("work", "work").await;
    app.create_account("vo", "virtual-office").await;
    for user in ["ada", "bob", "cy", "dee"] {
        app.put_user("work", user).await;
    }
    app.put_user("vo", "eve").await;
    app.set("work", "ada", Some("X8"), Some(T::Supervisor))
        .await
        .unwrap();
    app.set("work", "bob", Some("X2"), Some(T::Essentials))
        .await
        .unwrap();
    app.set("work", "cy", Some("X4"), None).await.unwrap();
    app.set("vo", "eve", Some("X6"), Some(T::Supervisor))
        .await
        .unwrap();
    app
}

on_both_backends! {
    async fn results_are_in_request_order_and_equal_single_checks(backend) {
        let app = populated(backend).await;
        // Every state, unknown ids, and a repeat, in no particular order.
        let pairs = [
            ("work", "dee"),
            ("vo", "eve"),
            ("globex", "ada"),
            ("work", "ada"),
            ("work", "nobody"),
            ("work", "cy"),
            ("work", "bob"),
            ("work", "ada"),
        ];
        let reply = batch(&app, pairs.iter().map(|(a, u)| item(a, u)).collect(), 0)
            .await
            .unwrap();
        assert_eq!(reply.results.len(), pairs.len());
        for ((account, user), result) in pairs.iter().zip(&reply.results) {
            let single = app.check(account, user).await;
            assert_eq!(answer(result), &single, "{account}/{user}");
            assert_eq!(answer(result).revision, reply.revision);
        }
        // The answers differ, so equality above is not vacuous.
        let tiers: Vec<i32> = reply.results.iter().map(|r| answer(r).tier).collect();
        assert_eq!(
            tiers,
            [
                T::None,
                T::Supervisor,
                T::None,
                T::Supervisor,
                T::None,
                T::None,
                T::Essentials,
                T::Supervisor
            ]
            .map(|t| t as i32)
        );
    }
}

on_both_backends! {
    async fn a_malformed_item_gets_its_own_error_and_the_rest_are_answered(backend) {
        let app = populated(backend).await;
        let long = "u".repeat(129);
        let items = vec![
            item("work", "ada"),
            item("work/x", "ada"),
            item("", "ada"),
            item("work", &long),
            item("work", "bob"),
        ];
        let reply = batch(&app, items, 0).await.unwrap();
        assert_eq!(reply.results.len(), 5);
        assert_eq!(answer(&reply.results[0]).tier, T::Supervisor as i32);
        assert_eq!(answer(&reply.results[4]).tier, T::Essentials as i32);
        // Each error is the one the single check fails with.
        for (i, (account, user)) in [
            (1, ("work/x", "ada")),
            (2, ("", "ada")),
            (3, ("work", &*long)),
        ] {
            let e = error(&reply.results[i]);
            let single = app.try_check(account, user).await.unwrap_err();
            assert_eq!(e.code, Code::InvalidArgument as i32, "item {i}");
            assert_eq!(e.message, single.message(), "item {i}");
        }
        assert!(
            error(&reply.results[1])
                .message
                .contains("account_id `work/x` contains `/`"),
            "{}",
            error(&reply.results[1]).message
        );
        assert!(
            error(&reply.results[2])
                .message
                .contains("account_id is required")
        );
        assert!(error(&reply.results[3]).message.contains("user_id"));
    }
}

on_both_backends! {
    async fn a_batch_holds_at_most_1000_items(backend) {
        let app = populated(backend).await;
        let full: Vec<_> = (0..1000)
            .map(|i| item("work", if i % 2 == 0 { "ada" } else { "bob" }))
            .collect();
        let reply = batch(&app, full.clone(), 0).await.unwrap();
        assert_eq!(reply.results.len(), 1000);
        assert_eq!(answer(&reply.results[999]).tier, T::Essentials as i32);

        let mut over = full;
        over.push(item("work", "ada"));
        assert_status(
            batch(&app, over, 0).await,
            Code::InvalidArgument,
            &["items has 1001 entries", "at most 1000"],
        );

        let empty = batch(&app, vec![], 0).await.unwrap();
        assert!(empty.results.is_empty());
        assert_eq!(empty.revision, app.revision().await);
    }
}

on_both_backends! {
    async fn a_check_with_a_writes_revision_sees_the_write(backend) {
        let app = populated(backend).await;
        let write = app
            .set("work", "bob", Some("X8"), Some(T::Supervisor))
            .await
            .unwrap();
        let single = check_at(&app, "work", "bob", write.revision).await.unwrap();
        assert!(single.revision >= write.revision);
        assert_eq!(single.tier, T::Supervisor as i32);

        let many = batch(&app, vec![item("work", "bob")], write.revision)
            .await
            .unwrap();
        assert!(many.revision >= write.revision);
        assert_eq!(answer(&many.results[0]).tier, T::Supervisor as i32);
    }
}

on_both_backends! {
    /// A check asked for a revision that a write sent just after it reaches.
    /// The check waits at most `FRESHNESS_WAIT` (1 s) from when the server gets
    /// it, and a write is published before it is acknowledged, so a write
    /// acknowledged less than that after the check was sent must be in the
    /// answer: that implication is what is asserted, and a delay can only make
    /// it hold more easily. An attempt whose write itself took longer (a busy
    /// machine) proves nothing and is made again.
    async fn a_check_waits_for_a_revision_a_concurrent_write_reaches(backend) {
        let app = populated(backend).await;
        const ATTEMPTS: usize = 10;
        for attempt in 0..ATTEMPTS {
            let tier = [T::Essentials, T::None][attempt % 2];
            let next = app.revision().await + 1;
            // Asked for a revision no write has made yet: the check waits for it.
            let access = app.access.clone();
            let sent = Instant::now();
            let waiting = tokio::spawn(async move {
                access
                    .clone()
                    .check_analytics_access(pb::CheckAnalyticsAccessRequest {
                        account_id: "work".into(),
                        user_id: "dee".into(),
                        min_revision: next,
                    })
                    .await
                    .map(|r| r.into_inner())
            });
            let write = app
                .set("work", "dee", Some("X1"), Some(tier))
                .await
                .unwrap();
            let acknowledged = sent.elapsed();
            assert_eq!(write.revision, next);
            match waiting.await.unwrap() {
                Ok(answer) => {
                    assert!(answer.revision >= next);
                    assert_eq!(answer.tier, tier as i32);
                    return;
                }
                Err(status) if status.code() == Code::Unavailable && acknowledged >= FRESHNESS_WAIT => {
                    println!("attempt {attempt}: the write took {acknowledged:?}; again");
                }
                Err(status) => panic!(
                    "the write was acknowledged {acknowledged:?} after the check was sent, within its wait, yet the check answered {status:?}"
                ),
            }
        }
        panic!(
            "in {ATTEMPTS} attempts every write took longer than the {FRESHNESS_WAIT:?} a check waits"
        );
    }
}

on_both_backends! {
    async fn a_revision_not_reached_within_a_second_is_unavailable(backend) {
        let app = populated(backend).await;
        let current = app.revision().await;
        let ahead = current + 10;
        assert_status(
            check_at(&app, "work", "ada", ahead).await,
            Code::Unavailable,
            &[
                &format!("revision {ahead} is not reached"),
                &format!("at revision {current}"),
                "1s",
            ],
        );
        assert_status(
            batch(&app, vec![item("work", "ada")], ahead).await,
            Code::Unavailable,
            &[&format!("revision {ahead} is not reached")],
        );
        // A revision already reached is answered as usual.
        assert!(
            check_at(&app, "work", "ada", current)
                .await
                .unwrap()
                .allowed
        );
    }
}
