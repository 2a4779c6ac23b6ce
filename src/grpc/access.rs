use tonic::{Request, Response};

use super::{Api, Reply, convert, reader};
use crate::proto::v1::{
    self as pb, access_service_server::AccessService, catalogue_service_server::CatalogueService,
};

#[tonic::async_trait]
impl CatalogueService for Api {
    #[tracing::instrument(skip_all)]
    async fn get_catalogue(
        &self,
        request: Request<pb::GetCatalogueRequest>,
    ) -> Reply<pb::GetCatalogueResponse> {
        let caller = reader(&request)?;
        Ok(Response::new(self.svc.catalogue(&caller)?.into()))
    }
}

#[tonic::async_trait]
impl AccessService for Api {
    // Debug level: the hot path pays for no span unless asked to.
    #[tracing::instrument(level = "debug", skip_all, fields(account_id = %request.get_ref().account_id, user_id = %request.get_ref().user_id))]
    async fn check_analytics_access(
        &self,
        request: Request<pb::CheckAnalyticsAccessRequest>,
    ) -> Reply<pb::CheckAnalyticsAccessResponse> {
        let caller = reader(&request)?;
        let r = request.get_ref();
        // Malformed ids are errors; well-formed unknown ones are answers.
        convert::id("account_id", &r.account_id)?;
        convert::id("user_id", &r.user_id)?;
        let decision = self.svc.check(&caller, &r.account_id, &r.user_id)?;
        self.metrics.check(&decision);
        Ok(Response::new(decision.into()))
    }
}
