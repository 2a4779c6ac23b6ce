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
//!   authentication, but a forged or unknown token is refused by the
//!   interceptor from the headers alone, before the message is read, so it
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
    collections::HashMap,
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

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, RB> tower::Service<Request<B>> for Shed<S>
where
    S: tower::Service<Request<Arrival<B>>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Unpin + Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let deadline = Instant::now() + self.message_timeout;
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
                    let status = refusal.status();
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            }
        };
        let arrived = Arc::new(AtomicBool::new(false));
        let request = request.map(|body| Arrival::new(body, Arc::clone(&arrived)));
        // The clone that was made ready goes to this call (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let timeout = self.message_timeout;
        let timed_out = self.counters.message_timeout.clone();
        Box::pin(async move {
            let answer = tokio::select! {
                biased;
                answer = inner.call(request) => answer,
                () = stalled(deadline, &arrived) => {
                    // The handler has not started (its message is not all
                    // here), so dropping the call cuts no work short.
                    timed_out.inc();
                    Ok(Status::deadline_exceeded(format!(
                        "the request message did not arrive within {} of the call's start; send it whole with the headers, or raise `--request-message-timeout`",
                        humantime::format_duration(timeout)
                    ))
                    .into_http())
                }
            };
            drop(slot);
            answer
        })
    }
}

/// Completes at `deadline` if the request has not arrived whole by then;
/// never otherwise.
async fn stalled(deadline: Instant, arrived: &AtomicBool) {
    tokio::time::sleep_until(deadline).await;
    if arrived.load(Ordering::Acquire) {
        std::future::pending::<()>().await;
    }
}

/// Who a call's slot counts against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Caller {
    /// The id of `authorization: Bearer <id>.<secret>` (not yet checked).
    Token(Box<str>),
    /// No token, or none that could be one of ours.
    Anonymous,
}

/// The caller a request claims to be, read as `authenticate` reads it.
fn caller_of<B>(request: &Request<B>) -> Caller {
    let id = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
        .and_then(|bearer| std::str::from_utf8(bearer).ok())
        .and_then(|bearer| bearer.split_once('.'))
        .map(|(id, _secret)| id)
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
    by_caller: HashMap<Caller, usize>,
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
        if running.total >= self.limit {
            running.shed = true;
            return Err(Refusal::ServerLimit { limit: self.limit });
        }
        let held = running.by_caller.get(&caller).copied().unwrap_or(0);
        if held >= self.share {
            return Err(Refusal::TokenShare {
                caller,
                share: self.share,
                limit: self.limit,
            });
        }
        running.by_caller.insert(caller.clone(), held + 1);
        running.total += 1;
        Ok(Slot {
            limiter: Arc::clone(self),
            caller,
        })
    }

    fn release(&self, caller: &Caller) {
        let mut running = self.running.lock();
        running.total = running.total.saturating_sub(1);
        if let Some(held) = running.by_caller.get_mut(caller) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                running.by_caller.remove(caller);
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
struct Slot {
    limiter: Arc<Limiter>,
    caller: Caller,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limiter.release(&self.caller);
    }
}

/// A request body that notes when it has arrived whole.
pub struct Arrival<B> {
    inner: B,
    arrived: Arc<AtomicBool>,
}

impl<B: Body> Arrival<B> {
    fn new(inner: B, arrived: Arc<AtomicBool>) -> Self {
        if inner.is_end_stream() {
            arrived.store(true, Ordering::Release);
        }
        Arrival { inner, arrived }
    }
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
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(_)) => this.inner.is_end_stream(),
            Poll::Pending => false,
        };
        if ended {
            this.arrived.store(true, Ordering::Release);
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
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        reason = "a test fails loudly on any unexpected error"
    )]

    use std::convert::Infallible;

    use bytes::Bytes;
    use tower::{Layer, Service, ServiceExt};

    use super::*;

    fn request(path: &str, authorization: Option<&str>) -> Request<()> {
        let mut builder = Request::builder().uri(format!("http://localhost{path}"));
        if let Some(value) = authorization {
            builder = builder.header("authorization", value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn a_token_may_hold_half_the_limit_and_at_least_one_slot() {
        for (limit, share) in [(1, 1), (2, 1), (3, 1), (8, 4), (1024, 512)] {
            assert_eq!(token_share(limit), share, "limit {limit}");
        }
    }

    #[test]
    fn the_caller_is_the_id_of_a_bearer_token_and_anything_else_is_anonymous() {
        let token = |id: &str| Caller::Token(id.into());
        let path = "/entitled.v1.CatalogueService/GetCatalogue";
        let cases = [
            (
                Some("Bearer tok_0123456789abcdef.c2VjcmV0"),
                token("tok_0123456789abcdef"),
            ),
            (Some("Bearer tok_a.b.c"), token("tok_a")),
            (None, Caller::Anonymous),
            (Some("Basic tok_a.b"), Caller::Anonymous),
            (Some("Bearer tok_a"), Caller::Anonymous),
            (Some("Bearer .secret"), Caller::Anonymous),
            (
                Some(&format!("Bearer {}.x", "a".repeat(MAX_ID_BYTES))),
                token(&"a".repeat(MAX_ID_BYTES)),
            ),
            (
                Some(&format!("Bearer {}.x", "a".repeat(MAX_ID_BYTES + 1))),
                Caller::Anonymous,
            ),
        ];
        for (authorization, expected) in cases {
            assert_eq!(
                caller_of(&request(path, authorization)),
                expected,
                "{authorization:?}"
            );
        }
    }

    fn limiter(limit: usize) -> Arc<Limiter> {
        Arc::new(Limiter {
            limit,
            share: token_share(limit),
            running: Mutex::new(Running::default()),
        })
    }

    #[test]
    fn one_token_gets_its_share_others_the_rest_and_the_map_empties() {
        let limiter = limiter(8);
        let a = || Caller::Token("tok_a".into());
        let held_by_a: Vec<Slot> = (0..4).map(|_| limiter.admit(a()).unwrap()).collect();
        let refused = limiter.admit(a()).err().unwrap();
        let message = refused.status().message().to_owned();
        assert!(
            message.contains("token `tok_a` already has 4 calls running"),
            "{message}"
        );
        assert!(message.contains("limit of 8"), "{message}");
        // Another token, and calls without one, still get slots.
        let mut others: Vec<Slot> = (0..3)
            .map(|_| limiter.admit(Caller::Token("tok_b".into())).unwrap())
            .collect();
        others.push(limiter.admit(Caller::Anonymous).unwrap());
        // Now the server is full: the refusal is the server's.
        let refused = limiter.admit(Caller::Token("tok_c".into())).err().unwrap();
        assert!(
            matches!(refused, Refusal::ServerLimit { limit: 8 }),
            "{refused:?}"
        );
        assert!(limiter.busy());
        drop(held_by_a);
        drop(others);
        let running = limiter.running.lock();
        assert_eq!(running.total, 0);
        assert!(running.by_caller.is_empty(), "entries stay behind");
    }

    #[test]
    fn a_hundred_thousand_callers_in_turn_leave_no_entry_behind() {
        let limiter = limiter(4);
        for i in 0..100_000u32 {
            drop(
                limiter
                    .admit(Caller::Token(format!("tok_{i}").into()))
                    .unwrap(),
            );
        }
        assert!(limiter.running.lock().by_caller.is_empty());
    }

    #[test]
    fn overload_needs_a_busy_second_and_ends_at_the_first_quiet_tick() {
        let mut judge = Judge::default();
        // One shed call: one busy tick, no change.
        assert_eq!(judge.observe(true), None);
        assert_eq!(judge.observe(false), None);
        for _ in 1..BUSY_TICKS {
            assert_eq!(judge.observe(true), None);
        }
        assert_eq!(judge.observe(true), Some(true));
        assert_eq!(judge.observe(true), None);
        assert_eq!(judge.observe(false), Some(false));
        assert_eq!(judge.observe(true), None);
    }

    /// A body that sends `first` (if any), then nothing more, ever.
    struct Stuck(Option<Bytes>);

    impl Body for Stuck {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            match self.0.take() {
                Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                None => Poll::Pending,
            }
        }
    }

    /// A body of one frame and the end.
    struct Whole(Option<Bytes>);

    impl Body for Whole {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.take().map(|data| Ok(Frame::data(data))))
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_none()
        }
    }

    /// A handler that reads its body to the end, as tonic does, then works
    /// for `work`.
    fn handler<B: Body + Unpin + Send + 'static>(
        work: Duration,
    ) -> impl tower::Service<
        Request<Arrival<B>>,
        Response = Response<tonic::body::Body>,
        Error = Infallible,
        Future: Send,
    > + Clone
    + Send
    + 'static {
        tower::service_fn(move |request: Request<Arrival<B>>| async move {
            let mut body = request.into_body();
            while std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
                .await
                .is_some()
            {}
            tokio::time::sleep(work).await;
            Ok::<_, Infallible>(Response::new(tonic::body::Body::empty()))
        })
    }

    fn grpc_status(response: &Response<tonic::body::Body>) -> Option<Status> {
        Status::from_header_map(response.headers())
    }

    #[tokio::test]
    async fn a_message_that_never_arrives_is_ended_and_frees_its_slot() {
        let layer = ShedLayer::new(1, Duration::from_millis(100), Metrics::new().unwrap());
        let mut shed = layer.layer(handler::<Stuck>(Duration::ZERO));
        let path = "/entitled.v1.CatalogueService/GetCatalogue";
        for first in [None, Some(Bytes::from_static(b"\0\0\0\0\x05ab"))] {
            let call = request(path, Some("Bearer tok_a.x")).map(|()| Stuck(first.clone()));
            let started = std::time::Instant::now();
            let response = shed.ready().await.unwrap().call(call).await.unwrap();
            let status = grpc_status(&response).unwrap();
            assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{first:?}");
            let message = status.message();
            assert!(message.contains("did not arrive within 100ms"), "{message}");
            assert!(started.elapsed() >= Duration::from_millis(100));
            assert_eq!(
                layer.limiter.running.lock().total,
                0,
                "the slot is still held"
            );
        }
        assert_eq!(layer.counters.message_timeout.get(), 2);
    }

    #[tokio::test]
    async fn a_call_whose_message_arrived_is_not_cut_however_long_it_works() {
        let layer = ShedLayer::new(4, Duration::from_millis(50), Metrics::new().unwrap());
        let mut shed = layer.layer(handler::<Whole>(Duration::from_millis(300)));
        let call = request("/entitled.v1.AccessService/WatchEntitlements", None)
            .map(|()| Whole(Some(Bytes::from_static(b"\0\0\0\0\0"))));
        let response = shed.ready().await.unwrap().call(call).await.unwrap();
        assert!(
            grpc_status(&response).is_none(),
            "cut after its message arrived"
        );
        assert_eq!(layer.counters.message_timeout.get(), 0);
    }
}
