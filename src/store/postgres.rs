//! The PostgreSQL store: documents and run contexts as JSONB, behind a connection pool (deadpool-postgres over
//! tokio-postgres, an async driver: nothing here blocks a worker). Run records go to one writer task that commits
//! every record waiting in its queue with one multi-row `INSERT … ON CONFLICT DO NOTHING` in one transaction (group
//! commit); document writes run one at a time, each in its own transaction. Reads take a pooled connection, wait in
//! a bounded queue (past it: `Busy`) and run under `statement_timeout` (past it: `Timeout`). A database that cannot
//! be reached within the pool's wait is `Unavailable`; the pool reconnects by itself when it comes back. Schema
//! migrations are versioned, embedded, and run at open inside one transaction under an advisory lock, so servers
//! starting together do not race.

use super::{
    Affected, AuditTrail, Cmp, Cond, DocQuery, Documents, Page, Paging, RunQuery, Scalar, Scope, SpacedDocs,
    StoreError, StoreResult, Target, cmp_sql, named_run,
};
use crate::error::{Error, ErrorCode};
use crate::model::context::RunId;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_postgres::types::{Json, ToSql};

/// How the PostgreSQL store works.
#[derive(Debug, Clone, Copy)]
pub struct PgOptions {
    /// Pooled connections at most (one of them is the writer's while it commits).
    pub pool_size: usize,
    /// Run records committed together at most. 1 gives one transaction per record (the benchmark's baseline).
    pub max_batch: usize,
    /// Reads that may wait for a connection; past it a read fails at once with `store_busy`.
    pub read_queue: usize,
    /// The longest one statement may run (`statement_timeout`; `query_timeout`).
    pub query_timeout: Duration,
    /// How long a request waits for a connection before it is `store_unavailable`.
    pub connect_wait: Duration,
    /// Documents one update or delete may change; past it the request is refused.
    pub max_affected: u64,
    /// The largest document (its JSON) a create or update may leave.
    pub max_document_bytes: usize,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            pool_size: 8,
            max_batch: 1024,
            read_queue: 256,
            query_timeout: Duration::from_secs(2),
            connect_wait: Duration::from_secs(5),
            max_affected: 10_000,
            max_document_bytes: 1 << 20,
        }
    }
}

/// The schema, one step per version; a database at version N gets the steps after N, in one transaction.
const MIGRATIONS: &[&str] = &[
    // 1: documents and runs, with the indexes of the `Run` queries the protocol offers.
    "CREATE TABLE docs (
        space TEXT NOT NULL,
        doctype TEXT NOT NULL,
        name TEXT NOT NULL,
        body JSONB NOT NULL,
        PRIMARY KEY (space, doctype, name)
    );
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        timestamp BIGINT NOT NULL,
        owner TEXT,
        operation TEXT,
        status TEXT,
        parent_run TEXT,
        doctype TEXT,
        ctx JSONB NOT NULL
    );
    CREATE INDEX runs_by_time ON runs (timestamp DESC, id DESC);
    CREATE INDEX runs_by_owner ON runs (owner, timestamp DESC, id DESC);
    CREATE INDEX runs_by_operation ON runs (operation, timestamp DESC, id DESC);
    CREATE INDEX runs_by_status ON runs (status, timestamp DESC, id DESC);
    CREATE INDEX runs_by_parent ON runs (parent_run, timestamp DESC, id DESC);",
];

/// The advisory lock migrations run under (any constant of ours: "coworker" in ASCII).
const MIGRATION_LOCK: i64 = 0x636f_776f_726b_6572;

/// A record waiting for the writer.
struct Append {
    run: Arc<Map<String, Value>>,
    reply: oneshot::Sender<StoreResult<()>>,
}

/// The PostgreSQL store.
pub struct PgStore {
    pool: Pool,
    appends: mpsc::UnboundedSender<Append>,
    reads: Arc<Semaphore>,
    options: PgOptions,
}

/// The URL as it may be shown: a password in it replaced by `***` (`postgres://user:secret@host/db` →
/// `postgres://user:***@host/db`), and the query string (which may carry one too) dropped.
pub fn redacted(url: &str) -> String {
    let url = url.split('?').next().unwrap_or_default();
    let Some((scheme, rest)) = url.split_once("://") else { return "(not a URL)".into() };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// An error at open, for the operator (never sent to a client): what failed, with the URL's password hidden.
fn open_error(url: &str, what: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::StorageFailed, format!("storage: PostgreSQL at {}: {what}", redacted(url)))
}

/// Classifies a driver error for the client, and logs what the client is not told.
fn classify(e: tokio_postgres::Error) -> StoreError {
    use tokio_postgres::error::SqlState;
    match e.code() {
        Some(c) if *c == SqlState::QUERY_CANCELED => StoreError::Timeout,
        Some(c) if *c == SqlState::UNIQUE_VIOLATION => StoreError::Conflict("a document with this name exists".into()),
        // The connection was cut (an administrator, a restart, a failover): the database is unavailable, not
        // failing; the pool replaces the connection.
        Some(c)
            if c.code().starts_with("08")
                || *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW =>
        {
            tracing::warn!(error = %e, "the database connection was cut");
            StoreError::Unavailable
        }
        Some(c) if *c == SqlState::DISK_FULL || *c == SqlState::OUT_OF_MEMORY => {
            tracing::error!(error = %e, "the database could not store a request");
            StoreError::Failed
        }
        Some(_) => {
            tracing::error!(error = %e, "a store request failed");
            StoreError::Failed
        }
        // No SQL state: the connection itself failed.
        None => {
            tracing::warn!(error = %e, "the database connection failed");
            StoreError::Unavailable
        }
    }
}

/// No connection could be had: none was free within the wait, or a new one could not be made (the server is
/// down, refuses connections, or is restarting). Either way the database is unavailable for now.
fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    tracing::warn!(error = %e, "no database connection");
    StoreError::Unavailable
}

impl PgStore {
    /// Connects to `url` (a `postgres://` URL), upgrades the schema, and starts the writer. Fails at once, with a
    /// message that names the server but not the password, when the database cannot be reached or set up.
    pub async fn open(url: &str, options: PgOptions) -> crate::error::Result<PgStore> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| open_error(url, e))?;
        config.connect_timeout(options.connect_wait);
        config.options(format!("-c statement_timeout={}", options.query_timeout.as_millis()));
        config.application_name("coworker");
        let manager = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let timeouts = deadpool_postgres::Timeouts {
            wait: Some(options.connect_wait),
            create: Some(options.connect_wait),
            recycle: Some(options.connect_wait),
        };
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(2))
            .runtime(Runtime::Tokio1)
            .timeouts(timeouts)
            .build()
            .map_err(|e| open_error(url, e))?;
        let mut client = pool.get().await.map_err(|e| open_error(url, e))?;
        migrate(&mut client).await.map_err(|e| open_error(url, format!("cannot upgrade the schema: {e}")))?;
        drop(client);
        let (appends, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer(pool.clone(), rx, options));
        Ok(PgStore { pool, appends, reads: Arc::new(Semaphore::new(options.read_queue.max(1))), options })
    }

    /// Runs a read on a pooled connection, within the bounded read queue.
    fn read<T, F>(&self, read: F) -> BoxFuture<'static, StoreResult<T>>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c deadpool_postgres::Object) -> BoxFuture<'c, StoreResult<T>> + Send + 'static,
    {
        let permit = self.reads.clone().try_acquire_owned().map_err(|_| StoreError::Busy);
        let pool = self.pool.clone();
        async move {
            let _permit = permit?;
            let client = pool.get().await.map_err(pool_error)?;
            read(&client).await
        }
        .boxed()
    }
}

/// Brings the schema to the last version, in one transaction under the advisory lock.
async fn migrate(client: &mut deadpool_postgres::Object) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS coworker_meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL)").await?;
    let row = tx.query_opt("SELECT value FROM coworker_meta WHERE key = 'schema_version'", &[]).await?;
    let version = row.map_or(0, |r| r.get::<_, i64>(0)) as usize;
    for step in MIGRATIONS.iter().skip(version) {
        tx.batch_execute(step).await?;
    }
    tx.execute(
        "INSERT INTO coworker_meta (key, value) VALUES ('schema_version', $1)
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        &[&(MIGRATIONS.len() as i64)],
    )
    .await?;
    tx.commit().await
}

/// Records kept for a later try after the database stayed unreachable past `connect_wait`, at most.
const MAX_BACKLOG: usize = 100_000;

/// The writer task: takes every record waiting, inserts them with one statement in one transaction, and answers
/// them all once it committed. A cut connection is retried until `connect_wait` has passed (appending a record
/// twice is a no-op, so a batch whose commit may or may not have happened is simply sent again); past it the
/// callers are told `Unavailable`, and the records are kept and tried again every second until the database is
/// back, so that a run whose completion was refused is still recorded once.
async fn writer(pool: Pool, mut rx: mpsc::UnboundedReceiver<Append>, options: PgOptions) {
    let mut batch = Vec::new();
    let mut backlog: Vec<Arc<Map<String, Value>>> = Vec::new();
    loop {
        let received = if backlog.is_empty() {
            rx.recv_many(&mut batch, options.max_batch.max(1)).await
        } else {
            tokio::select! {
                n = rx.recv_many(&mut batch, options.max_batch.max(1)) => n,
                _ = tokio::time::sleep(Duration::from_secs(1)) => usize::MAX,
            }
        };
        if received == 0 {
            return;
        }
        if !backlog.is_empty() && insert_runs(&pool, backlog.iter().map(|r| &**r)).await.is_ok() {
            tracing::info!(records = backlog.len(), "the database is back: recorded the runs kept meanwhile");
            backlog.clear();
        }
        if batch.is_empty() {
            continue;
        }
        let deadline = tokio::time::Instant::now() + options.connect_wait;
        let mut result = insert_runs(&pool, batch.iter().map(|a| &*a.run)).await;
        while result == Err(StoreError::Unavailable) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            result = insert_runs(&pool, batch.iter().map(|a| &*a.run)).await;
        }
        if let Err(e) = &result {
            tracing::error!(error = ?e, records = batch.len(), "run records were not committed");
            if *e == StoreError::Unavailable {
                let room = MAX_BACKLOG.saturating_sub(backlog.len());
                if room < batch.len() {
                    tracing::error!(dropped = batch.len() - room, "the backlog of unrecorded runs is full");
                }
                backlog.extend(batch.iter().take(room).map(|a| a.run.clone()));
            }
        }
        for a in batch.drain(..) {
            let _ = a.reply.send(result.clone());
        }
    }
}

fn text(m: &Map<String, Value>, k: &str) -> Option<String> {
    m.get(k).and_then(Value::as_str).map(str::to_string)
}

async fn insert_runs<'a>(pool: &Pool, runs: impl Iterator<Item = &'a Map<String, Value>>) -> StoreResult<()> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(classify)?;
    // One statement for the whole batch: the columns as arrays, unnested into rows.
    let (mut ids, mut times, mut owners, mut ops, mut statuses, mut parents, mut doctypes, mut ctxs) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for c in runs {
        ids.push(text(c, "id").unwrap_or_default());
        times.push(c.get("timestamp").and_then(Value::as_i64).unwrap_or(0));
        owners.push(text(c, "owner"));
        ops.push(text(c, "operation"));
        statuses.push(text(c, "status"));
        parents.push(text(c, "parentRun"));
        doctypes.push(text(c, "doctype"));
        ctxs.push(Json(c));
    }
    tx.execute(
        "INSERT INTO runs (id, timestamp, owner, operation, status, parent_run, doctype, ctx)
         SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                              $8::jsonb[])
         ON CONFLICT (id) DO NOTHING",
        &[&ids, &times, &owners, &ops, &statuses, &parents, &doctypes, &ctxs],
    )
    .await
    .map_err(classify)?;
    tx.commit().await.map_err(classify)
}

impl AuditTrail for PgStore {
    fn append(&self, run: Arc<Map<String, Value>>) -> BoxFuture<'static, StoreResult<()>> {
        let (reply, rx) = oneshot::channel();
        // Queued now, not when the future is polled: durability follows the order of the calls.
        let sent = self.appends.send(Append { run, reply }).map_err(|_| StoreError::Unavailable);
        async move {
            sent?;
            rx.await.map_err(|_| StoreError::Unavailable)?
        }
        .boxed()
    }

    fn contains(&self, id: RunId) -> BoxFuture<'static, StoreResult<bool>> {
        self.read(move |client| {
            async move {
                let sql = "SELECT EXISTS (SELECT 1 FROM runs WHERE id = $1)";
                let row = client.query_one(sql, &[&id.to_string()]).await.map_err(classify)?;
                Ok(row.get::<_, bool>(0))
            }
            .boxed()
        })
    }

    fn runs(&self, query: RunQuery) -> BoxFuture<'static, StoreResult<Page>> {
        self.read(move |client| {
            async move {
                let scope = Scope::Runs { owner: query.owner.as_deref() };
                select_page(client, &scope, &query.filter, &query.order, query.paging).await
            }
            .boxed()
        })
    }
}

impl Documents for PgStore {
    fn select(&self, query: DocQuery) -> BoxFuture<'static, StoreResult<Page>> {
        self.read(move |client| {
            async move {
                let scope = Scope::Docs { space: &query.space, doctype: &query.doctype };
                select_page(client, &scope, &query.filter, &query.order, query.paging).await
            }
            .boxed()
        })
    }

    fn create(&self, space: String, doctype: String, doc: Map<String, Value>) -> BoxFuture<'static, StoreResult<()>> {
        let (pool, options) = (self.pool.clone(), self.options);
        async move {
            let name = text(&doc, "name").ok_or_else(|| StoreError::Conflict("a document needs a name".into()))?;
            let body = serde_json::to_string(&doc).map_err(|_| StoreError::Failed)?;
            if body.len() > options.max_document_bytes {
                return Err(StoreError::too_big(&format!("{doctype} {name:?}"), options.max_document_bytes));
            }
            let client = pool.get().await.map_err(pool_error)?;
            // The text measured above is the text stored: serialized once.
            let inserted = client
                .execute(
                    "INSERT INTO docs (space, doctype, name, body) VALUES ($1, $2, $3, $4::text::jsonb)
                     ON CONFLICT DO NOTHING",
                    &[&space, &doctype, &name, &body],
                )
                .await
                .map_err(classify)?;
            if inserted == 0 {
                return Err(StoreError::Conflict(format!("a {doctype} named {name:?} already exists")));
            }
            Ok(())
        }
        .boxed()
    }

    fn update(&self, target: Target, data: Map<String, Value>) -> BoxFuture<'static, StoreResult<Affected>> {
        change_matching(self.pool.clone(), self.options, target, Change::Merge(data)).boxed()
    }

    fn delete(&self, target: Target) -> BoxFuture<'static, StoreResult<Affected>> {
        change_matching(self.pool.clone(), self.options, target, Change::Delete).boxed()
    }

    fn all(&self, doctype: String) -> BoxFuture<'static, StoreResult<SpacedDocs>> {
        self.read(move |client| {
            async move {
                let sql = "SELECT space, body FROM docs WHERE doctype = $1 ORDER BY space, name";
                let rows = client.query(sql, &[&doctype]).await.map_err(classify)?;
                rows.iter().map(|r| Ok((r.get::<_, String>(0), object(r.get::<_, Value>(1))?))).collect()
            }
            .boxed()
        })
    }
}

fn object(v: Value) -> StoreResult<Map<String, Value>> {
    match v {
        Value::Object(m) => Ok(m),
        _ => {
            tracing::error!("a stored document is not a JSON object");
            Err(StoreError::Failed)
        }
    }
}

/// Query parameters, numbered as they are pushed.
#[derive(Default)]
struct Params(Vec<Box<dyn ToSql + Sync + Send>>);

impl Params {
    fn push(&mut self, v: impl ToSql + Sync + Send + 'static) -> String {
        self.0.push(Box::new(v));
        format!("${}", self.0.len())
    }

    fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.0.iter().map(|b| &**b as &(dyn ToSql + Sync)).collect()
    }
}

/// A run field kept in a column of its own (indexed), and the column's kind.
fn run_column(field: &str) -> Option<(&'static str, bool)> {
    Some(match field {
        "id" | "name" => ("id", false),
        "timestamp" => ("timestamp", true),
        "owner" => ("owner", false),
        "operation" => ("operation", false),
        "status" => ("status", false),
        "parentRun" => ("parent_run", false),
        "doctype" => ("doctype", false),
        _ => return None,
    })
}

/// One condition as SQL. A field of a run that has a column is compared on the column (its index), as SQLite
/// compares: a number with a text column, or a text with the numeric `timestamp`, is never equal, and numbers sort
/// before texts. Any other field is the JSON member, compared as JSONB with the value as JSONB.
fn condition(scope: &Scope<'_>, c: &Cond, params: &mut Params) -> String {
    let body = scope.table().1;
    let column = match scope {
        Scope::Runs { .. } => run_column(&c.field),
        Scope::Docs { .. } => (c.field == "name").then_some(("name", false)),
    };
    if let Some((col, numeric)) = column {
        return match (&c.value, c.cmp, numeric) {
            (Scalar::Null, Cmp::Ne, _) => format!("{col} IS NOT NULL"),
            (Scalar::Null, _, _) => format!("{col} IS NULL"),
            (Scalar::Int(i), cmp, true) => format!("{col} {} {}", cmp_sql(cmp), params.push(*i)),
            (Scalar::Float(f), cmp, true) => format!("{col}::float8 {} {}", cmp_sql(cmp), params.push(*f)),
            (Scalar::Text(t), cmp, false) => format!("{col} {} {}", cmp_sql(cmp), params.push(t.clone())),
            // A number against a text column is less than every text; a text against a number column is greater
            // than every number; a boolean is a number (0 or 1) in SQLite.
            (v, cmp, numeric) => {
                let value_is_number = !matches!(v, Scalar::Text(_));
                // Whether `column <cmp> value` holds for every non-null row, given only the kinds.
                let column_below = numeric && !value_is_number;
                let holds = match cmp {
                    Cmp::Eq => false,
                    Cmp::Ne => true,
                    Cmp::Lt | Cmp::Lte => column_below,
                    Cmp::Gt | Cmp::Gte => !column_below,
                };
                if numeric && value_is_number {
                    // A boolean against `timestamp`: compare with 0 or 1.
                    let n = matches!(v, Scalar::Bool(true)) as i64;
                    format!("{col} {} {}", cmp_sql(cmp), params.push(n))
                } else {
                    format!("({col} IS NOT NULL AND {holds})")
                }
            }
        };
    }
    let member = format!("({body} -> {})", params.push(c.field.clone()));
    match (&c.value, c.cmp) {
        (Scalar::Null, Cmp::Ne) => format!("coalesce({member}, 'null'::jsonb) <> 'null'::jsonb"),
        (Scalar::Null, _) => format!("coalesce({member}, 'null'::jsonb) = 'null'::jsonb"),
        (v, cmp) => {
            let value = match v {
                Scalar::Null => Value::Null,
                Scalar::Bool(b) => Value::Bool(*b),
                Scalar::Int(i) => Value::from(*i),
                Scalar::Float(f) => Value::from(*f),
                Scalar::Text(t) => Value::String(t.clone()),
            };
            // Only members of the same JSON kind compare (as SQLite's json_extract values of one kind do).
            let p = params.push(Json(value));
            format!("(jsonb_typeof({member}) = jsonb_typeof({p}::jsonb) AND {member} {} {p}::jsonb)", cmp_sql(cmp))
        }
    }
}

fn where_clause(scope: &Scope<'_>, filter: &[Cond], params: &mut Params) -> String {
    let mut parts = Vec::new();
    match scope {
        Scope::Docs { space, doctype } => {
            parts.push(format!("space = {}", params.push(space.to_string())));
            parts.push(format!("doctype = {}", params.push(doctype.to_string())));
        }
        Scope::Runs { owner: Some(owner) } => parts.push(format!("owner = {}", params.push(owner.to_string()))),
        Scope::Runs { owner: None } => {}
    }
    parts.extend(filter.iter().map(|c| condition(scope, c, params)));
    if parts.is_empty() { String::new() } else { format!(" WHERE {}", parts.join(" AND ")) }
}

/// The rows of a query, in order, within `paging`: at most `take`, and no more once their JSON passes `max_bytes`
/// (the first row always comes).
async fn select_page(
    client: &deadpool_postgres::Object,
    scope: &Scope<'_>,
    filter: &[Cond],
    order: &[(String, bool)],
    paging: Paging,
) -> StoreResult<Page> {
    let mut params = Params::default();
    let sql = page_sql(scope, filter, order, paging, &mut params);
    // Prepared once per connection and statement text (the text holds no value, only placeholders).
    let statement = client.prepare_cached(&sql).await.map_err(classify)?;
    let rows = client.query(&statement, &params.refs()).await.map_err(classify)?;
    let mut page = Page::default();
    let mut bytes = 0usize;
    for row in rows {
        let text: String = row.get(0);
        if !page.docs.is_empty() && bytes + text.len() > paging.max_bytes {
            page.truncated = true;
            break;
        }
        bytes += text.len();
        let doc = match serde_json::from_str(&text) {
            Ok(v) => object(v)?,
            Err(_) => return Err(StoreError::Failed),
        };
        page.docs.push(if matches!(scope, Scope::Runs { .. }) { named_run(doc) } else { doc });
    }
    page.total = match page.total_known(paging) {
        Some(total) => total,
        None => count(client, scope, filter).await?,
    };
    Ok(page)
}

/// The statement of a page: the rows' JSON as text, filtered, ordered (by the given fields, then newest first or
/// by name), limited.
fn page_sql(
    scope: &Scope<'_>,
    filter: &[Cond],
    order: &[(String, bool)],
    paging: Paging,
    params: &mut Params,
) -> String {
    let (table, body) = scope.table();
    let mut sql = format!("SELECT {body}::text FROM {table}");
    sql.push_str(&where_clause(scope, filter, params));
    let mut keys: Vec<String> = Vec::new();
    for (field, desc) in order {
        let col = match scope {
            Scope::Runs { .. } => run_column(field).map(|(c, _)| c.to_string()),
            Scope::Docs { .. } => (field == "name").then(|| "name".to_string()),
        };
        let col = col.unwrap_or_else(|| format!("({body} -> {})", params.push(field.clone())));
        // SQLite puts nulls first when ascending; so does this.
        keys.push(format!("{col} {}", if *desc { "DESC NULLS LAST" } else { "ASC NULLS FIRST" }));
    }
    keys.push(match scope {
        Scope::Runs { .. } => "timestamp DESC, id DESC".into(),
        Scope::Docs { .. } => "name ASC".into(),
    });
    sql.push_str(" ORDER BY ");
    sql.push_str(&keys.join(", "));
    let take = params.push(paging.take.min(i64::MAX as u64) as i64);
    let skip = params.push(paging.skip.min(i64::MAX as u64) as i64);
    sql.push_str(&format!(" LIMIT {take} OFFSET {skip}"));
    sql
}

async fn count(client: &impl deadpool_postgres::GenericClient, scope: &Scope<'_>, filter: &[Cond]) -> StoreResult<u64> {
    let mut params = Params::default();
    let sql = format!("SELECT COUNT(*) FROM {}{}", scope.table().0, where_clause(scope, filter, &mut params));
    let statement = client.prepare_cached(&sql).await.map_err(classify)?;
    let row = client.query_one(&statement, &params.refs()).await.map_err(classify)?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// What an update or a delete does to each document its target matches.
enum Change {
    /// Shallow-merge these members in.
    Merge(Map<String, Value>),
    Delete,
}

/// Changes every document `target` matches, in one transaction, and answers them within `target.max_bytes`.
async fn change_matching(pool: Pool, options: PgOptions, target: Target, change: Change) -> StoreResult<Affected> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(classify)?;
    let mut out = Affected::default();
    let mut bytes = 0;
    let key = [&target.space as &(dyn ToSql + Sync), &target.doctype];
    for (name, mut doc) in matching(&tx, &target, &options).await? {
        let len = match &change {
            Change::Merge(data) => {
                for (k, v) in data {
                    doc.insert(k.clone(), v.clone());
                }
                let body = serde_json::to_string(&doc).map_err(|_| StoreError::Failed)?;
                if body.len() > options.max_document_bytes {
                    let what = format!("{} {name:?}", target.doctype);
                    return Err(StoreError::too_big(&what, options.max_document_bytes));
                }
                let sql = "UPDATE docs SET body = $4::text::jsonb WHERE space = $1 AND doctype = $2 AND name = $3";
                tx.execute(sql, &[key[0], key[1], &name, &body]).await.map_err(classify)?;
                body.len()
            }
            Change::Delete => {
                let sql = "DELETE FROM docs WHERE space = $1 AND doctype = $2 AND name = $3";
                tx.execute(sql, &[key[0], key[1], &name]).await.map_err(classify)?;
                serde_json::to_string(&doc).map_err(|_| StoreError::Failed)?.len()
            }
        };
        out.add(doc, len, &mut bytes, target.max_bytes);
    }
    tx.commit().await.map_err(classify)?;
    Ok(out)
}

/// The documents a target matches (locked for the transaction), refused past `max_affected`.
async fn matching(
    tx: &deadpool_postgres::Transaction<'_>,
    t: &Target,
    options: &PgOptions,
) -> StoreResult<Vec<(String, Map<String, Value>)>> {
    let scope = Scope::Docs { space: &t.space, doctype: &t.doctype };
    if count(tx, &scope, &t.filter).await? > options.max_affected {
        return Err(StoreError::Conflict(format!(
            "the filter matches more than {} documents: narrow it",
            options.max_affected
        )));
    }
    let mut params = Params::default();
    let sql =
        format!("SELECT name, body FROM docs{} ORDER BY name FOR UPDATE", where_clause(&scope, &t.filter, &mut params));
    let rows = tx.query(&sql, &params.refs()).await.map_err(classify)?;
    rows.into_iter().map(|r| Ok((r.get::<_, String>(0), object(r.get::<_, Value>(1))?))).collect()
}

/// A database of its own for one test: created with a random name on the server that `COWORKER_TEST_DATABASE_URL`
/// names (default `postgres://postgres@127.0.0.1:5432/postgres`), dropped by [`TestDatabase::drop_now`], or when it
/// is dropped (a failing test included). For the tests and benches of this crate, which cannot see `cfg(test)` items.
#[doc(hidden)]
pub struct TestDatabase {
    admin: String,
    name: String,
    dropped: bool,
    /// The URL of the test's database.
    pub url: String,
}

impl TestDatabase {
    pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

    pub async fn create() -> TestDatabase {
        let admin = std::env::var("COWORKER_TEST_DATABASE_URL").unwrap_or_else(|_| Self::DEFAULT_URL.into());
        let name = format!("coworker_test_{}", uuid::Uuid::now_v7().simple());
        let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("no PostgreSQL at {} for the tests: {e}", redacted(&admin)));
        tokio::spawn(conn);
        client.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create the test database");
        let base = admin.split('?').next().unwrap_or_default();
        let url = match base.rfind('/') {
            Some(i) if base[..i].ends_with(|c: char| c != '/') => format!("{}/{name}", &base[..i]),
            _ => format!("{base}/{name}"),
        };
        TestDatabase { admin, name, url, dropped: false }
    }

    /// Drops the database, closing whatever is still connected to it.
    pub async fn drop_now(mut self) {
        Self::remove(&self.admin, &self.name).await;
        self.dropped = true;
    }

    async fn remove(admin: &str, name: &str) {
        let (client, conn) = tokio_postgres::connect(admin, tokio_postgres::NoTls).await.expect("connect");
        tokio::spawn(conn);
        let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        client.batch_execute(&drop).await.expect("drop the test database");
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        // Dropped without `drop_now` (a test that panicked): drop it from a thread with a runtime of its own.
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            rt.block_on(Self::remove(&admin, &name));
        })
        .join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_contract_holds() {
        let db = TestDatabase::create().await;
        let url = db.url.clone();
        super::super::contract::check(|| async { PgStore::open(&url, PgOptions::default()).await.unwrap() }).await;
        db.drop_now().await;
    }

    #[test]
    fn a_password_is_never_shown() {
        assert_eq!(redacted("postgres://ann:s3cret@db:5432/x?password=p"), "postgres://ann:***@db:5432/x");
        assert_eq!(redacted("postgres://ann@db/x"), "postgres://ann@db/x");
        assert_eq!(redacted("postgres://ann:p@ss@db/x"), "postgres://ann:***@db/x");
        assert_eq!(redacted("nonsense"), "(not a URL)");
    }

    #[tokio::test]
    async fn an_unreachable_server_is_a_clear_error_at_open() {
        // A port nothing listens on (bound, then released).
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("postgres://postgres:hunter2@127.0.0.1:{port}/x");
        let options = PgOptions { connect_wait: Duration::from_secs(2), ..PgOptions::default() };
        let e = PgStore::open(&url, options).await.err().expect("open fails");
        assert_eq!(e.code, ErrorCode::StorageFailed);
        assert!(e.message.contains(&format!("127.0.0.1:{port}")) && !e.message.contains("hunter2"), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_run_queries_use_their_indexes() {
        let db = TestDatabase::create().await;
        let store = PgStore::open(&db.url, PgOptions::default()).await.unwrap();
        let client = store.pool.get().await.unwrap();
        client
            .batch_execute(
                "INSERT INTO runs (id, timestamp, owner, operation, status, parent_run, doctype, ctx)
                 SELECT 'r' || i, i, 'o' || (i % 100), 'op' || (i % 20),
                        CASE WHEN i % 10 = 0 THEN 'failed' ELSE 'completed' END, 'p' || (i % 1000), NULL,
                        jsonb_build_object('id', 'r' || i)
                 FROM generate_series(1, 20000) i;
                 ANALYZE runs;",
            )
            .await
            .unwrap();
        let text = |v: &str| Scalar::Text(v.into());
        let cond = |field: &str, cmp, value| Cond { field: field.into(), cmp, value };
        let cases: Vec<(Option<&str>, Vec<Cond>, &str)> = vec![
            (None, vec![], "runs_by_time"),
            (Some("o7"), vec![], "runs_by_owner"),
            (None, vec![cond("operation", Cmp::Eq, text("op3"))], "runs_by_operation"),
            (None, vec![cond("status", Cmp::Eq, text("failed"))], "runs_by_status"),
            (None, vec![cond("parentRun", Cmp::Eq, text("p5"))], "runs_by_parent"),
            (
                None,
                vec![cond("timestamp", Cmp::Gte, Scalar::Int(100)), cond("timestamp", Cmp::Lt, Scalar::Int(200))],
                "runs_by_time",
            ),
        ];
        let paging = Paging { take: 50, skip: 0, max_bytes: 1 << 20 };
        for (owner, filter, index) in cases {
            let mut params = Params::default();
            let sql = page_sql(&Scope::Runs { owner }, &filter, &[], paging, &mut params);
            let rows = client.query(&format!("EXPLAIN {sql}"), &params.refs()).await.unwrap();
            let plan: Vec<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
            let plan = plan.join("\n");
            // An index scan, or a bitmap scan of the index when few rows match.
            let used =
                plan.contains(&format!("Index Scan using {index}")) || plan.contains(&format!("Index Scan on {index}"));
            assert!(used, "{owner:?} {filter:?}:\n{plan}");
        }
        // The database goes with `db`, after the store.
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_statement_past_the_time_limit_is_a_timeout() {
        let db = TestDatabase::create().await;
        let options = PgOptions { query_timeout: Duration::from_millis(100), ..PgOptions::default() };
        let store = PgStore::open(&db.url, options).await.unwrap();
        let client = store.pool.get().await.unwrap();
        let e = client.query("SELECT pg_sleep(2)", &[]).await.unwrap_err();
        assert_eq!(classify(e), StoreError::Timeout);
        // The database goes with `db`, after the store.
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_test_database_is_dropped_even_without_drop_now() {
        let db = TestDatabase::create().await;
        let (admin, name) = (db.admin.clone(), db.name.clone());
        drop(db);
        let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        let left = client.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name]).await.unwrap();
        assert!(left.is_none(), "{name} is still there");
    }
}
