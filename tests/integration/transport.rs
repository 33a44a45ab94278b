//! The session is generic over its transport: here it runs over in-memory channels instead of a WebSocket, with
//! the same engine, and speaks the same protocol (replies, a snapshot, a diff, an error, the end of the connection).

use axum::extract::ws::Message;
use coworker::config::EngineConfig;
use coworker::engine::Engine;
use coworker::plugin::hooks::Hooks;
use coworker::store::sqlite::{SqliteStore, StoreOptions};
use futures::channel::mpsc;
use futures::{Sink, SinkExt, Stream, StreamExt};
use serde_json::{Value, json};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The server's end of a pair of channels: what the test sends comes out as the stream, and what the session
/// writes goes into the sink.
struct Channels {
    incoming: mpsc::UnboundedReceiver<Result<Message, axum::Error>>,
    outgoing: mpsc::UnboundedSender<Message>,
}

impl Stream for Channels {
    type Item = Result<Message, axum::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.incoming.poll_next_unpin(cx)
    }
}

impl Sink<Message> for Channels {
    type Error = axum::Error;
    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.outgoing.poll_ready_unpin(cx).map_err(axum::Error::new)
    }
    fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        self.outgoing.start_send_unpin(item).map_err(axum::Error::new)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.outgoing.poll_flush_unpin(cx).map_err(axum::Error::new)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.outgoing.poll_close_unpin(cx).map_err(axum::Error::new)
    }
}

#[tokio::test]
async fn a_session_runs_over_channels() {
    let store = SqliteStore::open(None, StoreOptions::default()).unwrap();
    let engine = Engine::new(EngineConfig::default(), Hooks::default(), Arc::new(store));
    let (to_server, incoming) = mpsc::unbounded();
    let (outgoing, mut from_server) = mpsc::unbounded();
    let session = tokio::spawn(coworker::net::session::serve(
        Channels { incoming, outgoing },
        engine,
        CancellationToken::new(),
        None,
        None,
        None,
    ));
    let send = |v: Value| to_server.unbounded_send(Ok(Message::Text(v.to_string().into()))).unwrap();
    let mut next = async || -> Value {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), from_server.next()).await.unwrap().unwrap();
            if let Message::Text(t) = m {
                return serde_json::from_str(t.as_str()).unwrap();
            }
        }
    };

    send(json!({"type": "subscribe", "id": 1, "space": "s"}));
    let snapshot = next().await;
    assert_eq!((snapshot["type"].clone(), snapshot["id"].clone()), (json!("snapshot"), json!(1)), "{snapshot}");
    send(json!({"type": "run", "id": 2, "run": {"operation": "interpret", "space": "s"}}));
    let mut reply = next().await;
    while reply["type"] != "reply" {
        reply = next().await;
    }
    assert_eq!(reply["id"], 2);
    let run = reply["run"]["id"].as_str().unwrap().to_string();
    send(json!({"type": "patch", "run": run, "ops": [{"op": "append", "path": "output.tokens", "value": "hi"}]}));
    let mut diff = next().await;
    while !(diff["type"] == "diff" && diff.to_string().contains("hi")) {
        diff = next().await;
    }
    assert!(diff["seq"].as_u64() > diff["base"].as_u64(), "{diff}");
    send(json!({"type": "nonsense", "id": 3}));
    let error = next().await;
    assert_eq!((error["type"].clone(), error["id"].clone()), (json!("error"), json!(3)), "{error}");
    // The peer goes away: the session ends.
    drop(to_server);
    tokio::time::timeout(Duration::from_secs(10), session).await.unwrap().unwrap();
}
