//! The in-memory view of everything durable, which serves all reads:
//! loaded from a backend's records at open, then changed only by
//! publication (`publish.rs`).

use std::{
    borrow::Borrow,
    collections::{BTreeMap, HashMap},
    ops::Bound,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use foldhash::fast::RandomState;

use super::{Mutation, StoreError, codec::USERS};
use crate::domain::{
    Account, AccountId, MAX_ID_LEN, Principal, ScopeRef, SupervisorScope, Tier, Token, User,
    UserId, validate_id,
};

/// Accounts and users as of `revision`.
#[derive(Debug, Default)]
pub struct View {
    revision: u64,
    /// Read by every check and every call's token: a quick hash, seeded
    /// at random per process (`foldhash`), where std's SipHash cost about
    /// 200 instructions a lookup.
    accounts: HashMap<AccountId, AccountEntry, RandomState>,
    /// Every token, revoked ones included, by id.
    tokens: HashMap<String, TokenEntry, RandomState>,
    /// Each edition id once; users hold its index.
    editions: Vec<Arc<str>>,
    edition_index: HashMap<Arc<str>, u32>,
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
    users: BTreeMap<UserKey, UserEntry>,
    /// The groups of each supervisor scoped to a list of them (rule 12), by
    /// user id: few users have one, so it lives beside the users' slots
    /// (whose `scoped` says to look here) rather than in each of them.
    scopes: HashMap<Box<str>, Arc<[ScopeRef]>>,
}

impl AccountEntry {
    fn new(account: Account) -> Self {
        AccountEntry {
            account,
            users: BTreeMap::new(),
            scopes: HashMap::new(),
        }
    }

    /// A user's scope: set exactly when its tier is Supervisor.
    fn scope(&self, id: &str, user: &UserEntry) -> Option<SupervisorScope> {
        if user.tier != Tier::Supervisor {
            return None;
        }
        Some(match user.scoped.then(|| self.scopes.get(id)).flatten() {
            Some(refs) => SupervisorScope::Only(Arc::clone(refs)),
            None => SupervisorScope::WholeAccount,
        })
    }

    /// Keeps (or forgets) a user's list of groups, and says whether it has
    /// one.
    fn set_scope(&mut self, id: &str, scope: Option<&SupervisorScope>) -> bool {
        match scope {
            Some(SupervisorScope::Only(refs)) => {
                self.scopes.insert(id.into(), Arc::clone(refs));
                true
            }
            _ => {
                if !self.scopes.is_empty() {
                    self.scopes.remove(id);
                }
                false
            }
        }
    }
}

/// A user's id and display name in one allocation, ordered (and looked up)
/// by the id alone: the id's length less one as the first byte (an id is 1
/// to 128 ASCII bytes, so that byte is ASCII too), then the id, then the
/// name. With a million users the view is most of the server's memory;
/// one small allocation per user instead of three, and no account id
/// repeated, is most of what keeps it small.
struct UserKey(Box<str>);

impl UserKey {
    fn new(id: &str, display_name: &str) -> UserKey {
        debug_assert!((1..=MAX_ID_LEN).contains(&id.len()));
        let mut text = String::with_capacity(1 + id.len() + display_name.len());
        // `UserId` is validated: 1 to 128 ASCII bytes.
        text.push(char::from((id.len().clamp(1, MAX_ID_LEN) - 1) as u8));
        text.push_str(id);
        text.push_str(display_name);
        UserKey(text.into_boxed_str())
    }

    fn split(&self) -> (&str, &str) {
        let id_len = usize::from(self.0.as_bytes()[0]) + 1;
        let rest = &self.0[1..];
        rest.split_at(id_len.min(rest.len()))
    }

    fn id(&self) -> &str {
        self.split().0
    }

    fn display_name(&self) -> &str {
        self.split().1
    }
}

impl std::fmt::Debug for UserKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("UserKey")
            .field(&self.id())
            .field(&self.display_name())
            .finish()
    }
}

impl Borrow<str> for UserKey {
    fn borrow(&self) -> &str {
        self.id()
    }
}

impl PartialEq for UserKey {
    fn eq(&self, other: &Self) -> bool {
        self.id() == other.id()
    }
}

impl Eq for UserKey {}

impl PartialOrd for UserKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for UserKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.id().cmp(other.id())
    }
}

/// The rest of a user as the view keeps it (the account id is its map's,
/// the id and name are the key's): 40 bytes. A supervisor's scope is the
/// whole account unless `scoped`, when its groups are in the account's
/// `scopes` (in what was padding, so a slot is no bigger for it).
#[derive(Debug)]
struct UserEntry {
    revision: u64,
    /// `created_at` and `updated_at`, as seconds and nanoseconds from the
    /// Unix epoch (`Stamp`), stored apart so that no padding sits between.
    secs: [i64; 2],
    nanos: [u32; 2],
    /// An index into `View::editions`; `NO_EDITION` for none.
    edition: u32,
    tier: Tier,
    scoped: bool,
}

const NO_EDITION: u32 = u32::MAX;

/// A `SystemTime` as whole seconds from the Unix epoch (negative before
/// it) and the nanoseconds after them: exact, in half a `SystemTime`'s
/// space once two are packed.
fn stamp(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        ),
        Err(e) => {
            let d = e.duration();
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            match d.subsec_nanos() {
                0 => (-secs, 0),
                n => (-secs - 1, 1_000_000_000 - n),
            }
        }
    }
}

fn time((secs, nanos): (i64, u32)) -> SystemTime {
    let whole = Duration::from_secs(secs.unsigned_abs());
    let at = if secs >= 0 {
        UNIX_EPOCH + whole
    } else {
        UNIX_EPOCH - whole
    };
    at + Duration::from_nanos(u64::from(nanos))
}

/// What a check needs of a user, borrowed from the view.
#[derive(Debug, Clone)]
pub struct UserServices<'a> {
    pub edition: Option<&'a str>,
    pub tier: Tier,
    /// Set exactly when `tier` is Supervisor; a list of groups is shared
    /// with the view, not copied.
    pub supervisor_scope: Option<SupervisorScope>,
}

/// A user's fields, borrowed: what a backend that decodes its records in
/// place hands `Builder::user` (no allocation per field).
#[derive(Debug, Clone, Copy)]
pub(crate) struct UserFields<'a> {
    pub account_id: &'a str,
    pub id: &'a str,
    pub display_name: &'a str,
    pub edition: Option<&'a str>,
    pub tier: Tier,
    pub revision: u64,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    pub supervisor_scope: Option<&'a SupervisorScope>,
}

/// A view being loaded: tokens and accounts first, then users one by one
/// (`View::load` is this, for owned records).
pub(crate) struct Builder {
    view: View,
    /// The account whose users are arriving, and those users so far:
    /// users come grouped by account and in id order from a store that
    /// keeps them so (sled does), and each account's run is built into its
    /// map at once, which fills the map's nodes (inserting one by one
    /// leaves them half empty). Any other order is still right.
    run_account: Option<AccountId>,
    run: Vec<(UserKey, UserEntry)>,
}

impl Builder {
    pub(crate) fn new(
        revision: u64,
        tokens: impl IntoIterator<Item = Result<Token, StoreError>>,
        accounts: impl IntoIterator<Item = Result<Account, StoreError>>,
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
            view.accounts
                .insert(account.id.clone(), AccountEntry::new(account));
        }
        Ok(Builder {
            view,
            run_account: None,
            run: Vec::new(),
        })
    }

    /// Adds a user, whose account must be among the builder's accounts and
    /// whose ids must be valid.
    pub(crate) fn user(&mut self, user: UserFields<'_>) -> Result<(), StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            kind: USERS,
            key: format!("{}/{}", user.account_id, user.id),
            reason,
        };
        if self.run_account.as_ref().map(AccountId::as_str) != Some(user.account_id) {
            if let Some(account) = self.run_account.take() {
                self.view.put_run(account.as_str(), &mut self.run);
            }
            let Some(entry) = self.view.accounts.get(user.account_id) else {
                return Err(corrupt(format!(
                    "its account `{}` does not exist",
                    user.account_id
                )));
            };
            self.run_account = Some(entry.account.id.clone());
        }
        validate_id(user.id).map_err(|e| corrupt(format!("user id {e}")))?;
        let mut entry = self.view.entry(&user);
        if let Some(account) = self.view.accounts.get_mut(user.account_id) {
            entry.1.scoped = account.set_scope(user.id, user.supervisor_scope);
        }
        self.run.push(entry);
        Ok(())
    }

    pub(crate) fn finish(mut self) -> View {
        if let Some(account) = self.run_account.take() {
            self.view.put_run(account.as_str(), &mut self.run);
        }
        self.view
    }
}

impl UserEntry {
    fn user(&self, view: &View, account: &AccountEntry, key: &UserKey) -> Option<User> {
        // The key was made from a `UserId`, so this never fails.
        let id = UserId::try_from(key.id().to_owned()).ok()?;
        Some(User {
            account_id: account.account.id.clone(),
            id,
            display_name: key.display_name().to_owned(),
            edition: view.edition(self.edition).map(str::to_owned),
            tier: self.tier,
            revision: self.revision,
            created_at: time((self.secs[0], self.nanos[0])),
            updated_at: time((self.secs[1], self.nanos[1])),
            supervisor_scope: account.scope(key.id(), self),
        })
    }
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
        let mut builder = Builder::new(revision, tokens, accounts)?;
        for user in users {
            let user = user?;
            builder.user(UserFields {
                account_id: user.account_id.as_str(),
                id: user.id.as_str(),
                display_name: &user.display_name,
                edition: user.edition.as_deref(),
                tier: user.tier,
                revision: user.revision,
                created_at: user.created_at,
                updated_at: user.updated_at,
                supervisor_scope: user.supervisor_scope.as_ref(),
            })?;
        }
        Ok(builder.finish())
    }

    /// Puts one account's users (`run`, emptied) into its map.
    fn put_run(&mut self, account: &str, run: &mut Vec<(UserKey, UserEntry)>) {
        if let Some(entry) = self.accounts.get_mut(account) {
            if entry.users.is_empty() && run.is_sorted_by(|a, b| a.0 < b.0) {
                entry.users = run.drain(..).collect();
            } else {
                for (key, user) in run.drain(..) {
                    // The key holds the name: a stored key is replaced, not
                    // kept (as `insert` would).
                    entry.users.remove(key.id());
                    entry.users.insert(key, user);
                }
            }
        }
        run.clear();
    }

    /// The edition's index in `editions`, added if new.
    fn edition_index(&mut self, edition: Option<&str>) -> u32 {
        let Some(edition) = edition else {
            return NO_EDITION;
        };
        if let Some(&i) = self.edition_index.get(edition) {
            return i;
        }
        let i = u32::try_from(self.editions.len()).unwrap_or(NO_EDITION);
        let shared: Arc<str> = edition.into();
        self.editions.push(Arc::clone(&shared));
        self.edition_index.insert(shared, i);
        i
    }

    fn edition(&self, index: u32) -> Option<&str> {
        self.editions
            .get(usize::try_from(index).ok()?)
            .map(|e| &**e)
    }

    fn entry(&mut self, user: &UserFields<'_>) -> (UserKey, UserEntry) {
        let key = UserKey::new(user.id, user.display_name);
        let created = stamp(user.created_at);
        let updated = stamp(user.updated_at);
        let entry = UserEntry {
            revision: user.revision,
            secs: [created.0, updated.0],
            nanos: [created.1, updated.1],
            edition: self.edition_index(user.edition),
            tier: user.tier,
            scoped: false,
        };
        (key, entry)
    }

    fn put_user(&mut self, user: User) {
        let (key, mut entry) = self.entry(&UserFields {
            account_id: user.account_id.as_str(),
            id: user.id.as_str(),
            display_name: &user.display_name,
            edition: user.edition.as_deref(),
            tier: user.tier,
            revision: user.revision,
            created_at: user.created_at,
            updated_at: user.updated_at,
            supervisor_scope: None,
        });
        if let Some(stored) = self.accounts.get_mut(user.account_id.as_str()) {
            entry.scoped = stored.set_scope(key.id(), user.supervisor_scope.as_ref());
            stored.users.remove(key.id());
            stored.users.insert(key, entry);
        }
    }

    pub(crate) fn apply(&mut self, revision: u64, mutations: Vec<Mutation>) {
        for m in mutations {
            match m {
                Mutation::PutAccount(account) => match self.accounts.get_mut(account.id.as_str()) {
                    Some(entry) => entry.account = account,
                    None => {
                        self.accounts
                            .insert(account.id.clone(), AccountEntry::new(account));
                    }
                },
                Mutation::PutUser(user) => self.put_user(user),
                Mutation::DeleteUser(account, user) => {
                    if let Some(entry) = self.accounts.get_mut(account.as_str()) {
                        entry.users.remove(user.as_str());
                        entry.set_scope(user.as_str(), None);
                    }
                }
                Mutation::PutToken(token) => {
                    self.tokens.insert(token.id.clone(), token.into());
                }
                Mutation::MarkBootstrapped => {}
                // Its users went by their own `DeleteUser`s before this;
                // any left go with the account's entry.
                Mutation::DeleteAccount(account) => {
                    self.accounts.remove(account.as_str());
                }
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
        let (key, stored) = entry.users.get_key_value(user)?;
        stored.user(self, entry, key)
    }

    /// Every account, in no order.
    pub fn accounts(&self) -> impl Iterator<Item = &Account> {
        self.accounts.values().map(|e| &e.account)
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
                    edition: self.edition(u.edition),
                    tier: u.tier,
                    supervisor_scope: entry.scope(user, u),
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
                    .filter_map(|(key, stored)| stored.user(self, e, key))
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
            .filter_map(|(key, u)| u.user(self, entry, key))
            .collect();
        let more = range.next().is_some();
        Some((page, more))
    }
}

#[cfg(test)]
mod tests;
