//! MigrateAccount (rule 15): moving an account from Virtual Office to X
//! Series as a whole, in one write. The dry run, the mapping, tiers kept
//! and lowered, unmapped licences, expected_revision, roles, retries, the
//! audit trail and Watch, a concurrent write, and a 100,000-user account.
//! Each test runs on sled and on PostgreSQL but the 100,000-user one (sled
//! here; both backends are timed by `entitled-bench migrate`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use std::time::{Duration, Instant};

use common::{Backend, Clients, Options, T, TestApp, assert_status, catalogue_with};
use entitled::proto::v1::{self as pb, Role};
use pb::{migrate_account_response::Item, watch_entitlements_response::Event};
use prost::Message;
use tonic::Code;

/// The built-in catalogue, plus an edition `X9` of `virtual-office` that
/// `work` lacks, and explicit mappings X5 → X4 (same tiers) and X6 → X3
/// (which allows essentials only, so a supervisor is lowered).
fn catalogue() -> entitled::catalogue::Catalogue {
    catalogue_with(|text| {
        let text = text.replacen(
            "{ id = \"X8e\", max_tier = \"supervisor\" },\n]",
            "{ id = \"X8e\", max_tier = \"supervisor\" },\n  { id = \"X9\", max_tier = \"supervisor\" },\n]",
            1,
        );
        let migration = "from = \"virtual-office\"\nto = \"work\"\n";
        assert!(text.contains(migration));
        text.replace(
            migration,
            &format!(
                "{migration}editions = [{{ from = \"X5\", to = \"X4\" }}, {{ from = \"X6\", to = \"X3\" }}]\n"
            ),
        )
    })
}

async fn spawn(backend: Backend) -> TestApp {
    TestApp::spawn_with(Options {
        catalogue: catalogue(),
        backend,
        ..Options::default()
    })
    .await
}

/// A move's whole answer: the plan's users, the summary, and how many
/// messages carried them.
struct Moved {
    users: Vec<pb::MigratedUser>,
    summary: pb::MigrationSummary,
    messages: usize,
}

fn to_work(account: &str) -> pb::MigrateAccountRequest {
    pb::MigrateAccountRequest {
        account_id: account.into(),
        to_product_line: "work".into(),
        ..Default::default()
    }
}

fn dry(account: &str) -> pb::MigrateAccountRequest {
    pb::MigrateAccountRequest {
        dry_run: true,
        ..to_work(account)
    }
}

async fn migrate_as(
    clients: &Clients,
    request: pb::MigrateAccountRequest,
) -> Result<Moved, tonic::Status> {
    let mut stream = clients
        .provisioning
        .clone()
        .migrate_account(request)
        .await?
        .into_inner();
    let mut users = Vec::new();
    let mut summary = None;
    let mut messages = 0;
    while let Some(message) = stream.message().await? {
        messages += 1;
        assert!(summary.is_none(), "a message after the summary");
        assert!(message.encoded_len() < 4 * 1024 * 1024);
        match message.item.unwrap() {
            Item::Users(chunk) => {
                assert!(!chunk.users.is_empty() && chunk.users.len() <= 1000);
                users.extend(chunk.users);
            }
            Item::Summary(s) => summary = Some(s),
        }
    }
    Ok(Moved {
        users,
        summary: summary.expect("the stream ended without a summary"),
        messages,
    })
}

async fn migrate(
    app: &TestApp,
    request: pb::MigrateAccountRequest,
) -> Result<Moved, tonic::Status> {
    migrate_as(&app.clients(Some(&app.operator_secret)), request).await
}

/// Sets `user` of `account` (made if absent) to `edition` and `tier`.
async fn given(app: &TestApp, account: &str, user: &str, edition: &str, tier: T) {
    app.put_user(account, user).await;
    app.set(account, user, Some(edition), Some(tier))
        .await
        .unwrap();
}

/// Every user of `account`, by id, as ExportUsers has them.
async fn export(app: &TestApp, account: &str) -> Vec<pb::UserRow> {
    let mut stream = app
        .provisioning
        .clone()
        .export_users(pb::ExportUsersRequest {
            account_id: account.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut rows = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        rows.extend(message.rows);
    }
    rows
}

/// Every user of `account`, by id: (id, edition, tier, revision).
async fn users_of(app: &TestApp, account: &str) -> Vec<(String, String, i32, u64)> {
    let mut out = Vec::new();
    for row in export(app, account).await {
        let user = app.get_user(account, &row.user_id).await.unwrap();
        out.push((
            user.user_id,
            user.edition,
            user.analytics_tier,
            user.revision,
        ));
    }
    out
}

/// A plan row as (user, edition before → after, tier before → after,
/// notices' kinds, changed).
fn row(u: &pb::MigratedUser) -> (&str, &str, &str, i32, i32, Vec<i32>, bool) {
    (
        &u.user_id,
        &u.edition_before,
        &u.edition_after,
        u.analytics_tier_before,
        u.analytics_tier_after,
        u.notices.iter().map(|n| n.kind).collect(),
        u.changed,
    )
}

const ESS: i32 = T::Essentials as i32;
const SUP: i32 = T::Supervisor as i32;
const NONE: i32 = T::None as i32;
const LOWERED: i32 = pb::NoticeKind::TierLowered as i32;
const REMOVED: i32 = pb::NoticeKind::TierRemoved as i32;

/// acme on Virtual Office: a X2 essentials, b X5 essentials, c X6
/// supervisor, d X8 supervisor, e no licence.
async fn acme(app: &TestApp) {
    app.create_account("acme", "virtual-office").await;
    given(app, "acme", "a", "X2", T::Essentials).await;
    given(app, "acme", "b", "X5", T::Essentials).await;
    given(app, "acme", "c", "X6", T::Supervisor).await;
    given(app, "acme", "d", "X8", T::Supervisor).await;
    app.put_user("acme", "e").await;
}

on_both_backends! {
    /// A dry run shows the plan and changes nothing; applying it at the
    /// dry run's revision moves the account and exactly the users the plan
    /// said, keeping tiers where allowed and lowering them with a notice
    /// where not, in one write with an audit record and a Watch event per
    /// user changed.
    async fn a_dry_run_changes_nothing_then_the_move_applies_its_plan(backend) {
        let app = spawn(backend).await;
        acme(&app).await;
        let before = users_of(&app, "acme").await;
        let start = app.revision().await;

        let plan = migrate(&app, dry("acme")).await.unwrap();
        let rows: Vec<_> = plan.users.iter().map(row).collect();
        assert_eq!(
            rows,
            [
                ("a", "X2", "X2", ESS, ESS, vec![], false),
                ("b", "X5", "X4", ESS, ESS, vec![], true),
                ("c", "X6", "X3", SUP, ESS, vec![LOWERED], true),
                ("d", "X8", "X8", SUP, SUP, vec![], false),
                ("e", "", "", NONE, NONE, vec![], false),
            ]
        );
        assert!(plan.users[2].notices[0].message.contains("edition `X3` of product line `work` does not include supervisor analytics"));
        let s = &plan.summary;
        assert_eq!(
            (s.account_id.as_str(), s.from_product_line.as_str(), s.to_product_line.as_str()),
            ("acme", "virtual-office", "work")
        );
        assert_eq!((s.dry_run, s.users, s.changed, s.tiers_lowered, s.licences_removed), (true, 5, 2, 1, 0));
        assert_eq!((s.revision, s.replayed), (start, false));
        // Nothing changed.
        assert_eq!(app.revision().await, start);
        assert_eq!(app.get_account("acme").await.unwrap().product_line, "virtual-office");
        assert_eq!(users_of(&app, "acme").await, before);

        let mut watch = app
            .access
            .clone()
            .watch_entitlements(pb::WatchEntitlementsRequest {
                account_id: "acme".into(),
                after_revision: start,
            })
            .await
            .unwrap()
            .into_inner();
        let moved = migrate(
            &app,
            pb::MigrateAccountRequest {
                expected_revision: Some(plan.summary.revision),
                ..to_work("acme")
            },
        )
        .await
        .unwrap();
        assert_eq!(moved.users, plan.users, "the move applies the plan shown");
        assert_eq!(moved.summary.revision, start + 1, "one write, one revision");
        assert!(!moved.summary.dry_run);
        assert_eq!(app.get_account("acme").await.unwrap().product_line, "work");

        let after = users_of(&app, "acme").await;
        let got: Vec<_> = after.iter().map(|(u, e, t, r)| (u.as_str(), e.as_str(), *t, *r)).collect();
        let old = |i: usize| before[i].3;
        assert_eq!(
            got,
            [
                ("a", "X2", ESS, old(0)),
                ("b", "X4", ESS, start + 1),
                ("c", "X3", ESS, start + 1),
                ("d", "X8", SUP, old(3)),
                ("e", "", NONE, old(4)),
            ]
        );
        // The check answers by the new line: c is an essentials user now,
        // d still a supervisor (X8 allows it in X Series too).
        let c = app.check("acme", "c").await;
        assert_eq!((c.allowed, c.tier, c.edition.as_str()), (true, ESS, "X3"));
        assert_eq!(app.check("acme", "d").await.tier, SUP);

        // One audit record per user changed, at the move's revision.
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
        // The account's own record: its line before and after.
        let lines: Vec<_> = changes
            .iter()
            .filter_map(|c| {
                let (b, a) = (c.account_before.as_ref()?, c.account_after.as_ref()?);
                Some((c.revision, b.product_line.as_str(), a.product_line.as_str()))
            })
            .collect();
        assert_eq!(lines, [(start + 1, "virtual-office", "work")]);
        let users: Vec<&pb::Change> = changes.iter().filter(|c| !c.user_id.is_empty()).collect();
        let trail: Vec<_> = users
            .iter()
            .map(|c| {
                let (b, a) = (c.before.clone().unwrap(), c.after.clone().unwrap());
                (c.rpc.as_str(), c.revision, c.user_id.as_str(), b.edition, b.analytics_tier, a.edition, a.analytics_tier)
            })
            .collect();
        assert_eq!(
            trail,
            [
                ("ProvisioningService.MigrateAccount", start + 1, "b", "X5".into(), ESS, "X4".into(), ESS),
                ("ProvisioningService.MigrateAccount", start + 1, "c", "X6".into(), SUP, "X3".into(), ESS),
            ]
        );
        assert_eq!(
            users[0].details,
            ["moved account `acme` from product line `virtual-office` to `work`"]
        );
        // And a Watch event for each.
        let mut events = Vec::new();
        while events.len() < 2 {
            let message = tokio::time::timeout(Duration::from_secs(5), watch.message())
                .await
                .expect("no event within 5 s")
                .unwrap()
                .unwrap();
            if let Some(Event::Change(c)) = message.event {
                events.push((c.revision, c.user_id, c.after_edition, c.after_tier));
            }
        }
        assert_eq!(
            events,
            [
                (start + 1, "b".to_owned(), "X4".to_owned(), ESS),
                (start + 1, "c".to_owned(), "X3".to_owned(), ESS),
            ]
        );
    }
}

on_both_backends! {
    /// A licence with no mapping blocks the move, naming the users (the
    /// first five and the count); asked to, the move removes those
    /// licences, with a notice, and sets their tier to none.
    async fn unmapped_licences_block_the_move_unless_removed(backend) {
        let app = spawn(backend).await;
        acme(&app).await;
        for i in 0..7 {
            given(&app, "acme", &format!("x{i}"), "X9", T::Supervisor).await;
        }
        app.put_user("acme", "y").await;
        app.set("acme", "y", Some("X9"), None).await.unwrap();
        let start = app.revision().await;
        for dry_run in [true, false] {
            let request = pb::MigrateAccountRequest { dry_run, ..to_work("acme") };
            assert_status(
                migrate(&app, request).await.map(|m| m.summary),
                Code::FailedPrecondition,
                &[
                    "users of account `acme` hold an edition with no mapping to product line `work` (8 in all)",
                    "`x0` (edition `X9`), `x1` (edition `X9`)",
                    "`x4` (edition `X9`) and 3 more",
                    "remove_unmapped_licences",
                ],
            );
        }
        assert_eq!(app.revision().await, start);
        assert_eq!(app.get_account("acme").await.unwrap().product_line, "virtual-office");

        let moved = migrate(
            &app,
            pb::MigrateAccountRequest {
                remove_unmapped_licences: true,
                ..to_work("acme")
            },
        )
        .await
        .unwrap();
        let x0 = moved.users.iter().find(|u| u.user_id == "x0").unwrap();
        assert_eq!(row(x0), ("x0", "X9", "", SUP, NONE, vec![REMOVED], true));
        assert_eq!(
            x0.notices[0].message,
            "edition `X9` has no mapping to product line `work`, so the licence was removed and analytics lowered from supervisor to none"
        );
        let y = moved.users.iter().find(|u| u.user_id == "y").unwrap();
        assert_eq!(row(y), ("y", "X9", "", NONE, NONE, vec![REMOVED], true));
        let s = &moved.summary;
        assert_eq!((s.users, s.changed, s.tiers_lowered, s.licences_removed), (13, 10, 1, 8));
        let x0 = app.get_user("acme", "x0").await.unwrap();
        assert_eq!((x0.edition.as_str(), x0.analytics_tier), ("", NONE));
        let check = app.check("acme", "x0").await;
        assert!(!check.allowed);
    }
}

on_both_backends! {
    /// expected_revision: a user changed after the dry run's revision
    /// refuses the move (ABORTED, naming it) and nothing changes; a fresh
    /// dry run's revision then applies. A revision never reached is a bad
    /// argument.
    async fn a_change_after_the_dry_run_aborts_the_move(backend) {
        let app = spawn(backend).await;
        acme(&app).await;
        let planned = migrate(&app, dry("acme")).await.unwrap().summary.revision;
        // Another account's change is no conflict.
        app.create_account("globex", "virtual-office").await;
        given(&app, "globex", "g", "X6", T::Supervisor).await;
        assert_eq!(
            migrate(&app, pb::MigrateAccountRequest { expected_revision: Some(planned), ..dry("acme") })
                .await
                .unwrap()
                .summary
                .revision,
            app.revision().await
        );
        app.set("acme", "d", None, Some(T::Essentials)).await.unwrap();
        let changed_at = app.revision().await;
        app.put_user("acme", "new").await;
        let before = app.revision().await;
        for dry_run in [false, true] {
            assert_status(
                migrate(
                    &app,
                    pb::MigrateAccountRequest { expected_revision: Some(planned), dry_run, ..to_work("acme") },
                )
                .await
                .map(|m| m.summary),
                Code::Aborted,
                &[
                    &format!("users of account `acme` changed after expected_revision {planned} (2 in all)"),
                    &format!("`d` (revision {changed_at})"),
                    "`new`",
                    "dry_run",
                ],
            );
        }
        assert_status(
            migrate(&app, pb::MigrateAccountRequest { expected_revision: Some(before + 100), ..to_work("acme") })
                .await
                .map(|m| m.summary),
            Code::InvalidArgument,
            &[&format!("expected_revision {} is above the store's revision {before}", before + 100)],
        );
        assert_eq!(app.revision().await, before);
        assert_eq!(app.get_account("acme").await.unwrap().product_line, "virtual-office");

        let again = migrate(&app, dry("acme")).await.unwrap();
        assert_eq!(again.summary.revision, before);
        let moved = migrate(
            &app,
            pb::MigrateAccountRequest { expected_revision: Some(again.summary.revision), ..to_work("acme") },
        )
        .await
        .unwrap();
        assert_eq!(moved.summary.revision, before + 1);
    }
}

on_both_backends! {
    /// Operators and provisioners only; every refusal is in the audit
    /// trail. Moves that do not fit are refused with what would be right.
    async fn who_may_move_and_what_is_refused(backend) {
        let app = spawn(backend).await;
        acme(&app).await;
        app.create_account("globex", "work").await;
        let admin = app.clients(Some(&app.token("acme admin", Role::AccountAdmin, "acme", "boss").await));
        let gateway = app.clients(Some(&app.token("gw", Role::Gateway, "", "").await));
        let provisioner = app.clients(Some(&app.token("billing", Role::Provisioner, "", "").await));
        let start = app.revision().await;
        assert_status(
            migrate_as(&admin, dry("acme")).await.map(|m| m.summary),
            Code::PermissionDenied,
            &["role `account-admin` may not call ProvisioningService.MigrateAccount; moving an account is for a provisioner or operator"],
        );
        assert_status(
            migrate_as(&gateway, to_work("acme")).await.map(|m| m.summary),
            Code::PermissionDenied,
            &["role `gateway` may not call ProvisioningService.MigrateAccount"],
        );
        assert_status(
            migrate(&app, to_work("globex")).await.map(|m| m.summary),
            Code::FailedPrecondition,
            &["account `globex` is already on product line `work`; there is nothing to move"],
        );
        assert_status(
            migrate(&app, pb::MigrateAccountRequest { to_product_line: "virtual-office".into(), ..to_work("globex") })
                .await
                .map(|m| m.summary),
            Code::FailedPrecondition,
            &["the catalogue has no migration from product line `work` to `virtual-office`; account `globex` can move to no other line"],
        );
        assert_status(
            migrate(&app, pb::MigrateAccountRequest { to_product_line: "gold".into(), ..to_work("acme") })
                .await
                .map(|m| m.summary),
            Code::InvalidArgument,
            &["to_product_line `gold` is unknown; use one of virtual-office, work"],
        );
        assert_status(
            migrate(&app, to_work("nobody")).await.map(|m| m.summary),
            Code::NotFound,
            &["account `nobody` does not exist"],
        );
        assert_status(
            migrate(&app, to_work("bad id!")).await.map(|m| m.summary),
            Code::InvalidArgument,
            &["account_id"],
        );
        assert_eq!(app.revision().await, start);
        // An applied write also commits the refusals queued before it.
        let moved = migrate_as(&provisioner, to_work("acme")).await.unwrap();
        assert_eq!(moved.summary.revision, start + 1);
        let refused: Vec<(String, String)> = app
            .audit
            .clone()
            .list_changes(pb::ListChangesRequest { after_revision: start - 1, page_size: 1000, ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .changes
            .into_iter()
            .filter(|c| c.refused && c.rpc == "ProvisioningService.MigrateAccount")
            .map(|c| (c.account_id, c.refusal_code))
            .collect();
        assert_eq!(refused.len(), 7, "{refused:?}");
        assert_eq!(refused[0], ("acme".to_owned(), "PERMISSION_DENIED".to_owned()));
    }
}

on_both_backends! {
    /// A retry with the request id gets the first call's summary back,
    /// marked replayed and without the rows, and changes nothing; the same
    /// id with another request is refused.
    async fn a_retry_replays_the_summary(backend) {
        let app = spawn(backend).await;
        acme(&app).await;
        let request = pb::MigrateAccountRequest { request_id: "move-acme-1".into(), ..to_work("acme") };
        let first = migrate(&app, request.clone()).await.unwrap();
        assert_eq!(first.users.len(), 5);
        app.put_user("acme", "later").await;
        let revision = app.revision().await;
        let retry = migrate(&app, request.clone()).await.unwrap();
        assert!(retry.summary.replayed);
        assert_eq!((retry.users.len(), retry.messages), (0, 1));
        assert_eq!(
            pb::MigrationSummary { replayed: false, ..retry.summary },
            first.summary
        );
        assert_eq!(app.revision().await, revision);
        assert_status(
            migrate(&app, pb::MigrateAccountRequest { remove_unmapped_licences: true, ..request })
                .await
                .map(|m| m.summary),
            Code::FailedPrecondition,
            &["move-acme-1"],
        );
    }
}

on_both_backends! {
    /// Writes racing the move: each lands before it (and is moved) or after
    /// it (on the new line). No user is lost, and none is left on an
    /// edition X Series lacks.
    async fn writes_racing_the_move_are_moved_or_land_after_it(backend) {
        let app = spawn(backend).await;
        app.create_account("acme", "virtual-office").await;
        let rows: Vec<pb::UserRow> = (0..2000)
            .map(|i| pb::UserRow {
                account_id: "acme".into(),
                user_id: format!("u{i:04}"),
                edition: "X6".into(),
                analytics_tier: T::Supervisor as i32,
                ..Default::default()
            })
            .collect();
        app.import_rows(&rows).await;
        let racer = |i: usize| {
            let app_clients = app.clients(Some(&app.operator_secret));
            async move {
                let mut p = app_clients.provisioning.clone();
                let user = format!("racer{i:02}");
                p.put_user(pb::PutUserRequest {
                    account_id: "acme".into(),
                    user_id: user.clone(),
                    display_name: user.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
                // X9 exists only on Virtual Office: before the move it is
                // given (and the move removes it), after it is refused.
                let given = p
                    .update_user_services(pb::UpdateUserServicesRequest {
                        account_id: "acme".into(),
                        user_id: user,
                        edition: Some("X9".into()),
                        ..Default::default()
                    })
                    .await;
                if let Err(status) = &given {
                    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
                }
                given.is_ok()
            }
        };
        let racers: Vec<_> = (0..20).map(|i| tokio::spawn(racer(i))).collect();
        let moved = migrate(
            &app,
            pb::MigrateAccountRequest { remove_unmapped_licences: true, ..to_work("acme") },
        )
        .await
        .unwrap();
        let mut given_x9 = 0;
        for r in racers {
            given_x9 += usize::from(r.await.unwrap());
        }
        assert_eq!(app.get_account("acme").await.unwrap().product_line, "work");
        let users = export(&app, "acme").await;
        assert_eq!(users.len(), 2020, "no user is lost");
        let editions: std::collections::BTreeSet<&str> = users.iter().map(|u| u.edition.as_str()).collect();
        assert!(editions.iter().all(|e| ["", "X3"].contains(e)), "{editions:?}");
        // Every X9 given before the move was removed by it.
        let removed = moved.users.iter().filter(|u| u.edition_before == "X9").count();
        assert_eq!(removed, given_x9);
        assert_eq!(moved.summary.licences_removed as usize, given_x9);
    }
}

/// 100,000 users (ImportUsers, 5,000 a call), all X5 essentials, moved
/// to X4 in one write: one revision for all, each user's row in the
/// stream, no message above a default client's 4 MiB. Sled only in the
/// suite (debug builds); `entitled-bench migrate` times both backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_of_100_000_users_moves_in_one_write() {
    let count: usize = common::count_from_env("ENTITLED_MIGRATE_USERS", 100_000, 1000) as usize;
    let app = spawn(Backend::Sled).await;
    app.create_account("big", "virtual-office").await;
    let rows: Vec<pb::UserRow> = (0..count)
        .map(|i| pb::UserRow {
            account_id: "big".into(),
            user_id: format!("u{i:06}"),
            edition: "X5".into(),
            analytics_tier: T::Essentials as i32,
            ..Default::default()
        })
        .collect();
    app.import_rows(&rows).await;
    let start = app.revision().await;
    let took = Instant::now();
    let moved = migrate(&app, to_work("big")).await.unwrap();
    eprintln!("moved {count} users in {:?}", took.elapsed());
    assert_eq!(moved.users.len(), count);
    assert!(moved.messages >= count / 1000);
    let s = &moved.summary;
    assert_eq!(
        (s.users, s.changed, s.revision),
        (count as u64, count as u64, start + 1)
    );
    let last = format!("u{:06}", count - 1);
    for user in ["u000000", last.as_str()] {
        let u = app.get_user("big", user).await.unwrap();
        assert_eq!(
            (u.edition.as_str(), u.analytics_tier, u.revision),
            ("X4", ESS, start + 1)
        );
    }
    // Every user's audit record is at the move's revision.
    let last_change = app
        .audit
        .clone()
        .list_changes(pb::ListChangesRequest {
            account_id: "big".into(),
            after_revision: start,
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .changes;
    assert_eq!(last_change[0].revision, start + 1);
}

/// GetCatalogue shows each move and what every edition becomes (empty:
/// no mapping).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalogue_shows_the_moves() {
    let app = spawn(Backend::Sled).await;
    let catalogue = app
        .catalogue
        .clone()
        .get_catalogue(pb::GetCatalogueRequest {})
        .await
        .unwrap()
        .into_inner();
    type Move<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);
    let moves: Vec<Move> = catalogue
        .migrations
        .iter()
        .map(|m| {
            (
                m.from_product_line.as_str(),
                m.to_product_line.as_str(),
                m.editions
                    .iter()
                    .map(|e| (e.from_edition.as_str(), e.to_edition.as_str()))
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        moves,
        [(
            "virtual-office",
            "work",
            vec![
                ("X2", "X2"),
                ("X5", "X4"),
                ("X6", "X3"),
                ("X8", "X8"),
                ("X8e", "X8e"),
                ("X9", "")
            ]
        )]
    );
}
