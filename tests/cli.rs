//! The command line as a user drives it: the binary spawned as a process
//! against a real server, on sled and on PostgreSQL (the config test starts
//! no server).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use std::{path::Path, process::Command};

use common::{T, TestApp, process::OutputWithin};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_entitled");

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }
}

/// Runs `entitled ARGS` as a client of `app` with `token`.
async fn run(app: &TestApp, token: &str, args: &[&str]) -> Run {
    run_with(app, &[("ENTITLED_TOKEN", token)], args).await
}

/// Runs `entitled ARGS` as a client of `app` with only the token
/// variables in `env`.
async fn run_with(app: &TestApp, env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env("ENTITLED_SERVER", format!("http://{}", app.addr))
        .env_remove("ENTITLED_TOKEN")
        .env_remove("ENTITLED_TOKEN_FILE")
        .envs(env.iter().copied())
        .env_remove("RUST_LOG");
    let out = tokio::task::spawn_blocking(move || command.output_within())
        .await
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn ok(app: &TestApp, args: &[&str]) -> Run {
    let r = run(app, &app.operator_secret, args).await;
    assert_eq!(r.code, 0, "entitled {args:?}: {}", r.stderr);
    r
}

on_both_backends! {
    async fn the_console_walk_through(backend) {
        let app = TestApp::spawn_on(backend).await;
        ok(
            &app,
            &[
                "account",
                "create",
                "acme",
                "--product-line",
                "work",
                "--name",
                "Acme Corp",
            ],
        )
        .await;
        ok(
            &app,
            &["user", "put", "acme", "ada", "--name", "Ada Lovelace"],
        )
        .await;
        ok(&app, &["user", "put", "acme", "bob"]).await;
        let set = ok(
            &app,
            &[
                "user",
                "set",
                "acme",
                "ada",
                "--edition",
                "X8",
                "--analytics",
                "supervisor",
                "--output",
                "json",
            ],
        )
        .await;
        assert_eq!(set.json()["analytics"], "supervisor");

        // The downgrade notice, on stderr and in the output.
        let down = ok(
            &app,
            &[
                "user",
                "set",
                "acme",
                "ada",
                "--edition",
                "X2",
                "--output",
                "json",
            ],
        )
        .await;
        assert!(
            down.stderr
                .contains("notice: edition `X2` does not include supervisor analytics"),
            "{}",
            down.stderr
        );
        assert_eq!(down.json()["analytics"], "essentials");
        assert_eq!(down.json()["notices"].as_array().unwrap().len(), 1);

        let check = ok(&app, &["check", "acme", "ada", "--output", "json"])
            .await
            .json();
        assert_eq!(
            (check["allowed"].as_bool(), check["tier"].as_str()),
            (Some(true), Some("essentials"))
        );
        let table = ok(&app, &["check", "acme", "bob"]).await.stdout;
        assert!(
            table.contains("allowed") && table.contains("false") && table.contains("no_edition"),
            "{table}"
        );

        let list = ok(&app, &["user", "list", "acme", "--output", "json"])
            .await
            .json();
        let ids: Vec<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["user_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["ada", "bob"]);
        let table = ok(&app, &["user", "list", "acme"]).await.stdout;
        assert!(table.starts_with("ACCOUNT_ID"), "{table}");

        let catalogue = ok(&app, &["catalogue", "show", "--output", "json"])
            .await
            .json();
        assert_eq!(catalogue["data_delay"], "2days");
        assert_eq!(
            catalogue["migrations"][0],
            serde_json::json!({"from": "virtual-office", "to": "work", "edition": "X2", "becomes": "X2"})
        );
        let audit = ok(
            &app,
            &["audit", "list", "--account", "acme", "--output", "json"],
        )
        .await
        .json();
        assert!(audit.as_array().unwrap().len() >= 5);

        // Tokens: made, used, listed without secrets, revoked.
        let made = ok(
            &app,
            &[
                "token", "create", "--name", "gw", "--role", "gateway", "--output", "json",
            ],
        )
        .await
        .json();
        let secret = made["secret"].as_str().unwrap().to_owned();
        assert_eq!(run(&app, &secret, &["check", "acme", "ada"]).await.code, 0);
        let listed = ok(&app, &["token", "list", "--output", "json"])
            .await
            .stdout;
        assert!(!listed.contains(secret.split('.').nth(1).unwrap()));
        ok(
            &app,
            &["token", "revoke", made["token_id"].as_str().unwrap()],
        )
        .await;
        assert_eq!(run(&app, &secret, &["check", "acme", "ada"]).await.code, 3);

        ok(&app, &["user", "delete", "acme", "bob"]).await;
        assert_eq!(
            run(&app, &app.operator_secret, &["user", "get", "acme", "bob"])
                .await
                .code,
            3
        );
    }
}

on_both_backends! {
    async fn exit_codes_tell_usage_refusal_and_unreachable_apart(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        app.put_user("acme", "ada").await;

        let usage = run(&app, &app.operator_secret, &["user", "set", "acme"]).await;
        assert_eq!(usage.code, 2, "{}", usage.stderr);
        let usage = run(&app, &app.operator_secret, &["user", "set", "acme", "ada"]).await;
        assert_eq!(usage.code, 2, "{}", usage.stderr);
        assert!(usage.stderr.contains("nothing to set"));

        let refused = run(
            &app,
            &app.operator_secret,
            &["user", "set", "acme", "ada", "--analytics", "essentials"],
        )
        .await;
        assert_eq!(refused.code, 3);
        assert!(
            refused
                .stderr
                .contains("error: user `ada` has no edition licence"),
            "{}",
            refused.stderr
        );
        let unauthenticated = run(&app, "tok_nope.nope", &["check", "acme", "ada"]).await;
        assert_eq!(unauthenticated.code, 3, "{}", unauthenticated.stderr);

        let dead = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let out = Command::new(BIN)
            .args([
                "check",
                "acme",
                "ada",
                "--server",
                &format!("http://{dead}"),
            ])
            .env("ENTITLED_TOKEN", &app.operator_secret)
            .output_within();
        assert_eq!(
            out.status.code(),
            Some(4),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the server"));

        for args in [
            vec!["--help"],
            vec!["user", "set", "--help"],
            vec!["import", "--help"],
            vec!["serve", "--help"],
        ] {
            let out = Command::new(BIN).args(&args).output_within();
            assert_eq!(out.status.code(), Some(0), "{args:?}");
        }
        let completions = Command::new(BIN)
            .args(["completions", "bash"])
            .output_within();
        assert!(String::from_utf8_lossy(&completions.stdout).contains("entitled"));
    }
}

on_both_backends! {
    /// Issue 15: a token given with --token is visible to every user of the
    /// machine (`ps`); --token-file reads it from a file only its owner can read.
    async fn the_token_from_a_private_file_and_never_from_an_open_one(backend) {
        use std::os::unix::fs::PermissionsExt;
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        let dir = tempfile::tempdir().unwrap();
        let private = write(
            dir.path(),
            "private.token",
            &format!("{}\n", app.operator_secret),
        );
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
        let get = ["account", "get", "acme", "--output", "json"];
        let accepted = |r: &Run| {
            assert_eq!(r.code, 0, "{}", r.stderr);
            assert_eq!(r.json()["account_id"], "acme");
        };

        // The flag, the variable, and the server's own operator.token as it is.
        let flag = [&["--token-file", private.as_str()][..], &get].concat();
        accepted(&run_with(&app, &[], &flag).await);
        accepted(&run_with(&app, &[("ENTITLED_TOKEN_FILE", &private)], &get).await);
        let operator = app.data_dir.join("operator.token").display().to_string();
        accepted(&run_with(&app, &[("ENTITLED_TOKEN_FILE", &operator)], &get).await);

        // Readable by group or others: refused before any call, naming the file.
        let open = write(
            dir.path(),
            "open.token",
            &format!("{}\n", app.operator_secret),
        );
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
        for env in [&[][..], &[("ENTITLED_TOKEN_FILE", open.as_str())][..]] {
            let args = if env.is_empty() {
                [&["--token-file", open.as_str()][..], &get].concat()
            } else {
                get.to_vec()
            };
            let r = run_with(&app, env, &args).await;
            assert_eq!(r.code, 2, "{}", r.stderr);
            for piece in [
                format!("token file `{open}` is open to group or others (mode 0644)"),
                format!("run `chmod 600 {open}`"),
            ] {
                assert!(r.stderr.contains(&piece), "{piece:?} not in {}", r.stderr);
            }
            assert!(!r.stderr.contains(&app.operator_secret));
        }

        // Both ways at once: refused, whichever is the flag and the variable.
        let both = [
            (
                vec![],
                [
                    &["--token", "tok_x.y", "--token-file", private.as_str()][..],
                    &get,
                ]
                .concat(),
            ),
            (
                vec![("ENTITLED_TOKEN", app.operator_secret.as_str())],
                flag.clone(),
            ),
            (
                vec![("ENTITLED_TOKEN_FILE", private.as_str())],
                [&["--token", app.operator_secret.as_str()][..], &get].concat(),
            ),
        ];
        for (env, args) in both {
            let r = run_with(&app, &env, &args).await;
            assert_eq!(r.code, 2, "{env:?} {args:?}: {}", r.stderr);
            assert!(
                r.stderr.contains("--token (or ENTITLED_TOKEN) and --token-file (or ENTITLED_TOKEN_FILE) are both set; give only one, preferably --token-file"),
                "{}",
                r.stderr
            );
        }

        // config show names the file and masks the token read from it.
        let show = run_with(
            &app,
            &[],
            &[
                "config",
                "show",
                "--output",
                "json",
                "--token-file",
                &private,
            ],
        )
        .await;
        assert_eq!(show.code, 0, "{}", show.stderr);
        let token_id = app.operator_secret.split_once('.').unwrap().0;
        assert_eq!(show.json()["token"], format!("{token_id}.****"));
        assert_eq!(show.json()["token_file"], private.as_str());

        let help = run_with(&app, &[], &["--help"]).await.stdout;
        assert!(
            help.contains("--token-file <PATH>") && help.contains("Prefer --token-file"),
            "{help}"
        );
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

on_both_backends! {
    async fn import_checks_every_row_before_changing_anything(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        app.create_account("vo", "virtual-office").await;
        let dir = tempfile::tempdir().unwrap();
        let bad = write(
            dir.path(),
            "bad.csv",
            "account_id,user_id,display_name,edition,analytics_tier\n\
             acme,ada,Ada,X8,supervisor\n\
             acme,bob,Bob,X2,supervisor\n\
             vo,cy,Cy,X1,essentials\n\
             acme,dan,Dan,,essentials\n\
             nowhere,eve,Eve,X2,none\n\
             acme,fay,Fay,X4,gold\n\
             acme,ada,Ada again,X4,none\n\
             acme,g/h,Bad id,X4,none\n\
             acme,hal,Eve\u{202e}lin,X4,none\n",
        );
        let before = app.revision().await;
        let r = run(&app, &app.operator_secret, &["import", &bad]).await;
        assert_eq!(r.code, 3, "{}", r.stderr);
        for expected in [
            "bad.csv:3: edition `X2` does not include supervisor analytics",
            "bad.csv:4: edition `X1` is not in product line `virtual-office`",
            "bad.csv:5: user `dan` has no edition licence",
            "bad.csv:6: account `nowhere` does not exist",
            "bad.csv:7: analytics_tier `gold` is not a tier",
            "bad.csv:8: user `ada` of account `acme` is also on line 2",
            "bad.csv:9: user_id `g/h` contains `/`",
            "bad.csv:10: display_name `Eve\\u{202e}lin` contains the invisible format character U+202E at position 4",
            "8 bad rows; nothing was changed",
        ] {
            assert!(
                r.stderr.contains(expected),
                "missing {expected:?} in\n{}",
                r.stderr
            );
        }
        assert!(!r.stderr.contains("bad.csv:2:"), "line 2 is good");
        assert_eq!(app.revision().await, before, "nothing changed");
        assert!(app.get_user("acme", "ada").await.is_err());
    }
}

on_both_backends! {
    async fn import_dry_run_rerun_and_export_round_trip(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        app.create_account("vo", "virtual-office").await;
        app.put_user("acme", "old").await;
        app.set("acme", "old", Some("X8"), Some(T::Supervisor))
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut csv = String::from("account_id,user_id,display_name,edition,analytics_tier\n");
        for i in 0..1200 {
            let (account, edition, tier) = match i % 3 {
                0 => ("acme", "X4", "supervisor"),
                1 => ("acme", "X1", "essentials"),
                _ => ("vo", "X6", "none"),
            };
            csv.push_str(&format!(
                "{account},u{i:04},\"User {i}, Jr.\",{edition},{tier}\n"
            ));
        }
        // An existing user lowered by the file.
        csv.push_str("acme,old,User old,X2,essentials\n");
        let file = write(dir.path(), "users.csv", &csv);

        let before = app.revision().await;
        let dry = ok(&app, &["import", &file, "--dry-run", "--output", "json"])
            .await
            .json();
        assert_eq!(
            (dry["would_create"].as_u64(), dry["would_update"].as_u64()),
            (Some(1200), Some(1))
        );
        assert_eq!(app.revision().await, before, "a dry run changes nothing");

        let done = ok(
            &app,
            &["import", &file, "--chunk-size", "500", "--output", "json"],
        )
        .await;
        assert!(
            done.stderr.contains("imported 1201/1201 rows"),
            "plain progress lines: {}",
            done.stderr
        );
        let done = done.json();
        assert_eq!(
            (done["created"].as_u64(), done["updated"].as_u64()),
            (Some(1200), Some(1))
        );
        assert_eq!(app.revision().await, before + 3, "one revision per chunk");
        let u0 = app.get_user("acme", "u0000").await.unwrap();
        assert_eq!(
            (
                u0.display_name.as_str(),
                u0.edition.as_str(),
                u0.analytics_tier
            ),
            ("User 0, Jr.", "X4", T::Supervisor as i32)
        );
        assert_eq!(app.check("acme", "u0001").await.tier, T::Essentials as i32);
        assert_eq!(
            app.get_user("acme", "old").await.unwrap().analytics_tier,
            T::Essentials as i32
        );
        assert!(
            app.get_account("acme")
                .await
                .unwrap()
                .analytics_activated_at
                .is_some()
        );

        // Running it again changes nothing.
        let again = ok(&app, &["import", &file, "--output", "json"])
            .await
            .json();
        assert_eq!(
            (
                again["created"].as_u64(),
                again["updated"].as_u64(),
                again["unchanged"].as_u64()
            ),
            (Some(0), Some(0), Some(1201))
        );
        assert_eq!(app.revision().await, before + 3);

        // Export → import into a fresh server gives the same users.
        for format in ["csv", "jsonl"] {
            let out = dir.path().join(format!("export.{format}"));
            ok(
                &app,
                &["export", "--format", format, "--out", out.to_str().unwrap()],
            )
            .await;
            let fresh = TestApp::spawn_on(backend).await;
            fresh.create_account("acme", "work").await;
            fresh.create_account("vo", "virtual-office").await;
            ok(&fresh, &["import", out.to_str().unwrap()]).await;
            let exported = ok(&app, &["export", "--format", "jsonl"]).await.stdout;
            let reimported = ok(&fresh, &["export", "--format", "jsonl"]).await.stdout;
            assert_eq!(exported.lines().count(), 1201);
            assert_eq!(exported, reimported, "{format} round trip");
        }
        let one = ok(&app, &["export", "--account", "vo"]).await.stdout;
        assert_eq!(one.lines().count(), 1 + 400);
        assert_eq!(
            one.lines().next(),
            Some("account_id,user_id,display_name,edition,analytics_tier,supervisor_scope")
        );
    }
}

on_both_backends! {
    /// Rule 12 on the command line: `--scope` sets it, every command that
    /// shows a user or a check shows it, and files carry it in the
    /// `supervisor_scope` column.
    async fn scopes_by_flag_and_by_file(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        app.put_user("acme", "ada").await;
        let set = ok(
            &app,
            &[
                "user", "set", "acme", "ada", "--edition", "X8", "--analytics", "supervisor",
                "--scope", "site:S1, user-group:G2", "--output", "json",
            ],
        )
        .await
        .json();
        assert_eq!(set["supervisor_scope"], "site:S1,user-group:G2");
        let shown = ok(&app, &["user", "get", "acme", "ada", "--output", "json"]).await.json();
        assert_eq!(shown["supervisor_scope"], "site:S1,user-group:G2");
        let check = ok(&app, &["check", "acme", "ada", "--output", "json"]).await.json();
        assert_eq!(check["supervisor_scope"], "site:S1,user-group:G2");
        let audit = ok(&app, &["audit", "list", "--account", "acme", "--output", "json"])
            .await
            .stdout;
        assert!(audit.contains("X8 / supervisor (site:S1,user-group:G2)"), "{audit}");
        let whole = ok(
            &app,
            &["user", "set", "acme", "ada", "--scope", "whole-account", "--output", "json"],
        )
        .await
        .json();
        assert_eq!(whole["supervisor_scope"], "whole-account");

        // A malformed scope is the caller's mistake, named before any call.
        let before = app.revision().await;
        let bad = run(
            &app,
            &app.operator_secret,
            &["user", "set", "acme", "ada", "--scope", "site:S1,team:T1"],
        )
        .await;
        assert_eq!(bad.code, 2, "{}", bad.stderr);
        assert!(
            bad.stderr.contains("--scope[1].kind `team` is not a scope kind"),
            "{}",
            bad.stderr
        );
        // The server's rule: only for Supervisor.
        let refused = run(
            &app,
            &app.operator_secret,
            &["user", "set", "acme", "ada", "--analytics", "essentials", "--scope", "site:S1"],
        )
        .await;
        assert_eq!(refused.code, 3, "{}", refused.stderr);
        assert!(refused.stderr.contains("supervisor_scope is only for supervisor analytics"));
        assert_eq!(app.revision().await, before);

        // Files: the column, a list (quoted in CSV), the whole account, none.
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "users.csv",
            "account_id,user_id,display_name,edition,analytics_tier,supervisor_scope\n\
             acme,bob,Bob,X8,supervisor,\"ring-group:R1,call-queue:Q1\"\n\
             acme,cy,Cy,X8,supervisor,whole-account\n\
             acme,dee,Dee,X8,essentials,\n",
        );
        ok(&app, &["import", &file]).await;
        assert_eq!(
            app.check("acme", "bob").await.supervisor_scope.unwrap().refs.len(),
            2
        );
        let csv = ok(&app, &["export", "--account", "acme"]).await.stdout;
        assert!(csv.contains("acme,bob,Bob,X8,supervisor,\"ring-group:R1,call-queue:Q1\""), "{csv}");
        assert!(csv.contains("acme,cy,Cy,X8,supervisor,whole-account"), "{csv}");
        assert!(csv.contains("acme,dee,Dee,X8,essentials,\n"), "{csv}");
        let jsonl = ok(&app, &["export", "--account", "acme", "--format", "jsonl"]).await.stdout;
        assert!(
            jsonl.contains(r#""analytics_tier":"supervisor","supervisor_scope":"ring-group:R1,call-queue:Q1""#),
            "{jsonl}"
        );
        // A bad scope in a file is named with its line.
        let bad = write(
            dir.path(),
            "bad.csv",
            "account_id,user_id,display_name,edition,analytics_tier,supervisor_scope\n\
             acme,eve,Eve,X8,supervisor,site:S1;site:S2\n",
        );
        let r = run(&app, &app.operator_secret, &["import", &bad]).await;
        assert_eq!(r.code, 3, "{}", r.stderr);
        assert!(
            r.stderr.contains("bad.csv:2: supervisor_scope[0].id `S1;site:S2` contains `;`"),
            "{}",
            r.stderr
        );
    }
}

#[tokio::test]
async fn audit_retention_from_file_env_and_flag() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "retention.toml", "audit_retention = \"30d\"\n");
    let show = |envs: &[(&str, &str)], flags: &[&str]| {
        let mut command = Command::new(BIN);
        command
            .args(["config", "show", "--output", "json"])
            .args(flags)
            .env_remove("ENTITLED_CONFIG")
            .env_remove("ENTITLED_AUDIT_RETENTION");
        for (k, v) in envs {
            command.env(k, v);
        }
        command.output_within()
    };
    let json = |out: std::process::Output| {
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    // The default keeps everything.
    assert_eq!(json(show(&[], &[]))["audit_retention"], Value::Null);
    assert_eq!(
        json(show(&[], &["--config", &file]))["audit_retention"],
        "30days"
    );
    assert_eq!(
        json(show(
            &[("ENTITLED_AUDIT_RETENTION", "7d")],
            &["--config", &file]
        ))["audit_retention"],
        "7days"
    );
    assert_eq!(
        json(show(
            &[("ENTITLED_AUDIT_RETENTION", "7d")],
            &["--config", &file, "--audit-retention", "12h"]
        ))["audit_retention"],
        "12h"
    );
    let zero = show(&[], &["--audit-retention", "0s"]);
    assert_eq!(zero.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&zero.stderr)
            .contains("audit_retention `0s` is shorter than the least, `1h`"),
        "{}",
        String::from_utf8_lossy(&zero.stderr)
    );
    let bad = write(dir.path(), "bad.toml", "\naudit_retention = \"forever\"\n");
    let out = show(&[], &["--config", &bad]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 2: audit_retention `forever` is not a duration"),
        "{stderr}"
    );
}

#[tokio::test]
async fn config_file_env_and_flags_in_that_order() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "entitled.toml",
        "listen = \"127.0.0.1:7001\"\ndata_dir = \"/srv/file\"\nanalytics_data_delay = \"1h\"\nlog_format = \"json\"\nmax_concurrent_calls = 16\nrequest_message_timeout = \"3s\"\n",
    );
    let show = |envs: &[(&str, &str)], flags: &[&str]| {
        let mut command = Command::new(BIN);
        command
            .args(["config", "show", "--output", "json", "--config", &file])
            .args(flags);
        for (k, v) in envs {
            command.env(k, v);
        }
        command.env("ENTITLED_TOKEN", "tok_abc.SECRET");
        let out = command.output_within();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let file_only = show(&[], &[]);
    assert_eq!(file_only["listen"], "127.0.0.1:7001");
    assert_eq!(file_only["data_dir"], "/srv/file");
    assert_eq!(file_only["analytics_data_delay"], "1h");
    assert_eq!(file_only["log_format"], "json");
    assert_eq!(file_only["catalogue"], "(built-in)");
    assert_eq!(file_only["token"], "tok_abc.****", "secrets are masked");
    assert_eq!(file_only["max_concurrent_calls"], 16);
    assert_eq!(file_only["max_request_bytes"], 4 * 1024 * 1024);
    assert_eq!(file_only["request_message_timeout"], "3s");

    let env = show(
        &[
            ("ENTITLED_LISTEN", "127.0.0.1:7002"),
            ("ENTITLED_DATA_DIR", "/srv/env"),
        ],
        &[],
    );
    assert_eq!(
        (env["listen"].as_str(), env["data_dir"].as_str()),
        (Some("127.0.0.1:7002"), Some("/srv/env"))
    );
    let flags = show(
        &[("ENTITLED_LISTEN", "127.0.0.1:7002")],
        &["--listen", "127.0.0.1:7003"],
    );
    assert_eq!(flags["listen"], "127.0.0.1:7003");
    assert_eq!(flags["analytics_data_delay"], "1h");
    let limits = show(
        &[("ENTITLED_MAX_REQUEST_BYTES", "1000")],
        &[
            "--max-concurrent-calls",
            "32",
            "--request-message-timeout",
            "750ms",
        ],
    );
    assert_eq!(limits["max_concurrent_calls"], 32);
    assert_eq!(limits["max_request_bytes"], 1000);
    assert_eq!(limits["request_message_timeout"], "750ms");
    let zero = Command::new(BIN)
        .args(["config", "show", "--max-concurrent-calls", "0"])
        .output_within();
    assert_eq!(zero.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&zero.stderr)
            .contains("max_concurrent_calls `0` would refuse every call; give at least 1"),
        "{}",
        String::from_utf8_lossy(&zero.stderr)
    );
    let zero = Command::new(BIN)
        .args(["config", "show", "--request-message-timeout", "0s"])
        .output_within();
    assert_eq!(zero.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&zero.stderr)
            .contains("request_message_timeout `0s` would end every call"),
        "{}",
        String::from_utf8_lossy(&zero.stderr)
    );

    // Defaults without a file.
    let out = Command::new(BIN)
        .args(["config", "show", "--output", "json"])
        .env_remove("ENTITLED_CONFIG")
        .output_within();
    let defaults: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (defaults["listen"].as_str(), defaults["data_dir"].as_str()),
        (Some("127.0.0.1:50051"), Some("./data"))
    );
    assert_eq!(defaults["request_message_timeout"], "5s");

    // Unknown keys and bad values stop start-up, naming them.
    let unknown = write(
        dir.path(),
        "unknown.toml",
        "listen = \"127.0.0.1:1\"\ncolour = \"red\"\n",
    );
    let out = Command::new(BIN)
        .args(["serve", "--config", &unknown])
        .output_within();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("colour") && stderr.contains("line 2"),
        "{stderr}"
    );
    let bad = write(dir.path(), "bad.toml", "\nlisten = \"somewhere\"\n");
    let out = Command::new(BIN)
        .args(["serve", "--config", &bad])
        .output_within();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 2: listen `somewhere` is not an address"),
        "{stderr}"
    );
}

on_both_backends! {
    /// `entitled account migrate`: the plan as a table, the dry run's
    /// revision applied with --expected-revision, and a refusal's exit code.
    async fn account_migrate_prints_the_plan_and_applies_it(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "virtual-office").await;
        app.put_user("acme", "ada").await;
        app.set("acme", "ada", Some("X6"), Some(T::Supervisor)).await.unwrap();
        app.put_user("acme", "bob").await;

        let table = ok(&app, &["account", "migrate", "acme", "--to", "work", "--dry-run"]).await;
        let lines: Vec<&str> = table.stdout.lines().collect();
        assert!(
            lines[1].split_whitespace().eq([
                "USER", "EDITION_BEFORE", "TIER_BEFORE", "EDITION_AFTER", "TIER_AFTER", "CHANGED", "NOTICES"
            ]),
            "{}",
            table.stdout
        );
        assert!(
            lines[2].split_whitespace().eq(["ada", "X6", "supervisor", "X6", "supervisor", "false"]),
            "{}",
            table.stdout
        );
        assert!(
            lines[3].split_whitespace().eq(["bob", "-", "none", "-", "none", "false"]),
            "{}",
            table.stdout
        );
        assert!(
            lines.iter().any(|l| l.split_whitespace().eq(["dry_run", "true"])),
            "{}",
            table.stdout
        );

        let dry = ok(&app, &["--output", "json", "account", "migrate", "acme", "--dry-run"]).await.json();
        let revision = dry["revision"].as_u64().unwrap();
        assert_eq!(dry["user_count"], 2);
        assert_eq!(app.get_account("acme").await.unwrap().product_line, "virtual-office");
        let moved = ok(
            &app,
            &["--output", "json", "account", "migrate", "acme", "--expected-revision", &revision.to_string()],
        )
        .await
        .json();
        assert_eq!((moved["to"].as_str(), moved["revision"].as_u64()), (Some("work"), Some(revision + 1)));
        assert_eq!(app.get_account("acme").await.unwrap().product_line, "work");

        let again = run(&app, &app.operator_secret, &["account", "migrate", "acme"]).await;
        assert_eq!(again.code, 3, "{}", again.stderr);
        assert!(again.stderr.contains("already on product line `work`"), "{}", again.stderr);
    }
}

/// `entitled ARGS` as the operator, with `input` typed on its standard
/// input.
async fn run_typing(app: &TestApp, input: &str, args: &[&str]) -> Run {
    use std::{io::Write, process::Stdio};
    let mut child = Command::new(BIN)
        .args(args)
        .env("ENTITLED_SERVER", format!("http://{}", app.addr))
        .env("ENTITLED_TOKEN", &app.operator_secret)
        .env_remove("ENTITLED_TOKEN_FILE")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Dropped at once: the command reads the line, then end of input.
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = common::within(
        common::process::COMMAND_TIMEOUT,
        "the command's end",
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .unwrap()
    .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

on_both_backends! {
    /// `account delete` asks for the account id again; anything else
    /// deletes nothing. `--yes` does not ask.
    async fn deleting_an_account_asks_first(backend) {
        let app = TestApp::spawn_on(backend).await;
        app.create_account("acme", "work").await;
        app.put_user("acme", "ada").await;

        let refused = run_typing(&app, "acm\n", &["account", "delete", "acme"]).await;
        assert_eq!(refused.code, 2, "{}", refused.stderr);
        assert!(refused.stderr.contains("Type the account id to confirm"), "{}", refused.stderr);
        assert!(refused.stderr.contains("not confirmed: typed `acm`, not `acme`"), "{}", refused.stderr);
        assert!(app.get_user("acme", "ada").await.is_ok());
        let silent = run_typing(&app, "", &["account", "delete", "acme"]).await;
        assert_eq!(silent.code, 2, "{}", silent.stderr);
        assert!(app.get_user("acme", "ada").await.is_ok());

        let done = run_typing(&app, "acme\n", &["account", "delete", "acme", "--output", "json"]).await;
        assert_eq!(done.code, 0, "{}", done.stderr);
        let json = done.json();
        assert_eq!((json["deleted"].as_str(), json["users_deleted"].as_u64()), (Some("acme"), Some(1)));
        assert!(app.get_account("acme").await.is_err());

        app.create_account("acme", "work").await;
        ok(&app, &["account", "delete", "acme", "--yes"]).await;
        assert!(app.get_account("acme").await.is_err());
        let unknown = run(&app, &app.operator_secret, &["account", "delete", "acme", "--yes"]).await;
        assert_eq!(unknown.code, 3, "{}", unknown.stderr);
        assert!(unknown.stderr.contains("account `acme` does not exist"), "{}", unknown.stderr);
    }
}
