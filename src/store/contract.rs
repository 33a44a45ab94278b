//! What every store backend must do, as one suite any backend runs (the SQLite store's unit test, and the
//! PostgreSQL store's): documents per space and doctype with filters, order and paging, byte-bounded pages,
//! conflicts, updates and deletes; the audit trail's repeatable append and its queries by owner, operation,
//! status, parent and time, newest first; and durability across a reopen.

use super::{Cmp, Cond, DocQuery, Paging, RunQuery, Scalar, Store, StoreError, Target};
use serde_json::{Map, Value, json};
use std::sync::Arc;

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().expect("an object").clone()
}

fn cond(field: &str, cmp: Cmp, value: Scalar) -> Cond {
    Cond { field: field.into(), cmp, value }
}

const PAGE: Paging = Paging { take: 100, skip: 0, max_bytes: 1 << 20 };

fn docs(space: &str, doctype: &str, filter: Vec<Cond>, order: Vec<(String, bool)>, paging: Paging) -> DocQuery {
    DocQuery { space: space.into(), doctype: doctype.into(), filter, order, paging }
}

fn names(page: &super::Page) -> Vec<&str> {
    page.docs.iter().map(|d| d["name"].as_str().unwrap_or_default()).collect()
}

/// Runs the whole contract on stores made by `open` (called twice: the second store must see what the first
/// made durable). Panics on the first broken promise.
pub async fn check<S: Store, F: std::future::Future<Output = S>>(open: impl Fn() -> F) {
    let store = open().await;
    // Documents: create, a conflict, per-space isolation.
    for (name, n, tag) in [("a", 3, "x"), ("b", 1, "y"), ("c", 2, "x"), ("d\"q", 5, "x")] {
        let doc = obj(json!({"name": name, "n": n, "tag": tag, "odd key": true}));
        store.create("s1".into(), "T".into(), doc).await.expect("create");
    }
    let e = store.create("s1".into(), "T".into(), obj(json!({"name": "a"}))).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e:?}");
    store.create("s2".into(), "T".into(), obj(json!({"name": "a", "n": 100}))).await.expect("same name, other space");
    // Filter, order, take.
    let q = docs(
        "s1",
        "T",
        vec![cond("tag", Cmp::Eq, Scalar::Text("x".into())), cond("n", Cmp::Gte, Scalar::Int(2))],
        vec![("n".into(), true)],
        Paging { take: 2, ..PAGE },
    );
    let page = store.select(q).await.unwrap();
    assert_eq!(names(&page), ["d\"q", "a"]);
    assert_eq!((page.total, page.truncated), (3, false));
    // Skip; default order by name; null comparisons.
    let page = store.select(docs("s1", "T", vec![], vec![], Paging { skip: 1, ..PAGE })).await.unwrap();
    assert_eq!(names(&page), ["b", "c", "d\"q"]);
    assert_eq!(page.total, 4, "a short page tells its total");
    // A page past the end, and a full page: the total is still every matching row.
    let page = store.select(docs("s1", "T", vec![], vec![], Paging { skip: 10, ..PAGE })).await.unwrap();
    assert_eq!((page.docs.len(), page.total), (0, 4));
    let page = store.select(docs("s1", "T", vec![], vec![], Paging { take: 4, ..PAGE })).await.unwrap();
    assert_eq!((page.docs.len(), page.total), (4, 4));
    let page = store.select(docs("s1", "T", vec![cond("missing", Cmp::Eq, Scalar::Null)], vec![], PAGE)).await;
    assert_eq!(page.unwrap().total, 4);
    let page = store.select(docs("s1", "T", vec![cond("tag", Cmp::Ne, Scalar::Null)], vec![], PAGE)).await;
    assert_eq!(page.unwrap().total, 4);
    let page = store.select(docs("s1", "T", vec![cond("odd key", Cmp::Eq, Scalar::Bool(true))], vec![], PAGE)).await;
    assert_eq!(page.unwrap().total, 4);
    // The other space sees its own document only.
    let page = store.select(docs("s2", "T", vec![], vec![], PAGE)).await.unwrap();
    assert_eq!((names(&page), &page.docs[0]["n"]), (vec!["a"], &json!(100)));
    // A byte-bounded page: it stops before the row that would pass `max_bytes` (the first row always comes).
    let page = store.select(docs("s1", "T", vec![], vec![], Paging { max_bytes: 1, ..PAGE })).await.unwrap();
    assert_eq!((page.docs.len(), page.total, page.truncated), (1, 4, true));
    // Update and delete: the affected documents, within their byte bound.
    let target = |filter: Vec<Cond>| Target { space: "s1".into(), doctype: "T".into(), filter, max_bytes: 1 << 20 };
    let upd = store
        .update(target(vec![cond("tag", Cmp::Eq, Scalar::Text("y".into()))]), obj(json!({"n": 10})))
        .await
        .unwrap();
    assert_eq!((upd.count, &upd.docs[0]["n"], &upd.docs[0]["tag"]), (1, &json!(10), &json!("y")));
    let del = store.delete(Target { max_bytes: 1, ..target(vec![cond("name", Cmp::Ne, Scalar::Text("a".into()))]) });
    let del = del.await.unwrap();
    assert_eq!((del.count, del.docs.len(), del.truncated), (3, 1, true));
    assert_eq!(store.select(docs("s2", "T", vec![], vec![], PAGE)).await.unwrap().total, 1, "s2 untouched");
    let all = store.all("T".into()).await.unwrap();
    let mut spaces: Vec<&str> = all.iter().map(|(s, _)| s.as_str()).collect();
    spaces.sort();
    assert_eq!(spaces, ["s1", "s2"]);

    // The audit trail: a repeated append is a no-op, queries newest first, by indexed fields and by owner.
    let run = |id: &str, t: u64, owner: &str, op: &str, status: &str, parent: Option<&str>| {
        Arc::new(obj(json!({"id": id, "timestamp": t, "operation": op, "owner": owner, "status": status,
                            "parentRun": parent, "doctype": null, "input": {"q": id}})))
    };
    let ids = [
        "00000000-0000-7000-8000-000000000001",
        "00000000-0000-7000-8000-000000000002",
        "00000000-0000-7000-8000-000000000003",
    ];
    store.append(run(ids[0], 100, "ann", "interpret", "completed", None)).await.unwrap();
    store.append(run(ids[1], 200, "bob", "select", "failed", Some(ids[0]))).await.unwrap();
    store.append(run(ids[2], 300, "ann", "dialog", "completed", Some(ids[0]))).await.unwrap();
    let again = run(ids[0], 100, "ann", "interpret", "completed", None);
    store.append(again).await.expect("appending the same run again is a no-op");
    assert!(store.contains(ids[1].parse().unwrap()).await.unwrap());
    assert!(!store.contains("00000000-0000-7000-8000-00000000000f".parse().unwrap()).await.unwrap());
    let runs = |filter: Vec<Cond>, owner: Option<&str>| RunQuery {
        filter,
        owner: owner.map(str::to_string),
        order: vec![],
        paging: PAGE,
    };
    let ids_of =
        |p: &super::Page| -> Vec<String> { p.docs.iter().map(|d| d["name"].as_str().unwrap().to_string()).collect() };
    let all = store.runs(runs(vec![], None)).await.unwrap();
    assert_eq!(ids_of(&all), [ids[2], ids[1], ids[0]], "newest first, once each");
    assert_eq!(all.total, 3);
    let p = store.runs(runs(vec![], Some("ann"))).await.unwrap();
    assert_eq!(ids_of(&p), [ids[2], ids[0]]);
    let p = store.runs(runs(vec![cond("parentRun", Cmp::Eq, Scalar::Text(ids[0].into()))], None)).await.unwrap();
    assert_eq!(ids_of(&p), [ids[2], ids[1]]);
    let p = store.runs(runs(vec![cond("status", Cmp::Eq, Scalar::Text("failed".into()))], None)).await.unwrap();
    assert_eq!(ids_of(&p), [ids[1]]);
    let p = store.runs(runs(vec![cond("operation", Cmp::Eq, Scalar::Text("dialog".into()))], None)).await.unwrap();
    assert_eq!(ids_of(&p), [ids[2]]);
    let range = vec![cond("timestamp", Cmp::Gte, Scalar::Int(150)), cond("timestamp", Cmp::Lt, Scalar::Int(300))];
    assert_eq!(ids_of(&store.runs(runs(range, None)).await.unwrap()), [ids[1]]);
    let p = store.runs(runs(vec![cond("input.q", Cmp::Eq, Scalar::Text("x".into()))], None)).await.unwrap();
    assert_eq!(p.total, 0, "a dotted field is one key, not a path");
    let p = store.runs(runs(vec![cond("operation", Cmp::Ne, Scalar::Text("select".into()))], Some("bob"))).await;
    assert_eq!(p.unwrap().total, 0);
    assert_eq!(all.docs[0]["input"]["q"], ids[2], "the whole context comes back");
    drop(store);

    // Reopened: what was acknowledged is there.
    let store = open().await;
    assert_eq!(store.runs(runs(vec![], None)).await.unwrap().total, 3);
    assert_eq!(names(&store.select(docs("s1", "T", vec![], vec![], PAGE)).await.unwrap()), ["a"]);
}
