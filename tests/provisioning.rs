//! Accounts and users: creation, reads, listing, deletion, and input checks.
//! Each test runs on sled and on PostgreSQL.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use common::{TestApp, assert_status};
use entitled::proto::v1 as pb;
use tonic::Code;

on_both_backends! {
    async fn create_and_get_account(backend) {
        let app = TestApp::spawn_on(backend).await;
        let created = app
            .provisioning
            .clone()
            .create_account(pb::CreateAccountRequest {
                account_id: "acme".into(),
                display_name: "Acme Corp".into(),
                product_line: "work".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(created.revision, 2);
        let account = created.account.unwrap();
        assert_eq!(account.account_id, "acme");
        assert_eq!(account.display_name, "Acme Corp");
        assert_eq!(account.product_line, "work");
        assert!(account.created_at.is_some());
        assert!(account.analytics_activated_at.is_none());
        assert_eq!(app.get_account("acme").await.unwrap(), account);
    }
}

on_both_backends! {
    async fn account_errors(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        let create = |id: &str, line: &str| {
            let mut client = app.provisioning.clone();
            let request = pb::CreateAccountRequest {
                account_id: id.into(),
                display_name: String::new(),
                product_line: line.into(),
                ..Default::default()
            };
            async move { client.create_account(request).await }
        };
        assert_status(
            create("acme", "virtual-office").await,
            Code::AlreadyExists,
            &["account `acme` already exists"],
        );
        assert_status(
            create("globex", "x-series").await,
            Code::InvalidArgument,
            &["product_line `x-series` is unknown", "virtual-office, work"],
        );
        assert_status(
            create("", "work").await,
            Code::InvalidArgument,
            &["account_id is required"],
        );
        assert_status(
            app.get_account("globex").await,
            Code::NotFound,
            &["account `globex` does not exist"],
        );
        // Nothing refused was written, and the first account is as it was.
        assert_eq!(app.revision().await, 2);
        assert_eq!(app.get_account("acme").await.unwrap().product_line, "work");
    }
}

on_both_backends! {
    async fn malformed_ids_name_the_field_and_value(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        let long = "a".repeat(129);
        // (account_id, user_id, the pieces the message must hold)
        let cases: &[(&str, &str, &[&str])] = &[
            ("", "u1", &["account_id is required"]),
            ("acme", "", &["user_id is required"]),
            (
                "ac me",
                "u1",
                &["account_id `ac me` contains ` `", "A-Z a-z"],
            ),
            ("acme", "u/1", &["user_id `u/1` contains `/`"]),
            (
                "acme",
                &long,
                &["user_id `aaaa", "129 characters long; the most is 128"],
            ),
            ("acmé", "u1", &["account_id `acmé` contains `é`"]),
        ];
        for (account, user, pieces) in cases {
            let put = app
                .provisioning
                .clone()
                .put_user(pb::PutUserRequest {
                    account_id: (*account).into(),
                    user_id: (*user).into(),
                    display_name: String::new(),
                    ..Default::default()
                })
                .await;
            assert_status(put, Code::InvalidArgument, pieces);
            assert_status(
                app.get_user(account, user).await,
                Code::InvalidArgument,
                pieces,
            );
            assert_status(
                app.set(account, user, Some("X2"), None).await,
                Code::InvalidArgument,
                pieces,
            );
            assert_status(
                app.try_check(account, user).await,
                Code::InvalidArgument,
                pieces,
            );
            let delete = app
                .provisioning
                .clone()
                .delete_user(pb::DeleteUserRequest {
                    account_id: (*account).into(),
                    user_id: (*user).into(),
                    ..Default::default()
                })
                .await;
            assert_status(delete, Code::InvalidArgument, pieces);
        }
        assert_eq!(app.revision().await, 2, "no refused call wrote anything");
    }
}

on_both_backends! {
    async fn display_names_are_checked(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        let put = |name: String| {
            let mut client = app.provisioning.clone();
            async move {
                client
                    .put_user(pb::PutUserRequest {
                        account_id: "acme".into(),
                        user_id: "u1".into(),
                        display_name: name,
                        ..Default::default()
                    })
                    .await
            }
        };
        assert_status(
            put("x".repeat(257)).await,
            Code::InvalidArgument,
            &["display_name", "257 characters long; the most is 256"],
        );
        assert_status(
            put("a\nb".into()).await,
            Code::InvalidArgument,
            &["display_name `a\\nb` contains the control character"],
        );
        assert!(put("Ada Lovelace".into()).await.is_ok());
    }
}

on_both_backends! {
    /// Issue 15: a RIGHT-TO-LEFT OVERRIDE makes `Ada\u{202e}nimda` show as
    /// "Adaadmin"; a ZERO WIDTH SPACE makes two names that look alike differ.
    /// Every name a caller sends is refused with the character and where it is.
    async fn invisible_and_direction_changing_characters_are_refused_in_every_name(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        let before = app.revision().await;
        let rlo = "Ada\u{202e}nimda";
        let rlo_shown = "`Ada\\u{202e}nimda`";
        let rlo_said = "contains the invisible format character U+202E at position 4 (counting characters from 1); remove it";

        let put_user = app
            .provisioning
            .clone()
            .put_user(pb::PutUserRequest {
                account_id: "acme".into(),
                user_id: "ada".into(),
                display_name: rlo.into(),
                ..Default::default()
            })
            .await;
        assert_status(
            put_user,
            Code::InvalidArgument,
            &[&format!("display_name {rlo_shown} {rlo_said}")],
        );

        let create_account = app
            .provisioning
            .clone()
            .create_account(pb::CreateAccountRequest {
                account_id: "globex".into(),
                display_name: "Glo\u{200b}bex".into(),
                product_line: "work".into(),
                ..Default::default()
            })
            .await;
        assert_status(
            create_account,
            Code::InvalidArgument,
            &[
                "display_name `Glo\\u{200b}bex`",
                "invisible format character U+200B at position 4",
            ],
        );

        let create_token = app
            .tokens
            .clone()
            .create_token(pb::CreateTokenRequest {
                name: rlo.into(),
                role: pb::Role::Gateway as i32,
                ..Default::default()
            })
            .await;
        assert_status(
            create_token,
            Code::InvalidArgument,
            &[&format!("name {rlo_shown} {rlo_said}")],
        );

        let row = |user: &str, name: &str| pb::UserRow {
            account_id: "acme".into(),
            user_id: user.into(),
            display_name: name.into(),
            edition: "X4".into(),
            analytics_tier: pb::AnalyticsTier::Essentials as i32,
            supervisor_scope: None,
        };
        for dry_run in [true, false] {
            let imported = app
                .provisioning
                .clone()
                .import_users(pb::ImportUsersRequest {
                    rows: vec![
                        row("bob", "Bob"),
                        row("ada", rlo),
                        row("cy", "Cy\u{2028}"),
                        row("dee", "\u{feff}Dee"),
                    ],
                    dry_run,
                    request_id: String::new(),
                })
                .await
                .unwrap()
                .into_inner();
            let errors: Vec<(u32, &str, &str)> = imported
                .errors
                .iter()
                .map(|e| (e.index, e.code.as_str(), e.message.as_str()))
                .collect();
            assert_eq!(
                errors,
                [
                    (
                        1,
                        "INVALID_ARGUMENT",
                        format!("display_name {rlo_shown} {rlo_said}").as_str()
                    ),
                    (
                        2,
                        "INVALID_ARGUMENT",
                        "display_name `Cy\\u{2028}` contains the line separator U+2028 at position 3 (counting characters from 1); remove it"
                    ),
                    (
                        3,
                        "INVALID_ARGUMENT",
                        "display_name `\\u{feff}Dee` contains the invisible format character U+FEFF at position 1 (counting characters from 1); remove it"
                    ),
                ],
                "dry run: {dry_run}"
            );
        }

        // Nothing refused was written; the names people write still are.
        assert_eq!(app.revision().await, before);
        assert!(app.get_user("acme", "bob").await.is_err());
        let ok = app
            .provisioning
            .clone()
            .put_user(pb::PutUserRequest {
                account_id: "acme".into(),
                user_id: "zoe".into(),
                display_name: "Zoë Ångström — محمد 李".into(),
                ..Default::default()
            })
            .await;
        assert!(ok.is_ok(), "{ok:?}");
    }
}

on_both_backends! {
    async fn put_user_creates_renames_and_is_idempotent(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        let user = app.put_user("acme", "ada").await;
        assert_eq!(user.edition, "");
        assert_eq!(user.analytics_tier, pb::AnalyticsTier::None as i32);
        assert_eq!(user.revision, 3);
        assert_eq!(user.display_name, "User ada");

        // The same call again changes nothing, not even the revision.
        let again = app.put_user("acme", "ada").await;
        assert_eq!(again, user);
        assert_eq!(app.revision().await, 3);

        // A rename is a write; services are untouched.
        app.set(
            "acme",
            "ada",
            Some("X4"),
            Some(pb::AnalyticsTier::Supervisor),
        )
        .await
        .unwrap();
        let renamed = app
            .provisioning
            .clone()
            .put_user(pb::PutUserRequest {
                account_id: "acme".into(),
                user_id: "ada".into(),
                display_name: "Ada L.".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let renamed_user = renamed.user.unwrap();
        assert_eq!(renamed.revision, 5);
        assert_eq!(renamed_user.revision, 5);
        assert_eq!(renamed_user.display_name, "Ada L.");
        assert_eq!(renamed_user.edition, "X4");
        assert_eq!(
            renamed_user.analytics_tier,
            pb::AnalyticsTier::Supervisor as i32
        );
        assert_eq!(renamed_user.created_at, user.created_at);
        assert_eq!(app.get_user("acme", "ada").await.unwrap(), renamed_user);

        let unknown = app
            .provisioning
            .clone()
            .put_user(pb::PutUserRequest {
                account_id: "globex".into(),
                user_id: "ada".into(),
                display_name: String::new(),
                ..Default::default()
            })
            .await;
        assert_status(
            unknown,
            Code::NotFound,
            &["account `globex` does not exist"],
        );
    }
}

on_both_backends! {
    async fn get_and_delete_user(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        app.put_user("acme", "ada").await;
        assert_status(
            app.get_user("acme", "bob").await,
            Code::NotFound,
            &["user `bob` does not exist in account `acme`"],
        );
        assert_status(
            app.get_user("globex", "ada").await,
            Code::NotFound,
            &["account `globex` does not exist"],
        );

        let delete = |user: &str| {
            let mut client = app.provisioning.clone();
            let request = pb::DeleteUserRequest {
                account_id: "acme".into(),
                user_id: user.into(),
                ..Default::default()
            };
            async move { client.delete_user(request).await }
        };
        let deleted = delete("ada").await.unwrap().into_inner();
        assert_eq!(deleted.revision, 4);
        assert_status(
            app.get_user("acme", "ada").await,
            Code::NotFound,
            &["user `ada`"],
        );
        assert_status(
            delete("ada").await,
            Code::NotFound,
            &["user `ada` does not exist in account `acme`"],
        );
        assert_eq!(
            app.check("acme", "ada").await.denial_reason,
            pb::DenialReason::UserNotFound as i32
        );
        assert_eq!(app.revision().await, 4);
    }
}

async fn list(
    app: &TestApp,
    account: &str,
    page_size: i32,
    token: &str,
) -> Result<pb::ListUsersResponse, tonic::Status> {
    app.provisioning
        .clone()
        .list_users(pb::ListUsersRequest {
            account_id: account.into(),
            page_size,
            page_token: token.into(),
        })
        .await
        .map(|r| r.into_inner())
}

fn ids(page: &pb::ListUsersResponse) -> Vec<String> {
    page.users.iter().map(|u| u.user_id.clone()).collect()
}

on_both_backends! {
    async fn list_users_pages_in_id_order(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        app.create_account("other", "work").await;
        app.put_user("other", "zz-not-acme").await;
        let expected: Vec<String> = (0..250).map(|i| format!("u{i:03}")).collect();
        // Added out of order: the listing sorts by user_id.
        for id in expected.iter().rev() {
            app.put_user("acme", id).await;
        }

        // Default page size is 100.
        let mut seen = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let page = list(&app, "acme", 0, &token).await.unwrap();
            pages += 1;
            seen.extend(ids(&page));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(pages, 3);
        assert_eq!(seen, expected);

        // Small pages; users added while paging (before and after the cursor)
        // neither repeat nor shift what follows.
        let first = list(&app, "acme", 7, "").await.unwrap();
        assert_eq!(ids(&first), expected[..7]);
        app.put_user("acme", "u000a").await; // before the cursor: not seen
        app.put_user("acme", "u007a").await; // after it: seen next
        let second = list(&app, "acme", 7, &first.next_page_token).await.unwrap();
        assert_eq!(
            ids(&second),
            ["u007", "u007a", "u008", "u009", "u010", "u011", "u012"]
        );

        // Above the maximum is served the maximum.
        for i in 250..1100 {
            app.put_user("acme", &format!("u{i:04}")).await;
        }
        let big = list(&app, "acme", 5000, "").await.unwrap();
        assert_eq!(big.users.len(), 1000);
        assert!(!big.next_page_token.is_empty());
    }
}

on_both_backends! {
    async fn list_users_errors(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        app.create_account("other", "work").await;
        for u in ["a", "b", "c"] {
            app.put_user("acme", u).await;
            app.put_user("other", u).await;
        }
        assert_status(
            list(&app, "globex", 0, "").await,
            Code::NotFound,
            &["account `globex` does not exist"],
        );
        assert_status(
            list(&app, "acme", -1, "").await,
            Code::InvalidArgument,
            &["page_size `-1` is negative"],
        );
        assert_status(
            list(&app, "acme", 0, "garbage!").await,
            Code::InvalidArgument,
            &["page_token `garbage!` is not a page token"],
        );
        let other_token = list(&app, "other", 1, "").await.unwrap().next_page_token;
        assert_status(
            list(&app, "acme", 1, &other_token).await,
            Code::InvalidArgument,
            &["was issued for another account, not `acme`"],
        );
        let empty = list(&app, "acme", 3, "").await.unwrap();
        assert_eq!(ids(&empty), ["a", "b", "c"]);
        assert!(
            empty.next_page_token.is_empty(),
            "an exactly full last page has no next token"
        );
    }
}

on_both_backends! {
    /// ImportUsers takes 1 to 5000 rows a call: none, or 5001, is
    /// INVALID_ARGUMENT and writes nothing, dry run or not; 5000 are imported.
    async fn an_import_holds_1_to_5000_rows(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        let rows = |n: usize| -> Vec<pb::UserRow> {
            (0..n)
                .map(|i| pb::UserRow {
                    account_id: "acme".into(),
                    user_id: format!("u{i}"),
                    display_name: format!("User {i}"),
                    edition: "X4".into(),
                    analytics_tier: pb::AnalyticsTier::Essentials as i32,
                    supervisor_scope: None,
                })
                .collect()
        };
        let import = |rows: Vec<pb::UserRow>, dry_run: bool| {
            let mut provisioning = app.provisioning.clone();
            async move {
                provisioning
                    .import_users(pb::ImportUsersRequest {
                        rows,
                        dry_run,
                        request_id: String::new(),
                    })
                    .await
                    .map(|r| r.into_inner())
            }
        };
        let before = app.revision().await;
        for dry_run in [true, false] {
            assert_status(
                import(rows(0), dry_run).await,
                Code::InvalidArgument,
                &["rows holds 0 rows; send 1 to 5000 a call"],
            );
            assert_status(
                import(rows(5001), dry_run).await,
                Code::InvalidArgument,
                &["rows holds 5001 rows; send 1 to 5000 a call"],
            );
        }
        assert_eq!(app.revision().await, before, "a refused import wrote");
        assert_status(app.get_user("acme", "u0").await, Code::NotFound, &["`u0`"]);
        let imported = import(rows(5000), false).await.unwrap();
        assert_eq!((imported.created, imported.errors.len()), (5000, 0));
        assert_eq!(imported.revision, before + 1, "one write");
        assert_eq!(
            app.check("acme", "u4999").await.tier,
            common::T::Essentials as i32
        );
    }
}
