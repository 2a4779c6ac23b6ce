//! A fresh PostgreSQL database per test, created and dropped here. The
//! server is `ENTITLED_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`, whose user may create
//! databases). Where none answers, PostgreSQL tests are skipped with one
//! line that says so; with `ENTITLED_REQUIRE_POSTGRES=1` (as CI sets) they
//! fail instead.

use std::{
    str::FromStr,
    sync::{
        Once, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio_postgres::NoTls;

pub const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The server the tests use.
pub fn server() -> String {
    std::env::var("ENTITLED_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_SERVER.to_owned())
}

fn required() -> bool {
    std::env::var("ENTITLED_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
}

/// A database of its own for one test; dropped (with whatever connections
/// remain) when this is.
pub struct TestDatabase {
    /// The URL to give `--store`.
    pub url: String,
    name: String,
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::from_str(url)?;
    config.connect_timeout(Duration::from_secs(5));
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Whether the PostgreSQL tests can run: a server answers. Where none
/// does, says so once per test binary and answers false, unless
/// `ENTITLED_REQUIRE_POSTGRES=1`, which makes it a failure.
pub async fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    if let Some(available) = AVAILABLE.get() {
        return *available;
    }
    let server = server();
    let available = match connect(&server).await {
        Ok(_) => true,
        Err(e) if !required() => {
            static SKIP: Once = Once::new();
            SKIP.call_once(|| {
                println!(
                    "skipped: the PostgreSQL tests (no server at {server}: {e}; set ENTITLED_TEST_POSTGRES, or ENTITLED_REQUIRE_POSTGRES=1 to fail instead)"
                );
            });
            false
        }
        Err(e) => {
            panic!("ENTITLED_REQUIRE_POSTGRES=1 but no PostgreSQL server answers at {server}: {e}")
        }
    };
    *AVAILABLE.get_or_init(|| available)
}

impl TestDatabase {
    /// A new, empty database. Check `available()` first.
    pub async fn create() -> TestDatabase {
        let server = server();
        let admin = connect(&server)
            .await
            .unwrap_or_else(|e| panic!("no PostgreSQL server at {server}: {e}"));
        static COUNT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "entitled_test_{}_{}_{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let mut config = tokio_postgres::Config::from_str(&server).unwrap();
        config.dbname(&name);
        let url = url_of(&config);
        TestDatabase { url, name }
    }

    /// What the rows of every table take, in bytes, as text: what was
    /// stored, whatever PostgreSQL's compression and page allocation make
    /// of it on disk.
    pub async fn stored_bytes(&self) -> u64 {
        let client = connect(&self.url).await.unwrap();
        let mut total = 0;
        for table in self.tables().await {
            let row = client
                .query_one(
                    &format!(
                        "SELECT coalesce(sum(octet_length(t::text)), 0)::bigint FROM {table} t"
                    ),
                    &[],
                )
                .await
                .unwrap();
            total += u64::try_from(row.get::<_, i64>(0)).unwrap();
        }
        total
    }

    /// The flush transactions every replica made (the sum of
    /// `entitled_flush.n`): one per batch that committed without waiting
    /// for the WAL flush, none for a batch that committed durably alone.
    pub async fn flushes(&self) -> i64 {
        let client = connect(&self.url).await.unwrap();
        client
            .query_one(
                "SELECT COALESCE(SUM(n), 0)::bigint FROM entitled_flush",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// The tables the database holds, by name, sorted: none in a new one.
    pub async fn tables(&self) -> Vec<String> {
        let client = connect(&self.url).await.unwrap();
        client
            .query(
                "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    }
}

/// `config` as a URL (user, host, port, database; trust authentication).
fn url_of(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres");
    let password = config
        .get_password()
        .map(|p| format!(":{}", String::from_utf8_lossy(p)))
        .unwrap_or_default();
    let db = config.get_dbname().unwrap_or("postgres");
    format!("postgres://{user}{password}@{host}:{port}/{db}")
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // On a thread of its own: a drop may run inside a runtime.
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(admin) = connect(&server()).await {
                    let _ = admin
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}
