//! The gRPC edge: thin handlers that convert the request, call the domain
//! service, and convert the answer back. Only this module (with server.rs and
//! proto.rs) imports tonic.
//!
//! Authentication happens in `Authenticated` (made by `Authenticate::wrap`),
//! a tower service in front of every entitled service (health and
//! reflection are open): it resolves the bearer token from memory and puts
//! the caller's `Principal` in the request's extensions. Authorization is the domain's (`Principal::authorize`, called
//! by every service method). Every refused write is recorded in the audit
//! trail by `Api::audited` (and `audited_with`, for an import whose rows
//! were refused: it answers OK and changes nothing), and only there.

mod access;
mod admin;
mod check_path;
pub mod convert;
mod metrics;
mod overload;
mod provisioning;
mod status;
mod unary;
mod unvectored;

pub use check_path::{AccessServer, ChecksFirstLayer};
pub use metrics::RpcMetricsLayer;
pub use overload::{OverloadMonitor, ShedLayer, token_share};
pub use unvectored::Unvectored;

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tonic::{Request, Response, Status, server::NamedService};

use crate::{
    domain::{Principal, Rpc, Via},
    metrics::Metrics,
    service::{Caller, Entitlements},
};

/// Serves every entitled service.
#[derive(Clone)]
pub struct Api {
    entitlements: Entitlements,
    /// Checks are counted here, by decision and reason.
    metrics: Metrics,
    /// The check's answers, with the report lists encoded once.
    answers: Arc<convert::Answers>,
}

impl Api {
    pub fn new(entitlements: Entitlements, metrics: Metrics) -> Self {
        let answers = Arc::new(convert::Answers::new(entitlements.check_report_lists()));
        Api {
            entitlements,
            metrics,
            answers,
        }
    }

    /// Runs a write handler's body; if it fails, records the refusal in the
    /// audit trail (whatever the reason: conversion, permission, rule,
    /// conflict).
    async fn audited<T>(
        &self,
        principal: &Arc<Principal>,
        rpc: Rpc,
        account: &str,
        user: &str,
        body: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        self.audited_with(principal, rpc, account, user, body, |_| None)
            .await
    }

    /// `audited`, for a write whose answer can be a refusal without being
    /// an error (`refused` says when, and what to record). The one place
    /// refusals are recorded.
    async fn audited_with<T>(
        &self,
        principal: &Arc<Principal>,
        rpc: Rpc,
        account: &str,
        user: &str,
        body: impl Future<Output = Result<T, Status>>,
        refused: impl FnOnce(&T) -> Option<Refused>,
    ) -> Result<T, Status> {
        let result = body.await;
        let refusal = match &result {
            Err(status) => Some(Refused {
                code: status::code_name(status.code()).to_owned(),
                reason: status.message().to_owned(),
            }),
            Ok(answer) => refused(answer),
        };
        if let Some(refusal) = refusal {
            let caller = Caller {
                principal: Arc::clone(principal),
                request: None,
                via: Via::Api,
            };
            let recorded = self.entitlements.record_refusal(
                &caller,
                rpc,
                account,
                user,
                &refusal.code,
                &refusal.reason,
            );
            if !recorded {
                self.metrics.refusal_left_out();
            }
        }
        result
    }
}

/// A refusal as the audit trail records it: the code's name and the reason.
struct Refused {
    code: String,
    reason: String,
}

type Reply<T> = Result<Response<T>, Status>;

/// The caller the interceptor authenticated.
fn principal<T>(request: &Request<T>) -> Result<Arc<Principal>, Status> {
    request
        .extensions()
        .get::<Arc<Principal>>()
        .cloned()
        .ok_or_else(|| {
            Status::internal("the request was not authenticated; this is a bug in entitled")
        })
}

/// A caller of a read RPC.
fn reader<T>(request: &Request<T>) -> Result<Caller, Status> {
    Ok(reading(&principal(request)?))
}

/// `principal` calling a read RPC.
fn reading(principal: &Arc<Principal>) -> Caller {
    Caller {
        principal: Arc::clone(principal),
        request: None,
        via: Via::Api,
    }
}

/// Resolves `authorization: Bearer <token>` from memory, for every call:
/// `wrap` puts a service behind it.
#[derive(Clone)]
pub struct Authenticate {
    entitlements: Entitlements,
}

impl Authenticate {
    pub fn new(entitlements: Entitlements) -> Self {
        Authenticate { entitlements }
    }

    /// The caller `authorization: Bearer <token>` names, or the refusal to
    /// answer with.
    pub fn principal<B>(&self, request: &http::Request<B>) -> Result<Arc<Principal>, Status> {
        let header = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        Ok(self.entitlements.authenticate(header)?)
    }

    /// `inner` behind authentication.
    pub fn wrap<S>(&self, inner: S) -> Authenticated<S> {
        Authenticated {
            inner,
            auth: self.clone(),
        }
    }
}

/// A service whose every call is authenticated first: the caller's
/// `Arc<Principal>` is put in the request's extensions, or the call is
/// answered UNAUTHENTICATED without reaching the service.
///
/// What tonic's `InterceptedService` does with an interceptor, minus its
/// turning each request into a `tonic::Request` and back (headers to
/// metadata, then sanitised back to headers): about 1,200 instructions a
/// call on the check path (callgrind), for nothing an interceptor needs.
#[derive(Clone)]
pub struct Authenticated<S> {
    inner: S,
    auth: Authenticate,
}

impl<S: NamedService> NamedService for Authenticated<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for Authenticated<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Unpin,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Authenticating<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        match self.auth.principal(&request) {
            Ok(principal) => {
                request.extensions_mut().insert(principal);
                Authenticating::Called(self.inner.call(request))
            }
            Err(refusal) => Authenticating::Refused(Some(refusal.into_http())),
        }
    }
}

/// The answer of an `Authenticated` service: the inner service's, or the
/// refusal.
pub enum Authenticating<F> {
    Called(F),
    Refused(Option<http::Response<tonic::body::Body>>),
}

impl<F, E> Future for Authenticating<F>
where
    F: Future<Output = Result<http::Response<tonic::body::Body>, E>> + Unpin,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Authenticating::Called(inner) => Pin::new(inner).poll(cx),
            Authenticating::Refused(refusal) => match refusal.take() {
                Some(response) => Poll::Ready(Ok(response)),
                // Polled again after it answered: as any finished future.
                None => Poll::Pending,
            },
        }
    }
}
