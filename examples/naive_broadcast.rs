//! The naive baseline of the side-by-side benchmark (BENCHMARKS.md): what a team writes in an afternoon with
//! tokio-tungstenite. Rooms of subscribers; every published message is forwarded at once to every subscriber of its
//! room, one WebSocket frame (and one flush) per message per subscriber, no coalescing. It is not a strawman: the
//! incoming text is forwarded as is (no re-serialization), and each subscriber has its own writer task and queue.
//!
//! Protocol (text frames, JSON): `{"type":"sub","room":"r"}` answered by `{"type":"subscribed","room":"r"}`;
//! `{"type":"pub","room":"r","data":…}` forwarded verbatim to the room's subscribers.
//!
//! `cargo run --release --example naive_broadcast -- 127.0.0.1:9001` (prints `listening on ADDR`).

use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

#[derive(Deserialize)]
struct Incoming {
    #[serde(rename = "type")]
    kind: String,
    room: String,
}

type Rooms = Arc<Mutex<HashMap<String, Vec<mpsc::UnboundedSender<Message>>>>>;

async fn serve(stream: TcpStream, rooms: Rooms) {
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else { return };
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if sink.send(msg).await.is_err() {
                break;
            }
        }
    });
    while let Some(Ok(msg)) = source.next().await {
        let Message::Text(text) = msg else { continue };
        let Ok(incoming) = serde_json::from_str::<Incoming>(&text) else { continue };
        match incoming.kind.as_str() {
            "sub" => {
                rooms.lock().unwrap().entry(incoming.room.clone()).or_default().push(tx.clone());
                let ack = format!(r#"{{"type":"subscribed","room":{}}}"#, serde_json::json!(incoming.room));
                let _ = tx.send(Message::Text(ack.into()));
            }
            "pub" => {
                let mut rooms = rooms.lock().unwrap();
                if let Some(subs) = rooms.get_mut(&incoming.room) {
                    subs.retain(|s| s.send(Message::Text(text.clone())).is_ok());
                }
            }
            _ => {}
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// Serves on `listener` until an accept fails. (The load test includes this file as a module and calls it.)
pub async fn run(listener: TcpListener) -> std::io::Result<()> {
    let rooms = Rooms::default();
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(stream, rooms.clone()));
    }
}

#[tokio::main]
#[allow(dead_code)] // unused where the load test includes this file as a module
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9001".into());
    let listener = TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    run(listener).await
}
