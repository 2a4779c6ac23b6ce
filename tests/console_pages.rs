//! The console's pages as plain form posts (JavaScript off): saves and the
//! rules they meet, the permission matrix, the audit trail, operators'
//! accounts, the flag, and the Users page at 100,000 users.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;
mod console_support;

use std::{process::Command, time::Instant};

use common::{T, TestApp, process::BIN};
use console_support::{Http, World};
use entitled::proto::v1 as pb;

const ADA: &str = "/accounts/acme/users/ada/services";

/// Saves the services form as a browser without JavaScript sends it.
async fn save(http: &mut Http, path: &str, fields: &[(&str, &str)]) -> console_support::Page {
    let form = http.get(path).await;
    let (csrf, revision, shown) = (
        form.csrf(),
        form.input_value("revision"),
        form.input_value("shown_tier"),
    );
    let mut all = vec![
        ("csrf", csrf.as_str()),
        ("revision", revision.as_str()),
        ("shown_tier", shown.as_str()),
        ("tier_auto", ""),
    ];
    all.extend_from_slice(fields);
    http.post(path, &all).await
}

async fn admin(w: &World) -> Http {
    let mut http = Http::new(&w.base);
    assert_eq!(http.sign_in(&w.admin).await.status, 303);
    http
}

on_both_backends! {
async fn saves_apply_the_same_rules_as_grpc(backend) {
    let w = World::with(TestApp::spawn_on(backend).await).await;
    let mut http = admin(&w).await;
    let saved = save(&mut http, ADA, &[("edition", "X8"), ("tier", "supervisor")]).await;
    assert_eq!(saved.status, 200, "{}", saved.body);
    assert!(saved.body.contains("Saved: X8 with Supervisor Analytics."));
    assert_eq!(w.gateway_tier("acme", "ada").await, T::Supervisor as i32);
    // The analytics as the gateway sees them: the icon, the reports the
    // tier opens, and when historical data becomes available.
    for shown in [
        "Shown on the user's application panel",
        "Company Summary",
        "Call Quality",
        "for data to populate: historical reports are available from",
    ] {
        assert!(saved.body.contains(shown), "{shown}: {}", saved.body);
    }

    // The licence lowered, Supervisor still the choice shown: rule 6.
    let lowered = save(&mut http, ADA, &[("edition", "X2"), ("tier", "supervisor")]).await;
    assert!(
        lowered
            .body
            .contains("Supervisor Analytics was lowered to Analytics Essentials: X2 does not include Supervisor Analytics."),
        "{}",
        lowered.body
    );
    assert_eq!(
        w.services("acme", "ada").await,
        ("X2".to_owned(), T::Essentials as i32)
    );

    // Supervisor asked for on X2 (a crafted form: the page disables it):
    // refused beside the field, nothing changed.
    let refused = save(&mut http, ADA, &[("edition", "X2"), ("tier", "supervisor")]).await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(refused.body.contains(
        "X2 does not include Supervisor Analytics. Choose a lower level, or an edition that includes it: X4, X5, X6, X7, X8 or X8e. Nothing was changed."
    ));
    assert!(refused.body.contains("id=\"tier-error\""));
    // The error is tied to the radio group it concerns.
    assert!(
        refused
            .body
            .contains("aria-describedby=\"tier-hint tier-error\""),
        "{}",
        refused.body
    );
    assert!(
        refused.body.contains("href=\"#tier-supervisor\""),
        "the summary links to the field"
    );
    assert_eq!(
        w.services("acme", "ada").await,
        ("X2".to_owned(), T::Essentials as i32)
    );

    // The script moved Supervisor down as the edition changed: the same
    // rule and notice as without it.
    w.app
        .set("acme", "bob", Some("X8"), Some(T::Supervisor))
        .await
        .unwrap();
    let bob = "/accounts/acme/users/bob/services";
    let form = http.get(bob).await;
    let moved = http
        .post(
            bob,
            &[
                ("csrf", &form.csrf()),
                ("revision", &form.input_value("revision")),
                ("shown_tier", "supervisor"),
                ("tier_auto", "essentials"),
                ("edition", "X2"),
                ("tier", "essentials"),
            ],
        )
        .await;
    assert!(
        moved.body.contains("was lowered to Analytics Essentials"),
        "{}",
        moved.body
    );

    // Removing the licence sets the tier to none, with its notice.
    let removed = save(&mut http, ADA, &[("edition", ""), ("tier", "essentials")]).await;
    assert!(
        removed.body.contains("Analytics access was set to None"),
        "{}",
        removed.body
    );
    assert_eq!(
        w.services("acme", "ada").await,
        (String::new(), T::None as i32)
    );

    // A stale revision: a conflict, nothing overwritten.
    let form = http.get(ADA).await;
    w.app.set("acme", "ada", Some("X4"), None).await.unwrap();
    let conflict = http
        .post(
            ADA,
            &[
                ("csrf", &form.csrf()),
                ("revision", &form.input_value("revision")),
                ("shown_tier", "none"),
                ("edition", "X8"),
                ("tier", "supervisor"),
            ],
        )
        .await;
    assert_eq!(conflict.status, 409);
    assert!(
        conflict
            .body
            .contains("Someone else changed this user's services")
    );
    assert!(
        conflict.body.contains("<option value=\"X4\" selected>"),
        "fresh values"
    );
    assert_eq!(
        w.services("acme", "ada").await,
        ("X4".to_owned(), T::None as i32)
    );
}
}

#[tokio::test]
async fn an_admin_changes_only_their_account_and_never_their_own_services() {
    let w = World::new().await;
    let mut http = admin(&w).await;
    // Their own user: the form is shown locked, and a post is refused.
    let own = http.get("/accounts/acme/users/ann/services").await;
    assert!(own.body.contains("You cannot change your own services"));
    assert!(own.body.contains("<fieldset class=\"group\" disabled>"));
    let refused = save(
        &mut http,
        "/accounts/acme/users/ann/services",
        &[("edition", "X8"), ("tier", "supervisor")],
    )
    .await;
    assert!(refused.body.contains("You cannot change your own services"));
    assert_eq!(
        w.services("acme", "ann").await,
        (String::new(), T::None as i32)
    );

    // Another account, by typed URL, for every page and form.
    for path in [
        "/accounts",
        "/accounts/globex/users",
        "/accounts/globex/users/gus",
        "/accounts/globex/users/gus/services",
        "/accounts/globex/users/gus/remove",
        "/accounts/globex/audit",
    ] {
        let page = http.get(path).await;
        assert_eq!(page.status, 403, "{path}");
        assert!(!page.body.contains("Gus Globex"), "{path}");
    }
    let csrf = http.get("/accounts/acme/users").await.csrf();
    let posted = http
        .post(
            "/accounts/globex/users/gus/services",
            &[
                ("csrf", &csrf),
                ("revision", "1"),
                ("shown_tier", "none"),
                ("edition", "X8"),
                ("tier", "supervisor"),
            ],
        )
        .await;
    assert_eq!(posted.status, 403);
    let removed = http
        .post("/accounts/globex/users/gus/remove", &[("csrf", &csrf)])
        .await;
    assert_eq!(removed.status, 403);
    assert!(w.app.get_user("globex", "gus").await.is_ok());

    // The refusals are in the audit trail, marked as the console's, and
    // filed under the admin's own account, never globex's.
    let changes = |account: &str| {
        let mut audit = w.app.audit.clone();
        let account = account.to_owned();
        async move {
            audit
                .list_changes(pb::ListChangesRequest {
                    account_id: account,
                    page_size: 1000,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .changes
        }
    };
    let acme = changes("acme").await;
    let console_refusals: Vec<_> = acme
        .iter()
        .filter(|c| c.refused && c.caller.as_ref().unwrap().via == pb::Via::Console as i32)
        .collect();
    assert!(
        console_refusals.iter().any(|c| c.user_id == "ann"),
        "own services: {acme:#?}"
    );
    assert!(
        console_refusals
            .iter()
            .any(|c| c.refusal_reason.contains("on account `globex`")),
        "{acme:#?}"
    );
    assert!(changes("globex").await.iter().all(|c| !c.refused));
    // And the console's audit page shows them, in words.
    let audit = http.get("/accounts/acme/audit").await;
    assert_eq!(audit.status, 200);
    for shown in [
        "Refused</strong> (PERMISSION_DENIED)",
        "may not change its own services (user ann)",
        "may not act on account globex",
    ] {
        assert!(audit.body.contains(shown), "{shown}: {}", audit.body);
    }
}

#[tokio::test]
async fn console_writes_are_marked_as_such_in_the_audit_trail() {
    let w = World::new().await;
    let mut http = admin(&w).await;
    save(&mut http, ADA, &[("edition", "X8"), ("tier", "essentials")]).await;
    w.app.set("acme", "ada", Some("X6"), None).await.unwrap();
    let changes = w
        .app
        .audit
        .clone()
        .list_changes(pb::ListChangesRequest {
            account_id: "acme".into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .changes;
    let updates: Vec<_> = changes
        .iter()
        // The user's records (the first tier's also made the account's,
        // its analytics activation).
        .filter(|c| c.rpc.ends_with("UpdateUserServices") && c.account_after.is_none())
        .map(|c| {
            let caller = c.caller.as_ref().unwrap();
            (caller.name.as_str(), caller.via)
        })
        .collect();
    assert_eq!(
        updates,
        [
            ("acme console admin", pb::Via::Console as i32),
            ("bootstrap operator", pb::Via::Api as i32)
        ]
    );
    // The console's own audit page says so too.
    let page = http.get("/accounts/acme/audit").await;
    assert!(page.body.contains("<span class=\"tag\">console</span>"));
    assert!(
        page.body
            .contains("<span class=\"tag tag-grey\">API</span>")
    );
}

#[tokio::test]
async fn users_are_added_found_paged_and_removed_with_a_confirmation() {
    let w = World::new().await;
    let mut http = admin(&w).await;
    let csrf = http.get("/accounts/acme/users/new").await.csrf();
    let added = http
        .post(
            "/accounts/acme/users",
            &[
                ("csrf", &csrf),
                ("user_id", "cy"),
                ("display_name", "Cy Young"),
            ],
        )
        .await;
    assert_eq!(added.location(), "/accounts/acme/users/cy?done=added");
    let again = http
        .post(
            "/accounts/acme/users",
            &[
                ("csrf", &csrf),
                ("user_id", "cy"),
                ("display_name", "Other"),
            ],
        )
        .await;
    assert!(again.body.contains("A user with ID cy already exists"));
    // Refused in the write itself, so nothing was renamed.
    assert_eq!(
        w.app.get_user("acme", "cy").await.unwrap().display_name,
        "Cy Young"
    );
    let found = http.get("/accounts/acme/users?q=young").await;
    assert!(found.body.contains("Cy Young") && !found.body.contains("Ada Lovelace"));
    let confirm = http.get("/accounts/acme/users/cy/remove").await;
    assert!(confirm.body.contains("Yes, remove user"));
    assert!(
        w.app.get_user("acme", "cy").await.is_ok(),
        "a GET removes nothing"
    );
    let removed = http
        .post(
            "/accounts/acme/users/cy/remove",
            &[("csrf", &confirm.csrf())],
        )
        .await;
    assert_eq!(
        removed.location(),
        "/accounts/acme/users?done=removed&user=cy"
    );
    assert!(w.app.get_user("acme", "cy").await.is_err());
}

#[tokio::test]
async fn operators_pick_the_account_first_and_can_create_one() {
    let w = World::new().await;
    let mut http = Http::new(&w.base);
    http.sign_in(&w.app.operator_secret).await;
    let list = http.get("/accounts").await;
    assert!(list.body.contains("acme Inc.") && list.body.contains("globex Inc."));
    let found = http.get("/accounts?q=GLOB").await;
    assert!(found.body.contains("globex") && !found.body.contains("acme Inc."));
    let created = http
        .post(
            "/accounts",
            &[
                ("csrf", &list.csrf()),
                ("account_id", "initech"),
                ("display_name", "Initech"),
                ("product_line", "virtual-office"),
            ],
        )
        .await;
    assert_eq!(created.location(), "/accounts/initech/users");
    assert_eq!(
        w.app.get_account("initech").await.unwrap().product_line,
        "virtual-office"
    );
    // An operator reaches every account's users.
    assert_eq!(
        http.get("/accounts/globex/users/gus/services").await.status,
        200
    );
}

#[tokio::test]
async fn the_users_page_stays_fast_at_100000_users() {
    let w = World::new().await;
    let rows: Vec<pb::UserRow> = (0..100_000)
        .map(|i| pb::UserRow {
            account_id: "acme".into(),
            user_id: format!("u{i:06}"),
            display_name: format!("User {i}"),
            ..Default::default()
        })
        .collect();
    w.app.import_rows(&rows).await;
    let mut http = admin(&w).await;
    // A page deep in the list is one range read: as fast as the first.
    for path in [
        "/accounts/acme/users",
        "/accounts/acme/users?after=u090000",
        "/accounts/acme/users?q=User%2099999",
    ] {
        let started = Instant::now();
        let page = http.get(path).await;
        let took = started.elapsed();
        assert_eq!(page.status, 200);
        assert!(
            page.body.contains("Next page") || path.contains("q="),
            "{path}"
        );
        println!("{path}: {took:?}");
        assert!(took.as_millis() < 2000, "{path} took {took:?}");
    }
    let deep = http.get("/accounts/acme/users?after=u090000").await;
    assert!(deep.body.contains("u090001") && !deep.body.contains("u090000<"));
    let found = http.get("/accounts/acme/users?q=User%2099999").await;
    assert!(found.body.contains("u099999"));
}

#[test]
fn the_console_flag_takes_an_address_or_off_from_flag_env_or_file() {
    let show = |args: &[&str], env: Option<&str>| {
        let mut command = Command::new(BIN);
        command
            .args(["config", "show", "--output", "json"])
            .args(args)
            .env_remove("ENTITLED_CONFIG")
            .env_remove("ENTITLED_CONSOLE_LISTEN");
        if let Some(v) = env {
            command.env("ENTITLED_CONSOLE_LISTEN", v);
        }
        let out = command.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["console_listen"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(show(&[], None), "127.0.0.1:8080");
    assert_eq!(show(&["--console-listen", "off"], None), "off");
    assert_eq!(show(&[], Some("0.0.0.0:9000")), "0.0.0.0:9000");
    assert_eq!(
        show(&["--console-listen", "127.0.0.1:1"], Some("off")),
        "127.0.0.1:1"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("entitled.toml");
    std::fs::write(&file, "console_listen = \"off\"\n").unwrap();
    assert_eq!(show(&["--config", file.to_str().unwrap()], None), "off");
    std::fs::write(&file, "console_listen = \"nowhere\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["config", "show", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("console_listen `nowhere` is not an address or `off`")
    );
}

/// Rule 12: the console does not edit scopes, but a save that keeps
/// Supervisor keeps the supervisor's groups; one that lowers Supervisor
/// drops them, and says so.
#[tokio::test]
async fn a_save_that_keeps_supervisor_keeps_the_scope() {
    let w = World::new().await;
    let groups = pb::SupervisorScope {
        whole_account: false,
        refs: vec![pb::ScopeRef {
            kind: pb::ScopeKind::Site as i32,
            id: "S1".into(),
        }],
    };
    w.app
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
    let scope = || async {
        w.app
            .get_user("acme", "ada")
            .await
            .unwrap()
            .supervisor_scope
    };
    let mut http = admin(&w).await;

    let saved = save(&mut http, ADA, &[("edition", "X6"), ("tier", "supervisor")]).await;
    assert_eq!(saved.status, 200, "{}", saved.body);
    assert!(saved.body.contains("Saved: X6 with Supervisor Analytics."));
    assert!(
        saved
            .body
            .contains("Only these groups: site <code>S1</code>"),
        "{}",
        saved.body
    );
    assert_eq!(scope().await, Some(groups));

    let lowered = save(&mut http, ADA, &[("edition", "X2"), ("tier", "supervisor")]).await;
    assert!(
        lowered.body.contains(
            "The groups this supervisor was limited to were removed with Supervisor Analytics."
        ),
        "{}",
        lowered.body
    );
    assert_eq!(scope().await, None);
}
