//! Faults under replicas on one PostgreSQL database (issue 11, "Faults"),
//! against the real server, with each replica a real `entitled serve`
//! process: the database stopped while replicas serve, a replica killed
//! under write load, a COMMIT whose outcome the replica cannot know, and
//! what a lost connection or a refused write must not leave behind (a
//! broken batch, the write lock held, a refusal unrecorded). The
//! database's faults are made by a TCP proxy between the replicas and
//! PostgreSQL (`common/proxy.rs`), never by stopping the server that other
//! tests share. Each test gets a fresh database; without a PostgreSQL
//! server they are skipped (one line), or fail under
//! `ENTITLED_REQUIRE_POSTGRES=1`. `ENTITLED_PG_KILL_CYCLES` (default and
//! least 3) sets how many times, each replica in turn, the kill test
//! kills one.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use common::{
    Clients, T, metrics_answer,
    postgres::{self, TestDatabase},
    process::{
        BIN,
        child::{ServerChild, operator_token},
    },
    proxy::{Proxy, Sprung, Trap},
    within,
};
use entitled::proto::v1 as pb;
use tokio::sync::mpsc;
use tonic::{Code, Status};

/// How long a replica may take to notice that the database went away or
/// came back: its follower polls every 10 ms, and a connection attempt
/// gives up after 2 s.
const NOTICE: Duration = Duration::from_secs(10);
/// How long a step of a test's load may take before the test fails
/// rather than hangs (each takes milliseconds).
const STEP: Duration = Duration::from_secs(60);
/// Every call of the tests goes to this account.
const ACCOUNT: &str = "acme";

/// One replica: `entitled serve --store URL` as a process of its own.
struct Replica {
    child: ServerChild,
    metrics: SocketAddr,
    clients: Clients,
}

impl Replica {
    /// Starts a replica on `url`, with `dir` for its operator token file.
    /// The first replica of a database (`secret` None) makes the operator
    /// token and writes it there.
    async fn start(dir: &Path, url: &str, secret: Option<&str>) -> (Replica, String) {
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--store", url])
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir)
            .arg("--operator-token-file")
            .arg(dir.join("operator.token"))
            .env("RUST_LOG", "info")
            // The console's default port would be shared by every test.
            .env("ENTITLED_CONSOLE_LISTEN", "off")
            .stdout(Stdio::null());
        let child = tokio::task::spawn_blocking(move || {
            ServerChild::spawn(&mut command, Duration::from_secs(30))
        })
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
        let secret = match secret {
            Some(secret) => secret.to_owned(),
            None => operator_token(dir).unwrap(),
        };
        // Logged before the address `spawn` waited for.
        let log = child.log_text();
        let metrics = log
            .lines()
            .filter(|l| l.contains("serving metrics"))
            .find_map(|l| {
                l.split("addr=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no metrics address in the log:\n{log}"));
        let channel = common::endpoint(format!("http://{}", child.addr))
            .connect()
            .await
            .unwrap();
        let clients = common::clients(&channel, Some(&secret));
        (
            Replica {
                child,
                metrics,
                clients,
            },
            secret,
        )
    }

    /// The value of the gauge `name`, from `GET /metrics`.
    async fn gauge(&self, name: &str) -> f64 {
        let answer = metrics_answer(&self.metrics.to_string()).await;
        answer
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no `{name}` in the metrics:\n{answer}"))
    }

    /// Waits until the replica's metric says whether the database answers.
    async fn says_reachable(&self, reachable: bool) {
        let want = f64::from(u8::from(reachable));
        within(
            NOTICE,
            &format!("entitled_store_reachable {want} on {}", self.child.addr),
            async {
                while self.gauge("entitled_store_reachable").await != want {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        )
        .await;
    }

    /// Waits for the log lines that contain `piece`; returns them.
    async fn logged(&self, piece: &str) -> Vec<String> {
        within(NOTICE, &format!("a log line with `{piece}`"), async {
            loop {
                let lines: Vec<String> = self
                    .child
                    .log_text()
                    .lines()
                    .filter(|l| l.contains(piece))
                    .map(str::to_owned)
                    .collect();
                if !lines.is_empty() {
                    return lines;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }

    async fn put(&self, user: &str, request_id: &str) -> Result<pb::PutUserResponse, Status> {
        put(&self.clients, user, request_id).await
    }

    async fn set(
        &self,
        user: &str,
        tier: T,
        request_id: &str,
    ) -> Result<pb::UpdateUserServicesResponse, Status> {
        self.clients
            .provisioning
            .clone()
            .update_user_services(set_request(user, tier, request_id))
            .await
            .map(|r| r.into_inner())
    }

    /// A check of `user`, answered once the replica has reached
    /// `min_revision`.
    async fn check(&self, user: &str, min_revision: u64) -> pb::CheckAnalyticsAccessResponse {
        self.try_check(user, min_revision).await.unwrap()
    }

    async fn try_check(
        &self,
        user: &str,
        min_revision: u64,
    ) -> Result<pb::CheckAnalyticsAccessResponse, Status> {
        self.clients
            .access
            .clone()
            .check_analytics_access(pb::CheckAnalyticsAccessRequest {
                account_id: ACCOUNT.into(),
                user_id: user.into(),
                min_revision,
            })
            .await
            .map(|r| r.into_inner())
    }

    async fn user(&self, user: &str) -> pb::User {
        self.clients
            .provisioning
            .clone()
            .get_user(pb::GetUserRequest {
                account_id: ACCOUNT.into(),
                user_id: user.into(),
            })
            .await
            .unwrap_or_else(|s| panic!("user `{user}`: {}", s.message()))
            .into_inner()
            .user
            .unwrap()
    }

    /// Waits (at most [`NOTICE`]) until the replica serves `revision`
    /// without being asked to wait for it: it follows the change feed.
    async fn catches_up_to(&self, revision: u64) {
        within(
            NOTICE,
            &format!("{} catching up to revision {revision}", self.child.addr),
            async {
                while self.check("any", 0).await.revision < revision {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        )
        .await;
    }
}

async fn put(
    clients: &Clients,
    user: &str,
    request_id: &str,
) -> Result<pb::PutUserResponse, Status> {
    clients
        .provisioning
        .clone()
        .put_user(pb::PutUserRequest {
            account_id: ACCOUNT.into(),
            user_id: user.into(),
            display_name: format!("User {user}"),
            request_id: request_id.into(),
        })
        .await
        .map(|r| r.into_inner())
}

fn set_request(user: &str, tier: T, request_id: &str) -> pb::UpdateUserServicesRequest {
    pb::UpdateUserServicesRequest {
        account_id: ACCOUNT.into(),
        user_id: user.into(),
        edition: Some("X8".into()),
        analytics_tier: Some(tier as i32),
        request_id: request_id.into(),
        ..Default::default()
    }
}

/// `n` replicas on `url`, the first making the operator token; with the
/// directories that hold their token files, and the token's secret.
async fn replicas(n: usize, url: &str) -> (Vec<Replica>, Vec<tempfile::TempDir>, String) {
    let dirs: Vec<_> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
    let (first, secret) = Replica::start(dirs[0].path(), url, None).await;
    let mut all = vec![first];
    for dir in &dirs[1..] {
        all.push(Replica::start(dir.path(), url, Some(&secret)).await.0);
    }
    (all, dirs, secret)
}

/// The account every test writes to.
async fn seed(replica: &Replica) {
    replica
        .clients
        .provisioning
        .clone()
        .create_account(pb::CreateAccountRequest {
            account_id: ACCOUNT.into(),
            display_name: "Acme".into(),
            product_line: "work".into(),
            request_id: String::new(),
        })
        .await
        .unwrap();
}

/// The database's name: how a replica's errors and logs must name it.
fn database_name(url: &str) -> &str {
    url.rsplit('/').next().unwrap()
}

/// A connection of the test's own, straight to PostgreSQL.
async fn sql(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// The database's revision, as its counters say.
async fn database_revision(url: &str) -> u64 {
    let row = sql(url)
        .await
        .query_one("SELECT revision FROM entitled_state", &[])
        .await
        .unwrap();
    u64::try_from(row.get::<_, i64>(0)).unwrap()
}

/// Nothing in the database is half-written: the counters agree with the
/// rows (a change row for each revision 1..=revision, audit records
/// numbered 1..=audit_seq, none beyond the revision). Returns the
/// revision.
async fn assert_whole(url: &str) -> u64 {
    let client = sql(url).await;
    let one = |sql: &'static str| {
        let client = &client;
        async move {
            let row = client.query_one(sql, &[]).await.unwrap();
            (row.get::<_, i64>(0), row.get::<_, i64>(1))
        }
    };
    let (revision, audit_seq) = one("SELECT revision, audit_seq FROM entitled_state").await;
    let changes = one("SELECT count(*), coalesce(max(revision), 0) FROM entitled_changes").await;
    assert_eq!(
        changes,
        (revision, revision),
        "the change feed disagrees with the counters (revision {revision})"
    );
    let audit = one("SELECT count(*), coalesce(max(seq), 0) FROM entitled_audit").await;
    assert_eq!(
        audit,
        (audit_seq, audit_seq),
        "the audit trail disagrees with the counters (audit_seq {audit_seq})"
    );
    let (beyond, _) = one("SELECT count(*), 0::bigint FROM entitled_audit \
         WHERE revision > (SELECT revision FROM entitled_state)")
    .await;
    assert_eq!(beyond, 0, "audit records beyond the revision");
    u64::try_from(revision).unwrap()
}

/// Every applied change in the audit trail, as `replica` lists it.
async fn applied_changes(replica: &Replica) -> Vec<pb::Change> {
    let mut changes = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = replica
            .clients
            .audit
            .clone()
            .list_changes(pb::ListChangesRequest {
                account_id: String::new(),
                page_size: 1000,
                page_token: page_token.clone(),
                after_revision: 0,
            })
            .await
            .unwrap()
            .into_inner();
        changes.extend(page.changes.into_iter().filter(|c| !c.refused));
        if page.next_page_token.is_empty() {
            return changes;
        }
        page_token = page.next_page_token;
    }
}

/// The trail on `replica` holds exactly one applied change per revision
/// 1..=`revision` (each write of these tests changes one user, or none),
/// in order, leaving out the account's record of the first tier given (its
/// analytics activation, at that user's revision). Returns the changes.
async fn assert_one_change_per_revision(replica: &Replica, revision: u64) -> Vec<pb::Change> {
    replica.check("any", revision).await;
    let mut changes = applied_changes(replica).await;
    changes.retain(|c| !(c.account_before.is_some() && c.account_after.is_some()));
    let revisions: Vec<u64> = changes.iter().map(|c| c.revision).collect();
    assert_eq!(
        revisions,
        (1..=revision).collect::<Vec<_>>(),
        "the applied changes are not one per revision, in order"
    );
    changes
}

/// What became of one write of the load.
#[derive(Debug)]
struct Outcome {
    user: String,
    /// The replica it was sent to.
    replica: usize,
    /// The revision it was acknowledged with, or why it failed.
    answer: Result<u64, Status>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_database_is_down_checks_are_answered_and_writes_refused_and_replicas_heal() {
    if !postgres::available().await {
        return;
    }
    let db = TestDatabase::create().await;
    let proxy = Proxy::to(&db.url).await;
    let name = database_name(&db.url);
    let (replicas, _dirs, _) = replicas(3, &proxy.url(&db.url)).await;
    seed(&replicas[0]).await;
    replicas[0].put("ada", "seed-ada").await.unwrap();
    let seeded = replicas[0]
        .set("ada", T::Supervisor, "seed-ada-services")
        .await
        .unwrap()
        .revision;
    for replica in &replicas {
        assert!(replica.check("ada", seeded).await.allowed);
        replica.says_reachable(true).await;
    }

    // Writers on every replica, each with request ids (as a gateway that
    // retries sends), until each has seen three writes refused.
    let (tx, mut outcomes) = mpsc::unbounded_channel::<Outcome>();
    let writers: Vec<_> = (0..6)
        .map(|w| {
            let clients = replicas[w % 3].clients.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut refused = 0;
                for i in 0..10_000 {
                    let user = format!("w{w}-{i}");
                    let answer = put(&clients, &user, &user).await.map(|r| r.revision);
                    refused += u32::from(answer.is_err());
                    let _ = tx.send(Outcome {
                        user,
                        replica: w % 3,
                        answer,
                    });
                    if refused == 3 {
                        return;
                    }
                }
                panic!("writer {w} never saw the database go");
            })
        })
        .collect();
    drop(tx);
    // The database stops under load, once 30 writes are acknowledged.
    let mut all = Vec::new();
    within(STEP, "30 acknowledged writes", async {
        while all.iter().filter(|o: &&Outcome| o.answer.is_ok()).count() < 30 {
            all.push(outcomes.recv().await.unwrap());
        }
    })
    .await;
    proxy.cut();
    for writer in writers {
        within(STEP, "a writer seeing three refusals", writer)
            .await
            .unwrap();
    }
    while let Some(outcome) = outcomes.recv().await {
        all.push(outcome);
    }
    let refused: Vec<&Outcome> = all.iter().filter(|o| o.answer.is_err()).collect();
    assert_eq!(refused.len(), 6 * 3, "{refused:?}");
    for outcome in &refused {
        let status = outcome.answer.as_ref().unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{outcome:?}");
        assert!(status.message().contains(name), "{outcome:?}");
    }

    // While it is down: every replica says so (metric and log), answers
    // checks from memory, and refuses writes naming the database.
    for (i, replica) in replicas.iter().enumerate() {
        replica.says_reachable(false).await;
        let lines = replica.logged("database unreachable").await;
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains(name), "{}", lines[0]);
        let answer = replica.check("ada", 0).await;
        assert!(answer.allowed, "{answer:?}");
        assert_eq!(answer.tier, T::Supervisor as i32);
        assert!(answer.revision >= seeded);
        // At its own revision, at once: there is nothing to wait for.
        replica.check("ada", answer.revision).await;
        let status = replica.put(&format!("down-{i}"), "").await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        for piece in [name, "cannot be reached"] {
            assert!(status.message().contains(piece), "{status:?}");
        }
    }

    // Back: every replica says so, takes writes again without a restart,
    // and follows the others' writes.
    proxy.restore();
    let mut last = 0;
    let mut back_from = u64::MAX;
    for (i, replica) in replicas.iter().enumerate() {
        replica.says_reachable(true).await;
        let lines = replica.logged("database reachable again").await;
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains(name), "{}", lines[0]);
        let user = format!("back-{i}");
        let written = replica.put(&user, &user).await.unwrap();
        last = last.max(written.revision);
        back_from = back_from.min(written.revision);
    }
    for replica in &replicas {
        replica.catches_up_to(last).await;
    }
    // Each refused write, retried with its request id on another replica,
    // is answered: replayed if it had committed after all, applied now if
    // not; never twice.
    for outcome in &refused {
        let retry = &replicas[(outcome.replica + 1) % 3];
        let written = retry.put(&outcome.user, &outcome.user).await.unwrap();
        last = last.max(written.revision);
    }

    // Nothing is half-written: the counters agree with the rows, every
    // revision is one whole write, every write of the load is there
    // exactly once, and every acknowledged one at its revision.
    let revision = assert_whole(&db.url).await;
    assert!(revision >= last);
    let changes = assert_one_change_per_revision(&replicas[1], revision).await;
    let mut made: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for change in &changes {
        if change.rpc.ends_with("PutUser") {
            made.entry(change.user_id.as_str())
                .or_default()
                .push(change.revision);
        }
    }
    for outcome in &all {
        let at = made
            .get(outcome.user.as_str())
            .unwrap_or_else(|| panic!("{outcome:?} is not in the trail"));
        assert_eq!(at.len(), 1, "{outcome:?} applied at {at:?}");
        if let Ok(revision) = outcome.answer {
            assert_eq!(at, &[revision], "{outcome:?}");
        }
    }
    for replica in &replicas {
        replica.check("any", revision).await;
        for outcome in &all {
            assert_eq!(replica.user(&outcome.user).await.user_id, outcome.user);
        }
    }
    // And every refused call is in the audit trail, as refused.
    let unavailable = refusals(&replicas[1])
        .await
        .iter()
        .filter(|c| c.refusal_code == "UNAVAILABLE")
        .count();
    assert_eq!(unavailable, refused.len() + replicas.len());
    let committed_anyway = refused
        .iter()
        .filter(|o| made[o.user.as_str()][0] < back_from)
        .count();
    println!(
        "{} writes acknowledged before the outage, {} refused ({committed_anyway} of them committed all the same, their retries replayed)",
        all.len() - refused.len(),
        refused.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_the_database_serves_what_it_had_and_catches_up_when_back() {
    if !postgres::available().await {
        return;
    }
    let db = TestDatabase::create().await;
    let proxy = Proxy::to(&db.url).await;
    let name = database_name(&db.url);
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    // `near` reaches the database directly, `far` through the proxy.
    let (near, secret) = Replica::start(dirs[0].path(), &db.url, None).await;
    let (far, _) = Replica::start(dirs[1].path(), &proxy.url(&db.url), Some(&secret)).await;
    seed(&near).await;
    near.put("ada", "").await.unwrap();
    let before = near.set("ada", T::Supervisor, "").await.unwrap().revision;
    assert!(far.check("ada", before).await.allowed);

    proxy.cut();
    far.says_reachable(false).await;
    far.logged("database unreachable").await;
    // The other replica goes on writing.
    near.says_reachable(true).await;
    near.put("bob", "").await.unwrap();
    let after = near.set("bob", T::Essentials, "").await.unwrap().revision;
    // The cut-off one answers from what it had: stale, and says so.
    let stale = far.check("bob", 0).await;
    assert!(!stale.allowed, "{stale:?}");
    assert!(stale.revision < after, "{stale:?}");
    assert!(far.check("ada", 0).await.allowed);
    assert_eq!(far.gauge("entitled_store_reachable").await, 0.0);
    // A check that needs the newer revision is refused rather than
    // answered stale.
    let status = far.try_check("bob", after).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let status = far.put("carol", "").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains(name), "{status:?}");

    // Back: it catches up by itself, with no restart, and writes again.
    proxy.restore();
    far.says_reachable(true).await;
    far.logged("database reachable again").await;
    far.catches_up_to(after).await;
    let caught_up = far.check("bob", 0).await;
    assert!(caught_up.allowed, "{caught_up:?}");
    assert_eq!(caught_up.tier, T::Essentials as i32);
    let written = far.put("carol", "").await.unwrap();
    near.check("carol", written.revision).await;
    let revision = assert_whole(&db.url).await;
    assert_one_change_per_revision(&near, revision).await;
}

/// An acknowledged UpdateUserServices: the user (which no later write
/// touches) and the tier it was given.
#[derive(Debug, Clone)]
struct Ack {
    user: String,
    tier: T,
    revision: u64,
}

/// Writers on `replica` until `stop` is set or the replica goes away:
/// each makes a new user and gives it services, and reports each
/// acknowledged services change.
fn kill_load(
    replica: &Replica,
    tag: &str,
    stop: &Arc<AtomicBool>,
    acks: &mpsc::UnboundedSender<Ack>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..2)
        .map(|w| {
            let clients = replica.clients.clone();
            let stop = Arc::clone(stop);
            let acks = acks.clone();
            let tag = format!("{tag}-w{w}");
            tokio::spawn(async move {
                let mut provisioning = clients.provisioning.clone();
                for i in 0..10_000 {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let user = format!("{tag}-{i}");
                    let tier = if i % 2 == 0 {
                        T::Supervisor
                    } else {
                        T::Essentials
                    };
                    if put(&clients, &user, "").await.is_err() {
                        return;
                    }
                    match provisioning
                        .update_user_services(set_request(&user, tier, ""))
                        .await
                    {
                        Ok(answer) => {
                            let _ = acks.send(Ack {
                                user,
                                tier,
                                revision: answer.into_inner().revision,
                            });
                        }
                        Err(_) => return,
                    }
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_write_load_loses_no_acknowledged_write() {
    if !postgres::available().await {
        return;
    }
    let db = TestDatabase::create().await;
    let (mut replicas, dirs, secret) = replicas(3, &db.url).await;
    seed(&replicas[0]).await;
    // At least 3: each replica is killed once.
    let cycles = common::count_from_env("ENTITLED_PG_KILL_CYCLES", 3, 3) as usize;
    let mut acked: Vec<Ack> = Vec::new();
    for cycle in 0..cycles {
        let victim = cycle % 3;
        let stop = Arc::new(AtomicBool::new(false));
        // Acknowledgements by the victim, and by the others.
        let (victim_tx, mut victim_acks) = mpsc::unbounded_channel();
        let (others_tx, mut others_acks) = mpsc::unbounded_channel();
        let mut load = Vec::new();
        for (i, replica) in replicas.iter().enumerate() {
            let tx = if i == victim { &victim_tx } else { &others_tx };
            load.extend(kill_load(replica, &format!("c{cycle}-r{i}"), &stop, tx));
        }
        drop((victim_tx, others_tx));
        // The kill comes at a point of the load, a different one each
        // cycle: after 20 to 32 writes the victim acknowledged.
        let before_kill = 20 + (cycle * 6) % 13;
        within(STEP, "writes acknowledged by the victim", async {
            for _ in 0..before_kill {
                acked.push(victim_acks.recv().await.unwrap());
            }
        })
        .await;
        let killed = replicas.remove(victim);
        tokio::task::spawn_blocking(move || killed.child.kill().unwrap())
            .await
            .unwrap();
        // The others go on writing: the kill left no lock held.
        within(
            STEP,
            "writes acknowledged by the others after the kill",
            async {
                for _ in 0..20 {
                    acked.push(others_acks.recv().await.unwrap());
                }
            },
        )
        .await;
        stop.store(true, Ordering::Relaxed);
        for task in load {
            within(STEP, "a writer ending", task).await.unwrap();
        }
        while let Ok(ack) = victim_acks.try_recv() {
            acked.push(ack);
        }
        while let Ok(ack) = others_acks.try_recv() {
            acked.push(ack);
        }

        // Every acknowledged write is in PostgreSQL: its revision in the
        // change feed, under the counters.
        let revision = assert_whole(&db.url).await;
        let client = sql(&db.url).await;
        let feed: BTreeSet<u64> = client
            .query("SELECT revision FROM entitled_changes", &[])
            .await
            .unwrap()
            .iter()
            .map(|row| u64::try_from(row.get::<_, i64>(0)).unwrap())
            .collect();
        for ack in &acked {
            assert!(feed.contains(&ack.revision), "{ack:?} is not in PostgreSQL");
        }
        // The victim, started again on the same database, serves every
        // write acknowledged so far, by any replica.
        let (restarted, _) = Replica::start(dirs[victim].path(), &db.url, Some(&secret)).await;
        restarted.check("any", revision).await;
        for ack in &acked {
            let user = restarted.user(&ack.user).await;
            assert_eq!(user.analytics_tier, ack.tier as i32, "{ack:?}: {user:?}");
            assert!(user.revision >= ack.revision, "{ack:?}: {user:?}");
        }
        replicas.insert(victim, restarted);
        let changes = assert_one_change_per_revision(&replicas[victim], revision).await;
        for ack in &acked {
            let change = &changes[usize::try_from(ack.revision - 1).unwrap()];
            assert_eq!(change.user_id, ack.user, "{ack:?}: {change:?}");
            assert_eq!(
                change.after.as_ref().unwrap().analytics_tier,
                ack.tier as i32
            );
        }
    }
    assert!(acked.len() >= cycles * 40, "{} acknowledged", acked.len());
    println!(
        "{cycles} replicas killed in turn under load; {} acknowledged writes checked in PostgreSQL and on the restarted replica",
        acked.len()
    );
    // One operator token for the database, however many starts.
    let tokens = replicas[0]
        .clients
        .tokens
        .clone()
        .list_tokens(pb::ListTokensRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tokens;
    assert_eq!(tokens.len(), 1, "{tokens:?}");
}

/// Two replicas on a fresh database: `far` through `proxy`, `near`
/// straight to PostgreSQL; user `ada` made, with no services (at the
/// revision returned). If `alone`, `far` then writes (user `bo`), so that
/// its next batch opens on the counters its own last one left and commits
/// durably itself (`Batch::alone` in `src/store/postgres/commit.rs`).
async fn trap_setup(
    db: &TestDatabase,
    proxy: &Proxy,
    alone: bool,
) -> (Replica, Replica, Vec<tempfile::TempDir>, u64) {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (near, secret) = Replica::start(dirs[0].path(), &db.url, None).await;
    let (far, _) = Replica::start(dirs[1].path(), &proxy.url(&db.url), Some(&secret)).await;
    seed(&near).await;
    let made = near.put("ada", "").await.unwrap();
    far.check("ada", made.revision).await;
    if alone {
        far.put("bo", "").await.unwrap();
        // Writing alone: its batches commit durably, with no flush after.
        let flushed = db.flushes().await;
        far.put("cy", "").await.unwrap();
        assert_eq!(db.flushes().await, flushed, "far does not write alone");
    }
    (far, near, dirs, made.revision)
}

/// The applied changes to `user`.
async fn changes_to(replica: &Replica, user: &str) -> Vec<pb::Change> {
    applied_changes(replica)
        .await
        .into_iter()
        .filter(|c| c.user_id == user)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_is_lost_is_not_acknowledged_and_its_retry_replays_it() {
    answer_lost(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_commit_whose_answer_is_lost_is_not_acknowledged_and_its_retry_replays_it() {
    answer_lost(true).await;
}

/// The COMMIT of `far`'s batch (one that commits durably itself, if
/// `alone`) reaches PostgreSQL, and its answer is lost.
async fn answer_lost(alone: bool) {
    if !postgres::available().await {
        return;
    }
    let db = TestDatabase::create().await;
    let proxy = Proxy::to(&db.url).await;
    let (far, near, _dirs, made) = trap_setup(&db, &proxy, alone).await;
    let before = database_revision(&db.url).await;
    let sprung = proxy.arm(Trap::LoseTheAnswer);
    let status = far.set("ada", T::Supervisor, "R1").await.unwrap_err();
    assert_eq!(
        within(STEP, "the trap", sprung).await.unwrap(),
        Sprung::Answered("COMMIT".into())
    );
    // Not acknowledged: the replica cannot know it committed, and says a
    // retry is safe.
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    for piece in [database_name(&db.url), "outcome is unknown", "request_id"] {
        assert!(status.message().contains(piece), "{status:?}");
    }
    // It did commit.
    assert_eq!(database_revision(&db.url).await, before + 1);
    // The retry, on either replica, replays the first answer: the same
    // revision, applied once.
    let first = far.set("ada", T::Supervisor, "R1").await.unwrap();
    assert_eq!(first.revision, before + 1);
    let again = near.set("ada", T::Supervisor, "R1").await.unwrap();
    assert_eq!(again.revision, first.revision);
    assert_eq!(again.user, first.user);
    assert_eq!(database_revision(&db.url).await, before + 1);
    for replica in [&far, &near] {
        replica.check("ada", before + 1).await;
        assert_eq!(
            replica.user("ada").await.analytics_tier,
            T::Supervisor as i32
        );
        let changes = changes_to(replica, "ada").await;
        let revisions: Vec<u64> = changes.iter().map(|c| c.revision).collect();
        assert_eq!(revisions, [made, before + 1], "{changes:?}");
    }
    let revision = assert_whole(&db.url).await;
    assert_one_change_per_revision(&near, revision).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_lost_on_its_way_is_not_acknowledged_and_its_retry_applies_it_once() {
    commit_lost(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_commit_lost_on_its_way_is_not_acknowledged_and_its_retry_applies_it_once() {
    commit_lost(true).await;
}

/// The COMMIT of `far`'s batch never reaches PostgreSQL. If `alone`, the
/// connection is cut as the batch asks for the session's synchronous
/// commit, just before its COMMIT: only a batch that commits durably
/// itself asks, so the trap springs only on that path.
async fn commit_lost(alone: bool) {
    if !postgres::available().await {
        return;
    }
    let db = TestDatabase::create().await;
    let proxy = Proxy::to(&db.url).await;
    let (far, near, _dirs, made) = trap_setup(&db, &proxy, alone).await;
    let before = database_revision(&db.url).await;
    let sprung = proxy.arm(if alone {
        Trap::CutAt("synchronous_commit TO DEFAULT")
    } else {
        Trap::LoseTheCommit
    });
    let status = far.set("ada", T::Supervisor, "R1").await.unwrap_err();
    assert_eq!(
        within(STEP, "the trap", sprung).await.unwrap(),
        Sprung::NotSent
    );
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    for piece in [database_name(&db.url), "outcome is unknown", "request_id"] {
        assert!(status.message().contains(piece), "{status:?}");
    }
    // It did not commit, and no replica shows it.
    assert_eq!(database_revision(&db.url).await, before);
    for replica in [&far, &near] {
        assert_eq!(replica.user("ada").await.analytics_tier, T::None as i32);
    }
    // The retry applies it, once, whichever replica the retries reach.
    let first = far.set("ada", T::Supervisor, "R1").await.unwrap();
    assert_eq!(first.revision, before + 1);
    let again = near.set("ada", T::Supervisor, "R1").await.unwrap();
    assert_eq!(again.revision, first.revision);
    assert_eq!(again.user, first.user);
    assert_eq!(database_revision(&db.url).await, before + 1);
    for replica in [&far, &near] {
        replica.check("ada", before + 1).await;
        assert_eq!(
            replica.user("ada").await.analytics_tier,
            T::Supervisor as i32
        );
        let changes = changes_to(replica, "ada").await;
        let revisions: Vec<u64> = changes.iter().map(|c| c.revision).collect();
        assert_eq!(revisions, [made, before + 1], "{changes:?}");
    }
    let revision = assert_whole(&db.url).await;
    assert_one_change_per_revision(&near, revision).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_while_a_write_looks_up_its_request_id_leaves_no_broken_batch() {
    if !postgres::available().await {
        return;
    }
    let db = TestDatabase::create().await;
    let proxy = Proxy::to(&db.url).await;
    let (far, near, _dirs, _) = trap_setup(&db, &proxy, false).await;
    let before = database_revision(&db.url).await;
    // `far` has made no write yet, so its lookup of a request id is
    // prepared, with its text, on the connection it writes on.
    let sprung = proxy.arm(Trap::CutAt("SELECT record FROM entitled_requests"));
    let status = far.set("ada", T::Supervisor, "R1").await.unwrap_err();
    assert_eq!(
        within(STEP, "the trap", sprung).await.unwrap(),
        Sprung::NotSent
    );
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains(database_name(&db.url)),
        "{status:?}"
    );
    assert_eq!(database_revision(&db.url).await, before);
    // The database is there: the retry, at once, on the same replica, is
    // applied (a batch left open on the lost connection would refuse it).
    let written = far.set("ada", T::Supervisor, "R1").await.unwrap();
    assert_eq!(written.revision, before + 1);
    let again = near.set("ada", T::Supervisor, "R1").await.unwrap();
    assert_eq!(again.revision, written.revision);
    // The refusal of the first try is in the audit trail, once.
    let refusals = within(NOTICE, "the refusal in the audit trail", async {
        loop {
            let recorded = refusals(&near).await;
            if !recorded.is_empty() {
                return recorded;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(refusals[0].refusal_code, "UNAVAILABLE");
    let revision = assert_whole(&db.url).await;
    assert_one_change_per_revision(&near, revision).await;
}

/// Write locks held in the test's database (the one a batch of writes
/// holds while it is open is an advisory lock).
async fn advisory_locks_held(url: &str) -> i64 {
    sql(url)
        .await
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_leaves_no_write_lock_held_against_the_other_replicas() {
    if !postgres::available().await {
        return;
    }
    let db = TestDatabase::create().await;
    let (replicas, _dirs, _) = replicas(2, &db.url).await;
    seed(&replicas[0]).await;
    let before = database_revision(&db.url).await;
    // Refused by the rules (no such user), with no request id to keep its
    // answer for: nothing to commit.
    let status = replicas[0]
        .set("nobody", T::Supervisor, "")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(
        advisory_locks_held(&db.url).await,
        0,
        "the refused write left the write lock held"
    );
    let written = replicas[1].put("bob", "").await.unwrap();
    assert_eq!(written.revision, before + 1);
}

/// The refusals in the audit trail, as `replica` lists them.
async fn refusals(replica: &Replica) -> Vec<pb::Change> {
    let page = replica
        .clients
        .audit
        .clone()
        .list_changes(pb::ListChangesRequest {
            account_id: ACCOUNT.into(),
            page_size: 1000,
            page_token: String::new(),
            after_revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    page.changes.into_iter().filter(|c| c.refused).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_whose_batch_failed_before_its_commit_is_recorded_by_a_later_one() {
    if !postgres::available().await {
        return;
    }
    let db = TestDatabase::create().await;
    let proxy = Proxy::to(&db.url).await;
    let (far, near, _dirs, _) = trap_setup(&db, &proxy, false).await;
    // `far` has written nothing yet, so the batch that records its
    // refusals prepares its statements, with their text, on its
    // connection: the connection is lost as the audit records are sent.
    let sprung = proxy.arm(Trap::CutAt("INSERT INTO entitled_audit"));
    let status = far.set("nobody", T::Supervisor, "").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(
        within(STEP, "the trap", sprung).await.unwrap(),
        Sprung::NotSent
    );
    // Recorded all the same, once, by a later batch.
    let recorded = within(NOTICE, "the refusal in the audit trail", async {
        loop {
            let recorded = refusals(&near).await;
            if !recorded.is_empty() {
                return recorded;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(
        (
            recorded[0].user_id.as_str(),
            recorded[0].refusal_code.as_str()
        ),
        ("nobody", "NOT_FOUND")
    );
    assert_whole(&db.url).await;
}
