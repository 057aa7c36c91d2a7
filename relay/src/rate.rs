//! Publish rate limits: `limits.publishPerSecondPerUser` per user on each declared channel (a
//! `RelayChannel` and all its sub-channels share one allowance, so `chat.<random>` is no way
//! around it), on this replica (with R replicas a user spread over all of them gets up to R times
//! the rate). GCRA buckets from `governor`, bounded: idle users are forgotten.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultKeyedRateLimiter, Quota};

/// Declared channels whose limiters are kept at most.
const CHANNELS: u64 = 10_000;
/// Users tracked per channel before idle ones are forgotten.
const USERS: usize = 50_000;

pub struct RateLimiter {
    /// declared channel -> (rate, its per-user limiter).
    channels: moka::sync::Cache<String, Arc<(u32, DefaultKeyedRateLimiter<String>)>>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self { channels: moka::sync::Cache::new(CHANNELS) }
    }
}

impl RateLimiter {
    /// Takes one publish for `user` on the channel `declared_by` governs, at `per_second` (a burst
    /// of one second's worth). False when the user is over it. `per_second == 0`: no limit.
    pub fn allow(&self, declared_by: &str, user: &str, per_second: u32) -> bool {
        let Some(rate) = NonZeroU32::new(per_second) else { return true };
        let mut limiter = self.channels.get_with(declared_by.to_owned(), || {
            Arc::new((per_second, governor::RateLimiter::keyed(Quota::per_second(rate))))
        });
        if limiter.0 != per_second {
            // The channel's limit changed: start over with the new one.
            limiter = Arc::new((per_second, governor::RateLimiter::keyed(Quota::per_second(rate))));
            self.channels.insert(declared_by.to_owned(), limiter.clone());
        }
        if limiter.1.len() > USERS {
            limiter.1.retain_recent();
        }
        limiter.1.check_key(&user.to_owned()).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_gets_a_burst_per_declared_channel_then_is_refused() {
        let r = RateLimiter::default();
        let allowed = (0..10).filter(|_| r.allow("chat", "u", 5)).count();
        assert_eq!(allowed, 5);
        assert!(!r.allow("chat", "u", 5));
        // Another user and another declared channel have their own allowance.
        assert!(r.allow("chat", "v", 5));
        assert!(r.allow("news", "u", 5));
        assert!(r.allow("chat", "u", 0), "0 means unlimited");
        // A changed limit applies at once.
        assert!(r.allow("chat", "u", 50));
    }
}
