//! Durable storage behind one small trait. [`Store::call`] enqueues a request at once (so durability follows the
//! order of calls) and resolves when its effects are durable. [`SqliteStore`] is the embedded default: one SQLite
//! file in WAL mode with `synchronous=FULL`, owned by a dedicated thread that commits every request waiting in its
//! queue in one transaction (group commit), each request inside its own savepoint so one failure spoils no other.
//! Nothing here runs on the async workers.

use crate::error::{Error, ErrorCode, Result};
use futures::FutureExt;
use futures::future::BoxFuture;
use rusqlite::{Connection, OpenFlags, params_from_iter, types::Value as Sql};
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use tokio::sync::oneshot;

/// A comparison in a query filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
}

impl Cmp {
    pub fn from_key(k: &str) -> Option<Cmp> {
        Some(match k {
            "eq" => Cmp::Eq,
            "ne" => Cmp::Ne,
            "gt" => Cmp::Gt,
            "gte" => Cmp::Gte,
            "lt" => Cmp::Lt,
            "lte" => Cmp::Lte,
            _ => return None,
        })
    }

    fn sql(self) -> &'static str {
        match self {
            Cmp::Eq => "=",
            Cmp::Ne => "<>",
            Cmp::Gt => ">",
            Cmp::Gte => ">=",
            Cmp::Lt => "<",
            Cmp::Lte => "<=",
        }
    }
}

/// One condition: `field <cmp> value`, where value is a JSON scalar (`null` only with `eq`/`ne`).
#[derive(Debug, Clone, PartialEq)]
pub struct Cond {
    pub field: String,
    pub cmp: Cmp,
    pub value: Value,
}

/// A query on one doctype (or on the `Run` audit trail).
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub doctype: String,
    pub filter: Vec<Cond>,
    /// Fields to order by, `true` for descending. Empty: by name (documents) or newest first (runs).
    pub order: Vec<(String, bool)>,
    pub take: u64,
    pub skip: u64,
}

/// What a store can be asked.
#[derive(Debug, Clone)]
pub enum Request {
    /// Append a finished run's final context to the audit trail.
    Record(Arc<Map<String, Value>>),
    /// Read documents (or runs): resolves to `{"data": [...], "total": N}`.
    Select(Query),
    /// Insert a document (it has a `name`); fails with `conflict` if the name exists.
    Create { doctype: String, doc: Map<String, Value> },
    /// Shallow-merge `data` into every matching document: resolves to `{"data": [updated docs]}`.
    Update { doctype: String, filter: Vec<Cond>, data: Map<String, Value> },
    /// Delete every matching document: resolves to `{"data": [deleted docs]}`.
    Delete { doctype: String, filter: Vec<Cond> },
}

/// Durable storage. Implementations enqueue in `call` (not in the future) and must not block the caller.
pub trait Store: Send + Sync + 'static {
    fn call(&self, req: Request) -> BoxFuture<'static, Result<Value>>;
}

impl std::fmt::Debug for dyn Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

struct Job {
    req: Request,
    reply: oneshot::Sender<Result<Value>>,
}

/// The embedded SQLite store.
pub struct SqliteStore {
    tx: mpsc::Sender<Job>,
}

/// How the store commits.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// Requests committed together at most. 1 gives one fsync per request (the benchmark's baseline).
    pub max_batch: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { max_batch: 1024 }
    }
}

fn storage(e: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::StorageFailed, format!("storage: {e}"))
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS docs (
    doctype TEXT NOT NULL,
    name TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (doctype, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    timestamp INTEGER NOT NULL,
    owner TEXT,
    operation TEXT,
    status TEXT,
    parent_run TEXT,
    doctype TEXT,
    ctx TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_time ON runs (timestamp DESC, id DESC);
CREATE INDEX IF NOT EXISTS runs_by_owner ON runs (owner, timestamp DESC);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
";

/// The database file inside a data directory.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("coworker.db")
}

impl SqliteStore {
    /// Opens (creating if needed) the database in `data_dir`, or an in-memory database for `None`. Fails at once
    /// when the directory or file cannot be created, opened or written.
    pub fn open(data_dir: Option<&Path>, options: StoreOptions) -> Result<SqliteStore> {
        let conn = match data_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| storage(format!("cannot create {}: {e}", dir.display())))?;
                let path = db_path(dir);
                let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE;
                Connection::open_with_flags(&path, flags)
                    .map_err(|e| storage(format!("cannot open {}: {e}", path.display())))?
            }
            None => Connection::open_in_memory().map_err(storage)?,
        };
        let where_ =
            data_dir.map_or_else(|| "the in-memory database".to_string(), |d| db_path(d).display().to_string());
        let setup = |e: rusqlite::Error| storage(format!("cannot open {where_}: {e}"));
        conn.pragma_update(None, "journal_mode", "WAL").map_err(setup)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(setup)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(setup)?;
        conn.execute_batch(SCHEMA).map_err(setup)?;
        // Prove it is writable now rather than on the first completion: SQLite silently opens a write-protected file
        // read-only, and an empty transaction writes nothing.
        if conn.is_readonly(rusqlite::MAIN_DB).map_err(setup)? {
            return Err(storage(format!("cannot open {where_}: the database is read-only")));
        }
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('last_start', ?1) ON CONFLICT (key) DO UPDATE SET value = ?1",
            [std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0)],
        )
        .map_err(setup)?;
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("coworker-store".into())
            .spawn(move || writer(conn, rx, options))
            .map_err(storage)?;
        Ok(SqliteStore { tx })
    }
}

impl Store for SqliteStore {
    fn call(&self, req: Request) -> BoxFuture<'static, Result<Value>> {
        let (reply, rx) = oneshot::channel();
        let sent = self.tx.send(Job { req, reply });
        async move {
            sent.map_err(|_| storage("the store has stopped"))?;
            rx.await.map_err(|_| storage("the store has stopped"))?
        }
        .boxed()
    }
}

/// The store thread: take every waiting job, run them in one transaction, commit once, then answer them all.
fn writer(mut conn: Connection, rx: mpsc::Receiver<Job>, options: StoreOptions) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < options.max_batch.max(1) {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let results = run_batch(&mut conn, &jobs);
        for (job, result) in jobs.into_iter().zip(results) {
            let _ = job.reply.send(result);
        }
    }
}

fn run_batch(conn: &mut Connection, jobs: &[Job]) -> Vec<Result<Value>> {
    let mut tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return jobs.iter().map(|_| Err(storage(&e))).collect(),
    };
    let mut results = Vec::with_capacity(jobs.len());
    for job in jobs {
        let r = (|| {
            let mut sp = tx.savepoint().map_err(storage)?;
            match execute(&sp, &job.req) {
                Ok(v) => {
                    sp.commit().map_err(storage)?;
                    Ok(v)
                }
                Err(e) => {
                    sp.rollback().map_err(storage)?;
                    Err(e)
                }
            }
        })();
        results.push(r);
    }
    match tx.commit() {
        Ok(()) => results,
        Err(e) => {
            tracing::error!(error = %e, "commit failed; nothing in this batch is durable");
            jobs.iter().map(|_| Err(storage(&e))).collect()
        }
    }
}

fn json_path(field: &str) -> String {
    // A quoted JSON path label: any field name is safe, it is bound as a parameter.
    format!("$.\"{}\"", field.replace('\\', "\\\\").replace('"', "\\\""))
}

fn sql_value(v: &Value) -> Result<Sql> {
    Ok(match v {
        Value::Null => Sql::Null,
        Value::Bool(b) => Sql::Integer(*b as i64),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Sql::Integer(i),
            None => Sql::Real(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Sql::Text(s.clone()),
        _ => return Err(Error::new(ErrorCode::BadMessage, "filters compare scalars only")),
    })
}

/// The SQL expression for a field: a column for names and indexed run fields, `json_extract` otherwise.
fn column(runs: bool, field: &str, params: &mut Vec<Sql>) -> String {
    let col = if runs {
        match field {
            "id" | "name" => Some("id"),
            "timestamp" => Some("timestamp"),
            "owner" => Some("owner"),
            "operation" => Some("operation"),
            "status" => Some("status"),
            "parentRun" => Some("parent_run"),
            "doctype" => Some("doctype"),
            _ => None,
        }
    } else {
        (field == "name").then_some("name")
    };
    match col {
        Some(c) => c.to_string(),
        None => {
            params.push(Sql::Text(json_path(field)));
            format!("json_extract({}, ?)", if runs { "ctx" } else { "body" })
        }
    }
}

fn where_clause(runs: bool, doctype: &str, filter: &[Cond], params: &mut Vec<Sql>) -> Result<String> {
    let mut sql = String::from(" WHERE 1=1");
    if !runs {
        sql.push_str(" AND doctype = ?");
        params.push(Sql::Text(doctype.to_string()));
    }
    for c in filter {
        let col = column(runs, &c.field, params);
        match (&c.value, c.cmp) {
            (Value::Null, Cmp::Eq) => sql.push_str(&format!(" AND {col} IS NULL")),
            (Value::Null, Cmp::Ne) => sql.push_str(&format!(" AND {col} IS NOT NULL")),
            (Value::Null, _) => return Err(Error::new(ErrorCode::BadMessage, "null compares with eq or ne only")),
            (v, cmp) => {
                sql.push_str(&format!(" AND {col} {} ?", cmp.sql()));
                params.push(sql_value(v)?);
            }
        }
    }
    Ok(sql)
}

fn parse_body(text: &str) -> Result<Map<String, Value>> {
    match serde_json::from_str(text) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(storage("a stored document is not a JSON object")),
    }
}

fn select_docs(
    conn: &Connection,
    runs: bool,
    doctype: &str,
    filter: &[Cond],
    order: &[(String, bool)],
    limit: Option<(u64, u64)>,
) -> Result<Vec<Map<String, Value>>> {
    let mut params = Vec::new();
    let (body, table) = if runs { ("ctx", "runs") } else { ("body", "docs") };
    let mut sql = format!("SELECT {body} FROM {table}");
    sql.push_str(&where_clause(runs, doctype, filter, &mut params)?);
    let mut keys: Vec<String> = Vec::new();
    for (field, desc) in order {
        let col = column(runs, field, &mut params);
        keys.push(format!("{col} {}", if *desc { "DESC" } else { "ASC" }));
    }
    keys.push(if runs { "timestamp DESC, id DESC".into() } else { "name ASC".into() });
    sql.push_str(" ORDER BY ");
    sql.push_str(&keys.join(", "));
    if let Some((take, skip)) = limit {
        sql.push_str(" LIMIT ? OFFSET ?");
        params.push(Sql::Integer(take as i64));
        params.push(Sql::Integer(skip as i64));
    }
    let mut stmt = conn.prepare_cached(&sql).map_err(storage)?;
    let rows = stmt.query_map(params_from_iter(params.iter()), |r| r.get::<_, String>(0)).map_err(storage)?;
    rows.map(|r| {
        let mut doc = parse_body(&r.map_err(storage)?)?;
        if runs && let Some(id) = doc.get("id").cloned() {
            // A Run document is the final context itself, named by its id.
            doc.insert("name".into(), id);
        }
        Ok(doc)
    })
    .collect()
}

fn count(conn: &Connection, runs: bool, doctype: &str, filter: &[Cond]) -> Result<u64> {
    let mut params = Vec::new();
    let mut sql = format!("SELECT COUNT(*) FROM {}", if runs { "runs" } else { "docs" });
    sql.push_str(&where_clause(runs, doctype, filter, &mut params)?);
    let n: i64 = conn
        .prepare_cached(&sql)
        .map_err(storage)?
        .query_row(params_from_iter(params.iter()), |r| r.get(0))
        .map_err(storage)?;
    Ok(n as u64)
}

fn name_of(doc: &Map<String, Value>) -> Result<String> {
    doc.get("name").and_then(Value::as_str).map(str::to_string).ok_or_else(|| storage("a document without a name"))
}

fn execute(conn: &Connection, req: &Request) -> Result<Value> {
    match req {
        Request::Record(ctx) => {
            let s = |k: &str| ctx.get(k).and_then(Value::as_str).map(str::to_string);
            let text = serde_json::to_string(&**ctx).map_err(storage)?;
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO runs (id, timestamp, owner, operation, status, parent_run, doctype, ctx)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (id) DO NOTHING",
                )
                .map_err(storage)?
                .execute(rusqlite::params![
                    s("id").unwrap_or_default(),
                    ctx.get("timestamp").and_then(Value::as_i64).unwrap_or(0),
                    s("owner"),
                    s("operation"),
                    s("status"),
                    s("parentRun"),
                    s("doctype"),
                    text
                ])
                .map_err(storage)?;
            if inserted == 0 {
                // Never acknowledge a run whose record is not the one written.
                return Err(Error::new(ErrorCode::Conflict, "the audit trail already has a run with this id"));
            }
            Ok(Value::Null)
        }
        Request::Select(q) => {
            let runs = q.doctype == "Run";
            let data = select_docs(conn, runs, &q.doctype, &q.filter, &q.order, Some((q.take, q.skip)))?;
            let total = count(conn, runs, &q.doctype, &q.filter)?;
            Ok(json!({"data": data, "total": total}))
        }
        Request::Create { doctype, doc } => {
            let name = name_of(doc)?;
            let text = serde_json::to_string(doc).map_err(storage)?;
            let inserted = conn
                .prepare_cached("INSERT INTO docs (doctype, name, body) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING")
                .map_err(storage)?
                .execute(rusqlite::params![doctype, name, text])
                .map_err(storage)?;
            if inserted == 0 {
                return Err(Error::new(ErrorCode::Conflict, format!("a {doctype} named {name:?} already exists")));
            }
            Ok(json!({"data": [doc]}))
        }
        Request::Update { doctype, filter, data } => {
            let docs = select_docs(conn, false, doctype, filter, &[], None)?;
            let mut out = Vec::with_capacity(docs.len());
            for mut doc in docs {
                let name = name_of(&doc)?;
                for (k, v) in data {
                    doc.insert(k.clone(), v.clone());
                }
                let text = serde_json::to_string(&doc).map_err(storage)?;
                conn.prepare_cached("UPDATE docs SET body = ?3 WHERE doctype = ?1 AND name = ?2")
                    .map_err(storage)?
                    .execute(rusqlite::params![doctype, name, text])
                    .map_err(storage)?;
                out.push(Value::Object(doc));
            }
            Ok(json!({"data": out}))
        }
        Request::Delete { doctype, filter } => {
            let docs = select_docs(conn, false, doctype, filter, &[], None)?;
            for doc in &docs {
                conn.prepare_cached("DELETE FROM docs WHERE doctype = ?1 AND name = ?2")
                    .map_err(storage)?
                    .execute(rusqlite::params![doctype, name_of(doc)?])
                    .map_err(storage)?;
            }
            Ok(json!({"data": docs}))
        }
    }
}

/// Loads every document of a doctype (used at start for the schema cache).
pub async fn load_all(store: &dyn Store, doctype: &str) -> Result<Vec<Map<String, Value>>> {
    let q = Query { doctype: doctype.into(), filter: vec![], order: vec![], take: i64::MAX as u64, skip: 0 };
    let v = store.call(Request::Select(q)).await?;
    Ok(v["data"].as_array().into_iter().flatten().filter_map(|d| d.as_object().cloned()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(field: &str, cmp: Cmp, value: Value) -> Cond {
        Cond { field: field.into(), cmp, value }
    }

    #[tokio::test]
    async fn documents_round_trip_with_filters_order_and_paging() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(Some(dir.path()), StoreOptions::default()).unwrap();
        for (name, n, tag) in [("a", 3, "x"), ("b", 1, "y"), ("c", 2, "x"), ("d\"q", 5, "x")] {
            let doc = json!({"name": name, "n": n, "tag": tag, "odd key": true}).as_object().unwrap().clone();
            store.call(Request::Create { doctype: "T".into(), doc }).await.unwrap();
        }
        let dup = json!({"name": "a"}).as_object().unwrap().clone();
        let e = store.call(Request::Create { doctype: "T".into(), doc: dup }).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Conflict);
        let q = Query {
            doctype: "T".into(),
            filter: vec![cond("tag", Cmp::Eq, json!("x")), cond("n", Cmp::Gte, json!(2))],
            order: vec![("n".into(), true)],
            take: 2,
            skip: 0,
        };
        let v = store.call(Request::Select(q)).await.unwrap();
        let names: Vec<&str> = v["data"].as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["d\"q", "a"]);
        assert_eq!(v["total"], 3);
        let upd = Request::Update {
            doctype: "T".into(),
            filter: vec![cond("odd key", Cmp::Eq, json!(true)), cond("tag", Cmp::Eq, json!("y"))],
            data: json!({"n": 10}).as_object().unwrap().clone(),
        };
        assert_eq!(store.call(upd).await.unwrap()["data"][0]["n"], 10);
        let del = Request::Delete { doctype: "T".into(), filter: vec![cond("name", Cmp::Ne, json!("a"))] };
        assert_eq!(store.call(del).await.unwrap()["data"].as_array().unwrap().len(), 3);
        drop(store);
        // Reopened, the data is there.
        let store = SqliteStore::open(Some(dir.path()), StoreOptions::default()).unwrap();
        assert_eq!(load_all(&store, "T").await.unwrap().len(), 1);
    }

    #[test]
    fn a_data_dir_that_cannot_be_created_is_a_clear_error_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let e = SqliteStore::open(Some(&file), StoreOptions::default()).err().expect("open fails");
        assert_eq!(e.code, ErrorCode::StorageFailed);
        assert!(e.message.contains("cannot create"), "{e}");
    }
}
