//! Bad disks and directories: a damaged or truncated data directory, one that
//! cannot be written, and a full disk. Each gives a clear start-up error and
//! exit code, or a failing write with a clear status while reads go on;
//! never a panic. The server is the real binary.
//!
//! The read-only and full-disk tests mount a tmpfs, which needs root. Where
//! `mount` is not permitted they cannot run, which is known only at run
//! time, so this file has its own harness (libtest-mimic, `harness = false`
//! in Cargo.toml) that reports such a test *ignored*, with the reason, in
//! the run's `test result:` line, rather than letting it pass having done
//! nothing. With `ENTITLED_REQUIRE_MOUNT=1` (set by `.ci/run`, which runs as
//! root) a test that cannot mount fails instead.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use std::{
    future::Future,
    path::Path,
    process::Command,
    sync::{OnceLock, mpsc},
    time::Duration,
};

use common::process::{BIN, Server, child::wait_within};
use entitled::proto::v1 as pb;
use libtest_mimic::{Arguments, Completion, Failed, Trial};
use tonic::Code;

fn main() -> std::process::ExitCode {
    let args = Arguments::from_args();
    let _ = VERBOSE.set(args.nocapture);
    let tests = vec![
        test(
            "a_damaged_record_stops_start_up_naming_it",
            a_damaged_record_stops_start_up_naming_it,
        ),
        test(
            "a_damaged_revision_counter_stops_start_up_naming_it",
            a_damaged_revision_counter_stops_start_up_naming_it,
        ),
        test(
            "garbage_over_or_truncation_of_each_sled_file_gives_an_error_or_the_data",
            garbage_over_or_truncation_of_each_sled_file_gives_an_error_or_the_data,
        ),
        test(
            "lost_replaced_or_older_sled_data_is_refused_not_served",
            lost_replaced_or_older_sled_data_is_refused_not_served,
        ),
        test(
            "a_damaged_watermark_is_refused_and_a_missing_one_made_again",
            a_damaged_watermark_is_refused_and_a_missing_one_made_again,
        ),
        test(
            "a_data_directory_that_is_a_file_is_refused_clearly",
            a_data_directory_that_is_a_file_is_refused_clearly,
        ),
        needs_mount(
            "a_read_only_data_directory_is_refused_clearly",
            "size=1m,ro",
            a_read_only_data_directory_is_refused_clearly,
        ),
        needs_mount(
            "a_full_disk_fails_writes_with_unavailable_and_reads_go_on",
            "size=4m",
            a_full_disk_fails_writes_with_unavailable_and_reads_go_on,
        ),
    ];
    libtest_mimic::run(&args, tests).exit_code()
}

/// Set to 1 to make a test that cannot mount fail instead of being
/// reported ignored.
const REQUIRE_MOUNT: &str = "ENTITLED_REQUIRE_MOUNT";

/// Whether `--nocapture` was given: this harness cannot capture output, so
/// the tests print their progress only then.
static VERBOSE: OnceLock<bool> = OnceLock::new();

macro_rules! say {
    ($($arg:tt)*) => {
        if VERBOSE.get().copied().unwrap_or(false) {
            println!($($arg)*);
        }
    };
}

/// Runs `body` on a runtime of its own, as `#[tokio::test]` would (with
/// two worker threads); a panic fails the test.
fn block_on(body: impl Future<Output = ()>) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(body);
}

fn test<F: Future<Output = ()> + 'static>(name: &str, body: fn() -> F) -> Trial {
    Trial::test(name, move || {
        block_on(body());
        Ok(())
    })
}

/// A test on a tmpfs mounted with `options`. Where it cannot be mounted the
/// test is reported ignored with the reason (which the summary counts), or
/// fails if `ENTITLED_REQUIRE_MOUNT=1`.
fn needs_mount<F: Future<Output = ()> + 'static>(
    name: &str,
    options: &'static str,
    body: fn(Mount) -> F,
) -> Trial {
    Trial::ignorable_test(name, move || match Mount::tmpfs(options) {
        Ok(mount) => {
            block_on(body(mount));
            Ok(Completion::Completed)
        }
        Err(reason) if mount_required() => Err(Failed::from(format!(
            "{reason}, and {REQUIRE_MOUNT}=1 requires this test to run"
        ))),
        Err(reason) => Ok(Completion::ignored_with(format!(
            "{reason}; it needs root, and with {REQUIRE_MOUNT}=1 this is a failure"
        ))),
    })
}

fn mount_required() -> bool {
    std::env::var(REQUIRE_MOUNT).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// How long the binary may take to serve or to refuse.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `entitled serve` on `dir`: Ok if it started (it is then killed),
/// or its exit code and log if it refused.
fn serve(dir: &Path) -> Result<(), (Option<i32>, String)> {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("RUST_LOG", "info")
        .env("ENTITLED_CONSOLE_LISTEN", "off")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let outcome = started_or_exited(&mut child);
    if outcome.is_ok() {
        let _ = child.kill();
        let _ = child.wait();
    }
    outcome
}

fn serve_fails(dir: &Path) -> (Option<i32>, String) {
    match serve(dir) {
        Ok(()) => panic!("the server started on `{}`", dir.display()),
        Err(refused) => refused,
    }
}

#[track_caller]
fn assert_refused(out: &(Option<i32>, String), pieces: &[&str]) {
    let (code, stderr) = out;
    assert!(!stderr.contains("panicked"), "a panic:\n{stderr}");
    assert_eq!(*code, Some(1), "{stderr}");
    for piece in pieces {
        assert!(stderr.contains(piece), "no {piece:?} in:\n{stderr}");
    }
}

/// A data directory with an account and a user, its server stopped.
async fn populated() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let c = server.clients().await;
    c.provisioning
        .clone()
        .create_account(pb::CreateAccountRequest {
            account_id: "acme".into(),
            display_name: "Acme".into(),
            product_line: "work".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    c.provisioning
        .clone()
        .put_user(pb::PutUserRequest {
            account_id: "acme".into(),
            user_id: "ada".into(),
            display_name: "Ada".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // Our connection closes first: the server's graceful stop waits for it
    // (and `terminate` blocks this thread).
    drop(c);
    let log = std::sync::Arc::clone(&server.log);
    let status = server.terminate();
    assert!(
        status.success(),
        "a graceful stop: {status:?}; the server's log:\n{}",
        log.lock().unwrap().join("\n")
    );
    dir
}

async fn a_damaged_record_stops_start_up_naming_it() {
    let dir = populated().await;
    {
        let db = sled::open(dir.path().join("db")).unwrap();
        let users = db.open_tree("users").unwrap();
        let (key, _) = users.first().unwrap().unwrap();
        users
            .insert(key, &b"\x01garbage that is no user"[..])
            .unwrap();
        db.flush().unwrap();
    }
    let out = serve_fails(dir.path());
    assert_refused(&out, &["damaged record", "`users`"]);
}

async fn a_damaged_revision_counter_stops_start_up_naming_it() {
    let dir = populated().await;
    {
        let db = sled::open(dir.path().join("db")).unwrap();
        let meta = db.open_tree("meta").unwrap();
        meta.insert("revision", &b"xyz"[..]).unwrap();
        db.flush().unwrap();
    }
    let out = serve_fails(dir.path());
    assert_refused(
        &out,
        &[
            "damaged record",
            "`meta`",
            "`revision`",
            "expected 8 bytes, found 3",
        ],
    );
}

/// Every file of sled's, overwritten or cut short in turn: the server
/// refuses to start, clearly, or it starts with every record. Before the
/// watermark, an emptied or cut `db/db` started an empty store.
async fn garbage_over_or_truncation_of_each_sled_file_gives_an_error_or_the_data() {
    let dir = populated().await;
    let db_dir = dir.path().join("db");
    let mut files: Vec<_> = walk(&db_dir);
    files.sort();
    assert!(!files.is_empty());
    let mut refused = 0;
    for file in files {
        let original = std::fs::read(&file).unwrap();
        for (what, damaged) in [
            ("garbage over", vec![0xa5u8; original.len().max(64)]),
            ("truncated", original[..original.len() / 2].to_vec()),
            ("emptied", Vec::new()),
        ] {
            let copy = tempfile::tempdir().unwrap();
            copy_dir(dir.path(), copy.path());
            let target = copy.path().join(file.strip_prefix(dir.path()).unwrap());
            std::fs::write(&target, &damaged).unwrap();
            let name = format!("{what} {}", target.display());
            match serve(copy.path()) {
                Ok(()) => {
                    assert_has_the_data(copy.path(), &name).await;
                    say!("{name}: started, with the data");
                }
                Err((code, stderr)) => {
                    assert!(!stderr.contains("panicked"), "{name}: a panic:\n{stderr}");
                    assert_eq!(code, Some(1), "{name}:\n{stderr}");
                    assert!(stderr.contains("data directory"), "{name}:\n{stderr}");
                    say!("{name}: refused: {}", stderr.lines().last().unwrap_or(""));
                    refused += 1;
                }
            }
        }
    }
    assert!(refused > 0, "no damage was noticed at all");
}

/// The account and user `populated` made are served, as they were.
async fn assert_has_the_data(dir: &Path, name: &str) {
    let server = Server::start(dir, &[]);
    let c = server.clients().await;
    let user = c
        .provisioning
        .clone()
        .get_user(pb::GetUserRequest {
            account_id: "acme".into(),
            user_id: "ada".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("{name}: started without the user: {e:?}"))
        .into_inner()
        .user
        .unwrap();
    assert_eq!(user.display_name, "Ada", "{name}");
    drop(c);
    server.kill();
}

/// The regression for the bug the test above found: sled's files emptied,
/// removed, or put back from an earlier copy, open cleanly with older data
/// or none. The watermark tells, and the server refuses to serve it.
async fn lost_replaced_or_older_sled_data_is_refused_not_served() {
    let dir = populated().await;
    let db = dir.path().join("db");

    // `db` removed: sled makes a new, empty store.
    let copy = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), copy.path());
    std::fs::remove_dir_all(copy.path().join("db")).unwrap();
    let out = serve_fails(copy.path());
    assert_refused(
        &out,
        &["has lost data", "hold revision 0", "entitled.watermark"],
    );

    // `db/db` emptied.
    let copy = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), copy.path());
    std::fs::write(copy.path().join("db/db"), b"").unwrap();
    let out = serve_fails(copy.path());
    assert_refused(&out, &["data directory", "entitled.watermark"]);

    // Another data directory's `db`.
    let other = populated().await;
    let copy = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), copy.path());
    std::fs::remove_dir_all(copy.path().join("db")).unwrap();
    std::fs::create_dir(copy.path().join("db")).unwrap();
    copy_dir(&other.path().join("db"), &copy.path().join("db"));
    let out = serve_fails(copy.path());
    assert_refused(&out, &["are not those of the store", "put back"]);

    // This directory's own `db`, as it was some writes ago.
    let earlier = tempfile::tempdir().unwrap();
    copy_dir(&db, earlier.path());
    let server = Server::start(dir.path(), &[]);
    let c = server.clients().await;
    c.provisioning
        .clone()
        .put_user(pb::PutUserRequest {
            account_id: "acme".into(),
            user_id: "bob".into(),
            display_name: "Bob".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    drop(c);
    // SIGKILL: the watermark written after the flush is what tells.
    server.kill();
    let copy = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), copy.path());
    std::fs::remove_dir_all(copy.path().join("db")).unwrap();
    std::fs::create_dir(copy.path().join("db")).unwrap();
    copy_dir(earlier.path(), &copy.path().join("db"));
    let out = serve_fails(copy.path());
    assert_refused(
        &out,
        &[
            "has lost data",
            "hold revision",
            "Restore the latest backup",
        ],
    );

    // The directory itself, untouched, still serves.
    assert_has_the_data(dir.path(), "untouched").await;
}

/// A damaged watermark stops start-up naming it; a removed one is made
/// again from sled's data, as for a directory made before watermarks.
async fn a_damaged_watermark_is_refused_and_a_missing_one_made_again() {
    let dir = populated().await;
    let watermark = dir.path().join("entitled.watermark");
    let good = std::fs::read(&watermark).unwrap();
    std::fs::write(&watermark, vec![0x5a; good.len()]).unwrap();
    let out = serve_fails(dir.path());
    assert_refused(
        &out,
        &[
            "entitled.watermark",
            "neither slot passes its checksum",
            "remove that file",
        ],
    );
    std::fs::remove_file(&watermark).unwrap();
    assert_has_the_data(dir.path(), "watermark removed").await;
    assert_eq!(std::fs::read(&watermark).unwrap().len(), good.len());

    // A directory from before watermarks: no watermark, no store id in
    // sled. It is served, and gets both.
    std::fs::remove_file(&watermark).unwrap();
    {
        let db = sled::open(dir.path().join("db")).unwrap();
        let meta = db.open_tree("meta").unwrap();
        assert!(meta.remove("store_id").unwrap().is_some());
        db.flush().unwrap();
    }
    assert_has_the_data(dir.path(), "made before watermarks").await;
    assert!(watermark.exists());
    let db = sled::open(dir.path().join("db")).unwrap();
    assert!(
        db.open_tree("meta")
            .unwrap()
            .get("store_id")
            .unwrap()
            .is_some()
    );
}

/// Waits until the server logs that it serves, or exits (at most
/// `START_TIMEOUT`: one that does neither fails the test, and is killed).
fn started_or_exited(child: &mut std::process::Child) -> Result<(), (Option<i32>, String)> {
    use std::io::{BufRead, BufReader};
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("serving addr=") {
                let _ = tx.send(None);
                return;
            }
            all.push_str(&line);
            all.push('\n');
        }
        let _ = tx.send(Some(all));
    });
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(None) => Ok(()),
        Ok(Some(all)) => {
            let status = wait_within(child, START_TIMEOUT)
                .unwrap_or_else(|| panic!("the server closed its log but did not exit:\n{all}"));
            Err((status.code(), all))
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server neither served nor exited within {START_TIMEOUT:?}");
        }
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

async fn a_data_directory_that_is_a_file_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let out = serve_fails(&file);
    assert_refused(&out, &["cannot create data directory", "not-a-dir"]);
}

/// A tmpfs mounted for the test, unmounted when dropped.
struct Mount(tempfile::TempDir);

impl Mount {
    /// Mounted, or why not (mount not permitted, or not there).
    fn tmpfs(options: &str) -> Result<Mount, String> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(out) if out.status.success() => Ok(Mount(dir)),
            Ok(out) => Err(format!(
                "cannot mount a tmpfs: {}",
                String::from_utf8_lossy(&out.stderr)
                    .trim()
                    .trim_end_matches('.')
            )),
            Err(e) => Err(format!("cannot run mount: {e}")),
        }
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

async fn a_read_only_data_directory_is_refused_clearly(mount: Mount) {
    let out = serve_fails(&mount.path().join("data"));
    assert_refused(&out, &["data directory", "Read-only file system"]);
    let out = serve_fails(mount.path());
    assert_refused(&out, &["data directory", "Read-only file system"]);
}

async fn a_full_disk_fails_writes_with_unavailable_and_reads_go_on(mount: Mount) {
    let server = Server::start(mount.path(), &[]);
    let c = server.clients().await;
    let mut p = c.provisioning.clone();
    p.create_account(pb::CreateAccountRequest {
        account_id: "acme".into(),
        display_name: "Acme".into(),
        product_line: "work".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    // Users with long names until the disk is full (4 MiB: a bounded loop).
    let name = "n".repeat(250);
    let mut written = 0;
    let refused = loop {
        assert!(written < 100_000, "the disk never filled");
        let r = p
            .put_user(pb::PutUserRequest {
                account_id: "acme".into(),
                user_id: format!("u{written}"),
                display_name: format!("{name}{written}"),
                ..Default::default()
            })
            .await;
        match r {
            Ok(_) => written += 1,
            Err(status) => break status,
        }
    };
    say!("disk full after {written} users: {refused:?}");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    // Later writes are refused the same way; reads answer from memory.
    let again = p
        .put_user(pb::PutUserRequest {
            account_id: "acme".into(),
            user_id: "late".into(),
            display_name: "Late".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::Unavailable, "{again:?}");
    let user = p
        .get_user(pb::GetUserRequest {
            account_id: "acme".into(),
            user_id: "u0".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(user.user_id, "u0");
    let check = server
        .clients()
        .await
        .access
        .check_analytics_access(pb::CheckAnalyticsAccessRequest {
            account_id: "acme".into(),
            user_id: "u1".into(),
            min_revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    // The user is known (no licence, so no analytics): read from the data.
    assert_ne!(
        check.denial_reason,
        pb::DenialReason::UserNotFound as i32,
        "{check:?}"
    );
    let log = server.log.lock().unwrap().join("\n");
    assert!(!log.contains("panicked"), "{log}");
    drop(c);
    server.kill();
    // Restarted on the disk still full: sled cannot open (it writes at
    // open), so start-up stops with a clear error, not a panic.
    let out = serve_fails(mount.path());
    assert_refused(&out, &["data directory", "No space left on device"]);
}
