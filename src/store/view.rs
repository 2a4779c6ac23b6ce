//! The in-memory view of everything durable, which serves all reads:
//! loaded from a backend's records at open, then changed only by
//! publication (`publish.rs`).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    ops::Bound,
    sync::Arc,
    time::SystemTime,
};

use super::{Mutation, StoreError, codec::USERS};
use crate::domain::{Account, AccountId, Principal, Tier, Token, User, UserId};

/// Accounts and users as of `revision`.
#[derive(Debug, Default)]
pub struct View {
    revision: u64,
    accounts: HashMap<AccountId, AccountEntry>,
    /// Every token, revoked ones included, by id.
    tokens: HashMap<String, TokenEntry>,
    /// Each edition id once, shared by every user holding it.
    editions: HashSet<Arc<str>>,
}

/// A token and the principal it authenticates, built once.
#[derive(Debug)]
pub struct TokenEntry {
    pub token: Token,
    pub principal: Arc<Principal>,
}

impl From<Token> for TokenEntry {
    fn from(token: Token) -> Self {
        TokenEntry {
            principal: Arc::new(token.principal()),
            token,
        }
    }
}

#[derive(Debug)]
struct AccountEntry {
    account: Account,
    users: BTreeMap<UserId, UserEntry>,
}

/// A user as the view keeps it: without the ids its map keys already hold
/// and with the edition shared. With a million users the view is most of
/// the server's memory, and this is under half of a `User` (measured 457
/// bytes per user before, with 300k users).
#[derive(Debug)]
struct UserEntry {
    display_name: Box<str>,
    edition: Option<Arc<str>>,
    tier: Tier,
    revision: u64,
    created_at: SystemTime,
    updated_at: SystemTime,
}

impl UserEntry {
    fn user(&self, account: &AccountId, id: &UserId) -> User {
        User {
            account_id: account.clone(),
            id: id.clone(),
            display_name: self.display_name.to_string(),
            edition: self.edition.as_deref().map(str::to_owned),
            tier: self.tier,
            revision: self.revision,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

/// What a check needs of a user, borrowed from the view.
#[derive(Debug, Clone, Copy)]
pub struct UserServices<'a> {
    pub edition: Option<&'a str>,
    pub tier: Tier,
}

impl View {
    /// The view of these records, as of `revision`. Every user's account
    /// must be among `accounts`.
    pub(crate) fn load(
        revision: u64,
        tokens: impl IntoIterator<Item = Result<Token, StoreError>>,
        accounts: impl IntoIterator<Item = Result<Account, StoreError>>,
        users: impl IntoIterator<Item = Result<User, StoreError>>,
    ) -> Result<Self, StoreError> {
        let mut view = View {
            revision,
            ..View::default()
        };
        for token in tokens {
            let token = token?;
            view.tokens.insert(token.id.clone(), token.into());
        }
        for account in accounts {
            let account = account?;
            view.accounts.insert(
                account.id.clone(),
                AccountEntry {
                    account,
                    users: BTreeMap::new(),
                },
            );
        }
        for user in users {
            let user = user?;
            if !view.accounts.contains_key(user.account_id.as_str()) {
                return Err(StoreError::Corrupt {
                    kind: USERS,
                    key: format!("{}/{}", user.account_id, user.id),
                    reason: format!("its account `{}` does not exist", user.account_id),
                });
            }
            view.put_user(user);
        }
        Ok(view)
    }

    fn put_user(&mut self, user: User) {
        let edition = user.edition.map(|e| match self.editions.get(e.as_str()) {
            Some(shared) => Arc::clone(shared),
            None => {
                let shared: Arc<str> = e.into();
                self.editions.insert(Arc::clone(&shared));
                shared
            }
        });
        if let Some(entry) = self.accounts.get_mut(user.account_id.as_str()) {
            entry.users.insert(
                user.id,
                UserEntry {
                    display_name: user.display_name.into_boxed_str(),
                    edition,
                    tier: user.tier,
                    revision: user.revision,
                    created_at: user.created_at,
                    updated_at: user.updated_at,
                },
            );
        }
    }

    pub(crate) fn apply(&mut self, revision: u64, mutations: Vec<Mutation>) {
        for m in mutations {
            match m {
                Mutation::PutAccount(account) => match self.accounts.get_mut(account.id.as_str()) {
                    Some(entry) => entry.account = account,
                    None => {
                        self.accounts.insert(
                            account.id.clone(),
                            AccountEntry {
                                account,
                                users: BTreeMap::new(),
                            },
                        );
                    }
                },
                Mutation::PutUser(user) => self.put_user(user),
                Mutation::DeleteUser(account, user) => {
                    if let Some(entry) = self.accounts.get_mut(account.as_str()) {
                        entry.users.remove(user.as_str());
                    }
                }
                Mutation::PutToken(token) => {
                    self.tokens.insert(token.id.clone(), token.into());
                }
                Mutation::MarkBootstrapped => {}
            }
        }
        self.revision = revision;
    }

    /// The store revision this view reflects.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn account(&self, id: &str) -> Option<&Account> {
        self.accounts.get(id).map(|e| &e.account)
    }

    pub fn user(&self, account: &str, user: &str) -> Option<User> {
        let entry = self.accounts.get(account)?;
        let (id, stored) = entry.users.get_key_value(user)?;
        Some(stored.user(&entry.account.id, id))
    }

    /// How many accounts there are.
    /// Every account, in no order.
    pub fn accounts(&self) -> impl Iterator<Item = &Account> {
        self.accounts.values().map(|e| &e.account)
    }

    pub fn account_count(&self) -> u64 {
        self.accounts.len() as u64
    }

    /// How many users there are, in all accounts.
    pub fn user_count(&self) -> u64 {
        self.accounts.values().map(|e| e.users.len() as u64).sum()
    }

    pub fn token(&self, id: &str) -> Option<&TokenEntry> {
        self.tokens.get(id)
    }

    /// Every token, oldest first.
    pub fn tokens(&self) -> Vec<Token> {
        let mut all: Vec<Token> = self.tokens.values().map(|e| e.token.clone()).collect();
        all.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        all
    }

    /// An account with the user's services, if each exists: the check's one
    /// lookup.
    pub fn account_and_user(
        &self,
        account: &str,
        user: &str,
    ) -> (Option<&Account>, Option<UserServices<'_>>) {
        match self.accounts.get(account) {
            Some(entry) => (
                Some(&entry.account),
                entry.users.get(user).map(|u| UserServices {
                    edition: u.edition.as_deref(),
                    tier: u.tier,
                }),
            ),
            None => (None, None),
        }
    }

    /// Every user of `account` (or of every account), by account then user.
    pub fn all_users(&self, account: Option<&str>) -> Vec<User> {
        let mut entries: Vec<&AccountEntry> = match account {
            Some(id) => self.accounts.get(id).into_iter().collect(),
            None => self.accounts.values().collect(),
        };
        entries.sort_by(|a, b| a.account.id.cmp(&b.account.id));
        entries
            .iter()
            .flat_map(|e| {
                e.users
                    .iter()
                    .map(|(id, stored)| stored.user(&e.account.id, id))
            })
            .collect()
    }

    /// Up to `limit` users of `account` whose id is after `after`, in id
    /// order, and whether more follow. `None` if the account does not exist.
    pub fn users_after(
        &self,
        account: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Option<(Vec<User>, bool)> {
        let entry = self.accounts.get(account)?;
        let lower = match after {
            Some(after) => Bound::Excluded(after),
            None => Bound::Unbounded,
        };
        let mut range = entry.users.range::<str, _>((lower, Bound::Unbounded));
        let page: Vec<User> = range
            .by_ref()
            .take(limit)
            .map(|(id, u)| u.user(&entry.account.id, id))
            .collect();
        let more = range.next().is_some();
        Some((page, more))
    }
}
