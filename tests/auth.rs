//! Callers and trust: every role against every RPC, tokens, the self-grant
//! rule, the audit trail, and safe retries. Each test runs on sled and on
//! PostgreSQL.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use std::time::{Duration, SystemTime};

use common::{CALL_TIMEOUT, Clients, ManualClock, Options, T, TestApp, assert_status, within};
use entitled::proto::v1::{self as pb, Role};
use tonic::Code;

/// Everything a refused call must leave as it was.
async fn snapshot(app: &TestApp) -> (u64, Vec<pb::User>, Vec<pb::User>, Vec<pb::TokenInfo>) {
    let list = |account: &str| {
        let mut client = app.provisioning.clone();
        let request = pb::ListUsersRequest {
            account_id: account.into(),
            page_size: 1000,
            page_token: String::new(),
        };
        async move { client.list_users(request).await.unwrap().into_inner().users }
    };
    let tokens = app
        .tokens
        .clone()
        .list_tokens(pb::ListTokensRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tokens;
    (
        app.revision().await,
        list("acme").await,
        list("globex").await,
        tokens,
    )
}

const RPCS: [&str; 18] = [
    "GetCatalogue",
    "CreateAccount",
    "GetAccount",
    "PutUser",
    "GetUser",
    "ListUsers",
    "DeleteUser",
    "UpdateUserServices",
    "ImportUsers",
    "ExportUsers",
    "CheckAnalyticsAccess",
    "BatchCheckAnalyticsAccess",
    "WatchEntitlements",
    "ListChanges",
    "CreateToken",
    "ListTokens",
    "RevokeToken",
    "Backup",
];

/// What the operator makes before cell `n`: a user `cell{n}` in `account`
/// and a token to revoke. Returns the token's id.
async fn setup(app: &TestApp, account: &str, n: usize) -> String {
    app.put_user(account, &format!("cell{n}")).await;
    app.tokens
        .clone()
        .create_token(pb::CreateTokenRequest {
            name: format!("doomed {n}"),
            role: Role::Gateway as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap()
        .token_id
}

/// One call of `rpc` as `c` on `account`, on cell `n`'s targets.
async fn call(
    c: &Clients,
    rpc: &str,
    account: &str,
    n: usize,
    doomed: &str,
) -> Result<(), tonic::Status> {
    let (a, u) = (account.to_owned(), format!("cell{n}"));
    match rpc {
        "GetCatalogue" => c
            .catalogue
            .clone()
            .get_catalogue(pb::GetCatalogueRequest {})
            .await
            .map(drop),
        "CreateAccount" => c
            .provisioning
            .clone()
            .create_account(pb::CreateAccountRequest {
                account_id: format!("new{n}"),
                product_line: "work".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        "GetAccount" => c
            .provisioning
            .clone()
            .get_account(pb::GetAccountRequest { account_id: a })
            .await
            .map(drop),
        "PutUser" => c
            .provisioning
            .clone()
            .put_user(pb::PutUserRequest {
                account_id: a,
                user_id: format!("added{n}"),
                ..Default::default()
            })
            .await
            .map(drop),
        "GetUser" => c
            .provisioning
            .clone()
            .get_user(pb::GetUserRequest {
                account_id: a,
                user_id: u,
            })
            .await
            .map(drop),
        "ListUsers" => c
            .provisioning
            .clone()
            .list_users(pb::ListUsersRequest {
                account_id: a,
                ..Default::default()
            })
            .await
            .map(drop),
        "DeleteUser" => c
            .provisioning
            .clone()
            .delete_user(pb::DeleteUserRequest {
                account_id: a,
                user_id: u,
                ..Default::default()
            })
            .await
            .map(drop),
        "UpdateUserServices" => c
            .provisioning
            .clone()
            .update_user_services(pb::UpdateUserServicesRequest {
                account_id: a,
                user_id: u,
                edition: Some("X4".into()),
                analytics_tier: Some(T::Supervisor as i32),
                ..Default::default()
            })
            .await
            .map(drop),
        "ImportUsers" => {
            let reply = c
                .provisioning
                .clone()
                .import_users(pb::ImportUsersRequest {
                    rows: vec![pb::UserRow {
                        account_id: a,
                        user_id: format!("imported{n}"),
                        edition: "X2".into(),
                        analytics_tier: T::Essentials as i32,
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .await?
                .into_inner();
            assert!(reply.errors.is_empty(), "{:?}", reply.errors);
            Ok(())
        }
        "ExportUsers" => {
            let mut stream = c
                .provisioning
                .clone()
                .export_users(pb::ExportUsersRequest { account_id: a })
                .await?
                .into_inner();
            while within(CALL_TIMEOUT, "the export's next message", stream.message())
                .await?
                .is_some()
            {}
            Ok(())
        }
        "CheckAnalyticsAccess" => c
            .access
            .clone()
            .check_analytics_access(pb::CheckAnalyticsAccessRequest {
                account_id: a,
                user_id: u,
                min_revision: 0,
            })
            .await
            .map(drop),
        "BatchCheckAnalyticsAccess" => {
            let reply = c
                .access
                .clone()
                .batch_check_analytics_access(pb::BatchCheckAnalyticsAccessRequest {
                    items: vec![pb::CheckItem {
                        account_id: a,
                        user_id: u,
                    }],
                    min_revision: 0,
                })
                .await?
                .into_inner();
            match &reply.results[0].outcome {
                Some(pb::check_result::Outcome::Error(e)) => Err(tonic::Status::new(
                    Code::from_i32(e.code),
                    e.message.clone(),
                )),
                _ => Ok(()),
            }
        }
        "WatchEntitlements" => c
            .access
            .clone()
            .watch_entitlements(pb::WatchEntitlementsRequest {
                account_id: a,
                after_revision: 0,
            })
            .await
            .map(drop),
        "ListChanges" => c
            .audit
            .clone()
            .list_changes(pb::ListChangesRequest {
                account_id: a,
                ..Default::default()
            })
            .await
            .map(drop),
        "CreateToken" => c
            .tokens
            .clone()
            .create_token(pb::CreateTokenRequest {
                name: format!("made {n}"),
                role: Role::AccountAdmin as i32,
                account_id: a,
                ..Default::default()
            })
            .await
            .map(drop),
        "ListTokens" => c
            .tokens
            .clone()
            .list_tokens(pb::ListTokensRequest::default())
            .await
            .map(drop),
        "RevokeToken" => c
            .tokens
            .clone()
            .revoke_token(pb::RevokeTokenRequest {
                token_id: doomed.into(),
                ..Default::default()
            })
            .await
            .map(drop),
        // Read to the end, so an error anywhere in the stream counts.
        "Backup" => {
            let mut stream = c
                .backup
                .clone()
                .backup(pb::BackupRequest {})
                .await?
                .into_inner();
            while within(CALL_TIMEOUT, "the backup's next message", stream.message())
                .await?
                .is_some()
            {}
            Ok(())
        }
        other => panic!("no such rpc {other}"),
    }
}

use Code::{Ok as OK, PermissionDenied as PD};

/// The matrix, one line an RPC:
/// (rpc, operator, provisioner, admin own, admin other, gateway).
const MATRIX: [(&str, Code, Code, Code, Code, Code); 18] = [
    ("GetCatalogue", OK, OK, OK, OK, OK),
    ("CreateAccount", OK, OK, PD, PD, PD),
    ("GetAccount", OK, OK, OK, PD, PD),
    ("PutUser", OK, OK, OK, PD, PD),
    ("GetUser", OK, OK, OK, PD, PD),
    ("ListUsers", OK, OK, OK, PD, PD),
    ("DeleteUser", OK, OK, OK, PD, PD),
    ("UpdateUserServices", OK, OK, OK, PD, PD),
    ("ImportUsers", OK, OK, OK, PD, PD),
    ("ExportUsers", OK, OK, OK, PD, PD),
    ("CheckAnalyticsAccess", OK, OK, OK, PD, OK),
    // On another account, the item is refused, not the call (see `call`).
    ("BatchCheckAnalyticsAccess", OK, OK, OK, PD, OK),
    ("WatchEntitlements", OK, OK, OK, PD, OK),
    ("ListChanges", OK, OK, OK, PD, PD),
    ("CreateToken", OK, PD, PD, PD, PD),
    ("ListTokens", OK, PD, PD, PD, PD),
    ("RevokeToken", OK, PD, PD, PD, PD),
    ("Backup", OK, PD, PD, PD, PD),
];

on_both_backends! {
    async fn every_role_against_every_rpc_on_own_and_other_accounts(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        app.create_account("globex", "work").await;
        let roles = [
            ("operator", app.operator_secret.clone()),
            (
                "provisioner",
                app.token("billing", Role::Provisioner, "", "").await,
            ),
            (
                "account-admin",
                app.token("acme admin", Role::AccountAdmin, "acme", "boss")
                    .await,
            ),
            ("gateway", app.token("gateway", Role::Gateway, "", "").await),
        ];
        assert_eq!(MATRIX.map(|row| row.0), RPCS, "the matrix covers every RPC");
        let mut n = 0;
        for (rpc, operator, provisioner, admin_own, admin_other, gateway) in MATRIX {
            for (role, secret) in &roles {
                let clients = app.clients(Some(secret));
                for (scope, account) in [("own", "acme"), ("other", "globex")] {
                    let want = match (*role, scope) {
                        ("operator", _) => operator,
                        ("provisioner", _) => provisioner,
                        ("account-admin", "own") => admin_own,
                        ("account-admin", _) => admin_other,
                        _ => gateway,
                    };
                    n += 1;
                    let doomed = setup(&app, account, n).await;
                    let before = snapshot(&app).await;
                    let got = match call(&clients, rpc, account, n, &doomed).await {
                        Ok(()) => Code::Ok,
                        Err(status) => {
                            if status.code() == Code::PermissionDenied {
                                let m = status.message();
                                assert!(
                                    m.starts_with(&format!("role `{role}`")),
                                    "names the role: {m}"
                                );
                            }
                            status.code()
                        }
                    };
                    assert_eq!(got, want, "{role} calling {rpc} on the {scope} account");
                    if want != Code::Ok {
                        assert_eq!(
                            snapshot(&app).await,
                            before,
                            "refused {rpc} by {role} changed something"
                        );
                    }
                }
            }
        }

        // Without a valid token, every RPC is UNAUTHENTICATED, and changes nothing.
        let revoked = app.token("revoked", Role::Operator, "", "").await;
        let revoked_id = revoked.split('.').next().unwrap().to_owned();
        app.tokens
            .clone()
            .revoke_token(pb::RevokeTokenRequest {
                token_id: revoked_id,
                ..Default::default()
            })
            .await
            .unwrap();
        let forged = format!("{}.AAAA", app.operator_secret.split('.').next().unwrap());
        for (who, secret) in [
            ("no token", None),
            ("a forged token", Some(forged.as_str())),
            ("a revoked token", Some(revoked.as_str())),
        ] {
            let clients = app.clients(secret);
            for rpc in RPCS {
                n += 1;
                let doomed = setup(&app, "acme", n).await;
                let before = snapshot(&app).await;
                let status = call(&clients, rpc, "acme", n, &doomed).await.unwrap_err();
                assert_eq!(
                    status.code(),
                    Code::Unauthenticated,
                    "{who} calling {rpc}: {}",
                    status.message()
                );
                assert_eq!(snapshot(&app).await, before);
            }
        }
    }
}

on_both_backends! {
    async fn first_start_writes_one_operator_token_file(backend) {
        let app = TestApp::spawn_on(backend).await;
        let file = app.data_dir.join("operator.token");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
        }
        let secret = app.operator_secret.clone();
        assert!(secret.starts_with("tok_"));
        // 256 random bits, base64url: 43 characters after the id.
        assert_eq!(secret.split_once('.').unwrap().1.len(), 43);
        let tokens = app
            .tokens
            .clone()
            .list_tokens(pb::ListTokensRequest::default())
            .await
            .unwrap()
            .into_inner()
            .tokens;
        assert_eq!(tokens.len(), 1);
        assert_eq!(
            (tokens[0].role, tokens[0].name.as_str()),
            (Role::Operator as i32, "bootstrap operator")
        );
        assert!(secret.starts_with(&tokens[0].token_id));

        // Later starts make no other, even if the file was removed.
        std::fs::remove_file(&file).unwrap();
        std::fs::write(&file, format!("{secret}\n")).unwrap();
        let app = app.restart().await;
        assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), secret);
        let tokens = app
            .tokens
            .clone()
            .list_tokens(pb::ListTokensRequest::default())
            .await
            .unwrap()
            .into_inner()
            .tokens;
        assert_eq!(tokens.len(), 1);
        std::fs::remove_file(&file).unwrap();
        let app = app.restart_with_secret(secret.clone()).await;
        assert!(!file.exists(), "no second token file");
        assert_eq!(
            app.tokens
                .clone()
                .list_tokens(pb::ListTokensRequest::default())
                .await
                .unwrap()
                .into_inner()
                .tokens
                .len(),
            1
        );
    }
}

on_both_backends! {
    async fn revocation_takes_effect_on_the_next_call(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        let secret = app.token("gateway eu1", Role::Gateway, "", "").await;
        let mut gateway = app.clients(Some(&secret)).access;
        let check = pb::CheckAnalyticsAccessRequest {
            account_id: "acme".into(),
            user_id: "ada".into(),
            min_revision: 0,
        };
        gateway.check_analytics_access(check.clone()).await.unwrap();

        let id = secret.split('.').next().unwrap().to_owned();
        let revoked = app
            .tokens
            .clone()
            .revoke_token(pb::RevokeTokenRequest {
                token_id: id.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(revoked.token.unwrap().revoked_at.is_some());
        assert_status(
            gateway.check_analytics_access(check).await,
            Code::Unauthenticated,
            &[&format!("token `{id}` has been revoked")],
        );

        // Listed with its revocation, never with a secret; revoking again is a no-op.
        let tokens = app
            .tokens
            .clone()
            .list_tokens(pb::ListTokensRequest::default())
            .await
            .unwrap()
            .into_inner()
            .tokens;
        let listed = tokens.iter().find(|t| t.token_id == id).unwrap();
        assert!(listed.revoked_at.is_some());
        let again = app
            .tokens
            .clone()
            .revoke_token(pb::RevokeTokenRequest {
                token_id: id,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again.revision, revoked.revision);
        assert_status(
            app.tokens
                .clone()
                .revoke_token(pb::RevokeTokenRequest {
                    token_id: "tok_nope".into(),
                    ..Default::default()
                })
                .await,
            Code::NotFound,
            &["token `tok_nope` does not exist"],
        );
    }
}

on_both_backends! {
    async fn token_requests_are_checked(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        let create = |role: Role, account: &str, user: &str, name: &str| {
            let mut tokens = app.tokens.clone();
            let request = pb::CreateTokenRequest {
                name: name.into(),
                role: role as i32,
                account_id: account.into(),
                user_id: user.into(),
                request_id: String::new(),
            };
            async move { tokens.create_token(request).await }
        };
        assert_status(
            create(Role::AccountAdmin, "", "", "x").await,
            Code::InvalidArgument,
            &["role `account-admin` needs account_id"],
        );
        assert_status(
            create(Role::Gateway, "acme", "", "x").await,
            Code::InvalidArgument,
            &["only for role `account-admin`, not `gateway`"],
        );
        assert_status(
            create(Role::Unspecified, "", "", "x").await,
            Code::InvalidArgument,
            &["role `ROLE_UNSPECIFIED` is not a role"],
        );
        assert_status(
            create(Role::Gateway, "", "", " ").await,
            Code::InvalidArgument,
            &["name is required"],
        );
        assert_status(
            create(Role::AccountAdmin, "globex", "", "x").await,
            Code::NotFound,
            &["account `globex` does not exist"],
        );
        let made = create(Role::AccountAdmin, "acme", "boss", "acme admin")
            .await
            .unwrap()
            .into_inner();
        let info = made.token.unwrap();
        assert_eq!(
            (info.account_id.as_str(), info.user_id.as_str(), info.role),
            ("acme", "boss", Role::AccountAdmin as i32)
        );
    }
}

on_both_backends! {
    async fn an_admin_cannot_grant_themselves_access(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        app.put_user("acme", "boss").await;
        app.put_user("acme", "ada").await;
        let admin = app.clients(Some(
            &app.token("acme admin", Role::AccountAdmin, "acme", "boss")
                .await,
        ));
        let set = |user: &str| pb::UpdateUserServicesRequest {
            account_id: "acme".into(),
            user_id: user.into(),
            edition: Some("X8".into()),
            analytics_tier: Some(T::Supervisor as i32),
            ..Default::default()
        };
        assert_status(
            admin
                .provisioning
                .clone()
                .update_user_services(set("boss"))
                .await,
            Code::PermissionDenied,
            &["role `account-admin` may not change its own services (user `boss`)"],
        );
        assert_eq!(
            app.get_user("acme", "boss").await.unwrap().analytics_tier,
            T::None as i32
        );
        admin
            .provisioning
            .clone()
            .update_user_services(set("ada"))
            .await
            .unwrap();
        // Another admin (or a provisioner) may set boss's services.
        app.update(set("boss")).await.unwrap();
    }
}

on_both_backends! {
    /// Rule 11 through ImportUsers: a row for the admin's own user is refused as
    /// UpdateUserServices on it is, dry run or not, alone or among rows the
    /// admin may import, and nothing is written.
    async fn an_admin_cannot_import_a_row_for_their_own_user(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        app.put_user("acme", "boss").await;
        app.put_user("acme", "ada").await;
        let admin = app.clients(Some(
            &app.token("acme admin", Role::AccountAdmin, "acme", "boss")
                .await,
        ));
        let row = |user: &str| pb::UserRow {
            account_id: "acme".into(),
            user_id: user.into(),
            display_name: format!("User {user}"),
            edition: "X8".into(),
            analytics_tier: T::Supervisor as i32,
            supervisor_scope: None,
        };
        let before = app.revision().await;
        for rows in [vec![row("boss")], vec![row("ada"), row("boss")]] {
            for dry_run in [true, false] {
                assert_status(
                    admin
                        .provisioning
                        .clone()
                        .import_users(pb::ImportUsersRequest {
                            rows: rows.clone(),
                            dry_run,
                            request_id: String::new(),
                        })
                        .await,
                    Code::PermissionDenied,
                    &["role `account-admin` may not change its own services (user `boss`)"],
                );
            }
        }
        assert_eq!(app.revision().await, before, "a refused import wrote");
        for user in ["boss", "ada"] {
            assert_eq!(
                app.get_user("acme", user).await.unwrap().analytics_tier,
                T::None as i32,
                "{user}"
            );
        }
        // The same row for another user is the admin's to import.
        let imported = admin
            .provisioning
            .clone()
            .import_users(pb::ImportUsersRequest {
                rows: vec![row("ada")],
                dry_run: false,
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(imported.errors.is_empty(), "{imported:?}");
        assert_eq!(
            app.get_user("acme", "ada").await.unwrap().analytics_tier,
            T::Supervisor as i32
        );
    }
}

on_both_backends! {
    /// Issue 15: an account admin's import whose every row is malformed names no
    /// account; it used to be refused PERMISSION_DENIED ("only for its own
    /// account") instead of getting its rows' errors.
    async fn an_admin_import_of_only_bad_rows_gets_the_rows_errors(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        let admin = app.clients(Some(
            &app.token("acme admin", Role::AccountAdmin, "acme", "boss")
                .await,
        ));
        let gateway = app.clients(Some(&app.token("gw", Role::Gateway, "", "").await));
        let rows = vec![
            pb::UserRow {
                account_id: "ac/me".into(),
                user_id: "ada".into(),
                ..Default::default()
            },
            pb::UserRow {
                account_id: "acme".into(),
                user_id: "b b".into(),
                ..Default::default()
            },
            pb::UserRow {
                account_id: "acme".into(),
                user_id: "cy".into(),
                edition: "X4".into(),
                analytics_tier: 42,
                ..Default::default()
            },
        ];
        let before = app.revision().await;
        for dry_run in [true, false] {
            let request = pb::ImportUsersRequest {
                rows: rows.clone(),
                dry_run,
                request_id: String::new(),
            };
            let reply = admin
                .provisioning
                .clone()
                .import_users(request.clone())
                .await
                .unwrap_or_else(|e| panic!("dry run {dry_run}: {e:?}"))
                .into_inner();
            let errors: Vec<(u32, &str, &str)> = reply
                .errors
                .iter()
                .map(|e| (e.index, e.code.as_str(), e.message.as_str()))
                .collect();
            assert_eq!(errors.len(), 3, "{errors:?}");
            for ((index, code, message), (want_index, want)) in errors.iter().zip([
                (0, "account_id `ac/me` contains `/`"),
                (1, "user_id `b b` contains ` `"),
                (2, "analytics_tier `42` is not a tier"),
            ]) {
                assert_eq!((*index, *code), (want_index, "INVALID_ARGUMENT"));
                assert!(message.contains(want), "row {index}: {message}");
            }
            assert_eq!((reply.created, reply.updated, reply.unchanged), (0, 0, 0));

            // A role that may not import at all is still refused, rows or not.
            assert_status(
                gateway.provisioning.clone().import_users(request).await,
                Code::PermissionDenied,
                &["role `gateway` may not call ProvisioningService.ImportUsers"],
            );
        }
        assert_eq!(app.revision().await, before, "nothing was written");
    }
}

on_both_backends! {
    async fn the_audit_trail_records_applied_and_refused_writes(backend) {
        let app = TestApp::spawn_on(backend).await;
        let provisioner_secret = app.token("billing", Role::Provisioner, "", "").await;
        let provisioner_id = provisioner_secret.split('.').next().unwrap().to_owned();
        let p = app.clients(Some(&provisioner_secret)).provisioning;
        let gateway = app
            .clients(Some(&app.token("gw", Role::Gateway, "", "").await))
            .provisioning;
        let start = app.revision().await;

        p.clone()
            .create_account(pb::CreateAccountRequest {
                account_id: "acme".into(),
                product_line: "work".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        app.create_account("globex", "work").await;
        p.clone()
            .put_user(pb::PutUserRequest {
                account_id: "acme".into(),
                user_id: "ada".into(),
                display_name: "Ada".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let set = |edition: &str, tier: Option<T>| pb::UpdateUserServicesRequest {
            account_id: "acme".into(),
            user_id: "ada".into(),
            edition: Some(edition.into()),
            analytics_tier: tier.map(|t| t as i32),
            ..Default::default()
        };
        p.clone()
            .update_user_services(set("X8", Some(T::Supervisor)))
            .await
            .unwrap();
        p.clone()
            .update_user_services(set("X2", None))
            .await
            .unwrap(); // lowered, with a notice
        let refused = p
            .clone()
            .update_user_services(set("X2", Some(T::Supervisor)))
            .await;
        assert_eq!(refused.unwrap_err().code(), Code::FailedPrecondition);
        let denied = gateway
            .clone()
            .put_user(pb::PutUserRequest {
                account_id: "acme".into(),
                user_id: "eve".into(),
                ..Default::default()
            })
            .await;
        assert_eq!(denied.unwrap_err().code(), Code::PermissionDenied);
        assert_eq!(
            app.revision().await,
            start + 5,
            "refusals raise no revision"
        );

        let changes = app
            .audit
            .clone()
            .list_changes(pb::ListChangesRequest {
                account_id: "acme".into(),
                after_revision: start,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .changes;
        let summary: Vec<(&str, u64, bool)> = changes
            .iter()
            .map(|c| (c.rpc.as_str(), c.revision, c.refused))
            .collect();
        assert_eq!(
            summary,
            [
                ("ProvisioningService.CreateAccount", start + 1, false),
                ("ProvisioningService.PutUser", start + 3, false),
                // The first tier started the account's clock: the
                // account's record, then the user's, at one revision.
                ("ProvisioningService.UpdateUserServices", start + 4, false),
                ("ProvisioningService.UpdateUserServices", start + 4, false),
                ("ProvisioningService.UpdateUserServices", start + 5, false),
                ("ProvisioningService.UpdateUserServices", start + 5, true),
                ("ProvisioningService.PutUser", start + 5, true),
            ]
        );
        let state = |edition: &str, tier: T| {
            Some(pb::UserState {
                display_name: "Ada".into(),
                edition: edition.into(),
                analytics_tier: tier as i32,
                // A supervisor given no scope sees the whole account.
                supervisor_scope: (tier == T::Supervisor).then(|| pb::SupervisorScope {
                    whole_account: true,
                    refs: Vec::new(),
                }),
            })
        };
        let caller = changes[1].caller.as_ref().unwrap();
        assert_eq!(
            (caller.token_id.as_str(), caller.name.as_str(), caller.role),
            (provisioner_id.as_str(), "billing", Role::Provisioner as i32)
        );
        assert_eq!(
            (changes[1].before.clone(), changes[1].after.clone()),
            (None, state("", T::None))
        );
        let account = &changes[2];
        assert_eq!((account.before.clone(), account.after.clone()), (None, None));
        assert_eq!(account.user_id, "");
        let (was, is) = (
            account.account_before.as_ref().unwrap(),
            account.account_after.as_ref().unwrap(),
        );
        assert!(was.analytics_activated_at.is_none());
        assert!(is.analytics_activated_at.is_some());
        assert_eq!(is.product_line, "work");
        assert_eq!(
            (changes[3].before.clone(), changes[3].after.clone()),
            (state("", T::None), state("X8", T::Supervisor))
        );
        assert_eq!(
            (changes[4].before.clone(), changes[4].after.clone()),
            (state("X8", T::Supervisor), state("X2", T::Essentials))
        );
        assert!(
            changes[4].details[0].contains("lowered to essentials"),
            "{:?}",
            changes[4].details
        );
        assert_eq!(changes[5].refusal_code, "FAILED_PRECONDITION");
        assert!(
            changes[5]
                .refusal_reason
                .contains("does not include supervisor")
        );
        assert_eq!(
            (
                changes[6].refusal_code.as_str(),
                changes[6].user_id.as_str()
            ),
            ("PERMISSION_DENIED", "eve")
        );
        assert_eq!(
            changes[6].caller.as_ref().unwrap().role,
            Role::Gateway as i32
        );
        assert!(changes.windows(2).all(|w| w[0].sequence < w[1].sequence));

        // Paging, and the filter by revision.
        let page = app
            .audit
            .clone()
            .list_changes(pb::ListChangesRequest {
                account_id: "acme".into(),
                page_size: 4,
                after_revision: start,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.changes, changes[..4]);
        let rest = app
            .audit
            .clone()
            .list_changes(pb::ListChangesRequest {
                account_id: "acme".into(),
                page_size: 4,
                page_token: page.next_page_token,
                after_revision: start,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(rest.changes, changes[4..]);
        assert!(rest.next_page_token.is_empty());
        let later = app
            .audit
            .clone()
            .list_changes(pb::ListChangesRequest {
                account_id: "acme".into(),
                after_revision: start + 4,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .changes;
        assert_eq!(later, changes[4..]);

        // All accounts: globex's creation and the tokens are there too.
        let all = app
            .audit
            .clone()
            .list_changes(pb::ListChangesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .changes;
        assert!(all.iter().any(|c| c.account_id == "globex"));
        assert!(all.iter().any(|c| c.rpc == "TokenService.CreateToken"));

        // An account admin sees its own account only.
        let admin = app
            .clients(Some(
                &app.token("acme admin", Role::AccountAdmin, "acme", "")
                    .await,
            ))
            .audit;
        let own = admin
            .clone()
            .list_changes(pb::ListChangesRequest {
                account_id: "acme".into(),
                after_revision: start,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .changes;
        // The same records, and since then the making of the admin's own token.
        assert_eq!(own[..changes.len()], changes[..]);
        assert_eq!(own[changes.len()].rpc, "TokenService.CreateToken");
        assert_status(
            admin
                .clone()
                .list_changes(pb::ListChangesRequest {
                    account_id: "globex".into(),
                    ..Default::default()
                })
                .await,
            Code::PermissionDenied,
            &["may not act on account `globex`"],
        );
        assert_status(
            admin
                .clone()
                .list_changes(pb::ListChangesRequest::default())
                .await,
            Code::PermissionDenied,
            &["only for its own account; set account_id to `acme`"],
        );
    }
}

/// Every record of the trail, all accounts.
async fn trail(app: &TestApp) -> Vec<pb::Change> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = app
            .audit
            .clone()
            .list_changes(pb::ListChangesRequest {
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        all.extend(page.changes);
        if page.next_page_token.is_empty() {
            return all;
        }
        page_token = page.next_page_token;
    }
}

on_both_backends! {
    /// An applied ImportUsers and an applied RevokeToken, retried with their
    /// `request_id` after other writes: the retry gets the first answer, byte
    /// for byte (its revision included), and changes nothing: no revision, no
    /// record, the later writes stand. (`tests/hardening.rs` covers retries of
    /// refusals and no-ops.)
    async fn an_applied_import_or_revocation_retried_gets_its_first_answer_and_changes_nothing(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        app.put_user("acme", "ada").await;
        let import = pb::ImportUsersRequest {
            rows: vec![
                pb::UserRow {
                    account_id: "acme".into(),
                    user_id: "ada".into(),
                    display_name: "Ada".into(),
                    edition: "X8".into(),
                    analytics_tier: T::Supervisor as i32,
                    supervisor_scope: None,
                },
                pb::UserRow {
                    account_id: "acme".into(),
                    user_id: "cy".into(),
                    display_name: "Cy".into(),
                    edition: "X4".into(),
                    analytics_tier: T::Essentials as i32,
                    supervisor_scope: None,
                },
            ],
            dry_run: false,
            request_id: "i-1".into(),
        };
        let first = app
            .provisioning
            .clone()
            .import_users(import.clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (first.created, first.updated, first.errors.len()),
            (1, 1, 0),
            "{first:?}"
        );
        assert_eq!(first.revision, app.revision().await);
        // Someone else lowers ada; the retry must not set her back.
        app.set("acme", "ada", None, Some(T::Essentials))
            .await
            .unwrap();
        let (revision, records) = (app.revision().await, trail(&app).await.len());
        let retry = app
            .provisioning
            .clone()
            .import_users(import)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(retry, first);
        assert_eq!(app.revision().await, revision);
        assert_eq!(trail(&app).await.len(), records);
        assert_eq!(
            app.get_user("acme", "ada").await.unwrap().analytics_tier,
            T::Essentials as i32
        );

        let secret = app.token("old gateway", Role::Gateway, "", "").await;
        let revoke = pb::RevokeTokenRequest {
            token_id: secret.split_once('.').unwrap().0.into(),
            request_id: "rv-1".into(),
        };
        let first = app
            .tokens
            .clone()
            .revoke_token(revoke.clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(first.revision, app.revision().await);
        assert!(
            first.token.as_ref().unwrap().revoked_at.is_some(),
            "{first:?}"
        );
        // A later write: a revocation done again would answer the store's
        // revision after it; the kept answer has the first one.
        app.put_user("acme", "later").await;
        let (revision, records) = (app.revision().await, trail(&app).await.len());
        let retry = app
            .tokens
            .clone()
            .revoke_token(revoke)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(retry, first);
        assert_eq!(app.revision().await, revision);
        assert_eq!(trail(&app).await.len(), records);
        assert_status(
            app.clients(Some(&secret))
                .catalogue
                .clone()
                .get_catalogue(pb::GetCatalogueRequest {})
                .await,
            Code::Unauthenticated,
            &[],
        );
    }
}

on_both_backends! {
    async fn retries_with_a_request_id_are_safe(backend) {
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let app = TestApp::spawn_with(Options {
            backend,
            clock: Some(clock.clock()),
            ..Options::default()
        })
        .await;
        app.create_account("acme", "work").await;
        app.put_user("acme", "ada").await;
        let update = |request_id: &str, tier: T| pb::UpdateUserServicesRequest {
            account_id: "acme".into(),
            user_id: "ada".into(),
            edition: Some("X8".into()),
            analytics_tier: Some(tier as i32),
            request_id: request_id.into(),
            ..Default::default()
        };
        let first = app.update(update("r-1", T::Supervisor)).await.unwrap();
        // Someone else changes ada; the retry still gets the first answer and
        // changes nothing.
        app.set("acme", "ada", None, Some(T::Essentials))
            .await
            .unwrap();
        let revision = app.revision().await;
        let retry = app.update(update("r-1", T::Supervisor)).await.unwrap();
        assert_eq!(retry, first);
        assert_eq!(app.revision().await, revision);
        assert_eq!(
            app.get_user("acme", "ada").await.unwrap().analytics_tier,
            T::Essentials as i32
        );

        // The same id with another payload is refused.
        assert_status(
            app.update(update("r-1", T::None)).await,
            Code::FailedPrecondition,
            &["request_id `r-1` was already used by this token for a different request"],
        );
        // Another token's request ids are its own.
        let other = app.clients(Some(&app.token("other", Role::Provisioner, "", "").await));
        let theirs = other
            .provisioning
            .clone()
            .update_user_services(update("r-1", T::Supervisor))
            .await
            .unwrap()
            .into_inner();
        assert!(theirs.revision > revision);
        // After 24 hours the id is forgotten.
        clock.advance(Duration::from_secs(24 * 3600 + 1));
        let late = app.update(update("r-1", T::None)).await.unwrap();
        assert_eq!(late.user.unwrap().analytics_tier, T::None as i32);

        // Every write RPC takes one.
        let put = |name: &str| pb::PutUserRequest {
            account_id: "acme".into(),
            user_id: "bob".into(),
            display_name: name.into(),
            request_id: "p-1".into(),
        };
        let first = app
            .provisioning
            .clone()
            .put_user(put("Bob"))
            .await
            .unwrap()
            .into_inner();
        app.provisioning
            .clone()
            .put_user(pb::PutUserRequest {
                account_id: "acme".into(),
                user_id: "bob".into(),
                display_name: "Robert".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            app.provisioning
                .clone()
                .put_user(put("Bob"))
                .await
                .unwrap()
                .into_inner(),
            first
        );
        let delete = pb::DeleteUserRequest {
            account_id: "acme".into(),
            user_id: "bob".into(),
            request_id: "d-1".into(),
        };
        let deleted = app
            .provisioning
            .clone()
            .delete_user(delete.clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            app.provisioning
                .clone()
                .delete_user(delete)
                .await
                .unwrap()
                .into_inner(),
            deleted,
            "not NOT_FOUND"
        );
        let create = pb::CreateAccountRequest {
            account_id: "initech".into(),
            product_line: "work".into(),
            request_id: "c-1".into(),
            ..Default::default()
        };
        let created = app
            .provisioning
            .clone()
            .create_account(create.clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            app.provisioning
                .clone()
                .create_account(create)
                .await
                .unwrap()
                .into_inner(),
            created,
            "not ALREADY_EXISTS"
        );
        // A token's secret is shown once, so its creation cannot be replayed.
        let token = pb::CreateTokenRequest {
            name: "gw".into(),
            role: Role::Gateway as i32,
            request_id: "t-1".into(),
            ..Default::default()
        };
        let made = app
            .tokens
            .clone()
            .create_token(token.clone())
            .await
            .unwrap()
            .into_inner();
        let token_id = made.token.unwrap().token_id;
        assert_status(
            app.tokens.clone().create_token(token).await,
            Code::FailedPrecondition,
            &[&format!("already created token `{token_id}`")],
        );

        assert_status(
            app.update(update(&"x".repeat(129), T::None)).await,
            Code::InvalidArgument,
            &["request_id", "129 characters long; the most is 128"],
        );
    }
}
