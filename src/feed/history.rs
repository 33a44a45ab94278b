//! Resume history of one space: the rendered diff of each recent tick for every view set that has, or recently
//! had, a subscriber. A subscriber that reconnects with `since: {epoch, seq}` gets the diffs after `seq` from here,
//! or a fresh snapshot (`resync`) when they are gone. Bounded in ticks, bytes and age per space, and in bytes
//! across all spaces ([`HistoryBudget`]); a view set stays rendered for [`History::WINDOW`] after its last
//! subscriber left, so that subscriber can come back.

use crate::space::views::ViewSet;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// The bytes of rendered diffs every space's history holds together, and their cap: a space that pushes a tick
/// while the total is over the cap forgets its own oldest ticks first.
#[derive(Debug)]
pub struct HistoryBudget {
    bytes: AtomicUsize,
    cap: usize,
}

impl HistoryBudget {
    pub fn new(cap: usize) -> Arc<HistoryBudget> {
        Arc::new(HistoryBudget { bytes: AtomicUsize::new(0), cap })
    }

    /// Bytes held by every space's history.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    fn over(&self) -> bool {
        self.bytes() > self.cap
    }
}

/// A view set being rendered every tick.
#[derive(Debug)]
struct Known {
    views: ViewSet,
    /// Diffs for this set exist for every tick after this seq.
    since: u64,
    /// When its last subscriber left (`None` while it has some).
    idle_since: Option<Instant>,
}

/// One tick's rendered op lists (`None` where the set saw no change), and when it was pushed.
struct Tick {
    /// The seq of the tick before it: this tick holds every change after `base` up to `seq`.
    base: u64,
    seq: u64,
    diffs: Vec<(ViewSet, Option<Arc<str>>)>,
    at: Instant,
}

impl Tick {
    fn bytes(&self) -> usize {
        self.diffs.iter().filter_map(|(_, c)| c.as_ref()).map(|c| c.len()).sum()
    }
}

impl std::fmt::Debug for Tick {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tick({})", self.seq)
    }
}

#[derive(Debug)]
pub struct History {
    ticks: VecDeque<Tick>,
    bytes: usize,
    known: Vec<Known>,
    /// The seq of the newest tick pushed.
    last: u64,
    budget: Arc<HistoryBudget>,
}

impl Drop for History {
    fn drop(&mut self) {
        self.budget.bytes.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl History {
    /// Ticks kept at most.
    pub const MAX_TICKS: usize = 4096;
    /// Bytes of rendered ops kept at most.
    pub const MAX_BYTES: usize = 4 * 1024 * 1024;
    /// How long a view set stays rendered after its last subscriber left, and how long a tick is kept.
    pub const WINDOW: Duration = Duration::from_secs(60);

    pub fn new(budget: Arc<HistoryBudget>) -> History {
        History { ticks: VecDeque::new(), bytes: 0, known: Vec::new(), last: 0, budget }
    }

    /// The view sets to render this tick.
    pub fn sets(&self) -> Vec<ViewSet> {
        self.known.iter().map(|k| k.views).collect()
    }

    /// A subscriber of `views` joined at `seq`.
    pub fn subscribed(&mut self, views: ViewSet, seq: u64) {
        match self.known.iter_mut().find(|k| k.views == views) {
            Some(k) => k.idle_since = None,
            None => self.known.push(Known { views, since: seq, idle_since: None }),
        }
    }

    /// The last subscriber of `views` left.
    pub fn idle(&mut self, views: ViewSet) {
        if let Some(k) = self.known.iter_mut().find(|k| k.views == views) {
            k.idle_since = Some(Instant::now());
        }
    }

    /// Records a closed tick's rendered diffs, then forgets what is too old or too big.
    pub fn push(&mut self, seq: u64, diffs: Vec<(ViewSet, Option<Arc<str>>)>) {
        let now = Instant::now();
        let tick = Tick { base: self.last, seq, diffs, at: now };
        let bytes = tick.bytes();
        self.bytes += bytes;
        self.budget.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.ticks.push_back(tick);
        self.last = seq;
        self.expire(now);
        while self.ticks.len() > Self::MAX_TICKS || self.bytes > Self::MAX_BYTES || self.budget.over() {
            if !self.pop() {
                break;
            }
        }
        self.known.retain(|k| k.idle_since.is_none_or(|t| now.duration_since(t) < Self::WINDOW));
    }

    /// Forgets ticks older than [`History::WINDOW`], and view sets idle for longer.
    pub fn expire(&mut self, now: Instant) {
        while self.ticks.front().is_some_and(|t| now.duration_since(t.at) >= Self::WINDOW) {
            self.pop();
        }
        self.known.retain(|k| k.idle_since.is_none_or(|t| now.duration_since(t) < Self::WINDOW));
    }

    /// When the history will hold nothing if nothing more happens (`None`: a view set still has subscribers).
    pub fn empty_at(&self) -> Option<Instant> {
        let mut at = self.ticks.back().map(|t| t.at + Self::WINDOW);
        for k in &self.known {
            let idle_end = k.idle_since? + Self::WINDOW;
            at = Some(at.map_or(idle_end, |a| a.max(idle_end)));
        }
        Some(at.unwrap_or_else(Instant::now))
    }

    fn pop(&mut self) -> bool {
        let Some(old) = self.ticks.pop_front() else { return false };
        let bytes = old.bytes();
        self.bytes -= bytes;
        self.budget.bytes.fetch_sub(bytes, Ordering::Relaxed);
        true
    }

    /// Whether it holds nothing: no tick, and no view set still within its window.
    pub fn is_empty(&self) -> bool {
        self.ticks.is_empty() && self.known.is_empty()
    }

    /// The seq of the newest tick pushed.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// The op lists for `views` of every tick after `base` (empty: nothing changed), or `None` when they are not
    /// all here. `position` is the space's position now: a `base` past the last tick but not past `position` is
    /// a state no tick has changed since.
    pub fn after(&self, views: ViewSet, base: u64, position: u64) -> Option<Vec<Arc<str>>> {
        let known = self.known.iter().find(|k| k.views == views)?;
        if base > position || known.since > base {
            return None;
        }
        if base >= self.last {
            return Some(Vec::new());
        }
        if self.ticks.front()?.base > base {
            return None;
        }
        Some(
            self.ticks
                .iter()
                .filter(|t| t.seq > base)
                .filter_map(|t| t.diffs.iter().find(|(v, _)| *v == views).and_then(|(_, c)| c.clone()))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::views::View;

    fn after(h: &History, views: ViewSet, base: u64) -> Option<Vec<Arc<str>>> {
        h.after(views, base, h.last())
    }

    #[test]
    fn resumes_only_from_what_it_still_holds() {
        let all = ViewSet::ALL;
        let ai = ViewSet::from_views([View::ActiveAi]);
        let mut h = History::new(HistoryBudget::new(usize::MAX));
        h.subscribed(all, 0);
        h.push(1, vec![(all, Some(Arc::from("a")))]);
        h.subscribed(ai, 1);
        h.push(2, vec![(all, Some(Arc::from("b"))), (ai, None)]);
        h.push(3, vec![(all, Some(Arc::from("c"))), (ai, Some(Arc::from("x")))]);
        let strs = |v: Option<Vec<Arc<str>>>| v.map(|v| v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(strs(after(&h, all, 0)), Some(vec!["a".into(), "b".into(), "c".into()]));
        assert_eq!(strs(after(&h, all, 2)), Some(vec!["c".into()]));
        assert_eq!(strs(after(&h, all, 3)), Some(vec![]));
        assert_eq!(strs(after(&h, ai, 1)), Some(vec!["x".into()]));
        assert_eq!(after(&h, ai, 0), None, "not rendered for that set before it was known");
        assert_eq!(after(&h, all, 4), None, "from the future");
        assert_eq!(
            h.after(all, 4, 5),
            Some(vec![]),
            "past the last tick, not past the position: nothing changed since"
        );
        assert_eq!(after(&h, ViewSet::from_views([View::IsLoading]), 3), None);
        for seq in 4..(4 + History::MAX_TICKS as u64) {
            h.push(seq, vec![(all, None)]);
        }
        assert_eq!(after(&h, all, 0), None, "evicted");
        assert!(after(&h, all, h.last() - 10).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn ticks_age_out_and_the_shared_budget_trims_the_pushing_space() {
        let all = ViewSet::ALL;
        let budget = HistoryBudget::new(10);
        let (mut a, mut b) = (History::new(budget.clone()), History::new(budget.clone()));
        a.subscribed(all, 0);
        b.subscribed(all, 0);
        a.push(1, vec![(all, Some(Arc::from("aaaaaa")))]);
        assert!(after(&a, all, 0).is_some());
        b.push(1, vec![(all, Some(Arc::from("bbbbbb")))]);
        assert_eq!(after(&b, all, 0), None, "b went over the shared cap and forgot its own tick");
        assert_eq!(after(&a, all, 0).map(|c| c.len()), Some(1), "a keeps its tick");
        assert_eq!(budget.bytes(), 6);
        tokio::time::advance(History::WINDOW).await;
        a.expire(Instant::now());
        assert_eq!(after(&a, all, 0), None, "aged out");
        assert_eq!(budget.bytes(), 0);
        drop(b);
    }
}
