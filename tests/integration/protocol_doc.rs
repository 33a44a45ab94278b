//! protocol.md must say what the code does: every error code, close code, message type, limit and metric the code
//! knows appears in it (rust-analyzer keeps its protocol doc honest the same way).

use coworker::config::Limits;
use coworker::error::ErrorCode;

fn doc() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/protocol.md")).expect("protocol.md at the root")
}

#[test]
fn every_error_code_is_documented() {
    let doc = doc();
    for code in ErrorCode::ALL {
        assert!(doc.contains(&format!("`{}`", code.as_str())), "protocol.md does not document `{code}`");
    }
}

#[test]
fn every_close_code_and_message_type_is_documented() {
    use coworker::protocol::close;
    let doc = doc();
    for code in [
        close::GOING_AWAY,
        close::INVALID_DATA,
        close::POLICY,
        close::TOO_BIG,
        close::IDLE,
        close::UNAUTHENTICATED,
        close::TOKEN_EXPIRED,
        close::QUOTA,
    ] {
        assert!(
            doc.contains(&format!("**{code}**")) || doc.contains(&format!("| {code} ")),
            "close code {code} is not in protocol.md"
        );
    }
    for ty in [
        "hello",
        "run",
        "patch",
        "patches",
        "complete",
        "fail",
        "subscribe",
        "unsubscribe",
        "reply",
        "error",
        "snapshot",
        "diff",
        "event",
    ] {
        assert!(doc.contains(&format!("\"type\":\"{ty}\"")), "no example of a `{ty}` frame in protocol.md");
    }
}

#[test]
fn every_limit_is_documented() {
    let doc = doc();
    // The field names of `Limits`, as its Debug output lists them.
    let debug = format!("{:?}", Limits::default());
    let fields: Vec<&str> =
        debug.trim_start_matches("Limits {").split(", ").filter_map(|kv| kv.split(':').next()).map(str::trim).collect();
    assert!(fields.len() > 10, "{fields:?}");
    for field in fields {
        assert!(doc.contains(&format!("`{field}`")), "limit `{field}` is not in protocol.md");
    }
}

#[test]
fn every_metric_is_documented() {
    let doc = doc();
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/telemetry.rs")).unwrap();
    let names: Vec<&str> = src.split('"').filter(|s| s.starts_with("coworker_")).collect();
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        assert!(doc.contains(name), "metric {name} is not in protocol.md");
    }
}
