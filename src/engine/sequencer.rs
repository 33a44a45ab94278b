//! The sequencer: turns a submitted [`SpaceEvent`] into an applied one, at a position in the space's log that every
//! replica agrees on, and drives each space's task. [`Local`] takes the space's lock, applies and journals at once:
//! positions are this node's count of applied events, and a ticker per space flushes. A replicated sequencer (the
//! cluster's, in `crate::cluster`) puts the event in a shared log first and applies it in log order, so its
//! submissions answer later ([`Submission::Pending`]).

use crate::engine::space::Space;
use crate::engine::ticker::{self, Timers};
use crate::error::{Error, ErrorCode};
use crate::model::context::RunId;
use crate::space::event::SpaceEvent;
use crate::space::model::Applied;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use std::sync::Arc;
use tokio::sync::oneshot;

/// An applied event and where it is in its space's log.
#[derive(Debug)]
pub struct Sequenced {
    pub position: u64,
    pub applied: Applied,
}

/// Why an event was not applied.
#[derive(Debug)]
pub enum Refusal {
    /// The space was reclaimed since it was looked up: look it up again and resubmit.
    Retired,
    /// The state machine refused it (the state is unchanged), or the log could not take it (`unavailable`).
    Refused(Error),
}

impl From<Error> for Refusal {
    fn from(e: Error) -> Self {
        Refusal::Refused(e)
    }
}

/// What a submission answers: at once, or once the log has ordered and applied the event.
#[derive(Debug)]
pub enum Submission {
    Done(Result<Sequenced, Refusal>),
    Pending(oneshot::Receiver<Result<Sequenced, Refusal>>),
}

impl Submission {
    /// The answer; a submission whose answer can no longer come (the node lost the log) is `unavailable`.
    pub async fn outcome(self) -> Result<Sequenced, Refusal> {
        match self {
            Submission::Done(r) => r,
            Submission::Pending(rx) => rx.await.unwrap_or_else(|_| Err(Refusal::Refused(unavailable()))),
        }
    }
}

/// The error of a write the log did not take in time.
pub fn unavailable() -> Error {
    Error::new(ErrorCode::Unavailable, "the cluster's log is unreachable; the write was not applied")
}

/// Where a run this node does not hold lives, as the cluster's run index says.
#[derive(Debug, Clone)]
pub struct Located {
    pub space: Arc<str>,
    pub owner: Arc<str>,
}

/// Whether the node can serve fresh state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Ok,
    /// The shared log is unreachable: writes fail with `unavailable`, and nothing new is served.
    Degraded,
}

/// Who an applied event came from, for the side effects it still needs on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Another node: only this node's bookkeeping (its registry, its budgets).
    Remote,
    /// This node, but nobody waits for the answer any more (it timed out): the bookkeeping, and the side effects
    /// only the receiving node runs (the audit record, the hooks).
    Orphan,
}

/// What the space tasks ask of the engine.
pub trait Host: Timers {
    /// The side effects on this node of an event applied without a waiting submitter. `owner` is the run's owner
    /// for a [`SpaceEvent::RunStarted`].
    fn settle(&self, space: &Arc<Space>, origin: Origin, applied: Applied, owner: Option<Arc<str>>);
    /// A space whose model was just restored from a snapshot: every run of it enters this node's registry and
    /// budgets.
    fn adopt(&self, space: &Arc<Space>);
    /// Lets go of a space no client of this node uses, runs and all (a cluster node): it leaves the node's map, is
    /// marked retired, and its runs leave the registry and the budgets. `false` if a subscriber came meanwhile.
    fn release(&self, space: &Arc<Space>) -> bool;
    /// Fails each run with `producer_lost` if it is still running and still that producer's (its node died).
    fn producers_lost(&self, runs: Vec<(RunId, crate::model::context::ProducerId)>);
}

/// Orders and applies the events of every space.
pub trait Sequencer: Send + Sync + std::fmt::Debug + 'static {
    /// Orders and applies `event` in `space`.
    fn submit(&self, space: &Arc<Space>, event: SpaceEvent) -> Submission;

    /// Starts the task that drives a new space: its ticker here, its log consumer in a cluster.
    fn open(&self, space: Arc<Space>, host: Arc<dyn Host>, settings: ticker::Settings) {
        tokio::spawn(ticker::run(space, host, settings));
    }

    /// The epoch a new space gets: `None` for a random one.
    fn epoch(&self) -> Option<u64> {
        None
    }

    /// This node's id in the shared log (producers are named by it): `None` for a random one.
    fn node(&self) -> Option<u64> {
        None
    }

    fn health(&self) -> Health {
        Health::Ok
    }

    /// Whether spaces are shared with other nodes (runs may live in spaces this node does not hold).
    fn replicated(&self) -> bool {
        false
    }

    /// Where a run lives when this node does not hold it (`None`: unknown everywhere).
    fn locate(&self, _run: RunId) -> BoxFuture<'static, Result<Option<Located>, Error>> {
        Box::pin(async { Ok(None) })
    }

    /// Claims a run id for the whole cluster before its run starts: `false` if another node has it.
    fn claim(&self, _run: RunId, _at: Located) -> BoxFuture<'static, Result<bool, Error>> {
        Box::pin(async { Ok(true) })
    }
}

/// The single-node sequencer: the space's lock is the order.
#[derive(Debug, Default)]
pub struct Local;

impl Sequencer for Local {
    fn submit(&self, space: &Arc<Space>, event: SpaceEvent) -> Submission {
        let mut guard = space.lock();
        let st = &mut *guard;
        if st.retired {
            return Submission::Done(Err(Refusal::Retired));
        }
        let mut applied = match st.model.apply(event) {
            Ok(a) => a,
            Err(e) => return Submission::Done(Err(e.into())),
        };
        st.position += 1;
        st.feed.record(&st.model, &mut applied);
        space.changed(st);
        Submission::Done(Ok(Sequenced { position: st.position, applied }))
    }
}

/// One applied event as a [`Recording`] keeps it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub space: Arc<str>,
    pub epoch: u64,
    pub position: u64,
    /// [`SpaceEvent::encode`]d.
    pub bytes: Vec<u8>,
}

/// A sequencer that keeps every event it applied, encoded, beside its position: a log to replay (tests, audits of
/// determinism). Encodes each event before submitting it, so it costs an encoding per event. Wraps a sequencer
/// that answers at once.
#[derive(Debug, Default)]
pub struct Recording<S> {
    inner: S,
    log: Mutex<Vec<Recorded>>,
}

impl<S: Sequencer> Recording<S> {
    pub fn new(inner: S) -> Recording<S> {
        Recording { inner, log: Mutex::new(Vec::new()) }
    }

    /// What was applied so far, in each space's log order.
    pub fn log(&self) -> Vec<Recorded> {
        let mut log = self.log.lock().clone();
        log.sort_by(|a, b| (&a.space, a.epoch, a.position).cmp(&(&b.space, b.epoch, b.position)));
        log
    }
}

impl<S: Sequencer> Sequencer for Recording<S> {
    fn submit(&self, space: &Arc<Space>, event: SpaceEvent) -> Submission {
        let bytes = event.encode();
        let s = self.inner.submit(space, event);
        if let Submission::Done(Ok(s)) = &s {
            let (name, epoch, position) = (space.name.clone(), space.epoch, s.position);
            self.log.lock().push(Recorded { space: name, epoch, position, bytes });
        }
        s
    }
}

impl<S: Sequencer> Sequencer for Arc<S> {
    fn submit(&self, space: &Arc<Space>, event: SpaceEvent) -> Submission {
        (**self).submit(space, event)
    }

    fn open(&self, space: Arc<Space>, host: Arc<dyn Host>, settings: ticker::Settings) {
        (**self).open(space, host, settings)
    }

    fn epoch(&self) -> Option<u64> {
        (**self).epoch()
    }

    fn node(&self) -> Option<u64> {
        (**self).node()
    }

    fn health(&self) -> Health {
        (**self).health()
    }

    fn replicated(&self) -> bool {
        (**self).replicated()
    }

    fn locate(&self, run: RunId) -> BoxFuture<'static, Result<Option<Located>, Error>> {
        (**self).locate(run)
    }

    fn claim(&self, run: RunId, at: Located) -> BoxFuture<'static, Result<bool, Error>> {
        (**self).claim(run, at)
    }
}
