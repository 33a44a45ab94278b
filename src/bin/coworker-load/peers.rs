//! Small drivers for the peer systems of the side-by-side benchmark (the naive broadcast example, Socket.IO 4,
//! nats-server's WebSocket listener), so that the `ai` scenario and its measurement stay exactly the same: the same
//! producer pacing and batching, one `{"r","i","t"}` message per token, and the same per-stream order check.

use crate::measure::{Live, Sequencer, Tally, now_us};
use crate::{Args, Outcome, Target, Window};
use futures::{SinkExt, StreamExt, TryStreamExt};
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One token as every peer carries it: run number, token number in the run, send time (µs).
#[derive(Deserialize)]
struct Token {
    r: u64,
    i: u64,
    t: u64,
}

/// The naive example's broadcast frame.
#[derive(Deserialize)]
struct NaiveFrame {
    data: Token,
}

const ROOM: &str = "bench";

fn token_json(r: u64, i: u64, t: u64) -> String {
    format!(r#"{{"r":{r},"i":{i},"t":{t}}}"#)
}

async fn send(ws: &mut Ws, text: String) -> Result<(), String> {
    ws.send(Message::Text(text.into())).await.map_err(|e| e.to_string())
}

/// The next text or binary payload (answering nothing: pings are answered by tungstenite on the next write).
async fn recv(ws: &mut Ws) -> Result<Vec<u8>, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_bytes().to_vec()),
            Some(Ok(Message::Binary(b))) => return Ok(b.to_vec()),
            Some(Ok(Message::Close(_))) | None => return Err("connection closed".into()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
        }
    }
}

/// Waits for a payload that satisfies `want`, answering Engine.IO/NATS pings meanwhile.
async fn expect(ws: &mut Ws, target: Target, want: impl Fn(&[u8]) -> bool) -> Result<(), String> {
    let deadline = Duration::from_secs(10);
    tokio::time::timeout(deadline, async {
        loop {
            let p = recv(ws).await?;
            if want(&p) {
                return Ok(());
            }
            answer_ping(ws, target, &p).await?;
        }
    })
    .await
    .map_err(|_| "the peer did not answer the handshake in 10 s".to_string())?
}

async fn answer_ping(ws: &mut Ws, target: Target, payload: &[u8]) -> Result<(), String> {
    match target {
        Target::Socketio if payload == b"2" => send(ws, "3".into()).await,
        Target::Nats if payload.windows(6).any(|w| w == b"PING\r\n") => send(ws, "PONG\r\n".into()).await,
        _ => Ok(()),
    }
}

/// Connects and joins: after this returns, the peer delivers every token published to the room.
async fn connect(target: Target, url: &str, subscribe: bool) -> Result<Ws, String> {
    let (mut ws, _) = connect_async(url).await.map_err(|e| format!("cannot connect to {url}: {e}"))?;
    match target {
        Target::Naive => {
            if subscribe {
                send(&mut ws, format!(r#"{{"type":"sub","room":"{ROOM}"}}"#)).await?;
                expect(&mut ws, target, |p| p.starts_with(br#"{"type":"subscribed""#)).await?;
            }
        }
        Target::Socketio => {
            expect(&mut ws, target, |p| p.starts_with(b"0{")).await?;
            send(&mut ws, "40".into()).await?;
            expect(&mut ws, target, |p| p.starts_with(b"40")).await?;
            if subscribe {
                send(&mut ws, format!(r#"420["join","{ROOM}"]"#)).await?;
                expect(&mut ws, target, |p| p.starts_with(b"430")).await?;
            }
        }
        Target::Nats => {
            expect(&mut ws, target, |p| p.starts_with(b"INFO ")).await?;
            let mut hello = r#"CONNECT {"verbose":false,"pedantic":false,"protocol":1,"lang":"rust","version":"1"}"#
                .to_string()
                + "\r\n";
            if subscribe {
                hello += &format!("SUB {ROOM}.> 1\r\n");
            }
            send(&mut ws, hello + "PING\r\n").await?;
            expect(&mut ws, target, |p| p.windows(6).any(|w| w == b"PONG\r\n")).await?;
        }
        Target::Coworker => unreachable!("coworker has its own client"),
    }
    Ok(ws)
}

/// One publish frame for token `i` of run `r`.
fn publish(target: Target, r: u64, i: u64) -> String {
    let token = token_json(r, i, now_us());
    match target {
        Target::Naive => format!(r#"{{"type":"pub","room":"{ROOM}","data":{token}}}"#),
        Target::Socketio => format!(r#"42["token","{ROOM}",{token}]"#),
        Target::Nats => format!("PUB {ROOM}.{r} {}\r\n{token}\r\n", token.len()),
        Target::Coworker => unreachable!("coworker has its own client"),
    }
}

/// Streams one token per tick into each of `runs`, all frames of a tick in one flush, like the coworker producer.
async fn produce(
    target: Target,
    mut ws: Ws,
    runs: Vec<u64>,
    rate: u64,
    until: Instant,
    live: &Live,
) -> Result<(), String> {
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut i = 0u64;
    while Instant::now() < until {
        tokio::select! {
            _ = tick.tick() => {}
            // Keep reading so that pings are answered and the socket's receive buffer does not fill.
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => { answer_ping(&mut ws, target, t.as_bytes()).await?; continue }
                Some(Ok(_)) => continue,
                _ => return Err("a producer connection closed".into()),
            },
        }
        for &r in &runs {
            ws.feed(Message::Text(publish(target, r, i).into())).await.map_err(|e| e.to_string())?;
        }
        ws.flush().await.map_err(|e| e.to_string())?;
        Live::add(&live.produced, runs.len() as u64);
        i += 1;
    }
    Ok(())
}

/// Reads tokens until the producers are done and this subscriber has seen them all (or heard nothing for 3 s).
async fn watch_tokens(target: Target, mut ws: Ws, total: watch::Receiver<Option<u64>>, live: &Live) -> Tally {
    let mut tally = Tally::default();
    let mut seq = Sequencer::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut quiet_since = Instant::now();
    loop {
        if let Some(total) = *total.borrow() {
            let seen = tally.delivered + tally.lost;
            if seen >= total || quiet_since.elapsed() > Duration::from_secs(3) {
                return tally;
            }
        }
        let payload = match tokio::time::timeout(Duration::from_millis(100), recv(&mut ws)).await {
            Err(_) => continue,
            Ok(Err(_)) => {
                tally.errors += 1;
                Live::add(&live.errors, 1);
                return tally;
            }
            Ok(Ok(p)) => p,
        };
        quiet_since = Instant::now();
        tally.frames += 1;
        tally.bytes += payload.len() as u64;
        Live::add(&live.frames, 1);
        let now = now_us();
        let mut see = |tok: Token, tally: &mut Tally| seq.see(&tok.r.to_string(), tok.i, tok.t, now, tally, live);
        match target {
            Target::Naive => match serde_json::from_slice::<NaiveFrame>(&payload) {
                Ok(f) => see(f.data, &mut tally),
                Err(_) => tally.errors += 1,
            },
            Target::Socketio => match payload.strip_prefix(b"42") {
                Some(event) => match serde_json::from_slice::<(String, Token)>(event) {
                    Ok((_, tok)) => see(tok, &mut tally),
                    Err(_) => tally.errors += 1,
                },
                None if payload == b"2" && answer_ping(&mut ws, target, &payload).await.is_err() => tally.errors += 1,
                None => {}
            },
            Target::Nats => {
                buf.extend_from_slice(&payload);
                let (tokens, ping, bad) = parse_nats(&mut buf);
                tally.errors += bad;
                for tok in tokens {
                    see(tok, &mut tally);
                }
                if ping && answer_ping(&mut ws, target, b"PING\r\n").await.is_err() {
                    tally.errors += 1;
                }
            }
            Target::Coworker => unreachable!("coworker has its own client"),
        }
    }
}

/// Takes the complete NATS protocol lines (and `MSG` payloads) off the front of `buf`: the tokens, whether a PING
/// came, and how many messages did not parse.
fn parse_nats(buf: &mut Vec<u8>) -> (Vec<Token>, bool, u64) {
    let (mut tokens, mut ping, mut bad, mut at) = (Vec::new(), false, 0, 0);
    while let Some(end) = buf[at..].windows(2).position(|w| w == b"\r\n").map(|p| at + p) {
        let line = &buf[at..end];
        if let Some(msg) = line.strip_prefix(b"MSG ") {
            let size = std::str::from_utf8(msg).ok().and_then(|m| m.rsplit(' ').next()?.parse::<usize>().ok());
            let Some(size) = size else {
                bad += 1;
                at = end + 2;
                continue;
            };
            if buf.len() < end + 2 + size + 2 {
                break; // the payload is still on its way
            }
            match serde_json::from_slice::<Token>(&buf[end + 2..end + 2 + size]) {
                Ok(tok) => tokens.push(tok),
                Err(_) => bad += 1,
            }
            at = end + 2 + size + 2;
        } else {
            ping |= line == b"PING";
            at = end + 2;
        }
    }
    buf.drain(..at);
    (tokens, ping, bad)
}

/// Runs the `ai` scenario against a peer.
pub async fn run(target: Target, args: &Args, live: Arc<Live>) -> Result<Outcome, String> {
    let subscribers: Vec<Ws> = futures::stream::iter(0..args.subscribers)
        .map(|_| connect(target, args.producer_url(), true))
        .buffer_unordered(64)
        .try_collect()
        .await?;
    let conns = args.runs.min(32);
    let mut producers = Vec::new();
    for c in 0..conns {
        let runs: Vec<u64> = (c..args.runs).step_by(conns as usize).collect();
        producers.push((connect(target, args.producer_url(), false).await?, runs));
    }
    let window = Window::open(&args.server_pid);
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.duration);
    let (total_tx, total) = watch::channel(None);
    let watching: Vec<_> = subscribers
        .into_iter()
        .map(|ws| {
            let (live, total) = (live.clone(), total.clone());
            tokio::spawn(async move { watch_tokens(target, ws, total, &live).await })
        })
        .collect();
    let producing: Vec<_> = producers
        .into_iter()
        .map(|(ws, runs)| {
            let (live, rate) = (live.clone(), args.rate);
            tokio::spawn(async move { produce(target, ws, runs, rate, until, &live).await })
        })
        .collect();
    crate::progress(args, &live, started, until).await;
    for p in producing {
        p.await.map_err(|e| e.to_string())??;
    }
    let streaming_s = started.elapsed().as_secs_f64();
    let produced = Live::get(&live.produced);
    let _ = total_tx.send(Some(produced));
    let mut tally = Tally::default();
    for w in watching {
        tally.merge(&w.await.map_err(|e| e.to_string())?);
    }
    let usage = window.close();
    Ok(Outcome {
        request_us: Vec::new(),
        produced,
        tally,
        mismatches: 0,
        every_item_expected: true,
        streaming_s,
        usage,
    })
}
