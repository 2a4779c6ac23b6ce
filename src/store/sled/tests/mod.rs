//! The sled backend through `Store`: backups of both formats restore to
//! the same store, a format 1 file made by an earlier entitled restores,
//! a write given up while its flush runs is still published, and writes
//! close together share a flush.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::{
    collections::BTreeMap,
    future::Future,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Waker},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use sha2::{Digest, Sha256};

use super::{SledBackend, keys};

mod checkpoint;
mod format_v1;
use crate::{
    domain::{
        Account, AccountId, Actor, Notice, Outcome, Refusal, RefusalKind, Role, Rpc,
        SupervisorScope, Tier, Token, User, UserId, Via,
    },
    store::{
        Mutation, Refusable, RequestKey, Store, StoreError, StoreObserver, Target, WriteContext,
        WritePlan, backend::RequestId, restore, verify,
    },
};

/// A `plan` closure's error, as the store sees any: the service's own
/// (`DomainError`) is a floor up, so these tests bring their own.
#[derive(Debug)]
enum DomainError {
    NothingToChange,
    Refused(Refusal),
    Store(#[expect(dead_code, reason = "shown by Debug when a test fails")] StoreError),
}

impl From<StoreError> for DomainError {
    fn from(e: StoreError) -> Self {
        DomainError::Store(e)
    }
}

impl Refusable for DomainError {
    fn refusal(&self) -> Option<Refusal> {
        match self {
            DomainError::NothingToChange => Some(Refusal {
                kind: RefusalKind::InvalidArgument,
                message: "nothing to change: set edition, analytics_tier or both".to_owned(),
            }),
            DomainError::Refused(refusal) => Some(refusal.clone()),
            DomainError::Store(_) => None,
        }
    }

    fn refused(refusal: Refusal) -> Self {
        DomainError::Refused(refusal)
    }
}

/// The output of `UpdateUserServices` as the service keeps it for a retry
/// (the same fields in the same order: the encoding is postcard).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ServicesChanged {
    user: User,
    notices: Vec<Notice>,
}

impl ServicesChanged {
    /// As the service reads an answer kept before users had a scope.
    fn v1(bytes: &[u8]) -> Result<Self, postcard::Error> {
        #[derive(serde::Deserialize)]
        struct Old {
            user: crate::store::UserV1,
            notices: Vec<Notice>,
        }
        let old: Old = postcard::from_bytes(bytes)?;
        Ok(ServicesChanged {
            user: old.user.into(),
            notices: old.notices,
        })
    }
}

fn account_id(id: &str) -> AccountId {
    AccountId::try_from(id.to_owned()).unwrap()
}

fn user_id(id: &str) -> UserId {
    UserId::try_from(id.to_owned()).unwrap()
}

fn open(dir: &Path) -> (SledBackend, Store) {
    let backend = SledBackend::open(dir).unwrap();
    let store = Store {
        backend: Arc::new(backend.clone()),
    };
    (backend, store)
}

fn ctx(rpc: Rpc, account: &str, user: &str, request: Option<&str>) -> WriteContext {
    WriteContext {
        actor: Actor {
            token_id: "tok_test".to_owned(),
            name: "test".to_owned(),
            role: Role::Operator,
            via: Via::Api,
        },
        rpc,
        at: SystemTime::now(),
        account_id: account.to_owned(),
        user_id: user.to_owned(),
        request: request.map(|id| RequestKey {
            id: id.to_owned(),
            fingerprint: Sha256::digest(id.as_bytes()).into(),
        }),
        keep_refusal: true,
    }
}

fn account(id: &str) -> Account {
    Account {
        id: account_id(id),
        display_name: id.to_uppercase(),
        product_line: "work".to_owned(),
        created_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        analytics_activated_at: None,
    }
}

fn user(account: &str, id: &str, edition: Option<&str>, tier: Tier) -> User {
    let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    User {
        account_id: account_id(account),
        id: user_id(id),
        display_name: id.to_uppercase(),
        edition: edition.map(str::to_owned),
        tier,
        revision: 0,
        created_at: at,
        updated_at: at,
        supervisor_scope: (tier == Tier::Supervisor).then_some(SupervisorScope::WholeAccount),
    }
}

/// Commits `mutations` as one write.
async fn put(store: &Store, target: Target, ctx: WriteContext, mutations: Vec<Mutation>) -> u64 {
    store
        .write::<_, DomainError>(&target, ctx, move |current| {
            Ok(WritePlan::new(mutations.clone(), current.next_revision))
        })
        .await
        .unwrap()
        .revision
}

/// Creates account `acme`.
async fn create_acme(store: &Store) -> u64 {
    let target = Target::Account(account_id("acme"));
    let ctx = ctx(Rpc::CreateAccount, "acme", "", None);
    put(
        store,
        target,
        ctx,
        vec![Mutation::PutAccount(account("acme"))],
    )
    .await
}

/// Puts user `id` of `acme`, with no edition and no tier.
fn put_user<'a>(store: &'a Store, id: &str) -> impl Future<Output = u64> + 'a {
    let target = Target::User(account_id("acme"), user_id(id));
    let ctx = ctx(Rpc::PutUser, "acme", id, None);
    let plain = user("acme", id, None, Tier::None);
    put(store, target, ctx, vec![Mutation::PutUser(plain)])
}

/// A store with a record of every kind: accounts, users (one changed, one
/// deleted), tokens (one revoked), the bootstrapped flag, audit records
/// applied and refused, and kept answers of a write, a no-op and a refusal.
async fn populate(store: &Store) {
    let token = Token {
        id: "tok_a".to_owned(),
        name: "a".to_owned(),
        role: Role::Gateway,
        account: None,
        user: None,
        secret_sha256: [7; 32],
        created_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        revoked_at: None,
    };
    let c = |rpc, a, u| ctx(rpc, a, u, None);
    put(
        store,
        Target::NoRecord,
        c(Rpc::CreateToken, "", ""),
        vec![
            Mutation::PutToken(token.clone()),
            Mutation::MarkBootstrapped,
        ],
    )
    .await;
    for id in ["acme", "legacy"] {
        let mutations = vec![Mutation::PutAccount(account(id))];
        let target = Target::Account(account_id(id));
        put(store, target, c(Rpc::CreateAccount, id, ""), mutations).await;
    }
    for (a, u) in [("acme", "ada"), ("acme", "bob"), ("legacy", "cy")] {
        let target = Target::User(account_id(a), user_id(u));
        let mutations = vec![Mutation::PutUser(user(a, u, None, Tier::None))];
        put(store, target, c(Rpc::PutUser, a, u), mutations).await;
    }
    let target = Target::User(account_id("acme"), user_id("bob"));
    let changed = user("acme", "bob", Some("X6"), Tier::Supervisor);
    let mutations = vec![Mutation::PutUser(changed)];
    let ctx_saved = ctx(Rpc::UpdateUserServices, "acme", "bob", Some("save-1"));
    put(store, target.clone(), ctx_saved, mutations).await;
    let target_cy = Target::User(account_id("legacy"), user_id("cy"));
    let deleted = vec![Mutation::DeleteUser(account_id("legacy"), user_id("cy"))];
    put(
        store,
        target_cy,
        c(Rpc::DeleteUser, "legacy", "cy"),
        deleted,
    )
    .await;
    let revoked = Token {
        revoked_at: Some(UNIX_EPOCH + Duration::from_secs(1_700_000_100)),
        ..token
    };
    let target_token = Target::Token("tok_a".to_owned());
    let mutations = vec![Mutation::PutToken(revoked)];
    put(store, target_token, c(Rpc::RevokeToken, "", ""), mutations).await;
    // A no-op and a refusal, each kept for its request id.
    put(
        store,
        target.clone(),
        ctx(Rpc::PutUser, "acme", "bob", Some("same")),
        vec![],
    )
    .await;
    let refused = store
        .write::<(), DomainError>(
            &target,
            ctx(Rpc::UpdateUserServices, "acme", "bob", Some("no")),
            |_| Err(DomainError::NothingToChange),
        )
        .await;
    assert!(matches!(refused, Err(DomainError::NothingToChange)));
    store
        .record_refusal(c(Rpc::PutUser, "acme/x", ""), "INVALID_ARGUMENT", "bad id")
        .unwrap();
}

/// A tree's entries: keys and values.
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Every tree's entries, but the store's own id.
fn trees(backend: &SledBackend) -> BTreeMap<&'static str, Entries> {
    let t = &backend.inner.trees;
    [
        (keys::ACCOUNTS, &t.accounts),
        (keys::USERS, &t.users),
        (keys::META, &t.meta),
        (keys::TOKENS, &t.tokens),
        (keys::AUDIT, &t.audit),
        (keys::AUDIT_BY_ACCOUNT, &t.audit_by_account),
        (keys::REQUESTS, &t.requests),
    ]
    .into_iter()
    .map(|(name, tree)| {
        let entries = tree
            .iter()
            .map(|item| {
                let (k, v) = item.unwrap();
                (k.to_vec(), v.to_vec())
            })
            .filter(|(k, _)| k.as_slice() != keys::STORE_ID_KEY)
            .collect();
        (name, entries)
    })
    .collect()
}

/// The format 1 writer as entitled had it before backups became logical:
/// each tree, byte for byte, under the writer lock.
fn backup_v1(backend: &SledBackend, taken_at: SystemTime) -> Vec<u8> {
    const TREES: [&str; 7] = [
        "accounts",
        "users",
        "meta",
        "tokens",
        "audit",
        "audit_by_account",
        "requests",
    ];
    let writer = backend.inner.writer.lock();
    let mut out = Vec::new();
    out.extend_from_slice(b"entitled-backup\n");
    out.extend_from_slice(&1u32.to_be_bytes());
    out.extend_from_slice(&writer.committed.to_be_bytes());
    let millis = taken_at.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    out.extend_from_slice(&millis.to_be_bytes());
    out.extend_from_slice(&(TREES.len() as u32).to_be_bytes());
    let field = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    for name in TREES {
        let tree = backend.inner.db.open_tree(name).unwrap();
        out.extend_from_slice(&(name.len() as u16).to_be_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(tree.len() as u64).to_be_bytes());
        for item in tree.iter() {
            let (key, value) = item.unwrap();
            field(&mut out, &key);
            field(&mut out, &value);
        }
    }
    let checksum = Sha256::digest(&out);
    out.extend_from_slice(&checksum);
    out
}

#[tokio::test]
async fn backups_of_either_format_restore_to_the_store_they_were_taken_of() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    let (backend, store) = open(&dir.path().join("data"));
    populate(&store).await;
    let original = trees(&backend);
    let revision = store.read(|v| v.revision());
    let old = backup_v1(&backend, SystemTime::now());
    let new = store.backup(SystemTime::now()).await.unwrap();
    assert_eq!(new.revision, revision);
    assert_eq!(verify(old.as_slice()).unwrap().revision, revision);
    assert_eq!(verify(new.bytes.as_slice()).unwrap().revision, revision);
    assert_eq!(
        &new.bytes[16..20],
        &2u32.to_be_bytes(),
        "format 2 is written"
    );
    drop((backend, store));

    for (format, bytes) in [(1, old), (2, new.bytes)] {
        let file = dir.path().join(format!("backup-{format}"));
        std::fs::write(&file, &bytes).unwrap();
        let restored_dir = dir.path().join(format!("restored-{format}"));
        let summary = restore(&file, &restored_dir).unwrap();
        assert_eq!(summary.revision, revision, "format {format}");
        let (backend, store) = open(&restored_dir);
        assert_eq!(trees(&backend), original, "format {format}");
        assert_eq!(store.read(|v| v.revision()), revision);
        assert_eq!(store.read(|v| v.user_count()), 2);
    }
}

/// A write whose caller goes away while its flush runs (a cancelled call)
/// is durable, so it must still reach the view: the next flush publishes
/// it. It was once dropped, with every write flushed with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_given_up_during_its_flush_is_still_published() {
    let dir = tempfile::tempdir().unwrap();
    let (_, store) = open(dir.path());
    create_acme(&store).await;

    // A big record, so that its flush is still running when the first
    // poll returns; tried until one is.
    let mut given_up = Vec::new();
    for i in 0..20 {
        let id = format!("u{i}");
        let big = User {
            display_name: "x".repeat(4 << 20),
            ..user("acme", &id, None, Tier::None)
        };
        let target = Target::User(account_id("acme"), user_id(&id));
        let ctx = ctx(Rpc::PutUser, "acme", &id, None);
        let mut write = Box::pin(put(&store, target, ctx, vec![Mutation::PutUser(big)]));
        // One poll commits it and starts its flush; then the caller is gone.
        let first = write.as_mut().poll(&mut Context::from_waker(Waker::noop()));
        drop(write);
        given_up.push(id);
        if first.is_pending() {
            break;
        }
    }
    assert!(
        given_up.len() < 20,
        "no write was still flushing after one poll"
    );

    let bob = vec![Mutation::PutUser(user("acme", "bob", None, Tier::None))];
    let target = Target::User(account_id("acme"), user_id("bob"));
    let revision = put(&store, target, ctx(Rpc::PutUser, "acme", "bob", None), bob).await;
    assert_eq!(revision, given_up.len() as u64 + 2);
    assert_eq!(store.read(|v| v.revision()), revision);
    for id in &given_up {
        assert!(
            store.read(|v| v.user("acme", id)).is_some(),
            "the given-up write of `{id}` is not in the view"
        );
    }
    assert!(store.read(|v| v.user("acme", "bob")).is_some());
}

/// Counts the store's syncs (sled's flushes).
#[derive(Default)]
struct Syncs(AtomicUsize);

impl StoreObserver for Syncs {
    fn committed(&self) {}
    fn durable(&self, _waited: Duration) {}
    fn synced(&self, _took: Duration) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A write that comes within `FLUSH_SPACING` of the last flush's start
/// waits out the spacing, and a write committed meanwhile is in its flush:
/// two writes, one flush (without the spacing, each had its own). The
/// spacing is raised to a second here, so that the first flush surely
/// ends within it.
#[tokio::test]
async fn writes_close_together_share_one_flush() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, store) = open(dir.path());
    backend.inner.flush_lock.lock().await.spacing = Duration::from_secs(1);
    let syncs = Arc::new(Syncs::default());
    assert!(store.observe(syncs.clone()));
    // The first write finds no flush before it: flushed at once.
    let began = Instant::now();
    create_acme(&store).await;
    assert!(
        began.elapsed() < Duration::from_secs(1),
        "the first write waited"
    );
    // Write a: one poll commits it, and its flusher waits out the spacing.
    let mut a = Box::pin(put_user(&store, "a"));
    let first = a.as_mut().poll(&mut Context::from_waker(Waker::noop()));
    assert!(first.is_pending(), "a was flushed at once");
    // Write b, committed while a's flusher waits: a's flush covers it.
    let (a, b) = tokio::join!(a, put_user(&store, "b"));
    assert_eq!((a, b), (2, 3));
    assert_eq!(
        syncs.0.load(Ordering::SeqCst),
        2,
        "acme's flush, then a's and b's together"
    );
    assert!(store.read(|v| v.user("acme", "b").is_some()));
}

/// A full batch does not wait out the spacing: with the spacing at a
/// minute, `FULL_BATCH` writes waiting are flushed at once.
#[tokio::test]
async fn a_full_batch_is_flushed_without_waiting_out_the_spacing() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, store) = open(dir.path());
    backend.inner.flush_lock.lock().await.spacing = Duration::from_secs(60);
    create_acme(&store).await;
    let began = Instant::now();
    let ids: Vec<String> = (0..super::commit::FULL_BATCH)
        .map(|i| format!("u{i}"))
        .collect();
    let revisions = futures_util::future::join_all(ids.iter().map(|id| put_user(&store, id))).await;
    assert_eq!(revisions.len(), super::commit::FULL_BATCH);
    assert!(
        began.elapsed() < Duration::from_secs(30),
        "the batch waited out the spacing"
    );
}

/// A write on a whole account sees every user of that account, in id
/// order, with later changes and deletions laid over; none of another
/// account's, and none for an account that does not exist.
#[tokio::test]
async fn a_whole_account_write_sees_every_user_of_the_account() {
    let dir = tempfile::tempdir().unwrap();
    let (_, store) = open(dir.path());
    populate(&store).await;
    let seen = |id: &'static str| {
        let store = &store;
        async move {
            store
                .write::<_, DomainError>(
                    &Target::WholeAccount(account_id(id)),
                    ctx(Rpc::CreateAccount, id, "", None),
                    |current| {
                        let users: Vec<(String, Option<String>)> = current
                            .users
                            .iter()
                            .map(|u| (u.id.as_str().to_owned(), u.edition.clone()))
                            .collect();
                        Ok(WritePlan::new(
                            Vec::new(),
                            (current.account.is_some(), users),
                        ))
                    },
                )
                .await
                .unwrap()
                .output
        }
    };
    assert_eq!(
        seen("acme").await,
        (
            true,
            vec![
                ("ada".to_owned(), None),
                ("bob".to_owned(), Some("X6".to_owned()))
            ]
        )
    );
    // cy was deleted.
    assert_eq!(seen("legacy").await, (true, Vec::new()));
    assert_eq!(seen("nobody").await, (false, Vec::new()));
}

/// A reader whose next records were pruned under it (a watch in the middle
/// of its replay) is told so, rather than reading on past the hole.
#[tokio::test]
async fn a_reader_overtaken_by_pruning_is_told_not_given_a_hole() {
    let dir = tempfile::tempdir().unwrap();
    let (_backend, store) = open(dir.path());
    populate(&store).await;
    let revision = store.read(|v| v.revision());
    let (cursor, _) = store.audit_position_after(2).await.unwrap();
    let (read, _) = store
        .audit_records_from(cursor, revision, 512)
        .await
        .unwrap();
    assert!(!read.is_empty());
    let later = SystemTime::now() + Duration::from_secs(3600);
    let batch = store.prune_batch(later, 4).await.unwrap();
    assert_eq!((batch.records, batch.pruned.seq), (4, 4));
    let overtaken = store.audit_records_from(cursor, revision, 512).await;
    assert!(
        matches!(
            overtaken,
            Err(StoreError::Pruned { asked: crate::store::PrunedAsk::Next(c), pruned }) if c == cursor && pruned == batch.pruned
        ),
        "{overtaken:?}"
    );
    // A reader after the pruned records reads on.
    assert!(store.audit_records_from(5, revision, 512).await.is_ok());
    assert!(matches!(
        store.audit_position_after(1).await,
        Err(StoreError::Pruned { .. })
    ));
}

/// A backup holds the records kept, not how far they were pruned: a store
/// restored from it works that out from its first record (the revision of
/// that record counts as pruned: it may have lost records before it).
#[tokio::test]
async fn a_store_restored_from_a_pruned_one_knows_what_was_pruned() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("a")).unwrap();
    let (_backend, store) = open(&dir.path().join("a"));
    populate(&store).await;
    let later = SystemTime::now() + Duration::from_secs(3600);
    let batch = store.prune_batch(later, 3).await.unwrap();
    assert_eq!(batch.pruned.seq, 3);
    let backup = store.backup(SystemTime::now()).await.unwrap();
    let file = dir.path().join("backup");
    std::fs::write(&file, &backup.bytes).unwrap();
    restore(&file, &dir.path().join("b")).unwrap();
    let (_restored_backend, restored) = open(&dir.path().join("b"));
    let pruned = restored.pruned().await.unwrap();
    let first_held = restored.audit(None, 0, 0, 1).await.unwrap().0[0].clone();
    assert_eq!(first_held.seq, 4);
    assert_eq!(
        (pruned.seq, pruned.revision),
        (3, first_held.revision),
        "{pruned:?}"
    );
    assert!(pruned.revision >= batch.pruned.revision);
}
