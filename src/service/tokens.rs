//! API tokens: creation (the secret is shown once; only its SHA-256 is
//! kept), listing, revocation, authentication from memory, and the operator
//! token made on the first start.

use std::{
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Caller, DomainError, Entitlements, authorize};
use crate::{
    domain::{AccountId, Actor, DisplayName, Principal, Role, Rpc, Token, UserId, Via},
    store::{Mutation, Target, WriteContext, WritePlan},
};

/// The file, in the data directory, that receives the first operator token.
pub const OPERATOR_TOKEN_FILE: &str = "operator.token";

/// What a new token is for.
#[derive(Debug, Clone)]
pub struct TokenSpec {
    pub name: DisplayName,
    pub role: Role,
    /// Required for, and only for, `account-admin`.
    pub account: Option<AccountId>,
    /// An admin's own user (optional; only for `account-admin`).
    pub user: Option<UserId>,
}

/// Why a token cannot be made as asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenSpecError {
    #[error("name is required: say who or what will hold the token")]
    NameRequired,
    #[error("role `account-admin` needs account_id: the one account it administers")]
    AccountRequired,
    #[error(
        "account_id and user_id are only for role `account-admin`, not `{0}`; leave them empty"
    )]
    NotForRole(Role),
}

/// A token just made, with the secret to hand to its holder once.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub token: Token,
    /// What the holder sends: `authorization: Bearer <secret>`.
    pub secret: String,
    pub revision: u64,
}

impl Entitlements {
    /// Who holds `authorization` (the metadata value, if any). From memory:
    /// no disk read per call.
    pub fn authenticate(
        &self,
        authorization: Option<&[u8]>,
    ) -> Result<Arc<Principal>, DomainError> {
        let unauthenticated = |m: &str| DomainError::Unauthenticated(m.to_owned());
        let value = authorization.ok_or_else(|| {
            unauthenticated(
                "this call needs a token: send metadata `authorization: Bearer <token>`",
            )
        })?;
        let bearer = value.strip_prefix(b"Bearer ").ok_or_else(|| {
            unauthenticated("the `authorization` metadata must be `Bearer <token>`")
        })?;
        // Every token we issue is ASCII, which is text: the quick test first,
        // the full one only for what fails it.
        if !bearer.is_ascii() {
            std::str::from_utf8(bearer).map_err(|_| unauthenticated("the token is not text"))?;
        }
        let id = bearer
            .iter()
            .position(|&b| b == b'.')
            .and_then(|dot| std::str::from_utf8(&bearer[..dot]).ok())
            .ok_or_else(|| {
                unauthenticated("the token is malformed; send it exactly as it was issued")
            })?;
        // The SHA-256 this very bearer was verified with, if it was; the
        // check below is the same either way (`verified.rs`).
        let tag = self.verified.tag(bearer);
        let known = self.verified.digest(tag);
        let digest = known.unwrap_or_else(|| sha256(bearer));
        let principal = self.store.read(|view| {
            let entry = view
                .token(id)
                .filter(|t| bool::from(t.token.secret_sha256.ct_eq(&digest)))
                .ok_or_else(|| {
                    unauthenticated("the token is unknown; ask an operator for a valid one")
                })?;
            if entry.token.revoked_at.is_some() {
                return Err(DomainError::Unauthenticated(format!(
                    "token `{id}` has been revoked; ask an operator for a new one"
                )));
            }
            Ok(Arc::clone(&entry.principal))
        })?;
        if known.is_none() {
            self.verified.insert(tag, digest);
        }
        Ok(principal)
    }

    /// Whether `principal`'s token is still valid in the view now: for a
    /// call that waited for a later revision after it was authenticated.
    pub(super) fn still_valid(&self, principal: &Principal) -> Result<(), DomainError> {
        self.store
            .read(|view| match view.token(&principal.token_id) {
                Some(entry) if entry.token.revoked_at.is_none() => Ok(()),
                _ => Err(DomainError::Unauthenticated(format!(
                    "token `{}` has been revoked; ask an operator for a new one",
                    principal.token_id
                ))),
            })
    }

    pub async fn create_token(
        &self,
        caller: &Caller,
        spec: TokenSpec,
    ) -> Result<NewToken, DomainError> {
        authorize(caller, Rpc::CreateToken, None, None)?;
        // The name was checked as a name at the edge; a token also needs
        // one that says something.
        let name = spec.name.as_str().trim();
        if name.is_empty() {
            return Err(TokenSpecError::NameRequired.into());
        }
        match (spec.role, &spec.account, &spec.user) {
            (Role::AccountAdmin, None, _) => return Err(TokenSpecError::AccountRequired.into()),
            (Role::AccountAdmin, Some(_), _) | (_, None, None) => {}
            (role, _, _) => return Err(TokenSpecError::NotForRole(role).into()),
        }
        let (token, secret) = generate(
            name.to_owned(),
            spec.role,
            spec.account.clone(),
            spec.user.clone(),
            (self.clock)(),
        )?;
        let ctx = self.context(
            caller,
            Rpc::CreateToken,
            spec.account.as_ref().map_or("", AccountId::as_str),
            spec.user.as_ref().map_or("", UserId::as_str),
        );
        let target = spec
            .account
            .clone()
            .map_or(Target::NoRecord, Target::Account);
        let request_id = caller.request.as_ref().map(|r| r.id.clone());
        let written = self
            .store
            .write(&target, ctx, move |current| {
                if let Some(account) = &spec.account
                    && current.account.is_none()
                {
                    return Err(DomainError::AccountNotFound(account.clone()));
                }
                let mut planned =
                    WritePlan::new(vec![Mutation::PutToken(token.clone())], token.clone());
                planned.details.push(format!(
                    "created token `{}` `{}` with role `{}`",
                    planned.output.id, planned.output.name, planned.output.role
                ));
                Ok(planned)
            })
            .await?;
        if written.replayed {
            return Err(DomainError::TokenReplay {
                request_id: request_id.unwrap_or_default(),
                token_id: written.output.id,
            });
        }
        Ok(NewToken {
            token: written.output,
            secret,
            revision: written.revision,
        })
    }

    /// Tokens oldest first (by creation time, then id), at most `size`
    /// after the cursor `after` (the creation time and id of the last one
    /// a previous page held), and whether more follow.
    pub fn list_tokens(
        &self,
        caller: &Caller,
        after: Option<&(SystemTime, String)>,
        size: usize,
    ) -> Result<(Vec<Token>, bool), DomainError> {
        authorize(caller, Rpc::ListTokens, None, None)?;
        let mut tokens = self.store.read(|v| v.tokens());
        if let Some((at, id)) = after {
            tokens.retain(|t| (t.created_at, &t.id) > (*at, id));
        }
        let more = tokens.len() > size;
        tokens.truncate(size);
        Ok((tokens, more))
    }

    /// Revokes a token; it is refused from the very next call. Revoking a
    /// revoked token changes nothing.
    pub async fn revoke_token(
        &self,
        caller: &Caller,
        id: String,
    ) -> Result<crate::store::Written<Token>, DomainError> {
        authorize(caller, Rpc::RevokeToken, None, None)?;
        let now = (self.clock)();
        let ctx = self.context(caller, Rpc::RevokeToken, "", "");
        self.store
            .write(&Target::Token(id.clone()), ctx, move |current| {
                let token = current
                    .token
                    .ok_or_else(|| DomainError::TokenNotFound(id.clone()))?;
                if token.revoked_at.is_some() {
                    return Ok(WritePlan::new(vec![], token));
                }
                let revoked = Token {
                    revoked_at: Some(now),
                    ..token
                };
                let mut planned =
                    WritePlan::new(vec![Mutation::PutToken(revoked.clone())], revoked);
                planned.details.push(format!(
                    "revoked token `{}` `{}`",
                    planned.output.id, planned.output.name
                ));
                Ok(planned)
            })
            .await
    }

    /// On the first start on a store, makes an operator token and writes its
    /// secret to `file` (mode 0600). Returns the file's path when it made
    /// one; later starts make none. Replicas starting together on one
    /// database make exactly one: the write makes the token only if none
    /// was made, as the one writer sees it.
    pub async fn bootstrap(&self, file: &Path) -> Result<Option<PathBuf>, DomainError> {
        if self.store.is_bootstrapped().await? {
            return Ok(None);
        }
        let now = (self.clock)();
        let (token, secret) = generate(
            "bootstrap operator".to_owned(),
            Role::Operator,
            None,
            None,
            now,
        )?;
        // The secret first, under a name of its own: a crash before the
        // commit below leaves only that file (the next start makes
        // another); one after it leaves the secret there, named for its
        // token. Moved into place only once this start made the token.
        let pending = pending_secret_file(file, &token.id);
        write_secret_file(&pending, &secret).map_err(|e| {
            DomainError::Bootstrap(format!("cannot write `{}`: {e}", pending.display()))
        })?;
        let ctx = WriteContext {
            actor: Actor {
                token_id: "system".to_owned(),
                name: "entitled first start".to_owned(),
                role: Role::Operator,
                via: Via::Api,
            },
            rpc: Rpc::CreateToken,
            at: now,
            account_id: String::new(),
            user_id: String::new(),
            request: None,
            keep_refusal: false,
        };
        let made = self
            .store
            .write::<_, DomainError>(&Target::NoRecord, ctx, move |current| {
                if current.bootstrapped {
                    // Another replica made it first.
                    return Ok(WritePlan::new(Vec::new(), false));
                }
                let details = vec![format!(
                    "created token `{}` `{}` with role `operator`",
                    token.id, token.name
                )];
                Ok(WritePlan {
                    mutations: vec![
                        Mutation::PutToken(token.clone()),
                        Mutation::MarkBootstrapped,
                    ],
                    output: true,
                    details,
                    refused: None,
                })
            })
            .await;
        match made {
            Ok(written) if written.output => {
                std::fs::rename(&pending, file).map_err(|e| {
                    DomainError::Bootstrap(format!(
                        "the operator token was made, but its secret could not be moved from `{}` to `{}`: {e}",
                        pending.display(),
                        file.display()
                    ))
                })?;
                Ok(Some(file.to_path_buf()))
            }
            other => {
                let _ = std::fs::remove_file(&pending);
                other.map(|_| None)
            }
        }
    }
}

/// Where a first start's secret waits until its token is committed.
fn pending_secret_file(file: &Path, token_id: &str) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".pending-{token_id}"));
    file.with_file_name(name)
}

fn sha256(secret: impl AsRef<[u8]>) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// A new token and its secret: `tok_<16 hex>.<256 random bits, base64url>`.
fn generate(
    name: String,
    role: Role,
    account: Option<AccountId>,
    user: Option<UserId>,
    now: std::time::SystemTime,
) -> Result<(Token, String), DomainError> {
    let mut id_bytes = [0u8; 8];
    let mut secret_bytes = [0u8; 32];
    getrandom::fill(&mut id_bytes)
        .and_then(|()| getrandom::fill(&mut secret_bytes))
        .map_err(DomainError::NoRandomness)?;
    let id: String = std::iter::once("tok_".to_owned())
        .chain(id_bytes.iter().map(|b| format!("{b:02x}")))
        .collect();
    let secret = format!("{id}.{}", URL_SAFE_NO_PAD.encode(secret_bytes));
    let token = Token {
        id,
        name,
        role,
        account,
        user,
        secret_sha256: sha256(&secret),
        created_at: now,
        revoked_at: None,
    };
    Ok((token, secret))
}

/// Writes `secret` to `path` with mode 0600, atomically (temp file, fsync,
/// rename).
fn write_secret_file(path: &Path, secret: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    file.write_all(secret.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
