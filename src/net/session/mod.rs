//! One WebSocket connection: a reader loop that parses each frame, dispatches it to the engine and queues the reply,
//! and a writer task that drains replies and the connection's subscription slots and writes them with one flush.
//! Protocol errors are answered with an `error` frame and the connection stays open; transport errors end it
//! quietly; an oversized frame or invalid UTF-8 closes it with 1009 or 1007. [`auth`] keeps its standing with
//! authentication, [`dispatch`] turns requests into engine commands, and [`transport`] is the socket side.

mod auth;
mod dispatch;
pub mod transport;

use crate::config::Limits;
use crate::engine::Engine;
use crate::engine::caller::Caller;
use crate::engine::ratelimit::{ConnectionRate, Verdict};
use crate::engine::ticker;
use crate::error::{Error, ErrorCode};
use crate::feed::subscriber::{Outbox, SubSlot};
use crate::model::context::{RunHasher, RunId};
use crate::model::path::PathLimits;
use crate::net::auth::Auth;
use crate::net::pace::Pace;
use crate::protocol::{self, ParseLimits, close};
use axum::extract::ws::Message;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use transport::{Outgoing, Socket, close_code_for, drain_after_close, write_loop};

/// Where a connection stands with authentication.
#[derive(Debug)]
enum AuthState {
    /// Development mode: every caller is trusted. The caller is built once per connection, not per message.
    Off(Arc<Caller>),
    /// Waiting for a valid `hello` until the deadline.
    Waiting,
    /// Authenticated until the token's `exp` (the caller already carries this connection's id).
    Valid(Arc<Caller>),
    /// The token expired; a fresh `hello` is due before the grace deadline.
    Expired,
}

/// Size of a connection's produced-run set from which runs finished elsewhere are pruned (at each power of two).
const PRODUCED_PRUNE_AT: usize = 1024;

/// Bytes of messages a connection's reader handles before it lets other tasks run.
const YIELD_BYTES: usize = 64 * 1024;

struct Session {
    engine: Engine,
    outbox: Arc<Outbox>,
    tx: mpsc::Sender<Outgoing>,
    /// Replies that wait for durability, in request order; later replies queue behind them.
    /// `None`: a write answered only when it fails, which did not.
    waiting: FuturesOrdered<BoxFuture<'static, Option<String>>>,
    subs: HashMap<u64, Arc<SubSlot>>,
    parse_limits: ParseLimits,
    auth: Option<Auth>,
    state: AuthState,
    /// When the current authentication state ends (deadline, `exp`, or grace).
    auth_timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// This connection's id (a run's producer).
    connection: u64,
    /// Live runs this connection started or changed: if it drops, they wait for their producer's return.
    produced: HashSet<RunId, RunHasher>,
    /// Server-side operations of this connection running at once.
    operations: Arc<tokio::sync::Semaphore>,
    /// The owner whose connection quota this connection holds (given back when the session is dropped).
    counted_owner: Option<crate::engine::budget::ConnectionQuota>,
}

/// Answerless writes in a row after which a connection is paced.
const PACE_AFTER: u32 = 16;

/// Whether a connection is read once per tick (paced) or as its messages arrive. A connection that keeps sending
/// writes that ask for no answer (`patch` or `patches` without an `id`) is paced after [`PACE_AFTER`] of them in a
/// row: nobody waits for their answer, and subscribers see them at the next flush anyway, which a read just before
/// it (`ticker::read_at`) does not delay. Any other message (a request with an `id`, a subscribe, a bad frame) ends
/// the pacing at once; the request that ended it waited at most until the next read, less than a tick.
#[derive(Debug, Default)]
struct Paced {
    on: bool,
    streak: u32,
}

impl Paced {
    /// Counts one message; returns the new mode when it changes.
    fn saw(&mut self, answerless: bool) -> Option<bool> {
        if !answerless {
            self.streak = 0;
            return std::mem::take(&mut self.on).then_some(false);
        }
        self.streak = self.streak.saturating_add(1);
        (!self.on && self.streak >= PACE_AFTER).then(|| {
            self.on = true;
            true
        })
    }
}

/// Connection ids, unique for the process (0 is never used).
static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + std::time::Duration::from_secs(86_400 * 365)
}

/// Serves one upgraded socket until either side closes it or the server shuts down. `pace` is how to pace its
/// socket, when the server paces producers (`EngineConfig::pace_producers`) and the socket can be paced.
/// `auth` is the server's verifier (`None`: development mode); `caller` is who the upgrade request already proved
/// to be (a token in the subprotocol), if anyone.
pub async fn serve(
    socket: impl Socket,
    engine: Engine,
    shutdown: CancellationToken,
    auth: Option<Auth>,
    caller: Option<Caller>,
    pace: Option<Arc<Pace>>,
) {
    crate::telemetry::CONNECTIONS.increment(1.0);
    serve_connection(socket, engine, shutdown, auth, caller, pace).await;
    crate::telemetry::CONNECTIONS.decrement(1.0);
}

async fn serve_connection(
    socket: impl Socket,
    engine: Engine,
    shutdown: CancellationToken,
    auth: Option<Auth>,
    caller: Option<Caller>,
    pace: Option<Arc<Pace>>,
) {
    let limits: Limits = engine.config().limits.clone();
    let tick = engine.config().tick;
    let (sink, mut stream) = socket.split();
    let outbox = Outbox::new(limits.max_connection_pending_bytes, limits.max_reply_bytes);
    let (tx, rx) = mpsc::channel(limits.reply_queue);
    // Cancelled when the writer ends (the peer stopped reading, or the socket failed): the reader stops too.
    let writer_done = CancellationToken::new();
    let writer = tokio::spawn({
        let done = writer_done.clone().drop_guard();
        let (outbox, ping, write_timeout) = (outbox.clone(), limits.ping_interval, limits.write_timeout);
        async move {
            write_loop(sink, rx, outbox, ping, write_timeout).await;
            drop(done);
        }
    });
    // Bytes are refused like messages, and a client that keeps sending after as many refusals in a row as the
    // message burst allows is closed the same way.
    let mut rate = ConnectionRate::new(
        limits.messages_per_second,
        limits.message_burst,
        limits.bytes_per_second,
        limits.byte_burst,
    );
    let idle = tokio::time::sleep(limits.idle_timeout);
    let mut last_heard = tokio::time::Instant::now();
    let mut unyielded = 0usize;
    tokio::pin!(idle);
    let connection = NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed);
    let mut session = Session {
        engine,
        outbox,
        tx,
        waiting: FuturesOrdered::new(),
        subs: HashMap::new(),
        parse_limits: ParseLimits {
            path: PathLimits { max_bytes: limits.max_path_bytes, max_depth: limits.max_path_depth },
            max_ops_per_patch: limits.max_ops_per_patch,
            max_patches_per_frame: limits.max_patches_per_frame,
            max_ops_per_frame: limits.max_ops_per_frame,
            max_json_depth: limits.max_json_depth,
        },
        state: if auth.is_none() {
            AuthState::Off(Arc::new(Caller::trusted().on_connection(connection)))
        } else {
            AuthState::Waiting
        },
        auth,
        auth_timer: Box::pin(tokio::time::sleep_until(far_future())),
        connection,
        produced: HashSet::default(),
        counted_owner: None,
        operations: Arc::new(tokio::sync::Semaphore::new(limits.max_operations_per_connection)),
    };
    match caller {
        Some(c) => {
            if let Err(e) = session.authenticated(c) {
                session.send_now(error_frame(&None, &e, None)).await;
                let _ = session.tx.send(Outgoing::Close(close::QUOTA, "too many connections")).await;
            }
        }
        None if session.auth.is_some() => {
            session.auth_timer.as_mut().reset(tokio::time::Instant::now() + limits.auth_timeout)
        }
        None => {}
    }
    // Set when the server closes the connection: the close frame goes out after the acknowledgements still owed.
    let mut closing: Option<(u16, &'static str)> = None;
    // Created once: a cancellation future made inside the loop would join and leave the token's waiter list at
    // every wake-up of the connection.
    let (server_stopping, writer_stopped) = (shutdown.cancelled(), writer_done.cancelled());
    tokio::pin!(server_stopping, writer_stopped);
    // Pacing (see `Paced`): the next read of a paced connection, on the shared clock.
    let mut paced = Paced::default();
    let read_tick = tokio::time::sleep_until(far_future());
    tokio::pin!(read_tick);
    loop {
        // Biased: while frames keep arriving, the other branches are not polled (and their wakers not registered
        // and dropped again) once per frame; tokio's cooperative budget still makes the stream yield after a burst,
        // so shutdown and the timers are seen under any load.
        let msg = tokio::select! {
            biased;
            Some(frame) = session.waiting.next(), if !session.waiting.is_empty() => {
                if let Some(frame) = frame {
                    session.send_now(frame).await;
                }
                continue;
            }
            _ = &mut read_tick, if paced.on => {
                // Whatever arrived since the last tick, the mark held back from epoll: read it now.
                if let Some(pace) = &pace {
                    pace.drain();
                }
                read_tick.as_mut().reset(ticker::read_at(tokio::time::Instant::now(), tick));
                continue;
            }
            m = stream.next(), if session.waiting.len() < limits.reply_queue && !session.outbox.replies_full() => m,
            // The replies waiting for the writer filled their cap: read again once it wrote some.
            _ = session.outbox.reply_room(), if session.outbox.replies_full() => continue,
            _ = &mut server_stopping => {
                closing = Some((close::GOING_AWAY, "server shutting down"));
                break;
            }
            _ = &mut writer_stopped => break,
            _ = &mut session.auth_timer => {
                match session.state {
                    AuthState::Valid(_) => {
                        session.state = AuthState::Expired;
                        // No subscription data until a valid token: what arrives meanwhile waits in the slots
                        // (bounded; past the caps they get a resync snapshot once delivery resumes).
                        session.outbox.set_paused(true);
                        session.auth_timer.as_mut().reset(tokio::time::Instant::now() + limits.token_grace);
                        let e = Error::new(ErrorCode::TokenExpired, "token expired: send a fresh hello");
                        session.send(error_frame(&None, &e, None)).await;
                        continue;
                    }
                    AuthState::Off(_) => {
                        session.auth_timer.as_mut().reset(far_future());
                        continue;
                    }
                    AuthState::Expired => closing = Some((close::TOKEN_EXPIRED, "token expired")),
                    AuthState::Waiting => closing = Some((close::UNAUTHENTICATED, "authentication failed")),
                }
                break;
            }
            _ = &mut idle => {
                // The deadline is moved lazily: a message only stamps `last_heard`, and the timer is re-armed
                // here (resetting a timer on every message cost a timer-wheel update per token).
                if last_heard.elapsed() < limits.idle_timeout {
                    idle.as_mut().reset(last_heard + limits.idle_timeout);
                    continue;
                }
                tracing::debug!("closing an idle connection");
                closing = Some((close::IDLE, "no pong"));
                break;
            }
        };
        last_heard = tokio::time::Instant::now();
        let payload = match &msg {
            Some(Ok(Message::Text(t))) => Some(t.len()),
            Some(Ok(Message::Binary(b))) => Some(b.len()),
            _ => None,
        };
        if let Some(len) = payload {
            // Fairness between connections: a connection that keeps sending large messages yields its worker
            // after every `YIELD_BYTES` it handled, so that the others' messages are read in between. (Tokio's
            // cooperative budget counts readiness polls, not bytes: 128 messages of 60 KB each would run first.)
            unyielded += len;
            if unyielded >= YIELD_BYTES {
                unyielded = 0;
                tokio::task::yield_now().await;
            }
            match rate.check_at(last_heard, len) {
                Verdict::Allow => {}
                Verdict::Refuse => {
                    // The message is dropped unhandled, but a request still gets its answer (its `id`).
                    let id = match &msg {
                        Some(Ok(Message::Text(text))) => protocol::request_id(text.as_str()),
                        _ => None,
                    };
                    let e = Error::new(ErrorCode::RateLimited, "message or byte rate limit exceeded; message dropped");
                    crate::telemetry::refusal(ErrorCode::RateLimited);
                    session.send(error_frame(&id, &e, None)).await;
                    continue;
                }
                Verdict::Close => {
                    closing = Some((close::POLICY, "rate limit"));
                    break;
                }
            }
        }
        let answerless = match msg {
            None | Some(Ok(Message::Close(_))) => break,
            Some(Ok(Message::Text(text))) => session.handle(text.as_str()).await,
            Some(Ok(Message::Binary(_))) => {
                let e = Error::new(ErrorCode::BinaryFrame, "binary frames are not part of the protocol");
                session.send(error_frame(&None, &e, None)).await;
                false
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Err(e)) => {
                closing = close_code_for(&e);
                tracing::debug!(error = %e, "connection ended");
                break;
            }
        };
        if let Some(pace) = &pace
            && let Some(on) = paced.saw(answerless)
        {
            pace.set_paced(on);
            crate::telemetry::PACED_CONNECTIONS.increment(if on { 1.0 } else { -1.0 });
            if on {
                read_tick.as_mut().reset(ticker::read_at(tokio::time::Instant::now(), tick));
            }
        }
    }
    if paced.on {
        crate::telemetry::PACED_CONNECTIONS.decrement(1.0);
    }
    // Acknowledgements already owed are sent once durable, before any close frame.
    while let Some(frame) = session.waiting.next().await {
        if let Some(frame) = frame {
            session.send_now(frame).await;
        }
    }
    if let Some((code, reason)) = closing {
        let _ = session.tx.send(Outgoing::Close(code, reason)).await;
        drain_after_close(&mut stream).await;
    }
    for slot in session.subs.values() {
        session.engine.unsubscribe(slot);
    }
    session.engine.connection_lost(session.connection, session.produced.drain().collect());
    session.outbox.close();
    drop(session);
    let _ = writer.await;
}

impl Session {
    /// Remembers a live run this connection changed. Runs finished by others are forgotten now and then, so the
    /// set stays about as large as the runs this connection really keeps alive.
    fn note_produced(&mut self, run: RunId) {
        if self.produced.insert(run)
            && self.produced.len() >= PRODUCED_PRUNE_AT
            && self.produced.len().is_power_of_two()
        {
            let engine = &self.engine;
            self.produced.retain(|id| engine.is_live(*id));
        }
    }

    async fn send_now(&mut self, frame: String) {
        // The writer only goes away with the connection; a failed send means there is no one left to tell.
        self.outbox.reply_queued(frame.len());
        let _ = self.tx.send(Outgoing::Frame(frame)).await;
    }

    /// Sends a reply in request order: at once, unless earlier replies still wait for durability.
    async fn send(&mut self, frame: String) {
        if self.waiting.is_empty() {
            self.send_now(frame).await;
        } else {
            self.waiting.push_back(futures::future::ready(Some(frame)).boxed());
        }
    }
}

/// An `error` frame, counted in the metrics by code.
fn error_frame(id: &protocol::ReqId, e: &Error, run: Option<&serde_json::Map<String, Value>>) -> String {
    crate::telemetry::error(e.code);
    protocol::error(id, e, run)
}
