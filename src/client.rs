//! For Rust callers: the generated clients with a bearer token attached, so a
//! gateway or a tool can call the service without code of its own.

use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

use crate::proto::v1::{
    access_service_client::AccessServiceClient, audit_service_client::AuditServiceClient,
    backup_service_client::BackupServiceClient, catalogue_service_client::CatalogueServiceClient,
    provisioning_service_client::ProvisioningServiceClient,
    token_service_client::TokenServiceClient,
};

/// Adds `authorization: Bearer <token>` to every call (or nothing, without a
/// token).
#[derive(Clone, Debug, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// Fails only if the token holds characters no token has.
    pub fn new(token: Option<&str>) -> Result<Self, InvalidToken> {
        token
            .map(|t| {
                format!("Bearer {}", t.trim())
                    .parse()
                    .map_err(|_| InvalidToken)
            })
            .transpose()
            .map(Bearer)
    }
}

/// A token with characters that cannot go in gRPC metadata.
#[derive(Debug, thiserror::Error)]
#[error("the token holds characters a token never has")]
pub struct InvalidToken;

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel with the token attached.
pub type Authed = InterceptedService<Channel, Bearer>;

/// A client of every service over one connection, all sending one token.
#[derive(Clone)]
pub struct Clients {
    pub provisioning: ProvisioningServiceClient<Authed>,
    pub access: AccessServiceClient<Authed>,
    pub catalogue: CatalogueServiceClient<Authed>,
    pub tokens: TokenServiceClient<Authed>,
    pub audit: AuditServiceClient<Authed>,
    pub backup: BackupServiceClient<Authed>,
}

impl Clients {
    pub fn new(channel: &Channel, bearer: Bearer) -> Self {
        Clients {
            provisioning: ProvisioningServiceClient::with_interceptor(
                channel.clone(),
                bearer.clone(),
            ),
            access: AccessServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            catalogue: CatalogueServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            tokens: TokenServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            audit: AuditServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            backup: BackupServiceClient::with_interceptor(channel.clone(), bearer),
        }
    }
}
