//! The gRPC edge: thin handlers that convert the request, call the domain
//! service, and convert the answer back. Only this module imports tonic.

pub mod convert;
mod status;

use tonic::{Request, Response, Status};

use crate::{
    proto::v1::{
        self as pb, access_service_server::AccessService,
        catalogue_service_server::CatalogueService,
        provisioning_service_server::ProvisioningService,
    },
    service::{Entitlements, ServicesChange},
};

/// Serves CatalogueService, ProvisioningService and AccessService.
#[derive(Clone)]
pub struct Api {
    svc: Entitlements,
}

impl Api {
    pub fn new(svc: Entitlements) -> Self {
        Api { svc }
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl CatalogueService for Api {
    #[tracing::instrument(skip_all)]
    async fn get_catalogue(
        &self,
        _: Request<pb::GetCatalogueRequest>,
    ) -> Reply<pb::GetCatalogueResponse> {
        Ok(Response::new(self.svc.catalogue().into()))
    }
}

#[tonic::async_trait]
impl ProvisioningService for Api {
    #[tracing::instrument(skip_all, fields(account_id = %request.get_ref().account_id))]
    async fn create_account(
        &self,
        request: Request<pb::CreateAccountRequest>,
    ) -> Reply<pb::CreateAccountResponse> {
        let r = request.into_inner();
        let id = convert::account_id("account_id", r.account_id)?;
        let name = convert::display_name("display_name", r.display_name)?;
        let (account, revision) = self.svc.create_account(id, name, r.product_line).await?;
        Ok(Response::new(pb::CreateAccountResponse {
            account: Some((&account).into()),
            revision,
        }))
    }

    #[tracing::instrument(skip_all, fields(account_id = %request.get_ref().account_id))]
    async fn get_account(
        &self,
        request: Request<pb::GetAccountRequest>,
    ) -> Reply<pb::GetAccountResponse> {
        let id = convert::account_id("account_id", request.into_inner().account_id)?;
        let account = self.svc.get_account(&id)?;
        Ok(Response::new(pb::GetAccountResponse {
            account: Some((&account).into()),
        }))
    }

    #[tracing::instrument(skip_all, fields(account_id = %request.get_ref().account_id, user_id = %request.get_ref().user_id))]
    async fn put_user(&self, request: Request<pb::PutUserRequest>) -> Reply<pb::PutUserResponse> {
        let r = request.into_inner();
        let account = convert::account_id("account_id", r.account_id)?;
        let user = convert::user_id("user_id", r.user_id)?;
        let name = convert::display_name("display_name", r.display_name)?;
        let (user, revision) = self.svc.put_user(account, user, name).await?;
        Ok(Response::new(pb::PutUserResponse {
            user: Some((&user).into()),
            revision,
        }))
    }

    #[tracing::instrument(skip_all, fields(account_id = %request.get_ref().account_id, user_id = %request.get_ref().user_id))]
    async fn get_user(&self, request: Request<pb::GetUserRequest>) -> Reply<pb::GetUserResponse> {
        let r = request.into_inner();
        let account = convert::account_id("account_id", r.account_id)?;
        let user = convert::user_id("user_id", r.user_id)?;
        let user = self.svc.get_user(&account, &user)?;
        Ok(Response::new(pb::GetUserResponse {
            user: Some((&user).into()),
        }))
    }

    #[tracing::instrument(skip_all, fields(account_id = %request.get_ref().account_id))]
    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Reply<pb::ListUsersResponse> {
        let r = request.into_inner();
        let account = convert::account_id("account_id", r.account_id)?;
        let size = convert::page_size(r.page_size)?;
        let after = convert::page_cursor(&account, &r.page_token)?;
        let (users, more) = self.svc.list_users(&account, after.as_ref(), size)?;
        let next_page_token = match users.last() {
            Some(last) if more => convert::page_token(&account, &last.id),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListUsersResponse {
            users: users.iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(account_id = %request.get_ref().account_id, user_id = %request.get_ref().user_id))]
    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Reply<pb::DeleteUserResponse> {
        let r = request.into_inner();
        let account = convert::account_id("account_id", r.account_id)?;
        let user = convert::user_id("user_id", r.user_id)?;
        let revision = self.svc.delete_user(account, user).await?;
        Ok(Response::new(pb::DeleteUserResponse { revision }))
    }

    #[tracing::instrument(skip_all, fields(account_id = %request.get_ref().account_id, user_id = %request.get_ref().user_id))]
    async fn update_user_services(
        &self,
        request: Request<pb::UpdateUserServicesRequest>,
    ) -> Reply<pb::UpdateUserServicesResponse> {
        let r = request.into_inner();
        let account = convert::account_id("account_id", r.account_id)?;
        let user = convert::user_id("user_id", r.user_id)?;
        let change = ServicesChange {
            edition: r.edition.map(|e| (!e.is_empty()).then_some(e)),
            tier: r
                .analytics_tier
                .map(|t| convert::tier("analytics_tier", t))
                .transpose()?,
            expected_revision: r.expected_revision,
        };
        let changed = self.svc.update_user_services(account, user, change).await?;
        Ok(Response::new(pb::UpdateUserServicesResponse {
            user: Some((&changed.user).into()),
            notices: changed.notices.iter().map(Into::into).collect(),
            revision: changed.revision,
        }))
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
        let r = request.get_ref();
        // Malformed ids are errors; well-formed unknown ones are answers.
        convert::id("account_id", &r.account_id)?;
        convert::id("user_id", &r.user_id)?;
        self.svc.await_revision(r.min_revision).await?;
        Ok(Response::new(
            self.svc.check(&r.account_id, &r.user_id).into(),
        ))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(items = request.get_ref().items.len()))]
    async fn batch_check_analytics_access(
        &self,
        request: Request<pb::BatchCheckAnalyticsAccessRequest>,
    ) -> Reply<pb::BatchCheckAnalyticsAccessResponse> {
        let r = request.get_ref();
        convert::batch_items("items", r.items.len())?;
        self.svc.await_revision(r.min_revision).await?;
        // Each item is validated as a single check would be; a malformed one
        // gets its own error and the rest are still answered.
        let (results, revision) = self.svc.check_many(r.items.iter().map(|i| {
            convert::id("account_id", &i.account_id)?;
            convert::id("user_id", &i.user_id)?;
            Ok::<_, convert::ConversionError>((i.account_id.as_str(), i.user_id.as_str()))
        }));
        let results = results
            .into_iter()
            .map(|result| pb::CheckResult {
                outcome: Some(match result {
                    Ok(decision) => pb::check_result::Outcome::Answer(decision.into()),
                    Err(e) => pb::check_result::Outcome::Error(status::item_error(e)),
                }),
            })
            .collect();
        Ok(Response::new(pb::BatchCheckAnalyticsAccessResponse {
            results,
            revision,
        }))
    }
}
