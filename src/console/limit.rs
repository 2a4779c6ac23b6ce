//! Failed sign-ins, rate limited per client address and overall. A token's
//! secret has 256 random bits, so guessing is hopeless anyway; the limit
//! keeps a guesser from costing the server or filling its logs. While an
//! address (or everyone) is over the limit, every sign-in from it is
//! refused, the right token too, so the limit cannot be used as an oracle.

use std::{collections::HashMap, net::IpAddr, time::Instant};

use parking_lot::Mutex;

/// Failed sign-ins one address may make at once, then one per
/// `ADDRESS_REFILL_SECS` seconds.
pub const ADDRESS_BURST: u32 = 5;
pub const ADDRESS_REFILL_SECS: u64 = 12;
/// Failed sign-ins from everyone together: at once, then one a second.
pub const OVERALL_BURST: u32 = 100;
pub const OVERALL_REFILL_SECS: u64 = 1;
/// Addresses remembered; past that, addresses whose buckets have refilled
/// are forgotten, and new ones meet only the overall limit until then.
const TRACKED_ADDRESSES: usize = 10_000;

#[derive(Clone, Copy)]
struct Bucket {
    /// Failures that may still happen now, in thousandths.
    milli: u64,
    at: Instant,
}

impl Bucket {
    fn full(burst: u32, now: Instant) -> Self {
        Bucket {
            milli: u64::from(burst) * 1000,
            at: now,
        }
    }

    fn level(&self, burst: u32, refill_secs: u64, now: Instant) -> u64 {
        let gained = now.saturating_duration_since(self.at).as_millis() / u128::from(refill_secs);
        let gained = u64::try_from(gained).unwrap_or(u64::MAX);
        self.milli
            .saturating_add(gained)
            .min(u64::from(burst) * 1000)
    }
}

pub struct SignInLimiter {
    addresses: Mutex<HashMap<IpAddr, Bucket>>,
    overall: Mutex<Bucket>,
}

impl Default for SignInLimiter {
    fn default() -> Self {
        SignInLimiter {
            addresses: Mutex::new(HashMap::new()),
            overall: Mutex::new(Bucket::full(OVERALL_BURST, Instant::now())),
        }
    }
}

impl SignInLimiter {
    /// Whether a sign-in from `addr` may be tried now.
    pub fn may_try(&self, addr: IpAddr, now: Instant) -> bool {
        let overall = self
            .overall
            .lock()
            .level(OVERALL_BURST, OVERALL_REFILL_SECS, now);
        let address = self.addresses.lock().get(&addr).map_or(u64::MAX, |b| {
            b.level(ADDRESS_BURST, ADDRESS_REFILL_SECS, now)
        });
        overall >= 1000 && address >= 1000
    }

    /// A sign-in from `addr` failed.
    pub fn failed(&self, addr: IpAddr, now: Instant) {
        {
            let mut overall = self.overall.lock();
            let level = overall.level(OVERALL_BURST, OVERALL_REFILL_SECS, now);
            *overall = Bucket {
                milli: level.saturating_sub(1000),
                at: now,
            };
        }
        let mut addresses = self.addresses.lock();
        if addresses.len() >= TRACKED_ADDRESSES && !addresses.contains_key(&addr) {
            let full = u64::from(ADDRESS_BURST) * 1000;
            addresses.retain(|_, b| b.level(ADDRESS_BURST, ADDRESS_REFILL_SECS, now) < full);
            if addresses.len() >= TRACKED_ADDRESSES {
                return;
            }
        }
        let bucket = addresses
            .entry(addr)
            .or_insert_with(|| Bucket::full(ADDRESS_BURST, now));
        let level = bucket.level(ADDRESS_BURST, ADDRESS_REFILL_SECS, now);
        *bucket = Bucket {
            milli: level.saturating_sub(1000),
            at: now,
        };
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn an_address_gets_its_burst_then_waits() {
        let limiter = SignInLimiter::default();
        let now = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..ADDRESS_BURST {
            assert!(limiter.may_try(a, now));
            limiter.failed(a, now);
        }
        assert!(!limiter.may_try(a, now));
        assert!(limiter.may_try(b, now), "another address is not held back");
        let later = now + Duration::from_secs(ADDRESS_REFILL_SECS);
        assert!(limiter.may_try(a, later));
    }

    #[test]
    fn everyone_together_is_limited_too() {
        let limiter = SignInLimiter::default();
        let now = Instant::now();
        for i in 0..OVERALL_BURST {
            let addr = IpAddr::from([10, 0, (i / 256) as u8, (i % 256) as u8]);
            limiter.failed(addr, now);
        }
        assert!(!limiter.may_try("192.0.2.9".parse().unwrap(), now));
        let later = now + Duration::from_secs(OVERALL_REFILL_SECS);
        assert!(limiter.may_try("192.0.2.9".parse().unwrap(), later));
    }
}
