//! CheckAnalyticsAccess: denial reasons, reports, the data-delay clock, and
//! the catalogue in force capping stored tiers. Each test runs on sled and on
//! PostgreSQL.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use std::time::{Duration, SystemTime};

use common::{ManualClock, Options, T, TestApp, catalogue_with};
use entitled::proto::v1 as pb;
use pb::DenialReason as D;

fn report_ids(answer: &pb::CheckAnalyticsAccessResponse) -> Vec<&str> {
    answer.reports.iter().map(|r| &*r.id).collect()
}

const ESSENTIALS_REPORTS: [&str; 7] = [
    "company-summary",
    "extension-summary",
    "call-detail-records",
    "active-calls",
    "unreturned-calls",
    "employee-report",
    "scheduled-report-emails",
];
const SUPERVISOR_ONLY: [&str; 5] = [
    "call-quality",
    "call-queue",
    "ring-groups-summary",
    "device-report",
    "business-hours-report",
];

on_both_backends! {
    async fn denials_are_answers_with_reasons(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("work", "work").await;
        app.put_user("work", "ada").await;
        // (account, user, reason, words of the explanation)
        let cases = [
            (
                "globex",
                "ada",
                D::AccountNotFound,
                "account `globex` does not exist",
            ),
            (
                "work",
                "bob",
                D::UserNotFound,
                "user `bob` does not exist in account `work`",
            ),
            (
                "work",
                "ada",
                D::NoEdition,
                "user `ada` has no edition licence",
            ),
        ];
        for (account, user, reason, words) in cases {
            let answer = app.check(account, user).await;
            assert!(!answer.allowed);
            assert_eq!(answer.denial_reason, reason as i32, "{account}/{user}");
            assert_eq!(answer.tier, T::None as i32);
            assert!(answer.reports.is_empty());
            assert!(answer.reason.contains(words), "{}", answer.reason);
        }
        app.set("work", "ada", Some("X4"), None).await.unwrap();
        let answer = app.check("work", "ada").await;
        assert_eq!(
            (answer.allowed, answer.denial_reason),
            (false, D::AnalyticsNotEnabled as i32)
        );
        assert_eq!(answer.edition, "X4");
    }
}

on_both_backends! {
    async fn allowed_checks_list_the_tiers_reports(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("work", "work").await;
        app.put_user("work", "ada").await;
        app.put_user("work", "bob").await;
        app.set("work", "ada", Some("X2"), Some(T::Essentials))
            .await
            .unwrap();
        let reply = app
            .set("work", "bob", Some("X6"), Some(T::Supervisor))
            .await
            .unwrap();

        let ada = app.check("work", "ada").await;
        assert!(ada.allowed);
        assert_eq!(
            (ada.tier, ada.stored_tier, ada.denial_reason),
            (
                T::Essentials as i32,
                T::Essentials as i32,
                D::Unspecified as i32
            )
        );
        assert_eq!(report_ids(&ada), ESSENTIALS_REPORTS);

        let bob = app.check("work", "bob").await;
        assert!(bob.allowed);
        assert_eq!(bob.tier, T::Supervisor as i32);
        let mut want: Vec<&str> = ESSENTIALS_REPORTS.to_vec();
        want.extend(SUPERVISOR_ONLY);
        assert_eq!(report_ids(&bob), want);
        assert_eq!(bob.revision, reply.revision);

        // Before the data delay, only the live report is usable.
        assert!(!bob.data_ready);
        for report in &bob.reports {
            let live = report.kind == pb::ReportKind::Live as i32;
            assert_eq!(live, &*report.id == "active-calls");
            assert_eq!(report.available, live, "{}", report.id);
        }
    }
}

on_both_backends! {
    async fn historical_reports_open_after_the_data_delay(backend) {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let clock = ManualClock::new(start);
        let app = TestApp::spawn_with(Options {
            backend,
            clock: Some(clock.clock()),
            ..Options::default()
        })
        .await;
        app.create_account("work", "work").await;
        app.put_user("work", "ada").await;
        app.put_user("work", "bob").await;
        clock.advance(Duration::from_secs(60));
        app.set("work", "ada", Some("X2"), Some(T::Essentials))
            .await
            .unwrap();
        let activated = start + Duration::from_secs(60);
        let account = app.get_account("work").await.unwrap();
        assert_eq!(
            SystemTime::try_from(account.analytics_activated_at.unwrap()).unwrap(),
            activated
        );

        let ready_at = activated + Duration::from_secs(48 * 3600);
        let at = |answer: &pb::CheckAnalyticsAccessResponse| {
            SystemTime::try_from(answer.data_available_at.unwrap()).unwrap()
        };

        clock.advance(Duration::from_secs(48 * 3600 - 1));
        let answer = app.check("work", "ada").await;
        assert_eq!(at(&answer), ready_at);
        assert!(!answer.data_ready);
        assert_eq!(answer.reports.iter().filter(|r| r.available).count(), 1);

        // A user enabled later shares the account's clock.
        app.set("work", "bob", Some("X4"), Some(T::Supervisor))
            .await
            .unwrap();
        assert_eq!(at(&app.check("work", "bob").await), ready_at);

        clock.advance(Duration::from_secs(1));
        let answer = app.check("work", "ada").await;
        assert!(answer.data_ready);
        assert!(answer.reports.iter().all(|r| r.available));
        assert!(
            app.check("work", "bob")
                .await
                .reports
                .iter()
                .all(|r| r.available)
        );
    }
}

on_both_backends! {
    async fn the_data_delay_can_be_overridden(backend) {
        let catalogue = entitled::catalogue::Catalogue::builtin()
            .unwrap()
            .with_data_delay(Duration::from_secs(2));
        let app = TestApp::spawn_with(Options {
            backend,
            catalogue,
            ..Options::default()
        })
        .await;
        let c = app
            .catalogue
            .clone()
            .get_catalogue(pb::GetCatalogueRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            c.data_delay,
            Some(prost_types::Duration {
                seconds: 2,
                nanos: 0
            })
        );
        app.create_account("work", "work").await;
        app.put_user("work", "ada").await;
        app.set("work", "ada", Some("X1"), Some(T::Essentials))
            .await
            .unwrap();
        let answer = app.check("work", "ada").await;
        let activated = SystemTime::try_from(
            app.get_account("work")
                .await
                .unwrap()
                .analytics_activated_at
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            SystemTime::try_from(answer.data_available_at.unwrap()).unwrap(),
            activated + Duration::from_secs(2)
        );
    }
}

on_both_backends! {
    async fn the_catalogue_in_force_caps_stored_tiers(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("work", "work").await;
        for user in ["ada", "bob", "cy"] {
            app.put_user("work", user).await;
        }
        app.set("work", "ada", Some("X6"), Some(T::Supervisor))
            .await
            .unwrap();
        app.set("work", "bob", Some("X7"), Some(T::Essentials))
            .await
            .unwrap();
        app.set("work", "cy", Some("X8"), Some(T::Supervisor))
            .await
            .unwrap();

        // The operator's new catalogue: X6 loses supervisor, X7 loses analytics,
        // X8 is gone.
        let catalogue = catalogue_with(|t| {
            t.replace(
                r#"{ id = "X6", max_tier = "supervisor" },
  { id = "X7", max_tier = "supervisor" },
  { id = "X8", max_tier = "supervisor" },"#,
                r#"{ id = "X6", max_tier = "essentials" },
  { id = "X7", max_tier = "none" },"#,
            )
        });
        let app = app
            .restart_with(Options {
                catalogue,
                ..Options::default()
            })
            .await;

        let ada = app.check("work", "ada").await;
        assert!(ada.allowed);
        assert_eq!(
            (ada.tier, ada.stored_tier),
            (T::Essentials as i32, T::Supervisor as i32)
        );
        assert_eq!(ada.denial_reason, D::EditionNotEligible as i32);
        assert_eq!(report_ids(&ada), ESSENTIALS_REPORTS);
        assert!(
            ada.reason.contains("no longer includes supervisor"),
            "{}",
            ada.reason
        );

        for user in ["bob", "cy"] {
            let answer = app.check("work", user).await;
            assert!(!answer.allowed, "{user}");
            assert_eq!(
                (answer.tier, answer.denial_reason),
                (T::None as i32, D::EditionNotEligible as i32)
            );
            assert!(answer.reports.is_empty());
        }
        // Stored data is untouched: the check lowers, it does not rewrite.
        assert_eq!(
            app.get_user("work", "ada").await.unwrap().analytics_tier,
            T::Supervisor as i32
        );
        // The next write of ada's services applies the new catalogue.
        let reply = app.set("work", "ada", Some("X6"), None).await.unwrap();
        assert_eq!(reply.user.unwrap().analytics_tier, T::Essentials as i32);
        assert_eq!(reply.notices.len(), 1);
    }
}

on_both_backends! {
    async fn get_catalogue_describes_the_catalogue_in_force(backend) {
        let app = TestApp::spawn_on(backend).await;
        let c = app
            .catalogue
            .clone()
            .get_catalogue(pb::GetCatalogueRequest {})
            .await
            .unwrap()
            .into_inner();
        let lines: Vec<(&str, Vec<&str>)> = c
            .product_lines
            .iter()
            .map(|l| {
                (
                    l.id.as_str(),
                    l.editions.iter().map(|e| e.id.as_str()).collect(),
                )
            })
            .collect();
        assert_eq!(
            lines,
            [
                ("virtual-office", vec!["X2", "X5", "X6", "X8", "X8e"]),
                (
                    "work",
                    vec!["X1", "X2", "X3", "X4", "X5", "X6", "X7", "X8", "X8e"]
                ),
            ]
        );
        let x4 = &c.product_lines[1].editions[3];
        assert_eq!(
            x4.allowed_tiers,
            [T::None as i32, T::Essentials as i32, T::Supervisor as i32]
        );
        let x3 = &c.product_lines[1].editions[2];
        assert_eq!(x3.allowed_tiers, [T::None as i32, T::Essentials as i32]);
        assert_eq!(c.tier_reports.len(), 2);
        assert_eq!(c.tier_reports[0].tier, T::Essentials as i32);
        assert_eq!(c.tier_reports[0].reports.len(), 7);
        assert_eq!(c.tier_reports[1].reports.len(), 12);
        let active = c.tier_reports[0]
            .reports
            .iter()
            .find(|r| r.id == "active-calls")
            .unwrap();
        assert_eq!(
            (active.display_name.as_str(), active.kind),
            ("Active Calls", pb::ReportKind::Live as i32)
        );
        assert_eq!(
            c.data_delay,
            Some(prost_types::Duration {
                seconds: 48 * 3600,
                nanos: 0
            })
        );
    }
}
