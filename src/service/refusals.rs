//! Refused writes in the audit trail: what is kept of one, whose trail it
//! goes to, and how many a token may leave.
//!
//! A refused call costs its caller almost nothing, so the trail must not
//! grow with what the caller sends: values are kept cut (with their length),
//! and each token may leave at most `REFUSAL_BURST` records at once and
//! `REFUSALS_PER_SECOND` on average. Past that, refusals are counted, not
//! stored, and the next one stored says how many were left out.

use std::{collections::HashMap, time::Instant};

use parking_lot::Mutex;

use super::{Caller, Entitlements};
use crate::domain::{MAX_KEPT_ID, MAX_KEPT_REASON, Role, Rpc, kept};

/// Refusal records one token may leave at once.
pub const REFUSAL_BURST: u32 = 50;
/// Refusal records one token may leave per second, on average.
pub const REFUSALS_PER_SECOND: u32 = 2;
/// Tokens tracked before idle ones are forgotten (only tokens that
/// authenticated are tracked, so the map is bounded by the tokens issued).
const TRACKED_TOKENS: usize = 10_000;

/// A token bucket per token id.
#[derive(Default)]
pub(super) struct RefusalLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    /// Records that may be stored now, in thousandths.
    milli: u64,
    at: Instant,
    /// Refusals not recorded since the last one that was.
    left_out: u64,
}

/// Whether to record a refusal, and how many before it were left out.
enum Admit {
    Record { left_out: u64 },
    LeaveOut,
}

impl RefusalLimiter {
    fn admit(&self, token_id: &str, now: Instant) -> Admit {
        const FULL: u64 = REFUSAL_BURST as u64 * 1000;
        let mut buckets = self.buckets.lock();
        if buckets.len() >= TRACKED_TOKENS && !buckets.contains_key(token_id) {
            // Forget the tokens whose buckets have refilled: they are back
            // to where a new token starts.
            buckets.retain(|_, b| refill(b, now) < FULL || b.left_out > 0);
        }
        let bucket = buckets.entry(token_id.to_owned()).or_insert(Bucket {
            milli: FULL,
            at: now,
            left_out: 0,
        });
        bucket.milli = refill(bucket, now);
        bucket.at = now;
        if bucket.milli >= 1000 {
            bucket.milli -= 1000;
            Admit::Record {
                left_out: std::mem::take(&mut bucket.left_out),
            }
        } else {
            bucket.left_out += 1;
            Admit::LeaveOut
        }
    }
}

impl RefusalLimiter {
    /// Whether `token_id` may leave one more refusal now, without using
    /// it: a refusal kept for a retry is stored too, so it is kept only
    /// while the token is within its rate (the audit record that follows
    /// uses the budget).
    pub(super) fn may_keep(&self, token_id: &str) -> bool {
        let buckets = self.buckets.lock();
        buckets
            .get(token_id)
            .is_none_or(|bucket| refill(bucket, Instant::now()) >= 1000)
    }

    /// Uses one refusal of `token_id`'s budget without recording one: for
    /// an answer kept for a retry that leaves no record in the trail (a
    /// refused import's dry run). Nothing happens when none is left.
    pub(super) fn spend(&self, token_id: &str) {
        if let Admit::LeaveOut = self.admit(token_id, Instant::now()) {
            // Not a refusal left out of the trail: undo its count.
            if let Some(bucket) = self.buckets.lock().get_mut(token_id) {
                bucket.left_out = bucket.left_out.saturating_sub(1);
            }
        }
    }
}

/// The bucket's level at `now`.
fn refill(bucket: &Bucket, now: Instant) -> u64 {
    const FULL: u64 = REFUSAL_BURST as u64 * 1000;
    let elapsed = now.saturating_duration_since(bucket.at);
    let gained = elapsed
        .as_millis()
        .saturating_mul(u128::from(REFUSALS_PER_SECOND));
    let gained = u64::try_from(gained).unwrap_or(u64::MAX);
    bucket.milli.saturating_add(gained).min(FULL)
}

impl Entitlements {
    /// Records a refused write in the audit trail (the gRPC layer calls this
    /// from one place, `Api::audited_with`, for every write RPC that fails,
    /// whatever the reason, and for an import that answers OK with its rows
    /// refused). `account` and
    /// `user` are as the caller sent them. Returns false when the token's
    /// refusals are over their rate and this one was only counted.
    ///
    /// A refusal of an account admin's call on another account goes to the
    /// admin's own account's trail (and the operators'), never to the
    /// target's: one account's admin never sees another's token, name or
    /// reasons.
    pub fn record_refusal(
        &self,
        caller: &Caller,
        rpc: Rpc,
        account: &str,
        user: &str,
        code: &str,
        reason: &str,
    ) -> bool {
        let left_out = match self
            .refusals
            .admit(&caller.principal.token_id, Instant::now())
        {
            Admit::Record { left_out } => left_out,
            Admit::LeaveOut => return false,
        };
        let principal = &caller.principal;
        let mut reason = kept(reason, MAX_KEPT_REASON);
        let (account, user) = match &principal.account {
            Some(own) if principal.role == Role::AccountAdmin && own.as_str() != account => {
                reason = kept(
                    &format!(
                        "on account `{}`, user `{}`: {reason}",
                        kept(account, MAX_KEPT_ID),
                        kept(user, MAX_KEPT_ID)
                    ),
                    MAX_KEPT_REASON,
                );
                (own.as_str().to_owned(), String::new())
            }
            _ => (kept(account, MAX_KEPT_ID), kept(user, MAX_KEPT_ID)),
        };
        if left_out > 0 {
            reason.push_str(&format!(
                " ({left_out} earlier refusals of this token were not recorded: more than {REFUSALS_PER_SECOND} a second)"
            ));
        }
        let ctx = self.context(caller, rpc, &account, &user);
        if let Err(e) = self.store.record_refusal(ctx, code, &reason) {
            tracing::error!(error = %e, rpc = rpc.name(), "cannot record a refused write in the audit trail");
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_token_gets_its_burst_then_its_rate_and_others_are_untouched() {
        let limiter = RefusalLimiter::default();
        let start = Instant::now();
        for _ in 0..REFUSAL_BURST {
            assert!(matches!(
                limiter.admit("t1", start),
                Admit::Record { left_out: 0 }
            ));
        }
        assert!(matches!(limiter.admit("t1", start), Admit::LeaveOut));
        assert!(matches!(limiter.admit("t1", start), Admit::LeaveOut));
        // Another token has its own bucket.
        assert!(matches!(
            limiter.admit("t2", start),
            Admit::Record { left_out: 0 }
        ));
        // One second later the rate allows REFUSALS_PER_SECOND more, and
        // the first says how many were left out.
        let later = start + Duration::from_secs(1);
        assert!(matches!(
            limiter.admit("t1", later),
            Admit::Record { left_out: 2 }
        ));
        for _ in 1..REFUSALS_PER_SECOND {
            assert!(matches!(
                limiter.admit("t1", later),
                Admit::Record { left_out: 0 }
            ));
        }
        assert!(matches!(limiter.admit("t1", later), Admit::LeaveOut));
    }

    #[test]
    fn a_refusal_is_kept_only_while_its_token_is_within_its_rate() {
        let limiter = RefusalLimiter::default();
        assert!(limiter.may_keep("t1"), "a token never seen");
        let now = Instant::now();
        for _ in 0..REFUSAL_BURST {
            assert!(limiter.may_keep("t1"));
            let _ = limiter.admit("t1", now);
        }
        assert!(!limiter.may_keep("t1"));
        assert!(limiter.may_keep("t2"));
    }

    #[test]
    fn the_map_of_tokens_stays_bounded() {
        let limiter = RefusalLimiter::default();
        let start = Instant::now();
        for i in 0..TRACKED_TOKENS + 10 {
            let _ = limiter.admit(&format!("t{i}"), start);
        }
        // All of them used one record of a full bucket; a minute later
        // every bucket is full again and is forgotten on the next insert.
        let later = start + Duration::from_secs(60);
        let _ = limiter.admit("new", later);
        assert!(limiter.buckets.lock().len() <= 2);
    }
}
