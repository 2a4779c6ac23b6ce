//! Client subcommands that mirror the admin console.

use clap::{Subcommand, ValueEnum};
use entitled::{domain::field, proto::v1 as pb};
use serde_json::{Value, json};

use super::{CliError, ClientArgs, output};

#[derive(Subcommand, Debug)]
pub enum AccountCommand {
    /// Create an account (a customer company) on a product line.
    Create {
        account: String,
        /// `work` (X Series) or `virtual-office` (legacy), per the catalogue.
        #[arg(long)]
        product_line: String,
        #[arg(long, default_value = "")]
        name: String,
        /// Makes a retry safe (see README).
        #[arg(long, default_value = "")]
        request_id: String,
    },
    /// Show an account.
    Get { account: String },
    /// Move an account to another product line (from Virtual Office to
    /// X Series) in one write, and print the plan: each user's edition and
    /// tier before and after, with notices.
    Migrate {
        account: String,
        /// The product line to move to.
        #[arg(long, default_value = "work")]
        to: String,
        /// Only print the plan, and the revision it was made at; change
        /// nothing.
        #[arg(long)]
        dry_run: bool,
        /// Remove licences with no mapping in the new line (their tier
        /// becomes none) instead of refusing the move.
        #[arg(long)]
        remove_unmapped_licences: bool,
        /// Refuse the move if a user of the account changed after this
        /// revision (pass a dry run's, to apply exactly the plan it showed).
        #[arg(long)]
        expected_revision: Option<u64>,
        #[arg(long, default_value = "")]
        request_id: String,
    },
    /// Delete an account with all its users, and revoke its tokens, in one
    /// write. Asks for the account id to be typed again, unless `--yes`.
    Delete {
        account: String,
        /// Do not ask: delete at once (for scripts).
        #[arg(long)]
        yes: bool,
        #[arg(long, default_value = "")]
        request_id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create a user (extension), or rename one.
    Put {
        account: String,
        user: String,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long, default_value = "")]
        request_id: String,
    },
    /// Show a user.
    Get { account: String, user: String },
    /// List an account's users, by user id.
    List { account: String },
    /// Delete a user.
    Delete {
        account: String,
        user: String,
        #[arg(long, default_value = "")]
        request_id: String,
    },
    /// Services and permissions: set the edition licence and/or the
    /// analytics tier, together.
    Set {
        account: String,
        user: String,
        /// The edition licence, e.g. X6.
        #[arg(long, conflicts_with = "no_edition")]
        edition: Option<String>,
        /// Remove the licence (the tier becomes none).
        #[arg(long)]
        no_edition: bool,
        /// The analytics tier.
        #[arg(long, value_enum)]
        analytics: Option<Tier>,
        /// What a supervisor sees: `whole-account`, or groups as kind:id
        /// joined by commas (kinds: site, user-group, ring-group,
        /// call-queue), e.g. `site:S1,user-group:G2`. Only with the
        /// supervisor tier; left out, a supervisor keeps its scope.
        #[arg(long)]
        scope: Option<String>,
        /// Refuse the change if the user changed since this revision.
        #[arg(long)]
        expected_revision: Option<u64>,
        #[arg(long, default_value = "")]
        request_id: String,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum Tier {
    None,
    Essentials,
    Supervisor,
}

impl From<Tier> for pb::AnalyticsTier {
    fn from(t: Tier) -> Self {
        match t {
            Tier::None => pb::AnalyticsTier::None,
            Tier::Essentials => pb::AnalyticsTier::Essentials,
            Tier::Supervisor => pb::AnalyticsTier::Supervisor,
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum Role {
    Operator,
    Provisioner,
    AccountAdmin,
    Gateway,
}

impl From<Role> for pb::Role {
    fn from(r: Role) -> Self {
        match r {
            Role::Operator => pb::Role::Operator,
            Role::Provisioner => pb::Role::Provisioner,
            Role::AccountAdmin => pb::Role::AccountAdmin,
            Role::Gateway => pb::Role::Gateway,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum CatalogueCommand {
    /// Show the catalogue in force.
    Show,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Make a token; its secret is printed once.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        role: Role,
        /// The account of an account-admin.
        #[arg(long, default_value = "")]
        account: String,
        /// The admin's own user (they may not change its services).
        #[arg(long, default_value = "")]
        user: String,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token: refused from the next call on.
    Revoke { token_id: String },
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// List recorded changes, applied and refused, oldest first.
    List {
        /// One account's changes (required for account admins).
        #[arg(long, default_value = "")]
        account: String,
        /// Only changes after this store revision.
        #[arg(long, default_value_t = 0)]
        after_revision: u64,
    },
}

pub async fn account(args: &ClientArgs, command: AccountCommand) -> Result<(), CliError> {
    if let AccountCommand::Delete {
        account,
        yes: false,
        ..
    } = &command
    {
        confirm_deletion(account)?;
    }
    let mut c = args.connect().await?.provisioning;
    let value = match command {
        AccountCommand::Create {
            account,
            product_line,
            name,
            request_id,
        } => {
            let r = c
                .create_account(pb::CreateAccountRequest {
                    account_id: account,
                    display_name: name,
                    product_line,
                    request_id,
                })
                .await?
                .into_inner();
            r.account.as_ref().map_or(Value::Null, output::account)
        }
        AccountCommand::Get { account } => {
            let r = c
                .get_account(pb::GetAccountRequest {
                    account_id: account,
                })
                .await?
                .into_inner();
            r.account.as_ref().map_or(Value::Null, output::account)
        }
        AccountCommand::Migrate {
            account,
            to,
            dry_run,
            remove_unmapped_licences,
            expected_revision,
            request_id,
        } => {
            let mut stream = c
                .migrate_account(pb::MigrateAccountRequest {
                    account_id: account,
                    to_product_line: to,
                    dry_run,
                    expected_revision,
                    remove_unmapped_licences,
                    request_id,
                })
                .await?
                .into_inner();
            let mut users = Vec::new();
            let mut summary = None;
            while let Some(message) = stream.message().await? {
                match message.item {
                    Some(pb::migrate_account_response::Item::Users(chunk)) => {
                        users.extend(chunk.users.iter().map(output::migrated_user));
                    }
                    Some(pb::migrate_account_response::Item::Summary(s)) => summary = Some(s),
                    None => {}
                }
            }
            let summary = summary.ok_or_else(|| {
                CliError::Unreachable("the server ended the plan without its summary".to_owned())
            })?;
            output::migration(users, &summary)
        }
        AccountCommand::Delete {
            account,
            yes: _,
            request_id,
        } => {
            let r = c
                .delete_account(pb::DeleteAccountRequest {
                    account_id: account.clone(),
                    request_id,
                })
                .await?
                .into_inner();
            json!({
                "deleted": account,
                "users_deleted": r.users_deleted,
                "tokens_revoked": r.tokens_revoked,
                "revision": r.revision,
            })
        }
    };
    output::print(args.output, &value);
    Ok(())
}

/// Asks, on the terminal, for the account id to be typed again before an
/// account is deleted; anything else (or no input) deletes nothing.
fn confirm_deletion(account: &str) -> Result<(), CliError> {
    use std::io::{BufRead, Read, Write};
    let mut err = std::io::stderr();
    let _ = write!(
        err,
        "This deletes account `{account}`, every one of its users, and revokes its tokens; it cannot be undone.\nType the account id to confirm: "
    );
    let _ = err.flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .take(1024)
        .read_line(&mut line)
        .map_err(|e| CliError::Local(format!("cannot read the confirmation: {e}")))?;
    if line.trim() != account {
        return Err(CliError::Usage(format!(
            "not confirmed: typed `{}`, not `{account}`; nothing was deleted (pass --yes to skip the question)",
            line.trim()
        )));
    }
    Ok(())
}

pub async fn user(args: &ClientArgs, command: UserCommand) -> Result<(), CliError> {
    let mut c = args.connect().await?.provisioning;
    let value = match command {
        UserCommand::Put {
            account,
            user,
            name,
            request_id,
        } => {
            let r = c
                .put_user(pb::PutUserRequest {
                    account_id: account,
                    user_id: user,
                    display_name: name,
                    request_id,
                })
                .await?
                .into_inner();
            r.user.as_ref().map_or(Value::Null, output::user)
        }
        UserCommand::Get { account, user } => {
            let r = c
                .get_user(pb::GetUserRequest {
                    account_id: account,
                    user_id: user,
                })
                .await?
                .into_inner();
            r.user.as_ref().map_or(Value::Null, output::user)
        }
        UserCommand::List { account } => {
            let mut users = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = c
                    .list_users(pb::ListUsersRequest {
                        account_id: account.clone(),
                        page_size: 1000,
                        page_token,
                    })
                    .await?
                    .into_inner();
                users.extend(page.users.iter().map(output::user));
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            Value::Array(users)
        }
        UserCommand::Delete {
            account,
            user,
            request_id,
        } => {
            let r = c
                .delete_user(pb::DeleteUserRequest {
                    account_id: account.clone(),
                    user_id: user.clone(),
                    request_id,
                })
                .await?
                .into_inner();
            json!({ "deleted": format!("{account}/{user}"), "revision": r.revision })
        }
        UserCommand::Set {
            account,
            user,
            edition,
            no_edition,
            analytics,
            scope,
            expected_revision,
            request_id,
        } => {
            let edition = if no_edition {
                Some(String::new())
            } else {
                edition
            };
            if edition.is_none() && analytics.is_none() && scope.is_none() {
                return Err(CliError::Usage(
                    "nothing to set: give --edition, --no-edition, --analytics or --scope"
                        .to_owned(),
                ));
            }
            let supervisor_scope = scope
                .map(|text| {
                    field::scope_text("--scope", &text)
                        .map(|s| pb::SupervisorScope::from(&s))
                        .map_err(|e| CliError::Usage(e.to_string()))
                })
                .transpose()?;
            let r = c
                .update_user_services(pb::UpdateUserServicesRequest {
                    account_id: account,
                    user_id: user,
                    edition,
                    analytics_tier: analytics.map(|t| pb::AnalyticsTier::from(t) as i32),
                    expected_revision,
                    request_id,
                    supervisor_scope,
                })
                .await?
                .into_inner();
            for notice in &r.notices {
                eprintln!("notice: {}", notice.message);
            }
            let mut value = r.user.as_ref().map_or(Value::Null, output::user);
            if let Value::Object(map) = &mut value {
                map.insert(
                    "notices".to_owned(),
                    Value::Array(
                        r.notices
                            .iter()
                            .map(|n| Value::String(n.message.clone()))
                            .collect(),
                    ),
                );
            }
            value
        }
    };
    output::print(args.output, &value);
    Ok(())
}

pub async fn check(args: &ClientArgs, account: String, user: String) -> Result<(), CliError> {
    let mut c = args.connect().await?.access;
    let r = c
        .check_analytics_access(pb::CheckAnalyticsAccessRequest {
            account_id: account,
            user_id: user,
            min_revision: 0,
        })
        .await?
        .into_inner();
    output::print(args.output, &output::check(&r));
    Ok(())
}

pub async fn catalogue(
    args: &ClientArgs,
    CatalogueCommand::Show: CatalogueCommand,
) -> Result<(), CliError> {
    let mut c = args.connect().await?.catalogue;
    let r = c
        .get_catalogue(pb::GetCatalogueRequest {})
        .await?
        .into_inner();
    output::print(args.output, &output::catalogue(&r));
    Ok(())
}

pub async fn token(args: &ClientArgs, command: TokenCommand) -> Result<(), CliError> {
    let mut c = args.connect().await?.tokens;
    let value = match command {
        TokenCommand::Create {
            name,
            role,
            account,
            user,
        } => {
            let r = c
                .create_token(pb::CreateTokenRequest {
                    name,
                    role: pb::Role::from(role) as i32,
                    account_id: account,
                    user_id: user,
                    request_id: String::new(),
                })
                .await?
                .into_inner();
            let mut value = r.token.as_ref().map_or(Value::Null, output::token);
            if let Value::Object(map) = &mut value {
                map.insert("secret".to_owned(), Value::String(r.secret));
            }
            eprintln!("the secret is shown only this once: keep it");
            value
        }
        TokenCommand::List => {
            // Every page, oldest first.
            let mut tokens = Vec::new();
            let mut page_token = String::new();
            loop {
                let r = c
                    .list_tokens(pb::ListTokensRequest {
                        page_size: 1000,
                        page_token,
                    })
                    .await?
                    .into_inner();
                tokens.extend(r.tokens.iter().map(output::token));
                if r.next_page_token.is_empty() {
                    break;
                }
                page_token = r.next_page_token;
            }
            Value::Array(tokens)
        }
        TokenCommand::Revoke { token_id } => {
            let r = c
                .revoke_token(pb::RevokeTokenRequest {
                    token_id,
                    request_id: String::new(),
                })
                .await?
                .into_inner();
            r.token.as_ref().map_or(Value::Null, output::token)
        }
    };
    output::print(args.output, &value);
    Ok(())
}

pub async fn audit(args: &ClientArgs, command: AuditCommand) -> Result<(), CliError> {
    let AuditCommand::List {
        account,
        after_revision,
    } = command;
    let mut c = args.connect().await?.audit;
    let mut changes = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = c
            .list_changes(pb::ListChangesRequest {
                account_id: account.clone(),
                page_size: 1000,
                page_token,
                after_revision,
            })
            .await?
            .into_inner();
        changes.extend(page.changes.iter().map(output::change));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    output::print(args.output, &Value::Array(changes));
    Ok(())
}
