//! `entitled store copy` and `entitled migrate`: a sled store moved up to
//! PostgreSQL and back down, revisions, audit trail and kept answers
//! included, each copy served after. Skipped (one line) without a
//! PostgreSQL server, unless `ENTITLED_REQUIRE_POSTGRES=1`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use common::{Options, T, TestApp, postgres};
use entitled::{proto::v1 as pb, store::Location};

const BIN: &str = env!("CARGO_BIN_EXE_entitled");

fn run(args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(args)
        .env_remove("ENTITLED_STORE")
        .output()
        .unwrap()
}

/// What a server shows of its store: the revision, every user, and the
/// whole audit trail.
async fn contents(app: &TestApp) -> (u64, Vec<pb::User>, Vec<pb::Change>) {
    let users = app
        .provisioning
        .clone()
        .list_users(pb::ListUsersRequest {
            account_id: "acme".into(),
            page_size: 1000,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .users;
    let changes = app
        .audit
        .clone()
        .list_changes(pb::ListChangesRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .changes;
    (app.revision().await, users, changes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_store_moves_to_postgres_and_back_whole() {
    if !postgres::available().await {
        return;
    }
    // A sled store with users, a refusal, a token and a kept answer.
    let sled = tempfile::tempdir().unwrap();
    let app = TestApp::start(sled.path(), Options::default()).await;
    app.create_account("acme", "work").await;
    for user in ["ada", "bob", "cy"] {
        app.put_user("acme", user).await;
    }
    // A supervisor scoped to groups (rule 12).
    app.update(pb::UpdateUserServicesRequest {
        account_id: "acme".into(),
        user_id: "ada".into(),
        edition: Some("X8".into()),
        analytics_tier: Some(T::Supervisor as i32),
        supervisor_scope: Some(pb::SupervisorScope {
            whole_account: false,
            refs: vec![pb::ScopeRef {
                kind: pb::ScopeKind::UserGroup as i32,
                id: "G1".into(),
            }],
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    app.set("acme", "bob", Some("X2"), Some(T::Supervisor))
        .await
        .unwrap_err();
    app.token("gateway", pb::Role::Gateway, "", "").await;
    let request = pb::UpdateUserServicesRequest {
        account_id: "acme".into(),
        user_id: "cy".into(),
        edition: Some("X6".into()),
        request_id: "R1".into(),
        ..Default::default()
    };
    let first = app.update(request.clone()).await.unwrap();
    let secret = app.operator_secret.clone();
    let before = contents(&app).await;
    assert!(before.1.iter().any(|u| {
        u.supervisor_scope
            .as_ref()
            .is_some_and(|s| s.refs.len() == 1)
    }));
    app.stop().await;

    let db = postgres::TestDatabase::create().await;
    let out = run(&["migrate", "--store", &db.url]);
    assert!(out.status.success(), "{out:?}");
    let dir = sled.path().to_str().unwrap();
    let out = run(&["store", "copy", "--from", dir, "--to", &db.url]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("compared"), "{said}");

    // Served from PostgreSQL: the same store, and the kept answer replays.
    let on_pg = tempfile::tempdir().unwrap();
    let pg_options = || Options {
        store: Some(Location::Postgres(db.url.clone())),
        ..Options::default()
    };
    let app = TestApp::start_with_secret(on_pg.path(), pg_options(), secret.clone()).await;
    assert_eq!(contents(&app).await, before);
    let again = app.update(request.clone()).await.unwrap();
    assert_eq!(again, first);
    assert!(
        !on_pg.path().join("operator.token").exists(),
        "a copied store is bootstrapped already"
    );
    // A write after the copy continues the revisions.
    let next = app.set("acme", "bob", Some("X6"), None).await.unwrap();
    assert_eq!(next.revision, before.0 + 1);
    let after_write = contents(&app).await;
    app.stop().await;

    // Into a directory that is not empty: refused, nothing changed.
    let out = run(&["store", "copy", "--from", &db.url, "--to", dir]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not empty"),
        "{out:?}"
    );
    // Into a database that holds a store: refused.
    let out = run(&["store", "copy", "--from", dir, "--to", &db.url]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("holds a store"),
        "{out:?}"
    );

    // And back down to a new sled directory.
    let back = tempfile::tempdir().unwrap();
    let back_dir = back.path().join("store");
    let out = run(&[
        "store",
        "copy",
        "--from",
        &db.url,
        "--to",
        back_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let app = TestApp::start_with_secret(&back_dir, Options::default(), secret).await;
    assert_eq!(contents(&app).await, after_write);
    assert_eq!(app.update(request).await.unwrap(), first);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_refuses_what_is_not_a_database() {
    let out = run(&["migrate", "--store", "./some/dir"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("postgres://USER@HOST:PORT/DB"),
        "{out:?}"
    );
}
