//! Account events in Watch (created, analytics activated, deleted), the
//! DeleteAccount RPC, and the acceptance test of issue #14: a gateway's
//! cache built from Watch alone answers every user as the check does,
//! after a random workload of every kind of write, across a restart with
//! resume. Each test runs on sled and on PostgreSQL.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use common::{Backend, ManualClock, Options, T, TestApp, assert_status, within};
use entitled::{proto::v1 as pb, service::WatchOptions};
use pb::watch_entitlements_response::Event;
use proptest::{
    prelude::RngExt,
    test_runner::{RngAlgorithm, TestRng},
};
use tonic::{Code, Streaming};

const KIND_CREATED: i32 = pb::AccountChangeKind::Created as i32;
const KIND_ACTIVATED: i32 = pb::AccountChangeKind::AnalyticsActivated as i32;
const KIND_DELETED: i32 = pb::AccountChangeKind::Deleted as i32;

async fn watch(
    app: &TestApp,
    account: &str,
    after: u64,
) -> Streaming<pb::WatchEntitlementsResponse> {
    app.access
        .clone()
        .watch_entitlements(pb::WatchEntitlementsRequest {
            account_id: account.into(),
            after_revision: after,
        })
        .await
        .unwrap()
        .into_inner()
}

/// The next event that is not a heartbeat, within 5 s.
async fn next(stream: &mut Streaming<pb::WatchEntitlementsResponse>) -> Event {
    within(Duration::from_secs(5), "the next event", async {
        loop {
            match stream.message().await.unwrap().unwrap().event.unwrap() {
                Event::Heartbeat(_) => {}
                event => return event,
            }
        }
    })
    .await
}

fn account_event(event: Event) -> pb::AccountChange {
    match event {
        Event::Account(a) => a,
        other => panic!("expected an account event, got {other:?}"),
    }
}

fn user_event(event: Event) -> pb::EntitlementChange {
    match event {
        Event::Change(c) => c,
        other => panic!("expected a user's change, got {other:?}"),
    }
}

async fn delete_account(
    app: &TestApp,
    account: &str,
) -> Result<pb::DeleteAccountResponse, tonic::Status> {
    app.provisioning
        .clone()
        .delete_account(pb::DeleteAccountRequest {
            account_id: account.into(),
            request_id: String::new(),
        })
        .await
        .map(|r| r.into_inner())
}

fn at(t: &Option<prost_types::Timestamp>) -> Option<SystemTime> {
    t.map(|t| SystemTime::try_from(t).unwrap())
}

on_both_backends! {
    /// Created, then analytics activated with the data_available_at the
    /// check answers (rule 8): the event a gateway needs, since the
    /// activation changes every user's answer at once.
    async fn an_accounts_creation_and_activation_are_watched(backend) {
        let app = TestApp::spawn_on(backend).await;
        let start = app.revision().await;
        let mut stream = watch(&app, "acme", start).await;
        app.create_account("acme", "work").await;
        app.put_user("acme", "ada").await;
        app.set("acme", "ada", Some("X6"), None).await.unwrap();
        let written = app.set("acme", "ada", None, Some(T::Essentials)).await.unwrap();

        let created = account_event(next(&mut stream).await);
        assert_eq!(created.kind, KIND_CREATED);
        assert_eq!((created.account_id.as_str(), created.product_line.as_str()), ("acme", "work"));
        assert_eq!(created.display_name, "acme Inc.");
        assert_eq!(created.data_available_at, None);
        assert!(user_event(next(&mut stream).await).created);
        assert_eq!(user_event(next(&mut stream).await).after_edition, "X6");
        // The account's event comes first at the write's revision: the
        // write made the account's change first.
        let activated = account_event(next(&mut stream).await);
        assert_eq!(activated.kind, KIND_ACTIVATED);
        assert_eq!(activated.revision, written.revision);
        let check = app.check("acme", "ada").await;
        assert!(check.data_available_at.is_some());
        assert_eq!(activated.data_available_at, check.data_available_at);
        let tier = user_event(next(&mut stream).await);
        assert_eq!((tier.revision, tier.after_tier), (written.revision, T::Essentials as i32));

        // A second user's first tier starts nothing: no account event.
        app.put_user("acme", "bob").await;
        app.set("acme", "bob", Some("X6"), Some(T::Supervisor)).await.unwrap();
        assert!(user_event(next(&mut stream).await).created);
        assert_eq!(user_event(next(&mut stream).await).user_id, "bob");

        // ListChanges shows the account's before and after.
        let changes = app
            .audit
            .clone()
            .list_changes(pb::ListChangesRequest {
                account_id: "acme".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .changes;
        let account_records: Vec<&pb::Change> =
            changes.iter().filter(|c| c.account_after.is_some()).collect();
        assert_eq!(account_records.len(), 2, "{changes:#?}");
        assert!(account_records[0].account_before.is_none());
        assert_eq!(account_records[0].account_after.as_ref().unwrap().product_line, "work");
        let before = account_records[1].account_before.as_ref().unwrap();
        let after = account_records[1].account_after.as_ref().unwrap();
        assert!(before.analytics_activated_at.is_none());
        assert!(after.analytics_activated_at.is_some());
        assert!(account_records.iter().all(|c| c.user_id.is_empty() && c.before.is_none()));
    }
}

on_both_backends! {
    /// One write deletes the account, its users and revokes its tokens:
    /// Watch gives each user's deletion, then the account's, all at its
    /// revision; re-creating the id starts empty and the old admin token
    /// stays revoked.
    async fn deleting_an_account_deletes_its_users_and_revokes_its_tokens(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        app.create_account("globex", "work").await;
        for user in ["ada", "bob", "cy"] {
            app.put_user("acme", user).await;
            app.set("acme", user, Some("X8"), Some(T::Supervisor)).await.unwrap();
        }
        app.put_user("globex", "gus").await;
        let admin = app.token("acme admin", pb::Role::AccountAdmin, "acme", "ada").await;
        let other = app.token("globex admin", pb::Role::AccountAdmin, "globex", "gus").await;
        let start = app.revision().await;
        let mut stream = watch(&app, "", start).await;

        let deleted = delete_account(&app, "acme").await.unwrap();
        assert_eq!((deleted.users_deleted, deleted.tokens_revoked), (3, 1));
        assert_eq!(deleted.revision, start + 1, "one write, one revision");
        let mut gone = Vec::new();
        for _ in 0..3 {
            let c = user_event(next(&mut stream).await);
            assert!(c.deleted && c.revision == deleted.revision, "{c:?}");
            assert_eq!(c.before_tier, T::Supervisor as i32);
            gone.push(c.user_id);
        }
        assert_eq!(gone, ["ada", "bob", "cy"]);
        let event = account_event(next(&mut stream).await);
        assert_eq!((event.kind, event.revision), (KIND_DELETED, deleted.revision));
        assert_eq!(event.account_id, "acme");

        assert_status(app.get_account("acme").await, Code::NotFound, &["`acme`"]);
        let check = app.check("acme", "ada").await;
        assert_eq!(check.denial_reason, pb::DenialReason::AccountNotFound as i32);
        // The account's admin token is refused from now on; another
        // account's is not.
        let refused = app.clients(Some(&admin)).provisioning.get_account(pb::GetAccountRequest {
            account_id: "acme".into(),
        }).await;
        assert_status(refused, Code::Unauthenticated, &["revoked"]);
        app.clients(Some(&other)).provisioning.get_account(pb::GetAccountRequest {
            account_id: "globex".into(),
        }).await.unwrap();
        assert!(app.get_user("globex", "gus").await.is_ok());

        // Again: NOT_FOUND, nothing written.
        assert_status(delete_account(&app, "acme").await, Code::NotFound, &["account `acme` does not exist"]);
        assert_eq!(app.revision().await, deleted.revision);

        // Re-created, it starts empty, with its clock not started; the old
        // token stays revoked, across a restart too.
        app.create_account("acme", "virtual-office").await;
        let users = app.provisioning.clone().list_users(pb::ListUsersRequest {
            account_id: "acme".into(),
            ..Default::default()
        }).await.unwrap().into_inner().users;
        assert!(users.is_empty(), "{users:?}");
        let created = account_event(next(&mut stream).await);
        assert_eq!((created.kind, created.product_line.as_str()), (KIND_CREATED, "virtual-office"));
        drop(stream);
        let app = app.restart().await;
        assert_eq!(app.get_account("acme").await.unwrap().product_line, "virtual-office");
        assert_eq!(app.get_user("acme", "ada").await.unwrap_err().code(), Code::NotFound);
        let refused = app.clients(Some(&admin)).provisioning.get_account(pb::GetAccountRequest {
            account_id: "acme".into(),
        }).await;
        assert_status(refused, Code::Unauthenticated, &["revoked"]);
        assert!(app.get_user("globex", "gus").await.is_ok());
    }
}

on_both_backends! {
    /// Operators and provisioners only; an account admin may not delete
    /// even its own account, and a malformed id is refused before anything.
    async fn only_operators_and_provisioners_delete_accounts(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        app.put_user("acme", "ada").await;
        let admin = app.token("acme admin", pb::Role::AccountAdmin, "acme", "ada").await;
        let gateway = app.token("gw", pb::Role::Gateway, "", "").await;
        let request = || pb::DeleteAccountRequest {
            account_id: "acme".into(),
            request_id: String::new(),
        };
        let refused = app.clients(Some(&admin)).provisioning.delete_account(request()).await;
        assert_status(refused, Code::PermissionDenied, &["account-admin", "DeleteAccount"]);
        let refused = app.clients(Some(&gateway)).provisioning.delete_account(request()).await;
        assert_status(refused, Code::PermissionDenied, &["gateway"]);
        assert_status(delete_account(&app, "acme/x").await, Code::InvalidArgument, &["account_id", "`acme/x`"]);
        assert!(app.get_user("acme", "ada").await.is_ok());

        let provisioner = app.token("billing", pb::Role::Provisioner, "", "").await;
        let done = app.clients(Some(&provisioner)).provisioning.delete_account(request()).await.unwrap();
        assert_eq!(done.into_inner().users_deleted, 1);
    }
}

on_both_backends! {
    /// A retry with the same request id gets the first answer and deletes
    /// nothing again (not even the account re-created meanwhile).
    async fn a_retried_deletion_is_answered_once(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        app.put_user("acme", "ada").await;
        let request = pb::DeleteAccountRequest {
            account_id: "acme".into(),
            request_id: "del-1".into(),
        };
        let first = app.provisioning.clone().delete_account(request.clone()).await.unwrap().into_inner();
        app.create_account("acme", "work").await;
        app.put_user("acme", "bob").await;
        let again = app.provisioning.clone().delete_account(request).await.unwrap().into_inner();
        assert_eq!(again, first);
        assert!(app.get_user("acme", "bob").await.is_ok());
    }
}

on_both_backends! {
    /// An account of 100,000 users (`ENTITLED_BIG_ACCOUNT_USERS`) is
    /// deleted in one write, at one revision, with a Watch event per user;
    /// the time it takes is printed (BENCHMARKS.md).
    async fn a_large_account_is_deleted_in_one_write(backend) {
        let count = common::count_from_env("ENTITLED_BIG_ACCOUNT_USERS", 100_000, 5_000);
        let app = TestApp::spawn_on(backend).await;
        app.create_account("big", "work").await;
        let rows: Vec<pb::UserRow> = (0..count)
            .map(|i| pb::UserRow {
                account_id: "big".into(),
                user_id: format!("u{i:06}"),
                display_name: format!("User {i}"),
                edition: "X4".into(),
                analytics_tier: T::Essentials as i32,
                supervisor_scope: None,
            })
            .collect();
        app.import_rows(&rows).await;
        let start = app.revision().await;
        let mut stream = watch(&app, "big", start).await;
        let began = Instant::now();
        let deleted = delete_account(&app, "big").await.unwrap();
        let took = began.elapsed();
        println!("{backend:?}: deleting an account of {count} users took {took:?}");
        assert_eq!(deleted.users_deleted, u64::from(count));
        assert_eq!(deleted.revision, start + 1);
        let mut users = 0;
        within(Duration::from_secs(120), "every deletion's event", async {
            loop {
                match stream.message().await.unwrap().unwrap().event.unwrap() {
                    Event::Change(c) => {
                        assert!(c.deleted && c.revision == deleted.revision);
                        users += 1;
                    }
                    Event::Account(a) => {
                        assert_eq!(a.kind, KIND_DELETED);
                        break;
                    }
                    Event::Heartbeat(_) => {}
                }
            }
        }).await;
        assert_eq!(users, count);
        assert_eq!(app.check("big", "u000000").await.denial_reason, pb::DenialReason::AccountNotFound as i32);
        // Durable as one write: a restart finds it all gone.
        let app = app.restart().await;
        assert_eq!(app.get_account("big").await.unwrap_err().code(), Code::NotFound);
        app.create_account("big", "work").await;
        assert_eq!(app.get_user("big", "u000001").await.unwrap_err().code(), Code::NotFound);
    }
}

// ---- the acceptance test: a gateway's cache from Watch alone ----

/// What a gateway knows of the catalogue, from GetCatalogue.
struct GatewayCatalogue {
    /// product line → edition → highest tier.
    lines: BTreeMap<String, BTreeMap<String, i32>>,
    /// tier → its reports (id, live).
    reports: BTreeMap<i32, Vec<(String, bool)>>,
}

impl GatewayCatalogue {
    async fn fetch(app: &TestApp) -> Self {
        let c = app
            .catalogue
            .clone()
            .get_catalogue(pb::GetCatalogueRequest {})
            .await
            .unwrap()
            .into_inner();
        let lines = c
            .product_lines
            .iter()
            .map(|l| {
                let editions = l
                    .editions
                    .iter()
                    .map(|e| {
                        (
                            e.id.clone(),
                            e.allowed_tiers.iter().copied().max().unwrap_or(0),
                        )
                    })
                    .collect();
                (l.id.clone(), editions)
            })
            .collect();
        let reports = c
            .tier_reports
            .iter()
            .map(|t| {
                let list = t
                    .reports
                    .iter()
                    .map(|r| (r.id.clone(), r.kind == pb::ReportKind::Live as i32))
                    .collect();
                (t.tier, list)
            })
            .collect();
        GatewayCatalogue { lines, reports }
    }
}

#[derive(Debug, Clone)]
struct CachedAccount {
    product_line: String,
    data_available_at: Option<SystemTime>,
}

/// A gateway's cache, kept from Watch events only.
#[derive(Default)]
struct Gateway {
    accounts: BTreeMap<String, CachedAccount>,
    /// (account, user) → (edition, stored tier, supervisor scope).
    users: BTreeMap<(String, String), (String, i32, Option<pb::SupervisorScope>)>,
    /// The highest revision a heartbeat said the stream had reached.
    reached: u64,
    /// Events applied.
    events: u64,
}

/// A check's answer, as the gateway and the server both give it.
#[derive(Debug, PartialEq)]
struct Answer {
    allowed: bool,
    tier: i32,
    edition: String,
    data_available_at: Option<SystemTime>,
    reports: Vec<(String, bool)>,
    /// Set exactly when the effective tier is Supervisor (rule 12).
    supervisor_scope: Option<pb::SupervisorScope>,
}

impl Gateway {
    fn apply(&mut self, event: Event) {
        match event {
            Event::Heartbeat(h) => self.reached = self.reached.max(h.revision),
            Event::Change(c) => {
                self.events += 1;
                let key = (c.account_id, c.user_id);
                if c.deleted {
                    self.users.remove(&key);
                } else {
                    self.users.insert(
                        key,
                        (c.after_edition, c.after_tier, c.after_supervisor_scope),
                    );
                }
            }
            Event::Account(a) => {
                self.events += 1;
                if a.kind == KIND_DELETED {
                    self.accounts.remove(&a.account_id);
                    // Each user's deletion came before; none may be left.
                    assert!(
                        !self.users.keys().any(|(acc, _)| *acc == a.account_id),
                        "users of `{}` left after its deletion",
                        a.account_id
                    );
                } else {
                    self.accounts.insert(
                        a.account_id,
                        CachedAccount {
                            product_line: a.product_line,
                            data_available_at: at(&a.data_available_at),
                        },
                    );
                }
            }
        }
    }

    /// The gateway's answer for a user, now.
    fn answer(
        &self,
        catalogue: &GatewayCatalogue,
        account: &str,
        user: &str,
        now: SystemTime,
    ) -> Answer {
        let none = T::None as i32;
        let denied = |edition: &str| Answer {
            allowed: false,
            tier: none,
            edition: edition.to_owned(),
            data_available_at: None,
            reports: Vec::new(),
            supervisor_scope: None,
        };
        let (Some(acc), Some((edition, stored, scope))) = (
            self.accounts.get(account),
            self.users.get(&(account.to_owned(), user.to_owned())),
        ) else {
            return denied("");
        };
        if edition.is_empty() || *stored == none {
            return denied(edition);
        }
        let max = catalogue
            .lines
            .get(&acc.product_line)
            .and_then(|l| l.get(edition))
            .copied()
            .unwrap_or(none);
        let tier = (*stored).min(max);
        if tier == none {
            return denied(edition);
        }
        let ready = acc.data_available_at.is_some_and(|at| now >= at);
        Answer {
            allowed: true,
            tier,
            edition: edition.clone(),
            data_available_at: acc.data_available_at,
            reports: catalogue.reports[&tier]
                .iter()
                .map(|(id, live)| (id.clone(), *live || ready))
                .collect(),
            supervisor_scope: if tier == T::Supervisor as i32 {
                scope.clone()
            } else {
                None
            },
        }
    }
}

fn answer_of(r: &pb::CheckAnalyticsAccessResponse) -> Answer {
    Answer {
        allowed: r.allowed,
        tier: r.tier,
        edition: r.edition.clone(),
        data_available_at: at(&r.data_available_at),
        reports: r
            .reports
            .iter()
            .map(|r| (r.id.to_string(), r.available))
            .collect(),
        supervisor_scope: r.supervisor_scope.clone(),
    }
}

/// Follows `stream` into `gateway` until it ends; returns the status it
/// ended with, if any.
fn follow(
    mut stream: Streaming<pb::WatchEntitlementsResponse>,
    gateway: Arc<Mutex<Gateway>>,
) -> tokio::task::JoinHandle<Option<tonic::Status>> {
    tokio::spawn(async move {
        loop {
            match stream.message().await {
                Ok(Some(message)) => gateway.lock().unwrap().apply(message.event.unwrap()),
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
}

const ACCOUNTS: [&str; 4] = ["acme", "globex", "initech", "umbrella"];
const USERS: [&str; 10] = [
    "ada", "bob", "cy", "dee", "eve", "fay", "gil", "hal", "ivy", "jo",
];

/// The kinds of write the workload makes; `Workload::perform` has one
/// function per kind and `Workload::pick` is the one place that picks
/// them (new kinds, e.g. MigrateAccount or supervisor scopes, go in both).
#[derive(Debug, Clone, Copy)]
enum Write {
    CreateAccount,
    PutUser,
    DeleteUser,
    UpdateServices,
    Import,
    DeleteAccount,
    MigrateAccount,
    /// Not a write: time passes, so historical reports open (rule 8).
    AdvanceClock,
}

/// Each kind with its weight.
const WRITES: [(Write, u32); 8] = [
    (Write::CreateAccount, 6),
    (Write::PutUser, 12),
    (Write::DeleteUser, 4),
    (Write::UpdateServices, 30),
    (Write::Import, 5),
    (Write::DeleteAccount, 2),
    (Write::MigrateAccount, 3),
    (Write::AdvanceClock, 3),
];

struct Workload<'a> {
    app: &'a TestApp,
    rng: TestRng,
    clock: ManualClock,
    lines: Vec<String>,
    /// Every edition of every line, so that some are refused.
    editions: Vec<String>,
    tally: BTreeMap<String, (u32, u32)>,
}

impl Workload<'_> {
    fn pick(&mut self) -> Write {
        let total: u32 = WRITES.iter().map(|(_, w)| w).sum();
        let mut n = self.rng.random_range(0..total);
        for (write, weight) in WRITES {
            if n < weight {
                return write;
            }
            n -= weight;
        }
        unreachable!()
    }

    fn one<'s>(&mut self, of: &[&'s str]) -> &'s str {
        of[self.rng.random_range(0..of.len())]
    }

    fn tier(&mut self) -> i32 {
        [T::None, T::Essentials, T::Supervisor][self.rng.random_range(0..3)] as i32
    }

    fn edition(&mut self) -> String {
        // One in five: no licence.
        if self.rng.random_range(0..5) == 0 {
            return String::new();
        }
        self.editions[self.rng.random_range(0..self.editions.len())].clone()
    }

    async fn run(&mut self, steps: usize) {
        for _ in 0..steps {
            let write = self.pick();
            let ok = self.perform(write).await;
            let entry = self.tally.entry(format!("{write:?}")).or_default();
            entry.0 += 1;
            entry.1 += u32::from(ok);
        }
    }

    /// Makes one write of `kind`; whether it was applied (refusals are part
    /// of the workload: they must change nothing the gateway sees).
    async fn perform(&mut self, kind: Write) -> bool {
        match kind {
            Write::CreateAccount => self.create_account().await,
            Write::PutUser => self.put_user().await,
            Write::DeleteUser => self.delete_user().await,
            Write::UpdateServices => self.update_services().await,
            Write::Import => self.import().await,
            Write::DeleteAccount => self.delete_account().await,
            Write::MigrateAccount => self.migrate_account().await,
            Write::AdvanceClock => {
                let hours = self.rng.random_range(1..30);
                self.clock.advance(Duration::from_secs(hours * 3600));
                true
            }
        }
    }

    async fn create_account(&mut self) -> bool {
        let account = self.one(&ACCOUNTS);
        let line = self.lines[self.rng.random_range(0..self.lines.len())].clone();
        let r = self
            .app
            .provisioning
            .clone()
            .create_account(pb::CreateAccountRequest {
                account_id: account.into(),
                display_name: format!("{account} Inc."),
                product_line: line,
                request_id: String::new(),
            })
            .await;
        applied(r, &[Code::AlreadyExists])
    }

    async fn put_user(&mut self) -> bool {
        let (account, user) = (self.one(&ACCOUNTS), self.one(&USERS));
        let name = format!("User {user} {}", self.rng.random_range(0..3));
        let r = self
            .app
            .provisioning
            .clone()
            .put_user(pb::PutUserRequest {
                account_id: account.into(),
                user_id: user.into(),
                display_name: name,
                request_id: String::new(),
            })
            .await;
        applied(r, &[Code::NotFound])
    }

    async fn delete_user(&mut self) -> bool {
        let (account, user) = (self.one(&ACCOUNTS), self.one(&USERS));
        let r = self
            .app
            .provisioning
            .clone()
            .delete_user(pb::DeleteUserRequest {
                account_id: account.into(),
                user_id: user.into(),
                request_id: String::new(),
            })
            .await;
        applied(r, &[Code::NotFound])
    }

    async fn update_services(&mut self) -> bool {
        let (account, user) = (self.one(&ACCOUNTS), self.one(&USERS));
        // Edition, tier or both: every transition, rule 6's lowering
        // included, and the refusals of rules 2 and 7.
        let (edition, tier) = match self.rng.random_range(0..3) {
            0 => (Some(self.edition()), None),
            1 => (None, Some(self.tier())),
            _ => (Some(self.edition()), Some(self.tier())),
        };
        let supervisor_scope = self.scope();
        let r = self
            .app
            .update(pb::UpdateUserServicesRequest {
                account_id: account.into(),
                user_id: user.into(),
                edition,
                analytics_tier: tier,
                supervisor_scope,
                ..Default::default()
            })
            .await;
        applied(
            r,
            &[
                Code::NotFound,
                Code::FailedPrecondition,
                Code::InvalidArgument,
            ],
        )
    }

    async fn import(&mut self) -> bool {
        let account = self.one(&ACCOUNTS);
        let mut users: Vec<&str> = USERS.to_vec();
        let n = self.rng.random_range(1..6);
        let mut rows = Vec::new();
        for _ in 0..n {
            let user = users.remove(self.rng.random_range(0..users.len()));
            let edition = self.edition();
            let tier = if edition.is_empty() {
                T::None as i32
            } else {
                self.tier()
            };
            rows.push(pb::UserRow {
                account_id: account.into(),
                user_id: user.into(),
                display_name: format!("Imported {user}"),
                edition,
                analytics_tier: tier,
                supervisor_scope: None,
            });
        }
        let r = self
            .app
            .provisioning
            .clone()
            .import_users(pb::ImportUsersRequest {
                rows,
                ..Default::default()
            })
            .await;
        // Rows refused: nothing applied (and the call answers OK).
        match r {
            Ok(r) => r.into_inner().errors.is_empty(),
            Err(status) => panic!("import failed: {status:?}"),
        }
    }

    /// Rule 12: mostly none (a supervisor keeps its scope, a new one gets
    /// the whole account), else the whole account or a few groups (refused
    /// unless the change leaves a supervisor).
    fn scope(&mut self) -> Option<pb::SupervisorScope> {
        match self.rng.random_range(0..6) {
            0 => Some(pb::SupervisorScope {
                whole_account: true,
                refs: Vec::new(),
            }),
            1 | 2 => {
                let n = self.rng.random_range(1..4);
                let mut ids: Vec<u32> = (0..5).collect();
                let refs = (0..n)
                    .map(|_| {
                        let id = ids.remove(self.rng.random_range(0..ids.len()));
                        pb::ScopeRef {
                            kind: self.rng.random_range(1..5),
                            id: format!("G{id}"),
                        }
                    })
                    .collect();
                Some(pb::SupervisorScope {
                    whole_account: false,
                    refs,
                })
            }
            _ => None,
        }
    }

    /// Rule 15: an account to another line (refused when it is on that
    /// line already, when the catalogue has no such move, or when a licence
    /// has no mapping and its removal is not asked for).
    async fn migrate_account(&mut self) -> bool {
        let account = self.one(&ACCOUNTS);
        let to = self.lines[self.rng.random_range(0..self.lines.len())].clone();
        let remove_unmapped_licences = self.rng.random_range(0..2) == 0;
        let r = self
            .app
            .provisioning
            .clone()
            .migrate_account(pb::MigrateAccountRequest {
                account_id: account.into(),
                to_product_line: to,
                remove_unmapped_licences,
                ..Default::default()
            })
            .await;
        let mut stream = match r {
            Ok(stream) => stream.into_inner(),
            Err(status) => {
                return applied::<()>(Err(status), &[Code::NotFound, Code::FailedPrecondition]);
            }
        };
        let mut summary = None;
        while let Some(message) = stream.message().await.unwrap() {
            if let Some(pb::migrate_account_response::Item::Summary(s)) = message.item {
                summary = Some(s);
            }
        }
        !summary
            .expect("a move's answer ends with its summary")
            .dry_run
    }

    async fn delete_account(&mut self) -> bool {
        let account = self.one(&ACCOUNTS);
        applied(delete_account(self.app, account).await, &[Code::NotFound])
    }
}

/// Whether a write was applied; a refusal with one of `expected` codes is
/// part of the workload, any other failure fails the test.
fn applied<T>(r: Result<T, tonic::Status>, expected: &[Code]) -> bool {
    match r {
        Ok(_) => true,
        Err(status) if expected.contains(&status.code()) => false,
        Err(status) => panic!("unexpected failure: {status:?}"),
    }
}

/// Waits until the gateway has seen everything up to the server's latest
/// revision (a heartbeat at or past it says every change before was sent).
async fn caught_up(app: &TestApp, gateway: &Arc<Mutex<Gateway>>) -> u64 {
    let revision = app.revision().await;
    within(Duration::from_secs(30), "the gateway catching up", async {
        while gateway.lock().unwrap().reached < revision {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    revision
}

/// Every user of every account the workload may touch, answered by the
/// gateway's cache and by the server's check: they must agree.
async fn compare(
    app: &TestApp,
    gateway: &Arc<Mutex<Gateway>>,
    catalogue: &GatewayCatalogue,
    now: SystemTime,
    seed: u64,
) -> usize {
    let revision = caught_up(app, gateway).await;
    let items: Vec<pb::CheckItem> = ACCOUNTS
        .iter()
        .flat_map(|a| {
            USERS.iter().map(move |u| pb::CheckItem {
                account_id: (*a).into(),
                user_id: (*u).into(),
            })
        })
        .collect();
    let batch = app
        .access
        .clone()
        .batch_check_analytics_access(pb::BatchCheckAnalyticsAccessRequest {
            items: items.clone(),
            min_revision: revision,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        batch.revision, revision,
        "seed {seed}: the server moved while compared"
    );
    let gateway = gateway.lock().unwrap();
    let mut allowed = 0;
    for (item, result) in items.iter().zip(&batch.results) {
        let Some(pb::check_result::Outcome::Answer(server)) = &result.outcome else {
            panic!("seed {seed}: {item:?}: {result:?}");
        };
        let cached = gateway.answer(catalogue, &item.account_id, &item.user_id, now);
        assert_eq!(
            cached,
            answer_of(server),
            "seed {seed}: {}/{} at revision {revision}",
            item.account_id,
            item.user_id
        );
        allowed += usize::from(cached.allowed);
    }
    allowed
}

fn seed() -> u64 {
    match std::env::var("ENTITLED_WATCH_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .expect("ENTITLED_WATCH_SEED is a whole number"),
        Err(_) => 0x5eed_0014,
    }
}

fn rng(seed: u64, backend: Backend) -> TestRng {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8] = backend as u8;
    TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)
}

on_both_backends! {
    /// Issue #14's acceptance test. Seeded (`ENTITLED_WATCH_SEED`, printed
    /// on failure), so a failure is reproducible; `ENTITLED_WATCH_STEPS`
    /// writes per phase.
    async fn a_gateway_cache_from_watch_alone_answers_as_the_check_does(backend) {
        let seed = seed();
        let steps = common::count_from_env("ENTITLED_WATCH_STEPS", 250, 50) as usize;
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let options = || Options {
            clock: Some(clock.clock()),
            watch: Some(WatchOptions {
                heartbeat: Duration::from_millis(50),
                ..WatchOptions::default()
            }),
            backend,
            ..Options::default()
        };
        let app = TestApp::spawn_with(options()).await;
        let catalogue = GatewayCatalogue::fetch(&app).await;
        let gateway = Arc::new(Mutex::new(Gateway::default()));
        // From the very start: the gateway knows nothing but the feed.
        let follower = follow(watch(&app, "", 0).await, Arc::clone(&gateway));
        let mut workload = Workload {
            app: &app,
            rng: rng(seed, backend),
            clock: clock.clone(),
            lines: catalogue.lines.keys().cloned().collect(),
            editions: catalogue.lines.values().flat_map(|l| l.keys().cloned()).collect::<BTreeSet<_>>().into_iter().collect(),
            tally: BTreeMap::new(),
        };
        let mut allowed = 0;
        for _ in 0..4 {
            workload.run(steps / 4).await;
            allowed += compare(&app, &gateway, &catalogue, clock.now(), seed).await;
        }
        let tally = std::mem::take(&mut workload.tally);
        drop(workload);

        // A restart ends the watch with the revision to resume after.
        let app = app.restart_with(options()).await;
        let ended = within(Duration::from_secs(10), "the watch's end", follower).await.unwrap();
        let status = ended.expect("the watch ended without a status");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        let resume: u64 = status.metadata().get("entitled-resume-after").unwrap().to_str().unwrap().parse().unwrap();
        let mut workload = Workload {
            app: &app,
            rng: rng(seed.wrapping_add(1), backend),
            clock: clock.clone(),
            lines: catalogue.lines.keys().cloned().collect(),
            editions: catalogue.lines.values().flat_map(|l| l.keys().cloned()).collect::<BTreeSet<_>>().into_iter().collect(),
            tally,
        };
        // Writes while the gateway is away, then resumed, then more.
        workload.run(steps / 5).await;
        let follower = follow(watch(&app, "", resume).await, Arc::clone(&gateway));
        let mut allowed_after = 0;
        for _ in 0..4 {
            workload.run(steps / 4).await;
            allowed_after += compare(&app, &gateway, &catalogue, clock.now(), seed).await;
        }
        let events = gateway.lock().unwrap().events;
        println!("{backend:?} seed {seed}: {events} events; allowed {allowed} then {allowed_after}; writes (made, applied): {:?}", workload.tally);
        // The workload did what it says: every kind of write was applied.
        for (kind, (_, ok)) in &workload.tally {
            assert!(*ok > 0, "seed {seed}: no {kind} was applied: {:?}", workload.tally);
        }
        assert!(allowed + allowed_after > 0, "seed {seed}: nobody was ever allowed");
        follower.abort();
    }
}
