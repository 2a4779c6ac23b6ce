//! `entitled-bench migrate`: MigrateAccount on one Virtual Office account
//! of `--users` users (a quarter each X8 and X6 Supervisor, X5 Essentials,
//! X2 without analytics), on sled and, with `--postgres`, PostgreSQL. Two
//! moves on each, each on a store freshly loaded by the `load` child:
//!
//! - with the built-in catalogue, where every edition keeps its name: the
//!   plan of every user is sent, and only the account is written;
//! - with a catalogue that maps every edition to another (X2 → X3, X5 →
//!   X4, X6 → X7, X8 → X8e): every user is written, with an audit record
//!   each, in the one write.
//!
//! The server runs in this process (a catalogue of its own is all it
//! needs); each figure is one call, from the request to the summary, as a
//! client sees it. It prints figures and asserts none.

use std::{path::Path, time::Instant};

use entitled::{
    catalogue::{Catalogue, DEFAULT_TOML},
    client::{Bearer, Clients},
    proto::v1::{self as pb, migrate_account_response::Item},
    server::{Application, Config},
    service::OPERATOR_TOKEN_FILE,
    store::Location,
};
use tokio::sync::oneshot;

use crate::{
    BoxError,
    cli::MigrateArgs,
    data::load_child,
    postgres::{create_database, drop_database},
    servers::connect,
};

pub fn migrate(args: MigrateArgs) -> Result<(), BoxError> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        println!(
            "MigrateAccount, one account of {} users, virtual-office -> work",
            args.users
        );
        println!(
            "backend     catalogue             users written  dry run (ms)  move (ms)  messages"
        );
        for renamed in [false, true] {
            figure(&args, None, renamed).await?;
        }
        if let Some(admin) = &args.postgres {
            for renamed in [false, true] {
                let db = create_database(admin, "migrate").await?;
                let result = figure(&args, Some(&db.url), renamed).await;
                drop_database(admin, &db).await?;
                result?;
            }
        }
        Ok(())
    })
}

/// The built-in catalogue, or one that renames every edition of the move.
fn catalogue(renamed: bool) -> Result<Catalogue, BoxError> {
    let text = if renamed {
        DEFAULT_TOML.replace(
            "from = \"virtual-office\"\nto = \"work\"\n",
            "from = \"virtual-office\"\nto = \"work\"\neditions = [\n  { from = \"X2\", to = \"X3\" },\n  { from = \"X5\", to = \"X4\" },\n  { from = \"X6\", to = \"X7\" },\n  { from = \"X8\", to = \"X8e\" },\n]\n",
        )
    } else {
        DEFAULT_TOML.to_owned()
    };
    Ok(Catalogue::from_toml(&text, "bench")?)
}

/// One store loaded, served, dry-run and moved: prints its line.
async fn figure(args: &MigrateArgs, database: Option<&str>, renamed: bool) -> Result<(), BoxError> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("store");
    let users = args.users;
    let took = tokio::task::block_in_place(|| load_child(&dir, database, users, users, true))?;
    eprintln!("{users} users loaded in {took:?}");
    let mut config = Config::new("127.0.0.1:0".parse()?, dir.clone(), catalogue(renamed)?);
    if let Some(url) = database {
        config.store = Some(Location::Postgres(url.to_owned()));
        config.operator_token_file = Some(dir.join(OPERATOR_TOKEN_FILE));
    }
    let app = Application::build(config).await?;
    let addr = app.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run(async {
        let _ = stopped.await;
    }));
    let token = std::fs::read_to_string(dir.join(OPERATOR_TOKEN_FILE))?;
    let clients = Clients::new(&connect(addr).await?, Bearer::new(Some(token.trim()))?);
    let request = pb::MigrateAccountRequest {
        account_id: crate::data::account_name(0),
        to_product_line: "work".into(),
        ..Default::default()
    };
    let dry = timed(
        &clients,
        pb::MigrateAccountRequest {
            dry_run: true,
            ..request.clone()
        },
    )
    .await?;
    let moved = timed(
        &clients,
        pb::MigrateAccountRequest {
            expected_revision: Some(dry.summary.revision),
            ..request
        },
    )
    .await?;
    if moved.summary.users != users as u64 {
        return Err(format!("moved {} users of {users}", moved.summary.users).into());
    }
    println!(
        "{:<11} {:<21} {:>13}  {:>12}  {:>9}  {:>8}",
        if database.is_some() {
            "PostgreSQL"
        } else {
            "sled"
        },
        if renamed {
            "every edition renamed"
        } else {
            "built-in"
        },
        moved.summary.changed,
        dry.ms,
        moved.ms,
        moved.messages,
    );
    let _ = stop.send(());
    server.await??;
    drop(tmp);
    let _: &Path = &dir;
    Ok(())
}

struct Timed {
    summary: pb::MigrationSummary,
    ms: u128,
    messages: usize,
}

/// One MigrateAccount call, from the request to the summary.
async fn timed(clients: &Clients, request: pb::MigrateAccountRequest) -> Result<Timed, BoxError> {
    let started = Instant::now();
    let mut stream = clients
        .provisioning
        .clone()
        .migrate_account(request)
        .await?
        .into_inner();
    let mut messages = 0;
    let mut summary = None;
    while let Some(message) = stream.message().await? {
        messages += 1;
        if let Some(Item::Summary(s)) = message.item {
            summary = Some(s);
        }
    }
    Ok(Timed {
        summary: summary.ok_or("no summary")?,
        ms: started.elapsed().as_millis(),
        messages,
    })
}
