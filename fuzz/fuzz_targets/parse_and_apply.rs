//! Fuzzes message parsing and patch apply, with three oracles: a patch that fails leaves the run exactly as it
//! was; a patch that succeeds produces changes that, compacted as the journal does, rendered as diff ops and
//! applied by the client's applier to the old state, give exactly the new state; and the state bytes it reports
//! grown are what a fresh measurement says.
#![no_main]

use coworker::client::apply_ops;
use coworker::context::RunId;
use coworker::journal::push_compacted;
use coworker::patch;
use coworker::path::PathLimits;
use coworker::protocol::{self, ClientMsg, ParseLimits};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};

const LIMITS: ParseLimits = ParseLimits { path: PathLimits { max_bytes: 1024, max_depth: 32 }, max_ops_per_patch: 256, max_patches_per_frame: 1024, max_ops_per_frame: 4096, max_json_depth: 64 };

fn base() -> Map<String, Value> {
    let v = json!({
        "id": "0190f5c2-7a4e-7c1a-9a3e-2f4b5c6d7e8f", "status": "running", "owner": "u",
        "input": {"q": "hi", "list": [1, {"a": null}]}, "output": null,
        "steps": [{"name": "s0", "status": "done"}, null], "agent": "llm", "options": {}
    });
    v.as_object().unwrap().clone()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(ClientMsg::Patch { ops, .. }) = protocol::parse(text, &LIMITS) else { return };
    let before = base();
    let mut ctx = before.clone();
    match patch::apply(&mut ctx, ops) {
        Err(_) => assert_eq!(ctx, before, "a failed patch changed the run"),
        Ok(applied) => {
            let grown = coworker::size::object(&ctx) as isize - coworker::size::object(&before) as isize;
            assert_eq!(applied.grown, grown, "the running count of state bytes is off");
            let mut compacted = Vec::new();
            for c in applied.changes {
                push_compacted(&mut compacted, c);
            }
            let id = RunId::nil();
            let mut rendered = String::new();
            for c in &compacted {
                protocol::push_run_op(&mut rendered, id, c.kind, &c.path, &c.value);
            }
            let ops: Vec<Value> = serde_json::from_str(&format!("[{rendered}]")).expect("rendered ops are JSON");
            let key = id.to_string();
            let mut doc = json!({"activeRuns": {key.clone(): Value::Object(before)}});
            apply_ops(&mut doc, &ops).expect("the diff applies");
            assert_eq!(doc["activeRuns"][&key], Value::Object(ctx), "the diff does not reproduce the patch");
        }
    }
});
