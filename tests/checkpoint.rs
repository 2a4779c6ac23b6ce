//! The view checkpoint (`src/store/sled/checkpoint.rs`), with the real
//! binary on a real sled directory: a start right after a graceful stop
//! builds its view from the checkpoint and answers exactly as a start that
//! reads sled; a checkpoint is used at most once, never after a crash,
//! never when sled's files changed after it was written, and a damaged one
//! is ignored with a warning, never stopping the start.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use common::{
    Clients, T,
    process::{BIN, OutputWithin, Server},
};
use entitled::proto::v1 as pb;
use tonic::Code;

const CHECKPOINT: &str = "view.checkpoint";

fn checkpoint(dir: &Path) -> PathBuf {
    dir.join(CHECKPOINT)
}

/// The server's log so far, one string.
fn log(server: &Server) -> String {
    server.log.lock().unwrap().join("\n")
}

/// Whether the start built its view from the checkpoint, as the "store
/// opened" line says.
fn from_checkpoint(server: &Server) -> bool {
    let log = log(server);
    let line = log
        .lines()
        .find(|l| l.contains("store opened") && l.contains("from_checkpoint="))
        .unwrap_or_else(|| panic!("no \"store opened\" line:\n{log}"));
    line.contains("from_checkpoint=true")
}

/// The warnings that say a checkpoint was not used.
fn not_used(server: &Server) -> Vec<String> {
    log(server)
        .lines()
        .filter(|l| l.contains("not used; reading the view from sled"))
        .map(str::to_owned)
        .collect()
}

/// Asserts that the start read sled, not the checkpoint, and said why in
/// exactly one warning, holding `says`; `what` names the case.
fn read_sled_because(server: &Server, says: &str, what: &str) {
    assert!(!from_checkpoint(server), "{what}");
    let warnings = not_used(server);
    assert_eq!(warnings.len(), 1, "{what}: {warnings:?}");
    assert!(warnings[0].contains(says), "{what}: {warnings:?}");
}

/// A graceful stop (SIGTERM), which must succeed.
fn stop(server: Server, clients: Clients) {
    // Our connection closes first: the stop waits for it.
    drop(clients);
    let log = std::sync::Arc::clone(&server.log);
    let status = server.terminate();
    assert!(
        status.success(),
        "a graceful stop: {status:?}; the server's log:\n{}",
        log.lock().unwrap().join("\n")
    );
}

async fn put(c: &Clients, account: &str, user: &str) {
    c.provisioning
        .clone()
        .put_user(pb::PutUserRequest {
            account_id: account.into(),
            user_id: user.into(),
            display_name: format!("User {user}"),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn set(c: &Clients, account: &str, user: &str, edition: &str, tier: T) {
    c.provisioning
        .clone()
        .update_user_services(pb::UpdateUserServicesRequest {
            account_id: account.into(),
            user_id: user.into(),
            edition: Some(edition.into()),
            analytics_tier: Some(tier as i32),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Two accounts with users of every kind: no licence, each tier, a
/// supervisor of the whole account and one scoped to groups, a user
/// deleted, and an import's worth more.
async fn populate(c: &Clients) {
    for (account, line) in [("acme", "work"), ("legacy", "virtual-office")] {
        c.provisioning
            .clone()
            .create_account(pb::CreateAccountRequest {
                account_id: account.into(),
                display_name: format!("{account} Inc."),
                product_line: line.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    for user in ["ada", "bob", "cy", "eve", "none"] {
        put(c, "acme", user).await;
    }
    put(c, "legacy", "dee").await;
    set(c, "acme", "ada", "X8", T::Essentials).await;
    set(c, "acme", "bob", "X6", T::Supervisor).await;
    set(c, "legacy", "dee", "X8e", T::Essentials).await;
    c.provisioning
        .clone()
        .update_user_services(pb::UpdateUserServicesRequest {
            account_id: "acme".into(),
            user_id: "eve".into(),
            edition: Some("X8".into()),
            analytics_tier: Some(T::Supervisor as i32),
            supervisor_scope: Some(pb::SupervisorScope {
                whole_account: false,
                refs: vec![
                    pb::ScopeRef {
                        kind: pb::ScopeKind::Site as i32,
                        id: "S1".into(),
                    },
                    pb::ScopeRef {
                        kind: pb::ScopeKind::CallQueue as i32,
                        id: "Q7".into(),
                    },
                ],
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    c.provisioning
        .clone()
        .delete_user(pb::DeleteUserRequest {
            account_id: "acme".into(),
            user_id: "cy".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let rows: Vec<_> = (0..300)
        .map(|i| pb::UserRow {
            account_id: "acme".into(),
            user_id: format!("u{i:04}"),
            edition: if i % 2 == 0 {
                "X4".into()
            } else {
                String::new()
            },
            analytics_tier: if i % 2 == 0 {
                T::Supervisor as i32
            } else {
                T::None as i32
            },
            ..Default::default()
        })
        .collect();
    let imported = c
        .provisioning
        .clone()
        .import_users(pb::ImportUsersRequest {
            rows,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(imported.errors.is_empty(), "{:?}", imported.errors);
}

/// Everything a client sees of the users: each account's users as listed
/// (every page) and each user's check answer, with a deleted and an unknown
/// user's.
async fn answers(c: &Clients) -> Vec<String> {
    let mut out = Vec::new();
    for account in ["acme", "legacy", "nobody"] {
        let mut page_token = String::new();
        let mut ids = vec!["cy".to_owned(), "unknown".to_owned()];
        loop {
            let page = c
                .provisioning
                .clone()
                .list_users(pb::ListUsersRequest {
                    account_id: account.into(),
                    page_size: 100,
                    page_token: page_token.clone(),
                })
                .await;
            let page = match page {
                Ok(page) => page.into_inner(),
                Err(status) => {
                    out.push(format!(
                        "{account}: {:?} {}",
                        status.code(),
                        status.message()
                    ));
                    break;
                }
            };
            for user in &page.users {
                ids.push(user.user_id.clone());
                out.push(format!("{user:?}"));
            }
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        for user in ids {
            let answer = c
                .access
                .clone()
                .check_analytics_access(pb::CheckAnalyticsAccessRequest {
                    account_id: account.into(),
                    user_id: user.clone(),
                    min_revision: 0,
                })
                .await
                .unwrap()
                .into_inner();
            out.push(format!("{account}/{user}: {answer:?}"));
        }
    }
    out
}

/// A directory with the users of `populate`, its server stopped gracefully
/// (so with a checkpoint), and what a client saw before the stop.
async fn populated() -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let c = server.clients().await;
    populate(&c).await;
    let seen = answers(&c).await;
    stop(server, c);
    assert!(
        checkpoint(dir.path()).exists(),
        "no checkpoint after a stop"
    );
    (dir, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_after_a_graceful_stop_uses_the_checkpoint_and_answers_as_a_cold_start() {
    let (dir, before) = populated().await;
    assert!(!dir.path().join(format!("{CHECKPOINT}.new")).exists());

    let server = Server::start(dir.path(), &[]);
    assert!(from_checkpoint(&server), "{}", log(&server));
    // Used at most once: gone as soon as the start has read it.
    assert!(!checkpoint(dir.path()).exists());
    let c = server.clients().await;
    let warm = answers(&c).await;
    assert_eq!(warm, before);
    // SIGKILL: no stop, so no checkpoint.
    drop(c);
    server.kill();
    assert!(!checkpoint(dir.path()).exists());

    let server = Server::start(dir.path(), &[]);
    assert!(!from_checkpoint(&server));
    assert_eq!(not_used(&server), Vec::<String>::new());
    let c = server.clients().await;
    let cold = answers(&c).await;
    assert_eq!(cold, warm);
    // Writes, then a graceful stop: the next start's checkpoint has them.
    put(&c, "acme", "zed").await;
    set(&c, "acme", "zed", "X8", T::Supervisor).await;
    let after_write = answers(&c).await;
    stop(server, c);
    let server = Server::start(dir.path(), &[]);
    assert!(from_checkpoint(&server));
    let c = server.clients().await;
    assert_eq!(answers(&c).await, after_write);
    drop(c);
    server.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_changed_after_the_stop_is_read_from_sled_not_the_checkpoint() {
    let (dir, _) = populated().await;
    // A valid change, made with sled itself: a user removed.
    {
        let db = sled::open(dir.path().join("db")).unwrap();
        let users = db.open_tree("users").unwrap();
        assert!(users.remove("acme/bob").unwrap().is_some());
        db.flush().unwrap();
    }
    let server = Server::start(dir.path(), &[]);
    read_sled_because(&server, "sled's files changed after it was written", "");
    let c = server.clients().await;
    let gone = c
        .provisioning
        .clone()
        .get_user(pb::GetUserRequest {
            account_id: "acme".into(),
            user_id: "bob".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
    stop(server, c);

    // A damaged record, written with sled after a graceful stop: the start
    // does not use the checkpoint, reads sled, and names the record.
    assert!(checkpoint(dir.path()).exists());
    {
        let db = sled::open(dir.path().join("db")).unwrap();
        let users = db.open_tree("users").unwrap();
        users
            .insert("acme/ada", &b"\x01garbage that is no user"[..])
            .unwrap();
        db.flush().unwrap();
    }
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "info")
        .env("ENTITLED_CONSOLE_LISTEN", "off")
        .output_within();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for piece in [
        "sled's files changed after it was written",
        "damaged record",
        "`users`",
        "`acme/ada`",
    ] {
        assert!(stderr.contains(piece), "no {piece:?} in:\n{stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!checkpoint(dir.path()).exists());
}

/// Each damage done to a fresh checkpoint, and what the warning says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_checkpoint_is_ignored_with_a_warning_and_sled_is_read() {
    let (dir, before) = populated().await;
    let header_field = |bytes: &[u8], at: usize| {
        usize::try_from(u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap())).unwrap()
    };
    type Damage = fn(&mut Vec<u8>, usize);
    let damages: [(&str, Damage, &str); 7] = [
        (
            "a byte of a user flipped",
            |b, users_end| b[users_end - 3] ^= 0x01,
            "",
        ),
        (
            "the checksum flipped",
            |b, _| *b.last_mut().unwrap() ^= 0x80,
            "its checksum does not match",
        ),
        ("the magic flipped", |b, _| b[0] ^= 0x20, "wrong magic"),
        (
            "the revision flipped",
            |b, _| b[39] ^= 0x01,
            "it holds revision",
        ),
        (
            "the fingerprint flipped",
            |b, users_end| b[users_end + 6] ^= 0x01,
            "",
        ),
        (
            "truncated to half",
            |b, _| b.truncate(b.len() / 2),
            "is not the one its header gives",
        ),
        ("emptied", |b, _| b.clear(), "cut short"),
    ];
    for (what, damage, says) in damages {
        let path = checkpoint(dir.path());
        let mut bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{what}: {e}"));
        let users_end = header_field(&bytes, 56);
        damage(&mut bytes, users_end);
        std::fs::write(&path, &bytes).unwrap();
        let server = Server::start(dir.path(), &[]);
        read_sled_because(&server, says, what);
        assert!(!path.exists(), "{what}");
        let c = server.clients().await;
        assert_eq!(answers(&c).await, before, "{what}");
        // A graceful stop: the next damage is done to a fresh checkpoint.
        stop(server, c);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_from_before_later_writes_is_never_used() {
    let (dir, _) = populated().await;
    let stale = std::fs::read(checkpoint(dir.path())).unwrap();
    let server = Server::start(dir.path(), &[]);
    assert!(from_checkpoint(&server));
    let c = server.clients().await;
    put(&c, "acme", "zed").await;
    let seen = answers(&c).await;
    drop(c);
    server.kill();
    assert!(!checkpoint(dir.path()).exists());
    // Put back, as if the start had not deleted it.
    std::fs::write(checkpoint(dir.path()), &stale).unwrap();
    let server = Server::start(dir.path(), &[]);
    read_sled_because(&server, "sled's files changed after it was written", "");
    let c = server.clients().await;
    assert_eq!(answers(&c).await, seen);
    drop(c);
    server.kill();
}
