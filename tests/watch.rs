//! WatchEntitlements: history then live, the account filter, heartbeats,
//! OUT_OF_RANGE beyond the history kept, slow consumers, and resuming after
//! a reconnect without a gap or a duplicate. Each test runs on sled and on
//! PostgreSQL.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use std::time::{Duration, SystemTime};

use common::{ManualClock, Options, T, TestApp, assert_status};
use entitled::{proto::v1 as pb, service::WatchOptions};
use pb::watch_entitlements_response::Event;
use tonic::{Code, Streaming};

async fn watch(
    app: &TestApp,
    account: &str,
    after_revision: u64,
) -> Result<Streaming<pb::WatchEntitlementsResponse>, tonic::Status> {
    app.access
        .clone()
        .watch_entitlements(pb::WatchEntitlementsRequest {
            account_id: account.into(),
            after_revision,
        })
        .await
        .map(|r| r.into_inner())
}

/// The next event, within 5 s.
async fn next(stream: &mut Streaming<pb::WatchEntitlementsResponse>) -> Event {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("no event within 5 s")
        .unwrap()
        .expect("the stream ended")
        .event
        .unwrap()
}

async fn next_change(
    stream: &mut Streaming<pb::WatchEntitlementsResponse>,
) -> pb::EntitlementChange {
    loop {
        match next(stream).await {
            Event::Change(c) => return c,
            Event::Heartbeat(_) | Event::Account(_) => {}
        }
    }
}

/// The revision an ended watch says to resume after
/// (`entitled-resume-after`).
fn resume_point(status: &tonic::Status) -> u64 {
    status
        .metadata()
        .get("entitled-resume-after")
        .unwrap_or_else(|| panic!("no resume point in {status:?}"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn summary(c: &pb::EntitlementChange) -> (String, String, String, i32, bool, bool) {
    (
        c.account_id.clone(),
        c.user_id.clone(),
        c.after_edition.clone(),
        c.after_tier,
        c.created,
        c.deleted,
    )
}

on_both_backends! {
    /// The regression for a bug a read of ARCHITECTURE.md found: a token made
    /// for an account admin that names its own user was sent as a change of
    /// that user (created and deleted at once), though no user changed.
    async fn a_token_that_names_a_user_is_no_change_of_that_user(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        app.put_user("acme", "ada").await;
        app.token("ada admin", pb::Role::AccountAdmin, "acme", "ada")
            .await;
        let bob = app.put_user("acme", "bob").await.revision;
        let mut stream = watch(&app, "", 0).await.unwrap();
        assert_eq!(next_change(&mut stream).await.user_id, "ada");
        let next = next_change(&mut stream).await;
        assert_eq!(
            (next.user_id.as_str(), next.revision),
            ("bob", bob),
            "{next:?}"
        );
    }
}

on_both_backends! {
    async fn history_then_live_in_revision_order(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        app.put_user("acme", "ada").await;
        let r = app
            .set("acme", "ada", Some("X8"), Some(T::Supervisor))
            .await
            .unwrap();
        let mut stream = watch(&app, "", 0).await.unwrap();
        let created = next_change(&mut stream).await;
        assert_eq!(
            summary(&created),
            (
                "acme".into(),
                "ada".into(),
                String::new(),
                T::None as i32,
                true,
                false
            )
        );
        let set = next_change(&mut stream).await;
        assert_eq!(set.revision, r.revision);
        assert_eq!(
            (set.before_edition.as_str(), set.before_tier),
            ("", T::None as i32)
        );
        assert_eq!(
            (set.after_edition.as_str(), set.after_tier),
            ("X8", T::Supervisor as i32)
        );

        // Live: a downgrade, a delete.
        let down = app.set("acme", "ada", Some("X2"), None).await.unwrap();
        let change = next_change(&mut stream).await;
        assert_eq!(
            (change.revision, change.after_tier, change.before_tier),
            (down.revision, T::Essentials as i32, T::Supervisor as i32)
        );
        let deleted = app
            .provisioning
            .clone()
            .delete_user(pb::DeleteUserRequest {
                account_id: "acme".into(),
                user_id: "ada".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let change = next_change(&mut stream).await;
        assert_eq!((change.revision, change.deleted), (deleted.revision, true));
        assert!(created.revision < set.revision && set.revision < down.revision);
    }
}

on_both_backends! {
    async fn the_account_filter_and_heartbeats(backend) {
        let app = TestApp::spawn_with(Options {
            backend,
            watch: Some(WatchOptions {
                heartbeat: Duration::from_millis(200),
                ..WatchOptions::default()
            }),
            ..Options::default()
        })
        .await;
        app.create_account("acme", "work").await;
        app.create_account("globex", "work").await;
        let mut stream = watch(&app, "acme", 0).await.unwrap();
        app.put_user("globex", "gus").await;
        app.put_user("acme", "ada").await;
        let change = next_change(&mut stream).await;
        assert_eq!(
            (change.account_id.as_str(), change.user_id.as_str()),
            ("acme", "ada")
        );

        // Writes elsewhere keep coming, but this watcher hears nothing: a
        // heartbeat with the revision reached arrives all the same.
        let writer = {
            let app_p = app.provisioning.clone();
            tokio::spawn(async move {
                let mut p = app_p;
                for i in 0..20 {
                    let put = pb::PutUserRequest {
                        account_id: "globex".into(),
                        user_id: format!("g{i}"),
                        ..Default::default()
                    };
                    p.put_user(put).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            })
        };
        let Event::Heartbeat(beat) = next(&mut stream).await else {
            panic!("a change of another account leaked into the watch")
        };
        assert!(beat.revision >= change.revision);
        writer.await.unwrap();
        // Once idle, a heartbeat carries the current revision (earlier ones,
        // sent during the burst, may still be on their way: never backwards).
        let current = app.revision().await;
        let mut reached = beat.revision;
        while reached < current {
            let Event::Heartbeat(beat) = next(&mut stream).await else {
                panic!("a change of another account leaked into the watch")
            };
            assert!(beat.revision >= reached, "heartbeats never go back");
            reached = beat.revision;
        }
        assert_eq!(reached, current);
    }
}

on_both_backends! {
    async fn resuming_after_a_reconnect_loses_and_repeats_nothing(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        for i in 0..10 {
            app.put_user("acme", &format!("u{i}")).await;
        }
        let mut first = watch(&app, "acme", 0).await.unwrap();
        let mut seen: Vec<u64> = Vec::new();
        for _ in 0..4 {
            seen.push(next_change(&mut first).await.revision);
        }
        drop(first);
        // Changes while disconnected.
        for i in 10..15 {
            app.put_user("acme", &format!("u{i}")).await;
        }
        let mut resumed = watch(&app, "acme", *seen.last().unwrap()).await.unwrap();
        for _ in 4..15 {
            seen.push(next_change(&mut resumed).await.revision);
        }
        // The whole history, for comparison.
        let mut all = watch(&app, "acme", 0).await.unwrap();
        let mut want = Vec::new();
        for _ in 0..15 {
            want.push(next_change(&mut all).await.revision);
        }
        assert_eq!(seen, want, "no gap, no duplicate");
    }
}

on_both_backends! {
    async fn a_revision_older_than_the_history_kept_is_out_of_range(backend) {
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let app = TestApp::spawn_with(Options {
            backend,
            clock: Some(clock.clock()),
            ..Options::default()
        })
        .await;
        app.create_account("acme", "work").await;
        app.put_user("acme", "ada").await;
        clock.advance(Duration::from_secs(7 * 24 * 3600 + 1));
        assert_status(
            watch(&app, "", 0).await,
            Code::OutOfRange,
            &[
                "older than the 7days of history kept",
                "list the users again",
            ],
        );
        let recent = app.put_user("acme", "bob").await.revision;
        let mut stream = watch(&app, "", recent - 1).await.unwrap();
        assert_eq!(next_change(&mut stream).await.user_id, "bob");
        // Nothing yet after the latest revision: not out of range, just quiet.
        assert!(watch(&app, "", recent).await.is_ok());
    }
}

/// A watch of `acme` from the start over HTTP/2 windows of 64 KiB: tonic's
/// client default of 2 MiB would take thousands of changes while a test
/// reads nothing.
async fn small_window_watch(app: &TestApp) -> Streaming<pb::WatchEntitlementsResponse> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    common::clients(&channel, Some(&app.operator_secret))
        .access
        .watch_entitlements(pb::WatchEntitlementsRequest {
            account_id: "acme".into(),
            after_revision: 0,
        })
        .await
        .unwrap()
        .into_inner()
}

/// How a watch that was cut off as too slow ended: the changes it got
/// before the cut, in order, and the status.
struct CutOff {
    received: Vec<pb::EntitlementChange>,
    status: tonic::Status,
}

/// Opens a small-window watch of `acme` from the start (whose history is
/// far longer than the buffer and the windows), reads nothing for a while,
/// then reads to the end. The server cuts the client off once its buffer
/// has stayed full for `stall`; how soon after the watch opens that happens
/// depends on the machine, so a client that was served whole (it began
/// reading before the server gave up) tries again, pausing twice as long,
/// up to 16 s: the outcome, not a clock, decides.
async fn watch_until_cut_off(app: &TestApp, history: usize) -> CutOff {
    let mut pause = Duration::from_millis(500);
    loop {
        let mut stream = small_window_watch(app).await;
        // On purpose, the client reads nothing for a while.
        tokio::time::sleep(pause).await;
        let mut received = Vec::new();
        let ended = loop {
            match tokio::time::timeout(Duration::from_secs(10), stream.message())
                .await
                .expect("stalled")
            {
                Ok(Some(pb::WatchEntitlementsResponse {
                    event: Some(Event::Change(c)),
                })) => {
                    received.push(c);
                    if received.len() == history {
                        break None;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => panic!(
                    "the stream ended without an error after {} changes",
                    received.len()
                ),
                Err(status) => break Some(status),
            }
        };
        match ended {
            Some(status) => return CutOff { received, status },
            None if pause < Duration::from_secs(16) => pause *= 2,
            None => {
                panic!("read every change without being cut off, after pauses of up to {pause:?}")
            }
        }
    }
}

on_both_backends! {
    async fn a_slow_consumer_is_cut_off_and_can_resume(backend) {
        let app = TestApp::spawn_with(Options {
            backend,
            watch: Some(WatchOptions {
                buffer: 8,
                stall: Duration::from_millis(100),
                ..WatchOptions::default()
            }),
            ..Options::default()
        })
        .await;
        app.create_account("acme", "work").await;
        // Far more changes than the buffer and the transport's windows hold.
        app.import_users("u", 4000).await;
        let CutOff { received, status } = watch_until_cut_off(&app, 4000).await;
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        let resume_after = resume_point(&status);
        assert!(
            status
                .message()
                .contains(&format!("resume with after_revision {resume_after}")),
            "{status:?}"
        );
        assert!(received.len() < 4000, "cut off before the end");
        // What it got is the history's beginning, in order.
        for (i, change) in received.iter().enumerate() {
            assert_eq!(change.user_id, format!("u{i:04}"));
        }
        // Changes made after the cut-off.
        let mut later = Vec::new();
        for user in ["v1", "v2", "v3"] {
            later.push((user, app.put_user("acme", user).await.revision));
        }
        // Resumed after the revision the status names: the import was cut in
        // the middle, so that is the one before it, and the import comes again
        // whole; then exactly the changes after it, in order.
        let import = received
            .last()
            .expect("some changes before the cut")
            .revision;
        assert_eq!(resume_after, import - 1);
        let mut resumed = watch(&app, "acme", resume_after).await.unwrap();
        for i in 0..4000 {
            let change = next_change(&mut resumed).await;
            assert_eq!(
                (change.user_id.as_str(), change.revision),
                (format!("u{i:04}").as_str(), import)
            );
        }
        for (user, revision) in later {
            let change = next_change(&mut resumed).await;
            assert_eq!(
                (change.user_id.as_str(), change.revision),
                (user, revision),
                "{change:?}"
            );
            assert!(change.created, "{change:?}");
        }
    }
}

on_both_backends! {
    /// The regression for a bug this test found: a write that changes many
    /// users (an import) gives all its changes one revision, and a watch cut
    /// off in the middle of them was told to resume "from the last revision
    /// received", which starts after that revision, so the import's changes it
    /// had not yet received were never delivered: a gateway's cache missed
    /// them. The status now names the revision to resume after (the last one
    /// sent whole), in its message and in `entitled-resume-after`.
    async fn a_watch_cut_off_inside_an_import_resumes_without_losing_the_rest_of_it(backend) {
        let app = TestApp::spawn_with(Options {
            backend,
            watch: Some(WatchOptions {
                buffer: 8,
                stall: Duration::from_millis(100),
                ..WatchOptions::default()
            }),
            ..Options::default()
        })
        .await;
        app.create_account("acme", "work").await;
        app.import_users("u", 4000).await;
        let CutOff { received, status } = watch_until_cut_off(&app, 4000).await;
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        let last = resume_point(&status);
        // A write after the import marks the end of what the resumed watch
        // must deliver.
        let marker = app.put_user("acme", "marker").await.revision;
        let mut resumed = watch(&app, "acme", last).await.unwrap();
        let mut users: std::collections::BTreeSet<String> =
            received.iter().map(|c| c.user_id.clone()).collect();
        loop {
            let change = next_change(&mut resumed).await;
            if change.revision == marker {
                break;
            }
            users.insert(change.user_id);
        }
        let missing: Vec<String> = (0..4000)
            .map(|i| format!("u{i:04}"))
            .filter(|u| !users.contains(u))
            .collect();
        assert!(
            missing.is_empty(),
            "cut off after {} of the import's 4000 changes (revision {last}) and resumed from that revision: {} never delivered (first: {:?})",
            received.len(),
            missing.len(),
            missing.first()
        );
    }
}

on_both_backends! {
    /// The regression for a bug the long crash run found: a watch replaying a
    /// history longer than its buffer was cut off as a slow consumer at once,
    /// however fast its client read, so a gateway could not resume from far
    /// back. A client that keeps reading now gets the whole history.
    async fn a_history_longer_than_the_buffer_replays_whole_to_a_client_that_reads(backend) {
        let app = TestApp::spawn_with(Options {
            backend,
            watch: Some(WatchOptions {
                buffer: 8,
                ..WatchOptions::default()
            }),
            ..Options::default()
        })
        .await;
        app.create_account("acme", "work").await;
        app.import_users("u", 2000).await;
        let mut stream = watch(&app, "acme", 0).await.unwrap();
        for i in 0..2000 {
            assert_eq!(next_change(&mut stream).await.user_id, format!("u{i:04}"));
        }
    }
}

on_both_backends! {
    async fn an_account_admin_watches_only_its_account(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        let admin = app.clients(Some(
            &app.token("acme admin", pb::Role::AccountAdmin, "acme", "")
                .await,
        ));
        let open = |account: &str| {
            let mut access = admin.access.clone();
            let request = pb::WatchEntitlementsRequest {
                account_id: account.into(),
                after_revision: 0,
            };
            async move { access.watch_entitlements(request).await.map(drop) }
        };
        assert!(open("acme").await.is_ok());
        assert_status(
            open("globex").await,
            Code::PermissionDenied,
            &["may not act on account `globex`"],
        );
        assert_status(
            open("").await,
            Code::PermissionDenied,
            &["set account_id to `acme`"],
        );
    }
}

on_both_backends! {
    /// Found in review: a stop waited for a watch to finish its replay, as long
    /// as its client kept reading, so one slow reader could hold a stop open
    /// for minutes. A stop now ends a replay at once.
    async fn a_graceful_stop_ends_a_watch_in_the_middle_of_its_replay(backend) {
        let mut app = TestApp::spawn_with(Options {
            backend,
            watch: Some(WatchOptions {
                buffer: 8,
                ..WatchOptions::default()
            }),
            ..Options::default()
        })
        .await;
        app.create_account("acme", "work").await;
        app.import_users("u", 4000).await;
        let import = app.revision().await;
        let mut stream = small_window_watch(&app).await;
        for _ in 0..10 {
            next_change(&mut stream).await;
        }
        app.begin_shutdown();
        let mut received = 10;
        let status = loop {
            match tokio::time::timeout(Duration::from_secs(5), stream.message())
                .await
                .expect("the watch was not ended")
            {
                Ok(Some(_)) => {
                    received += 1;
                    // A client that keeps reading, slowly.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Ok(None) => panic!("ended without saying why"),
                Err(status) => break status,
            }
        };
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            received < 4000,
            "the whole replay was sent after the stop began"
        );
        // Stopped in the middle of the import's changes, which share one
        // revision: the watch must resume before that revision, or the rest of
        // the import would be lost (the import is the store's latest write).
        assert_eq!(resume_point(&status), import - 1, "{status:?}");
        drop(stream);
        tokio::time::timeout(Duration::from_secs(10), app.stop())
            .await
            .expect("the stop waited on the watch");
    }
}

on_both_backends! {
    async fn a_graceful_stop_ends_open_watches(backend) {
        let mut app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        let ada = app.put_user("acme", "ada").await.revision;
        let mut stream = watch(&app, "", 0).await.unwrap();
        assert_eq!(next_change(&mut stream).await.user_id, "ada");
        app.begin_shutdown();
        let status = loop {
            match tokio::time::timeout(Duration::from_secs(5), stream.message())
                .await
                .expect("the watch was not ended")
            {
                Ok(Some(_)) => {}
                Ok(None) => panic!("ended without saying why"),
                Err(status) => break status,
            }
        };
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            status
                .message()
                .contains("resume the watch with after_revision")
        );
        // Everything was sent: resume after the last write.
        assert_eq!(resume_point(&status), ada);
        drop(stream);
        tokio::time::timeout(Duration::from_secs(10), app.stop())
            .await
            .expect("the stop waited on the watch");
    }
}
