//! Request dispatch: each parsed client message to its engine command, and its reply queued in request order (a
//! `complete`/`fail` reply once its audit record is durable).

use super::{Session, error_frame};
use crate::engine::caller::Caller;
use crate::engine::{Outcome, SubscribeRequest};
use crate::error::{Error, ErrorCode};
use crate::model::context::RunId;
use crate::net::session::transport::Outgoing;
use crate::protocol::{self, ClientMsg, Element, element_error, patches_reply};
use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::Value;

/// A write the cluster's log has yet to apply: its answer.
type Settling = BoxFuture<'static, Result<(), Error>>;

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

    /// `patches`: each element applied on its own, in order, as if it were a `patch` of its own. With an `id`, one
    /// reply lists the elements that failed; without one, each failed element gets its own error frame.
    async fn patches(&mut self, id: protocol::ReqId, elements: Vec<Element>, caller: &Caller) {
        // Every element that failed, counted in the metrics by code as an error frame is.
        let mut failed: Vec<(usize, Option<RunId>, Error)> = Vec::new();
        let fail = |failed: &mut Vec<_>, index, run, e: Error| {
            crate::telemetry::error(e.code);
            failed.push((index, run, e));
        };
        let mut later: Vec<(usize, RunId, Settling)> = Vec::new();
        for (index, element) in elements.into_iter().enumerate() {
            let (run, ops) = match element {
                Element::Valid { run, ops } => (run, ops),
                Element::Invalid { run, error } => {
                    fail(&mut failed, index, run, error);
                    continue;
                }
            };
            if let Err(e) = self.engine.locate(run).await {
                fail(&mut failed, index, Some(run), e);
                continue;
            }
            match self.engine.patch(run, ops, caller) {
                Outcome::Ready(Ok(())) => self.note_produced(run),
                Outcome::Ready(Err(e)) => fail(&mut failed, index, Some(run), e),
                Outcome::Later(answer) => {
                    self.note_produced(run);
                    later.push((index, run, answer));
                }
            }
        }
        if later.is_empty() {
            if id.is_some() {
                let errors = failed.iter().map(|(index, _, e)| (*index, e));
                return self.send(patches_reply(&id, errors)).await;
            }
            for (index, run, e) in failed {
                self.send(element_error(index, run, &e)).await;
            }
            return;
        }
        // In a cluster: answered once the log applied the elements.
        if id.is_some() {
            let reply = async move {
                for (index, run, answer) in later {
                    if let Err(e) = answer.await {
                        fail(&mut failed, index, Some(run), e);
                    }
                }
                failed.sort_by_key(|(index, ..)| *index);
                Some(patches_reply(&id, failed.iter().map(|(index, _, e)| (*index, e))))
            };
            return self.waiting.push_back(reply.boxed());
        }
        // Without an `id`, one error frame per failed element, in element order, each when its element is settled.
        let mut failed = failed.into_iter().peekable();
        for (index, run, answer) in later {
            while let Some((i, r, e)) = failed.next_if(|(i, ..)| *i < index) {
                self.waiting.push_back(futures::future::ready(Some(element_error(i, r, &e))).boxed());
            }
            let frame = answer.map(move |r| {
                r.err().map(|e| {
                    crate::telemetry::error(e.code);
                    element_error(index, Some(run), &e)
                })
            });
            self.waiting.push_back(frame.boxed());
        }
        for (i, r, e) in failed {
            self.waiting.push_back(futures::future::ready(Some(element_error(i, r, &e))).boxed());
        }
    }

    /// Parses and handles one text frame. Returns whether it was a write that asks for no answer (a `patch` or
    /// `patches` without an `id`): what keeps a connection paced.
    pub(super) async fn handle(&mut self, text: &str) -> bool {
        match protocol::parse(text, &self.parse_limits) {
            Ok(msg) => {
                let answerless = matches!(msg, ClientMsg::Patch { id: None, .. } | ClientMsg::Patches { id: None, .. });
                self.dispatch(msg).await;
                answerless
            }
            Err(rej) => {
                tracing::debug!(code = %rej.error.code, "rejected a frame");
                self.send(error_frame(&rej.id, &rej.error, None)).await;
                false
            }
        }
    }

    async fn dispatch(&mut self, msg: ClientMsg) {
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
                if let Err(e) = self.engine.locate(run).await {
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
            ClientMsg::Patches { id, elements } => self.patches(id, elements, &caller).await,
            ClientMsg::Complete { id, run, output } => {
                if let Err(e) = self.engine.locate(run).await {
                    return self.send(error_frame(&id, &e, None)).await;
                }
                self.produced.remove(&run);
                let finished = self.engine.complete(run, output, &caller);
                self.send_when_durable(id, finished);
            }
            ClientMsg::Fail { id, run, error } => {
                if let Err(e) = self.engine.locate(run).await {
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
