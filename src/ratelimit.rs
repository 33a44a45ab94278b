//! A token bucket per connection: `rate` messages per second sustained, `burst` at once. A message that finds the
//! bucket empty is refused (`rate_limited`) and counted; a client that keeps sending after `burst` refusals in a
//! row is closed (1008). Time is tokio's clock, so tests can pause it.

use tokio::time::Instant;

#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    refused_in_a_row: u64,
}

/// What to do with one message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Refuse it with `rate_limited`.
    Refuse,
    /// The client ignored the refusals: close the connection.
    Close,
}

impl TokenBucket {
    pub fn new(rate: u32, burst: u32) -> TokenBucket {
        TokenBucket {
            rate: rate as f64,
            burst: burst as f64,
            tokens: burst as f64,
            last: Instant::now(),
            refused_in_a_row: 0,
        }
    }

    pub fn check(&mut self) -> Verdict {
        self.check_at(Instant::now())
    }

    /// [`TokenBucket::check`] at `now` (a clock the caller already read).
    pub fn check_at(&mut self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused_in_a_row = 0;
            return Verdict::Allow;
        }
        self.refused_in_a_row += 1;
        if self.refused_in_a_row > self.burst as u64 { Verdict::Close } else { Verdict::Refuse }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn bursts_then_refuses_then_closes_and_refills_with_time() {
        let mut b = TokenBucket::new(100, 10);
        for _ in 0..10 {
            assert_eq!(b.check(), Verdict::Allow);
        }
        assert_eq!(b.check(), Verdict::Refuse);
        tokio::time::advance(Duration::from_millis(50)).await;
        for _ in 0..5 {
            assert_eq!(b.check(), Verdict::Allow, "50 ms at 100/s refills 5");
        }
        for _ in 0..10 {
            assert_eq!(b.check(), Verdict::Refuse);
        }
        assert_eq!(b.check(), Verdict::Close);
        // A sustained rate at the limit is never refused.
        let mut b = TokenBucket::new(10_000, 5_000);
        for _ in 0..20_000 {
            tokio::time::advance(Duration::from_micros(100)).await;
            assert_eq!(b.check(), Verdict::Allow);
        }
    }
}
