//! The contract between the backend-neutral store and a storage backend:
//! the `Backend` trait and the values that cross it. sled (`store/sled/`)
//! is the one backend today; ARCHITECTURE.md ("The storage contract") says
//! in prose what a second one must guarantee.
//!
//! The split: the neutral part decides what a write is (replay, refusal
//! kept, no-op or change, and its audit records: `store/write.rs`) and owns
//! the view that serves reads (`store/publish.rs`); a backend stores
//! records, serialises writers, makes writes durable and hands them to the
//! view in revision order.

use std::{future::Future, ops::ControlFlow, pin::Pin, time::SystemTime};

use serde::{Deserialize, Serialize};

use super::{
    Mutation, StoreError, Target, TargetState,
    codec::RequestRecord,
    prune::{Pruned, RequestsBatch, RequestsResume},
    publish::Publisher,
};
use crate::domain::{Account, AuditRecord, Token, User};

/// A boxed future: `Backend` is used as a trait object.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A request id as the store keys its kept answer: the token that sent it
/// and the id the caller chose.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestId<'a> {
    pub token_id: &'a str,
    pub id: &'a str,
}

/// What a write is shown, read by the backend inside its write (so under
/// the one-writer guarantee, and consistent with the revision).
#[derive(Debug)]
pub(crate) struct Seen {
    /// The latest committed state of the write's target.
    pub current: TargetState,
    /// The latest committed revision.
    pub revision: u64,
    /// The answer kept for the write's request id, if any.
    pub request: Option<RequestRecord>,
    /// Whether the first start's operator token was made.
    pub bootstrapped: bool,
}

/// What a write commits.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    /// Applied at `Seen::revision + 1`, which becomes the latest revision.
    /// Empty: the revision stays (a no-op or a kept refusal).
    pub mutations: Vec<Mutation>,
    /// The write's audit records, at the new revision, in order; empty when
    /// `mutations` is. Their `seq` is the backend's to set (the next
    /// sequence numbers, in order).
    pub audit: Vec<AuditRecord>,
    /// The answer to keep under the write's request id.
    pub keep: Option<RequestRecord>,
}

impl Changes {
    pub(crate) fn is_empty(&self) -> bool {
        self.mutations.is_empty() && self.keep.is_none()
    }
}

/// What the write closure asks of `Backend::commit`.
#[derive(Debug)]
pub(crate) enum Step {
    /// Nothing to commit and nothing to wait for (a request id reused, a
    /// refusal not kept).
    Done,
    /// Commit these changes (perhaps none) atomically, and return once they
    /// and every write committed before them are durable and published.
    Commit(Changes),
}

/// The write closure: run by the backend, as the one writer, against what
/// it read. It may be run again (a backend that retries a transaction that
/// lost a conflict runs it on what it reads then), so it is `FnMut` and its
/// last run is the one that counts.
pub(crate) type WriteFn<'a> = dyn FnMut(Seen) -> Result<Step, StoreError> + Send + 'a;

/// The visitor of `Backend::audit_from`.
pub(crate) type Visit<'a> = dyn FnMut(AuditRecord) -> ControlFlow<()> + Send + 'a;

/// The store's counters, as a backup holds them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Counters {
    pub revision: u64,
    /// The last audit sequence number given.
    pub audit_seq: u64,
    /// Whether the first start's operator token was made.
    pub bootstrapped: bool,
}

/// An answer kept for a request id, with its key.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct KeptRequest {
    pub token_id: String,
    pub request_id: String,
    pub record: RequestRecord,
}

/// One logical record of a store: what a backup holds and a restore puts
/// back, whatever the backend.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "records go one at a time through a backup or a restore; boxing would cost an allocation per record"
)]
pub(crate) enum Record {
    Counters(Counters),
    Account(Account),
    User(User),
    Token(Token),
    Audit(AuditRecord),
    Request(KeptRequest),
}

/// A storage backend. See ARCHITECTURE.md, "The storage contract".
pub(crate) trait Backend: Send + Sync + 'static {
    /// The view of what is durable, which this backend loaded when it
    /// opened and publishes every durable write to.
    fn publisher(&self) -> &Publisher;

    /// Runs `write` as the one writer of the store — across every process
    /// that may open it — on the latest committed state of `target` and the
    /// answer kept for `request`, and commits what it returns atomically:
    /// the mutations at the next revision (revision order is commit order),
    /// their audit records, and the answer to keep. Returns once that, and
    /// every write committed before it, is durable and published (so a
    /// replay or a no-op, which commits nothing new, still waits for what it
    /// answers from). A write whose caller goes away (its future dropped)
    /// is still published once durable. Tells the publisher `committed` for
    /// each write that raises the revision. If the storage refuses a write
    /// or fails to make one durable, this and every later commit fail
    /// (`StoreError::Failed`) until the store is opened again: what is
    /// stored is then unknown.
    fn commit<'a>(
        &'a self,
        target: &'a Target,
        request: Option<RequestId<'a>>,
        write: &'a mut WriteFn<'_>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Appends a refused write's audit record at the latest revision, with
    /// the next sequence number (both set here). Raises no revision and is
    /// not waited for: it becomes durable with the next write, or soon.
    fn append_refusal(&self, record: AuditRecord) -> Result<(), StoreError>;

    /// Returns once every write committed before the call is durable and
    /// published.
    fn durable(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Hands `visit` the audit records from sequence `from` on, of one
    /// account (as `AuditRecord::account_id`) or all, in sequence order,
    /// until it breaks or they end. Records not yet durable may be among
    /// them; the caller filters by revision.
    fn audit_from<'a>(
        &'a self,
        account: Option<&'a str>,
        from: u64,
        visit: &'a mut Visit<'_>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The audit record with sequence number `seq`.
    fn audit_record(&self, seq: u64) -> BoxFuture<'_, Result<Option<AuditRecord>, StoreError>>;

    /// How far the audit trail has been pruned (audit retention): cheap,
    /// as readers ask it at each listing and watch.
    fn pruned(&self) -> BoxFuture<'_, Result<Pruned, StoreError>>;

    /// Deletes the audit records after `from.seq` up to `to.seq` (the
    /// oldest held: `Store::prune_batch` chose them) and records `to` as
    /// how far the trail is pruned, in one short transaction, taking no
    /// lock that writers or reads wait on for longer than that. The record
    /// of `to` is visible to readers no later than the deletions. False,
    /// with nothing done, if the trail is no longer pruned to `from`
    /// (another replica pruned it) or another replica is pruning now.
    fn prune(&self, from: Pruned, to: Pruned) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Deletes up to `limit` request records kept before `before` (by
    /// their `RequestRecord::at`), going on from `resume` (what the last
    /// batch returned; `None`: from the start), and says where to go on
    /// from (`None`: swept through). A record a writer replaced after this
    /// read it (a retry past the window keeps a new answer under the same
    /// key) is not deleted: only the record read as expired goes. Short,
    /// taking no lock that writers or reads wait on (a writer keeping an
    /// answer under a key being deleted waits for that row at most). Need
    /// not be durable when it returns: a deletion lost in a crash leaves a
    /// record that the write path treats as absent, and the next sweep
    /// deletes. Replicas may sweep at once.
    fn prune_requests(
        &self,
        before: SystemTime,
        resume: Option<RequestsResume>,
        limit: usize,
    ) -> BoxFuture<'_, Result<RequestsBatch, StoreError>>;

    /// The last audit sequence number given (0 for none).
    fn last_audit_seq(&self) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Whether the first start's operator token was made.
    fn bootstrapped(&self) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// What the store takes in storage, in bytes (as last measured: a
    /// backend may measure it in the background).
    fn size_bytes(&self) -> Result<u64, StoreError>;

    /// Hands `visit` every record of the store as of one revision, which it
    /// returns: the counters, then accounts, users, tokens, audit records
    /// and kept answers. Blocking (run it off the async runtime); writes
    /// may wait while it copies, reads do not. The revision may not be
    /// durable yet: wait with `durable` before handing the copy out.
    fn snapshot(
        &self,
        visit: &mut dyn FnMut(Record) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError>;

    /// Makes everything committed durable, and records so, for a stop.
    fn sync_on_stop(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The bench's bulk load: see `Store::import`.
    #[cfg(feature = "bench")]
    fn import(&self, accounts: Vec<Account>, users: Vec<User>) -> Result<u64, StoreError>;
}
