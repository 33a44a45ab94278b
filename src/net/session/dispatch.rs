//! Request dispatch: each parsed client message to its engine command, and its reply queued in request order (a
//! `complete`/`fail` reply once its audit record is durable).

use super::{Session, error_frame};
use crate::engine::{Outcome, SubscribeRequest};
use crate::error::{Error, ErrorCode};
use crate::model::context::RunId;
use crate::net::session::transport::Outgoing;
use crate::protocol::{self, ClientMsg};
use futures::FutureExt;
use serde_json::Value;

impl Session {
    /// Queues the reply to `complete` or `fail`: sent once the log applied it and the run's record is durable.
    fn send_when_durable(&mut self, id: protocol::ReqId, finished: Outcome<Result<crate::engine::Finished, Error>>) {
        let frame = async move {
            match finished.wait().await {
                Ok(f) => match f.durable().await {
                    Ok(ctx) => protocol::reply(&id, Some(&ctx)),
                    Err(e) => error_frame(&id, &e, None),
                },
                Err(e) => error_frame(&id, &e, None),
            }
        };
        self.waiting.push_back(frame.map(Some).boxed());
    }

    pub(super) async fn handle(&mut self, text: &str) {
        let msg = match protocol::parse(text, &self.parse_limits) {
            Ok(msg) => msg,
            Err(rej) => {
                tracing::debug!(code = %rej.error.code, "rejected a frame");
                return self.send(error_frame(&rej.id, &rej.error, None)).await;
            }
        };
        if let ClientMsg::Hello { id, token } = msg {
            return self.hello(id, token).await;
        }
        let caller = match self.caller() {
            Ok(c) => c,
            Err(e) => return self.send(error_frame(msg.id(), &e, None)).await,
        };
        match msg {
            ClientMsg::Hello { .. } => unreachable!("handled above"),
            ClientMsg::Run { id, spec } if self.engine.has_operation(&spec.operation) => {
                // A server-side operation may take a while: keep reading meanwhile (its reply may come out of
                // order), up to `max_operations_per_connection` at once; past that, reading waits for one to end.
                let Ok(permit) = self.operations.clone().acquire_owned().await else { return };
                let (engine, tx, outbox) = (self.engine.clone(), self.tx.clone(), self.outbox.clone());
                tokio::spawn(async move {
                    let frame = match engine.run(*spec, &caller).await {
                        Ok(ctx) => protocol::reply(&id, Some(&ctx)),
                        Err(f) => error_frame(&id, &f.error, f.run.as_deref()),
                    };
                    drop(permit);
                    outbox.reply_queued(frame.len());
                    let _ = tx.send(Outgoing::Frame(frame)).await;
                });
            }
            ClientMsg::Run { id, spec } => {
                let frame = match self.engine.run(*spec, &caller).await {
                    Ok(ctx) => {
                        if let Some(run) = ctx.get("id").and_then(Value::as_str).and_then(|s| RunId::try_parse(s).ok())
                        {
                            self.produced.insert(run);
                        }
                        protocol::reply(&id, Some(&ctx))
                    }
                    Err(f) => error_frame(&id, &f.error, f.run.as_deref()),
                };
                self.send(frame).await;
            }
            ClientMsg::Patch { id, run, ops } => {
                if self.engine.replicated()
                    && let Err(e) = self.engine.locate(run).await
                {
                    return self.send(error_frame(&id, &e, None)).await;
                }
                match self.engine.patch(run, ops, &caller) {
                    Outcome::Ready(Ok(())) => {
                        self.note_produced(run);
                        if id.is_some() {
                            self.send(protocol::reply(&id, None)).await;
                        }
                    }
                    Outcome::Ready(Err(e)) => self.send(error_frame(&id, &e, None)).await,
                    Outcome::Later(answer) => {
                        // In a cluster: answered once the log applied it; a write without an `id` is answered
                        // only when it failed.
                        self.note_produced(run);
                        let frame = async move {
                            match answer.await {
                                Ok(()) => id.is_some().then(|| protocol::reply(&id, None)),
                                Err(e) => Some(error_frame(&id, &e, None)),
                            }
                        };
                        self.waiting.push_back(frame.boxed());
                    }
                }
            }
            ClientMsg::Complete { id, run, output } => {
                if self.engine.replicated()
                    && let Err(e) = self.engine.locate(run).await
                {
                    return self.send(error_frame(&id, &e, None)).await;
                }
                self.produced.remove(&run);
                let finished = self.engine.complete(run, output, &caller);
                self.send_when_durable(id, finished);
            }
            ClientMsg::Fail { id, run, error } => {
                if self.engine.replicated()
                    && let Err(e) = self.engine.locate(run).await
                {
                    return self.send(error_frame(&id, &e, None)).await;
                }
                self.produced.remove(&run);
                let finished = self.engine.fail(run, error, &caller);
                self.send_when_durable(id, finished);
            }
            ClientMsg::Subscribe { id, space, views, events, since } => {
                let limits = &self.engine.config().limits;
                if self.subs.len() >= limits.max_subscriptions_per_connection {
                    let e = Error::new(ErrorCode::QuotaSubscriptions, "too many subscriptions on this connection");
                    return self.send(error_frame(&id, &e, None)).await;
                }
                // Each distinct view set is rendered apart (diffs, and snapshots): bound how many one connection
                // makes the server render.
                let mut sets: Vec<_> = self.subs.values().map(|s| s.views).collect();
                sets.sort_unstable();
                sets.dedup();
                if !sets.contains(&views) && sets.len() >= limits.max_view_sets_per_connection {
                    let e = Error::new(ErrorCode::LimitExceeded, "too many distinct view sets on this connection");
                    return self.send(error_frame(&id, &e, None)).await;
                }
                match self.engine.subscribe(
                    SubscribeRequest { space: &space, views, events, since, req_id: id.clone() },
                    &self.outbox,
                    &caller,
                ) {
                    Ok(slot) => {
                        self.subs.insert(slot.id, slot);
                    }
                    Err(e) => self.send(error_frame(&id, &e, None)).await,
                }
            }
            ClientMsg::Unsubscribe { id, sub } => match self.subs.remove(&sub) {
                Some(slot) => {
                    self.engine.unsubscribe(&slot);
                    self.send(protocol::reply_sub(&id, sub)).await;
                }
                None => {
                    let e = Error::new(ErrorCode::UnknownSubscription, "no such subscription on this connection");
                    self.send(error_frame(&id, &e, None)).await;
                }
            },
        }
    }
}
