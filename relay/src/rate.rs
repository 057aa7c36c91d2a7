//! Publish rate limits: one token bucket per (channel, user) on this replica, shared by all of that
//! user's connections here.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Above this many buckets, full (idle) ones are swept: a full bucket is the same as no bucket.
const SWEEP_ABOVE: usize = 50_000;

#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<(String, String), Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// Takes one token for `user` on `channel` at `per_second` (burst of one second's worth).
    /// Returns false when the bucket is empty. `per_second == 0` means no limit.
    pub fn allow(&self, channel: &str, user: &str, per_second: u32, now: Instant) -> bool {
        if per_second == 0 {
            return true;
        }
        let rate = f64::from(per_second);
        let mut buckets = self.buckets.lock().expect("rate limiter lock");
        if buckets.len() > SWEEP_ABOVE {
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < rate);
        }
        let b = buckets.entry((channel.to_owned(), user.to_owned())).or_insert(Bucket { tokens: rate, at: now });
        b.tokens = (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate).min(rate);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_a_burst_then_refills() {
        let r = RateLimiter::default();
        let t0 = Instant::now();
        let allowed = (0..10).filter(|_| r.allow("c", "u", 5, t0)).count();
        assert_eq!(allowed, 5);
        assert!(!r.allow("c", "u", 5, t0));
        // Another user and another channel have their own buckets.
        assert!(r.allow("c", "v", 5, t0));
        assert!(r.allow("d", "u", 5, t0));
        // 200ms at 5/s is one token.
        assert!(r.allow("c", "u", 5, t0 + Duration::from_millis(200)));
        assert!(!r.allow("c", "u", 5, t0 + Duration::from_millis(200)));
        assert!(r.allow("c", "u", 0, t0), "0 means unlimited");
    }
}
