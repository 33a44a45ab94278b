//! The connection's transport: any socket of WebSocket messages (a `Stream` of what the peer sent and a `Sink` of
//! what to send), the writer task that drains replies and subscription slots into it with one flush per batch, and
//! the close handshake. Generic over the socket, so a session runs over channels as well as over a WebSocket.

use crate::feed::subscriber::{Frame, Outbox};
use crate::protocol::close;
use axum::extract::ws::{CloseFrame, Message};
use futures::{Sink, SinkExt, Stream, StreamExt};
use std::sync::Arc;
use tokio::sync::mpsc;

/// How long the server keeps reading (and dropping) a peer's frames after sending it a close frame.
const CLOSE_DRAIN: std::time::Duration = std::time::Duration::from_secs(1);

/// A socket a session can run over: messages in, messages out.
pub trait Socket:
    Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Send + Unpin + 'static
{
}

impl<T> Socket for T where
    T: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Send + Unpin + 'static
{
}

/// What the reader hands the writer.
pub enum Outgoing {
    Frame(String),
    Close(u16, &'static str),
}

/// Frames larger than this are flushed on their own, so that the WebSocket's write buffer never holds more than one
/// large frame (a snapshot) at a time.
const FLUSH_ALONE_BYTES: usize = 64 * 1024;

pub async fn write_loop(
    mut sink: impl Sink<Message, Error = axum::Error> + Unpin,
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

/// After the server sent a close frame: reads and drops the peer's frames until it closes, for at most
/// [`CLOSE_DRAIN`]. A socket closed with unread input is reset, and the peer might never read the close frame; if
/// the stream cannot be read any more (after an oversized message), the socket is held until the deadline instead.
pub async fn drain_after_close<S>(stream: &mut S)
where
    S: Stream<Item = Result<Message, axum::Error>> + Unpin,
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

fn message_len(m: &Message) -> usize {
    match m {
        Message::Text(t) => t.len(),
        Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
        Message::Close(_) => 0,
    }
}
