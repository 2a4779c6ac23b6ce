//! The change feed: every change to users and accounts after a revision,
//! from the audit trail (history) and then as writes are published (live),
//! with heartbeats when idle. Account events come from the account's
//! before and after that the store keeps in the trail whenever a write
//! changes an account (`AuditRecord::account_before`), whatever the RPC:
//! so a gateway can keep every answer of its cache from the feed alone. One task per watcher reads the trail; a bounded buffer stands
//! between it and the client, so a slow client is cut off rather than
//! growing the server's memory.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::mpsc;

use super::{Caller, DomainError, Entitlements, authorize};
use crate::domain::{AccountId, AccountState, AuditRecord, Rpc, UserState};

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

/// Why an account event was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountChangeKind {
    Created,
    /// Rule 8: the account's analytics clock started, so every user's
    /// `data_available_at` is now set.
    AnalyticsActivated,
    ProductLineChanged,
    /// The account is gone, and with it every user (each sent as a user's
    /// deletion, at the same revision, before this event).
    Deleted,
}

/// One account's change, with the account as it is after it (as it was
/// before it, for a deletion).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountChange {
    pub revision: u64,
    pub at: SystemTime,
    pub account_id: String,
    pub kind: AccountChangeKind,
    pub display_name: String,
    pub product_line: String,
    /// For `ProductLineChanged`: the line before.
    pub before_product_line: Option<String>,
    /// The activation plus the data delay in force; `None` before the
    /// account's activation, and for a deletion.
    pub data_available_at: Option<SystemTime>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Change(Change),
    Account(AccountChange),
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
        let data_delay = self.catalogue.data_delay();
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
                        for event in events_of(record, account.as_deref(), data_delay) {
                            if !offer(&tx, event, &options, &mut stopping, complete).await {
                                return;
                            }
                            last_sent = Instant::now();
                        }
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

/// The events of an applied audit record in the account watched: a user's
/// change, or an account's (one event per kind of change it made), or none
/// (a token's write, a refusal, a write that changed nothing watched).
pub(crate) fn events_of(
    record: AuditRecord,
    account: Option<&str>,
    data_delay: Duration,
) -> Vec<WatchEvent> {
    if account.is_some_and(|a| a != record.account_id) {
        return Vec::new();
    }
    // A write that changed no user (an account, a token, even one that
    // names a user) has neither a before nor an after.
    let user_changed = record.before.is_some() || record.after.is_some();
    if user_changed && !record.user_id.is_empty() {
        return vec![WatchEvent::Change(Change {
            revision: record.revision,
            at: record.at,
            account_id: record.account_id,
            user_id: record.user_id,
            before: record.before,
            after: record.after,
        })];
    }
    let event = |kind, state: &AccountState, before_product_line| {
        WatchEvent::Account(AccountChange {
            revision: record.revision,
            at: record.at,
            account_id: record.account_id.clone(),
            kind,
            display_name: state.display_name.clone(),
            product_line: state.product_line.clone(),
            before_product_line,
            data_available_at: match kind {
                AccountChangeKind::Deleted => None,
                _ => state.data_available_at(data_delay),
            },
        })
    };
    use AccountChangeKind as K;
    match (&record.account_before, &record.account_after) {
        (None, None) => Vec::new(),
        (None, Some(after)) => vec![event(K::Created, after, None)],
        (Some(before), None) => vec![event(K::Deleted, before, None)],
        (Some(before), Some(after)) => {
            let mut events = Vec::new();
            if before.analytics_activated_at != after.analytics_activated_at {
                events.push(event(K::AnalyticsActivated, after, None));
            }
            if before.product_line != after.product_line {
                let was = Some(before.product_line.clone());
                events.push(event(K::ProductLineChanged, after, was));
            }
            events
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Actor, Outcome, Role, Tier, Via};

    fn record(before: Option<AccountState>, after: Option<AccountState>) -> AuditRecord {
        AuditRecord {
            seq: 1,
            revision: 7,
            at: SystemTime::UNIX_EPOCH,
            actor: Actor {
                token_id: "tok".into(),
                name: "billing".into(),
                role: Role::Provisioner,
                via: Via::Api,
            },
            rpc: Rpc::UpdateUserServices,
            account_id: "acme".into(),
            user_id: String::new(),
            before: None,
            after: None,
            account_before: before,
            account_after: after,
            details: Vec::new(),
            outcome: Outcome::Applied,
        }
    }

    fn state(line: &str, activated: Option<u64>) -> AccountState {
        AccountState {
            display_name: "Acme".into(),
            product_line: line.into(),
            analytics_activated_at: activated
                .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s)),
        }
    }

    fn kinds(events: &[WatchEvent]) -> Vec<AccountChangeKind> {
        events
            .iter()
            .map(|e| match e {
                WatchEvent::Account(a) => a.kind,
                other => panic!("not an account event: {other:?}"),
            })
            .collect()
    }

    /// One event per kind of change an account's record shows, with the
    /// account after it and `data_available_at` from the delay in force.
    #[test]
    fn an_accounts_record_gives_one_event_per_kind_of_change() {
        use AccountChangeKind as K;
        let delay = Duration::from_secs(48 * 3600);
        let cases = [
            (None, Some(state("work", None)), vec![K::Created]),
            (
                Some(state("work", None)),
                Some(state("work", Some(100))),
                vec![K::AnalyticsActivated],
            ),
            (
                Some(state("virtual-office", Some(100))),
                Some(state("work", Some(100))),
                vec![K::ProductLineChanged],
            ),
            (
                Some(state("virtual-office", None)),
                Some(state("work", Some(100))),
                vec![K::AnalyticsActivated, K::ProductLineChanged],
            ),
            (Some(state("work", Some(100))), None, vec![K::Deleted]),
            // A change no check depends on, and no account at all.
            (
                Some(state("work", None)),
                Some(AccountState {
                    display_name: "Acme Corp".into(),
                    ..state("work", None)
                }),
                vec![],
            ),
            (None, None, vec![]),
        ];
        for (before, after, expected) in cases {
            let events = events_of(record(before.clone(), after.clone()), None, delay);
            assert_eq!(kinds(&events), expected, "{before:?} → {after:?}");
            for event in &events {
                let WatchEvent::Account(a) = event else {
                    unreachable!()
                };
                assert_eq!(a.revision, 7);
                let shown = if a.kind == K::Deleted {
                    before.as_ref()
                } else {
                    after.as_ref()
                };
                assert_eq!(Some(&a.product_line), shown.map(|s| &s.product_line));
                let expected_at = match a.kind {
                    K::Deleted => None,
                    _ => shown
                        .and_then(|s| s.analytics_activated_at)
                        .map(|t| t + delay),
                };
                assert_eq!(a.data_available_at, expected_at);
                let was = (a.kind == K::ProductLineChanged).then(|| "virtual-office".to_owned());
                assert_eq!(a.before_product_line, was);
            }
        }
    }

    /// A user's record is a user's change; another account's is nothing to
    /// a watch of one account.
    #[test]
    fn records_are_filtered_by_the_account_watched() {
        let delay = Duration::from_secs(1);
        let created = record(None, Some(state("work", None)));
        assert!(events_of(created.clone(), Some("globex"), delay).is_empty());
        assert_eq!(events_of(created, Some("acme"), delay).len(), 1);
        let user = AuditRecord {
            user_id: "ada".into(),
            after: Some(UserState {
                display_name: "Ada".into(),
                edition: None,
                tier: Tier::None,
                supervisor_scope: None,
            }),
            ..record(None, None)
        };
        let events = events_of(user, Some("acme"), delay);
        assert!(matches!(events.as_slice(), [WatchEvent::Change(c)] if c.user_id == "ada"));
    }
}
