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

/// Runs `coworker-load` with `args` and returns its `--json` summary, failing the test on a non-zero exit.
fn load(args: &[&str]) -> serde_json::Value {
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_coworker-load")).args(args).arg("--json").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "coworker-load {args:?} failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.trim()).expect("--json prints one object")
}

#[test]
fn keystrokes_fanout_and_pipelines_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Process::start(&["--data-dir", dir.path().to_str().unwrap(), "--linger-ms", "300"]);
    let small = ["--url", &server.url, "--subscribers", "4", "--duration", "1.5"];
    for (scenario, runs, rate) in [("keys", "6", "40"), ("fanout", "2", "200"), ("pipeline", "4", "40")] {
        let s = load(&[&small[..], &["--scenario", scenario, "--runs", runs, "--rate", rate]].concat());
        assert_eq!(s["ok"], true, "{s}");
        assert_eq!((s["state_mismatches"].as_u64(), s["out_of_order"].as_u64()), (Some(0), Some(0)), "{s}");
        let produced = s["tokens_produced"].as_u64().unwrap();
        assert!(produced > 0, "{s}");
        if scenario == "pipeline" {
            // Finished roots leave the views; a subscriber sees at least the steps of every root still running.
            assert!(s["tokens_delivered"].as_u64().unwrap() > 0, "{s}");
        } else {
            assert_eq!(s["tokens_delivered"].as_u64(), Some(produced * 4), "{scenario}: {s}");
        }
    }
}

#[test]
fn batched_producers_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Process::start(&["--data-dir", dir.path().to_str().unwrap()]);
    for (scenario, runs) in [("ai", "40"), ("fanout", "3")] {
        let s = load(&[
            "--url",
            &server.url,
            "--scenario",
            scenario,
            "--runs",
            runs,
            "--rate",
            "50",
            "--subscribers",
            "4",
            "--verify",
            "2",
            "--duration",
            "1.5",
            "--batch",
        ]);
        assert_eq!(s["ok"], true, "{s}");
        assert_eq!(s["batch_ms"], 16, "{s}");
        assert_eq!((s["state_mismatches"].as_u64(), s["errors"].as_u64()), (Some(0), Some(0)), "{s}");
        let produced = s["tokens_produced"].as_u64().unwrap();
        assert!(produced > 0, "{s}");
        assert_eq!(s["tokens_delivered"].as_u64(), Some(produced * 4), "{scenario}: {s}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_coworker-load"))
        .args(["--url", &server.url, "--scenario", "keys", "--batch"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// The benchmark's naive baseline (examples/naive_broadcast.rs), compiled into this test binary: cargo builds
/// examples as test harnesses under `--all-targets`, so there is no runnable example binary to start.
#[path = "../../examples/naive_broadcast.rs"]
mod naive_broadcast;

#[test]
fn the_naive_baseline_driver_measures_the_same_way() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || rt.block_on(naive_broadcast::run(listener)));
    let s = load(
        &["--target", "naive", "--url", &url, "--runs", "5", "--rate", "50", "--subscribers", "3"]
            .into_iter()
            .chain(["--duration", "1"])
            .collect::<Vec<_>>(),
    );
    assert_eq!(s["ok"], true, "{s}");
    let produced = s["tokens_produced"].as_u64().unwrap();
    assert!(produced > 0, "{s}");
    assert_eq!(s["tokens_delivered"].as_u64(), Some(produced * 3), "{s}");
    assert_eq!(s["frames_received"], s["tokens_delivered"], "one frame per token per subscriber: {s}");
}

#[test]
fn counting_subscribers_check_every_token_without_a_state() {
    let dir = tempfile::tempdir().unwrap();
    let server = Process::start(&["--data-dir", dir.path().to_str().unwrap()]);
    // One full subscriber (compared with a fresh snapshot), three counting ones; one run nested to exercise the
    // pipeline grouping as well.
    let s = load(
        &["--url", &server.url, "--runs", "12", "--rate", "80", "--subscribers", "4", "--verify", "1"]
            .into_iter()
            .chain(["--duration", "1.5", "--nested"])
            .collect::<Vec<_>>(),
    );
    assert_eq!(s["ok"], true, "{s}");
    let produced = s["tokens_produced"].as_u64().unwrap();
    assert!(produced > 0, "{s}");
    assert_eq!(s["tokens_delivered"].as_u64(), Some(produced * 4), "{s}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_coworker-load"))
        .args(["--scenario", "keys", "--verify", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--verify applies to --scenario ai and fanout only"));
}

#[test]
fn a_peer_target_takes_only_the_ai_scenario() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_coworker-load"))
        .args(["--target", "nats", "--scenario", "keys"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "coworker-load: --target nats runs only --scenario ai");
}

#[test]
fn a_bad_flag_is_a_one_line_error() {
    for args in [&["--runs", "0"][..], &["--scenario", "chat"], &["--duration", "-1"], &["--nope"]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_coworker-load")).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("coworker-load: ") && err.trim_end().ends_with("(see --help)"), "{err}");
    }
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
