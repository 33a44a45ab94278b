//! A connection's standing with authentication: the `hello` exchange, token refresh and expiry, the caller each
//! request runs as, and the subscriptions a refreshed token no longer allows.

use super::{AuthState, Session, error_frame, far_future};
use crate::engine::caller::Caller;
use crate::error::{Error, ErrorCode};
use crate::net::session::transport::Outgoing;
use crate::protocol::{self, close};
use std::sync::Arc;

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Session {
    /// Takes the caller as this connection's identity (counting it against its owner's connection quota the first
    /// time).
    pub(super) fn authenticated(&mut self, caller: Caller) -> Result<(), Error> {
        if self.counted_owner.is_none()
            && let Some(owner) = &caller.owner
        {
            self.counted_owner = Some(self.engine.connection_opened(owner)?);
        }
        // Checked arithmetic: an `exp` at the end of time (2^64 - 1) is a deadline that never comes, not a panic.
        let deadline = caller
            .expires
            .and_then(|exp| {
                tokio::time::Instant::now().checked_add(std::time::Duration::from_secs(exp.saturating_sub(unix_now())))
            })
            .map_or_else(far_future, |d| d.min(far_future()));
        self.auth_timer.as_mut().reset(deadline);
        self.state = AuthState::Valid(Arc::new(caller.on_connection(self.connection)));
        self.outbox.set_paused(false);
        Ok(())
    }

    /// Ends the subscriptions the caller's claims no longer allow (after a refreshed token), each with an error
    /// frame naming it.
    async fn revoke_subscriptions(&mut self, caller: &Caller) {
        let revoked: Vec<u64> =
            self.subs.iter().filter(|(_, slot)| !caller.can_read(&slot.space)).map(|(id, _)| *id).collect();
        for sub in revoked {
            if let Some(slot) = self.subs.remove(&sub) {
                self.engine.unsubscribe(&slot);
                let e =
                    Error::new(ErrorCode::Forbidden, "the refreshed token may not read this space: subscription ended");
                crate::telemetry::error(e.code);
                self.send(protocol::subscription_error(sub, &e)).await;
            }
        }
    }

    /// The caller for a request, or the error that refuses it.
    pub(super) fn caller(&self) -> Result<Arc<Caller>, Error> {
        match &self.state {
            AuthState::Off(c) | AuthState::Valid(c) => Ok(c.clone()),
            AuthState::Waiting => Err(Error::new(ErrorCode::Unauthenticated, "send `hello` with a token first")),
            AuthState::Expired => Err(Error::new(ErrorCode::TokenExpired, "token expired: send a fresh hello")),
        }
    }

    /// The limits the `hello` reply tells the client.
    fn client_limits(&self) -> protocol::ClientLimits {
        let config = self.engine.config();
        let l = &config.limits;
        protocol::ClientLimits {
            max_message_bytes: l.max_message_bytes,
            max_ops_per_patch: l.max_ops_per_patch,
            max_patches_per_frame: l.max_patches_per_frame,
            max_ops_per_frame: l.max_ops_per_frame,
            max_run_bytes: l.max_run_bytes,
            messages_per_second: l.messages_per_second,
            bytes_per_second: l.bytes_per_second,
            ping_interval_ms: l.ping_interval.as_millis() as u64,
            idle_timeout_ms: l.idle_timeout.as_millis() as u64,
            tick_ms: config.tick.as_millis() as u64,
        }
    }

    /// `hello`: verifies the token (in development mode any or none is accepted). A bad token closes the
    /// connection (4001) after the error; a connection may send a fresh token for the same subject at any time.
    pub(super) async fn hello(&mut self, id: protocol::ReqId, token: Option<String>) {
        let Some(auth) = &self.auth else {
            return self.send(protocol::hello_reply(&id, None, None, &self.client_limits())).await;
        };
        // Without a token, on a connection that has one, `hello` asks what it stands on (a liveness probe): the
        // reply as for the token it holds, or `token_expired`; the connection stays as it is.
        match (&token, &self.state) {
            (None, AuthState::Valid(c)) => {
                let reply = protocol::hello_reply(&id, c.owner.as_deref(), c.expires, &self.client_limits());
                return self.send(reply).await;
            }
            (None, AuthState::Expired) => {
                let e = Error::new(ErrorCode::TokenExpired, "token expired: send a fresh hello");
                return self.send(error_frame(&id, &e, None)).await;
            }
            _ => {}
        }
        let verified = match token {
            Some(t) => auth.verify(&t),
            None => Err(Error::new(ErrorCode::Unauthenticated, "`hello` needs a `token`")),
        };
        let verified = verified.and_then(|c| match &self.counted_owner {
            Some(quota) if c.owner.as_ref() != Some(&quota.owner) => {
                Err(Error::new(ErrorCode::Forbidden, "a refreshed token must have the same subject"))
            }
            _ => Ok(c),
        });
        match verified {
            Ok(caller) => {
                let reply = protocol::hello_reply(&id, caller.owner.as_deref(), caller.expires, &self.client_limits());
                self.revoke_subscriptions(&caller).await;
                match self.authenticated(caller) {
                    Ok(()) => self.send(reply).await,
                    Err(e) => {
                        self.send(error_frame(&id, &e, None)).await;
                        let _ = self.tx.send(Outgoing::Close(close::QUOTA, "too many connections")).await;
                        self.state = AuthState::Waiting;
                        self.auth_timer.as_mut().reset(far_future());
                    }
                }
            }
            Err(e) => {
                self.send(error_frame(&id, &e, None)).await;
                // Make the auth timer fire now: the loop closes the connection with 4001.
                self.state = AuthState::Waiting;
                self.auth_timer.as_mut().reset(tokio::time::Instant::now());
            }
        }
    }
}
