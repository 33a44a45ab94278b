//! A short `coworker-load` run against the server binary: the regression check for correctness under load
//! (exit status and `ok` only; no timing thresholds).

use crate::support::*;

#[test]
fn a_short_load_run_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Process::start(&["--data-dir", dir.path().to_str().unwrap()]);
    let pid = server.child.id().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_coworker-load"))
        .args(["--url", &server.url, "--runs", "8", "--rate", "50", "--subscribers", "6", "--duration", "2"])
        .args(["--json", "--server-pid", &pid])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "coworker-load failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).expect("--json prints one object");
    assert_eq!(summary["ok"], true, "{summary}");
    assert_eq!((summary["lost"].as_u64(), summary["out_of_order"].as_u64()), (Some(0), Some(0)));
    let produced = summary["tokens_produced"].as_u64().unwrap();
    assert!(produced > 0);
    assert_eq!(summary["tokens_delivered"].as_u64(), Some(produced * 6), "every subscriber got every token");
    assert!(summary["server_cpu_us"].as_u64().is_some(), "CPU time read from /proc");
}

#[test]
fn an_unreachable_server_is_a_one_line_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_coworker-load"))
        .args(["--url", "ws://127.0.0.1:1/ws", "--duration", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("coworker-load: cannot connect to ws://127.0.0.1:1/ws"), "{err}");
}
