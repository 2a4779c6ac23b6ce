//! `Store::import`, the load generator's bulk loader: what it writes is what
//! a restarted server serves, at one revision, on sled and on PostgreSQL.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use std::time::SystemTime;

use common::{Backend, Options, T, TestApp, postgres::TestDatabase};
use entitled::{
    domain::{Account, AccountId, SupervisorScope, Tier, User, UserId},
    store::{Location, Store},
};

fn user(account: &str, id: &str, edition: Option<&str>, tier: Tier) -> User {
    let now = SystemTime::now();
    User {
        account_id: AccountId::try_from(account.to_owned()).unwrap(),
        id: UserId::try_from(id.to_owned()).unwrap(),
        display_name: format!("User {id}"),
        edition: edition.map(str::to_owned),
        tier,
        revision: 0,
        created_at: now,
        updated_at: now,
        supervisor_scope: (tier == Tier::Supervisor).then_some(SupervisorScope::WholeAccount),
    }
}

on_both_backends! {
    async fn imported_records_are_served_after_a_restart_at_one_revision(backend) {
        let dir = tempfile::tempdir().unwrap();
        let database = match backend {
            Backend::Sled => None,
            Backend::Postgres => Some(TestDatabase::create().await),
        };
        // Where a server started below finds the store: its directory's sled
        // (the default), or the database.
        let database_store = database
            .as_ref()
            .map(|database| Location::Postgres(database.url.clone()));
        let location = database_store
            .clone()
            .unwrap_or_else(|| Location::Sled(dir.path().to_path_buf()));
        let imported = {
            let store = Store::open_at(&location).await.unwrap();
            // Blocking by design; run it where blocking is allowed.
            tokio::task::spawn_blocking(move || {
                let now = SystemTime::now();
                let account = Account {
                    id: AccountId::try_from("work".to_owned()).unwrap(),
                    display_name: "Work".into(),
                    product_line: "work".into(),
                    created_at: now,
                    analytics_activated_at: Some(now),
                };
                let users = vec![
                    user("work", "ada", Some("X8"), Tier::Supervisor),
                    user("work", "bob", Some("X2"), Tier::Essentials),
                    user("work", "cy", None, Tier::None),
                ];
                let revision = store.import(vec![account], users).unwrap();
                assert_eq!(store.read(|v| v.revision()), revision);
                revision
            })
            .await
            .unwrap()
        };
        assert_eq!(imported, 1, "one import is one write");

        let app = TestApp::start(
            dir.path(),
            Options {
                store: database_store,
                ..Options::default()
            },
        )
        .await;
        // The first start's operator token is the next write.
        assert_eq!(app.revision().await, 2);
        assert_eq!(app.check("work", "ada").await.tier, T::Supervisor as i32);
        assert_eq!(app.check("work", "bob").await.tier, T::Essentials as i32);
        assert!(!app.check("work", "cy").await.allowed);
        let ada = app.get_user("work", "ada").await.unwrap();
        assert_eq!(ada.revision, 1);
        // Writes go on from the imported revision.
        let next = app.set("work", "cy", Some("X4"), None).await.unwrap();
        assert_eq!(next.revision, 3);
        app.stop().await;
    }
}
