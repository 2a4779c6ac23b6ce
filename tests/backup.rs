//! Backup and restore: `entitled backup` against a running server, `entitled
//! restore` into a new directory (or a new database), a server started on
//! it, and every record compared; consistency under concurrent writes;
//! refusals of a store that is not empty and of damaged files. Each test
//! runs on sled and on PostgreSQL.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use common::{
    Backend, CALL_TIMEOUT, Clients, Options, T, TestApp, assert_status, postgres::TestDatabase,
    within,
};
use entitled::{
    proto::v1::{self as pb, Role},
    store::{self, BackupError, Location},
};
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_entitled");

/// Runs the binary off the runtime's thread (the server under test runs on
/// it), for at most `process::COMMAND_TIMEOUT`; returns the exit code,
/// stdout and stderr.
async fn entitled(args: Vec<String>, token: Option<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(BIN);
        command.args(&args).env("RUST_LOG", "off");
        match token {
            Some(token) => command.env("ENTITLED_TOKEN", token),
            None => command.env_remove("ENTITLED_TOKEN"),
        };
        let out = common::process::output(&mut command);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

/// Where a restore goes: the new directory `dir` on sled; on PostgreSQL a
/// fresh database, with `dir` (made here) holding only what a server keeps
/// beside it.
struct RestoreTarget {
    dir: PathBuf,
    store: Option<Location>,
    _database: Option<TestDatabase>,
}

impl RestoreTarget {
    async fn new(backend: Backend, dir: PathBuf) -> Self {
        match backend {
            Backend::Sled => RestoreTarget {
                dir,
                store: None,
                _database: None,
            },
            Backend::Postgres => {
                std::fs::create_dir_all(&dir).unwrap();
                let database = TestDatabase::create().await;
                RestoreTarget {
                    dir,
                    store: Some(Location::Postgres(database.url.clone())),
                    _database: Some(database),
                }
            }
        }
    }

    /// `entitled restore FILE` and where to.
    fn restore_args(&self, file: &Path) -> Vec<String> {
        let into = match &self.store {
            None => ["--data-dir".to_owned(), s(&self.dir)],
            Some(Location::Postgres(url)) => ["--store".to_owned(), url.clone()],
            Some(Location::Sled(dir)) => ["--data-dir".to_owned(), s(dir)],
        };
        let mut args = vec!["restore".to_owned(), s(file)];
        args.extend(into);
        args
    }

    /// A server on the restored store, whose token file is not there: its
    /// clients send `secret`.
    async fn serve(&self, secret: String) -> TestApp {
        let options = Options {
            store: self.store.clone(),
            ..Options::default()
        };
        TestApp::start_with_secret(&self.dir, options, secret).await
    }
}

/// Everything a client can read back, for comparing two servers.
#[derive(Debug, PartialEq)]
struct Everything {
    revision: u64,
    accounts: Vec<pb::Account>,
    users: Vec<pb::User>,
    tokens: Vec<pb::TokenInfo>,
    trail: Vec<pb::Change>,
    /// Each account's trail, through its own index.
    trails: Vec<Vec<pb::Change>>,
}

async fn changes(c: &Clients, account: &str) -> Vec<pb::Change> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = c
            .audit
            .clone()
            .list_changes(pb::ListChangesRequest {
                account_id: account.into(),
                page_size: 7,
                page_token,
                after_revision: 0,
            })
            .await
            .unwrap()
            .into_inner();
        all.extend(page.changes);
        if page.next_page_token.is_empty() {
            return all;
        }
        page_token = page.next_page_token;
    }
}

async fn everything(app: &TestApp, accounts: &[&str]) -> Everything {
    let c = app.clients(Some(&app.operator_secret));
    let mut all = Everything {
        revision: app.revision().await,
        accounts: Vec::new(),
        users: Vec::new(),
        tokens: c
            .tokens
            .clone()
            .list_tokens(pb::ListTokensRequest::default())
            .await
            .unwrap()
            .into_inner()
            .tokens,
        trail: changes(&c, "").await,
        trails: Vec::new(),
    };
    for account in accounts {
        all.accounts.push(app.get_account(account).await.unwrap());
        all.users.extend(
            c.provisioning
                .clone()
                .list_users(pb::ListUsersRequest {
                    account_id: (*account).into(),
                    page_size: 1000,
                    page_token: String::new(),
                })
                .await
                .unwrap()
                .into_inner()
                .users,
        );
        all.trails.push(changes(&c, account).await);
    }
    all
}

fn services(request_id: &str) -> pb::UpdateUserServicesRequest {
    pb::UpdateUserServicesRequest {
        account_id: "acme".into(),
        user_id: "ada".into(),
        edition: Some("X8".into()),
        analytics_tier: Some(T::Supervisor as i32),
        request_id: request_id.into(),
        ..Default::default()
    }
}

on_both_backends! {
    async fn a_backup_restored_into_a_new_directory_holds_every_record(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        app.create_account("legacy", "virtual-office").await;
        for user in ["ada", "bob", "cy"] {
            app.put_user("acme", user).await;
        }
        app.put_user("legacy", "dee").await;
        app.set("acme", "bob", Some("X6"), Some(T::Supervisor))
            .await
            .unwrap();
        // A downgrade with its notice, a refusal, a deletion.
        app.set("acme", "bob", Some("X2"), None).await.unwrap();
        assert_status(
            app.set("acme", "bob", None, Some(T::Supervisor)).await,
            Code::FailedPrecondition,
            &[],
        );
        app.set("legacy", "dee", Some("X8e"), Some(T::Essentials))
            .await
            .unwrap();
        // A supervisor scoped to groups (rule 12): its user record and
        // audit states carry the list.
        app.put_user("acme", "eve").await;
        app.update(pb::UpdateUserServicesRequest {
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
        app.provisioning
            .clone()
            .delete_user(pb::DeleteUserRequest {
                account_id: "acme".into(),
                user_id: "cy".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        // An account deleted with its user and its token: the trail keeps
        // the account's before and after.
        app.create_account("gone", "work").await;
        app.put_user("gone", "eve").await;
        app.token("gone admin", Role::AccountAdmin, "gone", "eve").await;
        app.provisioning
            .clone()
            .delete_account(pb::DeleteAccountRequest {
                account_id: "gone".into(),
                request_id: String::new(),
            })
            .await
            .unwrap();
        // Tokens: one in use, one revoked; a write with a request id.
        let gateway = app.token("gateway", Role::Gateway, "", "").await;
        let admin = app
            .token("acme admin", Role::AccountAdmin, "acme", "boss")
            .await;
        let revoked = app.token("old", Role::Provisioner, "", "").await;
        app.tokens
            .clone()
            .revoke_token(pb::RevokeTokenRequest {
                token_id: revoked.split('.').next().unwrap().into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let admin_clients = app.clients(Some(&admin));
        let first = admin_clients
            .provisioning
            .clone()
            .update_user_services(services("save-1"))
            .await
            .unwrap()
            .into_inner();

        let before = everything(&app, &["acme", "legacy"]).await;
        assert!(before.trail.iter().any(|c| c.refused));
        assert!(
            before
                .trail
                .iter()
                .any(|c| c.account_before.is_some() && c.account_after.is_none())
        );
        assert!(
            before
                .users
                .iter()
                .any(|u| u.supervisor_scope.as_ref().is_some_and(|s| s.refs.len() == 2)),
            "a scoped supervisor is in the backup"
        );
        assert!(before.trail.len() > 10);

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("entitled.backup");
        let (code, stdout, stderr) = entitled(
            vec![
                "backup".into(),
                "--out".into(),
                s(&file),
                "--server".into(),
                format!("http://{}", app.addr),
            ],
            Some(app.operator_secret.clone()),
        )
        .await;
        assert_eq!(code, 0, "{stderr}");
        assert!(
            stdout.contains(&format!("backup of revision {}", before.revision)),
            "{stdout}"
        );
        assert!(!dir.path().join("entitled.backup.partial").exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(
                mode & 0o777,
                0o600,
                "a backup is readable by its owner only"
            );
        }

        // Later writes are not in it: a backup is as of one revision.
        app.put_user("acme", "late").await;

        let target = RestoreTarget::new(backend, dir.path().join("restored")).await;
        let restored_dir = target.dir.clone();
        let (code, stdout, stderr) = entitled(target.restore_args(&file), None).await;
        assert_eq!(code, 0, "{stderr}");
        assert!(
            stdout.contains(&format!("restored revision {}", before.revision)),
            "{stdout}"
        );

        let restored = target.serve(app.operator_secret.clone()).await;
        assert_eq!(everything(&restored, &["acme", "legacy"]).await, before);
        // No new operator token was made on the restored directory.
        assert!(!restored_dir.join("operator.token").exists());
        // The tokens still work as they did.
        assert!(
            restored
                .clients(Some(&gateway))
                .access
                .clone()
                .check_analytics_access(pb::CheckAnalyticsAccessRequest {
                    account_id: "acme".into(),
                    user_id: "ada".into(),
                    min_revision: 0,
                })
                .await
                .unwrap()
                .into_inner()
                .allowed
        );
        assert_status(
            restored
                .clients(Some(&revoked))
                .catalogue
                .clone()
                .get_catalogue(pb::GetCatalogueRequest {})
                .await,
            Code::Unauthenticated,
            &[],
        );
        // Retry records came along: the retry gets the first answer.
        let again = restored
            .clients(Some(&admin))
            .provisioning
            .clone()
            .update_user_services(services("save-1"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again, first);
        assert_eq!(restored.revision().await, before.revision);
    }
}

/// The messages of a backup stream and the revision it is of.
async fn read_backup(stream: &mut tonic::Streaming<pb::BackupResponse>) -> (Vec<u8>, u64, usize) {
    let mut bytes = Vec::new();
    let mut revision = 0;
    let mut messages = 0;
    while let Some(message) = within(CALL_TIMEOUT, "the backup's next message", stream.message())
        .await
        .unwrap()
    {
        revision = message.revision;
        bytes.extend_from_slice(&message.chunk);
        messages += 1;
    }
    (bytes, revision, messages)
}

/// Waits (at most `CALL_TIMEOUT`) until the store's revision passes
/// `revision`.
async fn revision_passes(app: &TestApp, revision: u64, what: &str) {
    within(CALL_TIMEOUT, what, async {
        while app.revision().await <= revision {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

on_both_backends! {
    async fn a_backup_under_concurrent_writes_is_one_point_in_time(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        // Writers that go on until the backup is over and the store has moved
        // past it: the backup is taken while they write, whatever the timing.
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let c = app.clients(Some(&app.operator_secret));
                let stop = Arc::clone(&stop);
                tokio::spawn(async move {
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        c.provisioning
                            .clone()
                            .put_user(pb::PutUserRequest {
                                account_id: "acme".into(),
                                user_id: format!("w{w}-{i}"),
                                // Long, so the backup takes several messages.
                                display_name: "someone ".repeat(30),
                                ..Default::default()
                            })
                            .await
                            .unwrap();
                        i += 1;
                    }
                })
            })
            .collect();
        // Once the writers are under way, back up while they write.
        revision_passes(&app, 120, "120 writes").await;
        let mut stream = app
            .clients(Some(&app.operator_secret))
            .backup
            .clone()
            .backup(pb::BackupRequest {})
            .await
            .unwrap()
            .into_inner();
        let (bytes, revision, messages) = read_backup(&mut stream).await;
        assert!(
            messages > 1,
            "a backup of {} bytes in one message",
            bytes.len()
        );
        assert!(revision > 120, "backup at {revision}");
        // The writers go on past the backup's revision, then stop.
        revision_passes(&app, revision, "a write after the backup's revision").await;
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            within(CALL_TIMEOUT, "a writer's last write", w)
                .await
                .unwrap();
        }

        // Restored by the binary: sled lets go of a directory some time after
        // its last handle in a process is dropped, so this process could not
        // open it at once.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b");
        std::fs::write(&file, &bytes).unwrap();
        assert_eq!(store::verify(bytes.as_slice()).unwrap().revision, revision);
        let target = RestoreTarget::new(backend, dir.path().join("data")).await;
        let (code, _, stderr) = entitled(target.restore_args(&file), None).await;
        assert_eq!(code, 0, "{stderr}");
        let restored = target.serve(app.operator_secret.clone()).await;
        // Exactly the users whose creation is at or below the backup's
        // revision, and an audit trail that stops there too.
        let users: BTreeSet<String> = restored
            .provisioning
            .clone()
            .list_users(pb::ListUsersRequest {
                account_id: "acme".into(),
                page_size: 1000,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .users
            .into_iter()
            .map(|u| u.user_id)
            .collect();
        let c = app.clients(Some(&app.operator_secret));
        let expected: BTreeSet<String> = changes(&c, "acme")
            .await
            .into_iter()
            .filter(|c| c.revision <= revision && c.rpc.ends_with("PutUser"))
            .map(|c| c.user_id)
            .collect();
        assert_eq!(users, expected);
        // Users written after the backup's revision exist, and are not in it.
        let everyone = changes(&c, "acme")
            .await
            .into_iter()
            .filter(|c| c.rpc.ends_with("PutUser"))
            .count();
        assert!(
            users.len() < everyone,
            "{} of {everyone} users restored",
            users.len()
        );
        let trail = changes(&restored.clients(Some(&app.operator_secret)), "").await;
        assert_eq!(trail.last().unwrap().revision, revision);
        assert_eq!(restored.revision().await, revision);
    }
}

on_both_backends! {
    async fn restore_refuses_a_store_that_is_not_empty(backend) {
        let app = TestApp::spawn_on(backend).await;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b");
        let (code, _, stderr) = entitled(
            vec![
                "backup".into(),
                "--out".into(),
                s(&file),
                "--server".into(),
                format!("http://{}", app.addr),
            ],
            Some(app.operator_secret.clone()),
        )
        .await;
        assert_eq!(code, 0, "{stderr}");

        match backend {
            Backend::Sled => {
                // The server's own directory, in use and full.
                let (code, _, stderr) = entitled(
                    vec![
                        "restore".into(),
                        s(&file),
                        "--data-dir".into(),
                        s(&app.data_dir),
                    ],
                    None,
                )
                .await;
                assert_eq!(code, 1, "{stderr}");
                assert!(
                    stderr.contains(&format!(
                        "data directory `{}` is not empty; restore only into an empty or new directory",
                        app.data_dir.display()
                    )),
                    "{stderr}"
                );
                // Nothing was left beside it.
                let staging = format!(
                    ".{}.restoring-",
                    app.data_dir.file_name().unwrap().to_string_lossy()
                );
                let leftovers: Vec<_> = std::fs::read_dir(app.data_dir.parent().unwrap())
                    .unwrap()
                    .filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().starts_with(&staging))
                    .collect();
                assert!(leftovers.is_empty(), "{leftovers:?}");

                // An empty directory is fine.
                let empty = dir.path().join("empty");
                std::fs::create_dir(&empty).unwrap();
                let (code, _, stderr) = entitled(
                    vec!["restore".into(), s(&file), "--data-dir".into(), s(&empty)],
                    None,
                )
                .await;
                assert_eq!(code, 0, "{stderr}");
                assert!(empty.join("db").is_dir());
            }
            Backend::Postgres => {
                // The server's own database, in use and full.
                let Some(Location::Postgres(url)) = app.store.clone() else {
                    panic!("a PostgreSQL test server without a database")
                };
                let database = app.database.as_ref().unwrap();
                let revision = app.revision().await;
                let stored = database.stored_bytes().await;
                let (code, _, stderr) = entitled(
                    vec!["restore".into(), s(&file), "--store".into(), url.clone()],
                    None,
                )
                .await;
                assert_eq!(code, 1, "{stderr}");
                assert!(
                    stderr.contains(&format!(
                        "`{url}` is not empty (it holds a store at revision {revision}); copy or restore only into a new or empty one"
                    )),
                    "{stderr}"
                );
                // Nothing was written into it.
                assert_eq!(app.revision().await, revision);
                assert_eq!(database.stored_bytes().await, stored);

                // An empty database is fine.
                let empty = TestDatabase::create().await;
                assert!(empty.tables().await.is_empty());
                let (code, _, stderr) = entitled(
                    vec!["restore".into(), s(&file), "--store".into(), empty.url.clone()],
                    None,
                )
                .await;
                assert_eq!(code, 0, "{stderr}");
                assert!(
                    empty.tables().await.iter().any(|t| t == "entitled_users"),
                    "{:?}",
                    empty.tables().await
                );
            }
        }
    }
}

on_both_backends! {
    async fn backup_needs_a_token_and_an_operator(backend) {
        let app = TestApp::spawn_on(backend).await;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b");
        let args = vec![
            "backup".to_owned(),
            "--out".into(),
            s(&file),
            "--server".into(),
            format!("http://{}", app.addr),
        ];
        let (code, _, stderr) = entitled(args.clone(), None).await;
        assert_eq!(code, 3, "refused by the server: {stderr}");
        assert!(stderr.contains("this call needs a token"), "{stderr}");

        let gateway = app.token("gateway", Role::Gateway, "", "").await;
        let (code, _, stderr) = entitled(args, Some(gateway)).await;
        assert_eq!(code, 3, "refused by the server: {stderr}");
        assert!(
            stderr.contains("role `gateway` may not call BackupService.Backup"),
            "{stderr}"
        );
        assert!(!file.exists());
    }
}

on_both_backends! {
    async fn a_damaged_or_cut_backup_is_refused_and_restores_nothing(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        let mut stream = app
            .clients(Some(&app.operator_secret))
            .backup
            .clone()
            .backup(pb::BackupRequest {})
            .await
            .unwrap()
            .into_inner();
        let (bytes, _, _) = read_backup(&mut stream).await;
        let summary = store::verify(bytes.as_slice()).unwrap();
        assert_eq!(summary.bytes, bytes.len() as u64);

        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("data");
        // On PostgreSQL, a fresh database is the target.
        let database = match backend {
            Backend::Sled => None,
            Backend::Postgres => Some(TestDatabase::create().await),
        };
        let restore = |file: &Path| {
            let database = database.as_ref().map(|d| d.url.clone());
            let target = target.clone();
            let file = file.to_path_buf();
            async move {
                match database {
                    None => store::restore(&file, &target).map(drop),
                    Some(url) => store::restore_into_database(&file, &url).await.map(drop),
                }
            }
        };
        let mut flipped = bytes.clone();
        // A bit of the account's key, not of a length field: the checksum is
        // what must notice it.
        let at = flipped
            .windows(4)
            .position(|w| w == b"acme")
            .expect("the account's key is in the backup");
        flipped[at] ^= 0x01;
        let cut = &bytes[..bytes.len() - 40];
        let mut version = bytes.clone();
        version[19] = 9;
        let missing = restore(&dir.path().join("nonexistent")).await.unwrap_err();
        assert!(
            missing.to_string().starts_with("cannot open backup `"),
            "{missing}"
        );
        let file = tempfile::NamedTempFile::new().unwrap();
        for (what, bytes, want) in [
            (
                "a flipped bit",
                flipped.as_slice(),
                "checksum does not match",
            ),
            ("a cut file", cut, "ends too early"),
            (
                "another format version",
                version.as_slice(),
                "format version 9 is not supported",
            ),
            (
                "not a backup",
                b"hello".as_slice(),
                "not an entitled backup",
            ),
        ] {
            assert!(store::verify(bytes).is_err(), "{what}");
            std::fs::write(file.path(), bytes).unwrap();
            let error: BackupError = restore(file.path()).await.unwrap_err();
            assert!(error.to_string().contains(want), "{what}: {error}");
            if let Some(database) = &database {
                let tables = database.tables().await;
                assert!(tables.is_empty(), "{what} left tables: {tables:?}");
            }
            assert!(!target.exists(), "{what} left a directory");
            assert_eq!(
                std::fs::read_dir(dir.path()).unwrap().count(),
                0,
                "{what} left something behind"
            );
        }
    }
}
