//! The shedding layer's own tests: shares, keys, the monitor and the
//! message bound, without a server.
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
    Future: Send + Unpin,
> + Clone
+ Send
+ 'static {
    // Boxed, as the server's routes are (the layer wants an `Unpin` future).
    tower::service_fn(move |request: Request<Arrival<B>>| {
        Box::pin(async move {
            let mut body = request.into_body();
            while std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
                .await
                .is_some()
            {}
            tokio::time::sleep(work).await;
            Ok::<_, Infallible>(Response::new(tonic::body::Body::empty()))
        })
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
