//! Watches a space and prints its views after every diff.
//!
//! `cargo run --release --example watch -- ws://127.0.0.1:8080/ws default`

use coworker::client::{Client, Update};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "ws://127.0.0.1:8080/ws".into());
    let space = args.next().unwrap_or_else(|| "default".into());
    let client = Client::connect(&url).await?;
    let mut sub = client.subscribe(&space, None, false).await?;
    println!("snapshot at seq {}: {}", sub.seq, sub.state());
    while let Some(update) = sub.next().await {
        let state = sub.state();
        match update? {
            Update::Diff { seq, ops, .. } => println!(
                "seq {seq} ({ops} ops): {} active, loading={}, AI={}, dialogs={}",
                state["activeRuns"].as_object().map_or(0, |m| m.len()),
                state["isLoading"],
                state["activeAI"],
                state["activeDialogs"]
            ),
            Update::Resync { seq } => println!("resynced at seq {seq}"),
            Update::Event { name, .. } => println!("event {name}"),
        }
    }
    Ok(())
}
