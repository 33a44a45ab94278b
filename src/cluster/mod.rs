//! Cluster mode: several nodes serve one set of spaces, ordered by NATS JetStream. [`Cluster`] is the replicated
//! [`Sequencer`]: a node's writes to a space are queued in the space's lane, published once per tick at most as
//! one log entry ([`entry`]) on the space's subject, and applied by every node that holds the space, in stream
//! order, by that space's [`replica`] task, which also answers the writes once their entry came back. Positions
//! are stream sequences, so every node agrees on them. A run id is claimed in a key-value bucket before its run
//! starts (and says in which space the run lives); a space's state is snapshotted into another bucket, so a node
//! that takes a space catches up from a recent snapshot rather than from the log's beginning.

pub mod entry;
mod replica;

use crate::engine::sequencer::{Health, Host, Located, Refusal, Sequenced, Sequencer, Submission, unavailable};
use crate::engine::space::Space;
use crate::engine::ticker;
use crate::error::{Error, ErrorCode, Result};
use crate::model::context::RunId;
use crate::space::event::SpaceEvent;
use async_nats::jetstream::{self, kv, object_store, stream};
use dashmap::DashMap;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, oneshot};

/// The JetStream stream every space's entries go to.
pub const STREAM: &str = "COWORKER";
/// The bucket of run ids: run id → the space it lives in and its owner.
pub const RUNS_BUCKET: &str = "coworker-runs";
/// The object store of space snapshots (any size: the store chunks them): objects `<space key>.<slot>`, each a
/// position and an encoded model; [`SNAPSHOT_SLOTS`] slots per space, written in turn.
pub const SNAPSHOTS_BUCKET: &str = "coworker-snapshots";
/// Snapshots kept per space: the slot is the snapshot interval's number since the epoch, modulo this.
pub const SNAPSHOT_SLOTS: u64 = 4;
/// The bucket of live nodes: each node puts its key every [`HEARTBEAT`]; a key older than [`NODE_TTL`] is gone.
pub const NODES_BUCKET: &str = "coworker-nodes";
/// How often a node says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long a node that stopped saying so counts as alive: its producers' runs fail with `producer_lost` after.
pub const NODE_TTL: Duration = Duration::from_secs(15);

/// How a node takes part in a cluster.
#[derive(Debug, Clone)]
pub struct Settings {
    /// NATS server URLs, comma-separated.
    pub urls: String,
    /// This node's name (in logs and in NATS's connection list).
    pub node_name: String,
    /// How long a write waits for the log to take it before it fails with `unavailable`.
    pub write_timeout: Duration,
    /// How long a node keeps a space after its last subscriber left and its last write.
    pub keep: Duration,
    /// A snapshot is written after this many entries...
    pub snapshot_every: u64,
    /// ...or this long after the last one, whichever comes first (if anything changed).
    pub snapshot_interval: Duration,
    /// The log's and the buckets' limits: entries older than this are dropped...
    pub max_age: Duration,
    /// ...and the oldest go first past this many bytes.
    pub max_bytes: i64,
}

impl Settings {
    pub fn new(urls: impl Into<String>, node_name: impl Into<String>) -> Settings {
        Settings {
            urls: urls.into(),
            node_name: node_name.into(),
            write_timeout: Duration::from_secs(2),
            keep: Duration::from_secs(60),
            snapshot_every: 1000,
            snapshot_interval: Duration::from_secs(10),
            max_age: Duration::from_secs(24 * 3600),
            max_bytes: 1 << 30,
        }
    }
}

/// Where the answer to one submitted event goes.
pub(crate) type Answer = oneshot::Sender<Result<Sequenced, Refusal>>;

/// Events queued by this node for one space, waiting for the next publish.
#[derive(Debug, Default)]
pub(crate) struct Lane {
    queue: Mutex<Queue>,
    queued: Notify,
}

#[derive(Debug, Default)]
struct Queue {
    events: Vec<(SpaceEvent, Answer)>,
    /// When this node last queued a write: a node keeps a space its clients write to.
    last_write: Option<tokio::time::Instant>,
}

impl Lane {
    fn push(&self, event: SpaceEvent, tx: Answer) {
        let mut q = self.queue.lock();
        q.events.push((event, tx));
        q.last_write = Some(tokio::time::Instant::now());
        if q.events.len() == 1 {
            self.queued.notify_one();
        }
    }

    fn take(&self) -> Vec<(SpaceEvent, Answer)> {
        std::mem::take(&mut self.queue.lock().events)
    }

    fn is_empty(&self) -> bool {
        self.queue.lock().events.is_empty()
    }

    /// When this node last queued a write to the space.
    fn last_write(&self) -> Option<tokio::time::Instant> {
        self.queue.lock().last_write
    }
}

/// What every replica task shares.
pub(crate) struct Inner {
    settings: Settings,
    /// Random per process: entries this node published carry it.
    node: u64,
    client: async_nats::Client,
    js: jetstream::Context,
    stream: stream::Stream,
    runs: kv::Store,
    snapshots: object_store::ObjectStore,
    nodes: kv::Store,
    epoch: u64,
    lanes: DashMap<Arc<str>, Arc<Lane>>,
    /// An entry's bytes at most (the server's `max_payload`, less room for the header).
    max_entry: usize,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("node", &self.settings.node_name).field("epoch", &self.epoch).finish()
    }
}

/// The replicated sequencer.
#[derive(Debug, Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

/// A failure of NATS, as the `unavailable` error it is to a client.
pub(crate) fn nats_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::Unavailable, format!("{what}: {e}"))
}

impl Cluster {
    /// Connects to NATS and sets up (idempotently) the stream and the buckets. Fails when NATS cannot be reached
    /// within a few seconds or JetStream is not enabled there.
    pub async fn connect(settings: Settings) -> Result<Cluster> {
        let urls: Vec<async_nats::ServerAddr> = settings
            .urls
            .split(',')
            .map(|u| u.trim().parse())
            .collect::<Result<_, _>>()
            .map_err(|e| Error::new(ErrorCode::BadMessage, format!("--cluster: {e}")))?;
        let connect = |name: String| {
            let urls = urls.clone();
            async move {
                let client = async_nats::ConnectOptions::new()
                    .name(name)
                    .connection_timeout(Duration::from_secs(5))
                    .retry_on_initial_connect()
                    .connect(urls);
                tokio::time::timeout(Duration::from_secs(10), client)
                    .await
                    .map_err(|_| Error::new(ErrorCode::Unavailable, "NATS did not answer within 10 s"))?
                    .map_err(|e| nats_error("connecting to NATS", e))
            }
        };
        let client = connect(settings.node_name.clone()).await?;
        // Snapshots (up to megabytes) go over a connection of their own: on the log's connection they would hold
        // up the entries queued behind them.
        let bulk = connect(format!("{} snapshots", settings.node_name)).await?;
        let mut bulk_js = jetstream::new(bulk);
        bulk_js.set_timeout(Duration::from_secs(10));
        let mut js = jetstream::new(client.clone());
        js.set_timeout(settings.write_timeout.max(Duration::from_secs(2)));
        let config = stream::Config {
            name: STREAM.into(),
            subjects: vec![entry::SUBJECTS.into()],
            max_age: settings.max_age,
            max_bytes: settings.max_bytes,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        };
        let mut stream = js.get_or_create_stream(config).await.map_err(|e| nats_error("the log's stream", e))?;
        let created = stream.info().await.map_err(|e| nats_error("the log's stream", e))?.created;
        // The stream's identity: a resume `epoch` every node agrees on, below 2^53 for JavaScript.
        let epoch = (created.unix_timestamp_nanos() as u64) & ((1 << 53) - 1);
        let runs = open_bucket(&js, RUNS_BUCKET, 1, settings.max_age, &settings).await?;
        let snapshots = open_objects(&bulk_js, SNAPSHOTS_BUCKET, &settings).await?;
        let nodes = open_bucket(&js, NODES_BUCKET, 1, NODE_TTL, &settings).await?;
        let max_entry = (client.server_info().max_payload).saturating_sub(1024).max(4096);
        let node = uuid::Uuid::now_v7().as_u64_pair().1;
        tracing::info!(node = %settings.node_name, epoch, "cluster: joined the log {STREAM}");
        let inner = Inner {
            settings,
            node,
            client,
            js,
            stream,
            runs,
            snapshots,
            nodes,
            epoch,
            lanes: DashMap::new(),
            max_entry,
        };
        let inner = Arc::new(inner);
        tokio::spawn(heartbeat(Arc::downgrade(&inner)));
        Ok(Cluster { inner })
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.inner.settings.node_name
    }
}

/// Opens a key-value bucket, creating its stream first if needed. The stream is made here, with the bucket
/// conventions (`KV_<bucket>`, `$KV.<bucket>.>`), rather than by `create_key_value`, which first asks for the
/// account's limits in a form the NATS 2.9 servers of Debian 12 do not answer.
async fn open_bucket(
    js: &jetstream::Context,
    bucket: &str,
    history: i64,
    max_age: Duration,
    settings: &Settings,
) -> Result<kv::Store> {
    let config = stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: history,
        max_age,
        max_bytes: settings.max_bytes,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    };
    js.get_or_create_stream(config).await.map_err(|e| nats_error("a key-value bucket of the cluster", e))?;
    js.get_key_value(bucket).await.map_err(|e| nats_error("a key-value bucket of the cluster", e))
}

/// Opens the object store `bucket`, creating it if needed.
async fn open_objects(js: &jetstream::Context, bucket: &str, settings: &Settings) -> Result<object_store::ObjectStore> {
    if let Ok(store) = js.get_object_store(bucket).await {
        return Ok(store);
    }
    let config = object_store::Config {
        bucket: bucket.into(),
        max_age: settings.max_age,
        max_bytes: settings.max_bytes,
        storage: stream::StorageType::File,
        ..Default::default()
    };
    js.create_object_store(config).await.map_err(|e| nats_error("the cluster's snapshot store", e))
}

/// A node's key in the nodes bucket.
pub(crate) fn node_key(node: u64) -> String {
    format!("n{node:016x}")
}

/// Says this node is alive every [`HEARTBEAT`], for as long as the cluster is in use.
async fn heartbeat(inner: std::sync::Weak<Inner>) {
    loop {
        let Some(i) = inner.upgrade() else { return };
        let put = i.nodes.put(node_key(i.node), i.settings.node_name.clone().into());
        if let Ok(Err(e)) = tokio::time::timeout(HEARTBEAT, put).await {
            tracing::debug!(error = %e, "cluster: a heartbeat was not written");
        }
        drop(i);
        tokio::time::sleep(HEARTBEAT).await;
    }
}

impl Inner {
    /// Of `nodes`, those the nodes bucket no longer lists (they stopped for longer than [`NODE_TTL`]). Empty when
    /// the bucket cannot be read: a node cut off from NATS declares nobody dead.
    pub(crate) async fn dead(&self, nodes: Vec<u64>) -> Vec<u64> {
        let mut dead = Vec::new();
        for node in nodes {
            match tokio::time::timeout(self.settings.write_timeout, self.nodes.get(node_key(node))).await {
                Ok(Ok(None)) => dead.push(node),
                Ok(Ok(Some(_))) => {}
                _ => return Vec::new(),
            }
        }
        dead
    }
}

/// What the run index holds for a run id.
#[derive(serde::Serialize, serde::Deserialize)]
struct RunEntry {
    space: String,
    owner: String,
}

impl Sequencer for Cluster {
    fn submit(&self, space: &Arc<Space>, event: SpaceEvent) -> Submission {
        let st = space.lock();
        if st.retired {
            return Submission::Done(Err(Refusal::Retired));
        }
        // The lane of this very space: a space of the same name can only be opened after this one retired,
        // which happens under its lock.
        let Some(lane) = self.inner.lanes.get(&space.name).map(|l| l.clone()) else {
            return Submission::Done(Err(Refusal::Refused(unavailable())));
        };
        let (tx, rx) = oneshot::channel();
        lane.push(event, tx);
        drop(st);
        Submission::Pending(rx)
    }

    fn open(&self, space: Arc<Space>, host: Arc<dyn Host>, settings: ticker::Settings) {
        let lane = Arc::new(Lane::default());
        self.inner.lanes.insert(space.name.clone(), lane.clone());
        tokio::spawn(replica::run(self.inner.clone(), space, lane, host, settings));
    }

    fn epoch(&self) -> Option<u64> {
        Some(self.inner.epoch)
    }

    fn node(&self) -> Option<u64> {
        Some(self.inner.node)
    }

    fn health(&self) -> Health {
        match self.inner.client.connection_state() {
            async_nats::connection::State::Connected => Health::Ok,
            _ => Health::Degraded,
        }
    }

    fn replicated(&self) -> bool {
        true
    }

    fn locate(&self, run: RunId) -> BoxFuture<'static, Result<Option<Located>>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let wait = inner.settings.write_timeout;
            let got = tokio::time::timeout(wait, inner.runs.get(run.to_string())).await;
            let bytes = match got {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => return Err(nats_error("the run index", e)),
                Err(_) => return Err(unavailable()),
            };
            Ok(bytes
                .and_then(|b| serde_json::from_slice::<RunEntry>(&b).ok())
                .map(|e| Located { space: e.space.into(), owner: e.owner.into() }))
        })
    }

    fn claim(&self, run: RunId, at: Located) -> BoxFuture<'static, Result<bool>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let value = serde_json::to_vec(&RunEntry { space: at.space.to_string(), owner: at.owner.to_string() })
                .expect("a run entry serializes");
            let wait = inner.settings.write_timeout;
            match tokio::time::timeout(wait, inner.runs.create(run.to_string(), value.into())).await {
                Ok(Ok(_)) => Ok(true),
                Ok(Err(e)) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
                Ok(Err(e)) => Err(nats_error("the run index", e)),
                Err(_) => Err(unavailable()),
            }
        })
    }
}
