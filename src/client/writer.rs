//! The coalescing writer: a producer's patches, to any runs, buffered and sent as one `patches` frame per tick
//! (split only where a frame would pass the server's limits), each write still answerable on its own.

use super::{Answer, Client, ClientError};
use parking_lot::Mutex;
use serde_json::Value;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{Notify, oneshot};

/// How a [`Writer`] batches. The defaults are the server's default limits and its 16 ms tick.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// How long a write waits for others to share its frame: the first write into an empty buffer starts the
    /// clock. Zero sends each write at once, in a `patches` frame of its own.
    pub interval: Duration,
    /// Largest frame to send (the server's `maxMessageBytes`).
    pub max_frame_bytes: usize,
    /// Elements per frame (`maxPatchesPerFrame`).
    pub max_elements: usize,
    /// Ops per frame (`maxOpsPerFrame`).
    pub max_ops: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            interval: Duration::from_millis(16),
            max_frame_bytes: 64 * 1024,
            max_elements: 1024,
            max_ops: 4096,
        }
    }
}

/// Bytes kept free in a frame for its closing `]}`.
const CLOSING: usize = 2;

/// One frame being filled: its text so far (without the closing `]}`), and a waiter per element.
struct Frame {
    id: u64,
    text: String,
    ops: usize,
    waiters: Vec<Option<oneshot::Sender<Result<(), ClientError>>>>,
}

#[derive(Default)]
struct Buffer {
    open: Option<Frame>,
    /// Frames filled to a limit, waiting for the flush.
    full: Vec<Frame>,
}

struct Shared {
    client: Client,
    config: WriterConfig,
    buffer: Mutex<Buffer>,
    /// Woken when the first write goes into an empty buffer, or a flush is asked for.
    wake: Notify,
    /// Writes the server refused (whether or not anyone awaited them).
    refused: AtomicU64,
}

/// A handle on a coalescing writer (see [`Client::writer`]). Cheap to clone; all clones share one buffer. The
/// buffer is sent one last time when the last handle is dropped.
#[derive(Clone)]
pub struct Writer {
    shared: Arc<Shared>,
    _flusher: Arc<FlusherGuard>,
}

/// Ends the flusher (after a last flush) when the last handle goes.
struct FlusherGuard(Arc<Shared>, tokio::sync::watch::Sender<bool>);

impl Drop for FlusherGuard {
    fn drop(&mut self) {
        let _ = self.1.send(true);
        self.0.wake.notify_one();
    }
}

/// The answer to one write: resolves once the server applied it (`Ok`) or refused it. Dropping it does not cancel
/// the write.
pub struct Written(oneshot::Receiver<Result<(), ClientError>>);

impl Future for Written {
    type Output = Result<(), ClientError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|r| r.unwrap_or(Err(ClientError::Closed)))
    }
}

impl Writer {
    pub(super) fn new(client: Client, config: WriterConfig) -> Writer {
        let shared = Arc::new(Shared {
            client,
            config,
            buffer: Mutex::new(Buffer::default()),
            wake: Notify::new(),
            refused: AtomicU64::new(0),
        });
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        tokio::spawn(flusher(shared.clone(), stop));
        let guard = Arc::new(FlusherGuard(shared.clone(), stop_tx));
        Writer { shared, _flusher: guard }
    }

    /// Queues `ops` (a JSON array of patch ops) for `run`; they go out with the tick's other writes, as one
    /// element of a `patches` frame, and apply all or nothing like a `patch`.
    pub fn patch(&self, run: &str, ops: &Value) -> Written {
        let (tx, rx) = oneshot::channel();
        let count = ops.as_array().map_or(1, Vec::len);
        let mut element = String::with_capacity(64);
        let _ = write!(element, "{{\"run\":{},\"ops\":{ops}}}", Value::from(run));
        let first = {
            let mut buffer = self.shared.buffer.lock();
            let was_empty = buffer.open.is_none() && buffer.full.is_empty();
            self.shared.push(&mut buffer, &element, count, tx);
            was_empty
        };
        if first || self.shared.config.interval.is_zero() {
            self.shared.wake.notify_one();
        }
        Written(rx)
    }

    /// Sends what is buffered now, without waiting for the tick.
    pub async fn flush(&self) -> Result<(), ClientError> {
        self.shared.flush().await
    }

    /// Writes the server refused so far (for producers that do not await each write).
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }
}

impl Shared {
    /// Adds one element to the open frame, first closing it if the element would take it past a limit.
    fn push(&self, buffer: &mut Buffer, element: &str, ops: usize, tx: oneshot::Sender<Result<(), ClientError>>) {
        let c = &self.config;
        if let Some(open) = &buffer.open
            && (open.waiters.len() + 1 > c.max_elements
                || open.ops + ops > c.max_ops
                || open.text.len() + 1 + element.len() + CLOSING > c.max_frame_bytes)
        {
            buffer.full.extend(buffer.open.take());
        }
        let frame = buffer.open.get_or_insert_with(|| {
            let id = self.client.inner.next_id.fetch_add(1, Ordering::Relaxed);
            Frame { id, text: format!("{{\"type\":\"patches\",\"id\":{id},\"patches\":["), ops: 0, waiters: Vec::new() }
        });
        if !frame.waiters.is_empty() {
            frame.text.push(',');
        }
        frame.text.push_str(element);
        frame.ops += ops;
        frame.waiters.push(Some(tx));
    }

    /// Sends every buffered frame (in one write), each answered by a task that hands its elements their results.
    async fn flush(self: &Arc<Self>) -> Result<(), ClientError> {
        let frames: Vec<Frame> = {
            let mut buffer = self.buffer.lock();
            let mut frames = std::mem::take(&mut buffer.full);
            frames.extend(buffer.open.take());
            frames
        };
        if frames.is_empty() {
            return Ok(());
        }
        let mut texts = Vec::with_capacity(frames.len());
        for mut frame in frames {
            frame.text.push_str("]}");
            texts.push(std::mem::take(&mut frame.text));
            let (tx, rx) = oneshot::channel();
            self.client.inner.waiters.lock().insert(frame.id, tx);
            tokio::spawn(settle(frame, rx, self.clone()));
        }
        self.client.send_batch(texts).await
    }
}

/// Hands each element of a sent frame its result from the frame's reply.
async fn settle(mut frame: Frame, reply: oneshot::Receiver<Answer>, shared: Arc<Shared>) {
    let reply = reply.await.unwrap_or(Err(ClientError::Closed));
    let refused = |n: u64| shared.refused.fetch_add(n, Ordering::Relaxed);
    match reply {
        Ok(mut reply) => {
            let errors = match reply.get_mut("errors").map(Value::take) {
                Some(Value::Array(errors)) => errors,
                _ => Vec::new(),
            };
            refused(errors.len() as u64);
            for e in errors {
                let Some(tx) = e["index"].as_u64().and_then(|i| frame.waiters.get_mut(i as usize)?.take()) else {
                    continue;
                };
                let _ = tx.send(Err(ClientError::Server {
                    code: e["code"].as_str().unwrap_or_default().to_string(),
                    message: e["message"].as_str().unwrap_or_default().to_string(),
                    run: None,
                }));
            }
            for tx in frame.waiters.into_iter().flatten() {
                let _ = tx.send(Ok(()));
            }
        }
        // The whole frame was refused (or the connection went): every element shares the answer.
        Err(e) => {
            refused(frame.waiters.len() as u64);
            for tx in frame.waiters.into_iter().flatten() {
                let _ = tx.send(Err(e.clone()));
            }
        }
    }
}

/// Waits for a first write, lets the interval pass, flushes; until the last handle is dropped (then flushes once
/// more and ends).
async fn flusher(shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = stop.changed() => {}
        }
        let stopping = *stop.borrow();
        if !stopping && !shared.config.interval.is_zero() {
            tokio::time::sleep(shared.config.interval).await;
        }
        if shared.flush().await.is_err() || stopping {
            return;
        }
    }
}
