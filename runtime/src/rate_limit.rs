//! Per-key token buckets. In memory on one node; the `RateLimiter` trait is the seam where a
//! shared store (Redis) plugs in for a multi-node deployment.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use uuid::Uuid;

/// Decides whether a key may make another request now.
pub trait RateLimiter: Send + Sync + std::fmt::Debug {
    /// `Ok` to proceed, or `Err(seconds)` to wait before retrying.
    fn check(&self, key_id: Uuid) -> Result<(), u64>;
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled_at: Instant,
}

/// A token bucket per key: `burst` tokens at most, refilled at `rate` per second.
#[derive(Debug)]
pub struct InMemoryRateLimiter {
    rate_per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<Uuid, Bucket>>,
}

/// Buckets kept before idle ones are swept, so memory stays bounded.
const SWEEP_THRESHOLD: usize = 10_000;

impl InMemoryRateLimiter {
    pub fn new(rate_per_second: f64, burst: u32) -> Self {
        Self { rate_per_second, burst: f64::from(burst), buckets: Mutex::new(HashMap::new()) }
    }

    fn check_at(&self, key_id: Uuid, now: Instant) -> Result<(), u64> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() >= SWEEP_THRESHOLD {
            // A bucket that would be full again carries no state worth keeping.
            let full_after = self.burst / self.rate_per_second;
            buckets.retain(|_, bucket| now.duration_since(bucket.refilled_at).as_secs_f64() < full_after);
        }
        let bucket = buckets.entry(key_id).or_insert(Bucket { tokens: self.burst, refilled_at: now });
        let elapsed = now.duration_since(bucket.refilled_at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate_per_second).min(self.burst);
        bucket.refilled_at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.rate_per_second;
            Err(wait.ceil().max(1.0) as u64)
        }
    }
}

impl RateLimiter for InMemoryRateLimiter {
    fn check(&self, key_id: Uuid) -> Result<(), u64> {
        self.check_at(key_id, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn burst_then_refill() {
        let limiter = InMemoryRateLimiter::new(2.0, 3);
        let key = Uuid::now_v7();
        let start = Instant::now();
        for _ in 0..3 {
            limiter.check_at(key, start).unwrap();
        }
        assert_eq!(limiter.check_at(key, start), Err(1));
        limiter.check_at(key, start + Duration::from_millis(600)).unwrap();
        let other = Uuid::now_v7();
        limiter.check_at(other, start).unwrap();
    }

    #[test]
    fn retry_after_reflects_slow_rates() {
        let limiter = InMemoryRateLimiter::new(0.1, 1);
        let key = Uuid::now_v7();
        let start = Instant::now();
        limiter.check_at(key, start).unwrap();
        assert_eq!(limiter.check_at(key, start), Err(10));
    }
}
