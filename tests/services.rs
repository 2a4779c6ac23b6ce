//! UpdateUserServices: the catalogue's rules on every write. Each test runs on
//! sled and on PostgreSQL.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use common::{T, TestApp, assert_status};
use entitled::proto::v1 as pb;
use tonic::Code;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Want {
    Granted,
    Refused,
}
use Want::{Granted, Refused};

/// Every (product line, edition, tier) of the default catalogue, one line a
/// case, written from domain.md rules 3 and 4 (not from the catalogue file).
const CASES: &[(&str, &str, T, Want)] = &[
    ("virtual-office", "X2", T::None, Granted),
    ("virtual-office", "X2", T::Essentials, Granted),
    ("virtual-office", "X2", T::Supervisor, Refused),
    ("virtual-office", "X5", T::None, Granted),
    ("virtual-office", "X5", T::Essentials, Granted),
    ("virtual-office", "X5", T::Supervisor, Refused),
    ("virtual-office", "X6", T::None, Granted),
    ("virtual-office", "X6", T::Essentials, Granted),
    ("virtual-office", "X6", T::Supervisor, Granted),
    ("virtual-office", "X8", T::None, Granted),
    ("virtual-office", "X8", T::Essentials, Granted),
    ("virtual-office", "X8", T::Supervisor, Granted),
    ("virtual-office", "X8e", T::None, Granted),
    ("virtual-office", "X8e", T::Essentials, Granted),
    ("virtual-office", "X8e", T::Supervisor, Granted),
    ("work", "X1", T::None, Granted),
    ("work", "X1", T::Essentials, Granted),
    ("work", "X1", T::Supervisor, Refused),
    ("work", "X2", T::None, Granted),
    ("work", "X2", T::Essentials, Granted),
    ("work", "X2", T::Supervisor, Refused),
    ("work", "X3", T::None, Granted),
    ("work", "X3", T::Essentials, Granted),
    ("work", "X3", T::Supervisor, Refused),
    ("work", "X4", T::None, Granted),
    ("work", "X4", T::Essentials, Granted),
    ("work", "X4", T::Supervisor, Granted),
    ("work", "X5", T::None, Granted),
    ("work", "X5", T::Essentials, Granted),
    ("work", "X5", T::Supervisor, Granted),
    ("work", "X6", T::None, Granted),
    ("work", "X6", T::Essentials, Granted),
    ("work", "X6", T::Supervisor, Granted),
    ("work", "X7", T::None, Granted),
    ("work", "X7", T::Essentials, Granted),
    ("work", "X7", T::Supervisor, Granted),
    ("work", "X8", T::None, Granted),
    ("work", "X8", T::Essentials, Granted),
    ("work", "X8", T::Supervisor, Granted),
    ("work", "X8e", T::None, Granted),
    ("work", "X8e", T::Essentials, Granted),
    ("work", "X8e", T::Supervisor, Granted),
];

on_both_backends! {
    async fn every_edition_and_tier_of_the_default_catalogue(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("vo", "virtual-office").await;
        app.create_account("work", "work").await;
        for (i, &(line, edition, tier, want)) in CASES.iter().enumerate() {
            let account = if line == "work" { "work" } else { "vo" };
            let user = format!("u{i}");
            app.put_user(account, &user).await;
            check(&app, account, &user, edition, tier, want).await;
        }
        // The table covers the whole catalogue.
        let catalogue = app
            .catalogue
            .clone()
            .get_catalogue(pb::GetCatalogueRequest {})
            .await
            .unwrap()
            .into_inner();
        let combinations: usize = catalogue
            .product_lines
            .iter()
            .map(|l| l.editions.len() * 3)
            .sum();
        assert_eq!(combinations, CASES.len());
    }
}

async fn check(app: &TestApp, account: &str, user: &str, edition: &str, tier: T, want: Want) {
    let result = app.set(account, user, Some(edition), Some(tier)).await;
    let answer = app.check(account, user).await;
    match want {
        Granted => {
            let reply = result.unwrap_or_else(|s| panic!("{edition} {tier:?}: {}", s.message()));
            let stored = reply.user.unwrap();
            assert_eq!(
                (stored.edition.as_str(), stored.analytics_tier),
                (edition, tier as i32)
            );
            assert_eq!(answer.allowed, tier != T::None, "{edition} {tier:?}");
            assert_eq!(answer.tier, tier as i32);
            assert_eq!(answer.edition, edition);
        }
        Refused => {
            assert_status(
                result,
                Code::FailedPrecondition,
                &[&format!(
                    "edition `{edition}` does not include supervisor analytics; supervisor needs one of X"
                )],
            );
            let stored = app.get_user(account, user).await.unwrap();
            assert_eq!(
                (stored.edition.as_str(), stored.analytics_tier),
                ("", T::None as i32),
                "nothing changed"
            );
            assert!(!answer.allowed);
        }
    }
}

on_both_backends! {
    async fn refusals_name_what_would_be_right(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("vo", "virtual-office").await;
        app.create_account("work", "work").await;
        app.put_user("vo", "ada").await;
        app.put_user("work", "bob").await;
        let before = app.revision().await;

        assert_status(
            app.set("vo", "ada", Some("X2"), Some(T::Supervisor)).await,
            Code::FailedPrecondition,
            &[
                "edition `X2` does not include supervisor analytics; supervisor needs one of X6, X8, X8e",
            ],
        );
        assert_status(
            app.set("work", "bob", Some("X3"), Some(T::Supervisor))
                .await,
            Code::FailedPrecondition,
            &["supervisor needs one of X4, X5, X6, X7, X8, X8e"],
        );
        assert_status(
            app.set("vo", "ada", Some("X1"), None).await,
            Code::InvalidArgument,
            &["edition `X1` is not in product line `virtual-office`; use one of X2, X5, X6, X8, X8e"],
        );
        assert_status(
            app.set("work", "bob", Some("x4"), None).await,
            Code::InvalidArgument,
            &["edition `x4`"],
        );
        assert_status(
            app.set("work", "bob", None, Some(T::Essentials)).await,
            Code::FailedPrecondition,
            &["user `bob` has no edition licence; essentials analytics needs one of X1, X2"],
        );
        assert_status(
            app.set("work", "bob", None, Some(T::Unspecified)).await,
            Code::InvalidArgument,
            &["analytics_tier `ANALYTICS_TIER_UNSPECIFIED` is not a tier"],
        );
        let unknown_tier = app
            .update(pb::UpdateUserServicesRequest {
                account_id: "work".into(),
                user_id: "bob".into(),
                analytics_tier: Some(9),
                ..Default::default()
            })
            .await;
        assert_status(
            unknown_tier,
            Code::InvalidArgument,
            &["analytics_tier `9` is not a tier"],
        );
        assert_status(
            app.set("work", "bob", None, None).await,
            Code::InvalidArgument,
            &["nothing to change"],
        );
        assert_status(
            app.set("work", "nobody", Some("X4"), None).await,
            Code::NotFound,
            &["user `nobody` does not exist in account `work`"],
        );
        assert_status(
            app.set("globex", "bob", Some("X4"), None).await,
            Code::NotFound,
            &["account `globex` does not exist"],
        );

        assert_eq!(
            app.revision().await,
            before,
            "refused writes change nothing"
        );
        let bob = app.get_user("work", "bob").await.unwrap();
        assert_eq!(
            (bob.edition.as_str(), bob.analytics_tier),
            ("", T::None as i32)
        );
    }
}

on_both_backends! {
    async fn lowering_the_edition_lowers_supervisor_with_a_notice(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("work", "work").await;
        app.put_user("work", "ada").await;
        app.set("work", "ada", Some("X8"), Some(T::Supervisor))
            .await
            .unwrap();

        // Still allows supervisor: nothing lowered.
        let reply = app.set("work", "ada", Some("X4"), None).await.unwrap();
        assert!(reply.notices.is_empty());
        assert_eq!(reply.user.unwrap().analytics_tier, T::Supervisor as i32);

        let reply = app.set("work", "ada", Some("X2"), None).await.unwrap();
        let user = reply.user.unwrap();
        assert_eq!(
            (user.edition.as_str(), user.analytics_tier),
            ("X2", T::Essentials as i32)
        );
        assert_eq!(reply.notices.len(), 1);
        assert_eq!(reply.notices[0].kind, pb::NoticeKind::TierLowered as i32);
        assert_eq!(
            reply.notices[0].message,
            "edition `X2` does not include supervisor analytics, so analytics was lowered to essentials"
        );
        let answer = app.check("work", "ada").await;
        assert_eq!((answer.allowed, answer.tier), (true, T::Essentials as i32));

        // Raising the edition never raises the tier by itself.
        let reply = app.set("work", "ada", Some("X8e"), None).await.unwrap();
        assert!(reply.notices.is_empty());
        assert_eq!(reply.user.unwrap().analytics_tier, T::Essentials as i32);
        // An admin sets supervisor explicitly.
        let reply = app
            .set("work", "ada", None, Some(T::Supervisor))
            .await
            .unwrap();
        assert_eq!(reply.user.unwrap().analytics_tier, T::Supervisor as i32);
    }
}

on_both_backends! {
    async fn edition_and_tier_are_validated_together(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("vo", "virtual-office").await;
        app.put_user("vo", "ada").await;
        // Both in one call: licence first, then the tier it allows.
        let reply = app
            .set("vo", "ada", Some("X6"), Some(T::Supervisor))
            .await
            .unwrap();
        assert_eq!(
            reply.user.as_ref().unwrap().analytics_tier,
            T::Supervisor as i32
        );
        let before = app.get_user("vo", "ada").await.unwrap();

        // A lower edition with supervisor explicitly: refused as a whole.
        assert_status(
            app.set("vo", "ada", Some("X5"), Some(T::Supervisor)).await,
            Code::FailedPrecondition,
            &["edition `X5`"],
        );
        // Removing the licence while asking for a tier: refused as a whole.
        assert_status(
            app.set("vo", "ada", Some(""), Some(T::Essentials)).await,
            Code::FailedPrecondition,
            &["has no edition licence"],
        );
        assert_eq!(
            app.get_user("vo", "ada").await.unwrap(),
            before,
            "nothing changed"
        );

        // A lower edition with essentials explicitly: no notice, the admin chose.
        let reply = app
            .set("vo", "ada", Some("X5"), Some(T::Essentials))
            .await
            .unwrap();
        assert!(reply.notices.is_empty());
    }
}

on_both_backends! {
    async fn removing_the_licence_sets_the_tier_to_none(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("work", "work").await;
        app.put_user("work", "ada").await;
        app.set("work", "ada", Some("X6"), Some(T::Supervisor))
            .await
            .unwrap();
        let reply = app.set("work", "ada", Some(""), None).await.unwrap();
        let user = reply.user.unwrap();
        assert_eq!(
            (user.edition.as_str(), user.analytics_tier),
            ("", T::None as i32)
        );
        assert_eq!(reply.notices.len(), 1);
        assert_eq!(reply.notices[0].kind, pb::NoticeKind::TierRemoved as i32);
        assert_eq!(
            reply.notices[0].message,
            "the licence was removed, so analytics was lowered from supervisor to none"
        );
        let answer = app.check("work", "ada").await;
        assert_eq!(
            (answer.allowed, answer.denial_reason),
            (false, pb::DenialReason::NoEdition as i32)
        );

        // Removing with an explicit none is the same, without a notice.
        app.set("work", "ada", Some("X1"), Some(T::Essentials))
            .await
            .unwrap();
        let reply = app
            .set("work", "ada", Some(""), Some(T::None))
            .await
            .unwrap();
        assert!(reply.notices.is_empty());
        assert_eq!(reply.user.unwrap().analytics_tier, T::None as i32);
    }
}

on_both_backends! {
    async fn revisions_count_every_write_and_guard_conflicts(backend) {
        let app = TestApp::spawn_on(backend).await;
        let account = app
            .provisioning
            .clone()
            .create_account(pb::CreateAccountRequest {
                account_id: "work".into(),
                display_name: String::new(),
                product_line: "work".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(account.revision, 2);
        assert_eq!(app.put_user("work", "ada").await.revision, 3);
        assert_eq!(app.put_user("work", "bob").await.revision, 4);
        let reply = app.set("work", "ada", Some("X4"), None).await.unwrap();
        assert_eq!((reply.revision, reply.user.unwrap().revision), (5, 5));
        // A no-op changes nothing and reports the revision as it is.
        let reply = app.set("work", "ada", Some("X4"), None).await.unwrap();
        assert_eq!((reply.revision, reply.user.unwrap().revision), (5, 5));

        let update = |expected: u64, tier: T| pb::UpdateUserServicesRequest {
            account_id: "work".into(),
            user_id: "ada".into(),
            edition: None,
            analytics_tier: Some(tier as i32),
            expected_revision: Some(expected),
            ..Default::default()
        };
        // bob's write raised the store revision but not ada's.
        app.put_user("work", "bob2").await;
        assert_eq!(app.revision().await, 6);
        let reply = app.update(update(5, T::Essentials)).await.unwrap();
        assert_eq!(reply.user.unwrap().revision, 7);
        // A stale expectation is refused and changes nothing.
        assert_status(
            app.update(update(5, T::Supervisor)).await,
            Code::Aborted,
            &["user `ada` is at revision 7, not the expected_revision 5"],
        );
        assert_status(
            app.update(update(0, T::Supervisor)).await,
            Code::Aborted,
            &["revision 7"],
        );
        let ada = app.get_user("work", "ada").await.unwrap();
        assert_eq!(
            (ada.analytics_tier, ada.revision),
            (T::Essentials as i32, 7)
        );
        assert_eq!(app.revision().await, 7);
        let reply = app.update(update(7, T::Supervisor)).await.unwrap();
        assert_eq!(reply.revision, 8);
        assert_eq!(app.check("work", "ada").await.revision, 8);
    }
}

on_both_backends! {
    async fn the_first_tier_activates_the_account_once(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("work", "work").await;
        app.put_user("work", "ada").await;
        app.put_user("work", "bob").await;
        app.set("work", "ada", Some("X4"), Some(T::None))
            .await
            .unwrap();
        assert!(
            app.get_account("work")
                .await
                .unwrap()
                .analytics_activated_at
                .is_none(),
            "none does not activate"
        );
        assert!(app.check("work", "ada").await.data_available_at.is_none());

        app.set("work", "ada", None, Some(T::Essentials))
            .await
            .unwrap();
        let activated = app
            .get_account("work")
            .await
            .unwrap()
            .analytics_activated_at
            .unwrap();
        // Later grants and removals do not move it.
        app.set("work", "bob", Some("X8"), Some(T::Supervisor))
            .await
            .unwrap();
        app.set("work", "ada", Some(""), None).await.unwrap();
        assert_eq!(
            app.get_account("work")
                .await
                .unwrap()
                .analytics_activated_at
                .unwrap(),
            activated
        );
    }
}
