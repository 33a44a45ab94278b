//! Durable storage behind two typed interfaces: the [`AuditTrail`] of finished runs (an append that is safe to
//! repeat, and a typed query) and the [`Documents`] of the data operations (typed queries that `data` has already
//! validated). Store errors are classified here, at the boundary: a client sees one of our codes and messages,
//! never a driver's text (the details go to the server log). [`sqlite`] is the embedded default, [`postgres`] the
//! shared one; `contract` holds
//! the behaviour every backend must have, as a test suite any backend can run.

pub mod contract;
pub mod postgres;
pub mod sqlite;

use crate::error::{Error, ErrorCode};
use crate::model::context::RunId;
use futures::future::BoxFuture;
use serde_json::{Map, Value};
use std::sync::Arc;

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
}

/// A JSON scalar a filter compares with.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl Scalar {
    /// The scalar of a JSON value; `None` for arrays, objects, and integers past i64.
    pub fn of(v: &Value) -> Option<Scalar> {
        Some(match v {
            Value::Null => Scalar::Null,
            Value::Bool(b) => Scalar::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Scalar::Int(i),
                None if n.is_u64() => return None,
                None => Scalar::Float(n.as_f64()?),
            },
            Value::String(s) => Scalar::Text(s.clone()),
            Value::Array(_) | Value::Object(_) => return None,
        })
    }
}

/// One condition: `field <cmp> value` (`null` only with `Eq`/`Ne`, which mean "is null" and "is not null").
#[derive(Debug, Clone, PartialEq)]
pub struct Cond {
    pub field: String,
    pub cmp: Cmp,
    pub value: Scalar,
}

/// Rows, and how many of them, one query may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paging {
    /// Rows at most (1 to 1,000 from a client; the schema load takes more).
    pub take: u64,
    /// Rows skipped first (at most `i64::MAX`).
    pub skip: u64,
    /// Stop adding rows once their JSON passes this many bytes (the page is then `truncated`).
    pub max_bytes: usize,
}

/// A query on one doctype's documents in one space.
#[derive(Debug, Clone, PartialEq)]
pub struct DocQuery {
    pub space: String,
    pub doctype: String,
    pub filter: Vec<Cond>,
    /// Fields to order by, `true` for descending; after them, by name.
    pub order: Vec<(String, bool)>,
    pub paging: Paging,
}

/// A query on the audit trail: runs, newest first unless `order` says otherwise.
#[derive(Debug, Clone, PartialEq)]
pub struct RunQuery {
    pub filter: Vec<Cond>,
    /// Only this owner's runs (authentication on), or every owner's.
    pub owner: Option<String>,
    pub order: Vec<(String, bool)>,
    pub paging: Paging,
}

/// The documents an update or a delete applies to.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub space: String,
    pub doctype: String,
    pub filter: Vec<Cond>,
    /// The most bytes of affected documents to return (all are affected).
    pub max_bytes: usize,
}

/// A page of documents (or run records, each named by its id).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Page {
    pub docs: Vec<Map<String, Value>>,
    /// Rows matching the filter, whatever the paging.
    pub total: u64,
    /// The page stopped before `take` rows because their bytes reached `max_bytes`.
    pub truncated: bool,
}

/// What an update or a delete did: how many documents, and the first of them (within `max_bytes`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Affected {
    pub docs: Vec<Map<String, Value>>,
    pub count: u64,
    pub truncated: bool,
}

/// Why a store request failed, classified: what a client may be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// A document with this name exists already.
    Conflict(String),
    /// The query ran past the store's time limit and was stopped.
    Timeout,
    /// Too many reads wait already.
    Busy,
    /// The store could not be reached within its wait.
    Unavailable,
    /// The store failed (full disk, read-only file, corruption, ...): nothing of the request is durable.
    Failed,
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        match e {
            StoreError::Conflict(what) => Error::new(ErrorCode::Conflict, what),
            StoreError::Timeout => {
                Error::new(ErrorCode::QueryTimeout, "the query ran past the store's time limit: narrow it")
            }
            StoreError::Busy => Error::new(ErrorCode::StoreBusy, "too many queries are waiting: retry shortly"),
            StoreError::Unavailable => Error::new(ErrorCode::StoreUnavailable, "the store is unavailable"),
            StoreError::Failed => {
                Error::new(ErrorCode::StorageFailed, "the database could not complete the request; nothing was written")
            }
        }
    }
}

impl StoreError {
    /// A document past the size limit.
    pub fn too_big(what: &str, limit: usize) -> StoreError {
        StoreError::Conflict(format!("{what}: a document may be at most {limit} bytes of JSON"))
    }
}

impl Page {
    /// The total when the page itself tells it: it ended before `take` with no row left out for its bytes, and it
    /// holds a row (or starts at the first): then every matching row is before it or in it. Otherwise `None`, and
    /// the backend counts.
    pub fn total_known(&self, paging: Paging) -> Option<u64> {
        let fetched = self.docs.len() as u64;
        let complete = !self.truncated && fetched < paging.take && (fetched > 0 || paging.skip == 0);
        complete.then(|| paging.skip.saturating_add(fetched))
    }
}

impl Affected {
    /// Counts an affected document, and keeps it in the answer while the answer stays within `max_bytes` (the
    /// first always comes).
    pub fn add(&mut self, doc: Map<String, Value>, len: usize, bytes: &mut usize, max_bytes: usize) {
        self.count += 1;
        if self.truncated || (!self.docs.is_empty() && *bytes + len > max_bytes) {
            self.truncated = true;
            return;
        }
        *bytes += len;
        self.docs.push(doc);
    }
}

/// What a query reads: documents of one doctype in one space, or runs (of one owner, or all). For the backends.
enum Scope<'a> {
    Docs { space: &'a str, doctype: &'a str },
    Runs { owner: Option<&'a str> },
}

impl Scope<'_> {
    /// The table and its JSON column.
    fn table(&self) -> (&'static str, &'static str) {
        match self {
            Scope::Docs { .. } => ("docs", "body"),
            Scope::Runs { .. } => ("runs", "ctx"),
        }
    }
}

/// The SQL operator of a comparison.
fn cmp_sql(c: Cmp) -> &'static str {
    match c {
        Cmp::Eq => "=",
        Cmp::Ne => "<>",
        Cmp::Gt => ">",
        Cmp::Gte => ">=",
        Cmp::Lt => "<",
        Cmp::Lte => "<=",
    }
}

/// A run record as a document: the final context, named by its id.
fn named_run(mut doc: Map<String, Value>) -> Map<String, Value> {
    if let Some(id) = doc.get("id").cloned() {
        doc.insert("name".into(), id);
    }
    doc
}

pub type StoreResult<T> = std::result::Result<T, StoreError>;

/// Documents with the space each lives in.
pub type SpacedDocs = Vec<(String, Map<String, Value>)>;

/// The audit trail: every finished run's final context.
pub trait AuditTrail: Send + Sync + 'static {
    /// Appends a finished run's record, durably when the future resolves. Appending a run id the trail already
    /// holds is a no-op, so a log of records can be replayed. Appends are durable in the order of the calls.
    fn append(&self, run: Arc<Map<String, Value>>) -> BoxFuture<'static, StoreResult<()>>;
    /// Whether the trail holds a run with this id.
    fn contains(&self, id: RunId) -> BoxFuture<'static, StoreResult<bool>>;
    /// Run records, newest first by default; each is named (`name`) by its id.
    fn runs(&self, query: RunQuery) -> BoxFuture<'static, StoreResult<Page>>;
}

/// Documents per space and doctype, each with a unique `name`.
pub trait Documents: Send + Sync + 'static {
    fn select(&self, query: DocQuery) -> BoxFuture<'static, StoreResult<Page>>;
    /// Inserts a document (its `name` set), or `Conflict` if the name exists in that space and doctype.
    fn create(&self, space: String, doctype: String, doc: Map<String, Value>) -> BoxFuture<'static, StoreResult<()>>;
    /// Shallow-merges `data` into every document the target matches.
    fn update(&self, target: Target, data: Map<String, Value>) -> BoxFuture<'static, StoreResult<Affected>>;
    fn delete(&self, target: Target) -> BoxFuture<'static, StoreResult<Affected>>;
    /// Every document of a doctype in every space, as `(space, document)` (the schema cache, at start).
    fn all(&self, doctype: String) -> BoxFuture<'static, StoreResult<SpacedDocs>>;
}

/// A backend: both interfaces.
pub trait Store: AuditTrail + Documents {}

impl<T: AuditTrail + Documents> Store for T {}

impl std::fmt::Debug for dyn Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}
