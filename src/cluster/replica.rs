//! One space as a cluster node holds it: the task that catches the space up from its newest snapshot and the log,
//! then applies every entry of the space's subject in stream order and cuts a tick after each (so every node's
//! resume history has the same cuts), publishes this node's queued writes once per tick at most, answers them
//! when their entry comes back, fires the space's timers, writes snapshots now and then, and lets the space go
//! once no client of this node uses it.

use super::entry::{self, Header, Writer};
use super::{Answer, Inner, Lane, nats_error};
use crate::engine::sequencer::{Host, Origin, Refusal, Sequenced, unavailable};
use crate::engine::space::Space;
use crate::engine::ticker::{self, Settings};
use crate::error::{Error, ErrorCode, Result};
use crate::space::event::SpaceEvent;
use crate::space::model::SpaceModel;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

/// A publish acknowledgement's verdict: the batch, and whether the log took it.
type Acked = (u64, bool);

/// How often a failed catch-up is tried again.
const RETRY: Duration = Duration::from_secs(1);
/// How often a space looks for runs whose producer's node died.
const ORPHAN_CHECK: Duration = Duration::from_secs(3);

struct Replica {
    inner: Arc<Inner>,
    space: Arc<Space>,
    lane: Arc<Lane>,
    host: Arc<dyn Host>,
    settings: Settings,
    subject: String,
    /// The answers owed for this node's entries in flight, by batch number, in the entry's order.
    waiting: HashMap<u64, Vec<Option<Answer>>>,
    next_batch: u64,
    last_publish: Option<Instant>,
    /// Publish acknowledgements in flight (each awaited by a task of its own): a batch whose acknowledgement
    /// fails is answered `unavailable`.
    acks: (mpsc::UnboundedSender<Acked>, mpsc::UnboundedReceiver<Acked>),
    in_flight: usize,
    /// The entry being filled (its buffer kept from tick to tick).
    writer: Writer,
    /// Position and time of the last snapshot this node wrote (or started from).
    snapshot_at: (u64, Instant),
    /// Timer events already submitted are not submitted again before this.
    linger_retry: Option<Instant>,
    /// When to look next for runs whose producer's node died.
    orphans_at: Instant,
    /// When this node took the space.
    taken: Instant,
}

/// A moment up to `interval` ago, at random.
fn staggered(interval: Duration) -> Instant {
    let random = uuid::Uuid::now_v7().as_u64_pair().1;
    let back = Duration::from_millis(random % (interval.as_millis() as u64).max(1));
    Instant::now().checked_sub(back).unwrap_or_else(Instant::now)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub(super) async fn run(
    inner: Arc<Inner>,
    space: Arc<Space>,
    lane: Arc<Lane>,
    host: Arc<dyn Host>,
    settings: Settings,
) {
    let subject = entry::subject(&space.name);
    let inner_interval = inner.settings.snapshot_interval;
    let mut r = Replica {
        inner,
        space,
        lane,
        host,
        settings,
        subject,
        waiting: HashMap::new(),
        next_batch: 0,
        writer: Writer::new(),
        last_publish: None,
        acks: mpsc::unbounded_channel(),
        in_flight: 0,
        // Staggered: the nodes holding a space do not all come to its snapshot at once.
        snapshot_at: (0, staggered(inner_interval)),
        linger_retry: None,
        orphans_at: Instant::now() + ORPHAN_CHECK,
        taken: Instant::now(),
    };
    let shutdown = r.settings.shutdown.clone();
    // Writes queued while catching up are published at once: their entries come after everything caught up.
    let mut first = true;
    let mut messages = loop {
        match r.catch_up(first).await {
            Ok(m) => break Some(m),
            Err(e) => {
                tracing::warn!(space = %r.space.name.escape_debug(), error = %e, "cluster: catching up failed; retrying");
                first = false;
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RETRY) => {}
                }
            }
        }
    };
    r.space.set_ready();
    ticker::guarded(&r.space, || ticker::flush(&r.space, r.settings.cap));
    // When to open a new consumer, while there is none.
    let mut reopen = Instant::now();
    loop {
        let next = r.next_deadline().into_iter().chain(messages.is_none().then_some(reopen)).min();
        let far = Instant::now() + Duration::from_secs(86_400);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            m = async { messages.as_mut().expect("guarded").next().await }, if messages.is_some() => match m {
                Some(Ok(msg)) => {
                    let space = r.space.clone();
                    ticker::guarded(&space, || r.apply(&msg, true));
                }
                // The consumer failed (the broker restarted, a heartbeat went missing) or ended: a new one
                // starts after the last entry applied. Meanwhile the loop goes on: writes still time out.
                end => {
                    if let Some(Err(e)) = end {
                        tracing::debug!(space = %r.space.name.escape_debug(), error = %e, "cluster: the consumer failed");
                    }
                    messages = None;
                    reopen = Instant::now();
                }
            },
            Some((batch, ok)) = r.acks.1.recv() => {
                r.in_flight -= 1;
                if !ok {
                    r.fail(batch);
                }
            }
            _ = r.lane.queued.notified() => {}
            _ = r.space.woken() => ticker::guarded(&r.space, || ticker::flush(&r.space, r.settings.cap)),
            _ = sleep_until(next.unwrap_or(far)), if next.is_some() => {}
        }
        if messages.is_none() && reopen <= Instant::now() {
            match tokio::time::timeout(RETRY, r.consumer()).await {
                Ok(Ok(m)) => messages = Some(m),
                _ => reopen = Instant::now() + RETRY,
            }
        }
        if !r.lane.is_empty() && r.publish_due() <= Instant::now() {
            r.publish().await;
        }
        r.timers();
        r.snapshot();
        if r.unused() && r.host.release(&r.space) {
            tracing::debug!(space = %r.space.name.escape_debug(), "cluster: let go of a space no client uses");
            // Whatever was queued in the meantime is answered: the space is gone, look it up again.
            for (_, tx) in r.lane.take() {
                let _ = tx.send(Err(Refusal::Retired));
            }
            return;
        }
    }
}

impl Replica {
    /// Takes the newest usable snapshot (on the first try), then applies the log up to its present end.
    async fn catch_up(&mut self, first: bool) -> Result<pull::Ordered> {
        if first {
            let since = {
                let st = self.space.lock();
                st.feed
                    .joining
                    .iter()
                    .filter_map(|j| j.since)
                    .filter(|(e, _)| *e == self.space.epoch)
                    .map(|(_, s)| s)
                    .min()
            };
            if let Some((position, bytes)) = self.load_snapshot(since).await? {
                let mut st = self.space.lock();
                st.model = SpaceModel::restore(st.model.rules(), &bytes)?;
                st.position = position;
                crate::telemetry::SNAPSHOTS_LOADED.increment(1);
                self.snapshot_at = (position, Instant::now());
            }
            {
                // Joining subscribers' view sets are rendered from here: a resume after this position finds its
                // diffs in the history.
                let mut guard = self.space.lock();
                let st = &mut *guard;
                let position = st.position;
                let sets: Vec<_> = st.feed.joining.iter().map(|j| j.slot.views).collect();
                for views in sets {
                    st.feed.history.subscribed(views, position);
                }
            }
            self.host.adopt(&self.space);
        }
        let head = match self.inner.stream.get_last_raw_message_by_subject(&self.subject).await {
            Ok(m) => m.sequence,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => 0,
            Err(e) => return Err(nats_error("reading the log's end", e)),
        };
        let mut messages = self.consumer().await?;
        while self.space.lock().position < head {
            let wait = self.settings.tick.max(Duration::from_secs(5));
            match tokio::time::timeout(wait, messages.next()).await {
                Ok(Some(Ok(msg))) => {
                    self.apply(&msg, false);
                    crate::telemetry::CATCH_UP_ENTRIES.increment(1);
                }
                Ok(Some(Err(e))) => return Err(nats_error("catching up", e)),
                Ok(None) => return Err(nats_error("catching up", "the consumer ended")),
                Err(_) => return Err(nats_error("catching up", "no entry within the wait")),
            }
        }
        Ok(messages)
    }

    /// An ordered consumer of the space's subject from the entry after the space's position.
    async fn consumer(&self) -> Result<pull::Ordered> {
        let start = self.space.lock().position + 1;
        let config = pull::OrderedConfig {
            filter_subject: self.subject.clone(),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: start },
            ..Default::default()
        };
        let consumer =
            self.inner.stream.create_consumer(config).await.map_err(|e| nats_error("a space's consumer", e))?;
        consumer.messages().await.map_err(|e| nats_error("a space's consumer", e))
    }

    /// The newest snapshot, or with `since` the newest at or before it (a resume then finds its diffs), if the
    /// bucket still has one.
    async fn load_snapshot(&self, since: Option<u64>) -> Result<Option<(u64, Vec<u8>)>> {
        use tokio::io::AsyncReadExt;
        let key = entry::key(&self.space.name);
        let mut all = Vec::new();
        for slot in 0..super::SNAPSHOT_SLOTS {
            let mut object = match self.inner.snapshots.get(format!("{key}.{slot}")).await {
                Ok(o) => o,
                Err(e) if e.kind() == async_nats::jetstream::object_store::GetErrorKind::NotFound => continue,
                Err(e) => return Err(nats_error("reading a snapshot", e)),
            };
            let mut bytes = Vec::new();
            object.read_to_end(&mut bytes).await.map_err(|e| nats_error("reading a snapshot", e))?;
            if bytes.len() >= 8 {
                let position = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
                bytes.drain(..8);
                all.push((position, bytes));
            }
        }
        all.sort_by_key(|(p, _)| *p);
        let at_or_before = since.and_then(|since| all.iter().rposition(|(p, _)| *p <= since));
        Ok(match at_or_before {
            Some(i) => Some(all.swap_remove(i)),
            None => all.pop(),
        })
    }

    /// Applies one entry, cuts the tick, fans it out, and answers (or settles) each of its events.
    fn apply(&mut self, msg: &async_nats::jetstream::Message, ready: bool) {
        let Ok(info) = msg.info() else { return };
        let (seq, stored_ms) = (info.stream_sequence, (info.published.unix_timestamp_nanos() / 1_000_000) as u64);
        if seq <= self.space.lock().position {
            return;
        }
        let (header, events) = match entry::read(&msg.payload) {
            Ok(x) => x,
            Err(e) => {
                // Every node skips it alike.
                tracing::error!(seq, error = %e, "cluster: skipped an entry");
                self.space.lock().position = seq;
                return;
            }
        };
        // Taken out before applying: should applying panic, they are dropped, and their requesters hear
        // `unavailable` rather than nothing.
        let mine = header.node == self.inner.node;
        let mut answers = if mine { self.waiting.remove(&header.batch).unwrap_or_default() } else { Vec::new() };
        let late = stored_ms > header.deadline_ms;
        crate::telemetry::ENTRIES_APPLIED.increment(1);
        crate::telemetry::ENTRY_LAG_SECONDS.record(now_ms().saturating_sub(header.sent_ms) as f64 / 1000.0);
        let mut results = Vec::with_capacity(events.len());
        let started = std::time::Instant::now();
        let tick = {
            let mut guard = self.space.lock();
            let st = &mut *guard;
            for event in events {
                let owner = match &event {
                    SpaceEvent::RunStarted { ctx, .. } => ctx.get("owner").and_then(|o| o.as_str()).map(Arc::from),
                    _ => None,
                };
                let r = if late {
                    Err(Refusal::Refused(unavailable()))
                } else {
                    match st.model.apply(event) {
                        Ok(mut a) => {
                            st.feed.record(&st.model, &mut a);
                            Ok(Sequenced { position: seq, applied: a })
                        }
                        Err(e) => Err(Refusal::Refused(e)),
                    }
                };
                results.push((r, owner));
            }
            st.position = seq;
            st.dirty = false;
            // Subscribers wait for their snapshot until the space has caught up.
            let held = (!ready).then(|| std::mem::take(&mut st.feed.joining));
            let tick = st.feed.flush(&st.model, self.space.epoch, seq);
            if let Some(held) = held {
                st.feed.joining = held;
            }
            tick
        };
        if let Some(tick) = tick {
            let sent = tick.send(self.settings.cap);
            let mut st = self.space.lock();
            if st.feed.sent(sent) {
                self.space.changed(&mut st);
            }
        }
        crate::telemetry::FLUSH_SECONDS.record(started.elapsed().as_secs_f64());
        for (i, (r, owner)) in results.into_iter().enumerate() {
            let unanswered = match answers.get_mut(i).and_then(Option::take) {
                Some(tx) => match tx.send(r) {
                    Ok(()) => continue,
                    // Its requester stopped waiting.
                    Err(r) => r,
                },
                None => r,
            };
            if let Ok(s) = unanswered {
                let origin = if mine { Origin::Orphan } else { Origin::Remote };
                self.host.settle(&self.space, origin, s.applied, owner);
            }
        }
    }

    /// When the queued writes may be published: at once after an idle tick, else a tick after the last publish.
    fn publish_due(&self) -> Instant {
        self.last_publish.map_or_else(Instant::now, |t| t + self.settings.tick)
    }

    /// Publishes everything queued as one entry (several if it would pass the server's payload limit).
    async fn publish(&mut self) {
        let queued = self.lane.take();
        if queued.is_empty() {
            return;
        }
        self.last_publish = Some(Instant::now());
        let wait = self.inner.settings.write_timeout;
        // Half the wait: an entry the log stores later is refused by every node, and its acknowledgement had the
        // other half to come back.
        let sent_ms = now_ms();
        let deadline_ms = sent_ms + wait.as_millis() as u64 / 2;
        let mut answers = Vec::with_capacity(queued.len());
        for (event, tx) in queued {
            self.writer.push(&event);
            if self.writer.len() > self.inner.max_entry && self.writer.count() > 1 {
                // Full: the entry goes without this event, which starts the next one.
                self.writer.pop();
                self.send(std::mem::take(&mut answers), sent_ms, deadline_ms).await;
                self.writer.push(&event);
            }
            if self.writer.len() > self.inner.max_entry {
                self.writer.pop();
                let e = Error::new(ErrorCode::LimitExceeded, "the write is larger than the cluster's log takes");
                let _ = tx.send(Err(Refusal::Refused(e)));
                continue;
            }
            answers.push(Some(tx));
        }
        if !self.writer.is_empty() {
            self.send(answers, sent_ms, deadline_ms).await;
        }
    }

    async fn send(&mut self, answers: Vec<Option<Answer>>, sent_ms: u64, deadline_ms: u64) {
        let batch = self.next_batch;
        self.next_batch += 1;
        let payload = self.writer.take(Header { node: self.inner.node, batch, sent_ms, deadline_ms });
        crate::telemetry::ENTRIES_PUBLISHED.increment(1);
        self.waiting.insert(batch, answers);
        let wait = self.inner.settings.write_timeout;
        let published = tokio::time::timeout(wait, self.inner.js.publish(self.subject.clone(), payload.into())).await;
        match published {
            Ok(Ok(ack)) => {
                self.in_flight += 1;
                let acks = self.acks.0.clone();
                tokio::spawn(async move {
                    let ok = matches!(tokio::time::timeout(wait, ack).await, Ok(Ok(_)));
                    let _ = acks.send((batch, ok));
                });
            }
            _ => self.fail(batch),
        }
    }

    /// The log did not take a batch in time: its writes are answered `unavailable` (should the entry still be
    /// stored, it is stored past its deadline and every node refuses it).
    fn fail(&mut self, batch: u64) {
        for tx in self.waiting.remove(&batch).into_iter().flatten().flatten() {
            let _ = tx.send(Err(Refusal::Refused(unavailable())));
        }
    }

    /// The next moment the loop must wake for: a publish, a lingering run's end, a deferred resync, a snapshot.
    fn next_deadline(&self) -> Option<Instant> {
        let st = self.space.lock();
        let publish = (!self.lane.is_empty()).then(|| self.publish_due());
        let linger = st.model.next_linger_end().map(|ms| self.host.instant_at(ms));
        let linger = match (linger, self.linger_retry) {
            (Some(l), Some(r)) => Some(l.max(r)),
            (l, _) => l,
        };
        let snapshot =
            (st.position > self.snapshot_at.0).then(|| self.snapshot_at.1 + self.inner.settings.snapshot_interval);
        let keep = st.feed.idle_at().map(|_| self.kept_until().max(Instant::now()) + Duration::from_millis(1));
        let orphans = Some(self.orphans_at).filter(|_| !st.model.is_empty());
        [publish, linger, st.feed.resync_wake, snapshot, keep, orphans].into_iter().flatten().min()
    }

    /// Submits the end of lingering runs whose linger is over (on every node that holds the space: applying one
    /// twice is a no-op), at most once a second while the first submission makes its way through the log.
    fn timers(&mut self) {
        let now = Instant::now();
        if self.linger_retry.is_some_and(|r| r > now) {
            return;
        }
        let due = {
            let st = self.space.lock();
            st.model.next_linger_end().is_some_and(|ms| self.host.instant_at(ms) <= now)
        };
        if due {
            self.host.expire_lingering(&self.space);
            self.linger_retry = Some(now + RETRY);
        }
        if self.orphans_at <= now {
            self.orphans_at = now + ORPHAN_CHECK;
            self.orphans();
        }
    }

    /// Fails the running runs whose producer's node is gone from the nodes bucket (it died: its connections
    /// cannot report their own loss). Every node holding the space may find them; the first failure applied wins,
    /// the others are no-ops.
    fn orphans(&self) {
        let me = self.inner.node;
        let runs: Vec<_> = {
            let st = self.space.lock();
            st.model
                .runs()
                .filter(|(_, r)| !r.status.is_finished())
                .filter_map(|(id, r)| r.producer.filter(|p| p.node != me).map(|p| (*id, p)))
                .collect()
        };
        if runs.is_empty() {
            return;
        }
        let mut nodes: Vec<u64> = runs.iter().map(|(_, p)| p.node).collect();
        nodes.sort_unstable();
        nodes.dedup();
        let (inner, host) = (self.inner.clone(), self.host.clone());
        tokio::spawn(async move {
            let dead = inner.dead(nodes).await;
            let lost: Vec<_> = runs.into_iter().filter(|(_, p)| dead.contains(&p.node)).collect();
            if !lost.is_empty() {
                tracing::info!(runs = lost.len(), "cluster: failing runs whose producer's node is gone");
                host.producers_lost(lost);
            }
        });
    }

    /// Writes a snapshot when enough entries or time have passed since the last one.
    fn snapshot(&mut self) {
        let (position, since) = self.snapshot_at;
        let bytes = {
            let st = self.space.lock();
            let many = st.position >= position + self.inner.settings.snapshot_every;
            let stale = st.position > position && since.elapsed() >= self.inner.settings.snapshot_interval;
            if !many && !stale {
                return;
            }
            let mut bytes = st.position.to_be_bytes().to_vec();
            bytes.extend_from_slice(&st.model.snapshot());
            self.snapshot_at = (st.position, Instant::now());
            bytes
        };
        // One snapshot per interval for the whole cluster: the slot is the interval's, and a node that finds it
        // already written in this interval leaves it (each object is a whole snapshot, so a race costs only a
        // second write).
        let interval = self.inner.settings.snapshot_interval.as_millis().max(1) as u64;
        let number = now_ms() / interval;
        let slot = number % super::SNAPSHOT_SLOTS;
        let name = format!("{}.{slot}", entry::key(&self.space.name));
        let snapshots = self.inner.snapshots.clone();
        tokio::spawn(async move {
            let written = snapshots.info(name.as_str()).await.ok().and_then(|i| i.modified);
            if written.is_some_and(|t| (t.unix_timestamp_nanos() / 1_000_000) as u64 / interval == number) {
                return;
            }
            match snapshots.put(name.as_str(), &mut bytes.as_slice()).await {
                Ok(_) => crate::telemetry::SNAPSHOTS_WRITTEN.increment(1),
                Err(e) => tracing::debug!(error = %e, "cluster: could not write a snapshot"),
            }
        });
    }

    /// Whether no client of this node uses the space any more: no subscriber, nothing in flight, and no write for
    /// the keep period.
    fn unused(&self) -> bool {
        if !self.waiting.is_empty() || self.in_flight > 0 || !self.lane.is_empty() {
            return false;
        }
        self.kept_until() <= Instant::now() && self.space.lock().feed.idle_at().is_some()
    }

    /// Until when the space is kept for this node's writers: the keep period after the last write queued (or
    /// after the space was taken: the request that took it may not have queued its write yet).
    fn kept_until(&self) -> Instant {
        self.lane.last_write().unwrap_or(self.taken) + self.inner.settings.keep
    }
}
