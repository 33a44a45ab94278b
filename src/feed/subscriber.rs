//! Subscriptions and their delivery slots. Each subscription has one pending slot, not a queue: the ticker puts
//! a snapshot, merges diffs (keeping the oldest base, taking the newest seq) and adds events; the connection's
//! writer takes whatever is there. What a slow reader makes the server hold is bounded twice: a slot whose diffs
//! and events pass its byte cap, or whose connection's slots together pass theirs, drops them and waits for a
//! fresh snapshot (`resync`). A snapshot is not counted against those caps (it is shared by every subscriber of
//! its view set, and it is what a resync delivers); instead a slot gets its resync snapshot only once its
//! connection's writer has written everything it took, and a slot that keeps overflowing waits longer each time
//! (backoff), so a reader slower than the stream gets fewer, larger snapshots, never a loop of them. The ticker
//! never waits on a socket.

use crate::protocol::{self, ReqId};
use crate::space::views::ViewSet;
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The per-connection side: which slots have something to send, the writer's wake-up, and what the connection
/// holds for its peer.
#[derive(Debug)]
pub struct Outbox {
    ready: Mutex<Vec<Arc<SubSlot>>>,
    notify: Notify,
    /// Bytes of diffs and events pending in this connection's slots.
    pending: AtomicUsize,
    /// Their cap: past it the slot that would add more overflows.
    pending_cap: usize,
    /// Whether the writer is writing frames it took (a resync snapshot waits until it is done).
    writing: AtomicBool,
    /// Bytes of replies queued for the writer; the reader stops reading past [`Outbox::replies_full`].
    replies: AtomicUsize,
    reply_cap: usize,
    /// Wakes the reader when the writer wrote replies.
    reply_room: Notify,
    /// Subscription frames are held back (the token expired): the slots keep them, within their caps.
    paused: AtomicBool,
}

impl Outbox {
    pub fn new(pending_cap: usize, reply_cap: usize) -> Arc<Outbox> {
        Arc::new(Outbox {
            ready: Mutex::new(Vec::new()),
            notify: Notify::new(),
            pending: AtomicUsize::new(0),
            pending_cap,
            writing: AtomicBool::new(false),
            replies: AtomicUsize::new(0),
            reply_cap,
            reply_room: Notify::new(),
            paused: AtomicBool::new(false),
        })
    }

    /// Holds back (or lets out again) every subscription frame of the connection.
    pub fn set_paused(&self, paused: bool) {
        if self.paused.swap(paused, Ordering::AcqRel) && !paused {
            // What waited is taken at once.
            self.notify.notify_one();
        }
    }

    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    fn push(&self, slot: Arc<SubSlot>) {
        self.ready.lock().push(slot);
        self.notify.notify_one();
    }

    /// Waits until some slot has something to send.
    pub async fn wait(&self) {
        self.notify.notified().await
    }

    /// Takes the ready slots' frames, in the order the slots became ready.
    pub fn take_frames(&self, out: &mut Vec<Frame>) {
        let ready = std::mem::take(&mut *self.ready.lock());
        for slot in ready {
            slot.take_frames(out);
        }
    }

    /// Drops every reference to slots (they also point back here).
    pub fn close(&self) {
        self.ready.lock().clear();
    }

    /// The writer starts or ends writing what it took.
    pub fn set_writing(&self, writing: bool) {
        self.writing.store(writing, Ordering::Release);
    }

    /// Whether everything taken so far has been written (nothing is waiting in the writer).
    fn drained(&self) -> bool {
        !self.writing.load(Ordering::Acquire)
    }

    /// Counts a reply handed to the writer.
    pub fn reply_queued(&self, bytes: usize) {
        self.replies.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The writer wrote replies of `bytes`.
    pub fn reply_written(&self, bytes: usize) {
        if bytes > 0 {
            self.replies.fetch_sub(bytes, Ordering::Relaxed);
            self.reply_room.notify_one();
        }
    }

    /// Whether the replies waiting for the writer fill their cap (the reader then waits for [`Outbox::reply_room`]).
    pub fn replies_full(&self) -> bool {
        self.replies.load(Ordering::Relaxed) >= self.reply_cap
    }

    pub async fn reply_room(&self) {
        self.reply_room.notified().await
    }
}

/// A frame taken from a slot. Snapshots are rendered by the writer, one at a time, just before it writes them:
/// a connection never holds more than one copy of a snapshot's state beyond the shared one.
#[derive(Debug)]
pub enum Frame {
    Text(String),
    Snapshot { req_id: ReqId, sub: u64, epoch: u64, seq: u64, state: Arc<str>, resync: bool },
}

impl Frame {
    /// Renders the frame's text.
    pub fn render(self) -> String {
        match self {
            Frame::Text(t) => t,
            Frame::Snapshot { req_id, sub, epoch, seq, state, resync } => {
                protocol::snapshot(&req_id, sub, epoch, seq, &state, resync)
            }
        }
    }
}

/// What a subscription's first frame (or a resync) is.
#[derive(Debug)]
enum Head {
    Snapshot { req_id: ReqId, epoch: u64, seq: u64, state: Arc<str>, resync: bool },
    Resumed { req_id: ReqId, epoch: u64, seq: u64 },
}

#[derive(Debug)]
struct PendingDiff {
    base: u64,
    seq: u64,
    chunks: Vec<Arc<str>>,
}

#[derive(Debug, Default)]
struct Pending {
    /// The seq the client's state reaches once what is pending is delivered.
    at: u64,
    /// Unsubscribed or disconnected: deliver nothing more.
    closed: bool,
    /// Overflowed: drop diffs until a fresh snapshot arrives.
    resync: bool,
    /// Already on the outbox's ready list.
    queued: bool,
    head: Option<Head>,
    diff: Option<PendingDiff>,
    events: Vec<Arc<str>>,
    /// Bytes of the pending diff and events (counted in the outbox's total too).
    bytes: usize,
    /// The request id of a first snapshot (or resume reply) that was dropped unsent by an overflow: the resync
    /// snapshot answers that request instead.
    owed_id: ReqId,
    /// The seq of the last snapshot or resume: events of ticks up to it are already reflected there.
    joined_at: u64,
    /// Overflows since the slot last delivered a diff: each one doubles the wait before the next resync.
    overflows: u32,
    /// No resync snapshot before this.
    resync_after: Option<Instant>,
}

/// What happened to a diff handed to a slot.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Merged into the slot, or already covered by its snapshot, or the slot is closed.
    Done,
    /// The slot went over its byte cap: it needs a fresh snapshot.
    Overflow,
}

/// One subscription.
#[derive(Debug)]
pub struct SubSlot {
    pub id: u64,
    pub views: ViewSet,
    pub events: bool,
    pub space: Arc<str>,
    outbox: Arc<Outbox>,
    pending: Mutex<Pending>,
}

/// The first wait before a resync snapshot after an overflow; it doubles with each overflow in a row.
const RESYNC_BACKOFF: Duration = Duration::from_millis(50);
/// The longest wait before a resync snapshot.
const RESYNC_BACKOFF_MAX: Duration = Duration::from_secs(2);

impl SubSlot {
    pub fn new(id: u64, space: Arc<str>, views: ViewSet, events: bool, outbox: Arc<Outbox>) -> Arc<SubSlot> {
        Arc::new(SubSlot { id, views, events, space, outbox, pending: Mutex::new(Pending::default()) })
    }

    fn queue(self: &Arc<Self>, p: &mut Pending) {
        if !p.queued {
            p.queued = true;
            self.outbox.push(self.clone());
        }
    }

    /// Forgets the pending diff and events, giving their bytes back to the outbox.
    fn clear(&self, p: &mut Pending) {
        self.outbox.pending.fetch_sub(p.bytes, Ordering::Relaxed);
        p.bytes = 0;
        p.diff = None;
        p.events.clear();
    }

    /// Counts `n` more pending bytes; false (nothing counted) when the slot or its connection would pass its cap.
    fn reserve(&self, p: &mut Pending, n: usize, cap: usize) -> bool {
        if p.bytes + n > cap || self.outbox.pending.load(Ordering::Relaxed) + n > self.outbox.pending_cap {
            return false;
        }
        p.bytes += n;
        self.outbox.pending.fetch_add(n, Ordering::Relaxed);
        true
    }

    /// Sets the snapshot at `seq`, replacing anything pending but events.
    pub fn snapshot(self: &Arc<Self>, req_id: ReqId, epoch: u64, seq: u64, state: Arc<str>, resync: bool) {
        let mut p = self.pending.lock();
        if p.closed {
            return;
        }
        let req_id = req_id.or_else(|| p.owed_id.take());
        p.joined_at = seq;
        p.head = Some(Head::Snapshot { req_id, epoch, seq, state, resync });
        // The diff goes; the events stay (and stay counted).
        p.diff = None;
        let events: usize = p.events.iter().map(|e| e.len()).sum();
        self.outbox.pending.fetch_sub(p.bytes.saturating_sub(events), Ordering::Relaxed);
        p.bytes = p.bytes.min(events);
        p.at = seq;
        p.resync = false;
        p.resync_after = None;
        self.queue(&mut p);
    }

    /// Grants a resume from `base`: the reply, then the missed diffs (`chunks`, up to `seq`) as one diff. The
    /// missed diffs are not counted against the caps: they are the resume's whole point, and already in memory.
    pub fn resume(self: &Arc<Self>, req_id: ReqId, epoch: u64, base: u64, seq: u64, chunks: Vec<Arc<str>>) {
        let mut p = self.pending.lock();
        if p.closed {
            return;
        }
        p.head = Some(Head::Resumed { req_id, epoch, seq: base });
        p.joined_at = seq;
        self.clear(&mut p);
        if chunks.is_empty() {
            // Nothing changed for these views since `base`: the next diff starts there.
            p.at = base;
        } else {
            p.at = seq;
            p.diff = Some(PendingDiff { base, seq, chunks });
        }
        p.resync = false;
        self.queue(&mut p);
    }

    /// Merges the diff that ends at `seq` (ops `chunk`) into the slot.
    pub fn diff(self: &Arc<Self>, seq: u64, chunk: &Arc<str>, cap: usize) -> Delivery {
        let mut p = self.pending.lock();
        if p.closed || p.resync || p.at >= seq {
            return Delivery::Done;
        }
        if !self.reserve(&mut p, chunk.len(), cap) {
            return self.overflow(&mut p);
        }
        let at = p.at;
        match &mut p.diff {
            Some(d) => {
                // The writer has not taken the last one yet: one larger diff instead of two frames.
                d.chunks.push(chunk.clone());
                d.seq = seq;
                crate::telemetry::DIFFS_MERGED.increment(1);
            }
            None => p.diff = Some(PendingDiff { base: at, seq, chunks: vec![chunk.clone()] }),
        }
        p.at = seq;
        self.queue(&mut p);
        Delivery::Done
    }

    /// Adds an event body of the tick that ends at `seq`.
    pub fn event(self: &Arc<Self>, seq: u64, body: &Arc<str>, cap: usize) -> Delivery {
        let mut p = self.pending.lock();
        if p.closed || p.resync || seq <= p.joined_at {
            return Delivery::Done;
        }
        if !self.reserve(&mut p, body.len(), cap) {
            return self.overflow(&mut p);
        }
        p.events.push(body.clone());
        self.queue(&mut p);
        Delivery::Done
    }

    fn overflow(&self, p: &mut Pending) -> Delivery {
        crate::telemetry::RESYNCS.increment(1);
        self.clear(p);
        if let Some(Head::Snapshot { req_id, .. } | Head::Resumed { req_id, .. }) = p.head.take() {
            p.owed_id = req_id;
        }
        p.resync = true;
        let wait = RESYNC_BACKOFF.saturating_mul(1 << p.overflows.min(6)).min(RESYNC_BACKOFF_MAX);
        p.overflows = p.overflows.saturating_add(1);
        p.resync_after = Some(Instant::now() + wait);
        Delivery::Overflow
    }

    /// Drops what is pending and asks for a fresh snapshot (after a tick the slot cannot trust).
    pub fn force_resync(&self) {
        let mut p = self.pending.lock();
        if !p.closed {
            self.overflow(&mut p);
        }
    }

    /// Whether the slot is waiting for a resync snapshot.
    pub fn wants_resync(&self) -> bool {
        let p = self.pending.lock();
        p.resync && !p.closed
    }

    /// When the slot may get its resync snapshot: `None` when it needs none; `Some(t)` where `t` has passed and
    /// its connection's writer has written everything it took, it may have one now.
    pub fn resync_due(&self) -> Option<Instant> {
        let p = self.pending.lock();
        if !p.resync || p.closed {
            return None;
        }
        let after = p.resync_after.unwrap_or_else(Instant::now);
        if p.queued || !self.outbox.drained() {
            // Not before the writer took and wrote what is there: look again a little later.
            return Some(after.max(Instant::now() + RESYNC_BACKOFF));
        }
        Some(after)
    }

    /// Stops all delivery.
    pub fn close(&self) {
        let mut p = self.pending.lock();
        p.closed = true;
        p.head = None;
        self.clear(&mut p);
    }

    /// Takes what is pending, in frame order: snapshot, then diff, then events.
    fn take_frames(&self, out: &mut Vec<Frame>) {
        let (head, diff, events) = {
            let mut p = self.pending.lock();
            p.queued = false;
            self.outbox.pending.fetch_sub(p.bytes, Ordering::Relaxed);
            p.bytes = 0;
            if p.diff.is_some() {
                p.overflows = 0;
            }
            (p.head.take(), p.diff.take(), std::mem::take(&mut p.events))
        };
        match head {
            Some(Head::Snapshot { req_id, epoch, seq, state, resync }) => {
                out.push(Frame::Snapshot { req_id, sub: self.id, epoch, seq, state, resync })
            }
            Some(Head::Resumed { req_id, epoch, seq }) => {
                out.push(Frame::Text(protocol::resumed(&req_id, self.id, epoch, seq)))
            }
            None => {}
        }
        if let Some(d) = diff {
            out.push(Frame::Text(protocol::diff(self.id, d.base, d.seq, &d.chunks)));
        }
        for e in events {
            out.push(Frame::Text(protocol::event(self.id, &e)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(n: usize) -> Arc<str> {
        Arc::from("x".repeat(n))
    }

    #[tokio::test(start_paused = true)]
    async fn caps_per_slot_and_per_connection_then_a_resync_once_the_writer_is_done() {
        let outbox = Outbox::new(1000, 1 << 20);
        let a = SubSlot::new(1, "s".into(), ViewSet::ALL, false, outbox.clone());
        let b = SubSlot::new(2, "s".into(), ViewSet::ALL, false, outbox.clone());
        let big_state: Arc<str> = chunk(10_000);
        // A snapshot far larger than every cap is not counted against them.
        a.snapshot(None, 7, 1, big_state.clone(), false);
        assert_eq!(a.diff(2, &chunk(400), 600), Delivery::Done);
        assert_eq!(b.diff(2, &chunk(400), 600), Delivery::Done);
        assert_eq!(a.diff(3, &chunk(300), 600), Delivery::Overflow, "the slot's own cap");
        assert_eq!(b.diff(3, &chunk(150), 600), Delivery::Done);
        assert_eq!(b.diff(4, &chunk(500), 10_000), Delivery::Overflow, "the connection's cap, shared with `a`");
        // Overflowed: nothing pending is counted any more.
        assert_eq!(outbox.pending.load(Ordering::Relaxed), 0);
        // The resync waits for its backoff, and for the writer to be done with what it took.
        let due = a.resync_due().expect("a resync is owed");
        assert!(due > Instant::now());
        tokio::time::advance(RESYNC_BACKOFF).await;
        let mut frames = Vec::new();
        outbox.take_frames(&mut frames);
        outbox.set_writing(true);
        assert!(a.resync_due().unwrap() > Instant::now(), "not while the writer writes");
        outbox.set_writing(false);
        assert!(a.resync_due().unwrap() <= Instant::now());
        a.snapshot(None, 7, 5, big_state, true);
        assert!(a.resync_due().is_none());
        // A second overflow in a row waits twice as long.
        a.diff(6, &chunk(700), 600);
        assert_eq!(a.resync_due().unwrap() - Instant::now(), RESYNC_BACKOFF * 2);
    }

    #[test]
    fn replies_fill_their_cap_and_the_writer_empties_it() {
        let outbox = Outbox::new(1000, 100);
        outbox.reply_queued(60);
        assert!(!outbox.replies_full());
        outbox.reply_queued(60);
        assert!(outbox.replies_full());
        outbox.reply_written(120);
        assert!(!outbox.replies_full());
    }
}
