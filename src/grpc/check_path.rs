//! The check's fast path: `AccessServer` serves AccessService, answering
//! CheckAnalyticsAccess and BatchCheckAnalyticsAccess itself and handing
//! every other method to the generated `AccessServiceServer`.
//!
//! Why not the generated server for these two: it can only write the
//! generated response types, whose report lists are encoded field by field
//! on every call. Here the answers are written as `proto::CheckAnswer`
//! (`proto/answer.rs`), whose report list was encoded once per tier and
//! data readiness (`convert::Answers`). A batch goes through tonic's own
//! unary machinery and prost codec; a single check, the hottest call,
//! through `unary.rs`, which does the same protocol work for one small
//! message at a fraction of the cost (it says what it keeps of tonic's).
//! The handlers' work is `Api::decide` and `Api::decide_many`
//! (`access.rs`), the same the generated path runs; the bytes are the same
//! too (`convert`'s tests compare them for every case).

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tonic::{
    Request, Response, Status,
    body::Body,
    codegen::{BoxFuture, StdError, http},
    server::{Grpc, NamedService, UnaryService},
};
use tonic_prost::ProstCodec;

use super::{Api, Authenticate, Authenticated, convert, unary};
use crate::{
    domain::Principal,
    proto::{
        BatchAnswer,
        v1::{self as pb, access_service_server::AccessServiceServer},
    },
};

const CHECK: &str = "/entitled.v1.AccessService/CheckAnalyticsAccess";
const BATCH: &str = "/entitled.v1.AccessService/BatchCheckAnalyticsAccess";

/// AccessService, with the two check methods answered by the fast path.
/// It authenticates its calls itself: the two checks get their caller
/// straight from `Authenticate::principal`, not through the request's
/// extensions (an allocation for the map and one for the entry, about 400
/// instructions a check); every other method goes through `Authenticated`
/// as the other services do.
#[derive(Clone)]
pub struct AccessServer {
    api: Arc<Api>,
    auth: Authenticate,
    generated: Authenticated<AccessServiceServer<Api>>,
    max_decoding: usize,
}

impl AccessServer {
    /// Requests larger than `max_decoding` bytes are refused, as by the
    /// generated server's `max_decoding_message_size`.
    pub fn new(api: Api, auth: &Authenticate, max_decoding: usize) -> Self {
        AccessServer {
            generated: auth.wrap(
                AccessServiceServer::new(api.clone()).max_decoding_message_size(max_decoding),
            ),
            auth: auth.clone(),
            api: Arc::new(api),
            max_decoding,
        }
    }
}

impl NamedService for AccessServer {
    const NAME: &'static str = "entitled.v1.AccessService";
}

impl<B> tower::Service<http::Request<B>> for AccessServer
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        if path != CHECK && path != BATCH {
            return Box::pin(self.generated.call(request));
        }
        let principal = match self.auth.principal(&request) {
            Ok(principal) => principal,
            Err(refusal) => return Box::pin(std::future::ready(Ok(refusal.into_http()))),
        };
        let api = Arc::clone(&self.api);
        if path == CHECK {
            let max = self.max_decoding;
            Box::pin(async move {
                let answer = match unary::read_request(request, max).await {
                    Ok(r) => api
                        .decide(&principal, &r)
                        .await
                        .map(|d| api.answers.answer(d)),
                    Err(status) => Err(status),
                };
                Ok(unary::respond(answer))
            })
        } else {
            let max = Some(self.max_decoding);
            Box::pin(async move {
                let codec =
                    ProstCodec::<BatchAnswer, pb::BatchCheckAnalyticsAccessRequest>::default();
                let mut grpc = Grpc::new(codec).apply_max_message_size_config(max, None);
                Ok(grpc.unary(Batch { api, principal }, request).await)
            })
        }
    }
}

/// A batch of checks, for the caller authentication found.
struct Batch {
    api: Arc<Api>,
    principal: Arc<Principal>,
}

impl UnaryService<pb::BatchCheckAnalyticsAccessRequest> for Batch {
    type Response = BatchAnswer;
    type Future = BoxFuture<Response<BatchAnswer>, Status>;

    fn call(&mut self, request: Request<pb::BatchCheckAnalyticsAccessRequest>) -> Self::Future {
        let (api, principal) = (Arc::clone(&self.api), Arc::clone(&self.principal));
        Box::pin(async move {
            let omit_reports = convert::omit_reports(request.metadata())?;
            let (results, revision) = api.decide_many(&principal, request.get_ref()).await?;
            // Refused once the answers would pass what a client accepts.
            let results = convert::batch_answers(
                results,
                omit_reports,
                |r| r.map(|d| api.answers.item(d, omit_reports)),
                BatchAnswer::result_len,
            )?;
            Ok(Response::new(BatchAnswer { results, revision }))
        })
    }
}

/// Sends the two checks straight to `AccessServer`, ahead of tonic's router:
/// a layer inside the metrics and shedding layers, so a check is timed,
/// counted and shed like any call, but skips the router's path matching,
/// its percent-decoded path parameters and its boxed, cloned services
/// (callgrind: about 5,000 instructions a check). Every other path goes to
/// the router, where `AccessServer` is registered too.
#[derive(Clone)]
pub struct ChecksFirstLayer {
    access: AccessServer,
}

impl ChecksFirstLayer {
    pub fn new(access: AccessServer) -> Self {
        ChecksFirstLayer { access }
    }
}

impl<S> tower::Layer<S> for ChecksFirstLayer {
    type Service = ChecksFirst<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ChecksFirst {
            access: self.access.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct ChecksFirst<S> {
    access: AccessServer,
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for ChecksFirst<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Unpin + Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Routed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        if path == CHECK || path == BATCH {
            Routed::Check(self.access.call(request))
        } else {
            Routed::Router(self.inner.call(request))
        }
    }
}

/// A call's answer: from `AccessServer` directly, or from the router.
pub enum Routed<F> {
    Check(BoxFuture<http::Response<Body>, Infallible>),
    Router(F),
}

impl<F, E> Future for Routed<F>
where
    F: Future<Output = Result<http::Response<Body>, E>> + Unpin,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Routed::Check(check) => match check.as_mut().poll(cx) {
                Poll::Ready(Ok(response)) => Poll::Ready(Ok(response)),
                Poll::Ready(Err(never)) => match never {},
                Poll::Pending => Poll::Pending,
            },
            Routed::Router(router) => Pin::new(router).poll(cx),
        }
    }
}
