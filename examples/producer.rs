//! An AI token producer outside the browser: starts an `interpret` run and streams tokens into
//! `output.tokens`, then completes it.
//!
//! `cargo run --release --example producer -- ws://127.0.0.1:8080/ws 200 50`
//! (url, number of tokens, tokens per second; all optional).

use coworker::client::Client;
use serde_json::json;
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "ws://127.0.0.1:8080/ws".into());
    let tokens: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(200);
    let rate: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(50).max(1);
    let client = Client::connect(&url).await?;
    let run = client
        .run(json!({"operation": "interpret", "agent": "example-producer", "input": {"prompt": "Tell me about runs"}}))
        .await?;
    let id = run["id"].as_str().ok_or("no run id")?.to_string();
    println!("streaming {tokens} tokens into run {id} at {rate}/s");
    let words = [
        "A ", "run ", "is ", "one ", "context ", "object ", "that ", "is ", "also ", "its ", "own ", "audit ",
        "record. ",
    ];
    let mut every = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    for i in 0..tokens {
        every.tick().await;
        client
            .patch_nowait(&id, json!([{"op": "append", "path": "output.tokens", "value": words[i % words.len()]}]))
            .await?;
    }
    let done = client.complete(&id, None).await?;
    println!("completed in {} ms", done["duration"]);
    Ok(())
}
