use std::pin::Pin;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{Api, Refused, Reply, convert, principal, reader, status::code_name};
use crate::{
    domain::Rpc,
    proto::v1::{self as pb, provisioning_service_server::ProvisioningService},
    service::ServicesChange,
};

/// The most users one ExportUsers message carries (and at most
/// `convert::MAX_PAGE_BYTES` of them).
const EXPORT_CHUNK: usize = 1000;

#[tonic::async_trait]
impl ProvisioningService for Api {
    #[tracing::instrument(skip_all, fields(account_id = %convert::Logged(&request.get_ref().account_id)))]
    async fn create_account(
        &self,
        request: Request<pb::CreateAccountRequest>,
    ) -> Reply<pb::CreateAccountResponse> {
        let principal = principal(&request)?;
        let r = request.into_inner();
        self.audited(&principal, Rpc::CreateAccount, &r.account_id, "", async {
            let caller = convert::writer(&principal, Rpc::CreateAccount, &r)?;
            let id = convert::account_id("account_id", r.account_id.clone())?;
            let name = convert::display_name("display_name", r.display_name.clone())?;
            let line = convert::catalogue_name("product_line", r.product_line.clone())?;
            let written = self
                .entitlements
                .create_account(&caller, id, name, line)
                .await?;
            Ok(Response::new(pb::CreateAccountResponse {
                account: Some((&written.output).into()),
                revision: written.revision,
            }))
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(account_id = %convert::Logged(&request.get_ref().account_id)))]
    async fn get_account(
        &self,
        request: Request<pb::GetAccountRequest>,
    ) -> Reply<pb::GetAccountResponse> {
        let caller = reader(&request)?;
        let id = convert::account_id("account_id", request.into_inner().account_id)?;
        let account = self.entitlements.get_account(&caller, &id)?;
        Ok(Response::new(pb::GetAccountResponse {
            account: Some((&account).into()),
        }))
    }

    #[tracing::instrument(skip_all, fields(account_id = %convert::Logged(&request.get_ref().account_id), user_id = %convert::Logged(&request.get_ref().user_id)))]
    async fn put_user(&self, request: Request<pb::PutUserRequest>) -> Reply<pb::PutUserResponse> {
        let principal = principal(&request)?;
        let r = request.into_inner();
        self.audited(&principal, Rpc::PutUser, &r.account_id, &r.user_id, async {
            let caller = convert::writer(&principal, Rpc::PutUser, &r)?;
            let account = convert::account_id("account_id", r.account_id.clone())?;
            let user = convert::user_id("user_id", r.user_id.clone())?;
            let name = convert::display_name("display_name", r.display_name.clone())?;
            let written = self
                .entitlements
                .put_user(&caller, account, user, name)
                .await?;
            Ok(Response::new(pb::PutUserResponse {
                user: Some((&written.output).into()),
                revision: written.revision,
            }))
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(account_id = %convert::Logged(&request.get_ref().account_id), user_id = %convert::Logged(&request.get_ref().user_id)))]
    async fn get_user(&self, request: Request<pb::GetUserRequest>) -> Reply<pb::GetUserResponse> {
        let caller = reader(&request)?;
        let r = request.into_inner();
        let account = convert::account_id("account_id", r.account_id)?;
        let user = convert::user_id("user_id", r.user_id)?;
        let user = self.entitlements.get_user(&caller, &account, &user)?;
        Ok(Response::new(pb::GetUserResponse {
            user: Some((&user).into()),
        }))
    }

    #[tracing::instrument(skip_all, fields(account_id = %convert::Logged(&request.get_ref().account_id)))]
    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Reply<pb::ListUsersResponse> {
        let caller = reader(&request)?;
        let r = request.into_inner();
        let account = convert::account_id("account_id", r.account_id)?;
        let size = convert::page_size(r.page_size)?;
        let after = convert::page_cursor(&account, &r.page_token)?;
        let (users, more) =
            self.entitlements
                .list_users(&caller, &account, after.as_ref(), size)?;
        // Bounded in bytes as well as in users (a scope of 1,000 groups
        // makes a user about 135 KB): the next page starts after the last
        // user sent.
        let page = convert::first_page(&users, |u| pb::User::from(*u));
        let more = more || page.len() < users.len();
        let next_page_token = match page.len().checked_sub(1).map(|i| &users[i]) {
            Some(last) if more => convert::page_token(&account, &last.id),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListUsersResponse {
            users: page,
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(account_id = %convert::Logged(&request.get_ref().account_id), user_id = %convert::Logged(&request.get_ref().user_id)))]
    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Reply<pb::DeleteUserResponse> {
        let principal = principal(&request)?;
        let r = request.into_inner();
        self.audited(
            &principal,
            Rpc::DeleteUser,
            &r.account_id,
            &r.user_id,
            async {
                let caller = convert::writer(&principal, Rpc::DeleteUser, &r)?;
                let account = convert::account_id("account_id", r.account_id.clone())?;
                let user = convert::user_id("user_id", r.user_id.clone())?;
                let written = self
                    .entitlements
                    .delete_user(&caller, account, user)
                    .await?;
                Ok(Response::new(pb::DeleteUserResponse {
                    revision: written.revision,
                }))
            },
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(account_id = %convert::Logged(&request.get_ref().account_id), user_id = %convert::Logged(&request.get_ref().user_id)))]
    async fn update_user_services(
        &self,
        request: Request<pb::UpdateUserServicesRequest>,
    ) -> Reply<pb::UpdateUserServicesResponse> {
        let principal = principal(&request)?;
        let r = request.into_inner();
        self.audited(
            &principal,
            Rpc::UpdateUserServices,
            &r.account_id,
            &r.user_id,
            async {
                let caller = convert::writer(&principal, Rpc::UpdateUserServices, &r)?;
                let account = convert::account_id("account_id", r.account_id.clone())?;
                let user = convert::user_id("user_id", r.user_id.clone())?;
                let change = ServicesChange {
                    edition: r
                        .edition
                        .clone()
                        .map(|e| convert::catalogue_name("edition", e))
                        .transpose()?
                        .map(|e| (!e.is_empty()).then_some(e)),
                    tier: r
                        .analytics_tier
                        .map(|t| convert::tier("analytics_tier", t, convert::Unspecified::Refused))
                        .transpose()?,
                    supervisor_scope: r
                        .supervisor_scope
                        .as_ref()
                        .map(convert::supervisor_scope)
                        .transpose()
                        .map_err(convert::ConversionError::from)?,
                    expected_revision: r.expected_revision,
                };
                let written = self
                    .entitlements
                    .update_user_services(&caller, account, user, change)
                    .await?;
                Ok(Response::new(pb::UpdateUserServicesResponse {
                    user: Some((&written.output.user).into()),
                    notices: written.output.notices.iter().map(Into::into).collect(),
                    revision: written.revision,
                }))
            },
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(rows = request.get_ref().rows.len(), dry_run = request.get_ref().dry_run))]
    async fn import_users(
        &self,
        request: Request<pb::ImportUsersRequest>,
    ) -> Reply<pb::ImportUsersResponse> {
        let principal = principal(&request)?;
        let r = request.into_inner();
        let dry_run = r.dry_run;
        let body = async {
            let caller = convert::writer(&principal, Rpc::ImportUsers, &r)?;
            let rows = r.rows.iter().map(convert::import_row).collect();
            let imported = self
                .entitlements
                .import_users(&caller, rows, r.dry_run)
                .await?;
            let errors: Vec<pb::RowError> = imported
                .errors
                .into_iter()
                .map(|(index, e)| {
                    let status = Status::from(e);
                    pb::RowError {
                        index: u32::try_from(index).unwrap_or(u32::MAX),
                        code: code_name(status.code()).to_owned(),
                        message: status.message().to_owned(),
                    }
                })
                .collect();
            Ok(Response::new(pb::ImportUsersResponse {
                errors,
                created: imported.counts.created,
                updated: imported.counts.updated,
                unchanged: imported.counts.unchanged,
                revision: imported.revision,
            }))
        };
        // Rows refused: nothing was applied, so the call is a refused
        // write for the audit trail, though it answers OK.
        let refused = |reply: &Response<pb::ImportUsersResponse>| {
            let errors = &reply.get_ref().errors;
            let first = errors.first().filter(|_| !dry_run)?;
            Some(Refused {
                code: first.code.clone(),
                reason: format!(
                    "{} rows refused; row {}: {}",
                    errors.len(),
                    first.index,
                    first.message
                ),
            })
        };
        self.audited_with(&principal, Rpc::ImportUsers, "", "", body, refused)
            .await
    }

    type ExportUsersStream =
        Pin<Box<dyn Stream<Item = Result<pb::ExportUsersResponse, Status>> + Send>>;

    #[tracing::instrument(skip_all, fields(account_id = %convert::Logged(&request.get_ref().account_id)))]
    async fn export_users(
        &self,
        request: Request<pb::ExportUsersRequest>,
    ) -> Reply<Self::ExportUsersStream> {
        let caller = reader(&request)?;
        let r = request.into_inner();
        let account = convert::optional_id("account_id", &r.account_id, convert::account_id)?;
        let (users, revision) = self.entitlements.export_users(&caller, account.as_ref())?;
        // Messages of at most EXPORT_CHUNK users and MAX_PAGE_BYTES, each
        // made as it is sent.
        let messages =
            convert::Pages::new(users.into_iter(), EXPORT_CHUNK, |u| pb::UserRow::from(u))
                .map(move |rows| Ok(pb::ExportUsersResponse { rows, revision }));
        Ok(Response::new(Box::pin(tokio_stream::iter(messages))))
    }

    #[tracing::instrument(skip_all, fields(account_id = %convert::Logged(&request.get_ref().account_id)))]
    async fn delete_account(
        &self,
        request: Request<pb::DeleteAccountRequest>,
    ) -> Reply<pb::DeleteAccountResponse> {
        let principal = principal(&request)?;
        let r = request.into_inner();
        self.audited(&principal, Rpc::DeleteAccount, &r.account_id, "", async {
            let caller = convert::writer(&principal, Rpc::DeleteAccount, &r)?;
            let id = convert::account_id("account_id", r.account_id.clone())?;
            let written = self.entitlements.delete_account(&caller, id).await?;
            Ok(Response::new(pb::DeleteAccountResponse {
                revision: written.revision,
                users_deleted: written.output.users_deleted,
                tokens_revoked: written.output.tokens_revoked,
            }))
        })
        .await
    }

    type MigrateAccountStream =
        Pin<Box<dyn Stream<Item = Result<pb::MigrateAccountResponse, Status>> + Send>>;

    #[tracing::instrument(skip_all, fields(account_id = %convert::Logged(&request.get_ref().account_id), dry_run = request.get_ref().dry_run))]
    async fn migrate_account(
        &self,
        request: Request<pb::MigrateAccountRequest>,
    ) -> Reply<Self::MigrateAccountStream> {
        let principal = principal(&request)?;
        let r = request.into_inner();
        self.audited(&principal, Rpc::MigrateAccount, &r.account_id, "", async {
            let caller = convert::writer(&principal, Rpc::MigrateAccount, &r)?;
            let (account, asked) = convert::move_request(&r)?;
            let written = self
                .entitlements
                .migrate_account(&caller, account, asked, r.dry_run)
                .await?;
            // The whole move is decided and durable before the first
            // message: the stream only carries its plan.
            let messages = convert::MoveAnswer::from(written).map(Ok);
            Ok(Response::new(
                Box::pin(tokio_stream::iter(messages)) as Self::MigrateAccountStream
            ))
        })
        .await
    }
}
