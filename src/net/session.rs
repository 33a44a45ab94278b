//! One WebSocket connection: a reader loop that parses each frame, dispatches it to the engine and queues the reply,
//! and a writer task that drains replies and the connection's subscription slots and writes them with one flush.
//! Protocol errors are answered with an `error` frame and the connection stays open; transport errors end it
//! quietly; an oversized frame or invalid UTF-8 closes it with 1009 or 1007.

use crate::config::Limits;
use crate::engine::caller::Caller;
use crate::engine::ratelimit::{ConnectionRate, Verdict};
use crate::engine::{Engine, SubscribeRequest};
use crate::error::{Error, ErrorCode};
use crate::feed::subscriber::{Frame, Outbox, SubSlot};
use crate::model::context::{RunHasher, RunId};
use crate::model::path::PathLimits;
use crate::net::auth::Auth;
use crate::protocol::{self, ClientMsg, ParseLimits};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, SinkExt, StreamExt};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Close codes the server sends (protocol.md, "Close codes").
pub mod close {
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// A text frame that is not valid UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// A client that kept sending past its rate limit after being refused.
    pub const POLICY: u16 = 1008;
    /// A message over the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// Nothing (not even a pong) arrived within the idle timeout.
    pub const IDLE: u16 = 4000;
    /// No valid token within the authentication deadline, or a bad token.
    pub const UNAUTHENTICATED: u16 = 4001;
    /// The owner already has as many connections as allowed.
    pub const QUOTA: u16 = 4003;
    /// The peer stopped reading: nothing could be written for the write timeout (sent only if it still gets through).
    pub const SLOW: u16 = 4008;
    /// The token expired and no fresh `hello` came within the grace period.
    pub const TOKEN_EXPIRED: u16 = 4002;
}

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

/// How long the server keeps reading (and dropping) a peer's frames after sending it a close frame.
const CLOSE_DRAIN: std::time::Duration = std::time::Duration::from_secs(1);

enum Outgoing {
    Frame(String),
    Close(u16, &'static str),
}

struct Session {
    engine: Engine,
    outbox: Arc<Outbox>,
    tx: mpsc::Sender<Outgoing>,
    /// Replies that wait for durability, in request order; later replies queue behind them.
    waiting: FuturesOrdered<BoxFuture<'static, String>>,
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

/// Connection ids, unique for the process (0 is never used).
static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + std::time::Duration::from_secs(86_400 * 365)
}

/// Serves one upgraded socket until either side closes it or the server shuts down.
/// `auth` is the server's verifier (`None`: development mode); `caller` is who the upgrade request already proved
/// to be (a token in the subprotocol), if anyone.
pub async fn serve(
    socket: WebSocket,
    engine: Engine,
    shutdown: CancellationToken,
    auth: Option<Auth>,
    caller: Option<Caller>,
) {
    crate::telemetry::CONNECTIONS.increment(1.0);
    serve_connection(socket, engine, shutdown, auth, caller).await;
    crate::telemetry::CONNECTIONS.decrement(1.0);
}

async fn serve_connection(
    socket: WebSocket,
    engine: Engine,
    shutdown: CancellationToken,
    auth: Option<Auth>,
    caller: Option<Caller>,
) {
    let limits: Limits = engine.config().limits.clone();
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
    loop {
        // Biased: while frames keep arriving, the other branches are not polled (and their wakers not registered
        // and dropped again) once per frame; tokio's cooperative budget still makes the stream yield after a burst,
        // so shutdown and the timers are seen under any load.
        let msg = tokio::select! {
            biased;
            Some(frame) = session.waiting.next(), if !session.waiting.is_empty() => {
                session.send_now(frame).await;
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
        match msg {
            None | Some(Ok(Message::Close(_))) => break,
            Some(Ok(Message::Text(text))) => session.handle(text.as_str()).await,
            Some(Ok(Message::Binary(_))) => {
                let e = Error::new(ErrorCode::BinaryFrame, "binary frames are not part of the protocol");
                session.send(error_frame(&None, &e, None)).await;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Err(e)) => {
                closing = close_code_for(&e);
                tracing::debug!(error = %e, "connection ended");
                break;
            }
        }
    }
    // Acknowledgements already owed are sent once durable, before any close frame.
    while let Some(frame) = session.waiting.next().await {
        session.send_now(frame).await;
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

/// After the server sent a close frame: reads and drops the peer's frames until it closes, for at most
/// [`CLOSE_DRAIN`]. A socket closed with unread input is reset, and the peer might never read the close frame; if
/// the stream cannot be read any more (after an oversized message), the socket is held until the deadline instead.
pub async fn drain_after_close<S>(stream: &mut S)
where
    S: futures::Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + CLOSE_DRAIN;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(Message::Close(_)))) | Err(_) => return,
            // After an oversized message the rest of it no longer parses: keep reading (and dropping) anyway, so
            // the socket does not close with unread input.
            Ok(Some(_)) => continue,
            Ok(None) => {
                // Nothing more can be read through the WebSocket: hold the socket until the deadline, so the peer
                // has time to read the close frame before the socket goes.
                tokio::time::sleep_until(deadline).await;
                return;
            }
        }
    }
}

/// Maps a read error to the close frame the client should see, if any.
pub fn close_code_for(e: &axum::Error) -> Option<(u16, &'static str)> {
    use tokio_tungstenite::tungstenite::Error as WsError;
    use tokio_tungstenite::tungstenite::error::CapacityError;
    let inner = std::error::Error::source(e).and_then(|s| s.downcast_ref::<WsError>())?;
    match inner {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => Some((close::TOO_BIG, "message too big")),
        WsError::Utf8(_) => Some((close::INVALID_DATA, "invalid UTF-8")),
        _ => None,
    }
}

impl Session {
    /// Takes the caller as this connection's identity (counting it against its owner's connection quota the first
    /// time).
    fn authenticated(&mut self, caller: Caller) -> Result<(), Error> {
        if self.counted_owner.is_none()
            && let Some(owner) = &caller.owner
        {
            self.counted_owner = Some(self.engine.connection_opened(owner)?);
        }
        // Checked arithmetic: an `exp` at the end of time (2^64 - 1) is a deadline that never comes, not a panic.
        let deadline = caller
            .expires
            .and_then(|exp| {
                tokio::time::Instant::now().checked_add(std::time::Duration::from_secs(exp.saturating_sub(unix_now())))
            })
            .map_or_else(far_future, |d| d.min(far_future()));
        self.auth_timer.as_mut().reset(deadline);
        self.state = AuthState::Valid(Arc::new(caller.on_connection(self.connection)));
        self.outbox.set_paused(false);
        Ok(())
    }

    /// Ends the subscriptions the caller's claims no longer allow (after a refreshed token), each with an error
    /// frame naming it.
    async fn revoke_subscriptions(&mut self, caller: &Caller) {
        let revoked: Vec<u64> =
            self.subs.iter().filter(|(_, slot)| !caller.can_read(&slot.space)).map(|(id, _)| *id).collect();
        for sub in revoked {
            if let Some(slot) = self.subs.remove(&sub) {
                self.engine.unsubscribe(&slot);
                let e =
                    Error::new(ErrorCode::Forbidden, "the refreshed token may not read this space: subscription ended");
                crate::telemetry::error(e.code);
                self.send(protocol::subscription_error(sub, &e)).await;
            }
        }
    }

    /// The caller for a request, or the error that refuses it.
    fn caller(&self) -> Result<Arc<Caller>, Error> {
        match &self.state {
            AuthState::Off(c) | AuthState::Valid(c) => Ok(c.clone()),
            AuthState::Waiting => Err(Error::new(ErrorCode::Unauthenticated, "send `hello` with a token first")),
            AuthState::Expired => Err(Error::new(ErrorCode::TokenExpired, "token expired: send a fresh hello")),
        }
    }

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
            self.waiting.push_back(futures::future::ready(frame).boxed());
        }
    }

    /// The limits the `hello` reply tells the client.
    fn client_limits(&self) -> protocol::ClientLimits {
        let config = self.engine.config();
        let l = &config.limits;
        protocol::ClientLimits {
            max_message_bytes: l.max_message_bytes,
            max_ops_per_patch: l.max_ops_per_patch,
            max_run_bytes: l.max_run_bytes,
            messages_per_second: l.messages_per_second,
            bytes_per_second: l.bytes_per_second,
            ping_interval_ms: l.ping_interval.as_millis() as u64,
            idle_timeout_ms: l.idle_timeout.as_millis() as u64,
            tick_ms: config.tick.as_millis() as u64,
        }
    }

    /// `hello`: verifies the token (in development mode any or none is accepted). A bad token closes the
    /// connection (4001) after the error; a connection may send a fresh token for the same subject at any time.
    async fn hello(&mut self, id: protocol::ReqId, token: Option<String>) {
        let Some(auth) = &self.auth else {
            return self.send(protocol::hello_reply(&id, None, None, &self.client_limits())).await;
        };
        // Without a token, on a connection that has one, `hello` asks what it stands on (a liveness probe): the
        // reply as for the token it holds, or `token_expired`; the connection stays as it is.
        match (&token, &self.state) {
            (None, AuthState::Valid(c)) => {
                let reply = protocol::hello_reply(&id, c.owner.as_deref(), c.expires, &self.client_limits());
                return self.send(reply).await;
            }
            (None, AuthState::Expired) => {
                let e = Error::new(ErrorCode::TokenExpired, "token expired: send a fresh hello");
                return self.send(error_frame(&id, &e, None)).await;
            }
            _ => {}
        }
        let verified = match token {
            Some(t) => auth.verify(&t),
            None => Err(Error::new(ErrorCode::Unauthenticated, "`hello` needs a `token`")),
        };
        let verified = verified.and_then(|c| match &self.counted_owner {
            Some(quota) if c.owner.as_ref() != Some(&quota.owner) => {
                Err(Error::new(ErrorCode::Forbidden, "a refreshed token must have the same subject"))
            }
            _ => Ok(c),
        });
        match verified {
            Ok(caller) => {
                let reply = protocol::hello_reply(&id, caller.owner.as_deref(), caller.expires, &self.client_limits());
                self.revoke_subscriptions(&caller).await;
                match self.authenticated(caller) {
                    Ok(()) => self.send(reply).await,
                    Err(e) => {
                        self.send(error_frame(&id, &e, None)).await;
                        let _ = self.tx.send(Outgoing::Close(close::QUOTA, "too many connections")).await;
                        self.state = AuthState::Waiting;
                        self.auth_timer.as_mut().reset(far_future());
                    }
                }
            }
            Err(e) => {
                self.send(error_frame(&id, &e, None)).await;
                // Make the auth timer fire now: the loop closes the connection with 4001.
                self.state = AuthState::Waiting;
                self.auth_timer.as_mut().reset(tokio::time::Instant::now());
            }
        }
    }

    /// Queues the reply to `complete` or `fail`: sent once the run's record is durable.
    fn send_when_durable(&mut self, id: protocol::ReqId, finished: Result<crate::engine::Finished, Error>) {
        let frame = async move {
            match finished {
                Ok(f) => match f.durable().await {
                    Ok(ctx) => protocol::reply(&id, Some(&ctx)),
                    Err(e) => error_frame(&id, &e, None),
                },
                Err(e) => error_frame(&id, &e, None),
            }
        };
        self.waiting.push_back(frame.boxed());
    }

    async fn handle(&mut self, text: &str) {
        let msg = match protocol::parse(text, &self.parse_limits) {
            Ok(msg) => msg,
            Err(rej) => {
                tracing::debug!(code = %rej.error.code, "rejected a frame");
                return self.send(error_frame(&rej.id, &rej.error, None)).await;
            }
        };
        if let ClientMsg::Hello { id, token } = msg {
            return self.hello(id, token).await;
        }
        let caller = match self.caller() {
            Ok(c) => c,
            Err(e) => return self.send(error_frame(msg.id(), &e, None)).await,
        };
        match msg {
            ClientMsg::Hello { .. } => unreachable!("handled above"),
            ClientMsg::Run { id, spec } if self.engine.has_operation(&spec.operation) => {
                // A server-side operation may take a while: keep reading meanwhile (its reply may come out of
                // order), up to `max_operations_per_connection` at once; past that, reading waits for one to end.
                let Ok(permit) = self.operations.clone().acquire_owned().await else { return };
                let (engine, tx, outbox) = (self.engine.clone(), self.tx.clone(), self.outbox.clone());
                tokio::spawn(async move {
                    let frame = match engine.run(*spec, &caller).await {
                        Ok(ctx) => protocol::reply(&id, Some(&ctx)),
                        Err(f) => error_frame(&id, &f.error, f.run.as_deref()),
                    };
                    drop(permit);
                    outbox.reply_queued(frame.len());
                    let _ = tx.send(Outgoing::Frame(frame)).await;
                });
            }
            ClientMsg::Run { id, spec } => {
                let frame = match self.engine.run(*spec, &caller).await {
                    Ok(ctx) => {
                        if let Some(run) = ctx.get("id").and_then(Value::as_str).and_then(|s| RunId::try_parse(s).ok())
                        {
                            self.produced.insert(run);
                        }
                        protocol::reply(&id, Some(&ctx))
                    }
                    Err(f) => error_frame(&id, &f.error, f.run.as_deref()),
                };
                self.send(frame).await;
            }
            ClientMsg::Patch { id, run, ops } => match self.engine.patch(run, ops, &caller) {
                Ok(()) => {
                    self.note_produced(run);
                    if id.is_some() {
                        self.send(protocol::reply(&id, None)).await;
                    }
                }
                Err(e) => self.send(error_frame(&id, &e, None)).await,
            },
            ClientMsg::Complete { id, run, output } => {
                self.produced.remove(&run);
                let finished = self.engine.complete(run, output, &caller);
                self.send_when_durable(id, finished);
            }
            ClientMsg::Fail { id, run, error } => {
                self.produced.remove(&run);
                let finished = self.engine.fail(run, error, &caller);
                self.send_when_durable(id, finished);
            }
            ClientMsg::Subscribe { id, space, views, events, since } => {
                let limits = &self.engine.config().limits;
                if self.subs.len() >= limits.max_subscriptions_per_connection {
                    let e = Error::new(ErrorCode::QuotaSubscriptions, "too many subscriptions on this connection");
                    return self.send(error_frame(&id, &e, None)).await;
                }
                // Each distinct view set is rendered apart (diffs, and snapshots): bound how many one connection
                // makes the server render.
                let mut sets: Vec<_> = self.subs.values().map(|s| s.views).collect();
                sets.sort_unstable();
                sets.dedup();
                if !sets.contains(&views) && sets.len() >= limits.max_view_sets_per_connection {
                    let e = Error::new(ErrorCode::LimitExceeded, "too many distinct view sets on this connection");
                    return self.send(error_frame(&id, &e, None)).await;
                }
                match self.engine.subscribe(
                    SubscribeRequest { space: &space, views, events, since, req_id: id.clone() },
                    &self.outbox,
                    &caller,
                ) {
                    Ok(slot) => {
                        self.subs.insert(slot.id, slot);
                    }
                    Err(e) => self.send(error_frame(&id, &e, None)).await,
                }
            }
            ClientMsg::Unsubscribe { id, sub } => match self.subs.remove(&sub) {
                Some(slot) => {
                    self.engine.unsubscribe(&slot);
                    self.send(protocol::reply_sub(&id, sub)).await;
                }
                None => {
                    let e = Error::new(ErrorCode::UnknownSubscription, "no such subscription on this connection");
                    self.send(error_frame(&id, &e, None)).await;
                }
            },
        }
    }
}

/// Frames larger than this are flushed on their own, so that the WebSocket's write buffer never holds more than one
/// large frame (a snapshot) at a time.
const FLUSH_ALONE_BYTES: usize = 64 * 1024;

async fn write_loop(
    mut sink: futures::stream::SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Outgoing>,
    outbox: Arc<Outbox>,
    ping_interval: std::time::Duration,
    write_timeout: std::time::Duration,
) {
    let mut replies: Vec<Message> = Vec::new();
    let mut frames: Vec<Frame> = Vec::new();
    let mut closing: Option<(u16, &'static str)> = None;
    let mut open = true;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval);
    while open && closing.is_none() {
        tokio::select! {
            biased;
            m = rx.recv() => match m {
                Some(Outgoing::Frame(f)) => replies.push(Message::Text(f.into())),
                Some(Outgoing::Close(code, reason)) => closing = Some((code, reason)),
                None => open = false,
            },
            _ = outbox.wait() => {}
            _ = ping.tick() => replies.push(Message::Ping(Default::default())),
        }
        while closing.is_none() {
            match rx.try_recv() {
                Ok(Outgoing::Frame(f)) => replies.push(Message::Text(f.into())),
                Ok(Outgoing::Close(code, reason)) => closing = Some((code, reason)),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        outbox.set_writing(true);
        if !outbox.paused() {
            outbox.take_frames(&mut frames);
        }
        let reply_bytes: usize = replies.iter().map(message_len).sum();
        let mut sent = (0, 0);
        let write = async {
            for m in replies.drain(..) {
                sent = (sent.0 + 1, sent.1 + message_len(&m));
                sink.feed(m).await?;
            }
            // Each snapshot is rendered just before it is written, and a large frame goes out on its own.
            for f in frames.drain(..) {
                let text = f.render();
                let large = text.len() > FLUSH_ALONE_BYTES;
                sent = (sent.0 + 1, sent.1 + text.len());
                sink.feed(Message::Text(text.into())).await?;
                if large {
                    sink.flush().await?;
                }
            }
            sink.flush().await
        };
        let written = tokio::time::timeout(write_timeout, write).await;
        outbox.set_writing(false);
        outbox.reply_written(reply_bytes);
        match written {
            Ok(Ok(())) => {
                crate::telemetry::FRAMES_SENT.increment(sent.0);
                crate::telemetry::BYTES_SENT.increment(sent.1 as u64);
            }
            Ok(Err(_)) => return,
            Err(_) => {
                // The peer stopped reading: its socket took nothing for the whole deadline. Try a close frame
                // briefly (it only gets through if the peer's buffers freed up), then drop the socket.
                tracing::debug!("closing a connection that stopped reading");
                crate::telemetry::SLOW_CLOSES.increment(1);
                let close = Message::Close(Some(CloseFrame { code: close::SLOW, reason: "slow consumer".into() }));
                let _ = tokio::time::timeout(std::time::Duration::from_millis(100), sink.send(close)).await;
                return;
            }
        }
    }
    if let Some((code, reason)) = closing {
        let _ = sink.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
    }
}

/// An `error` frame, counted in the metrics by code.
fn error_frame(id: &protocol::ReqId, e: &Error, run: Option<&serde_json::Map<String, Value>>) -> String {
    crate::telemetry::error(e.code);
    protocol::error(id, e, run)
}

fn message_len(m: &Message) -> usize {
    match m {
        Message::Text(t) => t.len(),
        Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
        Message::Close(_) => 0,
    }
}
