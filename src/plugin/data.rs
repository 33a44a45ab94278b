//! Data operations: server-side handlers for `select`, `create`, `update` and `delete` on doctypes, the `Schema`
//! doctype (a schema is a document too, fetched by `select` through the engine's own `run` entry point with
//! `includeSchema: false`), the read-only `Run` doctype (the audit trail), and the built-in before-hook that
//! validates `create` and `update` against a doctype's schema.

use crate::error::{Error, ErrorCode, Result};
use crate::model::patch::type_name;
use crate::plugin::hooks::{Hooks, Operation, Plugin, RunContext, RunStarter};
use crate::protocol::RunSpec;
use crate::store::{Cmp, Cond, DocQuery, Paging, RunQuery, Scalar, Store, Target};
use dashmap::DashMap;
use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// Rows a `select` returns when `take` is not given, and the most it may ask for.
pub const DEFAULT_TAKE: u64 = 100;
pub const MAX_TAKE: u64 = 1000;
/// The largest `skip` of a `select`: the largest offset SQL takes.
pub const MAX_SKIP: u64 = i64::MAX as u64;
/// Conditions one `where` may hold: each is a term of the query, and a query's cost grows with them.
pub const MAX_CONDITIONS: usize = 16;
/// Fields one `orderBy` may hold.
pub const MAX_ORDER: usize = 4;

/// The doctype whose documents are schemas.
pub const SCHEMA_DOCTYPE: &str = "Schema";
/// The read-only doctype of finished runs.
pub const RUN_DOCTYPE: &str = "Run";

/// One field of a schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub fieldname: String,
    pub fieldtype: String,
    pub reqd: bool,
    pub options: Option<String>,
    pub in_list_view: bool,
}

/// A doctype's schema, parsed from its `Schema` document.
#[derive(Debug, Clone, PartialEq)]
pub struct Schema {
    pub doctype: String,
    pub fields: Vec<Field>,
}

fn bad(msg: impl Into<String>) -> Error {
    Error::new(ErrorCode::BadMessage, msg)
}

impl Schema {
    /// Parses a `Schema` document: `{_schema_doctype, fields: [{fieldname, fieldtype, reqd, options, in_list_view}]}`.
    pub fn parse(doc: &Map<String, Value>) -> Result<Schema> {
        let doctype = doc
            .get("_schema_doctype")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad("a Schema needs a string `_schema_doctype`"))?;
        let fields =
            doc.get("fields").and_then(Value::as_array).ok_or_else(|| bad("a Schema needs a `fields` array"))?;
        let fields = fields
            .iter()
            .map(|f| {
                let name =
                    f.get("fieldname").and_then(Value::as_str).ok_or_else(|| bad("each field needs a `fieldname`"))?;
                let truthy = |k: &str| {
                    matches!(f.get(k), Some(Value::Bool(true))) || f.get(k).and_then(Value::as_i64) == Some(1)
                };
                Ok(Field {
                    fieldname: name.to_string(),
                    fieldtype: f.get("fieldtype").and_then(Value::as_str).unwrap_or("Data").to_string(),
                    reqd: truthy("reqd"),
                    options: f.get("options").and_then(Value::as_str).map(str::to_string),
                    in_list_view: truthy("in_list_view"),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Schema { doctype: doctype.to_string(), fields })
    }

    /// Checks a document's fields. With `full`, required fields must be present (create); without, only the given
    /// fields are checked (update), and a required one may not be cleared.
    pub fn validate(&self, data: &Map<String, Value>, full: bool) -> std::result::Result<(), String> {
        for f in &self.fields {
            let v = data.get(&f.fieldname);
            let empty = matches!(v, None | Some(Value::Null)) || v.and_then(Value::as_str) == Some("");
            if f.reqd && empty && (full || v.is_some()) {
                return Err(format!("{}: field `{}` is required", self.doctype, f.fieldname));
            }
            if let Some(v) = v.filter(|v| !v.is_null()) {
                check_type(f, v).map_err(|why| format!("{}: field `{}` {why}", self.doctype, f.fieldname))?;
            }
        }
        Ok(())
    }

    /// The list columns: `name`, then the fields marked `in_list_view` (all fields when none is).
    pub fn list_columns(&self) -> Vec<String> {
        let marked: Vec<&Field> = self.fields.iter().filter(|f| f.in_list_view).collect();
        let chosen = if marked.is_empty() { self.fields.iter().collect() } else { marked };
        std::iter::once("name".to_string()).chain(chosen.into_iter().map(|f| f.fieldname.clone())).collect()
    }
}

fn check_type(f: &Field, v: &Value) -> std::result::Result<(), String> {
    let ok = match f.fieldtype.as_str() {
        "Data" | "Text" | "Small Text" | "Long Text" | "Link" | "Datetime" | "Time" => v.is_string(),
        "Int" => v.is_i64() || v.is_u64(),
        "Float" | "Currency" | "Percent" => v.is_number(),
        "Check" => v.is_boolean() || matches!(v.as_i64(), Some(0 | 1)),
        "Date" => v.as_str().is_some_and(|s| {
            s.len() == 10
                && s.as_bytes()[4] == b'-'
                && s.as_bytes()[7] == b'-'
                && s.chars().filter(char::is_ascii_digit).count() == 8
        }),
        "Select" => {
            let Some(s) = v.as_str() else { return Err(format!("must be a string, got {}", type_name(v))) };
            if let Some(opts) = &f.options
                && !opts.lines().any(|o| o == s)
            {
                return Err(format!("must be one of {:?}, got {s:?}", opts.lines().collect::<Vec<_>>()));
            }
            true
        }
        _ => true,
    };
    if ok { Ok(()) } else { Err(format!("must be of type {}, got {}", f.fieldtype, type_name(v))) }
}

/// Schemas by space and doctype, kept equal to the stored `Schema` documents.
type SchemaCache = DashMap<(String, String), Arc<Schema>>;

struct Shared {
    store: Arc<dyn Store>,
    schemas: SchemaCache,
    /// With authentication on, `select` on `Run` shows only the caller's own runs.
    own_runs_only: bool,
    /// The most bytes of documents one operation's output carries.
    max_output_bytes: usize,
}

/// Installs the data operations and the validating before-hook, loading the schema cache from the store. With
/// `own_runs_only` (authentication on), the `Run` doctype shows each owner only their own runs. An output carries
/// at most `max_output_bytes` of documents (a longer page is cut, and says so).
pub async fn install(
    hooks: &mut Hooks,
    store: Arc<dyn Store>,
    own_runs_only: bool,
    max_output_bytes: usize,
) -> Result<()> {
    let schemas = SchemaCache::new();
    for (space, doc) in store.all(SCHEMA_DOCTYPE.into()).await? {
        match Schema::parse(&doc) {
            Ok(s) => {
                schemas.insert((space, s.doctype.clone()), Arc::new(s));
            }
            Err(e) => tracing::warn!(error = %e, "a stored Schema document does not parse; ignored"),
        }
    }
    let shared = Arc::new(Shared { store, schemas, own_runs_only, max_output_bytes });
    for (name, kind) in
        [("select", Kind::Select), ("create", Kind::Create), ("update", Kind::Update), ("delete", Kind::Delete)]
    {
        hooks.operation(name, Arc::new(DataOp { kind, shared: shared.clone() }));
    }
    hooks.plugin(Arc::new(Validator { shared }));
    Ok(())
}

/// Validates `create` and `update` of doctypes that have a schema in the run's space, before the run starts.
struct Validator {
    shared: Arc<Shared>,
}

impl Plugin for Validator {
    fn before_run(&self, run: RunContext<'_>) -> std::result::Result<(), String> {
        let full = match run.operation() {
            "create" => true,
            "update" => false,
            _ => return Ok(()),
        };
        let Some(doctype) = run.get("doctype").and_then(Value::as_str) else { return Ok(()) };
        let key = (run.space().to_string(), doctype.to_string());
        let Some(schema) = self.shared.schemas.get(&key).map(|s| s.clone()) else { return Ok(()) };
        match run.get("input").and_then(|i| i.get("data")).and_then(Value::as_object) {
            Some(data) => schema.validate(data, full),
            None => Err(format!("{doctype}: `input.data` must be an object")),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Select,
    Create,
    Update,
    Delete,
}

struct DataOp {
    kind: Kind,
    shared: Arc<Shared>,
}

impl Operation for DataOp {
    fn execute(&self, run: Map<String, Value>, runs: Arc<dyn RunStarter>) -> BoxFuture<'static, Result<Value>> {
        let (kind, shared) = (self.kind, self.shared.clone());
        async move {
            let doctype = run
                .get("doctype")
                .and_then(Value::as_str)
                .filter(|d| !d.is_empty())
                .ok_or_else(|| bad("a data operation needs a `doctype`"))?
                .to_string();
            // Documents live in the space of the run that reads or writes them (whose write permission the run
            // needed to start).
            let space = run.get("space").and_then(Value::as_str).unwrap_or("default").to_string();
            let input = run.get("input").cloned().unwrap_or(Value::Null);
            match kind {
                Kind::Select => select(&shared, &*runs, &run, &space, &doctype, &input).await,
                Kind::Create | Kind::Update | Kind::Delete if doctype == RUN_DOCTYPE => {
                    Err(bad("the Run doctype is the audit trail: it is read-only"))
                }
                Kind::Create => create(&shared, &space, &doctype, &input).await,
                Kind::Update => update(&shared, &space, &doctype, &input).await,
                Kind::Delete => delete(&shared, &space, &doctype, &input).await,
            }
        }
        .boxed()
    }

    /// A read keeps a summary in the audit trail (its `meta`), not what it read: so reading the trail never
    /// records the trail again, and the records stay as small as the request. Writes keep their output.
    fn audit_output(&self, output: &Value) -> Option<Value> {
        match self.kind {
            Kind::Select => Some(json!({"meta": output.get("meta").cloned().unwrap_or(Value::Null)})),
            Kind::Create | Kind::Update | Kind::Delete => None,
        }
    }
}

/// The conditions of a `where`: `{field: scalar}` (equality) or `{field: {cmp: scalar, …}}`, at most
/// [`MAX_CONDITIONS`], with field names of at most 128 bytes.
fn filter_of(where_: Option<&Value>) -> Result<Vec<Cond>> {
    let Some(w) = where_.filter(|w| !w.is_null()) else { return Ok(vec![]) };
    let w = w.as_object().ok_or_else(|| bad("`where` must be an object"))?;
    let mut out = Vec::new();
    let mut push = |field: &str, cmp: Cmp, v: &Value| -> Result<()> {
        if field.is_empty() || field.len() > 128 {
            return Err(bad("a `where` field name must be 1 to 128 bytes"));
        }
        let value = Scalar::of(v)
            .ok_or_else(|| bad(format!("`where.{field}` compares with a string, a number, a boolean or null")))?;
        if value == Scalar::Null && !matches!(cmp, Cmp::Eq | Cmp::Ne) {
            return Err(bad("null compares with eq or ne only"));
        }
        out.push(Cond { field: field.to_string(), cmp, value });
        if out.len() > MAX_CONDITIONS {
            return Err(Error::new(
                ErrorCode::LimitExceeded,
                format!("more than {MAX_CONDITIONS} conditions in `where`"),
            ));
        }
        Ok(())
    };
    for (field, v) in w {
        match v {
            Value::Object(ops) => {
                for (op, v) in ops {
                    let cmp = Cmp::from_key(op)
                        .ok_or_else(|| bad(format!("unknown comparison `{op}` (eq, ne, gt, gte, lt, lte)")))?;
                    push(field, cmp, v)?;
                }
            }
            Value::Array(_) => return Err(bad(format!("`where.{field}` must be a scalar or a comparison object"))),
            v => push(field, Cmp::Eq, v)?,
        }
    }
    Ok(out)
}

fn target_filter(input: &Value) -> Result<Vec<Cond>> {
    match (input.get("name"), input.get("where")) {
        (Some(Value::String(n)), _) => {
            Ok(vec![Cond { field: "name".into(), cmp: Cmp::Eq, value: Scalar::Text(n.clone()) }])
        }
        (Some(_), _) => Err(bad("`name` must be a string")),
        (None, Some(w)) => filter_of(Some(w)),
        (None, None) => Err(bad("give `name` or `where`")),
    }
}

fn data_of(input: &Value) -> Result<Map<String, Value>> {
    input.get("data").and_then(Value::as_object).cloned().ok_or_else(|| bad("`input.data` must be an object"))
}

/// `orderBy`: `{field: "asc"|"desc"}`, at most [`MAX_ORDER`] fields.
fn order_of(o: Option<&Value>) -> Result<Vec<(String, bool)>> {
    let Some(o) = o.filter(|o| !o.is_null()) else { return Ok(vec![]) };
    let o = o.as_object().ok_or_else(|| bad("`orderBy` must be an object"))?;
    if o.len() > MAX_ORDER {
        return Err(Error::new(ErrorCode::LimitExceeded, format!("more than {MAX_ORDER} fields in `orderBy`")));
    }
    o.iter()
        .map(|(field, dir)| match dir.as_str() {
            Some("asc") => Ok((field.clone(), false)),
            Some("desc") => Ok((field.clone(), true)),
            _ => Err(bad(format!("`orderBy.{field}` must be \"asc\" or \"desc\""))),
        })
        .collect()
}

async fn select(
    shared: &Shared,
    runs: &dyn RunStarter,
    run: &Map<String, Value>,
    space: &str,
    doctype: &str,
    input: &Value,
) -> Result<Value> {
    let take = match input.get("take") {
        None | Some(Value::Null) => DEFAULT_TAKE,
        Some(v) => v
            .as_u64()
            .filter(|t| (1..=MAX_TAKE).contains(t))
            .ok_or_else(|| bad(format!("`take` must be 1 to {MAX_TAKE}")))?,
    };
    let skip = match input.get("skip") {
        None | Some(Value::Null) => 0,
        // SQL offsets are signed 64-bit: a larger one would wrap to a negative offset (and read from the start).
        Some(v) => v
            .as_u64()
            .filter(|s| *s <= MAX_SKIP)
            .ok_or_else(|| bad(format!("`skip` must be an integer from 0 to {MAX_SKIP}")))?,
    };
    let order = order_of(input.get("orderBy"))?;
    let filter = filter_of(input.get("where"))?;
    let paging = Paging { take, skip, max_bytes: shared.max_output_bytes };
    let page = if doctype == RUN_DOCTYPE {
        let owner =
            shared.own_runs_only.then(|| run.get("owner").and_then(Value::as_str).unwrap_or_default().to_string());
        shared.store.runs(RunQuery { filter, owner, order, paging }).await?
    } else {
        let q = DocQuery { space: space.to_string(), doctype: doctype.to_string(), filter, order, paging };
        shared.store.select(q).await?
    };
    let include_schema =
        run.get("options").and_then(|o| o.get("includeSchema")).and_then(Value::as_bool).unwrap_or(true);
    let (schema, view_config) = if include_schema && doctype != SCHEMA_DOCTYPE && doctype != RUN_DOCTYPE {
        // The schema is data: fetch it through the engine's own entry point, as a child of this run.
        let spec = RunSpec {
            operation: "select".into(),
            doctype: json!(SCHEMA_DOCTYPE),
            input: json!({"where": {"_schema_doctype": doctype}, "take": 1}),
            options: json!({"includeSchema": false}).as_object().cloned().unwrap_or_default(),
            owner: run.get("owner").and_then(Value::as_str).map(str::to_string),
            parent_run: run.get("id").and_then(Value::as_str).and_then(|s| s.parse().ok()),
            ..RunSpec::default()
        };
        let ctx = runs.start(spec).await?;
        let schema = ctx.get("output").and_then(|o| o["data"].get(0)).cloned().unwrap_or(Value::Null);
        let view = schema
            .as_object()
            .and_then(|s| Schema::parse(s).ok())
            .map(|s| json!({"listColumns": s.list_columns()}))
            .unwrap_or(Value::Null);
        (schema, view)
    } else {
        (Value::Null, Value::Null)
    };
    let returned = page.docs.len();
    Ok(json!({
        "data": page.docs,
        "schema": schema,
        "meta": {"total": page.total, "take": take, "skip": skip, "returned": returned, "truncated": page.truncated},
        "viewConfig": view_config,
    }))
}

async fn create(shared: &Shared, space: &str, doctype: &str, input: &Value) -> Result<Value> {
    let mut doc = data_of(input)?;
    let schema = if doctype == SCHEMA_DOCTYPE {
        let s = Schema::parse(&doc)?;
        doc.entry("name").or_insert_with(|| json!(s.doctype));
        Some(s)
    } else {
        None
    };
    match doc.get("name") {
        Some(Value::String(n)) if !n.is_empty() => {}
        None | Some(Value::Null) => {
            doc.insert("name".into(), json!(uuid::Uuid::now_v7().to_string()));
        }
        Some(_) => return Err(bad("`name` must be a non-empty string")),
    }
    shared.store.create(space.to_string(), doctype.to_string(), doc.clone()).await?;
    if let Some(s) = schema {
        shared.schemas.insert((space.to_string(), s.doctype.clone()), Arc::new(s));
    }
    Ok(json!({"data": [doc], "meta": {"affected": 1, "truncated": false}}))
}

fn affected_output(a: crate::store::Affected) -> Value {
    json!({"data": a.docs, "meta": {"affected": a.count, "truncated": a.truncated}})
}

/// The documents an `update` or `delete` names (by `name` or `where`), answered within the output bound.
fn target(shared: &Shared, space: &str, doctype: &str, input: &Value) -> Result<Target> {
    Ok(Target {
        space: space.to_string(),
        doctype: doctype.to_string(),
        filter: target_filter(input)?,
        max_bytes: shared.max_output_bytes,
    })
}

async fn update(shared: &Shared, space: &str, doctype: &str, input: &Value) -> Result<Value> {
    let data = data_of(input)?;
    if data.contains_key("name") {
        return Err(bad("`name` cannot be changed"));
    }
    let by_name = input.get("name").is_some();
    let target = target(shared, space, doctype, input)?;
    let out = shared.store.update(target, data).await?;
    if by_name && out.count == 0 {
        return Err(Error::new(ErrorCode::NotFound, format!("no {doctype} named {}", input["name"])));
    }
    if doctype == SCHEMA_DOCTYPE {
        for d in &out.docs {
            match Schema::parse(d) {
                Ok(s) => {
                    shared.schemas.insert((space.to_string(), s.doctype.clone()), Arc::new(s));
                }
                Err(e) => tracing::warn!(error = %e, "an updated Schema document does not parse"),
            }
        }
    }
    Ok(affected_output(out))
}

async fn delete(shared: &Shared, space: &str, doctype: &str, input: &Value) -> Result<Value> {
    let by_name = input.get("name").is_some();
    let target = target(shared, space, doctype, input)?;
    let out = shared.store.delete(target).await?;
    if by_name && out.count == 0 {
        return Err(Error::new(ErrorCode::NotFound, format!("no {doctype} named {}", input["name"])));
    }
    if doctype == SCHEMA_DOCTYPE {
        for d in &out.docs {
            if let Some(t) = d.get("_schema_doctype").and_then(Value::as_str) {
                shared.schemas.remove(&(space.to_string(), t.to_string()));
            }
        }
    }
    Ok(affected_output(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Schema {
        let doc = json!({"_schema_doctype": "Task", "fields": [
            {"fieldname": "title", "fieldtype": "Data", "reqd": 1, "in_list_view": 1},
            {"fieldname": "points", "fieldtype": "Int"},
            {"fieldname": "state", "fieldtype": "Select", "options": "open\nclosed", "in_list_view": true},
            {"fieldname": "due", "fieldtype": "Date"},
            {"fieldname": "done", "fieldtype": "Check"}
        ]});
        Schema::parse(doc.as_object().unwrap()).unwrap()
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn validation_checks_required_fields_and_types() {
        let s = schema();
        assert_eq!(
            s.validate(&obj(json!({"title": "a", "points": 3, "state": "open", "due": "2026-11-24", "done": 1})), true),
            Ok(())
        );
        assert_eq!(s.validate(&obj(json!({"points": 3})), true).unwrap_err(), "Task: field `title` is required");
        assert_eq!(s.validate(&obj(json!({"points": 3})), false), Ok(()), "update checks only what it sets");
        assert_eq!(s.validate(&obj(json!({"title": ""})), false).unwrap_err(), "Task: field `title` is required");
        assert_eq!(
            s.validate(&obj(json!({"title": "a", "points": "3"})), true).unwrap_err(),
            "Task: field `points` must be of type Int, got a string"
        );
        assert!(s.validate(&obj(json!({"title": "a", "state": "lost"})), true).unwrap_err().contains("must be one of"));
        assert!(s.validate(&obj(json!({"title": "a", "due": "24/11/2026"})), true).is_err());
        assert!(s.validate(&obj(json!({"title": "a", "done": 2})), true).is_err());
        assert_eq!(s.list_columns(), ["name", "title", "state"]);
    }
}
