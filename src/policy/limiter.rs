//! The token bucket behind `rate_limiting` and `bytes_limiting`: Go's `golang.org/x/time/rate`
//! `Limiter.AllowN`, which the Collector uses.
//!
//! Tokens refill continuously at `rate` per second up to `burst`; the bucket starts full. A
//! request for `n` tokens passes when `n <= burst` and `n` tokens are available, and then takes
//! them; a refused request takes nothing, so a later smaller one may still pass. A request larger
//! than the burst never passes. Time comes from `tokio::time::Instant`, so tests can pause and
//! advance the clock.

use std::sync::Mutex;

use tokio::time::Instant;

pub struct TokenBucket {
    rate: f64,
    burst: i64,
    state: Mutex<State>,
}

struct State {
    tokens: f64,
    /// When tokens were last taken; `None` until the first request (the bucket is full then).
    last: Option<Instant>,
}

impl TokenBucket {
    pub fn new(per_second: i64, burst: i64) -> Self {
        Self {
            rate: per_second as f64,
            burst,
            state: Mutex::new(State {
                tokens: burst as f64,
                last: None,
            }),
        }
    }

    /// Takes `n` tokens if the bucket holds them.
    pub fn allow(&self, n: u64) -> bool {
        let now = Instant::now();
        let Ok(n) = i64::try_from(n) else {
            return false;
        };
        if n > self.burst {
            return false;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let refill = state.last.map_or(0.0, |last| {
            now.saturating_duration_since(last).as_secs_f64() * self.rate
        });
        let available = (state.tokens + refill).min(self.burst as f64);
        if available < n as f64 {
            return false;
        }
        state.tokens = available - n as f64;
        state.last = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::advance;

    #[tokio::test(start_paused = true)]
    async fn the_bucket_starts_full_and_refills_at_the_rate() {
        let b = TokenBucket::new(10, 20);
        assert!(b.allow(20));
        assert!(!b.allow(1));
        advance(Duration::from_millis(100)).await;
        assert!(b.allow(1));
        assert!(!b.allow(1));
        advance(Duration::from_secs(60)).await;
        // Refill stops at the burst.
        assert!(!b.allow(21));
        assert!(b.allow(20));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_request_takes_nothing() {
        let b = TokenBucket::new(10, 10);
        assert!(b.allow(8));
        assert!(!b.allow(5));
        assert!(b.allow(2));
    }

    #[tokio::test(start_paused = true)]
    async fn more_than_the_burst_never_passes_and_zero_rate_never_refills() {
        let b = TokenBucket::new(100, 5);
        assert!(!b.allow(6));
        let z = TokenBucket::new(0, 3);
        assert!(z.allow(3));
        advance(Duration::from_secs(3600)).await;
        assert!(!z.allow(1));
        assert!(TokenBucket::new(0, 0).allow(0));
    }
}
