//! One WebSocket connection: a reader loop that parses each frame, dispatches it to the engine and queues the reply,
//! and a writer task that drains replies and the connection's subscription slots and writes them with one flush.
//! Protocol errors are answered with an `error` frame and the connection stays open; transport errors end it
//! quietly; an oversized frame or invalid UTF-8 closes it with 1009 or 1007.

use crate::config::Limits;
use crate::engine::Engine;
use crate::error::{Error, ErrorCode};
use crate::path::PathLimits;
use crate::protocol::{self, ClientMsg, ParseLimits};
use crate::subscriber::{Outbox, SubSlot};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Close codes the server sends (protocol.md, "Close codes").
pub mod close {
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// A text frame that is not valid UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// A message over the size limit.
    pub const TOO_BIG: u16 = 1009;
}

/// Subscriptions one connection may hold at once.
pub const MAX_SUBSCRIPTIONS_PER_CONNECTION: usize = 64;

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
}

/// Serves one upgraded socket until either side closes it or the server shuts down.
pub async fn serve(socket: WebSocket, engine: Engine, shutdown: CancellationToken) {
    let limits: Limits = engine.config().limits.clone();
    let (sink, mut stream) = socket.split();
    let outbox = Outbox::new();
    let (tx, rx) = mpsc::channel(limits.reply_queue);
    let writer = tokio::spawn(write_loop(sink, rx, outbox.clone()));
    let mut session = Session {
        engine,
        outbox,
        tx,
        waiting: FuturesOrdered::new(),
        subs: HashMap::new(),
        parse_limits: ParseLimits {
            path: PathLimits { max_bytes: limits.max_path_bytes, max_depth: limits.max_path_depth },
            max_ops_per_patch: limits.max_ops_per_patch,
        },
    };
    loop {
        let msg = tokio::select! {
            Some(frame) = session.waiting.next(), if !session.waiting.is_empty() => {
                session.send_now(frame).await;
                continue;
            }
            m = stream.next(), if session.waiting.len() < limits.reply_queue => m,
            _ = shutdown.cancelled() => {
                let _ = session.tx.send(Outgoing::Close(close::GOING_AWAY, "server shutting down")).await;
                break;
            }
        };
        match msg {
            None | Some(Ok(Message::Close(_))) => break,
            Some(Ok(Message::Text(text))) => session.handle(text.as_str()).await,
            Some(Ok(Message::Binary(_))) => {
                let e = Error::new(ErrorCode::BinaryFrame, "binary frames are not part of the protocol");
                session.send(protocol::error(&None, &e, None)).await;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Err(e)) => {
                if let Some(code) = close_code_for(&e) {
                    let _ = session.tx.send(Outgoing::Close(code.0, code.1)).await;
                }
                tracing::debug!(error = %e, "connection ended");
                break;
            }
        }
    }
    // Acknowledgements already owed are still sent once durable.
    while let Some(frame) = session.waiting.next().await {
        session.send_now(frame).await;
    }
    for slot in session.subs.values() {
        session.engine.unsubscribe(slot);
    }
    session.outbox.close();
    drop(session);
    let _ = writer.await;
}

/// Maps a read error to the close frame the client should see, if any.
fn close_code_for(e: &axum::Error) -> Option<(u16, &'static str)> {
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
    async fn send_now(&mut self, frame: String) {
        // The writer only goes away with the connection; a failed send means there is no one left to tell.
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

    /// Queues the reply to `complete` or `fail`: sent once the run's record is durable.
    fn send_when_durable(&mut self, id: protocol::ReqId, finished: Result<crate::engine::Finished, Error>) {
        let frame = async move {
            match finished {
                Ok(f) => match f.durable().await {
                    Ok(ctx) => protocol::reply(&id, Some(&ctx)),
                    Err(e) => protocol::error(&id, &e, None),
                },
                Err(e) => protocol::error(&id, &e, None),
            }
        };
        self.waiting.push_back(frame.boxed());
    }

    async fn handle(&mut self, text: &str) {
        let msg = match protocol::parse(text, &self.parse_limits) {
            Ok(msg) => msg,
            Err(rej) => {
                tracing::debug!(code = %rej.error.code, "rejected a frame");
                return self.send(protocol::error(&rej.id, &rej.error, None)).await;
            }
        };
        match msg {
            ClientMsg::Run { id, spec } => {
                let executes = self.engine.has_operation(&spec.operation);
                let engine = self.engine.clone();
                let tx = self.tx.clone();
                let reply = async move {
                    let frame = match engine.run(*spec).await {
                        Ok(ctx) => protocol::reply(&id, Some(&ctx)),
                        Err(f) => protocol::error(&id, &f.error, f.run.as_deref()),
                    };
                    let _ = tx.send(Outgoing::Frame(frame)).await;
                };
                if executes {
                    // A server-side operation may take a while: keep reading meanwhile.
                    tokio::spawn(reply);
                } else {
                    reply.await;
                }
            }
            ClientMsg::Patch { id, run, ops } => match self.engine.patch(run, ops) {
                Ok(()) if id.is_some() => self.send(protocol::reply(&id, None)).await,
                Ok(()) => {}
                Err(e) => self.send(protocol::error(&id, &e, None)).await,
            },
            ClientMsg::Complete { id, run, output } => {
                let finished = self.engine.complete(run, output);
                self.send_when_durable(id, finished);
            }
            ClientMsg::Fail { id, run, error } => {
                let finished = self.engine.fail(run, error);
                self.send_when_durable(id, finished);
            }
            ClientMsg::Subscribe { id, space, views, events, since } => {
                if self.subs.len() >= MAX_SUBSCRIPTIONS_PER_CONNECTION {
                    let e = Error::new(ErrorCode::LimitExceeded, "too many subscriptions on this connection");
                    return self.send(protocol::error(&id, &e, None)).await;
                }
                match self.engine.subscribe(&space, views, events, since, &self.outbox, id.clone()) {
                    Ok(slot) => {
                        self.subs.insert(slot.id, slot);
                    }
                    Err(e) => self.send(protocol::error(&id, &e, None)).await,
                }
            }
            ClientMsg::Unsubscribe { id, sub } => match self.subs.remove(&sub) {
                Some(slot) => {
                    self.engine.unsubscribe(&slot);
                    self.send(protocol::reply_sub(&id, sub)).await;
                }
                None => {
                    let e = Error::new(ErrorCode::UnknownSubscription, "no such subscription on this connection");
                    self.send(protocol::error(&id, &e, None)).await;
                }
            },
        }
    }
}

async fn write_loop(
    mut sink: futures::stream::SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Outgoing>,
    outbox: Arc<Outbox>,
) {
    let mut frames: Vec<String> = Vec::new();
    let mut closing: Option<(u16, &'static str)> = None;
    let mut open = true;
    while open && closing.is_none() {
        tokio::select! {
            biased;
            m = rx.recv() => match m {
                Some(Outgoing::Frame(f)) => frames.push(f),
                Some(Outgoing::Close(code, reason)) => closing = Some((code, reason)),
                None => open = false,
            },
            _ = outbox.wait() => {}
        }
        while closing.is_none() {
            match rx.try_recv() {
                Ok(Outgoing::Frame(f)) => frames.push(f),
                Ok(Outgoing::Close(code, reason)) => closing = Some((code, reason)),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        outbox.take_frames(&mut frames);
        for f in frames.drain(..) {
            if sink.feed(Message::Text(f.into())).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
    if let Some((code, reason)) = closing {
        let _ = sink.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
    }
}
