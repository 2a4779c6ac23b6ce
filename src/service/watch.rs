//! The change feed: every change to users after a revision, from the audit
//! trail (history) and then as writes are published (live), with heartbeats
//! when idle. One task per watcher reads the trail; a bounded buffer stands
//! between it and the client, so a slow client is cut off rather than
//! growing the server's memory.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::mpsc;

use super::{Caller, DomainError, Entitlements, authorize};
use crate::domain::{AccountId, AuditRecord, Rpc, UserState};

/// Records read from the trail at a time.
const READ_BATCH: usize = 512;

/// How watches behave; the defaults are the documented ones.
#[derive(Debug, Clone, Copy)]
pub struct WatchOptions {
    /// How far back a watch may start (older: OUT_OF_RANGE).
    pub history: Duration,
    /// The longest silence before a heartbeat.
    pub heartbeat: Duration,
    /// Events buffered for a client.
    pub buffer: usize,
    /// How long the buffer may stay full before the client counts as too
    /// slow and is cut off. A full buffer alone is not slowness: a client
    /// replaying a long history fills it at once, however fast it reads.
    pub stall: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            history: Duration::from_secs(7 * 24 * 3600),
            heartbeat: Duration::from_secs(5),
            buffer: 4096,
            stall: Duration::from_secs(10),
        }
    }
}

/// One user's change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub revision: u64,
    pub at: SystemTime,
    pub account_id: String,
    pub user_id: String,
    pub before: Option<UserState>,
    pub after: Option<UserState>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "nearly every event is a change; boxing each would cost an allocation per event for the rare heartbeat's sake"
)]
pub enum WatchEvent {
    Change(Change),
    /// Nothing changed for a while; the stream has reached this revision.
    Heartbeat(u64),
}

impl Entitlements {
    /// Starts a watch; the events (or the error that ends them) arrive on
    /// the receiver. Dropping the receiver stops the watch.
    pub async fn watch(
        &self,
        caller: &Caller,
        account: Option<AccountId>,
        after_revision: u64,
    ) -> Result<mpsc::Receiver<Result<WatchEvent, DomainError>>, DomainError> {
        authorize(caller, Rpc::WatchEntitlements, account.as_ref(), None)?;
        let options = self.watch_options;
        let (mut cursor, first_at) = self.store.audit_position_after(after_revision).await?;
        let now = (self.clock)();
        if let Some(at) = first_at
            && now.duration_since(at).unwrap_or_default() > options.history
        {
            return Err(DomainError::HistoryGone {
                after_revision,
                history: options.history,
            });
        }
        let (tx, rx) = mpsc::channel(options.buffer.max(1));
        let store = self.store.clone();
        let mut stopping = self.stopping.subscribe();
        let account: Option<Arc<str>> = account.map(|a| Arc::from(a.as_str()));
        tokio::spawn(async move {
            let mut published = store.subscribe();
            let mut reached = after_revision;
            // The last revision all of whose changes (for this watch) were
            // handed to the client: where a watch ended now must resume. A
            // write that changes many users (an import) gives them one
            // revision, and a watch can be ended in the middle of them.
            let mut complete = after_revision;
            // Heartbeats count silence as the client sees it: writes to
            // accounts it does not watch do not reset the clock.
            let mut last_sent = Instant::now();
            loop {
                let durable = *published.borrow_and_update();
                // Everything durable after the cursor, in order.
                loop {
                    let (records, next) =
                        match store.audit_records_from(cursor, durable, READ_BATCH).await {
                            Ok(read) => read,
                            Err(e) => {
                                let _ = tx.send(Err(e.into())).await;
                                return;
                            }
                        };
                    let full = records.len() == READ_BATCH;
                    cursor = next;
                    for record in records {
                        reached = reached.max(record.revision);
                        if record.revision <= after_revision {
                            continue;
                        }
                        // Records come in revision order: every change of an
                        // earlier revision has been handed over.
                        complete = complete.max(record.revision.saturating_sub(1));
                        let Some(change) = change_of(record, account.as_deref()) else {
                            continue;
                        };
                        let event = WatchEvent::Change(change);
                        if !offer(&tx, event, &options, &mut stopping, complete).await {
                            return;
                        }
                        last_sent = Instant::now();
                    }
                    if !full {
                        break;
                    }
                }
                reached = reached.max(durable);
                complete = reached;
                let silent = last_sent.elapsed();
                if *stopping.borrow_and_update() {
                    say_stopping(&tx, complete).await;
                    return;
                }
                let heartbeat_due = match options.heartbeat.checked_sub(silent) {
                    None => true,
                    Some(left) => tokio::select! {
                        changed = tokio::time::timeout(left, published.changed()) => match changed {
                            Ok(Ok(())) => false,
                            // The store is gone: the server is stopping.
                            Ok(Err(_)) => return,
                            Err(_) => true,
                        },
                        _ = stopping.changed() => {
                            say_stopping(&tx, complete).await;
                            return;
                        }
                    },
                };
                if heartbeat_due {
                    let event = WatchEvent::Heartbeat(reached);
                    if !offer(&tx, event, &options, &mut stopping, complete).await {
                        return;
                    }
                    last_sent = Instant::now();
                }
            }
        });
        Ok(rx)
    }
}

/// A user's change from an applied audit record, if it is one and is in
/// the account watched.
fn change_of(record: AuditRecord, account: Option<&str>) -> Option<Change> {
    // A write that changed no user (an account, a token, even one that
    // names a user) has neither a before nor an after.
    let no_user_changed = record.before.is_none() && record.after.is_none();
    if record.user_id.is_empty()
        || no_user_changed
        || account.is_some_and(|a| a != record.account_id)
    {
        return None;
    }
    Some(Change {
        revision: record.revision,
        at: record.at,
        account_id: record.account_id,
        user_id: record.user_id,
        before: record.before,
        after: record.after,
    })
}

/// Hands an event to the client's buffer, waiting for room for at most
/// `stall`. A buffer that stays full that long means the client reads too
/// slowly: it is told so (once it has read what is buffered, or not at all
/// if it never does) and the watch ends. Memory stays bounded by the buffer
/// either way, since the events come from the audit trail on disk. A stop
/// ends the watch at once, even in the middle of a replay. Either way the
/// client is told to resume after `complete`. False when the watch should
/// end.
async fn offer(
    tx: &mpsc::Sender<Result<WatchEvent, DomainError>>,
    event: WatchEvent,
    options: &WatchOptions,
    stopping: &mut tokio::sync::watch::Receiver<bool>,
    complete: u64,
) -> bool {
    let reserved = tokio::select! {
        biased;
        _ = stopping.wait_for(|s| *s) => None,
        reserved = tokio::time::timeout(options.stall, tx.reserve()) => Some(reserved),
    };
    let Some(reserved) = reserved else {
        say_stopping(tx, complete).await;
        return false;
    };
    match reserved {
        Ok(Ok(permit)) => {
            permit.send(Ok(event));
            true
        }
        Ok(Err(_closed)) => false,
        Err(_stalled) => {
            let _ = tokio::time::timeout(
                Duration::from_secs(30),
                tx.send(Err(DomainError::SlowConsumer {
                    buffer: options.buffer,
                    stall: options.stall,
                    resume_after: complete,
                })),
            )
            .await;
            false
        }
    }
}

/// Tells the client the server is stopping, if its buffer has room within a
/// second: a stop must not wait on a client that does not read.
async fn say_stopping(tx: &mpsc::Sender<Result<WatchEvent, DomainError>>, complete: u64) {
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        tx.send(Err(DomainError::ShuttingDown {
            resume_after: complete,
        })),
    )
    .await;
}
