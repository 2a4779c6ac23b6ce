//! Callers and what they may do: roles, principals, and the one
//! authorization matrix.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use super::{AccountId, UserId};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Everything, including token management and backups, on all accounts.
    Operator,
    /// Catalogue, provisioning, checks and audit, on all accounts.
    Provisioner,
    /// Catalogue, provisioning (except creating accounts), checks and audit,
    /// on its one account; never its own user's services.
    AccountAdmin,
    /// Catalogue and checks, read only, on all accounts.
    Gateway,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Role::Operator,
        Role::Provisioner,
        Role::AccountAdmin,
        Role::Gateway,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Provisioner => "provisioner",
            Role::AccountAdmin => "account-admin",
            Role::Gateway => "gateway",
        }
    }

    fn services(self) -> &'static [Service] {
        use Service::*;
        match self {
            Role::Operator => &[Catalogue, Provisioning, Access, Audit, Token, Backup],
            Role::Provisioner | Role::AccountAdmin => &[Catalogue, Provisioning, Access, Audit],
            Role::Gateway => &[Catalogue, Access],
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| {
                format!(
                    "`{s}` is not a role; use one of operator, provisioner, account-admin, gateway"
                )
            })
    }
}

/// A service of the API, as far as permissions go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Catalogue,
    Provisioning,
    Access,
    Audit,
    Token,
    Backup,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::Catalogue => "CatalogueService",
            Service::Provisioning => "ProvisioningService",
            Service::Access => "AccessService",
            Service::Audit => "AuditService",
            Service::Token => "TokenService",
            Service::Backup => "BackupService",
        }
    }
}

/// Every RPC that needs a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Rpc {
    GetCatalogue,
    CreateAccount,
    GetAccount,
    PutUser,
    GetUser,
    ListUsers,
    DeleteUser,
    UpdateUserServices,
    ImportUsers,
    ExportUsers,
    CheckAnalyticsAccess,
    BatchCheckAnalyticsAccess,
    WatchEntitlements,
    ListChanges,
    CreateToken,
    ListTokens,
    RevokeToken,
    // New variants go last: audit records store the variant's index.
    Backup,
}

impl Rpc {
    pub fn name(self) -> &'static str {
        match self {
            Rpc::GetCatalogue => "GetCatalogue",
            Rpc::CreateAccount => "CreateAccount",
            Rpc::GetAccount => "GetAccount",
            Rpc::PutUser => "PutUser",
            Rpc::GetUser => "GetUser",
            Rpc::ListUsers => "ListUsers",
            Rpc::DeleteUser => "DeleteUser",
            Rpc::UpdateUserServices => "UpdateUserServices",
            Rpc::ImportUsers => "ImportUsers",
            Rpc::ExportUsers => "ExportUsers",
            Rpc::CheckAnalyticsAccess => "CheckAnalyticsAccess",
            Rpc::BatchCheckAnalyticsAccess => "BatchCheckAnalyticsAccess",
            Rpc::WatchEntitlements => "WatchEntitlements",
            Rpc::ListChanges => "ListChanges",
            Rpc::CreateToken => "CreateToken",
            Rpc::ListTokens => "ListTokens",
            Rpc::RevokeToken => "RevokeToken",
            Rpc::Backup => "Backup",
        }
    }

    pub fn service(self) -> Service {
        match self {
            Rpc::GetCatalogue => Service::Catalogue,
            Rpc::CreateAccount
            | Rpc::GetAccount
            | Rpc::PutUser
            | Rpc::GetUser
            | Rpc::ListUsers
            | Rpc::DeleteUser
            | Rpc::UpdateUserServices
            | Rpc::ImportUsers
            | Rpc::ExportUsers => Service::Provisioning,
            Rpc::CheckAnalyticsAccess | Rpc::BatchCheckAnalyticsAccess | Rpc::WatchEntitlements => {
                Service::Access
            }
            Rpc::ListChanges => Service::Audit,
            Rpc::CreateToken | Rpc::ListTokens | Rpc::RevokeToken => Service::Token,
            Rpc::Backup => Service::Backup,
        }
    }
}

impl fmt::Display for Rpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.service().name(), self.name())
    }
}

/// The caller behind a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub token_id: String,
    pub name: String,
    pub role: Role,
    /// The one account of an account admin.
    pub account: Option<AccountId>,
    /// The admin's own user, whose services they may not change.
    pub user: Option<UserId>,
}

impl Principal {
    /// Whether this caller's role may call `rpc` at all, on some account.
    pub fn may_call(&self, rpc: Rpc) -> Result<(), String> {
        let role = self.role;
        if role.services().contains(&rpc.service()) {
            return Ok(());
        }
        let may: Vec<&str> = role.services().iter().map(|s| s.name()).collect();
        Err(format!(
            "role `{role}` may not call {rpc}; it may call only {}",
            may.join(", ")
        ))
    }

    /// Whether this caller may make `rpc` on `account` (None for RPCs not
    /// about one account) and `user`. The message names the role and what it
    /// lacks.
    pub fn authorize(
        &self,
        rpc: Rpc,
        account: Option<&str>,
        user: Option<&str>,
    ) -> Result<(), String> {
        self.may_call(rpc)?;
        self.scope(rpc, account, user)
    }

    /// The account and user part of `authorize`, for a caller already known
    /// to be allowed `rpc` (`may_call`): a batch asks it per item.
    pub fn scope(&self, rpc: Rpc, account: Option<&str>, user: Option<&str>) -> Result<(), String> {
        let role = self.role;
        if role != Role::AccountAdmin {
            return Ok(());
        }
        if rpc == Rpc::CreateAccount {
            return Err(format!(
                "role `{role}` may not call {rpc}; ask a provisioner or operator"
            ));
        }
        let own_name = self.account.as_ref().map_or("", AccountId::as_str);
        match account {
            Some(account) if self.account.is_some() && account == own_name => {}
            Some(account) => {
                return Err(format!(
                    "role `{role}` of account `{own_name}` may not act on account `{account}`"
                ));
            }
            None if rpc == Rpc::GetCatalogue => {}
            None => {
                return Err(format!(
                    "role `{role}` may call {rpc} only for its own account; set account_id to `{own_name}`"
                ));
            }
        }
        if let (Rpc::UpdateUserServices | Rpc::ImportUsers, Some(user), Some(own_user)) =
            (rpc, user, &self.user)
            && user == own_user.as_str()
        {
            return Err(format!(
                "role `{role}` may not change its own services (user `{user}`): admins cannot assign permissions to themselves"
            ));
        }
        Ok(())
    }
}
