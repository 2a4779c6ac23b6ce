//! Load shedding: a tower layer on the whole gRPC server that keeps one
//! caller, or too many callers, from taking the service from the others.
//!
//! - **A limit on calls at once.** At most `limit` calls hold a slot; any
//!   call beyond is answered `RESOURCE_EXHAUSTED` at once, instead of
//!   queueing without bound. A call holds its slot until its response
//!   headers are ready (for a server stream, until its first message is
//!   ready).
//! - **A share per token.** One token holds at most [`token_share`] of the
//!   slots (half), so a single caller, however many calls it opens, leaves
//!   the other half to everyone else. The token is known by the id in
//!   `authorization: Bearer <id>.<secret>`: this layer runs before
//!   authentication, but a forged or unknown token is refused by
//!   authentication from the headers alone, before the message is read, so it
//!   holds its slot only for that moment; the id is enough to tell callers
//!   apart. Calls without a usable id share one key.
//! - **A bound on the request message.** A call whose request message has not
//!   arrived whole (end of stream included) within `message_timeout` of the
//!   call's start is answered `DEADLINE_EXCEEDED` and its slot freed. Without
//!   it, a caller that sends headers and never the message holds a slot for
//!   as long as it likes. Every entitled RPC (and health) has one request
//!   message, which tonic reads to the end of the stream before the handler
//!   runs, so the bound never cuts a handler that is working, nor a server
//!   stream whose request has arrived. The bound ends once the response has
//!   started (reflection's bidirectional stream answers at once, and is not
//!   cut).
//! - **Overload is reported.** [`OverloadMonitor`] tells the server when the
//!   limit has been full (or calls shed for it) for about a second, so health
//!   can turn `NOT_SERVING` for a load balancer, and when it is no longer.
//!
//! Health is exempt from the limit, so a load balancer always gets an
//! answer. Not tower's `ConcurrencyLimit` + `LoadShed`: their limit covers
//! every path, health included, has no notion of a caller, and `Overloaded`
//! reaches the client as a generic message; these refusals say what to do.

use std::{
    collections::{HashMap, hash_map::Entry},
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use prometheus::IntCounter;
use tokio::time::Instant;
use tonic::Status;

use crate::metrics::{Metrics, ShedCounters};

/// Calls on these paths are never shed.
const EXEMPT_PREFIX: &str = "/grpc.health.v1.Health/";

/// A token id longer than this is no id we issued (ours have 20 bytes):
/// such calls share the key of calls without a token, which keeps every key
/// in the map small.
const MAX_ID_BYTES: usize = 64;

/// How many slots one token may hold: half the limit, at least one.
///
/// Half, because that is the largest share that still leaves at least as
/// much to everyone else as any one caller gets: one caller stalling or
/// flooding can no longer refuse the others. Not less, because in normal
/// service one token (the gateway's) legitimately carries most calls, and a
/// smaller share would shed it while the server had room. Two callers
/// together can still fill the limit; the limit protects the server, the
/// share protects callers from one another. With a limit of 1 the one slot
/// is the share (nothing smaller exists).
pub fn token_share(limit: usize) -> usize {
    (limit / 2).max(1)
}

/// Adds [`Shed`] in front of a service.
#[derive(Clone)]
pub struct ShedLayer {
    limiter: Arc<Limiter>,
    message_timeout: Duration,
    counters: ShedCounters,
    metrics: Metrics,
}

impl ShedLayer {
    /// At most `limit` calls (at least one) at once, [`token_share`] of them
    /// per token; a request message must arrive within `message_timeout`.
    /// Shed calls are counted in `metrics`.
    pub fn new(limit: usize, message_timeout: Duration, metrics: Metrics) -> Self {
        let limit = limit.max(1);
        ShedLayer {
            limiter: Arc::new(Limiter {
                limit,
                share: token_share(limit),
                running: Mutex::new(Running::default()),
            }),
            message_timeout,
            counters: metrics.shed_counters(),
            metrics,
        }
    }

    /// Judges overload for health; see [`OverloadMonitor`].
    pub fn monitor(&self) -> OverloadMonitor {
        OverloadMonitor {
            limiter: Arc::clone(&self.limiter),
            judge: Judge::default(),
            metrics: self.metrics.clone(),
        }
    }
}

impl<S> tower::Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Shed {
            inner,
            limiter: Arc::clone(&self.limiter),
            message_timeout: self.message_timeout,
            counters: self.counters.clone(),
        }
    }
}

/// Runs a call to `S` if its token has a slot to spare and the server one
/// free; answers `RESOURCE_EXHAUSTED` otherwise, and `DEADLINE_EXCEEDED` if
/// its request message does not arrive in time.
#[derive(Clone)]
pub struct Shed<S> {
    inner: S,
    limiter: Arc<Limiter>,
    message_timeout: Duration,
    counters: ShedCounters,
}

impl<S, B, RB> tower::Service<Request<B>> for Shed<S>
where
    S: tower::Service<Request<Arrival<B>>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Unpin + Send + 'static,
    B: Body + Unpin + Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Shedding<S::Future, RB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let slot = if request.uri().path().starts_with(EXEMPT_PREFIX) {
            None
        } else {
            match self.limiter.admit(caller_of(&request)) {
                Ok(slot) => Some(slot),
                Err(refusal) => {
                    match refusal {
                        Refusal::ServerLimit { .. } => self.counters.server_limit.inc(),
                        Refusal::TokenShare { .. } => self.counters.token_share.inc(),
                    }
                    return Shedding::Refused(Some(refusal.status().into_http()));
                }
            }
        };
        // A request whose message is all here already (a unary call's
        // headers and message usually come in one read) has nothing to
        // wait for: no flag and no timer.
        let arrived = (!request.body().is_end_stream()).then(|| Arc::new(AtomicBool::new(false)));
        let request = request.map(|body| Arrival {
            inner: body,
            arrived: arrived.clone(),
        });
        // Called here, on the service that was made ready: no clone of the
        // stack below per call.
        let call = self.inner.call(request);
        Shedding::Called {
            call,
            slot,
            waiting: arrived.map(|arrived| Waiting {
                arrived,
                timeout: self.message_timeout,
                timer: None,
                timed_out: self.counters.message_timeout.clone(),
            }),
        }
    }
}

/// A call's answer: refused at once, or the inner service's, cut short
/// with `DEADLINE_EXCEEDED` if its request message does not arrive whole
/// in time. Not boxed: an admitted call whose message is all here
/// allocates nothing in this layer.
pub enum Shedding<F, RB> {
    Refused(Option<Response<RB>>),
    Called {
        call: F,
        /// Given back when the call is answered (or dropped).
        slot: Option<Slot>,
        /// Set while the request message may not all have arrived.
        waiting: Option<Waiting>,
    },
}

// Nothing in it is ever pinned in place: the response is only moved out.
impl<F: Unpin, RB> Unpin for Shedding<F, RB> {}

/// A call whose request message was still on its way at its start.
pub struct Waiting {
    arrived: Arc<AtomicBool>,
    timeout: Duration,
    /// Started at the first poll that finds the call waiting (its start:
    /// most calls answer in their first poll and never read the clock).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    timed_out: IntCounter,
}

impl Waiting {
    /// Whether the timeout has passed with the message not all here.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.arrived.load(Ordering::Acquire) {
            return false;
        }
        let timeout = self.timeout;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + timeout)));
        timer.as_mut().poll(cx).is_ready() && !self.arrived.load(Ordering::Acquire)
    }
}

impl<F, RB, E> Future for Shedding<F, RB>
where
    F: Future<Output = Result<Response<RB>, E>> + Unpin,
    RB: Default,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Shedding::Refused(refusal) => match refusal.take() {
                Some(response) => Poll::Ready(Ok(response)),
                // Polled again after it answered: as any finished future.
                None => Poll::Pending,
            },
            Shedding::Called {
                call,
                slot,
                waiting,
            } => {
                if let Poll::Ready(answer) = Pin::new(call).poll(cx) {
                    slot.take();
                    return Poll::Ready(answer);
                }
                let Some(waiting) = waiting else {
                    return Poll::Pending;
                };
                if !waiting.expired(cx) {
                    return Poll::Pending;
                }
                // The handler has not started (its message is not all
                // here), so answering now cuts no work short: the slot is
                // freed at once, the call when this future is dropped.
                waiting.timed_out.inc();
                slot.take();
                Poll::Ready(Ok(Status::deadline_exceeded(format!(
                    "the request message did not arrive within {} of the call's start; send it whole with the headers, or raise `--request-message-timeout`",
                    humantime::format_duration(waiting.timeout)
                ))
                .into_http()))
            }
        }
    }
}

/// Who a call's slot counts against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Caller {
    /// The id of `authorization: Bearer <id>.<secret>` (not yet checked).
    Token(TokenId),
    /// No token, or none that could be one of ours.
    Anonymous,
}

/// A token id as the limiter keys it, held inline: the ids it keys are at
/// most `MAX_ID_BYTES` long, so admitting a call allocates nothing.
#[derive(Clone)]
struct TokenId {
    len: usize,
    bytes: [u8; MAX_ID_BYTES],
}

impl TokenId {
    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// For messages (made from a `&str` cut at a character boundary, so
    /// always text).
    fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

impl From<&str> for TokenId {
    /// The id, cut to `MAX_ID_BYTES` at a character boundary (`caller_of`
    /// passes none longer).
    fn from(id: &str) -> Self {
        let mut len = id.len().min(MAX_ID_BYTES);
        while !id.is_char_boundary(len) {
            len -= 1;
        }
        let mut bytes = [0; MAX_ID_BYTES];
        bytes[..len].copy_from_slice(&id.as_bytes()[..len]);
        TokenId { len, bytes }
    }
}

impl From<String> for TokenId {
    fn from(id: String) -> Self {
        TokenId::from(id.as_str())
    }
}

impl PartialEq for TokenId {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for TokenId {}

impl std::hash::Hash for TokenId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl std::fmt::Debug for TokenId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for TokenId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The caller a request claims to be, read as `authenticate` reads it.
fn caller_of<B>(request: &Request<B>) -> Caller {
    let id = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
        // Text, as `authenticate` wants it (ASCII is the quick test), and
        // the id before the first dot; the secret is not looked at.
        .filter(|bearer| bearer.is_ascii() || std::str::from_utf8(bearer).is_ok())
        .and_then(|bearer| {
            let dot = bearer.iter().position(|&b| b == b'.')?;
            std::str::from_utf8(&bearer[..dot]).ok()
        })
        .filter(|id| !id.is_empty() && id.len() <= MAX_ID_BYTES);
    match id {
        Some(id) => Caller::Token(id.into()),
        None => Caller::Anonymous,
    }
}

/// The slots: how many calls run, in all and per caller.
struct Limiter {
    limit: usize,
    share: usize,
    running: Mutex<Running>,
}

#[derive(Default)]
struct Running {
    total: usize,
    /// Only callers with at least one call running: an entry is removed
    /// when its count reaches zero, so there are never more than `limit`.
    /// A quick hash seeded at random per process (`foldhash`): at most
    /// `limit` entries, looked up twice a call.
    by_caller: HashMap<Caller, usize, foldhash::fast::RandomState>,
    /// A call was refused for the server's limit since the monitor last
    /// looked.
    shed: bool,
}

/// Why a call was refused a slot.
#[derive(Debug)]
enum Refusal {
    ServerLimit {
        limit: usize,
    },
    TokenShare {
        caller: Caller,
        share: usize,
        limit: usize,
    },
}

impl Refusal {
    fn status(&self) -> Status {
        Status::resource_exhausted(match self {
            Refusal::ServerLimit { limit } => format!(
                "the server is at its limit of {limit} concurrent calls; retry after a backoff, or raise `--max-concurrent-calls`"
            ),
            Refusal::TokenShare {
                caller: Caller::Token(id),
                share,
                limit,
            } => format!(
                "token `{id}` already has {share} calls running, the most one token may have at once (half the server's limit of {limit}); retry after some finish, give each client a token of its own, or raise `--max-concurrent-calls`"
            ),
            Refusal::TokenShare {
                caller: Caller::Anonymous,
                share,
                limit,
            } => format!(
                "{share} calls without a token are already running, the most they may have at once (half the server's limit of {limit}); send `authorization: Bearer <token>`"
            ),
        })
    }
}

impl Limiter {
    /// A slot for `caller`, if the server and the caller's share have one.
    fn admit(self: &Arc<Self>, caller: Caller) -> Result<Slot, Refusal> {
        let mut running = self.running.lock();
        let running = &mut *running;
        if running.total >= self.limit {
            running.shed = true;
            return Err(Refusal::ServerLimit { limit: self.limit });
        }
        // One lookup (the key is shared, not copied); a new entry starts
        // at 0, below any share, so only an old one can refuse.
        let held = running.by_caller.entry(caller.clone()).or_insert(0);
        if *held >= self.share {
            return Err(Refusal::TokenShare {
                caller,
                share: self.share,
                limit: self.limit,
            });
        }
        *held += 1;
        running.total += 1;
        Ok(Slot {
            limiter: Arc::clone(self),
            caller,
        })
    }

    fn release(&self, caller: &Caller) {
        let mut running = self.running.lock();
        let running = &mut *running;
        running.total = running.total.saturating_sub(1);
        if let Entry::Occupied(mut held) = running.by_caller.entry(caller.clone()) {
            *held.get_mut() = held.get().saturating_sub(1);
            if *held.get() == 0 {
                held.remove();
            }
        }
    }

    /// Whether the limit is full now or a call was shed for it since the
    /// last look.
    fn busy(&self) -> bool {
        let mut running = self.running.lock();
        let busy = running.total >= self.limit || running.shed;
        running.shed = false;
        busy
    }
}

/// One call's slot; given back when dropped (the call answered, failed or
/// was cancelled).
pub struct Slot {
    limiter: Arc<Limiter>,
    caller: Caller,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limiter.release(&self.caller);
    }
}

/// A request body that notes when it has arrived whole (when it had not
/// already at the call's start).
pub struct Arrival<B> {
    inner: B,
    arrived: Option<Arc<AtomicBool>>,
}

impl<B: Body + Unpin> Body for Arrival<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        // The end of the stream: tonic reads to it (for trailers) before it
        // calls the handler, so asking the body after each frame whether it
        // has ended would tell no sooner in time to matter.
        if let (Poll::Ready(None), Some(arrived)) = (&polled, &this.arrived) {
            arrived.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Tells the server when it is overloaded, for health: call
/// [`OverloadMonitor::tick`] every [`OverloadMonitor::TICK`].
pub struct OverloadMonitor {
    limiter: Arc<Limiter>,
    judge: Judge,
    metrics: Metrics,
}

impl OverloadMonitor {
    /// How often the limit is looked at.
    pub const TICK: Duration = Duration::from_millis(250);

    /// `Some(true)` when the server has just become overloaded, `Some(false)`
    /// when it has just recovered, `None` when nothing changed.
    pub fn tick(&mut self) -> Option<bool> {
        let change = self.judge.observe(self.limiter.busy());
        if let Some(overloaded) = change {
            self.metrics.set_overloaded(overloaded);
        }
        change
    }

    /// The limit, for the log.
    pub fn limit(&self) -> usize {
        self.limiter.limit
    }
}

/// Busy ticks in a row (the limit full, or calls shed for it, at each) that
/// make the server overloaded: five ticks of 250 ms span a second, so one
/// shed call or a moment at the limit never flips health.
const BUSY_TICKS: u32 = 5;

/// Overloaded after [`BUSY_TICKS`] busy ticks in a row; recovered at the
/// first tick that is not busy.
#[derive(Default)]
struct Judge {
    busy_ticks: u32,
    overloaded: bool,
}

impl Judge {
    fn observe(&mut self, busy: bool) -> Option<bool> {
        self.busy_ticks = if busy {
            self.busy_ticks.saturating_add(1)
        } else {
            0
        };
        let overloaded = self.busy_ticks >= BUSY_TICKS || (self.overloaded && busy);
        (overloaded != self.overloaded).then(|| {
            self.overloaded = overloaded;
            overloaded
        })
    }
}

#[cfg(test)]
mod tests;
