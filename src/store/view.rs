//! The in-memory view of everything durable, which serves all reads.

use std::{
    collections::{BTreeMap, HashMap},
    ops::Bound,
    sync::Arc,
};

use super::{ACCOUNTS, Mutation, StoreError, TOKENS, USERS, codec};
use crate::domain::{Account, AccountId, Principal, Token, User, UserId};

/// Accounts and users as of `revision`.
#[derive(Debug, Default)]
pub struct View {
    revision: u64,
    accounts: HashMap<AccountId, AccountEntry>,
    /// Every token, revoked ones included, by id.
    tokens: HashMap<String, TokenEntry>,
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
    users: BTreeMap<UserId, User>,
}

impl View {
    pub(super) fn load(
        accounts: &sled::Tree,
        users: &sled::Tree,
        tokens: &sled::Tree,
        revision: u64,
    ) -> Result<Self, StoreError> {
        let mut view = View {
            revision,
            accounts: HashMap::new(),
            tokens: HashMap::new(),
        };
        for item in tokens.iter() {
            let (key, value) = item?;
            let token: Token = codec::decode(TOKENS, &key, &value)?;
            view.tokens.insert(token.id.clone(), token.into());
        }
        for item in accounts.iter() {
            let (key, value) = item?;
            let account: Account = codec::decode(ACCOUNTS, &key, &value)?;
            view.accounts.insert(
                account.id.clone(),
                AccountEntry {
                    account,
                    users: BTreeMap::new(),
                },
            );
        }
        for item in users.iter() {
            let (key, value) = item?;
            let user: User = codec::decode(USERS, &key, &value)?;
            let Some(entry) = view.accounts.get_mut(user.account_id.as_str()) else {
                return Err(StoreError::Corrupt {
                    tree: USERS,
                    key: String::from_utf8_lossy(&key).into_owned(),
                    reason: format!("its account `{}` does not exist", user.account_id),
                });
            };
            entry.users.insert(user.id.clone(), user);
        }
        Ok(view)
    }

    pub(super) fn apply(&mut self, revision: u64, mutations: Vec<Mutation>) {
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
                Mutation::PutUser(user) => {
                    if let Some(entry) = self.accounts.get_mut(user.account_id.as_str()) {
                        entry.users.insert(user.id.clone(), user);
                    }
                }
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

    pub fn user(&self, account: &str, user: &str) -> Option<&User> {
        self.accounts.get(account)?.users.get(user)
    }

    /// How many accounts there are.
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

    /// An account with the user, if each exists: the check's one lookup.
    pub fn account_and_user(&self, account: &str, user: &str) -> (Option<&Account>, Option<&User>) {
        match self.accounts.get(account) {
            Some(entry) => (Some(&entry.account), entry.users.get(user)),
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
            .flat_map(|e| e.users.values().cloned())
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
        let page: Vec<User> = range.by_ref().take(limit).map(|(_, u)| u.clone()).collect();
        let more = range.next().is_some();
        Some((page, more))
    }
}
