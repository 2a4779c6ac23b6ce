//! The PostgreSQL backend: many replicas, one database. Only what is
//! PostgreSQL's is here; the write path's rules and the view are the
//! neutral store's.
//!
//! - `schema.rs`: embedded migrations, applied under an advisory lock.
//! - `commit.rs`: writes. A replica batches the writes waiting on it into
//!   one transaction (group commit), which takes a transaction-level
//!   advisory lock first: so writers are serialised across replicas, and a
//!   revision's rows, its audit records and the counters commit together.
//!   Revisions are gap-free and become visible in order. A batch is
//!   answered only once the WAL holding it is flushed.
//! - `follow.rs`: the change feed. Each replica loads its view at one
//!   revision when it opens, then polls `entitled_changes` for later
//!   revisions and publishes them in order once flushed; a writer reads
//!   them too once it holds the lock, so it plans on the latest state.
//! - `load.rs`: the view at open, a consistent snapshot (backups, copies),
//!   and records put into a new database (restore, `store copy`).
//!
//! Reads never touch the database: checks go on from memory while it is
//! down, and writes are answered `UNAVAILABLE` naming it.

mod commit;
mod follow;
mod load;
mod prune;
mod rows;
mod schema;

use std::{
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use parking_lot::Mutex;
use tokio_postgres::NoTls;

use super::{
    StoreError, Target,
    backend::{Backend, BoxFuture, Record, RequestId, Visit, WriteFn},
    codec::{self, AUDIT},
    prune::{Pruned, RequestsBatch, RequestsResume},
    publish::Publisher,
};
use crate::domain::AuditRecord;
#[cfg(feature = "bench")]
use crate::domain::{Account, User};

pub(super) use load::create;

/// Connections per replica: the writer's, the follower's, and a few for
/// audit listings and backups.
const POOL_SIZE: usize = 16;
/// How long a call waits for a connection, and a connection for its setup.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The PostgreSQL-backed store. Cheap to clone.
#[derive(Clone)]
pub(in super::super) struct PgBackend {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    /// The database as errors and logs name it (no password).
    database: String,
    publisher: Publisher,
    /// The open batch (group commit) and what became of earlier ones.
    writer: tokio::sync::Mutex<commit::Writer>,
    /// Held while publishing, so that the follower and writers publish each
    /// revision once, in order.
    publishing: Mutex<()>,
    /// Refusals waiting for the next transaction (they are not waited for).
    refusals: Mutex<Vec<AuditRecord>>,
    bootstrapped: AtomicBool,
    /// The database's size, as last measured by the follower.
    size: AtomicU64,
    /// Whether the last attempt to reach the database failed.
    unreachable: AtomicBool,
    /// Set when the store is dropped; stops the follower.
    stop: tokio::sync::watch::Sender<bool>,
    /// This process's row of `entitled_flush` (random per start).
    replica: i64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// `url` as errors may show it: the password left out.
pub(super) fn shown(config: &tokio_postgres::Config) -> String {
    let user = config.get_user().unwrap_or("");
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_default();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or(user);
    format!("postgres://{user}@{host}:{port}/{db}")
}

/// A database error on the way to `database`: the store cannot be reached
/// (or refused the statement), which callers see as `UNAVAILABLE`.
fn unavailable(database: &str, error: &dyn std::fmt::Display) -> StoreError {
    StoreError::Unavailable {
        database: database.to_owned(),
        reason: error.to_string(),
    }
}

impl PgBackend {
    /// Connects to `url`, migrates the schema (or refuses a newer one),
    /// loads the view and starts following the change feed.
    pub(super) async fn open(url: &str) -> Result<Self, StoreError> {
        let (pool, database) = pool(url)?;
        let mut client = pool.get().await.map_err(|e| unavailable(&database, &e))?;
        schema::migrate(&mut client, &database).await?;
        prune::mark_restored(&client, &database).await?;
        let (view, bootstrapped) = load::view(&client, &database).await?;
        drop(client);
        let revision = view.revision();
        let (stop, _) = tokio::sync::watch::channel(false);
        let mut replica = [0u8; 8];
        getrandom::fill(&mut replica).map_err(|e| StoreError::Failed(e.to_string()))?;
        let inner = Arc::new(Inner {
            pool,
            database,
            publisher: Publisher::new(view),
            writer: tokio::sync::Mutex::new(commit::Writer::default()),
            publishing: Mutex::new(()),
            refusals: Mutex::new(Vec::new()),
            bootstrapped: AtomicBool::new(bootstrapped),
            size: AtomicU64::new(0),
            unreachable: AtomicBool::new(false),
            stop,
            replica: i64::from_le_bytes(replica),
        });
        tracing::info!(database = %inner.database, revision, "PostgreSQL store opened");
        tokio::spawn(follow::run(Arc::downgrade(&inner)));
        Ok(PgBackend { inner })
    }

    /// `entitled migrate`: brings `url`'s schema up to date. Returns the
    /// versions applied and the schema's version now.
    pub(super) async fn migrate(url: &str) -> Result<(Vec<i32>, i32), StoreError> {
        let (pool, database) = pool(url)?;
        let mut client = pool.get().await.map_err(|e| unavailable(&database, &e))?;
        let applied = schema::migrate(&mut client, &database).await?;
        Ok((applied, schema::LATEST))
    }
}

/// A small pool of connections to `url`, and the database as errors name it.
fn pool(url: &str) -> Result<(Pool, String), StoreError> {
    let mut config = tokio_postgres::Config::from_str(url).map_err(|e| StoreError::NotAUrl {
        // Never the password: only what follows the `@`, if any.
        given: match url.rsplit_once('@') {
            Some((_, host)) => format!("postgres://…@{host}"),
            None => url.to_owned(),
        },
        reason: e.to_string(),
    })?;
    config
        .connect_timeout(CONNECT_TIMEOUT)
        .keepalives_idle(Duration::from_secs(10))
        .application_name("entitled")
        // A replica that stops in the middle of a transaction (and so
        // holds the write lock) is cut off, so the others can go on; a
        // writer waits for the lock at most this long.
        .options(
            "-c idle_in_transaction_session_timeout=10000 -c lock_timeout=10000 -c client_min_messages=warning",
        );
    let database = shown(&config);
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(POOL_SIZE)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(CONNECT_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map(|pool| (pool, database.clone()))
        .map_err(|e| StoreError::Open {
            path: database,
            reason: e.to_string(),
        })
}

impl Inner {
    /// A connection, or `UNAVAILABLE` naming the database.
    async fn connection(&self) -> Result<Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| unavailable(&self.database, &e))
    }

    fn fail(&self) -> impl Fn(tokio_postgres::Error) -> StoreError + '_ {
        |e| unavailable(&self.database, &e)
    }
}

impl Backend for PgBackend {
    fn publisher(&self) -> &Publisher {
        &self.inner.publisher
    }

    fn commit<'a>(
        &'a self,
        target: &'a Target,
        request: Option<RequestId<'a>>,
        write: &'a mut WriteFn<'_>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let (batch, added) = commit::add(&self.inner, target, request, write).await?;
            // In a task of its own: a caller that goes away does not leave
            // its batch open (and the write lock held).
            let inner = Arc::clone(&self.inner);
            let finished = tokio::spawn(async move { commit::finish(&inner, batch).await })
                .await
                .map_err(|e| StoreError::Failed(e.to_string()))?;
            added?;
            finished
        })
    }

    fn append_refusal(&self, record: AuditRecord) -> Result<(), StoreError> {
        self.inner.refusals.lock().push(record);
        Ok(())
    }

    fn durable(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        // Writers commit without waiting for the WAL flush (then wait), so
        // what a snapshot read may not be flushed yet: a transaction that
        // waits for its own flush waits for everything before it.
        Box::pin(async move {
            let client = self.inner.connection().await?;
            commit::flush(&self.inner, &client)
                .await
                .map_err(self.inner.fail())
        })
    }

    fn audit_from<'a>(
        &'a self,
        account: Option<&'a str>,
        from: u64,
        visit: &'a mut Visit<'_>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            const PAGE: i64 = 256;
            // Refusals this replica answered wait in memory for a batch;
            // committed first, they are listed at once, as on sled, and a
            // caller who was refused finds the refusal in the trail.
            if !self.inner.refusals.lock().is_empty() {
                commit::flush_refusals(&self.inner).await?;
            }
            let client = self.inner.connection().await?;
            let mut next = i64::try_from(from).unwrap_or(i64::MAX);
            loop {
                let rows = match account {
                    Some(account) => {
                        let statement = client
                            .prepare_cached(
                                "SELECT seq, record FROM entitled_audit \
                                 WHERE account_id = $1 AND seq >= $2 ORDER BY seq LIMIT $3",
                            )
                            .await
                            .map_err(self.inner.fail())?;
                        client.query(&statement, &[&account, &next, &PAGE]).await
                    }
                    None => {
                        let statement = client
                            .prepare_cached(
                                "SELECT seq, record FROM entitled_audit \
                                 WHERE seq >= $1 ORDER BY seq LIMIT $2",
                            )
                            .await
                            .map_err(self.inner.fail())?;
                        client.query(&statement, &[&next, &PAGE]).await
                    }
                }
                .map_err(self.inner.fail())?;
                let full = rows.len() == PAGE as usize;
                for row in rows {
                    let seq: i64 = row.get(0);
                    let bytes: &[u8] = row.get(1);
                    let record = codec::decode_audit(AUDIT, &seq.to_be_bytes(), bytes)?;
                    next = seq + 1;
                    if visit(record).is_break() {
                        return Ok(());
                    }
                }
                if !full {
                    return Ok(());
                }
            }
        })
    }

    fn audit_record(&self, seq: u64) -> BoxFuture<'_, Result<Option<AuditRecord>, StoreError>> {
        Box::pin(async move {
            let client = self.inner.connection().await?;
            let seq = i64::try_from(seq).unwrap_or(i64::MAX);
            let statement = client
                .prepare_cached("SELECT record FROM entitled_audit WHERE seq = $1")
                .await
                .map_err(self.inner.fail())?;
            let row = client
                .query_opt(&statement, &[&seq])
                .await
                .map_err(self.inner.fail())?;
            row.map(|row| codec::decode_audit(AUDIT, &seq.to_be_bytes(), row.get(0)))
                .transpose()
        })
    }

    fn last_audit_seq(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let client = self.inner.connection().await?;
            let row = client
                .query_one("SELECT audit_seq FROM entitled_state", &[])
                .await
                .map_err(self.inner.fail())?;
            Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
        })
    }

    fn pruned(&self) -> BoxFuture<'_, Result<Pruned, StoreError>> {
        Box::pin(prune::pruned(&self.inner))
    }

    fn prune(&self, from: Pruned, to: Pruned) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(prune::prune(&self.inner, from, to))
    }

    fn prune_requests(
        &self,
        before: std::time::SystemTime,
        _resume: Option<RequestsResume>,
        limit: usize,
    ) -> BoxFuture<'_, Result<RequestsBatch, StoreError>> {
        Box::pin(prune::prune_requests(&self.inner, before, limit))
    }

    fn bootstrapped(&self) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            if self.inner.bootstrapped.load(Ordering::Acquire) {
                return Ok(true);
            }
            let client = self.inner.connection().await?;
            let row = client
                .query_one("SELECT bootstrapped FROM entitled_state", &[])
                .await
                .map_err(self.inner.fail())?;
            Ok(row.get(0))
        })
    }

    fn size_bytes(&self) -> Result<u64, StoreError> {
        Ok(self.inner.size.load(Ordering::Relaxed))
    }

    fn snapshot(
        &self,
        visit: &mut dyn FnMut(Record) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        // Called off the runtime (`Store::backup` runs it on a blocking
        // thread), where blocking on the runtime's handle is allowed.
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|e| StoreError::Failed(format!("a snapshot needs the runtime: {e}")))?;
        handle.block_on(load::snapshot(&self.inner, visit))
    }

    fn sync_on_stop(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            // Refusals still waiting go in with one last transaction.
            if !self.inner.refusals.lock().is_empty() {
                commit::flush_refusals(&self.inner).await?;
            }
            Ok(())
        })
    }

    #[cfg(feature = "bench")]
    fn import(&self, accounts: Vec<Account>, users: Vec<User>) -> Result<u64, StoreError> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|e| StoreError::Failed(format!("an import needs the runtime: {e}")))?;
        handle.block_on(commit::import(&self.inner, accounts, users))
    }
}
