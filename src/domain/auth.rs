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
    DeleteAccount,
    MigrateAccount,
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
            Rpc::DeleteAccount => "DeleteAccount",
            Rpc::MigrateAccount => "MigrateAccount",
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
            | Rpc::ExportUsers
            | Rpc::DeleteAccount => Service::Provisioning,
            Rpc::MigrateAccount => Service::Provisioning,
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

/// Why the role check refused a call: the one answer of `Principal`'s
/// matrix. Callers branch on the variant; the message names the role and
/// what it lacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Forbidden {
    /// The role may not call this service at all.
    #[error("role `{role}` may not call {rpc}; it may call only {}", callable(*.role))]
    Service { role: Role, rpc: Rpc },
    /// An account admin may not create accounts, nor delete one (its own
    /// included).
    #[error("role `{role}` may not call {rpc}; ask a provisioner or operator")]
    CreateAccount { role: Role, rpc: Rpc },
    /// An account admin may not move its account to another product line
    /// (the provider's decision, like creating it).
    #[error("role `{role}` may not call {rpc}; moving an account is for a provisioner or operator")]
    MigrateAccount { role: Role, rpc: Rpc },
    /// An account admin acting on another account.
    #[error("role `{role}` of account `{own}` may not act on account `{account}`")]
    OtherAccount {
        role: Role,
        own: String,
        account: String,
    },
    /// An account admin calling for no account an RPC that needs one.
    #[error("role `{role}` may call {rpc} only for its own account; set account_id to `{own}`")]
    NoAccount { role: Role, rpc: Rpc, own: String },
    /// Rule 11: admins cannot assign permissions to themselves.
    #[error(
        "role `{role}` may not change its own services (user `{user}`): admins cannot assign permissions to themselves"
    )]
    OwnServices { role: Role, user: String },
}

/// The services `role` may call, for a message.
fn callable(role: Role) -> String {
    let names: Vec<&str> = role.services().iter().map(|s| s.name()).collect();
    names.join(", ")
}

impl Principal {
    /// Whether this caller's role may call `rpc` at all, on some account.
    pub fn may_call(&self, rpc: Rpc) -> Result<(), Forbidden> {
        let role = self.role;
        if role.services().contains(&rpc.service()) {
            return Ok(());
        }
        Err(Forbidden::Service { role, rpc })
    }

    /// Whether this caller may make `rpc` on `account` (None for RPCs not
    /// about one account) and `user`. The message names the role and what it
    /// lacks.
    pub fn authorize(
        &self,
        rpc: Rpc,
        account: Option<&str>,
        user: Option<&str>,
    ) -> Result<(), Forbidden> {
        self.may_call(rpc)?;
        self.scope(rpc, account, user)
    }

    /// The account and user part of `authorize`, for a caller already known
    /// to be allowed `rpc` (`may_call`): a batch asks it per item.
    pub fn scope(
        &self,
        rpc: Rpc,
        account: Option<&str>,
        user: Option<&str>,
    ) -> Result<(), Forbidden> {
        let role = self.role;
        if role != Role::AccountAdmin {
            return Ok(());
        }
        if matches!(rpc, Rpc::CreateAccount | Rpc::DeleteAccount) {
            return Err(Forbidden::CreateAccount { role, rpc });
        }
        if rpc == Rpc::MigrateAccount {
            return Err(Forbidden::MigrateAccount { role, rpc });
        }
        let own_name = self.account.as_ref().map_or("", AccountId::as_str);
        match account {
            Some(account) if self.account.is_some() && account == own_name => {}
            Some(account) => {
                return Err(Forbidden::OtherAccount {
                    role,
                    own: own_name.to_owned(),
                    account: account.to_owned(),
                });
            }
            None if rpc == Rpc::GetCatalogue => {}
            None => {
                return Err(Forbidden::NoAccount {
                    role,
                    rpc,
                    own: own_name.to_owned(),
                });
            }
        }
        if let (Rpc::UpdateUserServices | Rpc::ImportUsers, Some(user), Some(own_user)) =
            (rpc, user, &self.user)
            && user == own_user.as_str()
        {
            return Err(Forbidden::OwnServices {
                role,
                user: user.to_owned(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin() -> Principal {
        Principal {
            token_id: "t".into(),
            name: "acme admin".into(),
            role: Role::AccountAdmin,
            account: Some(AccountId::try_from("acme".to_owned()).unwrap()),
            user: Some(UserId::try_from("ada".to_owned()).unwrap()),
        }
    }

    /// The messages are the ones the API has always given.
    #[test]
    fn each_refusal_says_what_it_always_said() {
        let gateway = Principal {
            role: Role::Gateway,
            account: None,
            user: None,
            ..admin()
        };
        let cases = [
            (
                gateway.authorize(Rpc::PutUser, Some("acme"), None),
                "role `gateway` may not call ProvisioningService.PutUser; it may call only CatalogueService, AccessService",
            ),
            (
                admin().authorize(Rpc::CreateAccount, Some("acme"), None),
                "role `account-admin` may not call ProvisioningService.CreateAccount; ask a provisioner or operator",
            ),
            (
                admin().authorize(Rpc::DeleteAccount, Some("acme"), None),
                "role `account-admin` may not call ProvisioningService.DeleteAccount; ask a provisioner or operator",
            ),
            (
                admin().authorize(Rpc::MigrateAccount, Some("acme"), None),
                "role `account-admin` may not call ProvisioningService.MigrateAccount; moving an account is for a provisioner or operator",
            ),
            (
                gateway.authorize(Rpc::MigrateAccount, Some("acme"), None),
                "role `gateway` may not call ProvisioningService.MigrateAccount; it may call only CatalogueService, AccessService",
            ),
            (
                admin().authorize(Rpc::GetAccount, Some("globex"), None),
                "role `account-admin` of account `acme` may not act on account `globex`",
            ),
            (
                admin().authorize(Rpc::ListChanges, None, None),
                "role `account-admin` may call AuditService.ListChanges only for its own account; set account_id to `acme`",
            ),
            (
                admin().authorize(Rpc::UpdateUserServices, Some("acme"), Some("ada")),
                "role `account-admin` may not change its own services (user `ada`): admins cannot assign permissions to themselves",
            ),
        ];
        for (result, message) in cases {
            assert_eq!(result.map_err(|e| e.to_string()), Err(message.to_owned()));
        }
        assert_eq!(
            admin().authorize(Rpc::PutUser, Some("acme"), Some("ada")),
            Ok(())
        );
        assert_eq!(admin().authorize(Rpc::GetCatalogue, None, None), Ok(()));
    }
}
