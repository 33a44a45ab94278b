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
        let _ = self.latency.record(now.saturating_sub(sent).max(1));
        self.delivered += 1;
        Live::add(&live.delivered, 1);
    }
}

/// A map keyed by run (stream) id. The checkers look one up per frame and run, up to millions of times a second
/// at the ceiling: the server's hasher for run ids, not SipHash.
pub type RunMap<V> = HashMap<String, V, coworker::context::RunHasher>;

/// Checks that each stream's items arrive numbered 0, 1, 2, … with no gap and no step back.
#[derive(Default)]
pub struct Sequencer {
    next: RunMap<u64>,
}

/// Item `i`, sent at `sent` µs and seen at `now`, of a stream whose next item should be `want`.
fn check(want: &mut u64, i: u64, sent: u64, now: u64, tally: &mut Tally, live: &Live) {
    match i.cmp(want) {
        std::cmp::Ordering::Equal => {}
        std::cmp::Ordering::Greater => tally.lost += i - *want,
        std::cmp::Ordering::Less => tally.out_of_order += 1,
    }
    *want = i + 1;
    tally.record(live, sent, now);
}

impl Sequencer {
    /// Item `i` of `stream`, sent at `sent` µs, seen at `now`.
    pub fn see(&mut self, stream: &str, i: u64, sent: u64, now: u64, tally: &mut Tally, live: &Live) {
        self.see_all(stream, [Some((i, sent))], now, tally, live);
    }

    /// Tokens `"<n>:<sent µs>"` (the coworker scenarios' format) of `stream`, in order; anything else is an error.
    pub fn see_tokens<'t>(
        &mut self,
        stream: &str,
        tokens: impl IntoIterator<Item = Option<&'t str>>,
        now: u64,
        tally: &mut Tally,
        live: &Live,
    ) {
        let parse = |token: Option<&str>| {
            let (i, sent) = token?.split_once(':')?;
            Some((i.parse().ok()?, sent.parse().ok()?))
        };
        self.see_all(stream, tokens.into_iter().map(parse), now, tally, live);
    }

    /// Items `(number, sent µs)` of `stream` in order (`None`: an item that could not be read), with one lookup of
    /// the stream for all of them.
    fn see_all(
        &mut self,
        stream: &str,
        items: impl IntoIterator<Item = Option<(u64, u64)>>,
        now: u64,
        tally: &mut Tally,
        live: &Live,
    ) {
        let want = match self.next.get_mut(stream) {
            Some(want) => want,
            None => self.next.entry(stream.to_string()).or_insert(0),
        };
        for item in items {
            match item {
                Some((i, sent)) => check(want, i, sent, now, tally, live),
                None => tally.errors += 1,
            }
        }
    }
}

/// Counts `by` more items seen of `run` (the key is only allocated the first time).
pub fn advance(seen: &mut RunMap<usize>, run: &str, by: usize) {
    match seen.get_mut(run) {
        Some(c) => *c += by,
        None => {
            seen.insert(run.to_string(), by);
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
