//! An AI token producer outside the browser: starts `interpret` runs, streams tokens into their `output.tokens`
//! through the client's coalescing writer (every write of a tick, whatever its run, goes out in one `patches`
//! frame), then completes them.
//!
//! `cargo run --release --example producer -- ws://127.0.0.1:8080/ws 200 50 3`
//! (url, tokens per run, tokens per second per run, runs; all optional).

use coworker::client::Client;
use serde_json::json;
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "ws://127.0.0.1:8080/ws".into());
    let tokens: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(200);
    let rate: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(50).max(1);
    let runs: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1).max(1);
    let client = Client::connect(&url).await?;
    let mut ids = Vec::new();
    for _ in 0..runs {
        let run =
            json!({"operation": "interpret", "agent": "example-producer", "input": {"prompt": "Tell me about runs"}});
        ids.push(client.run(run).await?["id"].as_str().ok_or("no run id")?.to_string());
    }
    println!("streaming {tokens} tokens into {runs} run(s) at {rate}/s each: {}", ids.join(", "));
    let words = [
        "A ", "run ", "is ", "one ", "context ", "object ", "that ", "is ", "also ", "its ", "own ", "audit ",
        "record. ",
    ];
    // Writes wait up to 16 ms (the server's tick) for others, then go out together as one `patches` frame.
    let writer = client.writer(Duration::from_millis(16));
    let mut every = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let mut last = Vec::new();
    for i in 0..tokens {
        every.tick().await;
        let ops = json!([{"op": "append", "path": "output.tokens", "value": words[i % words.len()]}]);
        // Each write can be awaited (it resolves once the server applied it); here only the last ones are.
        last = ids.iter().map(|id| writer.patch(id, &ops)).collect();
    }
    for written in last {
        written.await?;
    }
    for id in &ids {
        let done = client.complete(id, None).await?;
        println!("{id} completed in {} ms", done["duration"]);
    }
    Ok(())
}
