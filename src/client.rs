//! A Rust client for the protocol: requests with ids matched to replies, fire-and-forget patches, and
//! subscriptions that keep a local copy of a space's state by applying each diff (standard ops through the
//! `json-patch` crate, `append` here), checking that every diff starts where the last one ended; [`writer`]
//! coalesces a producer's patches into one `patches` frame per tick.

use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async_with_config};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What can go wrong on the client side.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    #[error("transport: {0}")]
    Transport(String),
    #[error("connection closed")]
    Closed,
    #[error("server error {code}: {message}")]
    Server { code: String, message: String, run: Option<Value> },
    #[error("protocol violation: {0}")]
    Protocol(String),
}

mod writer;

pub use writer::{Writer, WriterConfig, Written};

/// What answers a request: its reply frame, or its error.
type Answer = Result<Value, ClientError>;
type Waiters = Mutex<HashMap<u64, oneshot::Sender<Answer>>>;
type Subs = Mutex<HashMap<u64, mpsc::UnboundedSender<Value>>>;

struct Inner {
    sink: tokio::sync::Mutex<SplitSink<Ws, Message>>,
    waiters: Waiters,
    subs: Subs,
    /// Subscribe requests whose snapshot has not arrived: request id → frame channel for the subscription.
    joining: Mutex<HashMap<u64, mpsc::UnboundedSender<Value>>>,
    /// Errors that answer no request (a fire-and-forget patch that failed).
    unsolicited: Mutex<Option<mpsc::UnboundedSender<Value>>>,
    next_id: AtomicU64,
    /// Payload bytes of the text frames received so far.
    received_bytes: AtomicU64,
    /// Raw subscriptions (see [`Client::subscribe_raw`]), by subscribe request id until their first frame, then
    /// by subscription id.
    raw_joining: Mutex<HashMap<u64, mpsc::UnboundedSender<String>>>,
    raw_subs: Mutex<HashMap<u64, mpsc::UnboundedSender<String>>>,
}

/// The routing fields of a server frame, read without building the rest.
#[derive(serde::Deserialize)]
struct Head {
    #[serde(rename = "type")]
    ty: String,
    id: Option<Value>,
    sub: Option<u64>,
}

/// A connection to a coworker server. Cheap to clone; all clones share the socket.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Connects to `url` (for example `ws://127.0.0.1:8080/ws`).
    pub async fn connect(url: &str) -> Result<Client, ClientError> {
        // The server sends each snapshot as one frame as large as the state: lift tungstenite's 16 MiB frame cap.
        // tungstenite zeroes its read buffer before each read: 128 KiB by default was a seventh of a busy
        // subscriber's time (the load tool's profile); 16 KiB still takes a tick's diff in one read.
        let config =
            WebSocketConfig::default().max_frame_size(None).max_message_size(Some(1 << 30)).read_buffer_size(16 * 1024);
        let (ws, _) = connect_async_with_config(url, Some(config), true)
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let (sink, stream) = ws.split();
        let inner = Arc::new(Inner {
            sink: tokio::sync::Mutex::new(sink),
            waiters: Mutex::new(HashMap::new()),
            subs: Mutex::new(HashMap::new()),
            joining: Mutex::new(HashMap::new()),
            unsolicited: Mutex::new(None),
            next_id: AtomicU64::new(1),
            received_bytes: AtomicU64::new(0),
            raw_joining: Mutex::new(HashMap::new()),
            raw_subs: Mutex::new(HashMap::new()),
        });
        tokio::spawn(read_loop(stream, Arc::downgrade(&inner)));
        Ok(Client { inner })
    }

    /// Receives errors that answer no request (from fire-and-forget patches). Call once, before sending them.
    pub fn unsolicited_errors(&self) -> mpsc::UnboundedReceiver<Value> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.inner.unsolicited.lock() = Some(tx);
        rx
    }

    /// Sends a frame as is.
    pub async fn send_raw(&self, text: String) -> Result<(), ClientError> {
        let mut sink = self.inner.sink.lock().await;
        sink.send(Message::Text(text.into())).await.map_err(|e| ClientError::Transport(e.to_string()))
    }

    /// Payload bytes of the text frames received on this connection so far.
    pub fn received_bytes(&self) -> u64 {
        self.inner.received_bytes.load(Ordering::Relaxed)
    }

    /// Sends several frames as they are and flushes once: one write for the lot where the socket allows.
    pub async fn send_batch(&self, frames: impl IntoIterator<Item = String>) -> Result<(), ClientError> {
        let mut sink = self.inner.sink.lock().await;
        for text in frames {
            sink.feed(Message::Text(text.into())).await.map_err(|e| ClientError::Transport(e.to_string()))?;
        }
        sink.flush().await.map_err(|e| ClientError::Transport(e.to_string()))
    }

    /// Sends `msg` without an id (no reply on success).
    pub async fn send(&self, msg: Value) -> Result<(), ClientError> {
        self.send_raw(msg.to_string()).await
    }

    /// Sends `msg` with a fresh id and waits for its reply (or error).
    pub async fn request(&self, mut msg: Value) -> Result<Value, ClientError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        msg["id"] = json!(id);
        let (tx, rx) = oneshot::channel();
        self.inner.waiters.lock().insert(id, tx);
        if let Err(e) = self.send(msg).await {
            self.inner.waiters.lock().remove(&id);
            return Err(e);
        }
        rx.await.map_err(|_| ClientError::Closed)?
    }

    /// Starts a run; returns its context.
    pub async fn run(&self, run: Value) -> Result<Value, ClientError> {
        let reply = self.request(json!({"type": "run", "run": run})).await?;
        Ok(reply["run"].clone())
    }

    /// Applies patch ops and waits for the acknowledgement.
    pub async fn patch(&self, run: &str, ops: Value) -> Result<(), ClientError> {
        self.request(json!({"type": "patch", "run": run, "ops": ops})).await.map(|_| ())
    }

    /// Applies patch ops without waiting (errors arrive on [`Client::unsolicited_errors`]).
    pub async fn patch_nowait(&self, run: &str, ops: Value) -> Result<(), ClientError> {
        self.send(json!({"type": "patch", "run": run, "ops": ops})).await
    }

    /// A coalescing writer on this connection: patches to any runs, buffered for `interval` after the first and
    /// sent as one `patches` frame (zero: each at once). See [`Writer`].
    pub fn writer(&self, interval: std::time::Duration) -> Writer {
        self.writer_with(WriterConfig { interval, ..WriterConfig::default() })
    }

    /// A coalescing writer with explicit limits (a server configured with other `maxMessageBytes`,
    /// `maxPatchesPerFrame` or `maxOpsPerFrame` than the defaults).
    pub fn writer_with(&self, config: WriterConfig) -> Writer {
        Writer::new(self.clone(), config)
    }

    /// Completes a run; returns its final context.
    pub async fn complete(&self, run: &str, output: Option<Value>) -> Result<Value, ClientError> {
        let mut msg = json!({"type": "complete", "run": run});
        if let Some(output) = output {
            msg["output"] = output;
        }
        Ok(self.request(msg).await?["run"].clone())
    }

    /// Fails a run; returns its context.
    pub async fn fail(&self, run: &str, error: Value) -> Result<Value, ClientError> {
        Ok(self.request(json!({"type": "fail", "run": run, "error": error})).await?["run"].clone())
    }

    /// Subscribes to a space (all views when `views` is `None`) and waits for the snapshot.
    pub async fn subscribe(
        &self,
        space: &str,
        views: Option<&[&str]>,
        events: bool,
    ) -> Result<Subscription, ClientError> {
        self.subscribe_from(space, views, events, None).await
    }

    /// Resumes a subscription after its last applied diff (`from`'s epoch, seq and state, typically from a
    /// subscription on a connection that was lost). The server replays the missed diffs, or sends a fresh
    /// snapshot flagged `resync` when it no longer has them.
    pub async fn resume(
        &self,
        space: &str,
        views: Option<&[&str]>,
        from: &Subscription,
    ) -> Result<Subscription, ClientError> {
        self.subscribe_from(space, views, false, Some((from.epoch, from.seq, from.state.clone()))).await
    }

    async fn subscribe_from(
        &self,
        space: &str,
        views: Option<&[&str]>,
        events: bool,
        since: Option<(u64, u64, Value)>,
    ) -> Result<Subscription, ClientError> {
        let mut msg = json!({"type": "subscribe", "space": space, "events": events});
        if let Some(views) = views {
            msg["views"] = json!(views);
        }
        if let Some((epoch, seq, _)) = &since {
            msg["since"] = json!({"epoch": epoch, "seq": seq});
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        msg["id"] = json!(id);
        let (frames_tx, frames) = mpsc::unbounded_channel();
        let (tx, rx) = oneshot::channel();
        self.inner.waiters.lock().insert(id, tx);
        self.inner.joining.lock().insert(id, frames_tx);
        self.send(msg).await?;
        let first = rx.await.map_err(|_| ClientError::Closed)??;
        let field =
            |k: &str| first[k].as_u64().ok_or_else(|| ClientError::Protocol(format!("first frame without {k}")));
        let (sub, seq, epoch) = (field("sub")?, field("seq")?, field("epoch")?);
        let resynced = first["type"] == "snapshot" && first["resync"] == true;
        let state = match since {
            Some((_, _, state)) if first["resumed"] == true => state,
            _ => first["state"].clone(),
        };
        Ok(Subscription { client: self.clone(), sub, seq, epoch, state, frames, resynced })
    }

    /// Subscribes without a local state: the subscription's frames (its snapshot first) arrive as text, unparsed,
    /// for consumers that read only part of each frame (the load tool's counting subscribers). An error answering
    /// the subscribe is returned as such.
    pub async fn subscribe_raw(&self, space: &str, views: Option<&[&str]>) -> Result<RawSubscription, ClientError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({"type": "subscribe", "id": id, "space": space});
        if let Some(views) = views {
            msg["views"] = json!(views);
        }
        let (tx, mut frames) = mpsc::unbounded_channel();
        self.inner.raw_joining.lock().insert(id, tx);
        self.send(msg).await?;
        let first = frames.recv().await.ok_or(ClientError::Closed)?;
        let head: Head = serde_json::from_str(&first).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if head.ty == "error" {
            let frame: Value = serde_json::from_str(&first).unwrap_or_default();
            return Err(ClientError::Server {
                code: frame["code"].as_str().unwrap_or_default().to_string(),
                message: frame["message"].as_str().unwrap_or_default().to_string(),
                run: None,
            });
        }
        Ok(RawSubscription { first: Some(first), frames })
    }

    /// Closes the connection politely.
    pub async fn close(&self) {
        let mut sink = self.inner.sink.lock().await;
        let _ = sink.send(Message::Close(None)).await;
    }
}

async fn read_loop(mut stream: futures::stream::SplitStream<Ws>, inner: std::sync::Weak<Inner>) {
    while let Some(Ok(msg)) = stream.next().await {
        let Message::Text(text) = msg else { continue };
        let Some(inner) = inner.upgrade() else { return };
        inner.received_bytes.fetch_add(text.len() as u64, Ordering::Relaxed);
        if route_raw(&inner, text.as_str()) {
            continue;
        }
        let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else { continue };
        let req = frame.get("id").and_then(Value::as_u64);
        match (frame["type"].as_str(), req) {
            (Some("snapshot"), Some(id)) => {
                if let (Some(frames), Some(sub)) = (inner.joining.lock().remove(&id), frame["sub"].as_u64()) {
                    inner.subs.lock().insert(sub, frames);
                }
                if let Some(w) = inner.waiters.lock().remove(&id) {
                    let _ = w.send(Ok(frame));
                }
            }
            (Some("reply"), Some(id)) => {
                if frame["resumed"] == true
                    && let (Some(frames), Some(sub)) = (inner.joining.lock().remove(&id), frame["sub"].as_u64())
                {
                    inner.subs.lock().insert(sub, frames);
                }
                if let Some(w) = inner.waiters.lock().remove(&id) {
                    let _ = w.send(Ok(frame));
                }
            }
            (Some("error"), Some(id)) => {
                inner.joining.lock().remove(&id);
                if let Some(w) = inner.waiters.lock().remove(&id) {
                    let _ = w.send(Err(ClientError::Server {
                        code: frame["code"].as_str().unwrap_or_default().to_string(),
                        message: frame["message"].as_str().unwrap_or_default().to_string(),
                        run: frame.get("run").cloned(),
                    }));
                }
            }
            (Some("error"), None) => {
                if let Some(tx) = &*inner.unsolicited.lock() {
                    let _ = tx.send(frame);
                }
            }
            (Some("diff" | "event" | "snapshot"), None) => {
                if let Some(sub) = frame["sub"].as_u64()
                    && let Some(tx) = inner.subs.lock().get(&sub)
                {
                    let _ = tx.send(frame);
                }
            }
            _ => {}
        }
    }
    if let Some(inner) = inner.upgrade() {
        inner.waiters.lock().clear();
        inner.subs.lock().clear();
    }
}

/// Hands a frame of a raw subscription to it, unparsed beyond its routing fields. `false` when it is not one.
fn route_raw(inner: &Inner, text: &str) -> bool {
    if inner.raw_joining.lock().is_empty() && inner.raw_subs.lock().is_empty() {
        return false;
    }
    // Diffs, nearly every frame, start the way `protocol::diff` writes them: routed without reading the frame
    // (with hundreds of raw subscribers, a full routing parse of each diff was a tenth of the load tool's time).
    if let Some(sub) = diff_sub(text)
        && let Some(tx) = inner.raw_subs.lock().get(&sub).cloned()
    {
        let _ = tx.send(text.to_string());
        return true;
    }
    let Ok(head) = serde_json::from_str::<Head>(text) else { return false };
    if let Some(id) = head.id.as_ref().and_then(Value::as_u64)
        && let Some(tx) = inner.raw_joining.lock().remove(&id)
    {
        if let (Some(sub), true) = (head.sub, head.ty == "snapshot") {
            inner.raw_subs.lock().insert(sub, tx.clone());
        }
        let _ = tx.send(text.to_string());
        return true;
    }
    if !matches!(head.ty.as_str(), "diff" | "snapshot" | "event") {
        return false;
    }
    match head.sub.and_then(|sub| inner.raw_subs.lock().get(&sub).cloned()) {
        Some(tx) => {
            let _ = tx.send(text.to_string());
            true
        }
        None => false,
    }
}

/// The `sub` of a diff frame laid out as the server writes it (`{"type":"diff","sub":N,...`); `None` for any other
/// frame or layout, which is then routed by a parse of its head.
fn diff_sub(text: &str) -> Option<u64> {
    let rest = text.strip_prefix(r#"{"type":"diff","sub":"#)?;
    let end = rest.bytes().position(|b| !b.is_ascii_digit())?;
    (rest.as_bytes()[end] == b',').then(|| rest[..end].parse().ok()).flatten()
}

/// A subscription whose frames are handed over as text (see [`Client::subscribe_raw`]).
pub struct RawSubscription {
    first: Option<String>,
    frames: mpsc::UnboundedReceiver<String>,
}

impl RawSubscription {
    /// The next frame: the snapshot first, then diffs, resync snapshots and events. `None` when the connection is
    /// gone.
    pub async fn next(&mut self) -> Option<String> {
        match self.first.take() {
            Some(first) => Some(first),
            None => self.frames.recv().await,
        }
    }
}

/// What a subscription received.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// A diff was applied; the state is now at `seq`. `runs`: the ids under `/activeRuns` it touched, each once.
    Diff { base: u64, seq: u64, ops: usize, runs: Vec<String> },
    /// A fresh snapshot replaced the state (after the subscriber fell too far behind).
    Resync { seq: u64 },
    /// A lifecycle event.
    Event { name: String, run: Value },
}

/// A subscription with a local copy of the state.
pub struct Subscription {
    client: Client,
    pub sub: u64,
    /// The seq of the local state.
    pub seq: u64,
    /// The server's epoch when this subscription started (for resuming it).
    pub epoch: u64,
    /// Whether it started from a `resync` snapshot (a resume the server could not serve).
    pub resynced: bool,
    state: Value,
    frames: mpsc::UnboundedReceiver<Value>,
}

impl Subscription {
    /// The local state document.
    pub fn state(&self) -> &Value {
        &self.state
    }

    /// Waits for the next frame and applies it. `None` when the connection is gone.
    pub async fn next(&mut self) -> Option<Result<Update, ClientError>> {
        let frame = self.frames.recv().await?;
        Some(self.apply(frame))
    }

    /// Applies any frames already received, without waiting.
    pub fn drain(&mut self) -> Result<Vec<Update>, ClientError> {
        let mut out = Vec::new();
        while let Ok(frame) = self.frames.try_recv() {
            out.push(self.apply(frame)?);
        }
        Ok(out)
    }

    fn apply(&mut self, mut frame: Value) -> Result<Update, ClientError> {
        match frame["type"].as_str() {
            Some("diff") => {
                let base = frame["base"].as_u64().unwrap_or(u64::MAX);
                let seq = frame["seq"].as_u64().unwrap_or(0);
                if base != self.seq {
                    return Err(ClientError::Protocol(format!("diff base {base} but local state is at {}", self.seq)));
                }
                let ops = match frame.get_mut("ops").map(Value::take) {
                    Some(Value::Array(ops)) => ops,
                    _ => Vec::new(),
                };
                let mut runs: Vec<String> = Vec::new();
                for op in &ops {
                    let run = op["path"].as_str().and_then(|p| p.strip_prefix("/activeRuns/"));
                    if let Some(id) = run.map(|r| r.split('/').next().unwrap_or(r))
                        && !runs.iter().any(|r| r == id)
                    {
                        runs.push(id.to_string());
                    }
                }
                let count = ops.len();
                apply_owned_ops(&mut self.state, ops).map_err(ClientError::Protocol)?;
                self.seq = seq;
                Ok(Update::Diff { base, seq, ops: count, runs })
            }
            Some("snapshot") => {
                self.seq = frame["seq"].as_u64().unwrap_or(0);
                self.state = frame["state"].take();
                Ok(Update::Resync { seq: self.seq })
            }
            Some("event") => Ok(Update::Event {
                name: frame["name"].as_str().unwrap_or_default().to_string(),
                run: frame["run"].clone(),
            }),
            _ => Err(ClientError::Protocol(format!("unexpected frame {frame}"))),
        }
    }

    /// Ends the subscription.
    pub async fn unsubscribe(self) -> Result<(), ClientError> {
        self.client.inner.subs.lock().remove(&self.sub);
        self.client.request(json!({"type": "unsubscribe", "sub": self.sub})).await.map(|_| ())
    }
}

/// Applies diff ops to a state document: RFC 6902 `add`/`remove`/`replace` through `json-patch`, plus `append`.
pub fn apply_ops(doc: &mut Value, ops: &[Value]) -> Result<(), String> {
    apply_owned_ops(doc, ops.to_vec())
}

/// [`apply_ops`], consuming the ops so their values move into the document instead of being copied.
pub fn apply_owned_ops(doc: &mut Value, ops: Vec<Value>) -> Result<(), String> {
    for mut op in ops {
        if op["op"] == "append" {
            let value = op["value"].take();
            let path = op["path"].as_str().ok_or("append without path")?;
            let target = doc.pointer_mut(path).ok_or_else(|| format!("append target {path} missing"))?;
            match (target, value) {
                (Value::Array(a), Value::Array(items)) => a.extend(items),
                (Value::String(s), Value::String(tail)) => s.push_str(&tail),
                _ => return Err(format!("append type mismatch at {path}")),
            }
        } else {
            let p: json_patch::PatchOperation = serde_json::from_value(op).map_err(|e| e.to_string())?;
            json_patch::patch(doc, &[p]).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::diff_sub;

    #[test]
    fn diffs_are_routed_from_the_server_layout_and_nothing_else() {
        let frame = crate::protocol::diff(42, 3, 4, &[r#"{"op":"remove","path":"/activeRuns/x"}"#]);
        assert_eq!(diff_sub(&frame), Some(42), "the fast path must match what the server writes: {frame}");
        for other in [
            r#"{"sub":42,"type":"diff","seq":4,"base":3,"ops":[]}"#,
            r#"{"type":"diff","sub":"42","seq":4}"#,
            r#"{"type":"diff","sub":42}"#,
            r#"{"type":"snapshot","sub":42,"seq":4}"#,
            r#"{"type":"diff","sub":,"seq":4}"#,
        ] {
            assert_eq!(diff_sub(other), None, "{other}");
        }
    }
}
