//! Console sessions: a random 256-bit id in a cookie, and on the server a
//! bounded map from the id's hash to the token's secret and the session's
//! CSRF token. The secret never leaves this process's memory: no page, URL,
//! cookie or log holds it; every request authenticates it again, so a
//! revoked token ends its sessions at their next request.

use std::{
    collections::HashMap,
    fmt,
    time::{Duration, SystemTime},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::service::Clock;

/// A session unused this long has ended.
pub const IDLE_EXPIRY: Duration = Duration::from_secs(30 * 60);
/// A session this old has ended, however busy.
pub const ABSOLUTE_EXPIRY: Duration = Duration::from_secs(12 * 60 * 60);
/// Sessions held at once; the least recently used goes first when full.
pub const MAX_SESSIONS: usize = 10_000;
/// Sessions one token may hold at once; its least recently used goes first.
/// Without it, one token signing in again and again would push every other
/// admin's session out of the full map.
pub const MAX_SESSIONS_PER_TOKEN: usize = 8;

/// A token's secret, kept for one session. Its `Debug` hides it.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: String) -> Self {
        Secret(secret)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// The token's id (the part before the `.`), which is no secret.
    fn token_id(&self) -> &str {
        self.0.split_once('.').map_or("", |(id, _)| id)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

#[derive(Debug)]
struct Session {
    secret: Secret,
    csrf: String,
    created: SystemTime,
    seen: SystemTime,
}

/// What a request's session cookie leads to.
#[derive(Debug)]
pub enum Lookup {
    Live {
        secret: Secret,
        csrf: String,
    },
    /// It was there, and has expired (now removed).
    Expired,
    Missing,
}

pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
    clock: Clock,
    max: usize,
}

impl Sessions {
    pub fn new(clock: Clock) -> Self {
        Self::with_capacity(clock, MAX_SESSIONS)
    }

    pub fn with_capacity(clock: Clock, max: usize) -> Self {
        Sessions {
            map: Mutex::new(HashMap::new()),
            clock,
            max: max.max(1),
        }
    }

    /// Starts a session for `secret`; returns the cookie's value.
    pub fn start(&self, secret: Secret) -> Result<String, getrandom::Error> {
        let id = random_token()?;
        let csrf = random_token()?;
        let now = (self.clock)();
        let mut map = self.map.lock();
        let token = secret.token_id();
        let mine = map
            .values()
            .filter(|s| s.secret.token_id() == token)
            .count();
        if mine >= MAX_SESSIONS_PER_TOKEN
            && let Some(oldest) = map
                .iter()
                .filter(|(_, s)| s.secret.token_id() == token)
                .min_by_key(|(_, s)| s.seen)
                .map(|(k, _)| *k)
        {
            map.remove(&oldest);
        }
        if map.len() >= self.max {
            map.retain(|_, s| !expired(s, now));
        }
        if map.len() >= self.max
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.seen).map(|(k, _)| *k)
        {
            map.remove(&oldest);
        }
        map.insert(
            digest(&id),
            Session {
                secret,
                csrf,
                created: now,
                seen: now,
            },
        );
        Ok(id)
    }

    /// The live session of cookie value `id`, marked as used now.
    pub fn touch(&self, id: &str) -> Lookup {
        let now = (self.clock)();
        let key = digest(id);
        let mut map = self.map.lock();
        match map.get_mut(&key) {
            None => Lookup::Missing,
            Some(session) if expired(session, now) => {
                map.remove(&key);
                Lookup::Expired
            }
            Some(session) => {
                session.seen = now;
                Lookup::Live {
                    secret: session.secret.clone(),
                    csrf: session.csrf.clone(),
                }
            }
        }
    }

    pub fn end(&self, id: &str) {
        self.map.lock().remove(&digest(id));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().len()
    }
}

fn expired(session: &Session, now: SystemTime) -> bool {
    let since = |t: SystemTime| now.duration_since(t).unwrap_or_default();
    since(session.seen) >= IDLE_EXPIRY || since(session.created) >= ABSOLUTE_EXPIRY
}

/// The map holds ids hashed, so what it holds cannot be used as a cookie.
fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// 256 random bits from the OS, base64url.
pub fn random_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Whether a form's CSRF token is the session's, in constant time.
pub fn same_token(expected: &str, given: &str) -> bool {
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex as StdMutex};

    use super::*;

    fn manual() -> (Arc<StdMutex<SystemTime>>, Clock) {
        let now = Arc::new(StdMutex::new(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1e9 as u64),
        ));
        let read = Arc::clone(&now);
        (now, Arc::new(move || *read.lock().unwrap()))
    }

    #[test]
    fn sessions_end_when_idle_or_old() {
        let (now, clock) = manual();
        let sessions = Sessions::new(clock);
        let id = sessions.start(Secret::new("s".into())).unwrap();
        assert!(matches!(sessions.touch(&id), Lookup::Live { .. }));
        // Used every 20 minutes: alive until 12 hours.
        for _ in 0..35 {
            *now.lock().unwrap() += Duration::from_secs(20 * 60);
            assert!(matches!(sessions.touch(&id), Lookup::Live { .. }));
        }
        *now.lock().unwrap() += Duration::from_secs(20 * 60);
        assert!(matches!(sessions.touch(&id), Lookup::Expired));
        assert!(matches!(sessions.touch(&id), Lookup::Missing));

        let idle = sessions.start(Secret::new("s".into())).unwrap();
        *now.lock().unwrap() += IDLE_EXPIRY;
        assert!(matches!(sessions.touch(&idle), Lookup::Expired));
    }

    #[test]
    fn the_map_is_bounded_and_drops_the_least_recently_used() {
        let (now, clock) = manual();
        let sessions = Sessions::with_capacity(clock, 3);
        let ids: Vec<String> = (0..3)
            .map(|_| {
                *now.lock().unwrap() += Duration::from_secs(1);
                sessions.start(Secret::new("s".into())).unwrap()
            })
            .collect();
        *now.lock().unwrap() += Duration::from_secs(1);
        assert!(matches!(sessions.touch(&ids[0]), Lookup::Live { .. }));
        let fourth = sessions.start(Secret::new("s".into())).unwrap();
        assert_eq!(sessions.len(), 3);
        assert!(matches!(sessions.touch(&ids[1]), Lookup::Missing));
        assert!(matches!(sessions.touch(&ids[0]), Lookup::Live { .. }));
        assert!(matches!(sessions.touch(&fourth), Lookup::Live { .. }));
    }

    #[test]
    fn one_token_signing_in_again_and_again_pushes_out_only_its_own_sessions() {
        let (now, clock) = manual();
        let sessions = Sessions::with_capacity(clock, 20);
        let others: Vec<String> = (0..10)
            .map(|i| {
                *now.lock().unwrap() += Duration::from_secs(1);
                sessions.start(Secret::new(format!("tok_{i}.s"))).unwrap()
            })
            .collect();
        let mut attacker = Vec::new();
        for _ in 0..1000 {
            *now.lock().unwrap() += Duration::from_secs(1);
            attacker.push(sessions.start(Secret::new("tok_x.s".into())).unwrap());
        }
        assert_eq!(sessions.len(), 10 + MAX_SESSIONS_PER_TOKEN);
        for id in &others {
            assert!(matches!(sessions.touch(id), Lookup::Live { .. }));
        }
        assert!(matches!(sessions.touch(&attacker[0]), Lookup::Missing));
        assert!(matches!(
            sessions.touch(attacker.last().unwrap()),
            Lookup::Live { .. }
        ));
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let secret = Secret::new("tok_1.very-secret".into());
        assert!(!format!("{secret:?}").contains("very-secret"));
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("", ""));
    }
}
