//! Per-user rate limits, enforced by each node for the requests it serves: a token bucket
//! per limited user, refilled at the user's rate and holding at most one second's worth.
//! A request costs the messages it carries (send, ack, nack, extend) or 1 (anything
//! else). A request bigger than the bucket goes through when the bucket is full and leaves
//! it in debt, so large batches are slowed, never refused forever.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::protocol::{Request, Status, UserInfo};

use super::Failure;

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// The buckets of the users with a limit.
#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// What a request costs.
pub fn cost(req: &Request) -> u32 {
    let n = match req {
        Request::Send { messages, .. } => messages.len(),
        Request::Ack { receipts, .. } => receipts.len(),
        Request::Nack { entries, .. } | Request::ChangeVisibility { entries, .. } => entries.len(),
        _ => 1,
    };
    n.max(1) as u32
}

impl RateLimiter {
    /// Takes `cost` tokens from `user`'s bucket, or refuses with `THROTTLED`.
    pub fn take(&self, user: &UserInfo, cost: u32) -> Result<(), Failure> {
        self.take_at(user, cost, Instant::now())
    }

    fn take_at(&self, user: &UserInfo, cost: u32, now: Instant) -> Result<(), Failure> {
        if user.rate_limit == 0 {
            return Ok(());
        }
        let rate = f64::from(user.rate_limit);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let b = buckets.entry(user.name.clone()).or_insert(Bucket {
            tokens: rate,
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(rate);
        b.last = now;
        let cost = f64::from(cost);
        if b.tokens >= cost.min(rate) {
            b.tokens -= cost;
            return Ok(());
        }
        let wait_ms = ((cost.min(rate) - b.tokens) / rate * 1000.0).ceil() as u64;
        Err((
            Status::Throttled,
            format!(
                "user `{}` is over its rate limit of {} messages/s on this node; retry in about {wait_ms} ms",
                user.name, user.rate_limit
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn user(rate: u32) -> UserInfo {
        UserInfo {
            name: "bob".into(),
            created_ms: 0,
            token_set_ms: 0,
            grants: vec![],
            rate_limit: rate,
        }
    }

    #[test]
    fn a_bucket_holds_one_second_and_refills_at_the_rate() {
        let l = RateLimiter::default();
        let t0 = Instant::now();
        let u = user(10);
        for _ in 0..10 {
            l.take_at(&u, 1, t0).unwrap();
        }
        let (status, msg) = l.take_at(&u, 1, t0).unwrap_err();
        assert_eq!(status, Status::Throttled);
        assert!(msg.contains("retry in about 100 ms"), "{msg}");
        // 300 ms later, 3 more.
        let t1 = t0 + Duration::from_millis(300);
        for _ in 0..3 {
            l.take_at(&u, 1, t1).unwrap();
        }
        assert!(l.take_at(&u, 1, t1).is_err());
        // A batch larger than the bucket passes when it is full, then the debt is paid.
        let t2 = t1 + Duration::from_secs(5);
        l.take_at(&u, 25, t2).unwrap();
        assert!(l.take_at(&u, 1, t2 + Duration::from_secs(1)).is_err());
        l.take_at(&u, 1, t2 + Duration::from_millis(2600)).unwrap();
        // No limit, no bucket.
        l.take_at(&user(0), 1_000_000, t0).unwrap();
    }
}
