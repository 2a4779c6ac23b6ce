//! Supervisor scopes (domain.md rule 12): set by UpdateUserServices and
//! import, returned by every read (GetUser, ListUsers, the check and the
//! batch, Watch, export, the audit trail), checked item by item, and gone
//! with Supervisor. Each test runs on sled and on PostgreSQL.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use std::time::Duration;

use common::{Options, T, TestApp, assert_status, catalogue_with};
use entitled::proto::v1 as pb;
use pb::watch_entitlements_response::Event;
use tonic::Code;

const SITE: pb::ScopeKind = pb::ScopeKind::Site;
const USER_GROUP: pb::ScopeKind = pb::ScopeKind::UserGroup;
const RING_GROUP: pb::ScopeKind = pb::ScopeKind::RingGroup;
const CALL_QUEUE: pb::ScopeKind = pb::ScopeKind::CallQueue;

fn refs(items: &[(pb::ScopeKind, &str)]) -> pb::SupervisorScope {
    pb::SupervisorScope {
        whole_account: false,
        refs: items
            .iter()
            .map(|(kind, id)| pb::ScopeRef {
                kind: *kind as i32,
                id: (*id).into(),
            })
            .collect(),
    }
}

fn whole_account() -> pb::SupervisorScope {
    pb::SupervisorScope {
        whole_account: true,
        refs: Vec::new(),
    }
}

/// UpdateUserServices with a scope.
async fn scope(
    app: &TestApp,
    user: &str,
    edition: Option<&str>,
    tier: Option<T>,
    scope: pb::SupervisorScope,
) -> Result<pb::UpdateUserServicesResponse, tonic::Status> {
    app.update(pb::UpdateUserServicesRequest {
        account_id: "acme".into(),
        user_id: user.into(),
        edition: edition.map(Into::into),
        analytics_tier: tier.map(|t| t as i32),
        supervisor_scope: Some(scope),
        ..Default::default()
    })
    .await
}

async fn list_users(app: &TestApp) -> Vec<pb::User> {
    app.provisioning
        .clone()
        .list_users(pb::ListUsersRequest {
            account_id: "acme".into(),
            page_size: 100,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .users
}

async fn batch(app: &TestApp, users: &[&str]) -> Vec<pb::CheckAnalyticsAccessResponse> {
    app.access
        .clone()
        .batch_check_analytics_access(pb::BatchCheckAnalyticsAccessRequest {
            items: users
                .iter()
                .map(|u| pb::CheckItem {
                    account_id: "acme".into(),
                    user_id: (*u).into(),
                })
                .collect(),
            min_revision: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .results
        .into_iter()
        .map(|r| match r.outcome {
            Some(pb::check_result::Outcome::Answer(a)) => a,
            other => panic!("{other:?}"),
        })
        .collect()
}

async fn export(app: &TestApp) -> Vec<pb::UserRow> {
    let mut stream = app
        .provisioning
        .clone()
        .export_users(pb::ExportUsersRequest {
            account_id: "acme".into(),
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

async fn changes(app: &TestApp) -> Vec<pb::Change> {
    app.audit
        .clone()
        .list_changes(pb::ListChangesRequest {
            account_id: "acme".into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .changes
}

/// Every user change Watch has after `after`, up to the view's revision.
async fn watched(app: &TestApp, after: u64) -> Vec<pb::EntitlementChange> {
    let until = app.revision().await;
    let mut stream = app
        .access
        .clone()
        .watch_entitlements(pb::WatchEntitlementsRequest {
            account_id: "acme".into(),
            after_revision: after,
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .unwrap()
            .event
            .unwrap();
        match event {
            Event::Change(c) => {
                let done = c.revision >= until;
                out.push(c);
                if done {
                    return out;
                }
            }
            Event::Heartbeat(h) if h.revision >= until => return out,
            Event::Heartbeat(_) | Event::Account(_) => {}
        }
    }
}

async fn setup(app: &TestApp) {
    app.create_account("acme", "work").await;
    for user in ["ada", "bob", "cy"] {
        app.put_user("acme", user).await;
    }
}

on_both_backends! {
    /// A new supervisor given no scope sees the whole account; below
    /// Supervisor there is no scope anywhere.
    async fn a_new_supervisor_with_no_scope_sees_the_whole_account(backend) {
        let app = TestApp::spawn_on(backend).await;
        setup(&app).await;
        let reply = app.set("acme", "ada", Some("X8"), Some(T::Supervisor)).await.unwrap();
        assert_eq!(reply.user.unwrap().supervisor_scope, Some(whole_account()));
        app.set("acme", "bob", Some("X8"), Some(T::Essentials)).await.unwrap();

        assert_eq!(
            app.get_user("acme", "ada").await.unwrap().supervisor_scope,
            Some(whole_account())
        );
        assert_eq!(app.get_user("acme", "bob").await.unwrap().supervisor_scope, None);
        let check = app.check("acme", "ada").await;
        assert_eq!(check.tier, T::Supervisor as i32);
        assert_eq!(check.supervisor_scope, Some(whole_account()));
        assert_eq!(app.check("acme", "bob").await.supervisor_scope, None);
        assert_eq!(app.check("acme", "cy").await.supervisor_scope, None);

        // Supervisor kept through an edition change that still allows it:
        // the scope stays as it was.
        let reply = app.set("acme", "ada", Some("X4"), None).await.unwrap();
        assert_eq!(reply.user.unwrap().supervisor_scope, Some(whole_account()));
    }
}

on_both_backends! {
    /// A scope is only for Supervisor: one given for any other tier (as
    /// asked, or as the change leaves it) is refused, and nothing changes.
    async fn a_scope_is_only_for_supervisor(backend) {
        let app = TestApp::spawn_on(backend).await;
        setup(&app).await;
        app.set("acme", "ada", Some("X8"), Some(T::Essentials)).await.unwrap();
        app.set("acme", "bob", Some("X8"), Some(T::Supervisor)).await.unwrap();
        let before = app.revision().await;
        let groups = refs(&[(SITE, "S1")]);

        for (user, edition, tier, now) in [
            // The tier stays Essentials.
            ("ada", None, None, "essentials"),
            // Essentials asked for with it.
            ("bob", None, Some(T::Essentials), "essentials"),
            ("bob", None, Some(T::None), "none"),
            // An edition that lowers Supervisor.
            ("bob", Some("X2"), None, "essentials"),
            // No licence, so no analytics.
            ("bob", Some(""), None, "none"),
            ("cy", None, None, "none"),
        ] {
            assert_status(
                scope(&app, user, edition, tier, groups.clone()).await,
                Code::FailedPrecondition,
                &[
                    "supervisor_scope is only for supervisor analytics",
                    &format!("user `{user}` would have {now}"),
                ],
            );
            // The whole account is a scope too.
            assert_status(
                scope(&app, user, edition, tier, whole_account()).await,
                Code::FailedPrecondition,
                &["supervisor_scope is only for supervisor analytics"],
            );
        }
        assert_eq!(app.revision().await, before, "refused writes change nothing");
        assert_eq!(
            app.get_user("acme", "bob").await.unwrap().supervisor_scope,
            Some(whole_account())
        );
    }
}

on_both_backends! {
    /// A scoped supervisor's groups come back from every read, in the order
    /// given, and stay while the user stays a supervisor.
    async fn a_scoped_supervisor_is_answered_everywhere(backend) {
        let app = TestApp::spawn_on(backend).await;
        setup(&app).await;
        app.set("acme", "ada", Some("X8"), Some(T::Supervisor)).await.unwrap();
        app.set("acme", "bob", Some("X8"), Some(T::Supervisor)).await.unwrap();
        let start = app.revision().await;
        let groups = refs(&[
            (SITE, "S1"),
            (USER_GROUP, "sales@emea"),
            (RING_GROUP, "rg:7"),
            (CALL_QUEUE, "Q-42"),
            // The same id under another kind is another group.
            (USER_GROUP, "S1"),
        ]);
        let reply = scope(&app, "ada", None, None, groups.clone()).await.unwrap();
        assert!(reply.notices.is_empty());
        assert_eq!(reply.user.unwrap().supervisor_scope, Some(groups.clone()));
        let scoped_at = reply.revision;
        assert_eq!(scoped_at, start + 1);

        // GetUser, ListUsers.
        assert_eq!(
            app.get_user("acme", "ada").await.unwrap().supervisor_scope,
            Some(groups.clone())
        );
        let listed: Vec<_> = list_users(&app)
            .await
            .into_iter()
            .map(|u| (u.user_id, u.supervisor_scope))
            .collect();
        assert_eq!(
            listed,
            [
                ("ada".to_owned(), Some(groups.clone())),
                ("bob".to_owned(), Some(whole_account())),
                ("cy".to_owned(), None),
            ]
        );
        // The check and the batch (whose answers are written by the fast
        // path), with and without reports.
        let check = app.check("acme", "ada").await;
        assert_eq!((check.allowed, check.tier), (true, T::Supervisor as i32));
        assert_eq!(check.supervisor_scope, Some(groups.clone()));
        let answers = batch(&app, &["ada", "bob", "cy", "nobody"]).await;
        let scopes: Vec<_> = answers.iter().map(|a| a.supervisor_scope.clone()).collect();
        assert_eq!(scopes, [Some(groups.clone()), Some(whole_account()), None, None]);
        assert_eq!(answers[0], check);

        // Export.
        let rows: Vec<_> = export(&app)
            .await
            .into_iter()
            .map(|r| (r.user_id, r.supervisor_scope))
            .collect();
        assert_eq!(rows, listed);

        // The audit trail's before and after, and Watch's.
        let trail = changes(&app).await;
        let change = trail.iter().find(|c| c.revision == scoped_at).unwrap();
        assert_eq!(
            change.before.as_ref().unwrap().supervisor_scope,
            Some(whole_account())
        );
        assert_eq!(
            change.after.as_ref().unwrap().supervisor_scope,
            Some(groups.clone())
        );
        let events = watched(&app, start).await;
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].before_supervisor_scope, Some(whole_account()));
        assert_eq!(events[0].after_supervisor_scope, Some(groups.clone()));

        // The same scope again changes nothing; the edition changed within
        // what allows Supervisor keeps it; the whole account replaces it.
        let again = scope(&app, "ada", None, None, groups.clone()).await.unwrap();
        assert_eq!(again.revision, scoped_at);
        let reply = app.set("acme", "ada", Some("X6"), None).await.unwrap();
        assert_eq!(reply.user.unwrap().supervisor_scope, Some(groups.clone()));
        let reply = app.set("acme", "ada", None, Some(T::Supervisor)).await.unwrap();
        assert_eq!(reply.user.unwrap().supervisor_scope, Some(groups.clone()));

        // After a restart, from what the store holds.
        let app = app.restart().await;
        assert_eq!(app.check("acme", "ada").await.supervisor_scope, Some(groups.clone()));
        assert_eq!(
            app.get_user("acme", "ada").await.unwrap().supervisor_scope,
            Some(groups.clone())
        );

        let reply = scope(&app, "ada", None, None, whole_account()).await.unwrap();
        assert_eq!(reply.user.unwrap().supervisor_scope, Some(whole_account()));
        assert_eq!(app.check("acme", "ada").await.supervisor_scope, Some(whole_account()));
    }
}

on_both_backends! {
    /// Rule 6 and 7 with rule 12: lowering Supervisor by edition, by tier or
    /// by removing the licence drops the scope, with a notice when it was a
    /// list of groups.
    async fn lowering_supervisor_drops_the_scope_with_a_notice(backend) {
        let app = TestApp::spawn_on(backend).await;
        setup(&app).await;
        let groups = refs(&[(SITE, "S1"), (CALL_QUEUE, "Q1"), (SITE, "S2"), (SITE, "S3")]);

        // By edition (rule 6).
        scope(&app, "ada", Some("X8"), Some(T::Supervisor), groups.clone()).await.unwrap();
        let reply = app.set("acme", "ada", Some("X2"), None).await.unwrap();
        let user = reply.user.unwrap();
        assert_eq!((user.analytics_tier, user.supervisor_scope), (T::Essentials as i32, None));
        let kinds: Vec<i32> = reply.notices.iter().map(|n| n.kind).collect();
        assert_eq!(
            kinds,
            [pb::NoticeKind::TierLowered as i32, pb::NoticeKind::ScopeDropped as i32]
        );
        assert_eq!(
            reply.notices[1].message,
            "analytics was lowered from supervisor to essentials, so the supervisor scope (site:S1, call-queue:Q1, site:S2, and 1 more) was dropped"
        );
        let check = app.check("acme", "ada").await;
        assert_eq!((check.tier, check.supervisor_scope), (T::Essentials as i32, None));
        // Supervisor again, given no scope: the whole account, not the old
        // groups.
        let reply = app.set("acme", "ada", Some("X8"), Some(T::Supervisor)).await.unwrap();
        assert_eq!(reply.user.unwrap().supervisor_scope, Some(whole_account()));

        // By removing the licence (rule 7).
        scope(&app, "bob", Some("X8"), Some(T::Supervisor), groups.clone()).await.unwrap();
        let reply = app.set("acme", "bob", Some(""), None).await.unwrap();
        let user = reply.user.unwrap();
        assert_eq!((user.analytics_tier, user.supervisor_scope), (T::None as i32, None));
        let kinds: Vec<i32> = reply.notices.iter().map(|n| n.kind).collect();
        assert_eq!(
            kinds,
            [pb::NoticeKind::TierRemoved as i32, pb::NoticeKind::ScopeDropped as i32]
        );

        // By tier, as asked.
        scope(&app, "cy", Some("X8"), Some(T::Supervisor), refs(&[(SITE, "S9")])).await.unwrap();
        let reply = app.set("acme", "cy", None, Some(T::Essentials)).await.unwrap();
        assert_eq!(reply.user.unwrap().supervisor_scope, None);
        assert_eq!(reply.notices.len(), 1);
        assert_eq!(reply.notices[0].kind, pb::NoticeKind::ScopeDropped as i32);

        // A whole-account supervisor lowered has no groups to drop.
        let reply = app.set("acme", "ada", Some("X2"), None).await.unwrap();
        let kinds: Vec<i32> = reply.notices.iter().map(|n| n.kind).collect();
        assert_eq!(kinds, [pb::NoticeKind::TierLowered as i32]);

        // The audit trail shows the scope go.
        let trail = changes(&app).await;
        let dropped = trail
            .iter()
            .find(|c| {
                c.user_id == "bob"
                    && c.before.as_ref().is_some_and(|b| b.edition == "X8")
                    && c.after.as_ref().is_some_and(|a| a.edition.is_empty())
            })
            .unwrap();
        assert_eq!(dropped.before.as_ref().unwrap().supervisor_scope, Some(groups));
        assert_eq!(dropped.after.as_ref().unwrap().supervisor_scope, None);
        assert!(dropped.details.iter().any(|d| d.contains("supervisor scope")));
    }
}

on_both_backends! {
    /// A malformed scope is INVALID_ARGUMENT naming the item (its index and
    /// value), and nothing changes.
    async fn a_malformed_scope_names_the_item(backend) {
        let app = TestApp::spawn_on(backend).await;
        setup(&app).await;
        app.set("acme", "ada", Some("X8"), Some(T::Supervisor)).await.unwrap();
        let before = app.revision().await;
        let raw = |items: &[(i32, &str)]| pb::SupervisorScope {
            whole_account: false,
            refs: items
                .iter()
                .map(|(kind, id)| pb::ScopeRef {
                    kind: *kind,
                    id: (*id).into(),
                })
                .collect(),
        };
        let site = SITE as i32;
        let many: Vec<String> = (0..1001).map(|i| format!("S{i}")).collect();
        let most: Vec<(i32, &str)> = many.iter().map(|id| (site, id.as_str())).collect();
        let cases: Vec<(pb::SupervisorScope, &[&str])> = vec![
            (
                raw(&[]),
                &["supervisor_scope.refs `` is an empty list; give 1 to 1000 references, or the whole account"],
            ),
            (
                raw(&[(site, "S1"), (USER_GROUP as i32, "G1"), (site, "S1")]),
                &["supervisor_scope.refs[2] `site:S1` repeats supervisor_scope.refs[0]; name each group once"],
            ),
            (
                raw(&[(site, "S1"), (0, "G1")]),
                &["supervisor_scope.refs[1].kind `SCOPE_KIND_UNSPECIFIED` is not a scope kind"],
            ),
            (
                raw(&[(site, "S1"), (site, "S2"), (99, "G1")]),
                &["supervisor_scope.refs[2].kind `99` is not a scope kind"],
            ),
            (
                raw(&[(site, "S1"), (site, "sales team")]),
                &["supervisor_scope.refs[1].id `sales team` contains ` `; use only letters A-Z a-z, digits 0-9 and the characters . _ - @ : +"],
            ),
            (
                raw(&[(site, "")]),
                &["supervisor_scope.refs[0].id `` is empty"],
            ),
            (
                raw(&[(site, &"x".repeat(129))]),
                &["supervisor_scope.refs[0].id `", "is 129 characters long; the most is 128"],
            ),
            (
                raw(&most),
                &["supervisor_scope.refs[1000] `1001 references` is past the end: a scope holds at most 1000 references"],
            ),
            (
                pb::SupervisorScope {
                    whole_account: true,
                    refs: refs(&[(SITE, "S1")]).refs,
                },
                &["supervisor_scope.whole_account `true` is set with 1 refs; send whole_account or refs, not both"],
            ),
        ];
        for (bad, pieces) in cases {
            assert_status(scope(&app, "ada", None, None, bad).await, Code::InvalidArgument, pieces);
        }
        // The most a scope holds is accepted.
        let reply = scope(&app, "ada", None, None, raw(&most[..1000])).await.unwrap();
        assert_eq!(reply.user.unwrap().supervisor_scope.unwrap().refs.len(), 1000);
        assert_eq!(app.revision().await, before + 1);
    }
}

on_both_backends! {
    /// Import sets the scope row by row under the same rules; export and
    /// import round-trip it.
    async fn import_sets_scopes_and_export_round_trips_them(backend) {
        let app = TestApp::spawn_on(backend).await;
        setup(&app).await;
        let row = |user: &str, tier: T, scope: Option<pb::SupervisorScope>| pb::UserRow {
            account_id: "acme".into(),
            user_id: user.into(),
            display_name: user.to_uppercase(),
            edition: "X8".into(),
            analytics_tier: tier as i32,
            supervisor_scope: scope,
        };
        let import = |rows: Vec<pb::UserRow>, dry_run: bool| {
            let mut client = app.provisioning.clone();
            async move {
                client
                    .import_users(pb::ImportUsersRequest {
                        rows,
                        dry_run,
                        request_id: String::new(),
                    })
                    .await
                    .map(|r| r.into_inner())
            }
        };
        let groups = refs(&[(RING_GROUP, "R1"), (SITE, "S1")]);

        // Bad rows, each named; nothing applied.
        let before = app.revision().await;
        let reply = import(
            vec![
                row("ada", T::Supervisor, Some(groups.clone())),
                row("bob", T::Essentials, Some(groups.clone())),
                row("cy", T::Supervisor, Some(refs(&[(SITE, "S1"), (SITE, "S1")]))),
            ],
            false,
        )
        .await
        .unwrap();
        let errors: Vec<_> = reply
            .errors
            .iter()
            .map(|e| (e.index, e.code.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(errors[0].0, 1);
        assert_eq!(errors[0].1, "FAILED_PRECONDITION");
        assert!(errors[0].2.contains("supervisor_scope is only for supervisor analytics"));
        assert_eq!(errors[1].0, 2);
        assert_eq!(errors[1].1, "INVALID_ARGUMENT");
        assert!(errors[1].2.contains("supervisor_scope.refs[1] `site:S1` repeats"), "{}", errors[1].2);
        assert_eq!(app.revision().await, before);

        // Good rows: a list, the whole account, none given (a new
        // supervisor: the whole account).
        let reply = import(
            vec![
                row("ada", T::Supervisor, Some(groups.clone())),
                row("bob", T::Supervisor, Some(whole_account())),
                row("cy", T::Supervisor, None),
            ],
            false,
        )
        .await
        .unwrap();
        assert!(reply.errors.is_empty(), "{:?}", reply.errors);
        let scopes: Vec<_> = list_users(&app).await.into_iter().map(|u| u.supervisor_scope).collect();
        assert_eq!(scopes, [Some(groups.clone()), Some(whole_account()), Some(whole_account())]);

        // A row with no scope keeps a supervisor's groups; an export
        // imported again changes nothing.
        let reply = import(vec![row("ada", T::Supervisor, None)], false).await.unwrap();
        assert_eq!(reply.unchanged, 1);
        let exported = export(&app).await;
        assert_eq!(exported[0].supervisor_scope, Some(groups.clone()));
        let revision = app.revision().await;
        let reply = import(exported, false).await.unwrap();
        assert_eq!((reply.unchanged, reply.revision), (3, revision));

        // Essentials by import drops the groups.
        let reply = import(vec![row("ada", T::Essentials, None)], false).await.unwrap();
        assert_eq!(reply.updated, 1);
        assert_eq!(app.get_user("acme", "ada").await.unwrap().supervisor_scope, None);
    }
}

on_both_backends! {
    /// A retry with the same request id gets the first answer, scope and
    /// all; one with another scope is another request.
    async fn a_retry_replays_the_scope(backend) {
        let app = TestApp::spawn_on(backend).await;
        setup(&app).await;
        let request = |scope: pb::SupervisorScope| pb::UpdateUserServicesRequest {
            account_id: "acme".into(),
            user_id: "ada".into(),
            edition: Some("X8".into()),
            analytics_tier: Some(T::Supervisor as i32),
            supervisor_scope: Some(scope),
            request_id: "scope-1".into(),
            ..Default::default()
        };
        let first = app.update(request(refs(&[(SITE, "S1")]))).await.unwrap();
        let again = app.update(request(refs(&[(SITE, "S1")]))).await.unwrap();
        assert_eq!(again, first);
        assert_status(
            app.update(request(refs(&[(SITE, "S2")]))).await,
            Code::FailedPrecondition,
            &["request_id `scope-1` was already used"],
        );
    }
}

on_both_backends! {
    /// Rule 13 with rule 12: a catalogue that no longer lets the edition
    /// have Supervisor lowers the check's tier, and the answer has no
    /// scope; the stored scope stays until the user's services are saved.
    async fn a_supervisor_the_catalogue_lowers_is_answered_without_a_scope(backend) {
        let app = TestApp::spawn_on(backend).await;
        setup(&app).await;
        let groups = refs(&[(SITE, "S1")]);
        scope(&app, "ada", Some("X6"), Some(T::Supervisor), groups.clone()).await.unwrap();
        let catalogue = catalogue_with(|t| {
            t.replace(
                r#"{ id = "X6", max_tier = "supervisor" },
  { id = "X7""#,
                r#"{ id = "X6", max_tier = "essentials" },
  { id = "X7""#,
            )
        });
        let app = app
            .restart_with(Options {
                catalogue,
                ..Options::default()
            })
            .await;
        let check = app.check("acme", "ada").await;
        assert_eq!(
            (check.tier, check.stored_tier, check.supervisor_scope),
            (T::Essentials as i32, T::Supervisor as i32, None)
        );
        assert_eq!(app.get_user("acme", "ada").await.unwrap().supervisor_scope, Some(groups));
    }
}
