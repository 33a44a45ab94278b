//! Resume history of one space: the rendered diff of each recent tick for every view set that has, or recently
//! had, a subscriber. A subscriber that reconnects with `since: {epoch, seq}` gets the diffs after `seq` from here,
//! or a fresh snapshot (`resync`) when they are gone. Bounded in ticks and bytes; a view set stays rendered for
//! [`History::WINDOW`] after its last subscriber left, so that subscriber can come back.

use crate::views::ViewSet;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A view set being rendered every tick.
#[derive(Debug)]
struct Known {
    views: ViewSet,
    /// Diffs for this set exist for every tick after this seq.
    since: u64,
    /// When its last subscriber left (`None` while it has some).
    idle_since: Option<Instant>,
}

/// One tick's rendered op lists: `None` where the set saw no change.
type Tick = (u64, Vec<(ViewSet, Option<Arc<str>>)>);

#[derive(Debug, Default)]
pub struct History {
    ticks: VecDeque<Tick>,
    bytes: usize,
    known: Vec<Known>,
    /// The seq of the newest tick pushed.
    last: u64,
}

impl History {
    /// Ticks kept at most.
    pub const MAX_TICKS: usize = 4096;
    /// Bytes of rendered ops kept at most.
    pub const MAX_BYTES: usize = 4 * 1024 * 1024;
    /// How long a view set stays rendered after its last subscriber left.
    pub const WINDOW: Duration = Duration::from_secs(60);

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
        self.bytes += diffs.iter().filter_map(|(_, c)| c.as_ref()).map(|c| c.len()).sum::<usize>();
        self.ticks.push_back((seq, diffs));
        self.last = seq;
        while self.ticks.len() > Self::MAX_TICKS || self.bytes > Self::MAX_BYTES {
            let Some((_, old)) = self.ticks.pop_front() else { break };
            self.bytes -= old.iter().filter_map(|(_, c)| c.as_ref()).map(|c| c.len()).sum::<usize>();
        }
        let now = Instant::now();
        self.known.retain(|k| k.idle_since.is_none_or(|t| now.duration_since(t) < Self::WINDOW));
    }

    /// The seq of the newest tick pushed.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// The op lists for `views` of every tick after `base` (empty: nothing changed), or `None` when they are not
    /// all here.
    pub fn after(&self, views: ViewSet, base: u64) -> Option<Vec<Arc<str>>> {
        let known = self.known.iter().find(|k| k.views == views)?;
        if base > self.last || known.since > base {
            return None;
        }
        if base == self.last {
            return Some(Vec::new());
        }
        let (oldest, _) = self.ticks.front()?;
        if *oldest > base + 1 {
            return None;
        }
        Some(
            self.ticks
                .iter()
                .filter(|(seq, _)| *seq > base)
                .filter_map(|(_, diffs)| diffs.iter().find(|(v, _)| *v == views).and_then(|(_, c)| c.clone()))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::View;

    #[test]
    fn resumes_only_from_what_it_still_holds() {
        let all = ViewSet::ALL;
        let ai = ViewSet::from_views([View::ActiveAi]);
        let mut h = History::default();
        h.subscribed(all, 0);
        h.push(1, vec![(all, Some(Arc::from("a")))]);
        h.subscribed(ai, 1);
        h.push(2, vec![(all, Some(Arc::from("b"))), (ai, None)]);
        h.push(3, vec![(all, Some(Arc::from("c"))), (ai, Some(Arc::from("x")))]);
        let strs = |v: Option<Vec<Arc<str>>>| v.map(|v| v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(strs(h.after(all, 0)), Some(vec!["a".into(), "b".into(), "c".into()]));
        assert_eq!(strs(h.after(all, 2)), Some(vec!["c".into()]));
        assert_eq!(strs(h.after(all, 3)), Some(vec![]));
        assert_eq!(strs(h.after(ai, 1)), Some(vec!["x".into()]));
        assert_eq!(h.after(ai, 0), None, "not rendered for that set before it was known");
        assert_eq!(h.after(all, 4), None, "from the future");
        assert_eq!(h.after(ViewSet::from_views([View::IsLoading]), 3), None);
        for seq in 4..(4 + History::MAX_TICKS as u64) {
            h.push(seq, vec![(all, None)]);
        }
        assert_eq!(h.after(all, 0), None, "evicted");
        assert!(h.after(all, h.last() - 10).is_some());
    }
}
