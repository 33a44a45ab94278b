//! The embedded SQLite store: one file in WAL mode with `synchronous=FULL`. Writes (run records and document
//! changes) go to one writer thread that commits every request waiting in its queue in one transaction (group
//! commit), each request in its own savepoint so that one failure spoils no other. Reads go to a few reader threads,
//! each with its own read-only connection: WAL readers neither block the writer nor wait for it, so no read, however
//! slow, delays a durable write. Reads wait in a bounded queue (past it: `Busy`), and every statement runs under a
//! time limit (a progress handler interrupts it: `Timeout`). Nothing here runs on the async workers.

use super::{
    Affected, AuditTrail, Cmp, Cond, DocQuery, Documents, Page, Paging, RunQuery, Scalar, Scope, SpacedDocs,
    StoreError, StoreResult, Target, cmp_sql, named_run,
};
use crate::error::{Error, ErrorCode};
use crate::model::context::RunId;
use futures::FutureExt;
use futures::future::BoxFuture;
use rusqlite::{Connection, OpenFlags, params_from_iter, types::Value as Sql};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How the store works.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// Write requests committed together at most. 1 gives one fsync per request (the benchmark's baseline).
    pub max_batch: usize,
    /// Reader threads, each with its own connection.
    pub readers: usize,
    /// Reads that may wait for a reader; past it a read fails at once with `store_busy`.
    pub read_queue: usize,
    /// The longest one statement may run before it is interrupted (`query_timeout`).
    pub query_timeout: Duration,
    /// Documents one update or delete may change; past it the request is refused (`limit_exceeded`).
    pub max_affected: u64,
    /// The largest document (its JSON) a create or update may leave (`limit_exceeded`).
    pub max_document_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_batch: 1024,
            readers: 2,
            read_queue: 256,
            query_timeout: Duration::from_secs(2),
            max_affected: 10_000,
            max_document_bytes: 1 << 20,
        }
    }
}

enum Write {
    Append(Arc<Map<String, Value>>),
    Create { space: String, doctype: String, doc: Map<String, Value> },
    Update(Target, Map<String, Value>),
    Delete(Target),
}

enum Read {
    Contains(RunId),
    Runs(RunQuery),
    Select(DocQuery),
    All(String),
}

enum Done {
    Unit,
    Affected(Affected),
    Bool(bool),
    Page(Page),
    All(SpacedDocs),
}

struct Job<R> {
    req: R,
    reply: oneshot::Sender<StoreResult<Done>>,
}

/// The embedded SQLite store.
pub struct SqliteStore {
    writes: mpsc::Sender<Job<Write>>,
    reads: mpsc::SyncSender<Job<Read>>,
    /// The database's folder when the store was opened without one (removed when the store is dropped).
    _scratch: Option<tempfile::TempDir>,
}

/// An error at open: said with the path, for the operator (never sent to a client).
fn open_error(what: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::StorageFailed, format!("storage: {what}"))
}

/// Classifies a driver error for the client, and logs what the client is not told.
fn classify(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    let code = e.sqlite_error_code();
    match code {
        Some(C::OperationInterrupted) => StoreError::Timeout,
        Some(C::DatabaseBusy | C::DatabaseLocked) => {
            tracing::warn!(error = %e, "the database stayed busy");
            StoreError::Unavailable
        }
        _ => {
            tracing::error!(error = %e, "a store request failed");
            StoreError::Failed
        }
    }
}

/// The database file inside a data directory.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("coworker.db")
}

/// The schema, at the version `PRAGMA user_version` says (1). Version 0 kept documents without a space: they move
/// to the space `default`.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS docs (
    space TEXT NOT NULL,
    doctype TEXT NOT NULL,
    name TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (space, doctype, name)
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

const VERSION: i64 = 1;

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version < 1 {
        let old_docs: bool =
            tx.query_row("SELECT COUNT(*) FROM pragma_table_info('docs') WHERE name = 'doctype'", [], |r| {
                r.get::<_, i64>(0).map(|n| n > 0)
            })?;
        let has_space: bool =
            tx.query_row("SELECT COUNT(*) FROM pragma_table_info('docs') WHERE name = 'space'", [], |r| {
                r.get::<_, i64>(0).map(|n| n > 0)
            })?;
        if old_docs && !has_space {
            tx.execute_batch(
                "ALTER TABLE docs RENAME TO docs_v0;
                 CREATE TABLE docs (space TEXT NOT NULL, doctype TEXT NOT NULL, name TEXT NOT NULL,
                     body TEXT NOT NULL, PRIMARY KEY (space, doctype, name)) WITHOUT ROWID;
                 INSERT INTO docs (space, doctype, name, body) SELECT 'default', doctype, name, body FROM docs_v0;
                 DROP TABLE docs_v0;",
            )?;
        }
    }
    tx.execute_batch(SCHEMA)?;
    tx.pragma_update(None, "user_version", VERSION)?;
    tx.commit()
}

impl SqliteStore {
    /// Opens (creating if needed) the database in `data_dir`, or in a scratch folder removed with the store for
    /// `None`. Fails at once when the directory or file cannot be created, opened or written.
    pub fn open(data_dir: Option<&Path>, options: StoreOptions) -> crate::error::Result<SqliteStore> {
        let scratch = match data_dir {
            Some(_) => None,
            None => Some(tempfile::tempdir().map_err(|e| open_error(format!("cannot create a scratch folder: {e}")))?),
        };
        let dir = data_dir.or(scratch.as_ref().map(|d| d.path())).expect("a folder");
        std::fs::create_dir_all(dir).map_err(|e| open_error(format!("cannot create {}: {e}", dir.display())))?;
        let path = db_path(dir);
        let shown = if scratch.is_some() { "the scratch database".to_string() } else { path.display().to_string() };
        let setup = |e: rusqlite::Error| open_error(format!("cannot open {shown}: {e}"));
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE;
        let mut conn = Connection::open_with_flags(&path, flags).map_err(setup)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(setup)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(setup)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(setup)?;
        migrate(&mut conn).map_err(setup)?;
        // Prove it is writable now rather than on the first completion: SQLite silently opens a write-protected file
        // read-only, and an empty transaction writes nothing.
        if conn.is_readonly(rusqlite::MAIN_DB).map_err(setup)? {
            return Err(open_error(format!("cannot open {shown}: the database is read-only")));
        }
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('last_start', ?1) ON CONFLICT (key) DO UPDATE SET value = ?1",
            [std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0)],
        )
        .map_err(setup)?;
        let (writes, write_rx) = mpsc::channel::<Job<Write>>();
        std::thread::Builder::new()
            .name("coworker-store".into())
            .spawn(move || writer(conn, write_rx, options))
            .map_err(open_error)?;
        let (reads, read_rx) = mpsc::sync_channel::<Job<Read>>(options.read_queue.max(1));
        let read_rx = Arc::new(Mutex::new(read_rx));
        for i in 0..options.readers.max(1) {
            let conn =
                Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                    .map_err(setup)?;
            conn.busy_timeout(Duration::from_secs(5)).map_err(setup)?;
            let rx = read_rx.clone();
            std::thread::Builder::new()
                .name(format!("coworker-read-{i}"))
                .spawn(move || reader(conn, rx, options))
                .map_err(open_error)?;
        }
        Ok(SqliteStore { writes, reads, _scratch: scratch })
    }

    fn write(&self, req: Write) -> BoxFuture<'static, StoreResult<Done>> {
        let (reply, rx) = oneshot::channel();
        // Queued now, not when the future is polled: durability follows the order of the calls.
        let sent = self.writes.send(Job { req, reply }).map_err(|_| StoreError::Unavailable);
        answer(sent, rx)
    }

    fn read(&self, req: Read) -> BoxFuture<'static, StoreResult<Done>> {
        let (reply, rx) = oneshot::channel();
        let sent = self.reads.try_send(Job { req, reply }).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => StoreError::Busy,
            mpsc::TrySendError::Disconnected(_) => StoreError::Unavailable,
        });
        answer(sent, rx)
    }
}

/// The answer to a job, once it was queued (`sent`).
fn answer(sent: StoreResult<()>, rx: oneshot::Receiver<StoreResult<Done>>) -> BoxFuture<'static, StoreResult<Done>> {
    async move {
        sent?;
        rx.await.map_err(|_| StoreError::Unavailable)?
    }
    .boxed()
}

fn unexpected() -> StoreError {
    tracing::error!("the store answered a request with the wrong kind of result");
    StoreError::Failed
}

impl AuditTrail for SqliteStore {
    fn append(&self, run: Arc<Map<String, Value>>) -> BoxFuture<'static, StoreResult<()>> {
        self.write(Write::Append(run)).map(|r| r.map(|_| ())).boxed()
    }

    fn contains(&self, id: RunId) -> BoxFuture<'static, StoreResult<bool>> {
        self.read(Read::Contains(id))
            .map(|r| match r? {
                Done::Bool(b) => Ok(b),
                _ => Err(unexpected()),
            })
            .boxed()
    }

    fn runs(&self, query: RunQuery) -> BoxFuture<'static, StoreResult<Page>> {
        self.read(Read::Runs(query)).map(page).boxed()
    }
}

fn page(r: StoreResult<Done>) -> StoreResult<Page> {
    match r? {
        Done::Page(p) => Ok(p),
        _ => Err(unexpected()),
    }
}

fn affected(r: StoreResult<Done>) -> StoreResult<Affected> {
    match r? {
        Done::Affected(a) => Ok(a),
        _ => Err(unexpected()),
    }
}

impl Documents for SqliteStore {
    fn select(&self, query: DocQuery) -> BoxFuture<'static, StoreResult<Page>> {
        self.read(Read::Select(query)).map(page).boxed()
    }

    fn create(&self, space: String, doctype: String, doc: Map<String, Value>) -> BoxFuture<'static, StoreResult<()>> {
        self.write(Write::Create { space, doctype, doc }).map(|r| r.map(|_| ())).boxed()
    }

    fn update(&self, target: Target, data: Map<String, Value>) -> BoxFuture<'static, StoreResult<Affected>> {
        self.write(Write::Update(target, data)).map(affected).boxed()
    }

    fn delete(&self, target: Target) -> BoxFuture<'static, StoreResult<Affected>> {
        self.write(Write::Delete(target)).map(affected).boxed()
    }

    fn all(&self, doctype: String) -> BoxFuture<'static, StoreResult<SpacedDocs>> {
        self.read(Read::All(doctype))
            .map(|r| match r? {
                Done::All(v) => Ok(v),
                _ => Err(unexpected()),
            })
            .boxed()
    }
}

/// The time limit of one connection's statements: a progress handler, installed once, interrupts whatever runs
/// past the deadline that [`Deadline::arm`] set before it.
#[derive(Clone)]
struct Deadline {
    base: Instant,
    /// Milliseconds after `base`.
    at: Arc<std::sync::atomic::AtomicU64>,
}

impl Deadline {
    fn install(conn: &mut Connection) -> Deadline {
        let d = Deadline { base: Instant::now(), at: Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX)) };
        let handler = d.clone();
        let over =
            move || handler.base.elapsed().as_millis() as u64 > handler.at.load(std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = conn.progress_handler(10_000, Some(over)) {
            tracing::error!(error = %e, "cannot install the store's time limit; its queries run unbounded");
        }
        d
    }

    /// The statements that follow may run for `limit`.
    fn arm(&self, limit: Duration) {
        let at = (self.base.elapsed() + limit).as_millis() as u64;
        self.at.store(at, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A reader thread: takes the next read from the shared queue and answers it.
fn reader(mut conn: Connection, rx: Arc<Mutex<mpsc::Receiver<Job<Read>>>>, options: StoreOptions) {
    let deadline = Deadline::install(&mut conn);
    loop {
        let job = match rx.lock() {
            Ok(rx) => match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
            Err(_) => return,
        };
        deadline.arm(options.query_timeout);
        let result = match job.req {
            Read::Contains(id) => conn
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM runs WHERE id = ?1)")
                .and_then(|mut s| s.query_row([id.to_string()], |r| r.get::<_, bool>(0)))
                .map(Done::Bool)
                .map_err(classify),
            Read::Runs(q) => {
                select_page(&conn, &Scope::Runs { owner: q.owner.as_deref() }, &q.filter, &q.order, q.paging)
                    .map(Done::Page)
            }
            Read::Select(q) => {
                let scope = Scope::Docs { space: &q.space, doctype: &q.doctype };
                select_page(&conn, &scope, &q.filter, &q.order, q.paging).map(Done::Page)
            }
            Read::All(doctype) => all_docs(&conn, &doctype).map(Done::All),
        };
        let _ = job.reply.send(result);
    }
}

/// The writer thread: take every waiting job, run them in one transaction, commit once, then answer them all.
fn writer(mut conn: Connection, rx: mpsc::Receiver<Job<Write>>, options: StoreOptions) {
    let deadline = Deadline::install(&mut conn);
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < options.max_batch.max(1) {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let results = run_batch(&mut conn, &jobs, &options, &deadline);
        for (job, result) in jobs.into_iter().zip(results) {
            let _ = job.reply.send(result);
        }
    }
}

fn run_batch(
    conn: &mut Connection,
    jobs: &[Job<Write>],
    options: &StoreOptions,
    deadline: &Deadline,
) -> Vec<StoreResult<Done>> {
    // Beginning and committing the batch are not timed (a commit interrupted would lose the whole batch).
    deadline.arm(Duration::from_secs(86_400));
    let mut tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let e = classify(e);
            return jobs.iter().map(|_| Err(e.clone())).collect();
        }
    };
    let mut results = Vec::with_capacity(jobs.len());
    for job in jobs {
        let r = (|| {
            let mut sp = tx.savepoint().map_err(classify)?;
            deadline.arm(options.query_timeout);
            let result = execute(&sp, &job.req, options);
            deadline.arm(Duration::from_secs(86_400));
            match result {
                Ok(v) => {
                    sp.commit().map_err(classify)?;
                    Ok(v)
                }
                Err(e) => {
                    sp.rollback().map_err(classify)?;
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
            jobs.iter().map(|_| Err(StoreError::Failed)).collect()
        }
    }
}

fn json_path(field: &str) -> String {
    // A quoted JSON path label: any field name is safe, it is bound as a parameter.
    format!("$.\"{}\"", field.replace('\\', "\\\\").replace('"', "\\\""))
}

fn sql_value(v: &Scalar) -> Sql {
    match v {
        Scalar::Null => Sql::Null,
        Scalar::Bool(b) => Sql::Integer(*b as i64),
        Scalar::Int(i) => Sql::Integer(*i),
        Scalar::Float(f) => Sql::Real(*f),
        Scalar::Text(s) => Sql::Text(s.clone()),
    }
}

/// The SQL expression for a field: a column for names and indexed run fields, `json_extract` otherwise.
fn column(scope: &Scope<'_>, field: &str, params: &mut Vec<Sql>) -> String {
    let col = match scope {
        Scope::Runs { .. } => match field {
            "id" | "name" => Some("id"),
            "timestamp" => Some("timestamp"),
            "owner" => Some("owner"),
            "operation" => Some("operation"),
            "status" => Some("status"),
            "parentRun" => Some("parent_run"),
            "doctype" => Some("doctype"),
            _ => None,
        },
        Scope::Docs { .. } => (field == "name").then_some("name"),
    };
    match col {
        Some(c) => c.to_string(),
        None => {
            params.push(Sql::Text(json_path(field)));
            format!("json_extract({}, ?)", scope.table().1)
        }
    }
}

fn where_clause(scope: &Scope<'_>, filter: &[Cond], params: &mut Vec<Sql>) -> String {
    let mut sql = String::from(" WHERE 1=1");
    match scope {
        Scope::Docs { space, doctype } => {
            sql.push_str(" AND space = ? AND doctype = ?");
            params.push(Sql::Text(space.to_string()));
            params.push(Sql::Text(doctype.to_string()));
        }
        Scope::Runs { owner: Some(owner) } => {
            sql.push_str(" AND owner = ?");
            params.push(Sql::Text(owner.to_string()));
        }
        Scope::Runs { owner: None } => {}
    }
    for c in filter {
        let col = column(scope, &c.field, params);
        match (&c.value, c.cmp) {
            (Scalar::Null, Cmp::Ne) => sql.push_str(&format!(" AND {col} IS NOT NULL")),
            // `data` refuses null with other comparisons; here it can only mean "is null".
            (Scalar::Null, _) => sql.push_str(&format!(" AND {col} IS NULL")),
            (v, cmp) => {
                sql.push_str(&format!(" AND {col} {} ?", cmp_sql(cmp)));
                params.push(sql_value(v));
            }
        }
    }
    sql
}

fn parse_body(text: &str) -> StoreResult<Map<String, Value>> {
    match serde_json::from_str(text) {
        Ok(Value::Object(m)) => Ok(m),
        _ => {
            tracing::error!("a stored document is not a JSON object");
            Err(StoreError::Failed)
        }
    }
}

/// The rows of a query, in order, within `paging`: at most `take`, and no more once their JSON passes `max_bytes`
/// (the first row always comes, so a page is never empty for a row that is large on its own).
fn select_page(
    conn: &Connection,
    scope: &Scope<'_>,
    filter: &[Cond],
    order: &[(String, bool)],
    paging: Paging,
) -> StoreResult<Page> {
    let mut params = Vec::new();
    let (table, body) = scope.table();
    let mut sql = format!("SELECT {body} FROM {table}");
    sql.push_str(&where_clause(scope, filter, &mut params));
    let mut keys: Vec<String> = Vec::new();
    for (field, desc) in order {
        let col = column(scope, field, &mut params);
        keys.push(format!("{col} {}", if *desc { "DESC" } else { "ASC" }));
    }
    keys.push(match scope {
        Scope::Runs { .. } => "timestamp DESC, id DESC".into(),
        Scope::Docs { .. } => "name ASC".into(),
    });
    sql.push_str(" ORDER BY ");
    sql.push_str(&keys.join(", "));
    sql.push_str(" LIMIT ? OFFSET ?");
    params.push(Sql::Integer(paging.take.min(i64::MAX as u64) as i64));
    params.push(Sql::Integer(paging.skip.min(i64::MAX as u64) as i64));
    let mut stmt = conn.prepare_cached(&sql).map_err(classify)?;
    let mut rows = stmt.query(params_from_iter(params.iter())).map_err(classify)?;
    let mut page = Page::default();
    let mut bytes = 0usize;
    while let Some(row) = rows.next().map_err(classify)? {
        let text: String = row.get(0).map_err(classify)?;
        if !page.docs.is_empty() && bytes + text.len() > paging.max_bytes {
            page.truncated = true;
            break;
        }
        bytes += text.len();
        let doc = parse_body(&text)?;
        page.docs.push(if matches!(scope, Scope::Runs { .. }) { named_run(doc) } else { doc });
    }
    drop(rows);
    page.total = match page.total_known(paging) {
        Some(total) => total,
        None => count(conn, scope, filter)?,
    };
    Ok(page)
}

fn count(conn: &Connection, scope: &Scope<'_>, filter: &[Cond]) -> StoreResult<u64> {
    let mut params = Vec::new();
    let mut sql = format!("SELECT COUNT(*) FROM {}", scope.table().0);
    sql.push_str(&where_clause(scope, filter, &mut params));
    let n: i64 = conn
        .prepare_cached(&sql)
        .map_err(classify)?
        .query_row(params_from_iter(params.iter()), |r| r.get(0))
        .map_err(classify)?;
    Ok(n as u64)
}

fn all_docs(conn: &Connection, doctype: &str) -> StoreResult<SpacedDocs> {
    let mut stmt = conn.prepare_cached("SELECT space, body FROM docs WHERE doctype = ?1").map_err(classify)?;
    let rows = stmt.query_map([doctype], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).map_err(classify)?;
    rows.map(|r| {
        let (space, body) = r.map_err(classify)?;
        Ok((space, parse_body(&body)?))
    })
    .collect()
}

/// The documents a target matches, refused past `max_affected` (counted before any is read).
fn matching(conn: &Connection, t: &Target, options: &StoreOptions) -> StoreResult<Vec<(String, String)>> {
    let scope = Scope::Docs { space: &t.space, doctype: &t.doctype };
    if count(conn, &scope, &t.filter)? > options.max_affected {
        return Err(StoreError::Conflict(format!(
            "the filter matches more than {} documents: narrow it",
            options.max_affected
        )));
    }
    let mut params = Vec::new();
    let sql = format!("SELECT name, body FROM docs{} ORDER BY name", where_clause(&scope, &t.filter, &mut params));
    let mut stmt = conn.prepare_cached(&sql).map_err(classify)?;
    let rows = stmt
        .query_map(params_from_iter(params.iter()), |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .map_err(classify)?;
    rows.map(|r| r.map_err(classify)).collect()
}

fn execute(conn: &Connection, req: &Write, options: &StoreOptions) -> StoreResult<Done> {
    let s = |m: &Map<String, Value>, k: &str| m.get(k).and_then(Value::as_str).map(str::to_string);
    match req {
        Write::Append(ctx) => {
            let text = serde_json::to_string(&**ctx).map_err(|_| StoreError::Failed)?;
            // The same run appended again is a no-op: a log of records can be replayed.
            conn.prepare_cached(
                "INSERT INTO runs (id, timestamp, owner, operation, status, parent_run, doctype, ctx)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (id) DO NOTHING",
            )
            .and_then(|mut st| {
                st.execute(rusqlite::params![
                    s(ctx, "id").unwrap_or_default(),
                    ctx.get("timestamp").and_then(Value::as_i64).unwrap_or(0),
                    s(ctx, "owner"),
                    s(ctx, "operation"),
                    s(ctx, "status"),
                    s(ctx, "parentRun"),
                    s(ctx, "doctype"),
                    text
                ])
            })
            .map_err(classify)?;
            Ok(Done::Unit)
        }
        Write::Create { space, doctype, doc } => {
            let name = s(doc, "name").ok_or_else(|| StoreError::Conflict("a document needs a name".into()))?;
            let text = serde_json::to_string(doc).map_err(|_| StoreError::Failed)?;
            if text.len() > options.max_document_bytes {
                return Err(StoreError::too_big(&format!("{doctype} {name:?}"), options.max_document_bytes));
            }
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO docs (space, doctype, name, body) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                )
                .and_then(|mut st| st.execute(rusqlite::params![space, doctype, name, text]))
                .map_err(classify)?;
            if inserted == 0 {
                return Err(StoreError::Conflict(format!("a {doctype} named {name:?} already exists")));
            }
            Ok(Done::Unit)
        }
        Write::Update(t, data) => {
            let mut out = Affected::default();
            let mut bytes = 0;
            for (name, body) in matching(conn, t, options)? {
                let mut doc = parse_body(&body)?;
                for (k, v) in data {
                    doc.insert(k.clone(), v.clone());
                }
                let text = serde_json::to_string(&doc).map_err(|_| StoreError::Failed)?;
                if text.len() > options.max_document_bytes {
                    return Err(StoreError::too_big(&format!("{} {name:?}", t.doctype), options.max_document_bytes));
                }
                conn.prepare_cached("UPDATE docs SET body = ?4 WHERE space = ?1 AND doctype = ?2 AND name = ?3")
                    .and_then(|mut st| st.execute(rusqlite::params![t.space, t.doctype, name, text]))
                    .map_err(classify)?;
                out.add(doc, text.len(), &mut bytes, t.max_bytes);
            }
            Ok(Done::Affected(out))
        }
        Write::Delete(t) => {
            let mut out = Affected::default();
            let mut bytes = 0;
            for (name, body) in matching(conn, t, options)? {
                conn.prepare_cached("DELETE FROM docs WHERE space = ?1 AND doctype = ?2 AND name = ?3")
                    .and_then(|mut st| st.execute(rusqlite::params![t.space, t.doctype, name]))
                    .map_err(classify)?;
                out.add(parse_body(&body)?, body.len(), &mut bytes, t.max_bytes);
            }
            Ok(Done::Affected(out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_contract_holds() {
        let dir = tempfile::tempdir().unwrap();
        let open = || async { SqliteStore::open(Some(dir.path()), StoreOptions::default()).unwrap() };
        super::super::contract::check(open).await;
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

    #[test]
    fn a_database_of_version_0_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(db_path(dir.path())).unwrap();
            conn.execute_batch(
                "CREATE TABLE docs (doctype TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL,
                     PRIMARY KEY (doctype, name)) WITHOUT ROWID;
                 INSERT INTO docs VALUES ('Task', 't1', '{\"name\":\"t1\",\"title\":\"old\"}');",
            )
            .unwrap();
        }
        let store = SqliteStore::open(Some(dir.path()), StoreOptions::default()).unwrap();
        let q = DocQuery {
            space: "default".into(),
            doctype: "Task".into(),
            filter: vec![],
            order: vec![],
            paging: Paging { take: 10, skip: 0, max_bytes: 1 << 20 },
        };
        let page = futures::executor::block_on(store.select(q)).unwrap();
        assert_eq!(page.docs.len(), 1);
        assert_eq!(page.docs[0]["title"], "old");
    }
}
