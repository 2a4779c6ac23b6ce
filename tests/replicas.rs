//! Three replicas on one PostgreSQL database: what a write acknowledged by
//! one is to every other (issue 11, "Guarantees across replicas"). Each
//! test gets a fresh database; without a PostgreSQL server they are skipped
//! (one line), or fail under `ENTITLED_REQUIRE_POSTGRES=1`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::{Options, T, TestApp, assert_status, postgres, within};
use entitled::proto::v1 as pb;
use entitled::store::Location;
use tonic::Code;

/// `n` replicas on one fresh database; the first makes the operator
/// token. Also returns what keeps their directories and the database.
async fn replicas(
    n: usize,
) -> Option<(Vec<TestApp>, Vec<tempfile::TempDir>, postgres::TestDatabase)> {
    if !postgres::available().await {
        return None;
    }
    let db = postgres::TestDatabase::create().await;
    let options = || Options {
        store: Some(Location::Postgres(db.url.clone())),
        ..Options::default()
    };
    let mut dirs = Vec::new();
    let mut apps = Vec::new();
    let first_dir = tempfile::tempdir().unwrap();
    let first = TestApp::start(first_dir.path(), options()).await;
    let secret = first.operator_secret.clone();
    dirs.push(first_dir);
    apps.push(first);
    for _ in 1..n {
        let dir = tempfile::tempdir().unwrap();
        apps.push(TestApp::start_with_secret(dir.path(), options(), secret.clone()).await);
        dirs.push(dir);
    }
    Some((apps, dirs, db))
}

fn check_at(account: &str, user: &str, min_revision: u64) -> pb::CheckAnalyticsAccessRequest {
    pb::CheckAnalyticsAccessRequest {
        account_id: account.into(),
        user_id: user.into(),
        min_revision,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_replica_is_seen_on_the_others_at_its_revision() {
    let Some((apps, _dirs, _db)) = replicas(3).await else {
        return;
    };
    apps[0].create_account("acme", "work").await;
    apps[1].put_user("acme", "ada").await;
    let written = apps[2]
        .set("acme", "ada", Some("X8"), Some(T::Supervisor))
        .await
        .unwrap();
    for app in &apps {
        let answer = app
            .access
            .clone()
            .check_analytics_access(check_at("acme", "ada", written.revision))
            .await
            .unwrap()
            .into_inner();
        assert!(answer.allowed, "{answer:?}");
        assert_eq!(answer.tier, T::Supervisor as i32);
        assert!(answer.revision >= written.revision);
    }
    // Without min_revision a replica catches up on its own, by polling.
    within(Duration::from_secs(5), "replica 0 catching up", async {
        loop {
            if apps[0].check("acme", "ada").await.allowed {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    // A revision nobody has made: UNAVAILABLE after the 1 s wait.
    let status = apps[1]
        .access
        .clone()
        .check_analytics_access(check_at("acme", "ada", written.revision + 1000))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

/// Rule 12 through the change feed: a supervisor scoped on one replica is
/// answered with its groups by the others, and dropped there with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_written_on_one_replica_is_answered_by_the_others() {
    let Some((apps, _dirs, _db)) = replicas(2).await else {
        return;
    };
    apps[0].create_account("acme", "work").await;
    apps[0].put_user("acme", "ada").await;
    let groups = pb::SupervisorScope {
        whole_account: false,
        refs: vec![
            pb::ScopeRef {
                kind: pb::ScopeKind::RingGroup as i32,
                id: "R1".into(),
            },
            pb::ScopeRef {
                kind: pb::ScopeKind::Site as i32,
                id: "S1".into(),
            },
        ],
    };
    let written = apps[0]
        .update(pb::UpdateUserServicesRequest {
            account_id: "acme".into(),
            user_id: "ada".into(),
            edition: Some("X8".into()),
            analytics_tier: Some(T::Supervisor as i32),
            supervisor_scope: Some(groups.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    let answer = apps[1]
        .access
        .clone()
        .check_analytics_access(check_at("acme", "ada", written.revision))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.supervisor_scope, Some(groups.clone()));
    assert_eq!(
        apps[1]
            .get_user("acme", "ada")
            .await
            .unwrap()
            .supervisor_scope,
        Some(groups)
    );
    let lowered = apps[0].set("acme", "ada", Some("X2"), None).await.unwrap();
    let answer = apps[1]
        .access
        .clone()
        .check_analytics_access(check_at("acme", "ada", lowered.revision))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (answer.tier, answer.supervisor_scope),
        (T::Essentials as i32, None)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_make_exactly_one_operator_token() {
    if !postgres::available().await {
        return;
    }
    let db = postgres::TestDatabase::create().await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let starts = dirs.iter().map(|dir| {
        let mut config = entitled::server::Config::new(
            "127.0.0.1:0".parse().unwrap(),
            dir.path().to_path_buf(),
            entitled::catalogue::Catalogue::builtin().unwrap(),
        );
        config.store = Some(Location::Postgres(db.url.clone()));
        config.operator_token_file = Some(dir.path().join("operator.token"));
        entitled::server::Application::build(config)
    });
    let built = futures_util::future::join_all(starts).await;
    let apps: Vec<_> = built.into_iter().map(Result::unwrap).collect();
    let files: Vec<_> = dirs
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.path().join("operator.token")).ok())
        .collect();
    assert_eq!(files.len(), 1, "token files written: {files:?}");
    // No secret left behind under a pending name either.
    for dir in &dirs {
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().all(|n| !n.contains("pending")),
            "left behind: {names:?}"
        );
    }
    drop(apps);
    // The one token works on a replica started after.
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start_with_secret(
        dir.path(),
        Options {
            store: Some(Location::Postgres(db.url.clone())),
            ..Options::default()
        },
        files[0].trim().to_owned(),
    )
    .await;
    let tokens = app
        .tokens
        .clone()
        .list_tokens(pb::ListTokensRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tokens;
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert!(
        !dir.path().join("operator.token").exists(),
        "a later start made another token file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expected_revision_conflicts_are_caught_across_replicas() {
    let Some((apps, _dirs, _db)) = replicas(2).await else {
        return;
    };
    apps[0].create_account("acme", "work").await;
    let user = apps[0].put_user("acme", "ada").await;
    let stale = user.revision;
    let update = |edition: &str| pb::UpdateUserServicesRequest {
        account_id: "acme".into(),
        user_id: "ada".into(),
        edition: Some(edition.into()),
        expected_revision: Some(stale),
        ..Default::default()
    };
    let (a, b) = tokio::join!(apps[0].update(update("X8")), apps[1].update(update("X6")));
    let wins = [a.is_ok(), b.is_ok()];
    assert_eq!(wins.iter().filter(|w| **w).count(), 1, "{a:?} {b:?}");
    let lost = if a.is_ok() { b } else { a };
    assert_status(lost, Code::Aborted, &["revision"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_replays_the_first_answer_on_any_replica() {
    let Some((apps, _dirs, _db)) = replicas(3).await else {
        return;
    };
    apps[0].create_account("acme", "work").await;
    apps[0].put_user("acme", "ada").await;
    let request = pb::UpdateUserServicesRequest {
        account_id: "acme".into(),
        user_id: "ada".into(),
        edition: Some("X8".into()),
        analytics_tier: Some(T::Supervisor as i32),
        request_id: "R1".into(),
        ..Default::default()
    };
    let first = apps[0].update(request.clone()).await.unwrap();
    // Meanwhile another write changes the user.
    let lowered = apps[1].set("acme", "ada", Some("X2"), None).await.unwrap();
    for app in &apps[1..] {
        let again = app.update(request.clone()).await.unwrap();
        assert_eq!(again.revision, first.revision);
        assert_eq!(again.user, first.user);
    }
    // Read where the retries were answered, once it has the lowering.
    apps[2]
        .access
        .clone()
        .check_analytics_access(check_at("acme", "ada", lowered.revision))
        .await
        .unwrap();
    let now = apps[2].get_user("acme", "ada").await.unwrap();
    assert_eq!(now.edition, "X2", "a retry applied its change again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_by_every_replica() {
    let Some((apps, _dirs, _db)) = replicas(3).await else {
        return;
    };
    apps[0].create_account("acme", "work").await;
    let made = apps[0]
        .tokens
        .clone()
        .create_token(pb::CreateTokenRequest {
            name: "gateway".into(),
            role: pb::Role::Gateway as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let secret = made.secret;
    let id = made.token.unwrap().token_id;
    // Known on every replica within a second.
    for app in &apps {
        let client = app.clients(Some(&secret));
        within(
            Duration::from_secs(1),
            "the new token reaching a replica",
            async {
                while client
                    .access
                    .clone()
                    .check_analytics_access(check_at("acme", "nobody", 0))
                    .await
                    .is_err()
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            },
        )
        .await;
    }
    let gateway = apps[2].clients(Some(&secret));
    let revoked = apps[1]
        .tokens
        .clone()
        .revoke_token(pb::RevokeTokenRequest {
            token_id: id,
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    // At once, for a call that carries the revocation's revision.
    let status = gateway
        .access
        .clone()
        .check_analytics_access(check_at("acme", "nobody", revoked.revision))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    // Within a second on every replica, for any call.
    for app in &apps {
        let client = app.clients(Some(&secret));
        within(
            Duration::from_secs(1),
            "the revocation reaching a replica",
            async {
                loop {
                    let answer = client
                        .access
                        .clone()
                        .check_analytics_access(check_at("acme", "nobody", 0))
                        .await;
                    if answer.is_err_and(|s| s.code() == Code::Unauthenticated) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            },
        )
        .await;
    }
}

/// Reads `count` changes from a watch on `app` after `after`.
async fn watched(app: &TestApp, after: u64, count: usize) -> Vec<pb::EntitlementChange> {
    use pb::watch_entitlements_response::Event;
    let mut stream = app
        .access
        .clone()
        .watch_entitlements(pb::WatchEntitlementsRequest {
            account_id: String::new(),
            after_revision: after,
        })
        .await
        .unwrap()
        .into_inner();
    let mut changes = Vec::new();
    within(Duration::from_secs(10), "the watched changes", async {
        while changes.len() < count {
            match stream.message().await.unwrap().unwrap().event {
                Some(Event::Change(change)) => changes.push(change),
                Some(Event::Heartbeat(_) | Event::Account(_)) | None => {}
            }
        }
    })
    .await;
    changes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_gives_one_feed_and_resumes_on_another_replica() {
    let Some((apps, _dirs, _db)) = replicas(3).await else {
        return;
    };
    apps[0].create_account("acme", "work").await;
    let start = apps[0].revision().await;
    // Twelve changes, written through all three replicas.
    for i in 0..12 {
        apps[i % 3].put_user("acme", &format!("u{i:02}")).await;
    }
    let whole = watched(&apps[1], start, 12).await;
    let revisions: Vec<u64> = whole.iter().map(|c| c.revision).collect();
    assert_eq!(revisions, (start + 1..=start + 12).collect::<Vec<_>>());
    // The same feed from every replica.
    for app in [&apps[0], &apps[2]] {
        assert_eq!(watched(app, start, 12).await, whole);
    }
    // Resumed elsewhere after the fifth: no gap, no duplicate.
    let resumed = watched(&apps[2], whole[4].revision, 7).await;
    assert_eq!(resumed, whole[5..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writers_on_three_replicas_end_as_the_audit_trail_replayed() {
    let Some((apps, _dirs, _db)) = replicas(3).await else {
        return;
    };
    apps[0].create_account("acme", "work").await;
    let users: Vec<String> = (0..8).map(|i| format!("u{i}")).collect();
    for user in &users {
        apps[0].put_user("acme", user).await;
    }
    let editions = ["", "X1", "X2", "X4", "X6", "X8", "X8e"];
    let tiers = [T::None, T::Essentials, T::Supervisor];
    // Six writers, two per replica, 40 writes each; some are refused by
    // the catalogue's rules, some conflict; none may be lost.
    let writers = (0..6).map(|w| {
        let app = &apps[w % 3];
        let users = &users;
        async move {
            let mut seed = 0x9e37_79b9_7f4a_7c15_u64 ^ (w as u64);
            let mut next = move |n: usize| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed % n as u64) as usize
            };
            let mut acknowledged = Vec::new();
            for _ in 0..40 {
                let user = &users[next(users.len())];
                let edition = editions[next(editions.len())];
                let tier = tiers[next(tiers.len())];
                if let Ok(answer) = app.set("acme", user, Some(edition), Some(tier)).await {
                    acknowledged.push(answer.revision);
                }
            }
            acknowledged
        }
    });
    let acknowledged: Vec<u64> = futures_util::future::join_all(writers)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert!(!acknowledged.is_empty());
    let last = apps[0]
        .revision()
        .await
        .max(*acknowledged.iter().max().unwrap());
    // Replay the trail, in revision order, from any replica (once it has
    // reached the last revision: a listing stops at what it serves).
    apps[1]
        .access
        .clone()
        .check_analytics_access(check_at("acme", "u0", last))
        .await
        .unwrap();
    let mut replayed: BTreeMap<String, (String, i32)> = BTreeMap::new();
    let mut page_token = String::new();
    let mut revisions = Vec::new();
    loop {
        let page = apps[1]
            .audit
            .clone()
            .list_changes(pb::ListChangesRequest {
                account_id: "acme".into(),
                page_size: 1000,
                page_token: page_token.clone(),
                after_revision: 0,
            })
            .await
            .unwrap()
            .into_inner();
        for change in page.changes {
            // The account's record of the first tier given (its analytics
            // activation) shares that write's revision with the user's.
            let activation = change.account_before.is_some() && change.account_after.is_some();
            if change.refused || activation {
                continue;
            }
            revisions.push(change.revision);
            if let Some(after) = change.after {
                replayed.insert(
                    change.user_id.clone(),
                    (after.edition, after.analytics_tier),
                );
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    // Gap-free, in order, and every acknowledged write is in it.
    let mut sorted = revisions.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(revisions, sorted, "the trail is not in revision order");
    assert_eq!(sorted, (2..=last).collect::<Vec<_>>(), "the trail has gaps");
    for r in &acknowledged {
        assert!(
            sorted.contains(r),
            "acknowledged revision {r} is not in the trail"
        );
    }
    for app in &apps {
        for user in &users {
            let answer = app
                .access
                .clone()
                .check_analytics_access(check_at("acme", user, last))
                .await
                .unwrap()
                .into_inner();
            let stored = app.get_user("acme", user).await.unwrap();
            assert_eq!(
                (stored.edition.clone(), stored.analytics_tier),
                replayed[user],
                "replica state differs from the replayed trail for {user}"
            );
            assert_eq!(answer.edition, stored.edition);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_refuses_a_schema_newer_than_it_knows() {
    let Some((apps, dirs, db)) = replicas(1).await else {
        return;
    };
    drop(apps);
    let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .execute("INSERT INTO entitled_schema (version) VALUES (99)", &[])
        .await
        .unwrap();
    let mut config = entitled::server::Config::new(
        "127.0.0.1:0".parse().unwrap(),
        dirs[0].path().to_path_buf(),
        entitled::catalogue::Catalogue::builtin().unwrap(),
    );
    config.store = Some(Location::Postgres(db.url.clone()));
    let refused = entitled::server::Application::build(config)
        .await
        .err()
        .expect("a start on a newer schema");
    let message = refused.to_string();
    assert!(
        message.contains("schema version 99") && message.contains("newer"),
        "{message}"
    );
}

/// An account deleted on one replica reaches the others through the change
/// feed (users, the account and its revoked token), and a replica that
/// re-creates it right after (catching up under the write lock) starts it
/// empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_deleted_on_one_replica_is_gone_on_every_replica() {
    let Some((apps, _dirs, _db)) = replicas(3).await else {
        return;
    };
    apps[0].create_account("acme", "work").await;
    for user in ["ada", "bob"] {
        apps[1].put_user("acme", user).await;
        apps[1]
            .set("acme", user, Some("X8"), Some(T::Supervisor))
            .await
            .unwrap();
    }
    let admin = apps[0]
        .token("acme admin", pb::Role::AccountAdmin, "acme", "ada")
        .await;
    let deleted = apps[2]
        .provisioning
        .clone()
        .delete_account(pb::DeleteAccountRequest {
            account_id: "acme".into(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((deleted.users_deleted, deleted.tokens_revoked), (2, 1));
    for app in &apps {
        let answer = app
            .access
            .clone()
            .check_analytics_access(check_at("acme", "ada", deleted.revision))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            answer.denial_reason,
            pb::DenialReason::AccountNotFound as i32
        );
        let refused = app
            .clients(Some(&admin))
            .provisioning
            .get_account(pb::GetAccountRequest {
                account_id: "acme".into(),
            })
            .await;
        assert_status(refused, Code::Unauthenticated, &["revoked"]);
    }
    // Replica 0 writes next: it plans on what replica 2 committed.
    apps[0].create_account("acme", "virtual-office").await;
    apps[0].put_user("acme", "cy").await;
    for app in &apps {
        let revision = apps[0].revision().await;
        let answer = app
            .access
            .clone()
            .check_analytics_access(check_at("acme", "ada", revision))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.denial_reason, pb::DenialReason::UserNotFound as i32);
    }
    let users = apps[0]
        .provisioning
        .clone()
        .list_users(pb::ListUsersRequest {
            account_id: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .users;
    let ids: Vec<&str> = users.iter().map(|u| u.user_id.as_str()).collect();
    assert_eq!(ids, ["cy"]);
}

/// Sends ada to X8 on `app` (with `request_id`, if not empty) with a
/// 300 ms deadline, which runs out while the write waits: the call is
/// cancelled, its future dropped on the server.
async fn abandon(app: &TestApp, request_id: &str) {
    let mut abandoned = tonic::Request::new(pb::UpdateUserServicesRequest {
        account_id: "acme".into(),
        user_id: "ada".into(),
        edition: Some("X8".into()),
        request_id: request_id.into(),
        ..Default::default()
    });
    abandoned.set_timeout(Duration::from_millis(300));
    let answer = app
        .provisioning
        .clone()
        .update_user_services(abandoned)
        .await;
    let code = answer.as_ref().map_err(tonic::Status::code).err();
    assert!(
        matches!(code, Some(Code::Cancelled | Code::DeadlineExceeded)),
        "{answer:?}"
    );
}

/// Sends ada to `edition` on `app`, which must answer within 5 s: no
/// batch of an abandoned write holds the lock meanwhile.
async fn set_promptly(app: &TestApp, edition: &str, what: &str) -> pb::UpdateUserServicesResponse {
    within(
        Duration::from_secs(5),
        what,
        app.set("acme", "ada", Some(edition), None),
    )
    .await
    .unwrap()
}

/// A write whose caller goes away (a deadline, a reset stream) while its
/// batch waits for the write lock, or once it holds it, leaves nothing
/// holding the lock: the other replicas' writes go on at once, instead of
/// waiting out PostgreSQL's idle-in-transaction timeout (10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_abandoned_while_waiting_for_the_lock_leaves_it_free() {
    /// `WRITE_LOCK` in `src/store/postgres/commit.rs`.
    const WRITE_LOCK: i64 = 0x656e_7469_746c_6565;
    let Some((apps, _dirs, db)) = replicas(2).await else {
        return;
    };
    apps[0].create_account("acme", "work").await;
    apps[0].put_user("acme", "ada").await;
    // Hold the write lock from outside, as a long batch would.
    let (holder, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&WRITE_LOCK])
        .await
        .unwrap();
    // Replica 0's batch asks for it; its caller gives up meanwhile.
    abandon(&apps[0], "").await;
    holder
        .execute("SELECT pg_advisory_unlock($1)", &[&WRITE_LOCK])
        .await
        .unwrap();
    // Replica 1 writes at once: nothing of replica 0's holds the lock.
    let written = set_promptly(
        &apps[1],
        "X2",
        "a write on another replica after the abandoned one",
    )
    .await;
    // And replica 0 writes again too.
    let again = set_promptly(
        &apps[0],
        "X6",
        "a write on the replica whose caller went away",
    )
    .await;
    assert!(again.revision > written.revision);

    // Once its batch holds the lock, a write with a request id looks the id
    // up; a caller that goes away then leaves a batch open on replica 0,
    // which is finished for it. (The lookup waits here on a table lock.)
    holder
        .batch_execute("BEGIN; LOCK TABLE entitled_requests IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    abandon(&apps[0], "abandoned").await;
    holder.batch_execute("ROLLBACK").await.unwrap();
    set_promptly(
        &apps[1],
        "X2",
        "a write on another replica after the one abandoned in its batch",
    )
    .await;
}

/// A replica that writes alone (no other replica wrote since its last
/// batch) commits durably in the COMMIT itself, with no flush transaction
/// after it; replicas writing in turn commit without waiting for the flush
/// (the lock goes at once) and each then flushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_writing_alone_commits_durably_without_a_flush_of_its_own() {
    let Some((apps, _dirs, db)) = replicas(2).await else {
        return;
    };
    apps[0].create_account("acme", "work").await;
    apps[0].put_user("acme", "ada").await;
    let before = db.flushes().await;
    let mut revision = 0;
    for edition in ["X2", "X6", "X8", "X2", "X6"] {
        let written = apps[0]
            .set("acme", "ada", Some(edition), None)
            .await
            .unwrap();
        assert!(written.revision > revision);
        revision = written.revision;
    }
    assert_eq!(
        db.flushes().await,
        before,
        "a lone replica's writes flushed"
    );
    // Each acknowledged write is committed (and so readable from another
    // replica at its revision).
    let seen = apps[1]
        .access
        .clone()
        .check_analytics_access(check_at("acme", "ada", revision))
        .await
        .unwrap()
        .into_inner();
    assert!(seen.revision >= revision, "{seen:?}");
    assert_eq!(seen.edition, "X6", "{seen:?}");
    for (i, edition) in ["X8", "X2", "X6", "X8"].into_iter().enumerate() {
        apps[(i + 1) % 2]
            .set("acme", "ada", Some(edition), None)
            .await
            .unwrap();
    }
    assert_eq!(
        db.flushes().await,
        before + 4,
        "replicas writing in turn each flushed"
    );
}
