//! The check's fast path: `AccessServer` serves AccessService, answering
//! CheckAnalyticsAccess and BatchCheckAnalyticsAccess itself and handing
//! every other method to the generated `AccessServiceServer`.
//!
//! Why not the generated server for these two: it can only write the
//! generated response types, whose report lists are encoded field by field
//! on every call. Here the answers are written as `proto::CheckAnswer`
//! (`proto/answer.rs`), whose report list was encoded once per tier and
//! data readiness (`convert::ReportLists`), through tonic's own unary
//! machinery and prost codec, so that decoding, limits, errors and
//! trailers are tonic's as before. The handlers' work is `Api::decide` and
//! `Api::decide_many` (`access.rs`), the same the generated path runs;
//! the bytes are the same too (`convert`'s tests compare them for every
//! case).

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

use super::{Api, convert};
use crate::proto::{
    BatchAnswer, CheckAnswer,
    v1::{self as pb, access_service_server::AccessServiceServer},
};

const CHECK: &str = "/entitled.v1.AccessService/CheckAnalyticsAccess";
const BATCH: &str = "/entitled.v1.AccessService/BatchCheckAnalyticsAccess";

/// AccessService, with the two check methods answered by the fast path.
#[derive(Clone)]
pub struct AccessServer {
    api: Arc<Api>,
    generated: AccessServiceServer<Api>,
    max_decoding: usize,
}

impl AccessServer {
    /// Requests larger than `max_decoding` bytes are refused, as by the
    /// generated server's `max_decoding_message_size`.
    pub fn new(api: Api, max_decoding: usize) -> Self {
        AccessServer {
            generated: AccessServiceServer::new(api.clone())
                .max_decoding_message_size(max_decoding),
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
        let api = Arc::clone(&self.api);
        let max = Some(self.max_decoding);
        match request.uri().path() {
            CHECK => Box::pin(async move {
                let codec = ProstCodec::<CheckAnswer, pb::CheckAnalyticsAccessRequest>::default();
                let mut grpc = Grpc::new(codec).apply_max_message_size_config(max, None);
                Ok(grpc.unary(Check(api), request).await)
            }),
            BATCH => Box::pin(async move {
                let codec =
                    ProstCodec::<BatchAnswer, pb::BatchCheckAnalyticsAccessRequest>::default();
                let mut grpc = Grpc::new(codec).apply_max_message_size_config(max, None);
                Ok(grpc.unary(Batch(api), request).await)
            }),
            _ => self.generated.call(request),
        }
    }
}

struct Check(Arc<Api>);

impl UnaryService<pb::CheckAnalyticsAccessRequest> for Check {
    type Response = CheckAnswer;
    type Future = Answering;

    fn call(&mut self, request: Request<pb::CheckAnalyticsAccessRequest>) -> Self::Future {
        // Nearly every check asks for no revision and is answered here and
        // now; only one that waits needs a future of its own.
        if let Some(decided) = self.0.decide_now(&request) {
            let answer = decided.map(|d| Response::new(self.0.answers.answer(d)));
            return Answering::Now(Some(answer));
        }
        let api = Arc::clone(&self.0);
        Answering::Later(Box::pin(async move {
            let decision = api.decide(&request).await?;
            Ok(Response::new(api.answers.answer(decision)))
        }))
    }
}

/// A check's answer: made already, or after a wait.
#[expect(
    clippy::large_enum_variant,
    reason = "an answer made now is nearly every check's; boxing it would cost an allocation per check"
)]
enum Answering {
    Now(Option<Result<Response<CheckAnswer>, Status>>),
    Later(BoxFuture<Response<CheckAnswer>, Status>),
}

impl Future for Answering {
    type Output = Result<Response<CheckAnswer>, Status>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Answering::Now(answer) => match answer.take() {
                Some(answer) => Poll::Ready(answer),
                // Polled again after it answered: as any finished future.
                None => Poll::Pending,
            },
            Answering::Later(later) => later.as_mut().poll(cx),
        }
    }
}

struct Batch(Arc<Api>);

impl UnaryService<pb::BatchCheckAnalyticsAccessRequest> for Batch {
    type Response = BatchAnswer;
    type Future = BoxFuture<Response<BatchAnswer>, Status>;

    fn call(&mut self, request: Request<pb::BatchCheckAnalyticsAccessRequest>) -> Self::Future {
        let api = Arc::clone(&self.0);
        Box::pin(async move {
            let omit_reports = convert::omit_reports(request.metadata())?;
            let (results, revision) = api.decide_many(&request).await?;
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
