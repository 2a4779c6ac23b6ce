//! The real binary killed (SIGKILL) at arbitrary moments under concurrent
//! writers, and stopped (SIGTERM) under load: every acknowledged write is
//! there after a restart, revisions have no gaps, the audit trail agrees
//! with the data, and the Watch feed, followed live and resumed after each
//! restart, has every change exactly once. CI runs 20 kill cycles; `ENTITLED_CRASH_CYCLES=500 cargo
//! test --release --test crash -- --nocapture` runs more.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use std::{collections::HashMap, time::Duration};

use common::{Clients, T, process::Server, within};
use entitled::proto::v1 as pb;
use pb::watch_entitlements_response::Event;
use tokio::sync::{mpsc, watch};

/// How long any one step of the load may take before the test fails
/// rather than hangs (each takes milliseconds).
const LOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// An acknowledged write: a user, the services it was given, and the
/// user's revision after it (a no-op leaves the revision where it was).
#[derive(Debug)]
struct Ack {
    user: String,
    tier: T,
    revision: u64,
}

/// Writers that run flat out until the server goes away; each reports every
/// write the server acknowledged. Writer 0 races the others on a shared
/// user with expected_revision.
fn writers(
    clients: &Clients,
    tag: &str,
    acks: &mpsc::UnboundedSender<Ack>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..8)
        .map(|w| {
            let mut p = clients.provisioning.clone();
            let acks = acks.clone();
            let tag = tag.to_owned();
            tokio::spawn(async move {
                for i in 0.. {
                    let (user, tier) = if w < 2 {
                        (
                            "shared".to_owned(),
                            if i % 2 == 0 {
                                T::Supervisor
                            } else {
                                T::Essentials
                            },
                        )
                    } else {
                        (
                            format!("{tag}-w{w}-{i}"),
                            if i % 2 == 0 {
                                T::Supervisor
                            } else {
                                T::Essentials
                            },
                        )
                    };
                    if w >= 2 {
                        let put = pb::PutUserRequest {
                            account_id: "work".into(),
                            user_id: user.clone(),
                            ..Default::default()
                        };
                        if p.put_user(put).await.is_err() {
                            return;
                        }
                    }
                    let expected_revision = if w < 2 {
                        match p
                            .get_user(pb::GetUserRequest {
                                account_id: "work".into(),
                                user_id: user.clone(),
                            })
                            .await
                        {
                            Ok(r) => r.into_inner().user.map(|u| u.revision),
                            Err(_) => return,
                        }
                    } else {
                        None
                    };
                    let set = pb::UpdateUserServicesRequest {
                        account_id: "work".into(),
                        user_id: user.clone(),
                        edition: Some("X8".into()),
                        analytics_tier: Some(tier as i32),
                        expected_revision,
                        ..Default::default()
                    };
                    match p.update_user_services(set).await {
                        Ok(reply) => {
                            let _ = acks.send(Ack {
                                user,
                                tier,
                                revision: reply.into_inner().user.map_or(0, |u| u.revision),
                            });
                        }
                        Err(status) if status.code() == tonic::Code::Aborted => {}
                        Err(_) => return,
                    }
                }
            })
        })
        .collect()
}

/// The account the writers use, and the user two of them race on.
async fn seed(clients: &Clients) {
    let mut p = clients.provisioning.clone();
    let account = pb::CreateAccountRequest {
        account_id: "work".into(),
        product_line: "work".into(),
        ..Default::default()
    };
    p.create_account(account).await.unwrap();
    let shared = pb::PutUserRequest {
        account_id: "work".into(),
        user_id: "shared".into(),
        ..Default::default()
    };
    p.put_user(shared).await.unwrap();
}

/// Every acknowledged write is there; the shared user is at least at its
/// last acknowledged revision.
async fn verify(clients: &Clients, acked: &HashMap<String, Ack>) {
    let mut p = clients.provisioning.clone();
    for (user, ack) in acked {
        let stored = p
            .get_user(pb::GetUserRequest {
                account_id: "work".into(),
                user_id: user.clone(),
            })
            .await
            .unwrap_or_else(|s| panic!("acknowledged user `{user}` lost: {}", s.message()))
            .into_inner()
            .user
            .unwrap();
        if user == "shared" {
            assert!(
                stored.revision >= ack.revision,
                "shared user went back: {stored:?} < {ack:?}"
            );
        } else {
            assert_eq!(
                stored.analytics_tier, ack.tier as i32,
                "acknowledged write to `{user}` lost"
            );
        }
    }
}

/// Revisions 1..=current each appear in the audit trail (no gap), and each
/// user's last applied record matches the user as stored.
async fn verify_audit(clients: &Clients) {
    let current = store_revision(clients).await;
    let mut audit = clients.audit.clone();
    let mut seen = vec![false; current as usize + 1];
    let mut last: HashMap<String, pb::Change> = HashMap::new();
    let mut page_token = String::new();
    loop {
        let page = audit
            .list_changes(pb::ListChangesRequest {
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for change in page.changes {
            if change.refused {
                continue;
            }
            assert!(
                change.revision <= current,
                "audit record beyond the store: {change:?}"
            );
            seen[change.revision as usize] = true;
            if !change.user_id.is_empty() {
                last.insert(change.user_id.clone(), change);
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let gaps: Vec<usize> = (1..seen.len()).filter(|r| !seen[*r]).collect();
    assert!(gaps.is_empty(), "revisions with no audit record: {gaps:?}");
    let mut p = clients.provisioning.clone();
    for (user, change) in last {
        let stored = p
            .get_user(pb::GetUserRequest {
                account_id: "work".into(),
                user_id: user.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .user
            .unwrap();
        let after = change.after.unwrap();
        assert_eq!(
            (stored.edition.as_str(), stored.analytics_tier),
            (after.edition.as_str(), after.analytics_tier),
            "audit disagrees with `{user}`"
        );
        assert_eq!(stored.revision, change.revision);
    }
}

/// Follows the feed of the writers' account after `after` until the
/// server goes away; returns the changes it saw, and tells `seen` how many
/// so far. A watch the server itself refuses or ends (rather than the kill
/// cutting it) fails the test.
fn watcher(
    clients: &Clients,
    after: u64,
    seen_count: watch::Sender<usize>,
) -> tokio::task::JoinHandle<Vec<pb::EntitlementChange>> {
    let mut access = clients.access.clone();
    tokio::spawn(async move {
        let mut seen = Vec::new();
        let request = pb::WatchEntitlementsRequest {
            account_id: "work".into(),
            after_revision: after,
        };
        let ended = match access.watch_entitlements(request).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(message)) => {
                            if let Some(Event::Change(change)) = message.event {
                                seen.push(change);
                                seen_count.send_replace(seen.len());
                            }
                        }
                        Ok(None) => panic!("the watch ended cleanly while the server ran"),
                        Err(status) => break status,
                    }
                }
            }
            Err(status) => status,
        };
        use tonic::Code;
        assert!(
            !matches!(
                ended.code(),
                Code::ResourceExhausted
                    | Code::OutOfRange
                    | Code::InvalidArgument
                    | Code::PermissionDenied
                    | Code::Unauthenticated
            ),
            "the server ended the watch: {ended:?}"
        );
        seen
    })
}

/// Appends what a watch resumed after the feed's last revision saw, and
/// checks the feed has no gap and no repeat: after the seed every write
/// changes exactly one user of the account, so the changes' revisions are
/// consecutive.
fn extend_feed(feed: &mut Vec<pb::EntitlementChange>, more: Vec<pb::EntitlementChange>) {
    for change in more {
        if let Some(last) = feed.last() {
            assert_eq!(
                change.revision,
                last.revision + 1,
                "the feed skipped or repeated a revision: {last:?} then {change:?}"
            );
        }
        feed.push(change);
    }
}

/// The feed replayed from the start on the last server: the same changes as
/// were seen live across the kills, continued without a gap up to the
/// store's revision, and holding every acknowledged write.
async fn verify_feed(
    clients: &Clients,
    live: &[pb::EntitlementChange],
    acked: &HashMap<String, Ack>,
) {
    let current = store_revision(clients).await;
    let mut stream = clients
        .access
        .clone()
        .watch_entitlements(pb::WatchEntitlementsRequest {
            account_id: "work".into(),
            after_revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut replay: Vec<pb::EntitlementChange> = Vec::new();
    while replay.last().is_none_or(|c| c.revision < current) {
        let message = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("the replay stalled before the store's revision")
            .unwrap()
            .expect("the replay ended before the store's revision");
        if let Some(Event::Change(change)) = message.event {
            extend_feed(&mut replay, vec![change]);
        }
    }
    assert!(live.len() <= replay.len());
    for (seen, again) in live.iter().zip(&replay) {
        assert_eq!(seen, again, "a change replayed unlike it was seen live");
    }
    let by_revision: HashMap<u64, &pb::EntitlementChange> =
        replay.iter().map(|c| (c.revision, c)).collect();
    for ack in acked.values().filter(|a| a.user != "shared") {
        let change = by_revision
            .get(&ack.revision)
            .unwrap_or_else(|| panic!("acknowledged {ack:?} is not in the feed"));
        assert_eq!(
            (change.user_id.as_str(), change.after_tier),
            (ack.user.as_str(), ack.tier as i32)
        );
    }
}

async fn store_revision(clients: &Clients) -> u64 {
    clients
        .access
        .clone()
        .check_analytics_access(pb::CheckAnalyticsAccessRequest {
            account_id: "work".into(),
            user_id: "x".into(),
            min_revision: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_repeated_sigkill() {
    // At least 2: the feed must be resumed across a kill.
    let cycles = u64::from(common::count_from_env("ENTITLED_CRASH_CYCLES", 20, 2));
    let dir = tempfile::tempdir().unwrap();
    let mut acked: HashMap<String, Ack> = HashMap::new();
    // What the last cycle acknowledged, checked at once after each restart;
    // everything is checked again at the end.
    let mut recent: HashMap<String, Ack> = HashMap::new();
    let mut total = 0usize;
    // Every change the watchers saw, across all the cycles.
    let mut feed: Vec<pb::EntitlementChange> = Vec::new();
    // Cycles in which the watcher saw changes before the kill.
    let mut cycles_followed = 0u64;
    for cycle in 0..cycles {
        let server = Server::start(dir.path(), &[]);
        let clients = server.clients().await;
        if cycle == 0 {
            seed(&clients).await;
        }
        verify(&clients, &recent).await;
        // After every restart, not only at the end: no revision gap, and
        // the audit trail agrees with the data.
        verify_audit(&clients).await;
        acked.extend(recent.drain());
        let (seen_tx, mut seen) = watch::channel(0);
        let watch = watcher(&clients, feed.last().map_or(0, |c| c.revision), seen_tx);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let tasks = writers(&clients, &format!("c{cycle}"), &tx);
        drop(tx);
        // The kill comes at a point of the load, not of the clock: once the
        // watcher follows the feed (it has seen a change), and then after
        // 0 to 49 more acknowledged writes, a different number each cycle.
        within(LOAD_TIMEOUT, "a change seen by the watcher", async {
            seen.wait_for(|n| *n > 0)
                .await
                .expect("the watcher ended before it saw a change");
        })
        .await;
        let more = (cycle * 37) % 50;
        within(LOAD_TIMEOUT, "acknowledged writes before the kill", async {
            for _ in 0..more {
                let ack = rx.recv().await.expect("the writers stopped");
                total += 1;
                recent.insert(ack.user.clone(), ack);
            }
        })
        .await;
        server.kill();
        for t in tasks {
            within(LOAD_TIMEOUT, "a writer ending after the kill", t)
                .await
                .unwrap();
        }
        let followed = within(LOAD_TIMEOUT, "the watch ending after the kill", watch)
            .await
            .unwrap();
        cycles_followed += u64::from(!followed.is_empty());
        extend_feed(&mut feed, followed);
        while let Some(ack) = rx.recv().await {
            total += 1;
            recent.insert(ack.user.clone(), ack);
        }
    }
    acked.extend(recent.drain());
    let server = Server::start(dir.path(), &[]);
    let clients = server.clients().await;
    verify(&clients, &acked).await;
    verify_audit(&clients).await;
    verify_feed(&clients, &feed, &acked).await;
    assert!(total > 0, "no write was acknowledged");
    // Every cycle: the kill waits for the watcher's first change.
    assert_eq!(
        cycles_followed, cycles,
        "the watchers saw changes in only {cycles_followed} of {cycles} cycles"
    );
    println!(
        "{cycles} SIGKILL cycles, {total} acknowledged writes checked, {} changes followed live across the kills (in {cycles_followed} cycles)",
        feed.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_in_flight_calls_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let clients = server.clients().await;
    seed(&clients).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let tasks = writers(&clients, "term", &tx);
    drop(tx);
    // Under load: the stop comes once 50 writes are acknowledged, while the
    // writers go on.
    let mut acked = HashMap::new();
    within(LOAD_TIMEOUT, "50 acknowledged writes", async {
        for _ in 0..50 {
            let ack = rx.recv().await.expect("the writers stopped");
            acked.insert(ack.user.clone(), ack);
        }
    })
    .await;
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success(), "a graceful stop exits 0: {status:?}");
    for t in tasks {
        within(LOAD_TIMEOUT, "a writer ending after the stop", t)
            .await
            .unwrap();
    }
    while let Some(ack) = rx.recv().await {
        acked.insert(ack.user.clone(), ack);
    }
    let server = Server::start(dir.path(), &[]);
    let clients = server.clients().await;
    verify(&clients, &acked).await;
    verify_audit(&clients).await;
}
