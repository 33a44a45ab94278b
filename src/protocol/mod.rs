//! The wire protocol, and the only place that knows it: parses client frames into the closed [`ClientMsg`] enum
//! and renders every server frame (`reply`, `error`, `snapshot`, `diff`, `event`) and the state-document ops.
//! protocol.md documents exactly what this module does; `tests/integration/protocol_doc.rs` keeps the two in step.

use crate::error::{Error, ErrorCode, Result};
use crate::model::change::ChangeKind;
use crate::model::context::RunId;
use crate::model::patch::PatchOp;
use crate::model::path::{Path, PathLimits, Seg, push_escaped, write_pointer};
use crate::space::views::{View, ViewOp, ViewSet};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::fmt::Write;

pub mod close;
mod fast;

/// Protocol version, reported by `/healthz`. Bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// A request id chosen by the client (a number or a string), echoed in the reply.
pub type ReqId = Option<Value>;

/// What a client asks a `run` to be; the engine fills in the rest of the context.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunSpec {
    pub id: Option<RunId>,
    pub operation: String,
    pub doctype: Value,
    pub flow: Value,
    pub input: Value,
    pub options: Map<String, Value>,
    pub owner: Option<String>,
    pub agent: Value,
    pub parent_run: Option<RunId>,
    pub steps: Vec<Value>,
    pub space: Option<String>,
}

/// Every message a client can send. Closed: a new message type is a protocol change.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMsg {
    /// Authenticates the connection (or refreshes an expiring token).
    Hello {
        id: ReqId,
        token: Option<String>,
    },
    Run {
        id: ReqId,
        spec: Box<RunSpec>,
    },
    Patch {
        id: ReqId,
        run: RunId,
        ops: Vec<PatchOp>,
    },
    /// Many runs' patches in one frame: each element applies (or fails) on its own, in order.
    Patches {
        id: ReqId,
        elements: Vec<Element>,
    },
    Complete {
        id: ReqId,
        run: RunId,
        output: Option<Value>,
    },
    Fail {
        id: ReqId,
        run: RunId,
        error: Value,
    },
    /// `since`: resume after `(epoch, seq)` instead of taking a snapshot.
    Subscribe {
        id: ReqId,
        space: String,
        views: ViewSet,
        events: bool,
        since: Option<(u64, u64)>,
    },
    Unsubscribe {
        id: ReqId,
        sub: u64,
    },
}

impl ClientMsg {
    /// The request id.
    pub fn id(&self) -> &ReqId {
        match self {
            ClientMsg::Hello { id, .. }
            | ClientMsg::Run { id, .. }
            | ClientMsg::Patch { id, .. }
            | ClientMsg::Patches { id, .. }
            | ClientMsg::Complete { id, .. }
            | ClientMsg::Fail { id, .. }
            | ClientMsg::Subscribe { id, .. }
            | ClientMsg::Unsubscribe { id, .. } => id,
        }
    }
}

/// One element of a `patches` frame: a run's ops, or why they cannot apply (the element's own parse error).
#[derive(Debug, Clone, PartialEq)]
pub enum Element {
    Valid {
        run: RunId,
        ops: Vec<PatchOp>,
    },
    /// `run` when it could be read.
    Invalid {
        run: Option<RunId>,
        error: Error,
    },
}

/// Limits checked while parsing a client frame.
#[derive(Debug, Clone, Copy)]
pub struct ParseLimits {
    pub path: PathLimits,
    pub max_ops_per_patch: usize,
    /// Elements in one `patches` frame.
    pub max_patches_per_frame: usize,
    /// Ops in all the elements of one `patches` frame.
    pub max_ops_per_frame: usize,
    /// Deepest nesting of arrays and objects in a frame.
    pub max_json_depth: usize,
}

/// The deepest nesting of arrays and objects in `text` (strings skipped), stopping once past `limit`.
fn json_depth_exceeds(text: &str, limit: usize) -> bool {
    // Depth can only exceed the limit if more brackets open than the limit allows: a counting pass (vectorized by
    // the compiler) settles almost every frame without the byte-by-byte state machine below.
    if text.bytes().map(|b| usize::from(b == b'{' || b == b'[')).sum::<usize>() <= limit {
        return false;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// A frame that could not be parsed: the error, and the request id when it could be read.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub id: ReqId,
    pub error: Error,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    ty: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "present")]
    id: Option<Value>,
    #[serde(borrow)]
    run: Option<&'a RawValue>,
    #[serde(borrow)]
    ops: Option<Vec<WireOp<'a>>>,
    #[serde(borrow)]
    patches: Option<Vec<&'a RawValue>>,
    #[serde(default, deserialize_with = "present")]
    output: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    error: Option<Value>,
    #[serde(borrow)]
    space: Option<Cow<'a, str>>,
    #[serde(borrow)]
    views: Option<Vec<Cow<'a, str>>>,
    events: Option<bool>,
    sub: Option<u64>,
    since: Option<Since>,
    #[serde(borrow)]
    token: Option<Cow<'a, str>>,
}

/// One element of a `patches` frame.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireElement<'a> {
    #[serde(borrow)]
    run: Option<&'a RawValue>,
    #[serde(borrow)]
    ops: Option<Vec<WireOp<'a>>>,
}

/// The `run` of an element that did not parse as a whole.
#[derive(Deserialize)]
struct RunOnly<'a> {
    #[serde(borrow)]
    run: Option<&'a str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Since {
    epoch: u64,
    seq: u64,
}

#[derive(Deserialize)]
struct WireOp<'a> {
    #[serde(borrow)]
    op: Cow<'a, str>,
    #[serde(borrow)]
    path: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "present")]
    value: Option<Value>,
    index: Option<u64>,
    /// The value's state bytes, when the reader already knows them.
    #[serde(skip)]
    cost: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct WireRun {
    id: Option<String>,
    operation: Option<String>,
    doctype: Option<Value>,
    flow: Option<Value>,
    input: Option<Value>,
    options: Option<Map<String, Value>>,
    owner: Option<String>,
    agent: Option<Value>,
    parent_run: Option<String>,
    steps: Option<Vec<Value>>,
    space: Option<String>,
}

#[derive(Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: Option<Value>,
}

fn bad(msg: impl Into<String>) -> Error {
    Error::new(ErrorCode::BadMessage, msg)
}

fn missing(field: &str, ty: &str) -> Error {
    bad(format!("`{ty}` needs `{field}`"))
}

fn parse_uuid(s: &str, what: &str) -> Result<RunId> {
    RunId::try_parse(s).map_err(|_| bad(format!("`{what}` is not a UUID")))
}

/// Checks a space name: 1 to 128 bytes, no control characters.
pub fn check_space(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err(bad("`space` must be 1 to 128 bytes with no control characters"));
    }
    Ok(())
}

/// Parses one text frame.
pub fn parse(text: &str, limits: &ParseLimits) -> std::result::Result<ClientMsg, Rejection> {
    fast::patch(text, limits).map_or_else(|| parse_general(text, limits), Ok)
}

/// Parses one text frame, whatever its type and its layout.
fn parse_general(text: &str, limits: &ParseLimits) -> std::result::Result<ClientMsg, Rejection> {
    if json_depth_exceeds(text, limits.max_json_depth) {
        let error = Error::new(ErrorCode::LimitExceeded, format!("JSON nested deeper than {}", limits.max_json_depth));
        return Err(Rejection { id: None, error });
    }
    // serde would also read a struct from a JSON array of its fields in order: a message is an object only.
    if let Some(first) = text.trim_start().chars().next()
        && first != '{'
        && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
    {
        return Err(Rejection { id: None, error: bad("a message is a JSON object") });
    }
    let env: Envelope<'_> = match serde_json::from_str(text) {
        Ok(env) => env,
        Err(e) => {
            let code = if e.is_data() { ErrorCode::BadMessage } else { ErrorCode::BadJson };
            return Err(Rejection { id: request_id(text), error: Error::new(code, e.to_string()) });
        }
    };
    let id = env.id.clone().filter(|v| !v.is_null());
    if let Some(v) = &id
        && !valid_id(v)
    {
        return Err(Rejection { id: None, error: bad("`id` must be a number or a string") });
    }
    decode(env, id.clone(), limits).map_err(|error| Rejection { id, error })
}

/// The `id` of a message that will not be handled (refused by the rate limiter), so that its error still answers
/// the request: the message's valid `id` when it is a JSON object that has one, else none.
pub fn request_id(text: &str) -> ReqId {
    serde_json::from_str::<IdOnly>(text).ok().and_then(|i| i.id).filter(valid_id)
}

fn valid_id(v: &Value) -> bool {
    v.is_number() || v.is_string()
}

fn run_id(env: &Envelope<'_>, ty: &str) -> Result<RunId> {
    run_value(env.run.ok_or_else(|| missing("run", ty))?)
}

/// A `run` field that names a run: a string holding a UUID.
fn run_value(raw: &RawValue) -> Result<RunId> {
    let s: &str = serde_json::from_str(raw.get()).map_err(|_| bad("`run` must be a run id string"))?;
    parse_uuid(s, "run")
}

fn decode(env: Envelope<'_>, id: ReqId, limits: &ParseLimits) -> Result<ClientMsg> {
    let ty = env.ty.as_deref().ok_or_else(|| bad("missing `type`"))?;
    Ok(match ty {
        "run" => {
            let raw = env.run.ok_or_else(|| missing("run", ty))?;
            let w: WireRun = serde_json::from_str(raw.get()).map_err(|e| bad(format!("`run`: {e}")))?;
            let operation = w.operation.ok_or_else(|| bad("`run` needs `operation`"))?;
            if operation.is_empty() || operation.len() > 128 {
                return Err(bad("`operation` must be 1 to 128 bytes"));
            }
            if let Some(space) = &w.space {
                check_space(space)?;
            }
            let doctype = w.doctype.unwrap_or(Value::Null);
            if !(doctype.is_null() || doctype.is_string()) {
                return Err(bad("`doctype` must be a string or null"));
            }
            ClientMsg::Run {
                id,
                spec: Box::new(RunSpec {
                    id: w.id.as_deref().map(|s| parse_uuid(s, "run.id")).transpose()?,
                    operation,
                    doctype,
                    flow: w.flow.unwrap_or(Value::Null),
                    input: w.input.unwrap_or(Value::Null),
                    options: w.options.unwrap_or_default(),
                    owner: w.owner,
                    agent: w.agent.unwrap_or(Value::Null),
                    parent_run: w.parent_run.as_deref().map(|s| parse_uuid(s, "parentRun")).transpose()?,
                    steps: w.steps.unwrap_or_default(),
                    space: w.space,
                }),
            }
        }
        "patch" => {
            let run = run_id(&env, ty)?;
            let ops = patch_ops(env.ops.ok_or_else(|| missing("ops", ty))?, limits)?;
            ClientMsg::Patch { id, run, ops }
        }
        "patches" => {
            let raw = env.patches.ok_or_else(|| missing("patches", ty))?;
            if raw.is_empty() {
                return Err(bad("`patches` is empty"));
            }
            at_most(raw.len(), limits.max_patches_per_frame, "elements in one patches frame")?;
            let mut total_ops = 0usize;
            let elements: Vec<Element> = raw.into_iter().map(|r| element(r, limits, &mut total_ops)).collect();
            at_most(total_ops, limits.max_ops_per_frame, "ops in one patches frame")?;
            ClientMsg::Patches { id, elements }
        }
        "complete" => ClientMsg::Complete { id, run: run_id(&env, ty)?, output: env.output },
        "fail" => {
            let run = run_id(&env, ty)?;
            let error = env.error.ok_or_else(|| missing("error", ty))?;
            if !error.get("message").is_some_and(Value::is_string) {
                return Err(bad("`error` must be an object with a string `message`"));
            }
            if error.get("code").is_some_and(|c| !c.is_string()) {
                return Err(bad("`error.code` must be a string"));
            }
            ClientMsg::Fail { id, run, error }
        }
        "subscribe" => {
            let space = env.space.map(Cow::into_owned).unwrap_or_else(|| "default".to_string());
            check_space(&space)?;
            let views = match env.views {
                None => ViewSet::ALL,
                Some(names) => {
                    let views = names
                        .iter()
                        .map(|n| {
                            View::from_key(n)
                                .ok_or_else(|| Error::new(ErrorCode::UnknownView, format!("unknown view `{n}`")))
                        })
                        .collect::<Result<Vec<_>>>()?;
                    if views.is_empty() {
                        return Err(bad("`views` is empty"));
                    }
                    ViewSet::from_views(views)
                }
            };
            let since = env.since.map(|s| (s.epoch, s.seq));
            ClientMsg::Subscribe { id, space, views, events: env.events.unwrap_or(false), since }
        }
        "hello" => ClientMsg::Hello { id, token: env.token.map(Cow::into_owned) },
        "unsubscribe" => ClientMsg::Unsubscribe { id, sub: env.sub.ok_or_else(|| missing("sub", ty))? },
        other => {
            let shown: String = other.chars().take(64).collect();
            return Err(Error::new(ErrorCode::UnknownType, format!("unknown message type {shown:?}")));
        }
    })
}

/// A patch's ops: at least one, at most the limit, each valid.
fn patch_ops(wire_ops: Vec<WireOp<'_>>, limits: &ParseLimits) -> Result<Vec<PatchOp>> {
    if wire_ops.is_empty() {
        return Err(bad("`ops` is empty"));
    }
    at_most(wire_ops.len(), limits.max_ops_per_patch, "ops in one patch")?;
    wire_ops.into_iter().map(|op| patch_op(op, limits)).collect()
}

/// `limit_exceeded` ("more than `max` `what`") when `n` is past `max`.
fn at_most(n: usize, max: usize, what: &str) -> Result<()> {
    if n > max {
        return Err(Error::new(ErrorCode::LimitExceeded, format!("more than {max} {what}")));
    }
    Ok(())
}

/// One element of a `patches` frame, parsed on its own: its errors are its own. Adds the ops it holds (when its
/// `ops` is an array of ops) to `total_ops`.
fn element(raw: &RawValue, limits: &ParseLimits, total_ops: &mut usize) -> Element {
    let readable_run = || {
        serde_json::from_str::<RunOnly<'_>>(raw.get()).ok().and_then(|r| r.run).and_then(|s| RunId::try_parse(s).ok())
    };
    let wire: WireElement<'_> = match serde_json::from_str(raw.get()) {
        Ok(w) => w,
        Err(e) => return Element::Invalid { run: readable_run(), error: bad(format!("`patches` element: {e}")) },
    };
    let run = wire.run.ok_or_else(|| bad("a `patches` element needs `run`")).and_then(run_value);
    let ops = wire.ops.ok_or_else(|| bad("a `patches` element needs `ops`"));
    if let Ok(ops) = &ops {
        *total_ops += ops.len();
    }
    match (run, ops) {
        (Ok(run), Ok(ops)) => match patch_ops(ops, limits) {
            Ok(ops) => Element::Valid { run, ops },
            Err(error) => Element::Invalid { run: Some(run), error },
        },
        (Err(error), _) => Element::Invalid { run: None, error },
        (Ok(run), Err(error)) => Element::Invalid { run: Some(run), error },
    }
}

fn patch_op(op: WireOp<'_>, limits: &ParseLimits) -> Result<PatchOp> {
    let path = |op: &WireOp<'_>| -> Result<Path> {
        let p = op.path.as_deref().ok_or_else(|| bad(format!("`{}` op needs `path`", op.op)))?;
        Path::parse(p, limits.path)
    };
    let value = |op: &mut WireOp<'_>| op.value.take().ok_or_else(|| bad(format!("`{}` op needs `value`", op.op)));
    let mut op = op;
    Ok(match &*op.op {
        // A value the fast path read as a plain string comes with its cost; any other is measured here, once.
        "set" | "append" => {
            let (path, value) = (path(&op)?, value(&mut op)?);
            let cost = op.cost.unwrap_or_else(|| crate::model::size::value(&value));
            if op.op == "set" { PatchOp::Set { path, value, cost } } else { PatchOp::Append { path, value, cost } }
        }
        "remove" => PatchOp::remove(path(&op)?),
        "step" => {
            let index = op.index.ok_or_else(|| bad("`step` op needs `index`"))? as usize;
            match value(&mut op)? {
                Value::Object(value) => PatchOp::step(index, value),
                _ => return Err(bad("`step` op needs an object `value`")),
            }
        }
        other => {
            let shown: String = other.chars().take(32).collect();
            return Err(bad(format!("unknown op {shown:?} (expected set, append, step or remove)")));
        }
    })
}

// ---------------------------------------------------------------------------------------------------------------
// Server → client frames.

/// True for the bytes a JSON string cannot hold as they are: `"`, `\` and control characters.
fn escaped_in_json(b: u8) -> bool {
    b == b'"' || b == b'\\' || b < 0x20
}

/// Serializes a value straight into `out` (`Value`'s `Display` is its compact JSON), without a temporary string.
fn push_value(out: &mut String, v: &Value) {
    write!(out, "{v}").expect("writing to a String cannot fail");
}

fn push_json<T: serde::Serialize + ?Sized>(out: &mut String, v: &T) {
    // Serializing a `Value`, a `Map` or a string into a String cannot fail.
    out.push_str(&serde_json::to_string(v).expect("JSON values serialize"));
}

fn push_id(out: &mut String, id: &ReqId) {
    if let Some(id) = id {
        out.push_str(",\"id\":");
        push_json(out, id);
    }
}

/// `{"type":"reply","id":..,"run":{..}}` (`run` omitted when `None`).
pub fn reply(id: &ReqId, run: Option<&Map<String, Value>>) -> String {
    let mut out = String::from("{\"type\":\"reply\"");
    push_id(&mut out, id);
    if let Some(run) = run {
        out.push_str(",\"run\":");
        push_json(&mut out, run);
    }
    out.push('}');
    out
}

/// The limits a client needs to know to stay within them, sent in the `hello` reply.
#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
    pub max_message_bytes: usize,
    pub max_ops_per_patch: usize,
    pub max_patches_per_frame: usize,
    pub max_ops_per_frame: usize,
    pub max_run_bytes: usize,
    pub messages_per_second: u32,
    pub bytes_per_second: u64,
    pub ping_interval_ms: u64,
    pub idle_timeout_ms: u64,
    pub tick_ms: u64,
}

/// `{"type":"reply","id":..,"owner":"..","expires":E,"limits":{..}}`: the reply to `hello` (`owner` and `expires`
/// are null in development mode).
pub fn hello_reply(id: &ReqId, owner: Option<&str>, expires: Option<u64>, limits: &ClientLimits) -> String {
    let mut out = String::from("{\"type\":\"reply\"");
    push_id(&mut out, id);
    out.push_str(",\"owner\":");
    push_json(&mut out, &owner);
    out.push_str(",\"expires\":");
    push_json(&mut out, &expires);
    let ClientLimits {
        max_message_bytes,
        max_ops_per_patch,
        max_patches_per_frame,
        max_ops_per_frame,
        max_run_bytes,
        messages_per_second,
        bytes_per_second,
        ping_interval_ms,
        idle_timeout_ms,
        tick_ms,
    } = limits;
    let _ = write!(
        out,
        ",\"limits\":{{\"maxMessageBytes\":{max_message_bytes},\"maxOpsPerPatch\":{max_ops_per_patch},\
         \"maxPatchesPerFrame\":{max_patches_per_frame},\"maxOpsPerFrame\":{max_ops_per_frame},\
         \"maxRunBytes\":{max_run_bytes},\"messagesPerSecond\":{messages_per_second},\
         \"bytesPerSecond\":{bytes_per_second},\"pingIntervalMs\":{ping_interval_ms},\
         \"idleTimeoutMs\":{idle_timeout_ms},\"tickMs\":{tick_ms}}}}}"
    );
    out
}

/// `{"type":"reply","id":..,"sub":N}`: the reply to `unsubscribe`.
pub fn reply_sub(id: &ReqId, sub: u64) -> String {
    let mut out = String::from("{\"type\":\"reply\"");
    push_id(&mut out, id);
    let _ = write!(out, ",\"sub\":{sub}}}");
    out
}

/// `{"type":"error","id":..,"code":"..","message":"..","run":{..}}` (`id` and `run` when known).
pub fn error(id: &ReqId, err: &Error, run: Option<&Map<String, Value>>) -> String {
    let mut out = String::from("{\"type\":\"error\"");
    push_id(&mut out, id);
    out.push_str(",\"code\":\"");
    out.push_str(err.code.as_str());
    out.push_str("\",\"message\":");
    push_json(&mut out, &err.message);
    if let Some(run) = run {
        out.push_str(",\"run\":");
        push_json(&mut out, run);
    }
    out.push('}');
    out
}

/// `{"type":"reply","id":..,"errors":[{"index":i,"code":"..","message":".."},…]}`: the reply to `patches` with an
/// `id`, listing the elements that did not apply (none: every element applied).
pub fn patches_reply<'e>(id: &ReqId, errors: impl IntoIterator<Item = (usize, &'e Error)>) -> String {
    let mut out = String::from("{\"type\":\"reply\"");
    push_id(&mut out, id);
    out.push_str(",\"errors\":[");
    for (n, (index, err)) in errors.into_iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        let _ = write!(out, "{{\"index\":{index},\"code\":\"{}\",\"message\":", err.code.as_str());
        push_json(&mut out, &err.message);
        out.push('}');
    }
    out.push_str("]}");
    out
}

/// `{"type":"error","code":"..","message":"..","index":i,"run":".."}`: an element of a `patches` frame without an
/// `id` that did not apply (`run` when the element's run id could be read).
pub fn element_error(index: usize, run: Option<RunId>, err: &Error) -> String {
    let mut out = String::from("{\"type\":\"error\",\"code\":\"");
    out.push_str(err.code.as_str());
    out.push_str("\",\"message\":");
    push_json(&mut out, &err.message);
    let _ = write!(out, ",\"index\":{index}");
    if let Some(run) = run {
        out.push_str(",\"run\":");
        push_uuid(&mut out, run);
    }
    out.push('}');
    out
}

/// `{"type":"error","code":"..","sub":S,"message":".."}`: a subscription ended by the server (a refreshed token
/// that may no longer read its space).
pub fn subscription_error(sub: u64, err: &Error) -> String {
    let mut out = String::from("{\"type\":\"error\",\"code\":\"");
    out.push_str(err.code.as_str());
    let _ = write!(out, "\",\"sub\":{sub},\"message\":");
    push_json(&mut out, &err.message);
    out.push('}');
    out
}

/// `{"type":"snapshot","id":..,"sub":S,"epoch":E,"seq":N,"state":{..}}`, with `"resync":true` when it replaces
/// lost diffs or a resume that could not be served.
pub fn snapshot(id: &ReqId, sub: u64, epoch: u64, seq: u64, state: &str, resync: bool) -> String {
    let mut out = String::with_capacity(state.len() + 96);
    out.push_str("{\"type\":\"snapshot\"");
    push_id(&mut out, id);
    let _ = write!(out, ",\"sub\":{sub},\"epoch\":{epoch},\"seq\":{seq}");
    if resync {
        out.push_str(",\"resync\":true");
    }
    out.push_str(",\"state\":");
    out.push_str(state);
    out.push('}');
    out
}

/// `{"type":"reply","id":..,"sub":S,"epoch":E,"seq":N,"resumed":true}`: a resume was granted; the diffs that follow
/// start at `seq`.
pub fn resumed(id: &ReqId, sub: u64, epoch: u64, seq: u64) -> String {
    let mut out = String::from("{\"type\":\"reply\"");
    push_id(&mut out, id);
    let _ = write!(out, ",\"sub\":{sub},\"epoch\":{epoch},\"seq\":{seq},\"resumed\":true}}");
    out
}

/// `{"type":"diff","sub":S,"seq":M,"base":K,"ops":[..]}` from pre-serialized op chunks (each a comma-separated list).
pub fn diff(sub: u64, base: u64, seq: u64, chunks: &[impl AsRef<str>]) -> String {
    let len: usize = chunks.iter().map(|c| c.as_ref().len() + 1).sum();
    let mut out = String::with_capacity(len + 64);
    let _ = write!(out, "{{\"type\":\"diff\",\"sub\":{sub},\"seq\":{seq},\"base\":{base},\"ops\":[");
    for (i, c) in chunks.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(c.as_ref());
    }
    out.push_str("]}");
    out
}

/// The lifecycle event names (`events: true` subscriptions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventName {
    BeforeRun,
    AfterRun,
    ErrorRun,
}

impl EventName {
    pub const fn as_str(self) -> &'static str {
        match self {
            EventName::BeforeRun => "before:run",
            EventName::AfterRun => "after:run",
            EventName::ErrorRun => "error:run",
        }
    }
}

/// The shared body of an event frame: `"name":"..","run":{..}`.
pub fn event_body(name: EventName, run: &Map<String, Value>) -> String {
    let mut out = String::from("\"name\":\"");
    out.push_str(name.as_str());
    out.push_str("\",\"run\":");
    push_json(&mut out, run);
    out
}

/// `{"type":"event","sub":S,` + body + `}`.
pub fn event(sub: u64, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 40);
    let _ = write!(out, "{{\"type\":\"event\",\"sub\":{sub},");
    out.push_str(body);
    out.push('}');
    out
}

// ---------------------------------------------------------------------------------------------------------------
// State-document ops and the state document.

fn push_run_pointer(out: &mut String, run: RunId) {
    out.push_str("/activeRuns/");
    out.push_str(run.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()));
}

fn push_uuid(out: &mut String, id: RunId) {
    out.push('"');
    out.push_str(id.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()));
    out.push('"');
}

/// Appends one op on a run's context, `{"op":..,"path":"/activeRuns/<id>/..","value":..}` (the caller separates
/// ops with commas).
pub fn push_run_op(out: &mut String, run: RunId, kind: ChangeKind, path: &[Seg], value: &Value) {
    out.push_str(match kind {
        ChangeKind::Add => "{\"op\":\"add\",\"path\":\"",
        ChangeKind::Replace => "{\"op\":\"replace\",\"path\":\"",
        ChangeKind::Remove => "{\"op\":\"remove\",\"path\":\"",
        ChangeKind::Append => "{\"op\":\"append\",\"path\":\"",
    });
    push_run_pointer(out, run);
    // A pointer is JSON-string-escaped: keys may hold quotes, backslashes or control characters. The usual keys
    // hold none, and their pointer is written in place.
    let plain = |s: &Seg| match s {
        Seg::Key(k) => !k.bytes().any(escaped_in_json),
        Seg::Index(_) => true,
    };
    if path.iter().all(plain) {
        write_pointer(out, path);
    } else {
        let mut p = String::new();
        write_pointer(&mut p, path);
        let escaped = serde_json::to_string(&p).expect("strings serialize");
        out.push_str(&escaped[1..escaped.len() - 1]);
    }
    out.push('"');
    if kind != ChangeKind::Remove {
        out.push_str(",\"value\":");
        push_value(out, value);
    }
    out.push('}');
}

/// Appends `add /activeRuns/<id>` with the run's serialized context (the caller separates ops with commas).
pub fn push_run_add(out: &mut String, run: RunId, ctx_json: &str) {
    out.push_str("{\"op\":\"add\",\"path\":\"");
    push_run_pointer(out, run);
    out.push_str("\",\"value\":");
    out.push_str(ctx_json);
    out.push('}');
}

/// Appends `remove /activeRuns/<id>` (the caller separates ops with commas).
pub fn push_run_remove(out: &mut String, run: RunId) {
    out.push_str("{\"op\":\"remove\",\"path\":\"");
    push_run_pointer(out, run);
    out.push_str("\"}");
}

/// Renders one view op.
pub fn view_op(op: &ViewOp) -> String {
    let mut out = String::with_capacity(96);
    let key = op.view().key();
    match op {
        ViewOp::Insert { group, index, id, .. } => {
            let _ = write!(out, "{{\"op\":\"add\",\"path\":\"/{key}");
            if let Some(g) = group {
                out.push('/');
                out.push_str(g.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()));
            }
            let _ = write!(out, "/{index}\",\"value\":");
            push_uuid(&mut out, *id);
            out.push('}');
        }
        ViewOp::Delete { group, index, .. } => {
            let _ = write!(out, "{{\"op\":\"remove\",\"path\":\"/{key}");
            if let Some(g) = group {
                out.push('/');
                out.push_str(g.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()));
            }
            let _ = write!(out, "/{index}\"}}");
        }
        ViewOp::AddGroup { root, members } => {
            let _ = write!(out, "{{\"op\":\"add\",\"path\":\"/{key}/");
            out.push_str(root.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()));
            out.push_str("\",\"value\":");
            push_id_list(&mut out, members.iter().copied());
            out.push('}');
        }
        ViewOp::RemoveGroup { root } => {
            let _ = write!(out, "{{\"op\":\"remove\",\"path\":\"/{key}/");
            out.push_str(root.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()));
            out.push_str("\"}");
        }
    }
    out
}

/// `replace /isLoading`.
pub fn loading_op(loading: bool) -> String {
    format!("{{\"op\":\"replace\",\"path\":\"/isLoading\",\"value\":{loading}}}")
}

/// `replace /currentRun` with a serialized context.
pub fn current_op(ctx_json: &str) -> String {
    format!("{{\"op\":\"replace\",\"path\":\"/currentRun\",\"value\":{ctx_json}}}")
}

fn push_id_list(out: &mut String, ids: impl Iterator<Item = RunId>) {
    out.push('[');
    for (i, id) in ids.enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_uuid(out, id);
    }
    out.push(']');
}

/// Appends a JSON object keyed by run ids, each value written by `value`.
fn push_object<T>(out: &mut String, entries: impl Iterator<Item = (RunId, T)>, mut value: impl FnMut(&mut String, T)) {
    out.push('{');
    for (i, (id, v)) in entries.enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_uuid(out, id);
        out.push(':');
        value(out, v);
    }
    out.push('}');
}

/// What the state document is made of, for one view set.
pub struct StateParts<'a, R, D, A, P, G>
where
    R: Iterator<Item = (RunId, String)>,
    D: Iterator<Item = RunId>,
    A: Iterator<Item = RunId>,
    P: Iterator<Item = (RunId, G)>,
    G: Iterator<Item = RunId>,
{
    pub views: ViewSet,
    pub current: Option<&'a str>,
    pub runs: R,
    pub loading: bool,
    pub dialogs: D,
    pub ai: A,
    pub pipelines: P,
}

/// Renders the state document with only the keys `parts.views` selects.
pub fn state<R, D, A, P, G>(parts: StateParts<'_, R, D, A, P, G>) -> String
where
    R: Iterator<Item = (RunId, String)>,
    D: Iterator<Item = RunId>,
    A: Iterator<Item = RunId>,
    P: Iterator<Item = (RunId, G)>,
    G: Iterator<Item = RunId>,
{
    let v = parts.views;
    let mut out = String::from("{");
    let sep = |out: &mut String, key: &str| {
        if out.len() > 1 {
            out.push(',');
        }
        out.push('"');
        out.push_str(key);
        out.push_str("\":");
    };
    if v.has(View::CurrentRun) {
        sep(&mut out, View::CurrentRun.key());
        out.push_str(parts.current.unwrap_or("null"));
    }
    if v.has_runs() {
        sep(&mut out, View::ActiveRuns.key());
        push_object(&mut out, parts.runs, |out, json| out.push_str(&json));
    }
    if v.has(View::IsLoading) {
        sep(&mut out, View::IsLoading.key());
        out.push_str(if parts.loading { "true" } else { "false" });
    }
    if v.has(View::ActiveDialogs) {
        sep(&mut out, View::ActiveDialogs.key());
        push_id_list(&mut out, parts.dialogs);
    }
    if v.has(View::ActiveAi) {
        sep(&mut out, View::ActiveAi.key());
        push_id_list(&mut out, parts.ai);
    }
    if v.has(View::ActivePipelines) {
        sep(&mut out, View::ActivePipelines.key());
        push_object(&mut out, parts.pipelines, push_id_list);
    }
    out.push('}');
    out
}

/// Escapes a JSON Pointer segment (used by clients of this module that build pointers by hand).
pub fn pointer_segment(key: &str) -> String {
    let mut s = String::new();
    push_escaped(&mut s, key);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: ParseLimits = ParseLimits {
        path: PathLimits { max_bytes: 1024, max_depth: 32 },
        max_ops_per_patch: 4,
        max_patches_per_frame: 4,
        max_ops_per_frame: 6,
        max_json_depth: 8,
    };

    fn rej(text: &str) -> (ReqId, ErrorCode) {
        let r = parse(text, &LIMITS).unwrap_err();
        (r.id, r.error.code)
    }

    #[test]
    fn parses_every_message() {
        let id = "0190f5c2-0000-7000-8000-000000000001";
        let m = parse(&format!(r#"{{"type":"patch","id":2,"run":"{id}","ops":[{{"op":"append","path":"output.tokens","value":"a"}},{{"op":"step","index":0,"value":{{"s":1}}}},{{"op":"set","path":"/output/x","value":null}}]}}"#), &LIMITS).unwrap();
        let ClientMsg::Patch { id: Some(req), ops, .. } = m else { panic!("{m:?}") };
        assert_eq!(req, json!(2));
        assert_eq!(ops.len(), 3);
        assert!(matches!(&ops[2], PatchOp::Set { value: Value::Null, .. }));
        let m =
            parse(r#"{"type":"run","id":"a","run":{"operation":"interpret","parentRun":null,"owner":"u1"}}"#, &LIMITS)
                .unwrap();
        assert!(matches!(m, ClientMsg::Run { ref spec, .. } if spec.operation == "interpret"));
        let m = parse(r#"{"type":"subscribe","views":["activeAI"]}"#, &LIMITS).unwrap();
        assert!(matches!(m, ClientMsg::Subscribe { ref space, events: false, .. } if space == "default"));
        let m = parse(&format!(r#"{{"type":"complete","run":"{id}"}}"#), &LIMITS).unwrap();
        assert!(matches!(m, ClientMsg::Complete { output: None, .. }));
        let m = parse(&format!(r#"{{"type":"complete","run":"{id}","output":null}}"#), &LIMITS).unwrap();
        assert!(matches!(m, ClientMsg::Complete { output: Some(Value::Null), .. }));
    }

    #[test]
    fn bad_frames_get_codes_and_keep_the_id_when_readable() {
        assert_eq!(rej("{nope"), (None, ErrorCode::BadJson));
        assert_eq!(rej(r#"{"type":"patch","id":7,"run":5}"#), (Some(json!(7)), ErrorCode::BadMessage));
        assert_eq!(rej(r#"{"type":"patch","id":7,"run":"x","ops":[]}"#), (Some(json!(7)), ErrorCode::BadMessage));
        assert_eq!(rej(r#"{"type":"patch","id":"q","ops":5}"#), (Some(json!("q")), ErrorCode::BadMessage));
        assert_eq!(rej(r#"{"type":"nope","id":1}"#), (Some(json!(1)), ErrorCode::UnknownType));
        assert_eq!(rej(r#"{"id":1}"#), (Some(json!(1)), ErrorCode::BadMessage));
        assert_eq!(rej(r#"{"type":"run","id":{"a":1},"run":{}}"#), (None, ErrorCode::BadMessage));
        assert_eq!(rej(r#"{"type":"run","run":{"operation":"x","bogus":1}}"#).1, ErrorCode::BadMessage);
        assert_eq!(rej(r#"{"type":"subscribe","views":["nope"]}"#).1, ErrorCode::UnknownView);
        assert_eq!(rej(r#"[1,2]"#).1, ErrorCode::BadMessage);
        let id = "0190f5c2-0000-7000-8000-000000000001";
        let five = r#"{"op":"set","path":"a","value":1}"#;
        let ops = [five; 5].join(",");
        assert_eq!(rej(&format!(r#"{{"type":"patch","run":"{id}","ops":[{ops}]}}"#)).1, ErrorCode::LimitExceeded);
        assert_eq!(
            rej(&format!(r#"{{"type":"patch","run":"{id}","ops":[{{"op":"set","path":"status","value":1}}]}}"#)).1,
            ErrorCode::ReadOnlyPath
        );
        assert_eq!(rej(&format!(r#"{{"type":"fail","run":"{id}","error":"x"}}"#)).1, ErrorCode::BadMessage);
    }

    #[test]
    fn nesting_is_limited_outside_strings_only() {
        let deep = format!(r#"{{"type":"run","run":{{"operation":"x","input":{}1{}}}}}"#, "[".repeat(8), "]".repeat(8));
        assert_eq!(rej(&deep).1, ErrorCode::LimitExceeded);
        let shallow =
            format!(r#"{{"type":"run","run":{{"operation":"x","input":"{}\"{}"}}}}"#, "[".repeat(50), "{".repeat(50));
        assert!(parse(&shallow, &LIMITS).is_ok(), "brackets inside strings do not count");
        let wide = format!(r#"{{"type":"run","run":{{"operation":"x","input":[{}[]]}}}}"#, "[],".repeat(20));
        assert!(parse(&wide, &LIMITS).is_ok(), "more brackets than the limit, but siblings, not nested");
    }

    #[test]
    fn run_ops_escape_keys() {
        let mut s = String::new();
        push_run_op(&mut s, RunId::nil(), ChangeKind::Replace, &[Seg::Key("a\"b/c".into())], &json!(1));
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["path"], json!("/activeRuns/00000000-0000-0000-0000-000000000000/a\"b~1c"));
    }
}
