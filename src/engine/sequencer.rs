//! The sequencer: turns a submitted [`SpaceEvent`] into an applied one, at a position in the space's log that every
//! replica agrees on. [`Local`] takes the space's lock, applies and journals, at the cost of a lock: positions are
//! this node's count of applied events. A replicated sequencer (the cluster's) puts the event in a shared log first
//! and applies it in log order.

use crate::engine::space::Space;
use crate::error::Error;
use crate::space::event::SpaceEvent;
use crate::space::model::Applied;
use parking_lot::Mutex;
use std::sync::Arc;

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
    /// The state machine refused it (the state is unchanged).
    Refused(Error),
}

impl From<Error> for Refusal {
    fn from(e: Error) -> Self {
        Refusal::Refused(e)
    }
}

/// Orders and applies the events of every space.
pub trait Sequencer: Send + Sync + std::fmt::Debug + 'static {
    fn submit(&self, space: &Space, event: SpaceEvent) -> Result<Sequenced, Refusal>;
}

/// The single-node sequencer: the space's lock is the order.
#[derive(Debug, Default)]
pub struct Local;

impl Sequencer for Local {
    fn submit(&self, space: &Space, event: SpaceEvent) -> Result<Sequenced, Refusal> {
        let mut guard = space.lock();
        let st = &mut *guard;
        if st.retired {
            return Err(Refusal::Retired);
        }
        let mut applied = st.model.apply(event)?;
        st.position += 1;
        st.feed.record(&st.model, &mut applied);
        space.changed(st);
        Ok(Sequenced { position: st.position, applied })
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
/// determinism). Encodes each event before submitting it, so it costs an encoding per event.
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
    fn submit(&self, space: &Space, event: SpaceEvent) -> Result<Sequenced, Refusal> {
        let bytes = event.encode();
        let s = self.inner.submit(space, event)?;
        let (name, epoch, position) = (space.name.clone(), space.epoch, s.position);
        self.log.lock().push(Recorded { space: name, epoch, position, bytes });
        Ok(s)
    }
}

impl<S: Sequencer> Sequencer for Arc<S> {
    fn submit(&self, space: &Space, event: SpaceEvent) -> Result<Sequenced, Refusal> {
        (**self).submit(space, event)
    }
}
