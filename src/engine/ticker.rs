//! The one task per space that owns the tick: it waits for a change (flushing at once after an idle period, then
//! at most once per tick), submits the events its timers decide (linger expiry), reclaims the space once it holds
//! nothing, and flushes: under the space lock the feed closes the tick and serves snapshots at the space's
//! position; without the lock the tick is rendered once per view set and handed to every subscriber of that set.

use crate::engine::space::Space;
use std::sync::Arc;
use std::sync::LazyLock;
use std::time::Duration;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

/// What the ticker asks of the engine.
pub trait Timers: Send + Sync + 'static {
    /// The instant at which the engine's clock reads `ms` (milliseconds since the epoch).
    fn instant_at(&self, ms: u64) -> Instant;
    /// Submits the end of every lingering run of `space` whose linger is over.
    fn expire_lingering(&self, space: &Arc<Space>);
    /// Reclaims `space` if it still holds nothing; returns whether it did.
    fn reclaim(&self, space: &Arc<Space>) -> bool;
}

/// How a ticker ticks.
#[derive(Debug, Clone)]
pub struct Settings {
    /// At most one flush per tick.
    pub tick: Duration,
    /// Bytes a subscription's pending slot may hold.
    pub cap: usize,
    /// Cancelled on shutdown.
    pub shutdown: CancellationToken,
}

/// The shared clock: tick boundaries are whole multiples of the tick since this instant, the same for every space
/// and every connection of the process.
static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

/// How long before a boundary paced connections are read: their writes are applied by the time the spaces flush.
fn read_lead(tick: Duration) -> Duration {
    (tick / 4).min(Duration::from_millis(2))
}

/// The shared clock's first tick boundary after `t`.
pub fn boundary_after(t: Instant, tick: Duration) -> Instant {
    let step = tick.as_nanos().max(1);
    let origin = *ORIGIN;
    // `t` can be before the origin: a paused test clock starts wherever its runtime started.
    if t >= origin {
        origin + Duration::from_nanos(((t - origin).as_nanos() / step + 1).saturating_mul(step) as u64)
    } else {
        origin - Duration::from_nanos(((origin - t).as_nanos() / step).saturating_mul(step) as u64)
    }
}

/// When a paced connection is next read after `t`: a little before the next boundary that leaves room for it.
pub fn read_at(t: Instant, tick: Duration) -> Instant {
    let lead = read_lead(tick);
    boundary_after(t + lead, tick) - lead
}

/// Runs until the engine shuts down or the space is reclaimed.
pub async fn run(space: Arc<Space>, timers: Arc<dyn Timers>, settings: Settings) {
    let Settings { tick, cap, shutdown } = settings;
    loop {
        // The next deadline: a lingering run's end, a deferred resync, or the moment the space may be reclaimed.
        let next = {
            let st = space.lock();
            let linger = st.model.next_linger_end().map(|ms| timers.instant_at(ms));
            [linger, st.feed.resync_wake, st.idle_at()].into_iter().flatten().min()
        };
        let far = Instant::now() + Duration::from_secs(86_400);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = space.woken() => {}
            _ = sleep_until(next.unwrap_or(far)), if next.is_some() => {}
        }
        let idle = space.lock().idle_at().is_some_and(|t| t <= Instant::now());
        if idle && timers.reclaim(&space) {
            tracing::debug!(space = %space.name.escape_debug(), "reclaimed an idle space");
            return;
        }
        timers.expire_lingering(&space);
        guarded(&space, || flush(&space, cap));
        // The next flush at the shared clock's first boundary at least half a tick away: every busy space flushes
        // on the same boundaries, just after the paced producers were read (`read_at`).
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = sleep_until(boundary_after(Instant::now() + tick / 2, tick)) => {}
        }
    }
}

/// Runs `f` (a flush, or whatever closes a tick) so that a bug in it does not silence the space for good: a panic is
/// logged, and every subscriber gets a fresh snapshot (the tick may have closed without its diff, so no subscriber
/// can trust its state any more).
pub fn guarded(space: &Space, f: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
        tracing::error!(space = %space.name.escape_debug(), "a flush panicked; resyncing every subscriber");
        let mut st = space.lock();
        let slots: Vec<_> = st.feed.groups.iter().flat_map(|g| g.slots.iter().cloned()).collect();
        for slot in &slots {
            slot.force_resync();
        }
        st.feed.resync.extend(slots);
        space.changed(&mut st);
    }
}

/// Closes the tick: the cut and the snapshots under the lock, rendering and fan-out outside it.
pub fn flush(space: &Space, cap: usize) {
    let started = std::time::Instant::now();
    let tick = {
        let mut guard = space.lock();
        let st = &mut *guard;
        st.dirty = false;
        st.feed.flush(&st.model, space.epoch, st.position)
    };
    if let Some(tick) = tick {
        let sent = tick.send(cap);
        let mut st = space.lock();
        if st.feed.sent(sent) {
            tracing::debug!(space = %space.name.escape_debug(), "subscribers overflowed; resyncing");
            space.changed(&mut st);
        }
    }
    crate::telemetry::FLUSH_SECONDS.record(started.elapsed().as_secs_f64());
}
