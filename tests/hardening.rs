//! Issue #15's defects, each tried as the hostile caller who found it, and
//! the rule behind each tried wherever it applies:
//! - A: a refused call stores a small, fixed amount; listings fit a default
//!   client; each token's refusals are rate limited.
//! - B: nothing about one account reaches another account's trail.
//! - C: every answered request id (a no-op and a refusal included) gives
//!   its retry the first answer, on every RPC that takes one.
//! - Hidden characters: no answer, message or audit record repeats a
//!   caller's control or format character raw (an escape sequence for a
//!   terminal, a direction override for any screen); a request id may not
//!   hold one, as a name may not.
//!
//! Each test runs on sled and on PostgreSQL.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use common::{T, TestApp, assert_status};
use entitled::{
    client::Authed,
    proto::v1::{self as pb, provisioning_service_client::ProvisioningServiceClient},
    service::{KEPT_ROW_MESSAGES, MAX_IMPORT_ROWS, REFUSAL_BURST, REFUSALS_PER_SECOND},
};
use tonic::Code;

/// Every audit record of `account` (or all, for ""), paged with the
/// default page size through a client with default limits.
async fn changes(app: &TestApp, secret: &str, account: &str) -> Vec<pb::Change> {
    let mut audit = app.clients(Some(secret)).audit;
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = audit
            .list_changes(pb::ListChangesRequest {
                account_id: account.into(),
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("ListChanges {account:?}: {s:?}"))
            .into_inner();
        all.extend(page.changes);
        if page.next_page_token.is_empty() {
            return all;
        }
        page_token = page.next_page_token;
    }
}

/// What the store holds, in bytes: the data directory's on sled, the rows'
/// (uncompressed) in the test's database on PostgreSQL.
async fn stored_bytes(app: &TestApp) -> u64 {
    match &app.database {
        None => dir_bytes(&app.data_dir),
        Some(database) => database.stored_bytes().await,
    }
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            dir_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

/// A retry's refusal is its first call's, code and message.
#[track_caller]
fn same_refusal(first: &tonic::Status, retry: &tonic::Status) {
    assert_eq!(
        (retry.code(), retry.message()),
        (first.code(), first.message())
    );
}

async fn metrics_text(app: &TestApp) -> String {
    common::metrics_answer(&app.metrics_addr.to_string()).await
}

// ---- A ----

on_both_backends! {
    async fn a_refused_call_with_a_huge_id_stores_it_cut_and_the_trail_still_lists(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        let gateway = app.token("gw", pb::Role::Gateway, "", "").await;
        let admin = app
            .token("acme admin", pb::Role::AccountAdmin, "acme", "")
            .await;
        app.clients(None); // the channel is up
        let before = stored_bytes(&app).await;
        let huge = "A".repeat(4_000_000);
        let mut provisioning = app.clients(Some(&gateway)).provisioning;
        for _ in 0..5 {
            let refused = provisioning
                .put_user(pb::PutUserRequest {
                    account_id: "acme".into(),
                    user_id: huge.clone(),
                    display_name: "x".into(),
                    ..Default::default()
                })
                .await;
            assert_status(refused, Code::InvalidArgument, &["user_id", "4000000"]);
        }
        // acme's admin, the operator and the CLI's default client can list.
        for (secret, account) in [
            (&admin, "acme"),
            (&app.operator_secret, "acme"),
            (&app.operator_secret, ""),
        ] {
            let records: Vec<_> = changes(&app, secret, account)
                .await
                .into_iter()
                .filter(|c| c.refused && c.rpc.ends_with("PutUser"))
                .collect();
            assert_eq!(records.len(), 5, "{account:?}");
            for r in records {
                assert!(r.user_id.len() <= 128, "{} bytes kept", r.user_id.len());
                assert!(r.user_id.ends_with("… (4000000 bytes)"), "{}", r.user_id);
                assert!(r.refusal_reason.len() <= 1024);
            }
        }
        // Measured once the refusals are listed, so stored (PostgreSQL
        // commits refusals with the next batch). Five refusals leave a few
        // KB, not 20 MB. sled preallocates its files, so the growth allowed
        // is well under one copy of the id.
        let grown = stored_bytes(&app).await.saturating_sub(before);
        assert!(
            grown < 1_000_000,
            "the store grew by {grown} bytes ({backend:?})"
        );
    }
}

on_both_backends! {
    async fn a_listing_is_bounded_in_bytes_and_pages_through_everything(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        app.put_user("acme", "ada").await;
        // Names of 256 four-byte characters: each rename's record holds about
        // 2 KB (before and after), so 700 of them exceed the 1 MiB page.
        let names = ["😀".repeat(256), "😎".repeat(256)];
        let mut provisioning = app.provisioning.clone();
        for i in 0..700 {
            provisioning
                .put_user(pb::PutUserRequest {
                    account_id: "acme".into(),
                    user_id: "ada".into(),
                    display_name: names[i % 2].clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        let first = app
            .audit
            .clone()
            .list_changes(pb::ListChangesRequest {
                account_id: "acme".into(),
                page_size: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let bytes: usize = prost::Message::encoded_len(&first);
        assert!(bytes <= 1024 * 1024 + 64 * 1024, "a page of {bytes} bytes");
        assert!(first.changes.len() < 700, "{} records", first.changes.len());
        assert!(!first.next_page_token.is_empty());
        // Paging loses nothing and repeats nothing.
        let all = changes(&app, &app.operator_secret, "acme").await;
        let renames = all.iter().filter(|c| c.rpc.ends_with("PutUser")).count();
        assert_eq!(renames, 701);
        let mut seqs: Vec<u64> = all.iter().map(|c| c.sequence).collect();
        seqs.dedup();
        assert_eq!(seqs.len(), all.len());
    }
}

/// The largest scope a user can hold: 1,000 groups of 128-character ids
/// (about 135 KB a user).
fn full_scope() -> pb::SupervisorScope {
    pb::SupervisorScope {
        whole_account: false,
        refs: (0..1000)
            .map(|i| pb::ScopeRef {
                kind: pb::ScopeKind::UserGroup as i32,
                id: format!("{i:0>128}"),
            })
            .collect(),
    }
}

/// A batch check of `users` of acme (through a default client), with or
/// without reports: how many answers, each with its scope's group count.
async fn batch_scopes(
    app: &TestApp,
    users: &[String],
    omit_reports: bool,
) -> Result<Vec<usize>, tonic::Status> {
    let mut request = tonic::Request::new(pb::BatchCheckAnalyticsAccessRequest {
        items: users
            .iter()
            .map(|u| pb::CheckItem {
                account_id: "acme".into(),
                user_id: u.clone(),
            })
            .collect(),
        min_revision: 0,
    });
    if omit_reports {
        request
            .metadata_mut()
            .insert("entitled-omit-reports", "true".parse().unwrap());
    }
    let answer = app
        .access
        .clone()
        .batch_check_analytics_access(request)
        .await?;
    Ok(answer
        .into_inner()
        .results
        .into_iter()
        .map(|r| match r.outcome {
            Some(pb::check_result::Outcome::Answer(a)) => {
                a.supervisor_scope.map_or(0, |s| s.refs.len())
            }
            other => panic!("{other:?}"),
        })
        .collect())
}

on_both_backends! {
    /// Tokens are listed in pages too (before, every token in one answer:
    /// some 12,000 tokens with long names would pass a default client's
    /// 4 MiB): every token once, oldest first, across pages.
    async fn tokens_are_listed_in_pages_every_one_once_oldest_first(backend) {
        let app = TestApp::spawn_on(backend).await;
        let name = "n".repeat(256);
        for i in 0..249 {
            app.token(&format!("{i:03} {name}")[..256], pb::Role::Gateway, "", "").await;
        }
        let mut tokens = app.tokens.clone();
        let mut seen = Vec::new();
        let mut page_token = String::new();
        let mut pages = 0;
        loop {
            let page = tokens
                .list_tokens(pb::ListTokensRequest {
                    page_size: 100,
                    page_token,
                })
                .await
                .unwrap()
                .into_inner();
            pages += 1;
            assert!(page.tokens.len() <= 100, "pages of 100 asked for");
            seen.extend(page.tokens);
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        // The operator's own token and the 249.
        assert_eq!((pages, seen.len()), (3, 250));
        let mut ids: Vec<&str> = seen.iter().map(|t| t.token_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 250, "each token once");
        let made: Vec<&str> = seen[1..].iter().map(|t| &t.name[..3]).collect();
        let expected: Vec<String> = (0..249).map(|i| format!("{i:03}")).collect();
        assert_eq!(made, expected, "oldest first");
        // No page size: every one of them in one page, as before paging.
        let all = tokens
            .list_tokens(pb::ListTokensRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!((all.tokens.len(), all.next_page_token.as_str()), (250, ""));

        let refused = tokens
            .list_tokens(pb::ListTokensRequest {
                page_size: 0,
                page_token: "not a token".into(),
            })
            .await;
        assert_status(refused, Code::InvalidArgument, &["page_token", "next_page_token"]);
    }
}

on_both_backends! {
    /// 40 supervisors with full scopes (about 5.4 MB of users): before,
    /// ListUsers' default page, ExportUsers' one message and a batch naming
    /// them each exceeded a default client's 4 MiB and failed on the client.
    async fn users_with_full_scopes_page_export_and_batch_within_a_default_client(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        let scope = full_scope();
        let scoped: Vec<String> = (0..40).map(|i| format!("s{i:02}")).collect();
        for user in &scoped {
            app.put_user("acme", user).await;
            app.update(pb::UpdateUserServicesRequest {
                account_id: "acme".into(),
                user_id: user.clone(),
                edition: Some("X8".into()),
                analytics_tier: Some(T::Supervisor as i32),
                supervisor_scope: Some(scope.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        // Two users without a scope, before and after them.
        app.put_user("acme", "ada").await;
        app.put_user("acme", "zed").await;
        let mut all: Vec<String> = scoped.clone();
        all.insert(0, "ada".into());
        all.push("zed".into());
        let groups = |id: &str| if id.starts_with('s') { 1000 } else { 0 };

        // ListUsers, with the default page size and the largest: pages cut
        // at 1 MiB, each user once, in order, nothing lost.
        for page_size in [0, 1000] {
            let mut listed = Vec::new();
            let mut pages = 0;
            let mut page_token = String::new();
            loop {
                let page = app
                    .provisioning
                    .clone()
                    .list_users(pb::ListUsersRequest {
                        account_id: "acme".into(),
                        page_size,
                        page_token: page_token.clone(),
                    })
                    .await
                    .unwrap_or_else(|s| panic!("ListUsers page {pages}: {s:?}"))
                    .into_inner();
                let bytes = prost::Message::encoded_len(&page);
                assert!(bytes <= 1024 * 1024 + 1024, "a page of {bytes} bytes");
                assert!(!page.users.is_empty());
                pages += 1;
                for user in page.users {
                    let refs = user.supervisor_scope.as_ref().map_or(0, |s| s.refs.len());
                    assert_eq!(refs, groups(&user.user_id), "{}", user.user_id);
                    if refs > 0 {
                        assert_eq!(user.supervisor_scope, Some(scope.clone()));
                    }
                    listed.push(user.user_id);
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            assert_eq!(listed, all, "page_size {page_size}");
            assert!(pages >= 6, "{pages} pages");
        }

        // ExportUsers: messages of at most 1 MiB, each user once, in order.
        let mut stream = app
            .provisioning
            .clone()
            .export_users(pb::ExportUsersRequest {
                account_id: "acme".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let mut exported = Vec::new();
        let mut messages = 0;
        while let Some(message) = stream.message().await.unwrap() {
            let bytes = prost::Message::encoded_len(&message);
            assert!(bytes <= 1024 * 1024 + 1024, "a message of {bytes} bytes");
            messages += 1;
            for row in message.rows {
                let refs = row.supervisor_scope.as_ref().map_or(0, |s| s.refs.len());
                assert_eq!(refs, groups(&row.user_id), "{}", row.user_id);
                exported.push(row.user_id);
            }
        }
        assert_eq!(exported, all);
        assert!(messages >= 6, "{messages} messages");

        // The batch: answered when it fits a default client; refused,
        // naming the limit and how many fit, when it would not. 1,000 items
        // naming one user would be about 135 MB; the 40 about 5.4 MB.
        let same = vec![scoped[0].clone(); 1000];
        for (users, omit_reports) in [(&same, false), (&scoped, false), (&scoped, true)] {
            let refused = batch_scopes(&app, users, omit_reports).await;
            let message = refused.as_ref().map_or_else(|s| s.message().to_owned(), |_| String::new());
            assert_status(
                refused.map(|answers| answers.len()),
                Code::InvalidArgument,
                &["items: ", &format!("of these {} items", users.len()), "4194304 bytes"],
            );
            assert_eq!(message.contains("entitled-omit-reports"), !omit_reports, "{message}");
            // As many as it says fit are answered, each with its scope.
            let fit: usize = message
                .split("send at most ")
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .unwrap()
                .parse()
                .unwrap();
            assert!((20..=31).contains(&fit), "{message}");
            let answers = batch_scopes(&app, &users[..fit], omit_reports).await.unwrap();
            assert_eq!(answers, vec![1000; fit]);
        }
        // Users with and without a scope in one batch that fits.
        let answers = batch_scopes(&app, &all[..22], false).await.unwrap();
        assert_eq!(answers.len(), 22);
        assert_eq!(answers[0], 0);
    }
}

on_both_backends! {
    async fn a_tokens_refusals_are_rate_limited_and_another_tokens_are_not(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        let attacker = app.token("gw", pb::Role::Gateway, "", "").await;
        let mut provisioning = app.clients(Some(&attacker)).provisioning;
        let flood = REFUSAL_BURST as usize * 4;
        for i in 0..flood {
            let refused = provisioning
                .put_user(pb::PutUserRequest {
                    account_id: "acme".into(),
                    user_id: format!("u{i}"),
                    display_name: "x".into(),
                    ..Default::default()
                })
                .await;
            // Every call still gets its own answer.
            assert_status(refused, Code::PermissionDenied, &["gateway"]);
        }
        let by_attacker = |all: &[pb::Change]| {
            all.iter()
                .filter(|c| c.refused && c.caller.as_ref().unwrap().name == "gw")
                .count()
        };
        let all = changes(&app, &app.operator_secret, "").await;
        let recorded = by_attacker(&all);
        // The burst, and what the rate refilled while the flood ran.
        assert!(recorded >= REFUSAL_BURST as usize, "{recorded}");
        assert!(recorded < flood, "{recorded} of {flood} recorded");
        let metrics = metrics_text(&app).await;
        let left_out = metrics
            .lines()
            .find_map(|l| l.strip_prefix("entitled_audit_refusals_left_out_total "))
            .unwrap()
            .parse::<usize>()
            .unwrap();
        assert_eq!(recorded + left_out, flood);

        // Another token's refusal is recorded at once.
        let other = app.token("gw2", pb::Role::Gateway, "", "").await;
        let refused = app
            .clients(Some(&other))
            .provisioning
            .put_user(pb::PutUserRequest {
                account_id: "acme".into(),
                user_id: "x".into(),
                display_name: "x".into(),
                ..Default::default()
            })
            .await;
        assert_status(refused, Code::PermissionDenied, &[]);
        let all = changes(&app, &app.operator_secret, "").await;
        assert!(
            all.iter()
                .any(|c| c.refused && c.caller.as_ref().unwrap().name == "gw2")
        );

        // Once the rate allows again, the next record says what was left out.
        tokio::time::sleep(std::time::Duration::from_millis(
            1500 / u64::from(REFUSALS_PER_SECOND),
        ))
        .await;
        let _ = provisioning
            .put_user(pb::PutUserRequest {
                account_id: "acme".into(),
                user_id: "last".into(),
                display_name: "x".into(),
                ..Default::default()
            })
            .await;
        let all = changes(&app, &app.operator_secret, "").await;
        let last = all
            .iter()
            .rfind(|c| c.refused && c.caller.as_ref().unwrap().name == "gw")
            .unwrap();
        assert_eq!(last.user_id, "last");
        assert!(
            last.refusal_reason
                .contains("earlier refusals of this token were not recorded"),
            "{}",
            last.refusal_reason
        );
    }
}

// ---- B ----

on_both_backends! {
    async fn a_refusal_across_accounts_goes_to_the_callers_side_not_the_targets(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        app.create_account("beta", "work").await;
        app.put_user("acme", "ada").await;
        let acme = app
            .token("acme admin", pb::Role::AccountAdmin, "acme", "")
            .await;
        let beta = app
            .token(
                "beta admin (Bert Private)",
                pb::Role::AccountAdmin,
                "beta",
                "",
            )
            .await;
        let beta_token_id = beta.split_once('.').unwrap().0.to_owned();
        let mut intruder = app.clients(Some(&beta)).provisioning;
        let refused = intruder
            .update_user_services(pb::UpdateUserServicesRequest {
                account_id: "acme".into(),
                user_id: "ada".into(),
                edition: Some("X8".into()),
                ..Default::default()
            })
            .await;
        assert_status(refused, Code::PermissionDenied, &[]);
        // Also with a malformed id and through each write RPC that names an account.
        let _ = intruder
            .put_user(pb::PutUserRequest {
                account_id: "acme".into(),
                user_id: "bad id".into(),
                display_name: "x".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        let _ = intruder
            .delete_user(pb::DeleteUserRequest {
                account_id: "acme".into(),
                user_id: "ada".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();

        let seen_by_acme = format!("{:?}", changes(&app, &acme, "acme").await);
        for secret in [&beta_token_id, "Bert", "beta"] {
            assert!(
                !seen_by_acme.contains(secret),
                "acme's trail shows {secret:?}: {seen_by_acme}"
            );
        }
        // The caller's side keeps them, and the operators see them.
        let seen_by_beta: Vec<_> = changes(&app, &beta, "beta")
            .await
            .into_iter()
            .filter(|c| c.refused)
            .collect();
        assert_eq!(seen_by_beta.len(), 3);
        assert!(seen_by_beta.iter().all(|c| c.account_id == "beta"));
        assert!(
            seen_by_beta
                .iter()
                .all(|c| c.refusal_reason.contains("on account `acme`"))
        );
        let all = changes(&app, &app.operator_secret, "").await;
        assert_eq!(
            all.iter()
                .filter(|c| c.refused && c.caller.as_ref().unwrap().token_id == beta_token_id)
                .count(),
            3
        );
    }
}

// ---- C ----

on_both_backends! {
    async fn a_retry_after_a_first_call_that_changed_nothing_changes_nothing(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        app.put_user("acme", "ada").await;
        app.set("acme", "ada", Some("X8"), Some(T::Essentials))
            .await
            .unwrap();
        let provisioner = app.token("prov", pb::Role::Provisioner, "", "").await;
        let mut provisioning = app.clients(Some(&provisioner)).provisioning;
        let request = pb::UpdateUserServicesRequest {
            account_id: "acme".into(),
            user_id: "ada".into(),
            edition: Some("X8".into()),
            request_id: "R1".into(),
            ..Default::default()
        };
        let first = provisioning
            .update_user_services(request.clone())
            .await
            .unwrap()
            .into_inner();
        // An operator moves the user on.
        let moved = app.set("acme", "ada", Some("X2"), None).await.unwrap();
        let retry = provisioning
            .update_user_services(request)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(retry, first);
        let user = app.get_user("acme", "ada").await.unwrap();
        assert_eq!(user.edition, "X2");
        assert_eq!(user.revision, moved.revision);
    }
}

on_both_backends! {
    async fn a_retry_after_a_refusal_gets_the_refusal_even_once_the_state_allows_it(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        app.put_user("acme", "ada").await;
        app.set("acme", "ada", Some("X2"), None).await.unwrap();
        let provisioner = app.token("prov", pb::Role::Provisioner, "", "").await;
        let mut provisioning = app.clients(Some(&provisioner)).provisioning;
        let request = pb::UpdateUserServicesRequest {
            account_id: "acme".into(),
            user_id: "ada".into(),
            analytics_tier: Some(T::Supervisor as i32),
            request_id: "R2".into(),
            ..Default::default()
        };
        let first = provisioning
            .update_user_services(request.clone())
            .await
            .unwrap_err();
        assert_eq!(first.code(), Code::FailedPrecondition);
        app.set("acme", "ada", Some("X8"), None).await.unwrap();
        let retry = provisioning
            .update_user_services(request.clone())
            .await
            .unwrap_err();
        assert_eq!(retry.code(), first.code());
        assert_eq!(retry.message(), first.message());
        assert_eq!(app.check("acme", "ada").await.tier, T::None as i32);
        // The same id with another request is still refused as a reuse.
        let other = pb::UpdateUserServicesRequest {
            analytics_tier: Some(T::Essentials as i32),
            ..request
        };
        assert_status(
            provisioning.update_user_services(other).await,
            Code::FailedPrecondition,
            &["request_id `R2` was already used"],
        );
        // An ABORTED conflict is kept too: the same request meets it again.
        let stale = pb::UpdateUserServicesRequest {
            account_id: "acme".into(),
            user_id: "ada".into(),
            analytics_tier: Some(T::Essentials as i32),
            expected_revision: Some(1),
            request_id: "R3".into(),
            ..Default::default()
        };
        let first = provisioning
            .update_user_services(stale.clone())
            .await
            .unwrap_err();
        assert_eq!(first.code(), Code::Aborted);
        let retry = provisioning.update_user_services(stale).await.unwrap_err();
        same_refusal(&first, &retry);
    }
}

on_both_backends! {
    async fn every_rpc_with_a_request_id_replays_a_no_op_or_a_refusal(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        app.put_user("acme", "ada").await;
        let mut provisioning = app.provisioning.clone();

        // PutUser: the same name is a no-op; a rename by someone else later
        // is not undone by the retry.
        let same_name = pb::PutUserRequest {
            account_id: "acme".into(),
            user_id: "ada".into(),
            display_name: "User ada".into(),
            request_id: "put".into(),
        };
        let first = provisioning
            .put_user(same_name.clone())
            .await
            .unwrap()
            .into_inner();
        let renamer = app.token("other", pb::Role::Provisioner, "", "").await;
        app.clients(Some(&renamer))
            .provisioning
            .put_user(pb::PutUserRequest {
                account_id: "acme".into(),
                user_id: "ada".into(),
                display_name: "Ada L.".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let retry = provisioning.put_user(same_name).await.unwrap().into_inner();
        assert_eq!(retry, first);
        assert_eq!(
            app.get_user("acme", "ada").await.unwrap().display_name,
            "Ada L."
        );

        // DeleteUser: NOT_FOUND first; the user made later is not deleted.
        let delete = pb::DeleteUserRequest {
            account_id: "acme".into(),
            user_id: "bob".into(),
            request_id: "del".into(),
        };
        let first = provisioning.delete_user(delete.clone()).await.unwrap_err();
        assert_eq!(first.code(), Code::NotFound);
        app.put_user("acme", "bob").await;
        let retry = provisioning.delete_user(delete).await.unwrap_err();
        same_refusal(&first, &retry);
        app.get_user("acme", "bob").await.unwrap();

        // CreateAccount: ALREADY_EXISTS stays so.
        let create = pb::CreateAccountRequest {
            account_id: "acme".into(),
            display_name: "Acme".into(),
            product_line: "work".into(),
            request_id: "acct".into(),
        };
        let first = provisioning
            .create_account(create.clone())
            .await
            .unwrap_err();
        assert_eq!(first.code(), Code::AlreadyExists);
        let retry = provisioning.create_account(create).await.unwrap_err();
        same_refusal(&first, &retry);

        // ImportUsers: rows refused for an account that did not exist are
        // refused again after it is made, and nothing is applied.
        let import = pb::ImportUsersRequest {
            rows: vec![pb::UserRow {
                account_id: "zeta".into(),
                user_id: "zed".into(),
                display_name: "Zed".into(),
                edition: "X8".into(),
                analytics_tier: T::Supervisor as i32,
                supervisor_scope: None,
            }],
            dry_run: false,
            request_id: "imp".into(),
        };
        let first = provisioning
            .import_users(import.clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(first.errors.len(), 1, "{first:?}");
        assert_eq!(first.errors[0].code, "NOT_FOUND");
        app.create_account("zeta", "work").await;
        let retry = provisioning
            .import_users(import)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(retry, first);
        assert_eq!(
            app.get_user("zeta", "zed").await.unwrap_err().code(),
            Code::NotFound
        );

        // CreateToken: refused for an account that did not exist, and still
        // refused once it does.
        let token = pb::CreateTokenRequest {
            name: "late admin".into(),
            role: pb::Role::AccountAdmin as i32,
            account_id: "omega".into(),
            user_id: String::new(),
            request_id: "tok".into(),
        };
        let mut tokens = app.tokens.clone();
        let first = tokens.create_token(token.clone()).await.unwrap_err();
        assert_eq!(first.code(), Code::NotFound);
        app.create_account("omega", "work").await;
        let retry = tokens.create_token(token).await.unwrap_err();
        same_refusal(&first, &retry);

        // RevokeToken: an unknown token stays NOT_FOUND with the same answer.
        let revoke = pb::RevokeTokenRequest {
            token_id: "nosuch".into(),
            request_id: "rev".into(),
        };
        let first = tokens.revoke_token(revoke.clone()).await.unwrap_err();
        let retry = tokens.revoke_token(revoke).await.unwrap_err();
        same_refusal(&first, &retry);

        // DeleteAccount: NOT_FOUND first; the account made later is not
        // deleted by the retry.
        let delete = pb::DeleteAccountRequest {
            account_id: "gone".into(),
            request_id: "delacct".into(),
        };
        let first = provisioning.delete_account(delete.clone()).await.unwrap_err();
        assert_eq!(first.code(), Code::NotFound);
        app.create_account("gone", "work").await;
        app.put_user("gone", "gus").await;
        let retry = provisioning.delete_account(delete).await.unwrap_err();
        same_refusal(&first, &retry);
        app.get_account("gone").await.unwrap();
        app.get_user("gone", "gus").await.unwrap();

        // MigrateAccount: refused as already on `work`; once the account is
        // re-made on `virtual-office` (a move the catalogue allows), the
        // retry is still refused and nothing moves.
        app.create_account("vo", "work").await;
        let to_work = pb::MigrateAccountRequest {
            account_id: "vo".into(),
            to_product_line: "work".into(),
            request_id: "move".into(),
            ..Default::default()
        };
        let first = migrate(&provisioning, to_work.clone()).await.unwrap_err();
        assert_eq!(first.code(), Code::FailedPrecondition, "{first:?}");
        provisioning
            .delete_account(pb::DeleteAccountRequest {
                account_id: "vo".into(),
                request_id: String::new(),
            })
            .await
            .unwrap();
        app.create_account("vo", "virtual-office").await;
        app.put_user("vo", "val").await;
        app.set("vo", "val", Some("X5"), Some(T::Essentials))
            .await
            .unwrap();
        let revision = app.revision().await;
        let retry = migrate(&provisioning, to_work.clone()).await.unwrap_err();
        same_refusal(&first, &retry);
        assert_eq!(
            app.get_account("vo").await.unwrap().product_line,
            "virtual-office"
        );
        assert_eq!(app.revision().await, revision);
        // The same request with a new request id moves it: the retry was
        // refused by its kept answer, not by the state.
        let moved = migrate(
            &provisioning,
            pb::MigrateAccountRequest {
                request_id: "move-2".into(),
                ..to_work
            },
        )
        .await
        .unwrap();
        assert!(!moved.is_empty());
        assert_eq!(app.get_account("vo").await.unwrap().product_line, "work");
    }
}

/// Every message of a MigrateAccount answer, or its refusal.
async fn migrate(
    provisioning: &ProvisioningServiceClient<Authed>,
    request: pb::MigrateAccountRequest,
) -> Result<Vec<pb::MigrateAccountResponse>, tonic::Status> {
    let mut stream = provisioning
        .clone()
        .migrate_account(request)
        .await?
        .into_inner();
    let mut messages = Vec::new();
    while let Some(message) = stream.message().await? {
        messages.push(message);
    }
    Ok(messages)
}

on_both_backends! {
    async fn a_kept_no_op_answer_survives_a_restart(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        app.put_user("acme", "ada").await;
        app.set("acme", "ada", Some("X8"), Some(T::Essentials))
            .await
            .unwrap();
        let request = pb::UpdateUserServicesRequest {
            account_id: "acme".into(),
            user_id: "ada".into(),
            edition: Some("X8".into()),
            request_id: "R1".into(),
            ..Default::default()
        };
        let first = app.update(request.clone()).await.unwrap();
        let app = app.restart().await;
        app.set("acme", "ada", Some("X2"), None).await.unwrap();
        let retry = app.update(request).await.unwrap();
        assert_eq!(retry, first);
        assert_eq!(app.get_user("acme", "ada").await.unwrap().edition, "X2");
    }
}

on_both_backends! {
    async fn a_token_over_its_refusal_rate_has_its_refusals_answered_but_not_kept(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        let attacker = app.token("prov", pb::Role::Provisioner, "", "").await;
        let mut provisioning = app.clients(Some(&attacker)).provisioning;
        let missing = |request_id: String| pb::UpdateUserServicesRequest {
            account_id: "acme".into(),
            user_id: "ghost".into(),
            edition: Some("X8".into()),
            request_id,
            ..Default::default()
        };
        // Refusals that reach the store, each with a new request id: within the
        // token's rate each is kept (stored) for its retry, beyond it none is.
        for i in 0..REFUSAL_BURST * 2 {
            let refused = provisioning
                .update_user_services(missing(format!("r{i}")))
                .await;
            assert_status(refused, Code::NotFound, &["ghost"]);
        }
        // Over the rate now: this refusal is answered but not kept...
        let late = provisioning
            .update_user_services(missing("late".into()))
            .await;
        assert_status(late, Code::NotFound, &["ghost"]);
        // ...so once the user exists its retry runs again (and applies), while
        // an early one, kept, still gets its first answer.
        app.put_user("acme", "ghost").await;
        let early = provisioning
            .update_user_services(missing("r0".into()))
            .await;
        assert_status(early, Code::NotFound, &["ghost"]);
        let retried = provisioning
            .update_user_services(missing("late".into()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(retried.user.unwrap().edition, "X8");
    }
}

on_both_backends! {
    async fn a_token_over_its_refusal_rate_has_its_refused_imports_answered_but_not_kept(backend) {
        let app = TestApp::spawn_on(backend).await;
        // An import's rows refused against the stored state answer OK, but
        // the answer kept for a retry is a refusal's: within the token's
        // rate only. A dry run's counts against the rate too, though it
        // leaves no record in the trail.
        for dry_run in [false, true] {
            let attacker = app
                .token(&format!("prov {dry_run}"), pb::Role::Provisioner, "", "")
                .await;
            let mut provisioning = app.clients(Some(&attacker)).provisioning;
            let account = format!("zeta-{dry_run}");
            let import = |request_id: String| pb::ImportUsersRequest {
                rows: vec![pb::UserRow {
                    account_id: account.clone(),
                    user_id: "zed".into(),
                    display_name: "Zed".into(),
                    edition: "X8".into(),
                    analytics_tier: T::Supervisor as i32,
                    supervisor_scope: None,
                }],
                dry_run,
                request_id,
            };
            let refused = |answer: &pb::ImportUsersResponse| {
                assert_eq!(answer.errors.len(), 1, "{answer:?}");
                assert_eq!(answer.errors[0].code, "NOT_FOUND", "{answer:?}");
            };
            for i in 0..REFUSAL_BURST * 2 {
                let answer = provisioning.import_users(import(format!("r{i}"))).await;
                refused(&answer.unwrap().into_inner());
            }
            // Over the rate now: answered, not kept...
            let late = provisioning.import_users(import("late".into())).await;
            refused(&late.unwrap().into_inner());
            // ...so once the account exists its retry runs again, while an
            // early one, kept, still gets its first answer.
            app.create_account(&account, "work").await;
            let early = provisioning.import_users(import("r0".into())).await;
            refused(&early.unwrap().into_inner());
            let retried = provisioning
                .import_users(import("late".into()))
                .await
                .unwrap()
                .into_inner();
            assert!(retried.errors.is_empty(), "{dry_run}: {retried:?}");
            assert_eq!(retried.created, 1);
            assert_eq!(app.get_user(&account, "zed").await.is_ok(), !dry_run);
        }
    }
}

on_both_backends! {
    async fn a_refused_import_kept_for_its_retry_stores_a_few_bytes_a_row(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        let mut provisioning = app.provisioning.clone();
        // Every row refused for an unknown edition of the longest name, so
        // each row's message is as long as an import row's gets.
        let rows: Vec<pb::UserRow> = (0..MAX_IMPORT_ROWS)
            .map(|i| pb::UserRow {
                account_id: "acme".into(),
                user_id: format!("u{i}"),
                display_name: "U".into(),
                edition: "Z".repeat(128),
                analytics_tier: T::Essentials as i32,
                supervisor_scope: None,
            })
            .collect();
        let import = |request_id: &str| pb::ImportUsersRequest {
            rows: rows.clone(),
            dry_run: false,
            request_id: request_id.into(),
        };
        let first = provisioning
            .import_users(import("big-0"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(first.errors.len(), MAX_IMPORT_ROWS);
        // The live answer is every row's, whole, and fits a default client.
        let live = prost::Message::encoded_len(&first);
        assert!(live < 4 * 1024 * 1024, "{live} bytes");
        assert!(first.errors[MAX_IMPORT_ROWS - 1].message.contains("ZZZZ"));

        // A retry gets every row's index and code, and the first rows'
        // messages; nothing is applied.
        let retry = provisioning
            .import_users(import("big-0"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (retry.created, retry.updated, retry.unchanged, retry.revision),
            (first.created, first.updated, first.unchanged, first.revision)
        );
        assert_eq!(retry.errors.len(), first.errors.len());
        for (i, (again, was)) in retry.errors.iter().zip(&first.errors).enumerate() {
            assert_eq!((again.index, &again.code), (was.index, &was.code));
            if i < KEPT_ROW_MESSAGES {
                assert_eq!(again.message, was.message);
            } else {
                assert!(
                    again.message.contains("send the rows again with a new request_id"),
                    "{}",
                    again.message
                );
            }
        }
        assert_eq!(app.get_user("acme", "u0").await.unwrap_err().code(), Code::NotFound);

        // Five more, each with a new request id, each kept: a few bytes a
        // row, not every row's message (the answer is 1.36 MB).
        let before = stored_bytes(&app).await;
        for i in 1..=5 {
            let answer = provisioning
                .import_users(import(&format!("big-{i}")))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(answer.errors.len(), MAX_IMPORT_ROWS);
        }
        let _ = changes(&app, &app.operator_secret, "").await;
        let grown = stored_bytes(&app).await.saturating_sub(before);
        assert!(
            grown < 1_000_000,
            "the store grew by {grown} bytes ({backend:?})"
        );
    }
}

// ---- Hidden characters ----

/// A user id as a hostile caller sends it: a terminal's "clear the screen"
/// and a right-to-left override.
const HOSTILE_ID: &str = "a\u{1b}[2Jb\u{202e}c";

/// Whether `text` holds a character no answer may repeat raw: a control or
/// format character (the server's own messages are single lines).
fn hides(text: &str) -> bool {
    text.chars().any(|c| {
        c.is_control() || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    })
}

/// Every text of a record of the trail.
fn texts(c: &pb::Change) -> Vec<&str> {
    let mut out = vec![
        c.rpc.as_str(),
        &c.account_id,
        &c.user_id,
        &c.refusal_code,
        &c.refusal_reason,
    ];
    out.extend(c.details.iter().map(String::as_str));
    if let Some(caller) = &c.caller {
        out.extend([caller.token_id.as_str(), &caller.name]);
    }
    for state in [&c.before, &c.after].into_iter().flatten() {
        out.extend([state.display_name.as_str(), &state.edition]);
        if let Some(scope) = &state.supervisor_scope {
            out.extend(scope.refs.iter().map(|r| r.id.as_str()));
        }
    }
    for state in [&c.account_before, &c.account_after].into_iter().flatten() {
        out.extend([state.display_name.as_str(), &state.product_line]);
    }
    out
}

on_both_backends! {
    async fn a_refused_id_with_an_escape_sequence_is_kept_escaped_in_the_trail(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        app.create_account("beta", "work").await;
        let gateway = app.token("gw", pb::Role::Gateway, "", "").await;
        let beta = app
            .token("beta admin", pb::Role::AccountAdmin, "beta", "")
            .await;
        // A gateway may not write at all; beta's admin may not write to
        // acme (its refusal is kept on beta's side, the ids in its reason).
        for secret in [&gateway, &beta] {
            let refused = app
                .clients(Some(secret))
                .provisioning
                .put_user(pb::PutUserRequest {
                    account_id: "acme".into(),
                    user_id: HOSTILE_ID.into(),
                    display_name: "x".into(),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
            assert!(!hides(refused.message()), "{:?}", refused.message());
        }
        let all = changes(&app, &app.operator_secret, "").await;
        let refused: Vec<_> = all
            .iter()
            .filter(|c| c.refused && c.rpc.ends_with("PutUser"))
            .collect();
        assert_eq!(refused.len(), 2, "{all:?}");
        for c in &all {
            for text in texts(c) {
                assert!(!hides(text), "{text:?} in {c:?}");
            }
        }
        // The id is shown escaped: what hid in it is there to read.
        let shown = "a\\u{1b}[2Jb\\u{202e}c";
        assert!(refused.iter().any(|c| c.user_id == shown), "{refused:?}");
        assert!(
            refused
                .iter()
                .any(|c| c.refusal_reason.contains(&format!("user `{shown}`"))),
            "{refused:?}"
        );
    }
}

on_both_backends! {
    async fn an_unknown_catalogue_name_is_shown_escaped_in_its_refusal(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        app.put_user("acme", "ada").await;
        let mut provisioning = app.provisioning.clone();
        let edition = provisioning
            .update_user_services(pb::UpdateUserServicesRequest {
                account_id: "acme".into(),
                user_id: "ada".into(),
                edition: Some("X\u{202e}8".into()),
                ..Default::default()
            })
            .await;
        let line = provisioning
            .create_account(pb::CreateAccountRequest {
                account_id: "beta".into(),
                display_name: "Beta".into(),
                product_line: "wo\u{202e}rk".into(),
                ..Default::default()
            })
            .await;
        let moved = provisioning
            .migrate_account(pb::MigrateAccountRequest {
                account_id: "acme".into(),
                to_product_line: "wo\u{1b}[2Jrk".into(),
                ..Default::default()
            })
            .await;
        for (result, shown) in [
            (edition.map(|_| ()), "edition `X\\u{202e}8`"),
            (line.map(|_| ()), "product_line `wo\\u{202e}rk`"),
            (moved.map(|_| ()), "to_product_line `wo\\u{1b}[2Jrk`"),
        ] {
            let status = result.unwrap_err();
            assert!(
                matches!(status.code(), Code::InvalidArgument | Code::NotFound),
                "{status:?}"
            );
            assert!(!hides(status.message()), "{:?}", status.message());
            assert!(status.message().contains(shown), "{:?}", status.message());
        }
        for c in changes(&app, &app.operator_secret, "").await {
            for text in texts(&c) {
                assert!(!hides(text), "{text:?} in {c:?}");
            }
        }
    }
}

on_both_backends! {
    async fn a_request_id_with_a_format_character_is_refused_naming_its_position(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        let mut provisioning = app.provisioning.clone();
        for (request_id, pieces) in [
            ("r1\u{202e}", ["invisible format character U+202E at position 3", "r1\\u{202e}"]),
            ("\u{200b}r1", ["invisible format character U+200B at position 1", "\\u{200b}r1"]),
            ("r\u{1b}[2J", ["control character U+001B at position 2", "r\\u{1b}[2J"]),
        ] {
            let refused = provisioning
                .put_user(pb::PutUserRequest {
                    account_id: "acme".into(),
                    user_id: "ada".into(),
                    display_name: "Ada".into(),
                    request_id: request_id.into(),
                })
                .await;
            let status = refused.as_ref().unwrap_err();
            assert!(!hides(status.message()), "{:?}", status.message());
            let mut pieces = pieces.to_vec();
            pieces.push("request_id");
            assert_status(refused, Code::InvalidArgument, &pieces);
        }
        // Nothing was written.
        assert_eq!(
            app.get_user("acme", "ada").await.unwrap_err().code(),
            Code::NotFound
        );
    }
}
