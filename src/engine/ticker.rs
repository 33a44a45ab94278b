//! The one task per space that owns the tick: it waits for a change (flushing at once after an idle period, then
//! at most once per tick), expires lingering failed runs, cuts the journal under the space lock, serves snapshots
//! to new and resyncing subscribers at that same seq, and then, without the lock, renders the diff once per view
//! set and hands the same bytes to every subscriber of that set.

use crate::engine::Shared;
use crate::engine::space::{Group, Joining, Space, SpaceState};
use crate::feed::journal::{Cut, Journal, Rendered, RunDelta};
use crate::feed::subscriber::Delivery;
use crate::model::context::Class;
use crate::space::views::ViewSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, sleep, sleep_until};

/// Runs until the engine shuts down.
pub async fn run(space: Arc<Space>, shared: Arc<Shared>) {
    let tick = shared.config.tick;
    loop {
        // The next deadline: a lingering run's expiry, or a deferred resync.
        // The next deadline: a lingering run's expiry, a deferred resync, or the moment the space may be reclaimed.
        let next = {
            let st = space.lock();
            [st.lingering.front().map(|(t, _)| *t), st.resync_wake, st.idle_at()].into_iter().flatten().min()
        };
        let far = Instant::now() + Duration::from_secs(86_400);
        tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => return,
            _ = space.woken() => {}
            _ = sleep_until(next.unwrap_or(far)), if next.is_some() => {}
        }
        let idle = space.lock().idle_at().is_some_and(|t| t <= Instant::now());
        if idle && shared.reclaim(&space) {
            tracing::debug!(space = %space.name.escape_debug(), "reclaimed an idle space");
            return;
        }
        shared.expire_lingering(&space);
        let cap = shared.config.limits.max_pending_bytes;
        // A bug in a flush must not silence the space for good: log it and keep ticking.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| flush(&space, cap))).is_err() {
            // The tick's seq may have advanced without its diff: no subscriber can trust its state any more.
            tracing::error!(space = %space.name.escape_debug(), "a flush panicked; resyncing every subscriber");
            let mut st = space.lock();
            let slots: Vec<_> = st.groups.iter().flat_map(|g| g.slots.iter().cloned()).collect();
            for slot in &slots {
                slot.force_resync();
            }
            st.resync.extend(slots);
            space.changed(&mut st);
        }
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = sleep(tick) => {}
        }
    }
}

/// Closes the tick: cut and snapshots under the lock, rendering and fan-out outside it.
pub fn flush(space: &Space, cap: usize) {
    let started = std::time::Instant::now();
    flush_timed(space, cap);
    crate::telemetry::FLUSH_SECONDS.record(started.elapsed().as_secs_f64());
}

fn flush_timed(space: &Space, cap: usize) {
    let (cut, sets, groups, events_wanted) = {
        let mut st = space.lock();
        st.dirty = false;
        // The view sets this tick is rendered for: fixed before the cut, so that every set that sees a run appear
        // has its whole context serialized. Sets registered below start after this tick.
        let sets = st.history.sets();
        let cut = (!st.journal.is_empty()).then(|| cut(&mut st, &sets));
        serve_snapshots(space, &mut st);
        (cut, sets, st.groups.clone(), st.events_wanted > 0)
    };
    if let Some(cut) = cut {
        let seq = cut.seq;
        let rendered = cut.render(&sets, events_wanted);
        crate::telemetry::DIFFS_RENDERED.increment(rendered.diffs.iter().filter(|(_, d)| d.is_some()).count() as u64);
        fan_out(space, seq, &rendered, &groups, cap);
        space.lock().history.push(seq, rendered.diffs);
    }
}

fn cut(st: &mut SpaceState, sets: &[ViewSet]) -> Cut {
    let Journal { runs, views, loading_before, current_changed, events } = st.journal.take();
    st.seq += 1;
    let runs = runs
        .into_iter()
        .map(|(id, t)| {
            let (after, full) = match st.runs.get(&id) {
                Some(cell) => {
                    let run = cell.run.lock();
                    let after = run.class();
                    let entering = sets.iter().any(|s| !s.shows(t.before) && s.shows(after));
                    (after, entering.then(|| serde_json::to_string(&run.ctx).expect("a context serializes")))
                }
                None => (Class::ABSENT, None),
            };
            RunDelta { id, before: t.before, after, full, changes: t.changes }
        })
        .collect();
    let now_loading = st.views.is_loading();
    Cut {
        seq: st.seq,
        runs,
        views,
        loading: loading_before.filter(|b| *b != now_loading).map(|_| now_loading),
        current: if current_changed { st.views.current().cloned() } else { None },
        events,
    }
}

/// Gives joining and overflowed subscribers a snapshot at the current seq, or resumes a joining subscriber from
/// the history. A state is rendered at most once per view set and seq, however many subscribers (and flushes)
/// need it. An overflowed subscriber gets its snapshot only when its backoff has passed and its writer has
/// written what it took; until then it waits in `resync`, and the notifier wakes for it.
fn serve_snapshots(space: &Space, st: &mut SpaceState) {
    if st.joining.is_empty() && st.resync.is_empty() {
        return;
    }
    let joining = std::mem::take(&mut st.joining);
    let resync = std::mem::take(&mut st.resync);
    let mut joined = Vec::with_capacity(joining.len());
    for Joining { slot, req_id, since } in joining {
        // The history holds ticks up to `last`; a cut made in this flush (seq = last + 1) is fanned out after
        // this, and reaches the resumed slot like any other.
        let resumed = since
            .filter(|(epoch, _)| *epoch == space.epoch)
            .and_then(|(_, base)| st.history.after(slot.views, base).map(|chunks| (base, chunks)));
        match resumed {
            Some((base, chunks)) => slot.resume(req_id, space.epoch, base, st.history.last(), chunks),
            None => {
                let state = st.snapshot(slot.views);
                slot.snapshot(req_id, space.epoch, st.seq, state, since.is_some());
            }
        }
        joined.push(slot);
    }
    st.register(joined);
    let now = Instant::now();
    let mut wake: Option<Instant> = None;
    for slot in resync {
        match slot.resync_due() {
            None => {}
            Some(due) if due <= now => {
                let state = st.snapshot(slot.views);
                slot.snapshot(None, space.epoch, st.seq, state, true);
            }
            Some(due) => {
                wake = Some(wake.map_or(due, |w| w.min(due)));
                st.resync.push(slot);
            }
        }
    }
    st.resync_wake = wake;
    if st.resync.is_empty() {
        // Nobody waits for a rendered state: do not keep it until the next seq.
        st.forget_snapshots();
    }
}

fn fan_out(space: &Space, seq: u64, rendered: &Rendered, groups: &[Group], cap: usize) {
    let mut overflowed = Vec::new();
    for group in groups {
        let chunk = rendered.diffs.iter().find(|(v, _)| *v == group.views).and_then(|(_, c)| c.as_ref());
        for slot in &group.slots {
            let mut delivery = match chunk {
                Some(chunk) => slot.diff(seq, chunk, cap),
                None => Delivery::Done,
            };
            if slot.events && delivery == Delivery::Done {
                for body in &rendered.events {
                    delivery = slot.event(seq, body, cap);
                    if delivery == Delivery::Overflow {
                        break;
                    }
                }
            }
            if delivery == Delivery::Overflow {
                overflowed.push(slot.clone());
            }
        }
    }
    if !overflowed.is_empty() {
        tracing::debug!(space = %space.name.escape_debug(), count = overflowed.len(), "subscribers overflowed; resyncing");
        let mut st = space.lock();
        st.resync.extend(overflowed);
        space.changed(&mut st);
    }
}
