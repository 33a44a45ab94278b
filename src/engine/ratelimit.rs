//! A token bucket: `rate` units per second sustained, `burst` at once (messages, bytes, or run starts). A request
//! that finds too few tokens is refused (`rate_limited`) and counted; a client that keeps sending after `burst`
//! refusals in a row (or as many as set with [`TokenBucket::close_after`]) is closed (1008). Time is tokio's
//! clock, so tests can pause it.

use tokio::time::Instant;

#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    refused_in_a_row: u64,
    close_after: u64,
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
    pub fn new(rate: impl Into<u64>, burst: impl Into<u64>) -> TokenBucket {
        let (rate, burst) = (rate.into(), burst.into());
        TokenBucket {
            rate: rate as f64,
            burst: burst as f64,
            tokens: burst as f64,
            last: Instant::now(),
            refused_in_a_row: 0,
            close_after: burst,
        }
    }

    /// Closes after `n` refusals in a row instead of `burst`.
    pub fn close_after(mut self, n: u64) -> TokenBucket {
        self.close_after = n;
        self
    }

    pub fn check(&mut self) -> Verdict {
        self.check_at(Instant::now())
    }

    /// [`TokenBucket::check`] at `now` (a clock the caller already read).
    pub fn check_at(&mut self, now: Instant) -> Verdict {
        self.take_at(now, 1)
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.add(elapsed);
    }

    fn add(&mut self, secs: f64) {
        self.tokens = (self.tokens + secs * self.rate).min(self.burst);
    }

    /// Takes `n` tokens at `now` (at most the bucket's size: a request larger than the burst needs a full bucket).
    pub fn take_at(&mut self, now: Instant, n: u64) -> Verdict {
        self.refill(now);
        self.take(n)
    }

    fn take(&mut self, n: u64) -> Verdict {
        let n = (n as f64).min(self.burst);
        if self.tokens >= n {
            self.tokens -= n;
            self.refused_in_a_row = 0;
            return Verdict::Allow;
        }
        self.refused_in_a_row += 1;
        if self.refused_in_a_row > self.close_after { Verdict::Close } else { Verdict::Refuse }
    }

    /// Whether the bucket has refilled completely by `now` (its holder has nothing left to wait for).
    pub fn is_full_at(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// A connection's two rates, messages and payload bytes, refilled together from one reading of the clock. A message
/// must pass both; a refused one takes nothing from either.
#[derive(Debug)]
pub struct ConnectionRate {
    messages: TokenBucket,
    bytes: TokenBucket,
    last: Instant,
}

impl ConnectionRate {
    /// Closes after `messages.burst` refusals in a row, by either rate.
    pub fn new(messages_per_second: u32, message_burst: u32, bytes_per_second: u64, byte_burst: u64) -> Self {
        let close_after = u64::from(message_burst);
        ConnectionRate {
            messages: TokenBucket::new(messages_per_second, message_burst),
            bytes: TokenBucket::new(bytes_per_second, byte_burst).close_after(close_after),
            last: Instant::now(),
        }
    }

    /// Whether a message of `len` payload bytes may be handled at `now`.
    pub fn check_at(&mut self, now: Instant, len: usize) -> Verdict {
        let secs = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.messages.add(secs);
        self.bytes.add(secs);
        let verdict = self.messages.take(1);
        if verdict != Verdict::Allow {
            return verdict;
        }
        match self.bytes.take(len as u64) {
            Verdict::Allow => Verdict::Allow,
            refused => {
                self.messages.tokens += 1.0;
                self.messages.refused_in_a_row = self.bytes.refused_in_a_row;
                refused
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn bursts_then_refuses_then_closes_and_refills_with_time() {
        let mut b = TokenBucket::new(100u32, 10u32);
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
        // Tokens taken by weight (bytes): a request larger than what is left waits for the refill.
        let mut b = TokenBucket::new(1_000u32, 1_000u32).close_after(2);
        assert_eq!(b.take_at(Instant::now(), 800), Verdict::Allow);
        assert_eq!(b.take_at(Instant::now(), 300), Verdict::Refuse);
        assert_eq!(b.take_at(Instant::now(), 5_000), Verdict::Refuse, "past the burst it needs a full bucket");
        assert_eq!(b.take_at(Instant::now(), 300), Verdict::Close, "after close_after refusals in a row");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.is_full_at(Instant::now()));
        assert_eq!(b.take_at(Instant::now(), 5_000), Verdict::Allow);
        // A sustained rate at the limit is never refused.
        let mut b = TokenBucket::new(10_000u32, 5_000u32);
        for _ in 0..20_000 {
            tokio::time::advance(Duration::from_micros(100)).await;
            assert_eq!(b.check(), Verdict::Allow);
        }
    }
}
