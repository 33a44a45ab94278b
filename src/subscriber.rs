//! Subscriptions and their delivery slots. Each subscription has one pending slot, not a queue: the notifier puts
//! a snapshot, merges diffs (keeping the oldest base, taking the newest seq) and adds events; the connection's
//! writer takes whatever is there. A slot over its byte cap drops its diff and waits for a fresh snapshot
//! (`resync`), so the memory held for a slow reader is bounded and the notifier never waits on a socket.

use crate::protocol::{self, ReqId};
use crate::views::ViewSet;
use parking_lot::Mutex;
use std::sync::Arc;
use tokio::sync::Notify;

/// The per-connection side: which slots have something to send, and the writer's wake-up.
#[derive(Debug, Default)]
pub struct Outbox {
    ready: Mutex<Vec<Arc<SubSlot>>>,
    notify: Notify,
}

impl Outbox {
    pub fn new() -> Arc<Outbox> {
        Arc::new(Outbox::default())
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
    pub fn take_frames(&self, out: &mut Vec<String>) {
        let ready = std::mem::take(&mut *self.ready.lock());
        for slot in ready {
            slot.take_frames(out);
        }
    }

    /// Drops every reference to slots (they also point back here).
    pub fn close(&self) {
        self.ready.lock().clear();
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
    bytes: usize,
    /// The request id of a first snapshot (or resume reply) that was dropped unsent by an overflow: the resync
    /// snapshot answers that request instead.
    owed_id: ReqId,
    /// The seq of the last snapshot or resume: events of ticks up to it are already reflected there.
    joined_at: u64,
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

    /// Sets the snapshot at `seq`, replacing anything pending but events.
    pub fn snapshot(self: &Arc<Self>, req_id: ReqId, epoch: u64, seq: u64, state: Arc<str>, resync: bool) {
        let mut p = self.pending.lock();
        if p.closed {
            return;
        }
        p.bytes = state.len() + p.events.iter().map(|e| e.len()).sum::<usize>();
        let req_id = req_id.or_else(|| p.owed_id.take());
        p.joined_at = seq;
        p.head = Some(Head::Snapshot { req_id, epoch, seq, state, resync });
        p.diff = None;
        p.at = seq;
        p.resync = false;
        self.queue(&mut p);
    }

    /// Grants a resume from `base`: the reply, then the missed diffs (`chunks`, up to `seq`) as one diff.
    pub fn resume(self: &Arc<Self>, req_id: ReqId, epoch: u64, base: u64, seq: u64, chunks: Vec<Arc<str>>) {
        let mut p = self.pending.lock();
        if p.closed {
            return;
        }
        p.head = Some(Head::Resumed { req_id, epoch, seq: base });
        p.joined_at = seq;
        p.bytes = chunks.iter().map(|c| c.len()).sum();
        if chunks.is_empty() {
            // Nothing changed for these views since `base`: the next diff starts there.
            p.at = base;
            p.diff = None;
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
        p.bytes += chunk.len();
        if p.bytes > cap {
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
        p.bytes += body.len();
        if p.bytes > cap {
            return self.overflow(&mut p);
        }
        p.events.push(body.clone());
        self.queue(&mut p);
        Delivery::Done
    }

    fn overflow(&self, p: &mut Pending) -> Delivery {
        crate::telemetry::RESYNCS.increment(1);
        p.diff = None;
        if let Some(Head::Snapshot { req_id, .. } | Head::Resumed { req_id, .. }) = p.head.take() {
            p.owed_id = req_id;
        }
        p.events.clear();
        p.bytes = 0;
        p.resync = true;
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

    /// Stops all delivery.
    pub fn close(&self) {
        let mut p = self.pending.lock();
        p.closed = true;
        p.head = None;
        p.diff = None;
        p.events.clear();
    }

    /// Renders what is pending as frames: snapshot, then diff, then events.
    fn take_frames(&self, out: &mut Vec<String>) {
        let (head, diff, events) = {
            let mut p = self.pending.lock();
            p.queued = false;
            p.bytes = 0;
            (p.head.take(), p.diff.take(), std::mem::take(&mut p.events))
        };
        match head {
            Some(Head::Snapshot { req_id, epoch, seq, state, resync }) => {
                out.push(protocol::snapshot(&req_id, self.id, epoch, seq, &state, resync))
            }
            Some(Head::Resumed { req_id, epoch, seq }) => out.push(protocol::resumed(&req_id, self.id, epoch, seq)),
            None => {}
        }
        if let Some(d) = diff {
            out.push(protocol::diff(self.id, d.base, d.seq, &d.chunks));
        }
        for e in events {
            out.push(protocol::event(self.id, &e));
        }
    }
}
