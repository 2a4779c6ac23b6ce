//! The gRPC edge: thin handlers that convert the request, call the domain
//! service, and convert the answer back. Only this module (with server.rs and
//! proto.rs) imports tonic.
//!
//! Authentication happens in `Authenticate`, an interceptor in front of every
//! entitled service (health and reflection are open): it resolves the bearer
//! token from memory and puts the caller's `Principal` in the request's
//! extensions. Authorization is the domain's (`Principal::authorize`, called
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

pub use check_path::AccessServer;
pub use metrics::RpcMetricsLayer;
pub use overload::{OverloadMonitor, ShedLayer, token_share};

use std::{future::Future, sync::Arc};

use tonic::{Request, Response, Status, service::Interceptor};

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
    Ok(Caller {
        principal: principal(request)?,
        request: None,
        via: Via::Api,
    })
}

/// Resolves `authorization: Bearer <token>` from memory, for every call.
#[derive(Clone)]
pub struct Authenticate {
    entitlements: Entitlements,
}

impl Authenticate {
    pub fn new(entitlements: Entitlements) -> Self {
        Authenticate { entitlements }
    }
}

impl Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes());
        let principal = self.entitlements.authenticate(header)?;
        request.extensions_mut().insert(principal);
        Ok(request)
    }
}
