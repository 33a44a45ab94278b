//! Data operations on a real database, SQLite and PostgreSQL each: documents, the Schema doctype and validation,
//! includeSchema, the Run audit trail, and persistence across a restart. (The full disk and the read-only file are
//! SQLite's.)

use crate::support::*;
use coworker::client::{Client, ClientError};
use serde_json::{Value, json};

fn code(e: &ClientError) -> &str {
    match e {
        ClientError::Server { code, .. } => code,
        _ => "",
    }
}

async fn run(c: &Client, op: &str, doctype: &str, input: Value) -> Result<Value, ClientError> {
    c.run(json!({"operation": op, "doctype": doctype, "input": input})).await
}

const TASK_SCHEMA: &str = r#"{"_schema_doctype": "Task", "fields": [
    {"fieldname": "title", "fieldtype": "Data", "reqd": 1, "in_list_view": 1},
    {"fieldname": "points", "fieldtype": "Int", "in_list_view": 1},
    {"fieldname": "state", "fieldtype": "Select", "options": "open\nclosed"}
]}"#;

async fn create_select_update_delete(store: &TestStore) {
    let server = store.start().await;
    let c = Client::connect(&server.url()).await.unwrap();
    for (name, points) in [("a", 3), ("b", 1), ("c", 2)] {
        let r = run(&c, "create", "Note", json!({"data": {"name": name, "points": points, "tag": "x"}})).await.unwrap();
        assert_eq!(r["status"], "completed");
        assert_eq!(r["output"]["data"][0]["name"], name);
    }
    // A document without a name gets one.
    let r = run(&c, "create", "Note", json!({"data": {"points": 9}})).await.unwrap();
    let generated = r["output"]["data"][0]["name"].as_str().unwrap().to_string();
    assert_eq!(uuid::Uuid::parse_str(&generated).unwrap().get_version_num(), 7);
    // A taken name is a conflict.
    let e = run(&c, "create", "Note", json!({"data": {"name": "a"}})).await.unwrap_err();
    assert_eq!(code(&e), "operation_failed");
    let ClientError::Server { run: Some(failed), .. } = &e else { panic!() };
    assert_eq!(failed["error"]["code"], "conflict");

    let r = run(
        &c,
        "select",
        "Note",
        json!({"where": {"tag": "x", "points": {"gte": 2}}, "orderBy": {"points": "desc"}, "take": 1, "skip": 1}),
    )
    .await
    .unwrap();
    let out = &r["output"];
    assert_eq!(out["data"], json!([{"name": "c", "points": 2, "tag": "x"}]));
    assert_eq!(out["meta"], json!({"total": 2, "take": 1, "skip": 1, "returned": 1, "truncated": false}));
    assert_eq!((out["schema"].clone(), out["viewConfig"].clone()), (Value::Null, Value::Null), "Note has no schema");

    let r = run(&c, "update", "Note", json!({"name": "b", "data": {"points": 10}})).await.unwrap();
    assert_eq!(r["output"]["data"][0], json!({"name": "b", "points": 10, "tag": "x"}));
    assert_eq!(r["output"]["meta"]["affected"], 1);
    let r = run(&c, "update", "Note", json!({"where": {"tag": "x"}, "data": {"tag": "y"}})).await.unwrap();
    assert_eq!(r["output"]["meta"]["affected"], 3);
    let e = run(&c, "update", "Note", json!({"name": "zz", "data": {"points": 1}})).await.unwrap_err();
    let ClientError::Server { run: Some(failed), .. } = &e else { panic!("{e:?}") };
    assert_eq!(failed["error"]["code"], "not_found");
    let e = run(&c, "update", "Note", json!({"name": "a", "data": {"name": "renamed"}})).await.unwrap_err();
    assert_eq!(code(&e), "operation_failed");

    let r = run(&c, "delete", "Note", json!({"name": "a"})).await.unwrap();
    assert_eq!(r["output"]["meta"]["affected"], 1);
    let r = run(&c, "delete", "Note", json!({"where": {"points": {"lt": 2}}})).await.unwrap();
    assert_eq!(r["output"]["meta"]["affected"], 0);
    let r = run(&c, "select", "Note", json!(null)).await.unwrap();
    let names: Vec<&str> =
        r["output"]["data"].as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap()).collect();
    let mut expect = vec!["b", "c", generated.as_str()];
    expect.sort();
    assert_eq!(names, expect, "ordered by name by default");

    // Bad inputs fail the run with a clear error.
    for (op, input) in [
        ("select", json!({"take": 0})),
        ("select", json!({"where": {"x": [1]}})),
        ("select", json!({"where": {"x": {"near": 1}}})),
        ("select", json!({"orderBy": {"x": "up"}})),
        ("create", json!({"data": 5})),
        ("delete", json!({})),
    ] {
        let e = run(&c, op, "Note", input.clone()).await.unwrap_err();
        let ClientError::Server { run: Some(failed), .. } = &e else { panic!("{op} {input}: {e:?}") };
        assert_eq!(failed["error"]["code"], "bad_message", "{op} {input}");
    }
    let e = c.run(json!({"operation": "select"})).await.unwrap_err();
    assert_eq!(code(&e), "operation_failed", "a data operation needs a doctype");
}

async fn schemas_are_data_validate_writes_and_come_with_select(store: &TestStore) {
    let server = store.start().await;
    let c = Client::connect(&server.url()).await.unwrap();
    let schema: Value = serde_json::from_str(TASK_SCHEMA).unwrap();
    let r = run(&c, "create", "Schema", json!({"data": schema})).await.unwrap();
    assert_eq!(r["output"]["data"][0]["name"], "Task", "a schema is named after its doctype");

    // Validation: a rejected create is a failed run, and nothing is written.
    let e = run(&c, "create", "Task", json!({"data": {"points": 2}})).await.unwrap_err();
    let ClientError::Server { code, message, run: Some(failed) } = &e else { panic!("{e:?}") };
    assert_eq!((code.as_str(), message.as_str()), ("rejected", "Task: field `title` is required"));
    assert_eq!(failed["status"], "failed");
    let e = run(&c, "create", "Task", json!({"data": {"title": "t", "points": "many"}})).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Server { message, .. } if message == "Task: field `points` must be of type Int, got a string"),
        "{e:?}"
    );
    let e = run(&c, "create", "Task", json!({"data": {"title": "t", "state": "lost"}})).await.unwrap_err();
    assert_eq!(code_of(&e), "rejected");
    let ok = run(
        &c,
        "create",
        "Task",
        json!({"data": {"name": "T-1", "title": "write docs", "points": 3, "state": "open"}}),
    )
    .await
    .unwrap();
    assert_eq!(ok["status"], "completed");
    let e = run(&c, "update", "Task", json!({"name": "T-1", "data": {"points": 1.5}})).await.unwrap_err();
    assert_eq!(code_of(&e), "rejected");
    let e = run(&c, "update", "Task", json!({"name": "T-1", "data": {"title": null}})).await.unwrap_err();
    assert_eq!(code_of(&e), "rejected");
    run(&c, "update", "Task", json!({"name": "T-1", "data": {"state": "closed"}})).await.unwrap();

    // select includes the schema, fetched as a child run of the select, and a viewConfig from it.
    let sel = run(&c, "select", "Task", json!({})).await.unwrap();
    let out = &sel["output"];
    assert_eq!(out["data"], json!([{"name": "T-1", "title": "write docs", "points": 3, "state": "closed"}]));
    assert_eq!(out["schema"]["_schema_doctype"], "Task");
    assert_eq!(out["viewConfig"], json!({"listColumns": ["name", "title", "points"]}));
    let child = c
        .run(json!({"operation": "select", "doctype": "Run", "input": {"where": {"parentRun": sel["id"]}}}))
        .await
        .unwrap();
    let kids = child["output"]["data"].as_array().unwrap();
    assert_eq!(kids.len(), 1, "{kids:?}");
    assert_eq!(
        (kids[0]["doctype"].as_str(), kids[0]["options"]["includeSchema"].as_bool()),
        (Some("Schema"), Some(false))
    );
    // Without includeSchema, no schema and no child run.
    let sel =
        c.run(json!({"operation": "select", "doctype": "Task", "options": {"includeSchema": false}})).await.unwrap();
    assert_eq!(sel["output"]["schema"], Value::Null);
    let child = c
        .run(json!({"operation": "select", "doctype": "Run", "input": {"where": {"parentRun": sel["id"]}}}))
        .await
        .unwrap();
    assert_eq!(child["output"]["data"], json!([]));

    // After a restart the documents and the schema (and so validation) are still there.
    server.stop().await;
    let server = store.start().await;
    let c = Client::connect(&server.url()).await.unwrap();
    let e = run(&c, "create", "Task", json!({"data": {"points": 2}})).await.unwrap_err();
    assert_eq!(code_of(&e), "rejected");
    let sel = run(&c, "select", "Task", json!({})).await.unwrap();
    assert_eq!(sel["output"]["data"][0]["name"], "T-1");
    // Deleting the schema lifts validation.
    run(&c, "delete", "Schema", json!({"name": "Task"})).await.unwrap();
    run(&c, "create", "Task", json!({"data": {"points": "anything"}})).await.unwrap();
}

crate::on_both_stores!(
    create_select_update_delete,
    schemas_are_data_validate_writes_and_come_with_select,
    every_finished_run_is_in_the_run_doctype,
);

fn code_of(e: &ClientError) -> &str {
    code(e)
}

async fn every_finished_run_is_in_the_run_doctype(store: &TestStore) {
    let server = store.start().await;
    let c = Client::connect(&server.url()).await.unwrap();
    let a = c.run(json!({"operation": "interpret", "owner": "ann"})).await.unwrap();
    let a_id = a["id"].as_str().unwrap();
    c.patch(a_id, json!([{"op": "append", "path": "output.tokens", "value": "hi"}])).await.unwrap();
    c.complete(a_id, None).await.unwrap();
    let b = c.run(json!({"operation": "dialog", "owner": "bob", "parentRun": a_id})).await;
    assert!(b.is_err(), "a's run is finished: no children");
    let b = c.run(json!({"operation": "dialog", "owner": "bob"})).await.unwrap();
    let b_id = b["id"].as_str().unwrap();
    c.fail(b_id, json!({"message": "closed", "code": "user"})).await.unwrap();
    let d = c.run(json!({"operation": "dialog", "owner": "bob"})).await.unwrap();
    let d_id = d["id"].as_str().unwrap().to_string();
    c.complete(&d_id, Some(json!({"value": "typed"}))).await.unwrap();
    let still_live = c.run(json!({"operation": "interpret", "owner": "ann"})).await.unwrap();

    let q = |input: Value| c.run(json!({"operation": "select", "doctype": "Run", "input": input}));
    let all = q(json!({"where": {"owner": {"ne": "system"}}})).await.unwrap();
    let ids: Vec<&str> = all["output"]["data"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [d_id.as_str(), b_id, a_id], "newest first; a live run is not in the trail");
    let rec = &all["output"]["data"][2];
    assert_eq!(rec["name"], rec["id"]);
    assert_eq!((rec["status"].as_str(), rec["output"].clone()), (Some("completed"), json!({"tokens": ["hi"]})));
    let bob = q(json!({"where": {"owner": "bob", "status": "failed"}})).await.unwrap();
    assert_eq!(bob["output"]["data"].as_array().unwrap().len(), 1);
    assert_eq!(bob["output"]["data"][0]["error"], json!({"message": "closed", "code": "user"}));
    let dialogs = q(json!({"where": {"operation": "dialog"}})).await.unwrap();
    assert_eq!(dialogs["output"]["meta"]["total"], 2);
    let t = a["timestamp"].as_u64().unwrap();
    let since = q(json!({"where": {"timestamp": {"gte": t}, "owner": "ann"}})).await.unwrap();
    assert_eq!(since["output"]["data"].as_array().unwrap().len(), 1);
    let before = q(json!({"where": {"timestamp": {"lt": t}}})).await.unwrap();
    assert_eq!(before["output"]["data"], json!([]));
    // The trail is read-only.
    let e = run(&c, "delete", "Run", json!({"name": a_id})).await.unwrap_err();
    assert_eq!(code(&e), "operation_failed");
    // A run rejected by a before-hook is in the trail too (as failed).
    let e = run(&c, "create", "Schema", json!({"data": {"fields": []}})).await.unwrap_err();
    assert_eq!(code(&e), "operation_failed");
    let failed_creates = q(json!({"where": {"operation": "create", "status": "failed"}})).await.unwrap();
    assert_eq!(failed_creates["output"]["data"].as_array().unwrap().len(), 1);
    drop(still_live);
}

/// A tmpfs of a given size mounted on a temporary directory (the tests that use it need root), unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", dir.path().to_str().unwrap()])
            .status();
        assert!(status.is_ok_and(|s| s.success()), "mounting a tmpfs needs root");
        Tmpfs { dir }
    }

    fn path(&self) -> String {
        self.dir.path().to_str().unwrap().to_string()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.dir.path()).status();
    }
}

/// A full disk: writes fail with `storage_failed` and are never acknowledged; what was acknowledged stays readable
/// and the server keeps serving. The data directory is a 1 MB tmpfs (the test mounts it, as root).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_clearly_and_acknowledges_nothing_it_did_not_write() {
    let disk = Tmpfs::mount("1m");
    let (dir, mnt) = (disk.dir.path(), disk.path());
    let server = Process::start(&["--data-dir", &mnt]);
    let c = Client::connect(&server.url).await.unwrap();
    let blob = "x".repeat(30_000);
    let mut acked = 0u64;
    let failure = loop {
        match run(&c, "create", "Blob", json!({"data": {"name": format!("b{acked}"), "blob": blob}})).await {
            Ok(_) => acked += 1,
            Err(e) => break e,
        }
        assert!(acked < 100, "1 MB never filled up");
    };
    // The document could not be written; then the failed run's own record may not fit either. Either way the
    // client is told it is the storage.
    let ClientError::Server { code: failed_code, run: failed, .. } = &failure else { panic!("{failure:?}") };
    let storage = failed_code == "storage_failed"
        || (failed_code == "operation_failed"
            && failed.as_ref().is_some_and(|r| r["error"]["code"] == "storage_failed"));
    assert!(storage, "{failure:?}");
    // A live run's completion cannot be recorded either: it is not acknowledged.
    let live = c.run(json!({"operation": "interpret", "input": {"pad": "y".repeat(30_000)}})).await.unwrap();
    let e = c.complete(live["id"].as_str().unwrap(), Some(json!({"big": "z".repeat(60_000)}))).await.unwrap_err();
    assert_eq!(code(&e), "storage_failed", "{e:?}");
    // The server still answers (a select is a run too, whose own record may not fit: a clear error as well).
    // (The failing create may have written its document before its run's record failed: see below.)
    match run(&c, "select", "Blob", json!({"take": 1000})).await {
        Ok(sel) => {
            let total = sel["output"]["meta"]["total"].as_u64().unwrap();
            assert!(total == acked || total == acked + 1, "{total} documents, {acked} acknowledged");
        }
        Err(e) => assert_eq!(code(&e), "storage_failed", "{e:?}"),
    }
    assert!(acked > 0);
    // Every acknowledged document is in the file, read directly.
    drop(server);
    let db = rusqlite::Connection::open(coworker::store::sqlite::db_path(dir)).unwrap();
    let n =
        db.query_row("SELECT COUNT(*) FROM docs WHERE doctype = 'Blob'", [], |r| r.get::<_, i64>(0)).unwrap() as u64;
    // The failing create may have written its document before its run's record failed (they are two commits):
    // the client was told it failed, but the document is there. Nothing acknowledged is missing.
    assert!(n == acked || n == acked + 1, "{n} documents on disk, {acked} acknowledged");
}

/// A database on a read-only file system is a clear error at start, before anything is served.
#[test]
fn a_read_only_database_is_refused_at_start() {
    let disk = Tmpfs::mount("4m");
    let mnt = disk.path();
    drop(Process::start(&["--data-dir", &mnt])); // creates the database, then is killed
    let ro = std::process::Command::new("mount").args(["-o", "remount,ro", &mnt]).status().unwrap();
    assert!(ro.success());
    // Bounded: a server that wrongly starts would otherwise run forever.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_coworker"))
        .args(["--listen", "127.0.0.1:0", "--data-dir", &mnt])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let Some(status) = wait_for_exit(&mut child, std::time::Duration::from_secs(20)) else {
        let _ = child.kill();
        panic!("the server started on a read-only database");
    };
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("storage: cannot open") && err.contains("coworker.db"), "stderr: {err}");
}
