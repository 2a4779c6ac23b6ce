//! Writes into PostgreSQL, with group commit.
//!
//! A replica keeps at most one open batch: a transaction that holds the
//! write lock (`pg_advisory_xact_lock`), so no other replica writes while
//! it is open. The first writer to find none opens one: it takes the lock,
//! reads the counters and reads the revisions other replicas committed
//! since its view's (`follow::read_changes`), which it lays over the view
//! for this batch: so the batch plans on exactly what is committed. Each
//! writer then plans on that, with the batch's own writes laid over it too
//! (no round trip, but for a request id not seen in this batch), and adds
//! its rows to the batch in memory. It then waits for the batch to commit;
//! the first waiter to get the writer lock commits it for everyone who
//! joined meanwhile (their rows in one statement per table and the COMMIT,
//! with `synchronous_commit` off, pipelined in one round trip; the COMMIT
//! lets the write lock go at once), waits for the WAL flush (`flush`: a synchronous transaction that
//! writes this replica's row, shared with other replicas' flushes), and
//! only then publishes what it caught up on and its own writes, in
//! revision order. Writers that arrive meanwhile queue for the next batch.
//! A batch that opens on the counters this replica's last batch left
//! (`Batch::alone`: no other replica wrote since, so likely none waits for
//! the lock) commits durably instead, its COMMIT waiting for the flush in
//! the same round trip: one round trip and one transaction less.
//!
//! A batch that fails (the database gone, a statement refused) commits
//! nothing and each of its writers gets `UNAVAILABLE`; a COMMIT or flush
//! whose outcome is unknown (the connection lost during it) is never
//! acknowledged, and its writes, if they did commit, reach the view through
//! the change feed once flushed. Its connection is closed, never returned
//! to the pool, so PostgreSQL ends the transaction and releases the lock.
//! So is the connection of a batch whose opener goes away while the lock
//! is asked for (`Opening`), and a batch whose writer goes away after
//! opening or joining it is finished in a task of its own (`Joined`):
//! a caller's deadline never leaves the lock held.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use deadpool_postgres::Object;

use super::super::{
    Mutation, StoreError, Target, TargetState,
    backend::{Changes, Counters, RequestId, Seen, Step, WriteFn},
    codec::{self, RequestRecord},
};
use super::{
    Inner, follow,
    rows::{End, Rows, RowsFailed, write_rows},
    unavailable,
};
use crate::domain::{Account, AccountId, AuditRecord, Token, User, UserId};

/// The write lock, held by the open batch's transaction.
pub(super) const WRITE_LOCK: i64 = 0x656e_7469_746c_6565;

/// How many failed batches' reasons are remembered for their waiters.
const FAILURES_KEPT: usize = 1024;

/// The writer's state, under `Inner::writer`.
#[derive(Default)]
pub(super) struct Writer {
    open: Option<Batch>,
    /// The id the next batch gets (ids start at 1).
    next_id: u64,
    /// The highest batch id finished, committed or failed.
    finished: u64,
    /// Why recent batches failed, by id.
    failures: BTreeMap<u64, String>,
    /// The counters (revision, audit sequence) this replica's last
    /// committed batch left: a batch that opens on them knows that no other
    /// replica has written since (see `Batch::alone`).
    last: (u64, u64),
}

/// An open transaction that holds the write lock, and what it will commit.
struct Batch {
    id: u64,
    client: Object,
    /// The revision the batch started on.
    base: u64,
    /// The latest revision, the batch's writes included.
    revision: u64,
    audit_seq: u64,
    bootstrapped: bool,
    /// `None`: deleted.
    accounts: HashMap<AccountId, Option<Account>>,
    /// `None`: deleted.
    users: HashMap<(AccountId, UserId), Option<User>>,
    tokens: HashMap<String, Token>,
    requests: HashMap<(String, String), RequestRecord>,
    audit: Vec<AuditRecord>,
    /// Each revision's mutations: the change feed's rows, and what is
    /// published once committed.
    changes: Vec<(u64, Vec<Mutation>)>,
    /// What other replicas committed before the lock was ours and the view
    /// did not show yet: laid over the view for this batch's writes, and
    /// published with them once durable (it may not be yet: see `commit`).
    caught: Vec<(u64, Vec<Mutation>)>,
    /// How long the batch waited for the write lock.
    waited: Duration,
    /// When the lock was held (its answer arrived).
    started: Instant,
    /// No other replica committed since this replica's last batch: likely
    /// none is waiting for the lock, so the COMMIT itself waits for the WAL
    /// flush (one round trip and one transaction less than `flush`), and
    /// holds the lock meanwhile. A guess: wrong, it costs only time.
    alone: bool,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.requests.is_empty() && self.audit.is_empty()
    }

    /// The latest state of `target`: this batch's writes, and what it
    /// caught up on, over the view.
    fn current(&self, inner: &Inner, target: &Target) -> Result<TargetState, StoreError> {
        inner.publisher.read(|view| {
            TargetState::read(
                target,
                self.revision + 1,
                |a| {
                    Ok(match self.accounts.get(a) {
                        Some(account) => account.clone(),
                        None => view.account(a.as_str()).cloned(),
                    })
                },
                |a, u| {
                    Ok(match self.users.get(&(a.clone(), u.clone())) {
                        Some(user) => user.clone(),
                        None => view.user(a.as_str(), u.as_str()),
                    })
                },
                |id| {
                    Ok(match self.tokens.get(id) {
                        Some(token) => Some(token.clone()),
                        None => view.token(id).map(|entry| entry.token.clone()),
                    })
                },
                |a| {
                    let mut users: BTreeMap<UserId, User> = view
                        .all_users(Some(a.as_str()))
                        .into_iter()
                        .map(|u| (u.id.clone(), u))
                        .collect();
                    for ((account, id), user) in &self.users {
                        if account != a {
                            continue;
                        }
                        match user {
                            Some(user) => users.insert(id.clone(), user.clone()),
                            None => users.remove(id),
                        };
                    }
                    Ok(users.into_values().collect())
                },
                |a| {
                    let mut tokens: BTreeMap<String, Token> = view
                        .tokens()
                        .into_iter()
                        .map(|t| (t.id.clone(), t))
                        .collect();
                    for (id, token) in &self.tokens {
                        tokens.insert(id.clone(), token.clone());
                    }
                    Ok(tokens
                        .into_values()
                        .filter(|t| t.account.as_ref() == Some(a))
                        .collect())
                },
            )
        })
    }

    /// Observes the write lock let go (or about to be: its connection is
    /// dropped next): every batch that held it says so once, whatever its
    /// outcome.
    fn let_go(&self, inner: &Inner) {
        inner
            .publisher
            .write_lock(self.waited, self.started.elapsed());
    }

    /// Ends a batch that failed: observed as letting the lock go, and its
    /// connection closed, never returned to the pool, so that PostgreSQL
    /// ends the transaction and frees the lock at once.
    fn close(self, inner: &Inner) {
        self.let_go(inner);
        drop(Object::take(self.client));
    }

    /// Lays `mutations` over the batch's state.
    fn apply(&mut self, mutations: &[Mutation]) {
        for m in mutations {
            match m {
                Mutation::PutAccount(a) => {
                    self.accounts.insert(a.id.clone(), Some(a.clone()));
                }
                Mutation::DeleteAccount(a) => {
                    self.accounts.insert(a.clone(), None);
                }
                Mutation::PutUser(u) => {
                    self.users
                        .insert((u.account_id.clone(), u.id.clone()), Some(u.clone()));
                }
                Mutation::DeleteUser(a, u) => {
                    self.users.insert((a.clone(), u.clone()), None);
                }
                Mutation::PutToken(t) => {
                    self.tokens.insert(t.id.clone(), t.clone());
                }
                Mutation::MarkBootstrapped => self.bootstrapped = true,
            }
        }
    }
}

/// The connection a batch is being opened on: closed, never returned to
/// the pool, if dropped before the batch holds it. That is what happens
/// when opening fails, and when the caller goes away while the lock is
/// asked for (a deadline, a reset stream): its transaction may then hold
/// the write lock, or be granted it later, and a pooled connection would
/// keep it, idle, from every replica's writes. Closed, PostgreSQL ends the
/// transaction and lets the lock go at once.
struct Opening(Option<Object>);

impl Drop for Opening {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            drop(Object::take(client));
        }
    }
}

/// Opens a batch: takes the write lock in a new transaction, reads the
/// counters and catches the view up to them. One round trip when the
/// other replicas committed fewer than a page of revisions since the view's.
async fn open(inner: &Inner, id: u64, last: (u64, u64)) -> Result<Batch, StoreError> {
    let mut opening = Opening(Some(inner.connection().await?));
    let Some(client) = opening.0.as_ref() else {
        return Err(StoreError::Failed(
            "no connection to open a batch on".to_owned(),
        ));
    };
    let fail = inner.fail();
    let from = inner.publisher.read(|v| v.revision());
    let asked = Instant::now();
    let begun = async {
        let lock = client
            .prepare_cached("SELECT pg_advisory_xact_lock($1)")
            .await
            .map_err(&fail)?;
        let state = client
            .prepare_cached("SELECT revision, audit_seq, bootstrapped FROM entitled_state")
            .await
            .map_err(&fail)?;
        // Sent together (pipelined): BEGIN, the lock, then the counters
        // and the change feed after the view's revision, which PostgreSQL
        // runs in order, so once the lock is held: they are what the last
        // holder committed. The COMMIT does not wait for the WAL flush, so
        // the lock is let go before it (see `commit`).
        let (_, _, row, page) = tokio::try_join!(
            async {
                client
                    .batch_execute("BEGIN; SET LOCAL synchronous_commit = off")
                    .await
                    .map_err(&fail)
            },
            async { client.execute(&lock, &[&WRITE_LOCK]).await.map_err(&fail) },
            async { client.query_one(&state, &[]).await.map_err(&fail) },
            follow::read_page(inner, client, from),
        )?;
        // The lock is held from here (its answer came with the counters).
        let locked = Instant::now();
        let revision = counter(row.get(0));
        let (mut caught, _) = page;
        caught.retain(|(r, _)| *r <= revision);
        // More than a page behind: the rest, up to the counters.
        let reached = caught.last().map_or(from, |(r, _)| *r);
        if reached < revision {
            caught.extend(follow::read_changes(inner, client, reached, Some(revision)).await?);
        }
        Ok::<_, StoreError>((row, caught, locked))
    }
    .await;
    // Failed: `opening` closes the connection as it goes.
    let (row, caught, locked) = begun?;
    let Some(client) = opening.0.take() else {
        return Err(StoreError::Failed(
            "no connection to open a batch on".to_owned(),
        ));
    };
    let revision = counter(row.get(0));
    let audit_seq = counter(row.get(1));
    let bootstrapped: bool = row.get(2);
    let mut batch = Batch {
        id,
        client,
        base: revision,
        revision,
        audit_seq,
        bootstrapped,
        accounts: HashMap::new(),
        users: HashMap::new(),
        tokens: HashMap::new(),
        requests: HashMap::new(),
        audit: Vec::new(),
        changes: Vec::new(),
        caught: Vec::new(),
        waited: locked.duration_since(asked),
        started: locked,
        alone: (revision, audit_seq) == last,
    };
    for (_, mutations) in &caught {
        batch.apply(mutations);
    }
    batch.bootstrapped = bootstrapped;
    batch.caught = caught;
    Ok(batch)
}

fn counter(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

pub(super) fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Runs `write` on the latest state and adds what it commits to the open
/// batch (opening one if needed). Returns the batch, which the caller must
/// then `finish` whatever this write did (a batch left open would hold the
/// write lock), and this write's own outcome. Fails only if no batch could
/// be opened.
pub(super) async fn add(
    inner: &Arc<Inner>,
    target: &Target,
    request: Option<RequestId<'_>>,
    write: &mut WriteFn<'_>,
) -> Result<(u64, Result<(), StoreError>), StoreError> {
    let mut writer = inner.writer.lock().await;
    let batch = match writer.open.take() {
        Some(batch) => batch,
        None => {
            writer.next_id += 1;
            let id = writer.next_id;
            match open(inner, id, writer.last).await {
                Ok(batch) => batch,
                Err(e) => {
                    // Nobody joined it: it is finished, failed.
                    writer.finished = id;
                    return Err(e);
                }
            }
        }
    };
    let id = batch.id;
    let batch = writer.open.insert(batch);
    let joined = Joined {
        inner,
        id,
        armed: true,
    };
    let kept = match request {
        None => Ok(None),
        Some(r) => kept(inner, batch, r).await,
    };
    joined.disarm();
    let kept = match kept {
        Ok(kept) => kept,
        Err(e) => {
            // The batch's connection failed: so does the batch.
            if let Some(batch) = writer.open.take() {
                batch.close(inner);
            }
            writer.finished = id;
            writer.failures.insert(id, e.to_string());
            return Ok((id, Err(e)));
        }
    };
    let seen = match batch.current(inner, target) {
        Ok(current) => Seen {
            current,
            revision: batch.revision,
            request: kept,
            bootstrapped: batch.bootstrapped,
        },
        Err(e) => return Ok((id, Err(e))),
    };
    let changes = match write(seen) {
        Ok(Step::Commit(changes)) => changes,
        Ok(Step::Done) => return Ok((id, Ok(()))),
        Err(e) => return Ok((id, Err(e))),
    };
    let Changes {
        mutations,
        mut audit,
        keep,
    } = changes;
    if !mutations.is_empty() {
        batch.revision += 1;
        batch.apply(&mutations);
        for record in &mut audit {
            batch.audit_seq += 1;
            record.seq = batch.audit_seq;
            record.revision = batch.revision;
        }
        batch.audit.append(&mut audit);
        batch.changes.push((batch.revision, mutations));
    }
    if let (Some(r), Some(record)) = (request, keep) {
        batch
            .requests
            .insert((r.token_id.to_owned(), r.id.to_owned()), record);
    }
    // A no-op or a replay waits too: what it answers from may be in this
    // batch, not yet committed.
    Ok((id, Ok(())))
}

/// A writer that has joined open batch `id` and not yet handed it to its
/// caller to `finish`: if dropped armed (the caller went away while the
/// request id was looked up), it finishes the batch in a task of its own,
/// so that no batch is left open holding the write lock.
struct Joined<'a> {
    inner: &'a Arc<Inner>,
    id: u64,
    armed: bool,
}

impl Joined<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Joined<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (inner, id) = (Arc::clone(self.inner), self.id);
            runtime.spawn(async move {
                if let Err(e) = finish(&inner, id).await {
                    tracing::warn!(error = %e, "a batch left by a writer that went away failed");
                }
            });
        }
    }
}

/// The answer kept for `request`: this batch's, or the database's.
async fn kept(
    inner: &Inner,
    batch: &Batch,
    r: RequestId<'_>,
) -> Result<Option<RequestRecord>, StoreError> {
    if let Some(record) = batch
        .requests
        .get(&(r.token_id.to_owned(), r.id.to_owned()))
    {
        return Ok(Some(record.clone()));
    }
    let statement = batch
        .client
        .prepare_cached(
            "SELECT record FROM entitled_requests WHERE token_id = $1 AND request_id = $2",
        )
        .await
        .map_err(inner.fail())?;
    let row = batch
        .client
        .query_opt(&statement, &[&r.token_id, &r.id])
        .await
        .map_err(inner.fail())?;
    row.map(|row| codec::decode_request(codec::REQUESTS, r.id.as_bytes(), row.get(0)))
        .transpose()
}

/// Waits until batch `id` is finished, committing it if nobody has.
pub(super) async fn finish(inner: &Inner, id: u64) -> Result<(), StoreError> {
    let mut writer = inner.writer.lock().await;
    if writer.finished < id {
        match writer.open.take() {
            Some(batch) if batch.id == id => {
                let result = commit(inner, batch).await;
                writer.finished = id;
                match &result {
                    Ok(Some(counters)) => writer.last = *counters,
                    Ok(None) => {}
                    Err(e) => {
                        writer.failures.insert(id, e.to_string());
                        while writer.failures.len() > FAILURES_KEPT {
                            writer.failures.pop_first();
                        }
                    }
                }
                return result.map(|_| ());
            }
            other => {
                writer.open = other;
                return Err(StoreError::Failed(format!(
                    "batch {id} is neither open nor finished"
                )));
            }
        }
    }
    match writer.failures.get(&id) {
        Some(reason) => Err(StoreError::Unavailable {
            database: inner.database.clone(),
            reason: reason.clone(),
        }),
        None => Ok(()),
    }
}

/// Commits the refusals waiting, in a batch of their own.
pub(super) async fn flush_refusals(inner: &Inner) -> Result<(), StoreError> {
    let id = {
        let mut writer = inner.writer.lock().await;
        match &writer.open {
            Some(batch) => batch.id,
            None => {
                writer.next_id += 1;
                let id = writer.next_id;
                match open(inner, id, writer.last).await {
                    Ok(batch) => writer.open = Some(batch),
                    Err(e) => {
                        writer.finished = id;
                        return Err(e);
                    }
                }
                id
            }
        }
    };
    finish(inner, id).await
}

/// Commits `batch` and publishes its writes. Returns the counters (revision,
/// audit sequence) it committed, if it had anything to commit.
async fn commit(inner: &Inner, mut batch: Batch) -> Result<Option<(u64, u64)>, StoreError> {
    // Refusals go in last, at the batch's final revision, so revisions
    // never decrease along the trail.
    let refusals = std::mem::take(&mut *inner.refusals.lock());
    let taken = refusals.len();
    for mut record in refusals {
        batch.audit_seq += 1;
        record.seq = batch.audit_seq;
        record.revision = batch.revision;
        batch.audit.push(record);
    }
    if batch.is_empty() {
        // What it caught up on is the follower's to publish, once durable.
        let ended = batch.client.batch_execute("ROLLBACK").await;
        batch.let_go(inner);
        if ended.is_err() {
            drop(Object::take(batch.client));
        }
        return Ok(None);
    }
    let rows = match Rows::of(&batch.changes, &batch.audit, &batch.requests) {
        Ok(rows) => rows,
        Err(e) => {
            batch.close(inner);
            return Err(e);
        }
    };
    let started = Instant::now();
    let counters = Counters {
        revision: batch.revision,
        audit_seq: batch.audit_seq,
        bootstrapped: batch.bootstrapped,
    };
    // The COMMIT goes with the rows, in the same round trip, so the write
    // lock is held one round trip less. Without waiting for the WAL flush
    // (`synchronous_commit` off) it lets the lock go at once, so other
    // replicas' batches go on while this one's flush is waited for: their
    // flushes are shared, as PostgreSQL's own group commit shares them.
    // Then a transaction of our own that does wait (it writes a row, so its
    // commit is flushed, and with it all WAL before it, ours included).
    // Nothing is acknowledged or published before that. A batch `alone`
    // commits durably instead, in the same round trip.
    let end = if batch.alone {
        End::CommitDurably
    } else {
        End::Commit
    };
    let written = write_rows(&batch.client, &rows, counters, end).await;
    batch.let_go(inner);
    let result = match written {
        Ok(()) if batch.alone => Ok(()),
        Ok(()) => flush(inner, &batch.client)
            .await
            .map_err(|e| unknown(inner, &e)),
        // Rows and COMMIT sent, and the connection failed: it may have
        // committed. (PostgreSQL refusing a statement is a known outcome:
        // the transaction fails, and its COMMIT rolls it back.)
        Err(RowsFailed::Sent(e)) if e.as_db_error().is_none() => Err(unknown(inner, &e)),
        Err(RowsFailed::Sent(e) | RowsFailed::Unsent(e)) => {
            // Surely not committed. If the connection failed (rather than
            // PostgreSQL refusing a statement, which a record of the batch
            // might make it do again), the refusals it took along wait for
            // the next batch again, ahead of newer ones. (After a COMMIT
            // whose outcome is unknown they may be in, and are not put
            // back: a refusal recorded twice would be a second refused
            // call that nobody made.)
            if e.as_db_error().is_none() {
                let at = batch.audit.len() - taken;
                let again: Vec<AuditRecord> = batch.audit.drain(at..).collect();
                let mut waiting = inner.refusals.lock();
                let newer = std::mem::replace(&mut *waiting, again);
                waiting.extend(newer);
            }
            Err(unavailable(&inner.database, &e))
        }
    };
    inner.publisher.synced(started.elapsed());
    if let Err(e) = result {
        tracing::warn!(database = %inner.database, error = %e, writes = batch.changes.len(), "a batch of writes failed");
        drop(Object::take(batch.client));
        return Err(e);
    }
    for _ in &batch.changes {
        inner.publisher.committed();
    }
    if batch.bootstrapped {
        inner.bootstrapped.store(true, Ordering::Release);
    }
    tracing::trace!(
        writes = batch.changes.len(),
        from = batch.base,
        to = batch.revision,
        took = ?batch.started.elapsed(),
        "batch committed"
    );
    let mut durable = std::mem::take(&mut batch.caught);
    durable.append(&mut batch.changes);
    follow::publish(inner, durable);
    Ok(Some((batch.revision, batch.audit_seq)))
}

/// Returns once the WAL is flushed as far as it was written when called:
/// a transaction of its own, with synchronous commit, that writes this
/// replica's row of `entitled_flush` (one that wrote nothing would not be
/// flushed). Concurrent ones share PostgreSQL's flushes.
pub(super) async fn flush(inner: &Inner, client: &Object) -> Result<(), tokio_postgres::Error> {
    let statement = client
        .prepare_cached(
            "INSERT INTO entitled_flush (replica, n) VALUES ($1, 1) \
             ON CONFLICT (replica) DO UPDATE SET n = entitled_flush.n + 1",
        )
        .await?;
    client.execute(&statement, &[&inner.replica]).await?;
    Ok(())
}

/// A commit whose outcome is not known.
fn unknown(inner: &Inner, e: &tokio_postgres::Error) -> StoreError {
    StoreError::Unavailable {
        database: inner.database.clone(),
        reason: format!(
            "the commit's outcome is unknown ({e}); a retry with the same request_id is safe"
        ),
    }
}

/// The bench's bulk load: `Store::import`, as one revision.
#[cfg(feature = "bench")]
pub(super) async fn import(
    inner: &Inner,
    accounts: Vec<Account>,
    users: Vec<User>,
) -> Result<u64, StoreError> {
    let mut writer = inner.writer.lock().await;
    if let Some(batch) = writer.open.take() {
        let id = batch.id;
        let result = commit(inner, batch).await;
        writer.finished = id;
        result?;
    }
    writer.next_id += 1;
    let id = writer.next_id;
    writer.finished = id;
    let mut batch = open(inner, id, writer.last).await?;
    // Encoding a million users keeps the transaction idle for longer than
    // a replica may be (see `pool`): this one may. Failed, the batch's
    // connection is closed, not pooled, as a failed batch's is.
    if let Err(e) = batch
        .client
        .batch_execute("SET LOCAL idle_in_transaction_session_timeout = 0")
        .await
    {
        batch.close(inner);
        return Err(inner.fail()(e));
    }
    let mut mutations: Vec<Mutation> = accounts.into_iter().map(Mutation::PutAccount).collect();
    batch.revision += 1;
    let revision = batch.revision;
    mutations.extend(users.into_iter().map(|mut u| {
        u.revision = revision;
        Mutation::PutUser(u)
    }));
    batch.apply(&mutations);
    batch.changes.push((revision, mutations));
    commit(inner, batch).await?;
    Ok(revision)
}
