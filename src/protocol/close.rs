//! Close codes the server sends (protocol.md, "Close codes").

/// The server is shutting down.
pub const GOING_AWAY: u16 = 1001;
/// A text frame that is not valid UTF-8.
pub const INVALID_DATA: u16 = 1007;
/// A client that kept sending past its rate limit after being refused.
pub const POLICY: u16 = 1008;
/// A message over the size limit.
pub const TOO_BIG: u16 = 1009;
/// Nothing (not even a pong) arrived within the idle timeout.
pub const IDLE: u16 = 4000;
/// No valid token within the authentication deadline, or a bad token.
pub const UNAUTHENTICATED: u16 = 4001;
/// The owner already has as many connections as allowed.
pub const QUOTA: u16 = 4003;
/// The peer stopped reading: nothing could be written for the write timeout (sent only if it still gets through).
pub const SLOW: u16 = 4008;
/// The token expired and no fresh `hello` came within the grace period.
pub const TOKEN_EXPIRED: u16 = 4002;
