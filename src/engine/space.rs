//! A space as this node holds it: its state machine ([`SpaceModel`]), its position in its log, and its per-node
//! feed, behind one lock, with the wake-up of its ticker. Lock order everywhere: a registry shard is never held
//! while a space is locked, and no space lock is held across an `.await` or a hook.

use crate::feed::Feed;
use crate::feed::history::{History, HistoryBudget};
use crate::space::model::{Rules, SpaceModel};
use parking_lot::{Mutex, MutexGuard};
use std::sync::Arc;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Everything behind a space's lock.
#[derive(Debug)]
pub struct SpaceState {
    /// The space's state: a pure function of the events applied so far.
    pub model: SpaceModel,
    /// How many events have been applied: the position of the last one. A snapshot taken now is at this seq.
    pub position: u64,
    /// This node's delivery of it.
    pub feed: Feed,
    /// Whether the ticker has been woken since its last flush.
    pub dirty: bool,
    /// The space was reclaimed (it held nothing): whoever finds this under the lock looks the space up again.
    pub retired: bool,
}

impl SpaceState {
    /// Whether the space holds nothing anyone could miss: no run, and a feed with nothing in it.
    pub fn is_idle(&self) -> bool {
        self.model.is_empty() && self.feed.is_idle()
    }

    /// When the space may be reclaimed if nothing more happens: `None` while it holds runs or subscribers.
    pub fn idle_at(&self) -> Option<Instant> {
        if !self.model.is_empty() {
            return None;
        }
        self.feed.idle_at()
    }
}

/// One space.
#[derive(Debug)]
pub struct Space {
    pub name: Arc<str>,
    /// Random for each space created (every server start, and again after the space was reclaimed), below 2^53
    /// so JavaScript holds it exactly: a resume from another epoch gets a snapshot.
    pub epoch: u64,
    state: Mutex<SpaceState>,
    /// Wakes the ticker: a change after an idle period is flushed at once.
    wake: Notify,
    /// The creator's space quota, given back when the space is dropped.
    _quota: Option<crate::engine::budget::SpaceQuota>,
    /// Set once the space holds its state: at once on a single node; once caught up with the log in a cluster.
    ready: tokio::sync::watch::Sender<bool>,
}

impl Space {
    pub fn new(
        name: Arc<str>,
        rules: Rules,
        history: Arc<HistoryBudget>,
        quota: Option<crate::engine::budget::SpaceQuota>,
        epoch: Option<u64>,
    ) -> Arc<Space> {
        let state = SpaceState {
            model: SpaceModel::new(rules),
            position: 0,
            feed: Feed::new(History::new(history)),
            dirty: false,
            retired: false,
        };
        let epoch = epoch.unwrap_or_else(|| uuid::Uuid::now_v7().as_u64_pair().1 & ((1 << 53) - 1));
        Arc::new(Space {
            name,
            epoch,
            state: Mutex::new(state),
            wake: Notify::new(),
            _quota: quota,
            ready: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Marks the space as holding its state.
    pub fn set_ready(&self) {
        self.ready.send_replace(true);
    }

    /// Waits until the space holds its state.
    pub async fn until_ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    pub fn lock(&self) -> MutexGuard<'_, SpaceState> {
        self.state.lock()
    }

    /// Marks the space dirty and wakes its ticker (once per flush).
    pub fn changed(&self, st: &mut SpaceState) {
        if !st.dirty {
            st.dirty = true;
            self.wake.notify_one();
        }
    }

    pub async fn woken(&self) {
        self.wake.notified().await
    }
}
