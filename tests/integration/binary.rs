//! The `coworker` binary as a user runs it: flags, a taken port, the bound address in the log, and shutdown on
//! SIGTERM or SIGINT (close code 1001, exit 0), even right after the address is logged.

use crate::support::{Process, wait_for_exit};
use futures::StreamExt;
use std::process::Command;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_coworker"))
}

#[test]
fn help_explains_every_flag() {
    let out = bin().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--listen", "COWORKER_LISTEN", "--tick-ms", "COWORKER_TICK_MS", "--linger-ms", "COWORKER_LINGER_MS"] {
        assert!(help.contains(flag), "--help does not mention {flag}:\n{help}");
    }
}

#[test]
fn a_taken_port_is_a_clear_error_and_a_failed_exit() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = bin().args(["--listen", &addr.to_string(), "--data-dir", dir.path().to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on {addr}")), "stderr: {err}");
}

#[tokio::test]
async fn sigterm_closes_clients_with_1001_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Process::start(&["--web-root", "/nonexistent", "--data-dir", dir.path().to_str().unwrap()]);
    assert!(server.url.starts_with("ws://127.0.0.1:") && !server.url.contains(":0/"), "{}", server.url);
    let (mut ws, _) = tokio_tungstenite::connect_async(&server.url).await.unwrap();
    server.signal("-TERM");
    let close = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Close(c) = m {
                return c.map(|c| u16::from(c.code));
            }
        }
        None
    })
    .await
    .expect("closed within 10 s");
    assert_eq!(close, Some(1001));
    let status = wait_for_exit(&mut server.child, Duration::from_secs(10)).expect("exits within 10 s of SIGTERM");
    assert!(status.success(), "exit status {status}");
}

/// The handlers are installed before the address is logged: SIGTERM or SIGINT sent the moment a supervisor sees
/// the server listening is a clean shutdown, not the default action (killed by the signal).
#[test]
fn a_signal_as_soon_as_the_address_is_logged_is_a_clean_exit() {
    for sig in ["-TERM", "-INT"] {
        let dir = tempfile::tempdir().unwrap();
        let mut server = Process::start(&["--web-root", "/nonexistent", "--data-dir", dir.path().to_str().unwrap()]);
        server.signal(sig);
        let status = wait_for_exit(&mut server.child, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("the server did not exit within 10 s of {sig}"));
        assert!(status.success(), "{sig}: exit status {status}");
    }
}

#[test]
fn a_data_dir_that_cannot_be_opened_is_a_clear_error_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let out = bin().args(["--listen", "127.0.0.1:0", "--data-dir", file.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("storage: cannot create"), "stderr: {err}");
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(!log.contains("WebSocket at"), "announced an address it never served:\n{log}");
}
