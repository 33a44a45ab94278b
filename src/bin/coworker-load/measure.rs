//! What the load tool measures: live counters for the progress bar, per-subscriber tallies (HdrHistogram latency,
//! items, frames, losses), the per-run order check for numbered items, and the server's CPU time and RSS.

use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock microseconds, shared by producers and subscribers (one machine, one clock).
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// The server's CPU time (µs, user + system) and RSS (bytes), from /proc.
pub fn server_usage(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit(')').next()?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let hz = 100; // USER_HZ on Linux
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    Some((ticks * 1_000_000 / hz, rss_kb * 1024))
}

/// Counters the progress bar reads while the load runs.
#[derive(Default)]
pub struct Live {
    pub produced: AtomicU64,
    pub delivered: AtomicU64,
    pub frames: AtomicU64,
    pub errors: AtomicU64,
}

impl Live {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// What one subscriber (or all of them, merged) saw.
pub struct Tally {
    /// Item-to-subscriber latency in µs.
    pub latency: Histogram<u64>,
    pub delivered: u64,
    pub frames: u64,
    pub bytes: u64,
    pub lost: u64,
    pub out_of_order: u64,
    pub errors: u64,
    pub reconnects: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            latency: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"),
            delivered: 0,
            frames: 0,
            bytes: 0,
            lost: 0,
            out_of_order: 0,
            errors: 0,
            reconnects: 0,
        }
    }
}

impl Tally {
    pub fn merge(&mut self, other: &Tally) {
        let _ = self.latency.add(&other.latency);
        self.delivered += other.delivered;
        self.frames += other.frames;
        self.bytes += other.bytes;
        self.lost += other.lost;
        self.out_of_order += other.out_of_order;
        self.errors += other.errors;
        self.reconnects += other.reconnects;
    }

    /// One item that arrived at `now` after being sent at `sent` (both µs).
    pub fn record(&mut self, live: &Live, sent: u64, now: u64) {
        self.count(sent, now);
        Live::add(&live.delivered, 1);
    }

    /// One item, counted here only: the caller adds a batch of them to the live counter at once (a shared atomic
    /// per item was a visible share of the load tool's time at millions of items a second).
    fn count(&mut self, sent: u64, now: u64) {
        let _ = self.latency.record(now.saturating_sub(sent).max(1));
        self.delivered += 1;
    }
}

/// A map keyed by run (stream) id. The checkers look one up per frame and run, up to millions of times a second
/// at the ceiling: the server's hasher for run ids, not SipHash.
pub type RunMap<V> = HashMap<String, V, coworker::model::context::RunHasher>;

/// Checks that each stream's items arrive numbered 0, 1, 2, … with no gap and no step back, and counts the items
/// each stream brought, so that a whole list can be told apart from what was already seen of it.
#[derive(Default)]
pub struct Sequencer {
    /// Each stream's place in `streams`.
    index: RunMap<usize>,
    streams: Vec<Stream>,
}

/// What a [`Sequencer`] knows of one stream.
#[derive(Default)]
struct Stream {
    /// The number the next item should have.
    want: u64,
    /// How many items were seen (readable or not).
    seen: usize,
}

/// Item `i`, sent at `sent` µs and seen at `now`, of a stream whose next item should be `want` (counted in
/// `tally` only; the caller adds to the live counter).
fn check(want: &mut u64, i: u64, sent: u64, now: u64, tally: &mut Tally) {
    match i.cmp(want) {
        std::cmp::Ordering::Equal => {}
        std::cmp::Ordering::Greater => tally.lost += i - *want,
        std::cmp::Ordering::Less => tally.out_of_order += 1,
    }
    *want = i + 1;
    tally.count(sent, now);
}

/// `"<n>:<sent µs>"`, the coworker scenarios' token format.
pub fn token(text: Option<&str>) -> Option<(u64, u64)> {
    let (i, sent) = text?.split_once(':')?;
    Some((i.parse().ok()?, sent.parse().ok()?))
}

impl Sequencer {
    /// Item `i` of `stream`, sent at `sent` µs, seen at `now`.
    pub fn see(&mut self, stream: &str, i: u64, sent: u64, now: u64, tally: &mut Tally, live: &Live) {
        self.with_stream(stream, |s| s.see([Some((i, sent))], now, tally, live));
    }

    /// A stream's place, for [`Sequencer::see_numbered`]: it stays the stream's for the sequencer's life.
    pub fn slot(&mut self, stream: &str) -> usize {
        if let Some(&slot) = self.index.get(stream) {
            return slot;
        }
        self.streams.push(Stream::default());
        self.index.insert(stream.to_string(), self.streams.len() - 1);
        self.streams.len() - 1
    }

    /// New items `(number, sent µs)`, in order and already read, of the stream at `slot`; counted in `tally` only:
    /// the caller adds what `tally.delivered` grew by to the live counter, once for many calls.
    pub fn see_numbered(&mut self, slot: usize, items: &[(u64, u64)], now: u64, tally: &mut Tally) {
        self.streams[slot].count(items.iter().map(|&item| Some(item)), now, tally);
    }

    /// New tokens of `stream`, in order; anything not in the token format is an error.
    pub fn see_tokens<'t>(
        &mut self,
        stream: &str,
        tokens: impl IntoIterator<Item = Option<&'t str>>,
        now: u64,
        tally: &mut Tally,
        live: &Live,
    ) {
        self.with_stream(stream, |s| s.see(tokens.into_iter().map(token), now, tally, live));
    }

    /// All of `stream`'s tokens so far (a run's whole list, from a snapshot or a replaced value), each read with
    /// `text`: those past the ones already seen are new.
    pub fn see_token_list<T>(
        &mut self,
        stream: &str,
        tokens: &[T],
        text: impl Fn(&T) -> Option<&str>,
        now: u64,
        tally: &mut Tally,
        live: &Live,
    ) {
        self.with_stream(stream, |s| {
            let new = tokens.get(s.seen..).unwrap_or_default();
            s.see(new.iter().map(|t| token(text(t))), now, tally, live)
        });
    }

    /// Runs `f` on `stream`'s state (the key is only allocated the first time).
    fn with_stream<R>(&mut self, stream: &str, f: impl FnOnce(&mut Stream) -> R) -> R {
        let slot = self.slot(stream);
        f(&mut self.streams[slot])
    }
}

impl Stream {
    /// Items `(number, sent µs)` in order (`None`: an item that could not be read).
    fn see(&mut self, items: impl IntoIterator<Item = Option<(u64, u64)>>, now: u64, tally: &mut Tally, live: &Live) {
        let before = tally.delivered;
        self.count(items, now, tally);
        Live::add(&live.delivered, tally.delivered - before);
    }

    /// The same, counted in `tally` only.
    fn count(&mut self, items: impl IntoIterator<Item = Option<(u64, u64)>>, now: u64, tally: &mut Tally) {
        for item in items {
            self.seen += 1;
            match item {
                Some((i, sent)) => check(&mut self.want, i, sent, now, tally),
                None => tally.errors += 1,
            }
        }
    }
}

/// A small deterministic generator (xorshift64*) for human-like timings; the same seed gives the same load.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn some<'r>(t: &'r &str) -> Option<&'r str> {
        Some(t)
    }

    /// (delivered, lost, out of order, errors)
    fn counts(t: &Tally) -> (u64, u64, u64, u64) {
        (t.delivered, t.lost, t.out_of_order, t.errors)
    }

    #[test]
    fn numbers_in_order_pass_and_gaps_and_steps_back_count() {
        let (mut seq, mut t, live) = (Sequencer::default(), Tally::default(), Live::default());
        seq.see_tokens("a", [Some("0:5"), Some("1:5")], 9, &mut t, &live);
        seq.see_tokens("b", [Some("0:5")], 9, &mut t, &live);
        assert_eq!(counts(&t), (3, 0, 0, 0));
        seq.see_tokens("a", [Some("4:5"), Some("2:5"), Some("x"), None], 9, &mut t, &live);
        assert_eq!(counts(&t), (5, 2, 1, 2), "2 and 3 lost, 2 after 4 out of order, two unreadable");
    }

    #[test]
    fn a_whole_list_brings_only_what_was_not_seen() {
        let (mut seq, mut t, live) = (Sequencer::default(), Tally::default(), Live::default());
        seq.see_token_list("a", &["0:1", "1:1"], some, 9, &mut t, &live);
        seq.see_tokens("a", [Some("2:1"), Some("3:1")], 9, &mut t, &live);
        seq.see_token_list("a", &["0:1", "1:1", "2:1", "3:1", "4:1"], some, 9, &mut t, &live);
        assert_eq!(counts(&t), (5, 0, 0, 0));
        // A list no longer than what was seen brings nothing; another run's list is its own.
        seq.see_token_list("a", &["0:1"], some, 9, &mut t, &live);
        seq.see_token_list("b", &["0:1"], some, 9, &mut t, &live);
        assert_eq!(counts(&t), (6, 0, 0, 0));
        // An unreadable item was seen too: the list's first item is skipped, and the number 0 never came.
        seq.see_tokens("c", [None], 9, &mut t, &live);
        seq.see_token_list("c", &["0:1", "1:1"], some, 9, &mut t, &live);
        assert_eq!(counts(&t), (7, 1, 0, 1));
    }
}
