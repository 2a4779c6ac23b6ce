//! Audit retention: records older than `--audit-retention` are pruned,
//! newer ones kept, whole revisions only as readers see them; ListChanges
//! and Watch from before what is kept are OUT_OF_RANGE naming the oldest
//! revision held, and work inside it; writes and checks go on while a long
//! pass prunes. Time is a clock the tests move; passes are run by the test
//! (the background interval is a day). Each test runs on sled and on
//! PostgreSQL. A watch that pruning overtakes in the middle of its replay
//! is tested at the store (`store/sled/tests.rs`): the watch hands on the
//! store's error.
//!
//! Expired request records are swept by the same passes, whatever the
//! audit retention (the last tests): one past its window is gone, one
//! within it replays, and a stream of fresh request ids across windows
//! leaves the store holding one window's worth.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use std::time::{Duration, SystemTime};

use common::{ManualClock, Options, TestApp, assert_status};
use entitled::{
    proto::v1 as pb,
    service::RetentionOptions,
    store::{REQUEST_ID_WINDOW, REQUEST_PRUNE_GRACE},
};
use pb::watch_entitlements_response::Event;
use tonic::{Code, Streaming};

const HOUR: Duration = Duration::from_secs(3600);

fn start() -> ManualClock {
    ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000))
}

/// A server keeping an hour of audit records, pruning `batch` at a time
/// when the test runs a pass.
async fn spawn(backend: common::Backend, clock: &ManualClock, batch: usize) -> TestApp {
    TestApp::spawn_with(Options {
        backend,
        clock: Some(clock.clock()),
        retention: Some(RetentionOptions {
            keep: Some(HOUR),
            every: Duration::from_secs(24 * 3600),
            batch,
            request_batch: batch,
            pause: Duration::ZERO,
            busy_percent: 100,
        }),
        ..Options::default()
    })
    .await
}

async fn list(app: &TestApp, after_revision: u64) -> Result<Vec<pb::Change>, tonic::Status> {
    app.audit
        .clone()
        .list_changes(pb::ListChangesRequest {
            after_revision,
            page_size: 1000,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().changes)
}

async fn watch(
    app: &TestApp,
    after_revision: u64,
) -> Result<Streaming<pb::WatchEntitlementsResponse>, tonic::Status> {
    app.access
        .clone()
        .watch_entitlements(pb::WatchEntitlementsRequest {
            account_id: String::new(),
            after_revision,
        })
        .await
        .map(|r| r.into_inner())
}

async fn next_change(
    stream: &mut Streaming<pb::WatchEntitlementsResponse>,
) -> pb::EntitlementChange {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("no event within 5 s")
            .unwrap()
            .expect("the stream ended");
        if let Some(Event::Change(c)) = message.event {
            return c;
        }
    }
}

/// The old part of the trail every test starts from: the operator token
/// (revision 1), `acme` (2), `ada` (3), an import of five users (4, five
/// records) and a refusal at 4; all more than an hour before `carl` (5).
async fn old_and_new(app: &TestApp, clock: &ManualClock) -> u64 {
    app.create_account("acme", "work").await;
    assert_eq!(app.put_user("acme", "ada").await.revision, 3);
    assert_eq!(app.import_users("imp", 5).await, 4);
    let refused = app
        .provisioning
        .clone()
        .create_account(pb::CreateAccountRequest {
            account_id: "acme".into(),
            product_line: "work".into(),
            ..Default::default()
        })
        .await;
    assert_status(refused, Code::AlreadyExists, &["acme"]);
    // A listing commits the refusals a PostgreSQL replica holds, so the
    // refusal is at revision 4 on both backends.
    assert_eq!(list(app, 0).await.unwrap().len(), 9);
    clock.advance(2 * HOUR);
    let carl = app.put_user("acme", "carl").await.revision;
    assert_eq!(carl, 5);
    carl
}

on_both_backends! {
    async fn records_older_than_the_retention_go_and_newer_stay(backend) {
        let clock = start();
        let app = spawn(backend, &clock, 1000).await;
        let carl = old_and_new(&app, &clock).await;
        let before = list(&app, 0).await.unwrap();
        assert_eq!(before.len(), 10, "{before:?}");

        let report = app.pruner.pass().await.unwrap();
        assert_eq!(report.records, 9, "{report:?}");
        assert_eq!(report.pruned.revision, 4);
        assert_eq!(report.pruned.oldest_revision_held(), carl);

        // after_revision 0: everything kept, which starts at carl.
        let kept = list(&app, 0).await.unwrap();
        let kept: Vec<(u64, &str)> = kept.iter().map(|c| (c.revision, c.user_id.as_str())).collect();
        assert_eq!(kept, [(carl, "carl")]);
        // Inside the window, both work.
        let after = list(&app, 4).await.unwrap();
        assert_eq!(after.len(), 1);
        let mut stream = watch(&app, 4).await.unwrap();
        let change = next_change(&mut stream).await;
        assert_eq!((change.revision, change.user_id.as_str()), (carl, "carl"));

        // Before it, OUT_OF_RANGE naming the oldest revision held.
        for asked in [0, 1, 3] {
            let pieces = [
                "is before the audit trail kept",
                "the oldest revision held is 5",
                "ListUsers",
            ];
            assert_status(watch(&app, asked).await, Code::OutOfRange, &pieces);
            if asked > 0 {
                let named = format!("after_revision `{asked}`");
                assert_status(list(&app, asked).await, Code::OutOfRange, &[&named, pieces[1]]);
            }
        }

        // A second pass finds nothing more; a later one prunes carl too.
        assert_eq!(app.pruner.pass().await.unwrap().records, 0);
        clock.advance(2 * HOUR);
        let report = app.pruner.pass().await.unwrap();
        assert_eq!((report.records, report.pruned.revision), (1, carl));
        assert!(list(&app, 0).await.unwrap().is_empty());
        assert_status(watch(&app, 4).await, Code::OutOfRange, &["the oldest revision held is 6"]);
        // Watching from the current revision goes on with new writes.
        let mut stream = watch(&app, carl).await.unwrap();
        let dora = app.put_user("acme", "dora").await.revision;
        let change = next_change(&mut stream).await;
        assert_eq!((change.revision, change.user_id.as_str()), (dora, "dora"));

        // How far the trail is pruned survives a restart.
        let app = app
            .restart_with(Options {
                clock: Some(clock.clock()),
                ..Options::default()
            })
            .await;
        assert_status(list(&app, 4).await, Code::OutOfRange, &["the oldest revision held is 6"]);
        assert_eq!(list(&app, carl).await.unwrap().len(), 1);
    }
}

on_both_backends! {
    /// A revision is pruned whole as readers see it: from the batch that
    /// takes its first record, no listing or watch is served from before
    /// it, though some of its records are still held.
    async fn a_revision_pruned_in_several_batches_is_gone_from_the_first(backend) {
        let clock = start();
        let app = spawn(backend, &clock, 3).await;
        old_and_new(&app, &clock).await;
        // Records 1-3: the token, acme and ada; then three of the import's
        // five, which takes revision 4.
        let first = app.pruner.batch().await.unwrap();
        assert_eq!((first.records, first.pruned.revision, first.more), (3, 3, true));
        let second = app.pruner.batch().await.unwrap();
        assert_eq!((second.records, second.pruned.revision), (3, 4));
        assert!(second.more);
        // Two of the import's five records are still held, and yet:
        let held = list(&app, 0).await.unwrap();
        assert_eq!(held.iter().filter(|c| c.revision == 4 && !c.refused).count(), 2);
        assert_status(list(&app, 3).await, Code::OutOfRange, &["the oldest revision held is 5"]);
        assert_status(watch(&app, 3).await, Code::OutOfRange, &["the oldest revision held is 5"]);
        let third = app.pruner.batch().await.unwrap();
        // The import's last two and the refusal.
        assert_eq!((third.records, third.pruned.revision), (3, 4));
        let last = app.pruner.batch().await.unwrap();
        assert_eq!((last.records, last.more), (0, false));
        assert_eq!(list(&app, 0).await.unwrap().len(), 1);
    }
}

on_both_backends! {
    /// A page token from before what is kept is refused too, rather than
    /// listing on from the oldest record as if nothing were missing.
    async fn a_page_token_overtaken_by_pruning_is_out_of_range(backend) {
        let clock = start();
        let app = spawn(backend, &clock, 1000).await;
        old_and_new(&app, &clock).await;
        let page = app
            .audit
            .clone()
            .list_changes(pb::ListChangesRequest {
                page_size: 2,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!page.next_page_token.is_empty());
        app.pruner.pass().await.unwrap();
        let next = app
            .audit
            .clone()
            .list_changes(pb::ListChangesRequest {
                page_size: 2,
                page_token: page.next_page_token,
                ..Default::default()
            })
            .await;
        assert_status(next, Code::OutOfRange, &["page_token", "the oldest revision held is 5"]);
    }
}

on_both_backends! {
    /// Writes and checks are served while a long pass prunes in small
    /// batches; afterwards the trail starts at the retained window.
    async fn writes_and_checks_go_on_while_pruning(backend) {
        let clock = start();
        let app = spawn(backend, &clock, 20).await;
        app.create_account("acme", "work").await;
        app.import_users("old", 2000).await;
        for i in 0..20 {
            app.put_user("acme", &format!("single{i}")).await;
        }
        clock.advance(2 * HOUR);
        let first_new = app.revision().await + 1;
        let pruner = app.pruner.clone();
        let pass = tokio::spawn(async move { pruner.pass().await });
        let mut writes = 0;
        let mut checks = 0;
        while !pass.is_finished() || writes < 10 {
            let user = format!("new{writes}");
            app.put_user("acme", &user).await;
            writes += 1;
            for _ in 0..10 {
                let answer = app.check("acme", "old0001").await;
                assert!(answer.revision >= first_new);
                checks += 1;
            }
            assert!(writes < 10_000, "the pass never ended");
        }
        let report = pass.await.unwrap().unwrap();
        assert_eq!(report.records, 2022, "{report:?}");
        assert!(report.batches > 100);
        let kept = list(&app, 0).await.unwrap();
        assert_eq!(kept.len(), writes);
        assert!(kept.iter().all(|c| c.revision >= first_new));
        assert_eq!(report.pruned.oldest_revision_held(), first_new);
        assert!(checks >= 100);
    }
}

/// Two replicas of one database pruning at once do not fight: each batch
/// is taken by one of them, nothing is pruned twice or left behind, and
/// both then refuse the same revisions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_prune_one_database_without_fighting() {
    if !common::postgres::available().await {
        return;
    }
    let db = common::postgres::TestDatabase::create().await;
    let clock = start();
    let options = || Options {
        store: Some(entitled::store::Location::Postgres(db.url.clone())),
        clock: Some(clock.clock()),
        retention: Some(RetentionOptions {
            keep: Some(HOUR),
            every: Duration::from_secs(24 * 3600),
            batch: 7,
            request_batch: 7,
            pause: Duration::ZERO,
            busy_percent: 100,
        }),
        ..Options::default()
    };
    let first_dir = tempfile::tempdir().unwrap();
    let first = TestApp::start(first_dir.path(), options()).await;
    let second_dir = tempfile::tempdir().unwrap();
    let second =
        TestApp::start_with_secret(second_dir.path(), options(), first.operator_secret.clone())
            .await;
    first.create_account("acme", "work").await;
    let import = first.import_users("u", 300).await;
    clock.advance(2 * HOUR);
    let kept = second.put_user("acme", "carl").await.revision;
    let (a, b) = tokio::join!(first.pruner.pass(), second.pruner.pass());
    let (a, b) = (a.unwrap(), b.unwrap());
    // Whichever took the batches, the old records went once each: the
    // token, acme and the import's 300.
    let more =
        first.pruner.pass().await.unwrap().records + second.pruner.pass().await.unwrap().records;
    assert_eq!(a.records + b.records + more, 302, "{a:?} {b:?}");
    for app in [&first, &second] {
        let held = list(app, 0).await.unwrap();
        assert_eq!(held.iter().map(|c| c.revision).collect::<Vec<_>>(), [kept]);
        assert_status(
            list(app, import - 1).await,
            Code::OutOfRange,
            &[&format!("the oldest revision held is {kept}")],
        );
    }
}

/// A server keeping every audit record (no retention): its passes sweep
/// expired request records only, `batch` at a time.
async fn spawn_keeping_the_trail(
    backend: common::Backend,
    clock: &ManualClock,
    batch: usize,
) -> TestApp {
    TestApp::spawn_with(Options {
        backend,
        clock: Some(clock.clock()),
        retention: Some(RetentionOptions {
            keep: None,
            every: Duration::from_secs(24 * 3600),
            batch,
            request_batch: batch,
            pause: Duration::ZERO,
            busy_percent: 100,
        }),
        ..Options::default()
    })
    .await
}

/// PutUser of `acme`'s `user` named `name`, sent with `request_id`.
async fn put(app: &TestApp, user: &str, name: &str, request_id: &str) -> pb::PutUserResponse {
    app.provisioning
        .clone()
        .put_user(pb::PutUserRequest {
            account_id: "acme".into(),
            user_id: user.into(),
            display_name: name.into(),
            request_id: request_id.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// How many records a backup of the store holds (request records among
/// them).
async fn records_held(app: &TestApp) -> u64 {
    let mut stream = app
        .clients(Some(&app.operator_secret))
        .backup
        .backup(pb::BackupRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        bytes.extend_from_slice(&message.chunk);
    }
    entitled::store::verify(bytes.as_slice()).unwrap().entries
}

on_both_backends! {
    /// A request record past its window (and the grace) is deleted by a
    /// pass without an audit retention; one within it stays and replays;
    /// the old id is then a new request, as it was past the window before.
    async fn an_expired_request_record_goes_and_one_within_its_window_replays(backend) {
        let clock = start();
        let app = spawn_keeping_the_trail(backend, &clock, 100).await;
        app.create_account("acme", "work").await;
        put(&app, "ada", "Ada", "old").await;
        clock.advance(12 * HOUR);
        let young = put(&app, "bob", "Bob", "young").await;
        let held = records_held(&app).await;

        // Just short of the window and the grace: nothing goes.
        clock.advance(REQUEST_ID_WINDOW + REQUEST_PRUNE_GRACE - 12 * HOUR - Duration::from_secs(60));
        let report = app.pruner.pass().await.unwrap();
        assert_eq!((report.requests, report.records), (0, 0), "{report:?}");
        assert_eq!(records_held(&app).await, held);

        // Past them: `old`'s record goes, `young`'s stays.
        clock.advance(Duration::from_secs(120));
        let report = app.pruner.pass().await.unwrap();
        assert_eq!((report.requests, report.records), (1, 0), "{report:?}");
        assert_eq!(records_held(&app).await, held - 1);
        assert_eq!(app.pruner.pass().await.unwrap().requests, 0);

        // `young`, 13 hours old, replays: the first answer, nothing new.
        let revision = app.revision().await;
        assert_eq!(put(&app, "bob", "Bob", "young").await, young);
        assert_eq!(app.revision().await, revision);
        // `old` is a new request, applied.
        let again = put(&app, "ada", "Ada Lovelace", "old").await;
        assert_eq!(again.revision, revision + 1);
        assert_eq!(again.user.unwrap().display_name, "Ada Lovelace");
        // And its retry replays the new answer.
        assert_eq!(put(&app, "ada", "Ada Lovelace", "old").await.revision, revision + 1);
        assert_eq!(app.revision().await, revision + 1);
    }
}

on_both_backends! {
    /// A caller sending fresh request ids (no-op writes: each keeps a
    /// request record and nothing else) for four windows leaves the store
    /// holding the last window's records only, swept in batches of 2. Each
    /// window's ids sort before the last's, so on sled a sweep's first
    /// batches read only records still honoured (20 at most each) and go
    /// on from where they stopped.
    async fn request_records_do_not_grow_under_fresh_request_ids(backend) {
        let clock = start();
        let app = spawn_keeping_the_trail(backend, &clock, 2).await;
        app.create_account("acme", "work").await;
        app.put_user("acme", "ada").await;
        let mut held = Vec::new();
        for window in 0..4 {
            for i in 0..30 {
                let id = format!("{}-{i:02}", 9 - window);
                let answer = put(&app, "ada", "User ada", &id).await;
                assert_eq!(answer.revision, 3, "a no-op");
            }
            // 13 hours on, the records of the window before are 26 hours
            // old: past the window and the grace.
            clock.advance(13 * HOUR);
            let report = app.pruner.pass().await.unwrap();
            let expected = if window == 0 { 0 } else { 30 };
            assert_eq!(report.requests, expected, "window {window}: {report:?}");
            if window > 0 {
                assert!(report.request_batches >= 15, "batches of 2: {report:?}");
            }
            held.push(records_held(&app).await);
        }
        assert!(held.windows(2).all(|w| w[0] == w[1]), "records held after each pass: {held:?}");
        // The last window's ids still replay: the same id with another
        // request is refused as reused.
        let reused = app
            .provisioning
            .clone()
            .put_user(pb::PutUserRequest {
                account_id: "acme".into(),
                user_id: "ada".into(),
                display_name: "Someone else".into(),
                request_id: "6-00".into(),
            })
            .await;
        assert_status(reused, Code::FailedPrecondition, &["6-00"]);
    }
}
