//! TokenService, AuditService and BackupService.

use std::pin::Pin;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{Api, Reply, convert, principal, reader};
use crate::{
    domain::Rpc,
    proto::v1::{
        self as pb, audit_service_server::AuditService, backup_service_server::BackupService,
        token_service_server::TokenService,
    },
    service::TokenSpec,
};

#[tonic::async_trait]
impl TokenService for Api {
    #[tracing::instrument(skip_all, fields(name = %convert::Logged(&request.get_ref().name)))]
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Reply<pb::CreateTokenResponse> {
        let principal = principal(&request)?;
        let r = request.into_inner();
        self.audited(
            &principal,
            Rpc::CreateToken,
            &r.account_id,
            &r.user_id,
            async {
                let caller = convert::writer(&principal, Rpc::CreateToken, &r)?;
                let spec = TokenSpec {
                    name: convert::display_name("name", r.name.clone())?,
                    role: convert::role(r.role)?,
                    account: convert::optional_id(
                        "account_id",
                        &r.account_id,
                        convert::account_id,
                    )?,
                    user: convert::optional_id("user_id", &r.user_id, convert::user_id)?,
                };
                let made = self.entitlements.create_token(&caller, spec).await?;
                Ok(Response::new(pb::CreateTokenResponse {
                    token: Some((&made.token).into()),
                    secret: made.secret,
                    revision: made.revision,
                }))
            },
        )
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Reply<pb::ListTokensResponse> {
        let caller = reader(&request)?;
        let r = request.into_inner();
        // 0 is the largest page, so that a client from before ListTokens
        // was paged still sees every token up to it.
        let size = match r.page_size {
            0 => convert::MAX_PAGE_SIZE,
            n => convert::page_size(n)?,
        };
        let after = convert::token_page_cursor(&r.page_token)?;
        let (tokens, more) = self
            .entitlements
            .list_tokens(&caller, after.as_ref(), size)?;
        // Bounded in bytes as well as in tokens, as every listing is.
        let page = convert::first_page(&tokens, |t| pb::TokenInfo::from(*t));
        let more = more || page.len() < tokens.len();
        let next_page_token = match page.len().checked_sub(1).map(|i| &tokens[i]) {
            Some(last) if more => convert::token_page_token(last),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListTokensResponse {
            tokens: page,
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(token_id = %convert::Logged(&request.get_ref().token_id)))]
    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Reply<pb::RevokeTokenResponse> {
        let principal = principal(&request)?;
        let r = request.into_inner();
        self.audited(&principal, Rpc::RevokeToken, "", "", async {
            let caller = convert::writer(&principal, Rpc::RevokeToken, &r)?;
            convert::id("token_id", &r.token_id)?;
            let written = self
                .entitlements
                .revoke_token(&caller, r.token_id.clone())
                .await?;
            Ok(Response::new(pb::RevokeTokenResponse {
                token: Some((&written.output).into()),
                revision: written.revision,
            }))
        })
        .await
    }
}

#[tonic::async_trait]
impl AuditService for Api {
    #[tracing::instrument(skip_all, fields(account_id = %convert::Logged(&request.get_ref().account_id)))]
    async fn list_changes(
        &self,
        request: Request<pb::ListChangesRequest>,
    ) -> Reply<pb::ListChangesResponse> {
        let caller = reader(&request)?;
        let r = request.into_inner();
        let account = convert::optional_id("account_id", &r.account_id, convert::account_id)?;
        let size = convert::page_size(r.page_size)?;
        let after_seq = convert::audit_cursor(&r.page_token)?;
        let (changes, more) = self
            .entitlements
            .list_changes(&caller, account.as_ref(), after_seq, r.after_revision, size)
            .await?;
        // Bounded in bytes as well as in records: a page never exceeds what
        // a default client accepts, whatever the records hold.
        let page = convert::first_page(&changes, |c| pb::Change::from(*c));
        let more = more || page.len() < changes.len();
        let next_page_token = match page.len().checked_sub(1).map(|i| &changes[i]) {
            Some(last) if more => convert::audit_token(last.seq),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListChangesResponse {
            changes: page,
            next_page_token,
        }))
    }
}

/// How much of the backup file one message carries.
const BACKUP_CHUNK: usize = 64 * 1024;

#[tonic::async_trait]
impl BackupService for Api {
    type BackupStream =
        Pin<Box<dyn Stream<Item = Result<pb::BackupResponse, Status>> + Send + 'static>>;

    #[tracing::instrument(skip_all)]
    async fn backup(&self, request: Request<pb::BackupRequest>) -> Reply<Self::BackupStream> {
        let caller = reader(&request)?;
        let backup = self.entitlements.backup(&caller).await?;
        tracing::info!(
            revision = backup.revision,
            bytes = backup.bytes.len(),
            caller = %caller.principal.name,
            "backup taken"
        );
        let revision = backup.revision;
        let bytes = backup.bytes;
        // Each chunk is copied out as it is sent, not all at once.
        let chunks = (0..bytes.len().div_ceil(BACKUP_CHUNK)).map(move |i| {
            let start = i * BACKUP_CHUNK;
            let end = bytes.len().min(start + BACKUP_CHUNK);
            Ok(pb::BackupResponse {
                chunk: bytes[start..end].to_vec(),
                revision,
            })
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }
}
