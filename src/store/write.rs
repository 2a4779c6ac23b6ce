//! The write path's rules, whatever the backend: what a write is shown
//! (`TargetState`), telling a retry's replay from a new write by its request
//! record (replay, reuse refused, the answer of a no-op or of a refusal kept
//! for a retry), and building a write's audit records from the state
//! `plan` saw and the mutations it returned. `Backend::commit` runs this
//! as the one writer and commits what it returns.

use std::{
    collections::HashMap,
    time::{Duration, Instant, SystemTime},
};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::{
    Store, StoreError,
    backend::{Changes, RequestId, Seen, Step},
    codec::{self, RequestRecord},
};
use crate::domain::{
    Account, AccountId, AccountState, Actor, AuditRecord, Outcome, Refusal, Rpc, Token, User,
    UserId, UserState,
};

/// How long a request id is remembered. Its record is deleted in the
/// background some time after (`Store::prune_requests_batch`).
pub const REQUEST_ID_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// One change to stored records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Mutation {
    PutAccount(Account),
    PutUser(User),
    DeleteUser(AccountId, UserId),
    PutToken(Token),
    MarkBootstrapped,
    /// Removes the account's record. Its users go by their own
    /// `DeleteUser`s in the same write (so the audit trail and Watch show
    /// each), before this: a write that deletes an account deletes every
    /// user `Target::WholeAccount` showed it. New variants go last: the
    /// PostgreSQL change feed stores mutations by the variant's index.
    DeleteAccount(AccountId),
}

/// What a write is about: what `plan` is shown.
#[derive(Debug, Clone)]
pub enum Target {
    Account(AccountId),
    User(AccountId, UserId),
    /// Many users at once (bulk import): `TargetState::many`, in this order.
    Users(Vec<(AccountId, UserId)>),
    /// An account and every one of its users (`TargetState::users`) and
    /// tokens (`TargetState::tokens`): a write on the whole account (moving
    /// it to another line, deleting it) sees every user committed before
    /// it, whichever replica wrote them.
    WholeAccount(AccountId),
    Token(String),
    /// No stored record: a token made for no account.
    NoRecord,
}

/// Who writes, for the audit trail and for replaying retries.
#[derive(Debug, Clone)]
pub struct WriteContext {
    pub actor: Actor,
    pub rpc: Rpc,
    pub at: SystemTime,
    /// As the caller sent them.
    pub account_id: String,
    pub user_id: String,
    pub request: Option<RequestKey>,
    /// Whether a refusal of this write may be kept for a retry with its
    /// request id. The service says no for a token that refuses more than
    /// its rate: a kept refusal is stored, and a hostile caller's refusals
    /// must not grow the store without bound (its retry then runs again).
    pub keep_refusal: bool,
}

/// A caller's request id and a fingerprint of the request it came with.
#[derive(Debug, Clone)]
pub struct RequestKey {
    pub id: String,
    pub fingerprint: [u8; 32],
}

/// What `plan` sees: the latest committed state of its target.
#[derive(Debug)]
pub struct TargetState {
    pub account: Option<Account>,
    pub user: Option<User>,
    pub token: Option<Token>,
    /// For `Target::Users`: each target's account and user, in order.
    pub many: Vec<(Option<Account>, Option<User>)>,
    /// For `Target::WholeAccount`: every user of the account, in id order.
    pub users: Vec<User>,
    /// For `Target::WholeAccount`: every token bound to the account
    /// (revoked ones too), in id order.
    pub tokens: Vec<Token>,
    /// The revision a write planned now would get.
    pub next_revision: u64,
    /// Whether the first start's operator token was made (so that replicas
    /// starting together on one database make exactly one).
    pub bootstrapped: bool,
}

impl TargetState {
    /// Reads `target` with a backend's point reads (each account read once).
    pub(crate) fn read(
        target: &Target,
        next_revision: u64,
        account: impl Fn(&AccountId) -> Result<Option<Account>, StoreError>,
        user: impl Fn(&AccountId, &UserId) -> Result<Option<User>, StoreError>,
        token: impl Fn(&str) -> Result<Option<Token>, StoreError>,
        users_of: impl Fn(&AccountId) -> Result<Vec<User>, StoreError>,
        tokens_of: impl Fn(&AccountId) -> Result<Vec<Token>, StoreError>,
    ) -> Result<TargetState, StoreError> {
        let mut current = TargetState {
            account: None,
            user: None,
            token: None,
            many: Vec::new(),
            users: Vec::new(),
            tokens: Vec::new(),
            next_revision,
            bootstrapped: false,
        };
        match target {
            Target::Account(a) => current.account = account(a)?,
            Target::User(a, u) => {
                current.account = account(a)?;
                current.user = user(a, u)?;
            }
            Target::Users(targets) => {
                let mut accounts: HashMap<&AccountId, Option<Account>> = HashMap::new();
                for (a, u) in targets {
                    let acc = match accounts.get(a) {
                        Some(acc) => acc.clone(),
                        None => {
                            let acc = account(a)?;
                            accounts.insert(a, acc.clone());
                            acc
                        }
                    };
                    current.many.push((acc, user(a, u)?));
                }
            }
            Target::WholeAccount(a) => {
                current.account = account(a)?;
                if current.account.is_some() {
                    current.users = users_of(a)?;
                    current.tokens = tokens_of(a)?;
                }
            }
            Target::Token(id) => current.token = token(id)?,
            Target::NoRecord => {}
        }
        Ok(current)
    }
}

/// What `plan` returns: the mutations to commit (none for a no-op), the
/// caller's output, and details for the audit record.
pub struct WritePlan<T> {
    pub mutations: Vec<Mutation>,
    pub output: T,
    pub details: Vec<String>,
    /// Set when `output` answers but refuses the request (an import whose
    /// rows were refused answers OK and changes nothing): the answer to
    /// keep for a retry instead of `output`, bounded in bytes whatever the
    /// caller sent. Such a plan has no mutations. It is kept as a refusal
    /// is: only while the token is within its refusal rate
    /// (`WriteContext::keep_refusal`); beyond it, its retry runs again.
    pub refused: Option<T>,
}

impl<T> WritePlan<T> {
    pub fn new(mutations: Vec<Mutation>, output: T) -> Self {
        WritePlan {
            mutations,
            output,
            details: Vec::new(),
            refused: None,
        }
    }

    /// A plan that changes nothing and whose `output` refuses the request;
    /// `kept` is what a retry gets back (see `WritePlan::refused`).
    pub fn refused(output: T, kept: T) -> Self {
        WritePlan {
            refused: Some(kept),
            ..WritePlan::new(Vec::new(), output)
        }
    }
}

/// The result of a write.
#[derive(Debug)]
pub struct Written<T> {
    pub output: T,
    /// The store revision after the write.
    pub revision: u64,
    /// True when this was a retry answered from the first call's record.
    pub replayed: bool,
}

/// The error a `plan` closure fails with, as a retry with the same
/// request id sees it: a refusal the same request would meet again is kept
/// with the request id, and a retry gets it back instead of running again.
pub trait Refusable: Sized {
    /// What to keep for a retry, or `None` when a retry should run again
    /// (a failure of the store, say).
    fn refusal(&self) -> Option<Refusal>;
    /// A kept refusal, as the error a retry fails with.
    fn refused(refusal: Refusal) -> Self;
}

/// What a write answers, and whether it applied a change.
type Answer<T, E> = Result<(Written<T>, bool), E>;

impl Store {
    /// Decides and commits one write atomically, with its audit record, and
    /// returns once it is durable and visible to reads. A retry with a
    /// request id already answered within 24 hours gets the first answer.
    /// `plan` may be run more than once (see `Backend::commit`); only its
    /// last run counts.
    pub async fn write<T, E>(
        &self,
        target: &Target,
        ctx: WriteContext,
        plan: impl FnMut(TargetState) -> Result<WritePlan<T>, E> + Send,
    ) -> Result<Written<T>, E>
    where
        T: Serialize + DeserializeOwned + Send,
        E: From<StoreError> + Refusable + Send,
    {
        self.write_upgrading(target, ctx, unchanged::<T>, plan)
            .await
    }

    /// `write`, for an output whose shape changed since answers were first
    /// kept for retries (one holding a `User`, which gained its scope):
    /// `v1` reads an answer kept in the old shape (format 1).
    pub async fn write_upgrading<T, E>(
        &self,
        target: &Target,
        ctx: WriteContext,
        v1: fn(&[u8]) -> Result<T, postcard::Error>,
        mut plan: impl FnMut(TargetState) -> Result<WritePlan<T>, E> + Send,
    ) -> Result<Written<T>, E>
    where
        T: Serialize + DeserializeOwned + Send,
        E: From<StoreError> + Refusable + Send,
    {
        let started = Instant::now();
        let request = ctx.request.as_ref().map(|r| RequestId {
            token_id: &ctx.actor.token_id,
            id: &r.id,
        });
        let mut outcome: Option<Answer<T, E>> = None;
        let mut write = |seen: Seen| {
            let (step, answer) = plan_write(seen, &ctx, v1, &mut plan)?;
            outcome = Some(answer);
            Ok(step)
        };
        // Whatever the outcome, what it wrote (a write, a no-op's or a
        // refusal's request record) is durable before the caller hears of it.
        self.backend.commit(target, request, &mut write).await?;
        let outcome =
            outcome.ok_or_else(|| StoreError::Failed("the write was never planned".to_owned()))?;
        let (written, applied) = outcome?;
        if applied {
            self.publisher().durable(started.elapsed());
        }
        Ok(written)
    }

    /// Appends a refused write to the audit trail. It raises no revision and
    /// is not waited for.
    pub fn record_refusal(
        &self,
        ctx: WriteContext,
        code: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        self.backend.append_refusal(AuditRecord {
            // Set by the backend.
            seq: 0,
            revision: 0,
            at: ctx.at,
            actor: ctx.actor,
            rpc: ctx.rpc,
            account_id: ctx.account_id,
            user_id: ctx.user_id,
            before: None,
            after: None,
            account_before: None,
            account_after: None,
            details: Vec::new(),
            outcome: Outcome::Refused {
                code: code.to_owned(),
                reason: reason.to_owned(),
            },
        })
    }
}

/// A kept output whose shape is the same in both formats.
fn unchanged<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// One run of a write as the one writer: replays a retry, refuses a reused
/// request id, or runs `plan` and says what to commit. Returns the step
/// for the backend and the answer for the caller.
fn plan_write<T, E>(
    seen: Seen,
    ctx: &WriteContext,
    v1: fn(&[u8]) -> Result<T, postcard::Error>,
    plan: &mut impl FnMut(TargetState) -> Result<WritePlan<T>, E>,
) -> Result<(Step, Answer<T, E>), StoreError>
where
    T: Serialize + DeserializeOwned,
    E: From<StoreError> + Refusable,
{
    let Seen {
        mut current,
        revision: committed,
        request: kept,
        bootstrapped,
    } = seen;
    current.bootstrapped = bootstrapped;
    if let (Some(request), Some(record)) = (&ctx.request, kept) {
        let fresh = record.at + REQUEST_ID_WINDOW > ctx.at;
        if fresh && record.fingerprint == request.fingerprint {
            // The answer may not be durable yet if its first call is still
            // waiting for it: so does the retry.
            let answer = match record.answer {
                Ok(output) => {
                    let key = format!("{}\0{}", ctx.actor.token_id, request.id);
                    let output =
                        codec::decode_output(codec::REQUESTS, key.as_bytes(), &output, v1)?;
                    Ok((
                        Written {
                            output,
                            revision: record.revision,
                            replayed: true,
                        },
                        false,
                    ))
                }
                Err(refusal) => Err(E::refused(refusal)),
            };
            return Ok((Step::Commit(Changes::default()), answer));
        }
        if fresh {
            let reused = StoreError::RequestReused(request.id.clone()).into();
            return Ok((Step::Done, Err(reused)));
        }
    }

    // The users and accounts as they were, for the audit trail's "before".
    let mut befores = Befores::default();
    for user in current
        .user
        .iter()
        .chain(current.many.iter().filter_map(|(_, u)| u.as_ref()))
        .chain(current.users.iter())
    {
        befores.users.insert(
            (user.account_id.clone(), user.id.clone()),
            UserState::from(user),
        );
    }
    for account in current
        .account
        .iter()
        .chain(current.many.iter().filter_map(|(a, _)| a.as_ref()))
    {
        befores
            .accounts
            .entry(account.id.clone())
            .or_insert_with(|| AccountState::from(account));
    }
    let keep = |revision, answer| {
        ctx.request.as_ref().map(|request| RequestRecord {
            fingerprint: request.fingerprint,
            at: ctx.at,
            revision,
            answer,
        })
    };
    let WritePlan {
        mutations,
        output,
        details,
        refused,
    } = match plan(current) {
        Ok(planned) => planned,
        Err(e) => {
            // A refusal the same request would meet again is kept for its
            // retry; anything else is not, and a retry runs again.
            let step = match (e.refusal(), &ctx.request) {
                (Some(refusal), Some(_)) if ctx.keep_refusal => Step::Commit(Changes {
                    keep: keep(committed, Err(refusal)),
                    ..Changes::default()
                }),
                _ => Step::Done,
            };
            return Ok((step, Err(e)));
        }
    };
    if refused.is_some() && !mutations.is_empty() {
        return Err(StoreError::Failed(
            "a plan that refuses its request has mutations; this is a bug in entitled".to_owned(),
        ));
    }
    if mutations.is_empty() {
        // The answer names the committed revision: it is durable before the
        // answer is given, even when another writer's sync of it is still
        // running. An answer that refuses is kept as a refusal is: bounded,
        // and only while the token is within its refusal rate.
        let kept = match (&ctx.request, refused) {
            (None, _) => None,
            (Some(_), Some(_)) if !ctx.keep_refusal => None,
            (Some(_), Some(bounded)) => keep(committed, Ok(codec::encode_output(&bounded)?)),
            (Some(_), None) => keep(committed, Ok(codec::encode_output(&output)?)),
        };
        let changes = Changes {
            keep: kept,
            ..Changes::default()
        };
        let unchanged = Written {
            output,
            revision: committed,
            replayed: false,
        };
        return Ok((Step::Commit(changes), Ok((unchanged, false))));
    }

    let revision = committed + 1;
    let audit = audit_records(ctx, revision, &mutations, &befores, &details);
    let changes = Changes {
        keep: match &ctx.request {
            Some(_) => keep(revision, Ok(codec::encode_output(&output)?)),
            None => None,
        },
        mutations,
        audit,
    };
    let written = Written {
        output,
        revision,
        replayed: false,
    };
    Ok((Step::Commit(changes), Ok((written, true))))
}

/// What the users and accounts a write touches were before it.
#[derive(Default)]
struct Befores {
    users: HashMap<(AccountId, UserId), UserState>,
    accounts: HashMap<AccountId, AccountState>,
}

/// A write's audit records, in the order of its mutations: one per user it
/// changed, with the user as it was and as it is after, and one per
/// account it changed (created, changed or deleted), with the account as
/// it was and is after; one for the write if it changed neither. Their
/// sequence numbers are the backend's to give.
fn audit_records(
    ctx: &WriteContext,
    revision: u64,
    mutations: &[Mutation],
    befores: &Befores,
    details: &[String],
) -> Vec<AuditRecord> {
    let record = |account_id, user_id| AuditRecord {
        seq: 0,
        revision,
        at: ctx.at,
        actor: ctx.actor.clone(),
        rpc: ctx.rpc,
        account_id,
        user_id,
        before: None,
        after: None,
        account_before: None,
        account_after: None,
        details: details.to_vec(),
        outcome: Outcome::Applied,
    };
    let user_record = |account: &AccountId, user: &UserId, after| {
        let before = befores.users.get(&(account.clone(), user.clone())).cloned();
        AuditRecord {
            before,
            after,
            ..record(account.to_string(), user.to_string())
        }
    };
    let account_record = |account: &AccountId, after: Option<AccountState>| {
        let before = befores.accounts.get(account).cloned();
        // An account written as it was (no field changed) is no change.
        (before != after).then(|| AuditRecord {
            account_before: before,
            account_after: after,
            ..record(account.to_string(), String::new())
        })
    };
    let mut records: Vec<AuditRecord> = mutations
        .iter()
        .filter_map(|m| match m {
            Mutation::PutUser(u) => {
                Some(user_record(&u.account_id, &u.id, Some(UserState::from(u))))
            }
            Mutation::DeleteUser(a, u) => Some(user_record(a, u, None)),
            Mutation::PutAccount(a) => account_record(&a.id, Some(AccountState::from(a))),
            Mutation::DeleteAccount(a) => account_record(a, None),
            Mutation::PutToken(_) | Mutation::MarkBootstrapped => None,
        })
        .collect();
    if records.is_empty() {
        records.push(record(ctx.account_id.clone(), ctx.user_id.clone()));
    }
    records
}
