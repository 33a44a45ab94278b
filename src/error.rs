//! Errors with stable wire codes. Owns the closed list of codes a client can see; every failure that reaches a
//! client is an [`Error`] whose `code` is one of [`ErrorCode`] and whose message never carries internal details.

use std::fmt;

/// The stable, documented error codes (protocol.md, "Error codes"). Adding one is a protocol change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The frame is not valid JSON.
    BadJson,
    /// Valid JSON, but not a valid message: missing or mistyped field, bad value.
    BadMessage,
    /// The `type` is not one the server knows.
    UnknownType,
    /// A binary frame; the protocol is text frames only.
    BinaryFrame,
    /// No active run has this id (or it finished long ago).
    UnknownRun,
    /// The run has completed or failed; it can no longer be patched, completed or failed.
    RunFinished,
    /// A client-supplied run id is already in use.
    DuplicateRun,
    /// `parentRun` names no active run.
    UnknownParent,
    /// A child run named a `space` different from its parent's.
    SpaceMismatch,
    /// The path does not parse, or is too long or too deep.
    BadPath,
    /// The path names a field that cannot be patched (id, status, ...).
    ReadOnlyPath,
    /// `remove` of something that does not exist.
    PathNotFound,
    /// The path runs through a string, number or boolean, or the op does not fit the target's type.
    TypeMismatch,
    /// An array index past the end.
    IndexOutOfRange,
    /// A view name that is not one of the six views.
    UnknownView,
    /// `unsubscribe` of a subscription this connection does not hold.
    UnknownSubscription,
    /// A before-hook rejected the run.
    Rejected,
    /// A server-side operation handler failed the run.
    OperationFailed,
    /// No valid token yet (or a bad one): authenticate with `hello` first.
    Unauthenticated,
    /// The token's claims do not allow this (space not in `read`/`write`, or another owner's name).
    Forbidden,
    /// The token expired: send a fresh `hello` within the grace period or the connection closes (4002).
    TokenExpired,
    /// A configured limit was exceeded (ops per patch, spaces, ...).
    LimitExceeded,
    /// The connection sent faster than its message rate; the message was not applied.
    RateLimited,
    /// The owner started runs faster than its quota allows.
    QuotaRunsStarted,
    /// The owner has as many active runs as its quota allows.
    QuotaActiveRuns,
    /// The connection holds as many subscriptions as allowed.
    QuotaSubscriptions,
    /// The owner has as many connections as allowed (the connection is then closed with 4003).
    QuotaConnections,
    /// The owner has created as many spaces (still existing) as allowed.
    QuotaSpaces,
    /// The server holds as many connections as allowed: the HTTP request is answered 503 with this code.
    ServerFull,
    /// The write would take its run past `max_run_bytes`; nothing of it was applied.
    RunTooLarge,
    /// The write would take its owner's live runs past `max_owner_state_bytes`; nothing of it was applied.
    QuotaStateBytes,
    /// The server's state budget (`max_state_bytes`) is spent: writes that grow state are refused until runs
    /// finish.
    OverCapacity,
    /// A data operation named a document that does not exist.
    NotFound,
    /// A document with that name already exists.
    Conflict,
    /// The database could not be written (full disk, read-only file, ...): nothing was acknowledged.
    StorageFailed,
    /// A data operation's query ran past the store's time limit and was stopped.
    QueryTimeout,
    /// Too many data operations wait for the store; nothing was done.
    StoreBusy,
    /// The store could not be reached within its wait; nothing was done.
    StoreUnavailable,
    /// Cluster mode: the shared log (NATS JetStream) did not take the write within its wait, or the node is cut off
    /// from it and serves nothing new. The write was not applied.
    Unavailable,
    /// A bug or an unexpected condition on the server; details are in the server log only.
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::BinaryFrame => "binary_frame",
            ErrorCode::UnknownRun => "unknown_run",
            ErrorCode::RunFinished => "run_finished",
            ErrorCode::DuplicateRun => "duplicate_run",
            ErrorCode::UnknownParent => "unknown_parent",
            ErrorCode::SpaceMismatch => "space_mismatch",
            ErrorCode::BadPath => "bad_path",
            ErrorCode::ReadOnlyPath => "read_only_path",
            ErrorCode::PathNotFound => "path_not_found",
            ErrorCode::TypeMismatch => "type_mismatch",
            ErrorCode::IndexOutOfRange => "index_out_of_range",
            ErrorCode::UnknownView => "unknown_view",
            ErrorCode::UnknownSubscription => "unknown_subscription",
            ErrorCode::Rejected => "rejected",
            ErrorCode::OperationFailed => "operation_failed",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::QuotaRunsStarted => "quota_runs_started",
            ErrorCode::QuotaActiveRuns => "quota_active_runs",
            ErrorCode::QuotaSubscriptions => "quota_subscriptions",
            ErrorCode::QuotaConnections => "quota_connections",
            ErrorCode::QuotaSpaces => "quota_spaces",
            ErrorCode::ServerFull => "server_full",
            ErrorCode::RunTooLarge => "run_too_large",
            ErrorCode::QuotaStateBytes => "quota_state_bytes",
            ErrorCode::OverCapacity => "over_capacity",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::StorageFailed => "storage_failed",
            ErrorCode::QueryTimeout => "query_timeout",
            ErrorCode::StoreBusy => "store_busy",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// Every code, for the protocol-doc test.
    pub const ALL: [ErrorCode; 40] = [
        ErrorCode::BadJson,
        ErrorCode::BadMessage,
        ErrorCode::UnknownType,
        ErrorCode::BinaryFrame,
        ErrorCode::UnknownRun,
        ErrorCode::RunFinished,
        ErrorCode::DuplicateRun,
        ErrorCode::UnknownParent,
        ErrorCode::SpaceMismatch,
        ErrorCode::BadPath,
        ErrorCode::ReadOnlyPath,
        ErrorCode::PathNotFound,
        ErrorCode::TypeMismatch,
        ErrorCode::IndexOutOfRange,
        ErrorCode::UnknownView,
        ErrorCode::UnknownSubscription,
        ErrorCode::Rejected,
        ErrorCode::OperationFailed,
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::TokenExpired,
        ErrorCode::LimitExceeded,
        ErrorCode::RateLimited,
        ErrorCode::QuotaRunsStarted,
        ErrorCode::QuotaActiveRuns,
        ErrorCode::QuotaSubscriptions,
        ErrorCode::QuotaConnections,
        ErrorCode::QuotaSpaces,
        ErrorCode::ServerFull,
        ErrorCode::RunTooLarge,
        ErrorCode::QuotaStateBytes,
        ErrorCode::OverCapacity,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::StorageFailed,
        ErrorCode::QueryTimeout,
        ErrorCode::StoreBusy,
        ErrorCode::StoreUnavailable,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error that can be reported to a client: a stable code and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
}

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error { code, message: message.into() }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}

/// Shorthand used across the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;
