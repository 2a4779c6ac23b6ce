use std::{pin::Pin, sync::Arc};

use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use super::{Api, Reply, convert, principal, reader, reading, status};
use crate::{
    domain::{AccountIdRef, Decision, Principal, UserIdRef},
    proto::v1::{
        self as pb, access_service_server::AccessService,
        catalogue_service_server::CatalogueService,
    },
};

#[tonic::async_trait]
impl CatalogueService for Api {
    #[tracing::instrument(skip_all)]
    async fn get_catalogue(
        &self,
        request: Request<pb::GetCatalogueRequest>,
    ) -> Reply<pb::GetCatalogueResponse> {
        let caller = reader(&request)?;
        Ok(Response::new(self.entitlements.catalogue(&caller)?.into()))
    }
}

impl Api {
    /// The check: what both ways of answering it (the fast path of
    /// `check_path.rs`, and the generated service's below) decide, for the
    /// caller authentication found.
    pub(super) async fn decide(
        &self,
        principal: &Arc<Principal>,
        r: &pb::CheckAnalyticsAccessRequest,
    ) -> Result<Decision, Status> {
        match self.decide_now(principal, r) {
            Some(decided) => decided,
            None => self.decide_later(principal, r).await,
        }
    }

    /// The check, if it need not wait (`min_revision` 0): then it is
    /// answered at once.
    // Debug level: the hot path pays for no span unless asked to.
    #[tracing::instrument(level = "debug", skip_all, fields(account_id = %convert::Logged(&r.account_id), user_id = %convert::Logged(&r.user_id)))]
    pub(super) fn decide_now(
        &self,
        principal: &Arc<Principal>,
        r: &pb::CheckAnalyticsAccessRequest,
    ) -> Option<Result<Decision, Status>> {
        if r.min_revision != 0 {
            return None;
        }
        Some((|| {
            let caller = reading(principal);
            let (account, user) = check_ids(r)?;
            let decision = self.entitlements.check_now(&caller, account, user)?;
            self.metrics.check(&decision);
            Ok(decision)
        })())
    }

    /// The check that waits for its `min_revision` first.
    #[tracing::instrument(level = "debug", skip_all, fields(account_id = %convert::Logged(&r.account_id), user_id = %convert::Logged(&r.user_id)))]
    async fn decide_later(
        &self,
        principal: &Arc<Principal>,
        r: &pb::CheckAnalyticsAccessRequest,
    ) -> Result<Decision, Status> {
        let caller = reading(principal);
        let (account, user) = check_ids(r)?;
        let decision = self
            .entitlements
            .check(&caller, account, user, r.min_revision)
            .await?;
        self.metrics.check(&decision);
        Ok(decision)
    }

    /// The batch: each item's decision or error, and the revision they
    /// all reflect.
    #[tracing::instrument(level = "debug", skip_all, fields(items = r.items.len()))]
    pub(super) async fn decide_many(
        &self,
        principal: &Arc<Principal>,
        r: &pb::BatchCheckAnalyticsAccessRequest,
    ) -> Result<(Vec<Result<Decision, pb::ItemError>>, u64), Status> {
        let caller = reading(principal);
        convert::batch_items("items", r.items.len())?;
        // Each item is validated as a single check would be; a malformed one
        // (or one on an account the caller may not see) gets its own error
        // and the rest are still answered.
        let items = r.items.iter().map(|i| {
            let account = convert::account_id_ref("account_id", &i.account_id)?;
            let user = convert::user_id_ref("user_id", &i.user_id)?;
            Ok::<_, Status>((account, user))
        });
        let (results, revision) = self
            .entitlements
            .check_many(&caller, items, r.min_revision)
            .await?;
        let results = results
            .into_iter()
            .map(|result| match result {
                Ok(decision) => {
                    self.metrics.check(&decision);
                    Ok(decision)
                }
                Err(e) => Err(status::item_error(e)),
            })
            .collect();
        Ok((results, revision))
    }
}

/// A check's ids. Malformed ids are errors; well-formed unknown ones are
/// answers.
fn check_ids(
    r: &pb::CheckAnalyticsAccessRequest,
) -> Result<(AccountIdRef<'_>, UserIdRef<'_>), Status> {
    let account = convert::account_id_ref("account_id", &r.account_id)?;
    let user = convert::user_id_ref("user_id", &r.user_id)?;
    Ok((account, user))
}

/// The generated service's way, which the server no longer routes the two
/// checks to (`check_path::AccessServer` answers them): kept as the plain
/// answer the fast path is compared with, and for Watch.
#[tonic::async_trait]
impl AccessService for Api {
    async fn check_analytics_access(
        &self,
        request: Request<pb::CheckAnalyticsAccessRequest>,
    ) -> Reply<pb::CheckAnalyticsAccessResponse> {
        let principal = principal(&request)?;
        Ok(Response::new(
            self.decide(&principal, request.get_ref()).await?.into(),
        ))
    }

    async fn batch_check_analytics_access(
        &self,
        request: Request<pb::BatchCheckAnalyticsAccessRequest>,
    ) -> Reply<pb::BatchCheckAnalyticsAccessResponse> {
        let omit_reports = convert::omit_reports(request.metadata())?;
        let principal = principal(&request)?;
        let (results, revision) = self.decide_many(&principal, request.get_ref()).await?;
        let answer = |result| pb::CheckResult {
            outcome: Some(match result {
                Ok(decision) => {
                    let mut answer = pb::CheckAnalyticsAccessResponse::from(decision);
                    if omit_reports {
                        answer.reports.clear();
                    }
                    pb::check_result::Outcome::Answer(answer)
                }
                Err(e) => pb::check_result::Outcome::Error(e),
            }),
        };
        let results = convert::batch_answers(results, omit_reports, answer, |r| {
            prost::encoding::message::encoded_len(1, r)
        })?;
        Ok(Response::new(pb::BatchCheckAnalyticsAccessResponse {
            results,
            revision,
        }))
    }

    type WatchEntitlementsStream =
        Pin<Box<dyn Stream<Item = Result<pb::WatchEntitlementsResponse, Status>> + Send>>;

    #[tracing::instrument(skip_all, fields(account_id = %convert::Logged(&request.get_ref().account_id), after_revision = request.get_ref().after_revision))]
    async fn watch_entitlements(
        &self,
        request: Request<pb::WatchEntitlementsRequest>,
    ) -> Reply<Self::WatchEntitlementsStream> {
        let caller = reader(&request)?;
        let r = request.into_inner();
        let account = convert::optional_id("account_id", &r.account_id, convert::account_id)?;
        let events = self
            .entitlements
            .watch(&caller, account, r.after_revision)
            .await?;
        let stream = ReceiverStream::new(events).map(|event| {
            event
                .map(|e| pb::WatchEntitlementsResponse::from(&e))
                .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
